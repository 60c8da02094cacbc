"""Continuations of the same prompts by every model, side by side (generation.csv and
generation.md), with decode speed."""

from __future__ import annotations

import time
from typing import Any, Literal

import torch
from pydantic import Field

from caramba.benchmarks.base import BenchmarkConfig, BenchmarkResult, require_tokenizer


class GenerationConfig(BenchmarkConfig):
    type: Literal["generation"] = "generation"
    prompts: list[str] = Field(min_length=1, description="prompts every model continues")
    max_new_tokens: int = Field(32, ge=1, le=4096, description="tokens generated per prompt")
    temperature: float = Field(0.0, ge=0.0, le=10.0, description="0 = greedy")
    top_k: int = Field(0, ge=0, description="sample among the k likeliest; 0 = all")
    seed: int = Field(0, ge=0, description="sampling seed (same for every model)")


class GenerationBenchmark:
    """The same prompts, seeds and settings for every model; text and tokens/s per sample."""

    Config = GenerationConfig

    def run(self, bench_id: str, config: GenerationConfig, models: dict[str, Any], data: Any,
            device: torch.device) -> BenchmarkResult:
        tokenizer = require_tokenizer(bench_id, "generation", data)
        result = BenchmarkResult(bench_id)
        for name, model in models.items():
            was_training = model.training
            model.eval()
            speeds = []
            for i, prompt in enumerate(config.prompts):
                ids = torch.tensor([tokenizer.encode(prompt)], dtype=torch.long, device=device)
                generator = torch.Generator(device=device).manual_seed(config.seed + i)
                start = time.perf_counter()
                with torch.no_grad():
                    out = model.generate(ids, config.max_new_tokens,
                                         temperature=config.temperature,
                                         top_k=config.top_k or None, generator=generator)
                seconds = time.perf_counter() - start
                speeds.append(config.max_new_tokens / seconds)
                result.rows.append({"prompt": prompt, "model": name,
                                    "completion": tokenizer.decode(out[0, ids.shape[1]:].tolist()),
                                    "tokens_per_s": speeds[-1]})
            model.train(was_training)
            result.summary[name] = {"samples": len(config.prompts),
                                    "tokens_per_s": sum(speeds) / len(speeds)}
        return result


def side_by_side_markdown(result: BenchmarkResult) -> str:
    """generation.md: each prompt once, then every model's continuation under it."""
    lines = [f"# {result.id}", ""]
    prompts = list(dict.fromkeys(row["prompt"] for row in result.rows))
    for prompt in prompts:
        lines += [f"## {prompt!r}", ""]
        for row in result.rows:
            if row["prompt"] == prompt:
                text = (prompt + row["completion"]).replace("\n", "\n> ")
                lines += [f"**{row['model']}** ({row['tokens_per_s']:.1f} tokens/s)", "",
                          f"> {text}", ""]
    return "\n".join(lines)
