"""Prefill and decode speed (tokens/s) over prompt and generation lengths.

For each (model, prompt length) the prompt is prefilled into fresh KV caches of `cache_kind`
(warmup + timed runs, median reported); then each warmup and timed run decodes `gen_len`
tokens greedily from the last prefill's context, and the caches are truncated back to the
prompt afterwards, so every decode run starts from the same context without a new
prefill. Decode speed at a long context is where a smaller KV cache shows.
"""

from __future__ import annotations

import time
from typing import Any, Literal

import torch
from pydantic import Field, field_validator

from caramba.benchmarks.base import BenchmarkConfig, BenchmarkResult
from caramba.cache.kinds import check_kind
from caramba.cache.spec import CacheSpec


class LatencyConfig(BenchmarkConfig):
    type: Literal["latency"] = "latency"
    prompt_lengths: list[int] = Field([64, 256], description="prompt tokens (prefill)")
    generation_lengths: list[int] = Field([32], description="tokens decoded one at a time")
    batch_size: int = Field(1, ge=1, description="sequences decoded together")
    warmup_runs: int = Field(1, ge=0, description="untimed decode runs first")
    timed_runs: int = Field(3, ge=1, description="timed decode runs; the median is reported")
    cache_kind: str = Field("fp32", description="KV-cache kind: fp32, fp16, q8_0, q4_0, nf4")

    @field_validator("cache_kind")
    @classmethod
    def _kind(cls, value: str) -> str:
        return check_kind(value)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def _measure(model: Any, prompt: torch.Tensor, gen_lengths: list[int], config: LatencyConfig
             ) -> tuple[float, dict[int, float]]:
    """Median prefill seconds, and the median decode seconds for each generation length."""
    device = prompt.device
    capacity = prompt.shape[1] + max(gen_lengths, default=0)
    prefills = []
    for _ in range(config.warmup_runs + config.timed_runs):
        spec = CacheSpec(kind=config.cache_kind, capacity=capacity)
        ctx = spec.context()
        _sync(device)
        start = time.perf_counter()
        logits = model(prompt, ctx)
        _sync(device)
        prefills.append(time.perf_counter() - start)
    first = logits[:, -1:].argmax(-1)
    decode: dict[int, float] = {}
    for steps in gen_lengths:
        times = []
        for _ in range(config.warmup_runs + config.timed_runs):
            spec.truncate(prompt.shape[1])  # back to the prompt: same context every run
            ctx.position, token = prompt.shape[1], first
            _sync(device)
            start = time.perf_counter()
            for _ in range(steps):
                token = model(token, ctx)[:, -1:].argmax(-1)
                ctx.position += 1
            _sync(device)
            times.append(time.perf_counter() - start)
        decode[steps] = _median(times[config.warmup_runs:])
    return _median(prefills[config.warmup_runs:]), decode


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


class LatencyBenchmark:
    """Prefill tokens/s and median decode tokens/s with the model's KV caches."""

    Config = LatencyConfig

    def run(self, bench_id: str, config: LatencyConfig, models: dict[str, Any], data: Any,
            device: torch.device) -> BenchmarkResult:
        result = BenchmarkResult(bench_id)
        generator = torch.Generator().manual_seed(0)
        prompts = {n: data.val.batch(config.batch_size, n, generator)[0]
                   for n in config.prompt_lengths}
        longest = max(config.prompt_lengths)
        for name, model in models.items():
            was_training = model.training
            model.eval()
            rows = []
            for prompt_len, prompt in prompts.items():
                prefill, decode = _measure(model, prompt.to(device),
                                           config.generation_lengths, config)
                tokens = config.batch_size
                for gen_len, seconds in decode.items():
                    rows.append({
                        "model": name, "prompt_len": prompt_len, "gen_len": gen_len,
                        "batch_size": tokens, "cache_kind": config.cache_kind,
                        "prefill_s": prefill, "decode_s": seconds,
                        "prefill_tokens_per_s": tokens * prompt_len / prefill,
                        "decode_tokens_per_s": tokens * gen_len / seconds if gen_len else 0.0,
                    })
            model.train(was_training)
            result.rows += rows
            result.summary[name] = {
                "decode_tokens_per_s": min(r["decode_tokens_per_s"] for r in rows),
                "prefill_tokens_per_s": min(r["prefill_tokens_per_s"] for r in rows),
                "long_context_decode_tokens_per_s": max(
                    (r for r in rows if r["prompt_len"] == longest),
                    key=lambda r: r["gen_len"])["decode_tokens_per_s"],
                "long_context": longest,
            }
        result.compare(decode_speedup=("decode_tokens_per_s", "ratio"),
                       long_context_decode_speedup=("long_context_decode_tokens_per_s", "ratio"),
                       prefill_speedup=("prefill_tokens_per_s", "ratio"))
        return result
