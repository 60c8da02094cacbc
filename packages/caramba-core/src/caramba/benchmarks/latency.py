"""Prefill and decode speed (tokens/s) over prompt and generation lengths."""

from __future__ import annotations

import time
from typing import Any, Literal

import torch
from pydantic import Field

from caramba.benchmarks.base import BenchmarkConfig, BenchmarkResult
from caramba.layers.base import ForwardContext


class LatencyConfig(BenchmarkConfig):
    type: Literal["latency"] = "latency"
    prompt_lengths: list[int] = Field([64, 256], description="prompt tokens (prefill)")
    generation_lengths: list[int] = Field([32], description="tokens decoded one at a time")
    batch_size: int = Field(1, ge=1, description="sequences decoded together")
    warmup_runs: int = Field(1, ge=0, description="untimed runs first")
    timed_runs: int = Field(3, ge=1, description="timed runs; the median is reported")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def _time_once(model: Any, prompt: torch.Tensor, steps: int) -> tuple[float, float]:
    """Seconds for the prefill and for `steps` single-token decode steps (greedy)."""
    device = prompt.device
    ctx = ForwardContext(position=0, state={})
    _sync(device)
    start = time.perf_counter()
    logits = model(prompt, ctx)
    _sync(device)
    prefill = time.perf_counter() - start
    token = logits[:, -1:].argmax(-1)
    position = prompt.shape[1]
    start = time.perf_counter()
    for _ in range(steps):
        ctx.position = position
        token = model(token, ctx)[:, -1:].argmax(-1)
        position += 1
    _sync(device)
    return prefill, time.perf_counter() - start


class LatencyBenchmark:
    """Median prefill tokens/s and decode tokens/s (with the model's incremental cache)."""

    Config = LatencyConfig

    def run(self, bench_id: str, config: LatencyConfig, models: dict[str, Any], data: Any,
            device: torch.device) -> BenchmarkResult:
        result = BenchmarkResult(bench_id)
        generator = torch.Generator().manual_seed(0)
        for name, model in models.items():
            model.eval()
            for prompt_len in config.prompt_lengths:
                x, _ = data.val.batch(config.batch_size, prompt_len, generator)
                prompt = x.to(device)
                for gen_len in config.generation_lengths:
                    for _ in range(config.warmup_runs):
                        _time_once(model, prompt, gen_len)
                    runs = sorted(_time_once(model, prompt, gen_len)
                                  for _ in range(config.timed_runs))
                    prefill, decode = runs[len(runs) // 2]
                    tokens = config.batch_size
                    result.rows.append({
                        "model": name, "prompt_len": prompt_len, "gen_len": gen_len,
                        "batch_size": tokens,
                        "prefill_tokens_per_s": tokens * prompt_len / prefill,
                        "decode_tokens_per_s": tokens * gen_len / decode if gen_len else 0.0,
                    })
            rows = [r for r in result.rows if r["model"] == name]
            result.summary[name] = {
                "decode_tokens_per_s": min(r["decode_tokens_per_s"] for r in rows),
                "prefill_tokens_per_s": min(r["prefill_tokens_per_s"] for r in rows),
            }
        return result
