"""KV-cache memory per token and over sequence lengths, per cache kind, plus measured
allocations.

Accounting comes from `caramba.cache` (each layer's cached tensor shapes and each kind's
block layout), so it is what the caches allocate, not a formula kept in step by hand. A
tensor a kind cannot hold (DBA's semantic keys are often narrower than a 32-value quantized
block) falls back to fp16, as a CacheSpec with per-tensor kinds would store it; the row
says which tensors fell back. Measured: one real prefill of `measure_length` tokens into
fp16 caches (allocated bytes), the weights, and peak memory — CUDA's peak allocation on a
GPU (`peak_allocated_bytes`), the process's peak resident set on CPU
(`process_peak_rss_bytes`: the whole process, teacher and student together, not one model).
"""

from __future__ import annotations

import resource
import sys
from typing import Any, Literal

import torch
from pydantic import Field, field_validator

from caramba.benchmarks.base import BenchmarkConfig, BenchmarkResult
from caramba.cache.kinds import check_kind, supports
from caramba.cache.spec import CacheSpec, bytes_per_token, cache_shapes

KIND_ALIASES = {"q8": "q8_0", "q4": "q4_0", "f16": "fp16", "f32": "fp32"}


class MemoryConfig(BenchmarkConfig):
    type: Literal["memory"] = "memory"
    sequence_lengths: list[int] = Field(
        [512, 1024, 2048, 4096], min_length=1, description="context lengths accounted")
    cache_kinds: list[str] = Field(
        ["fp16", "q8_0", "q4_0"], min_length=1,
        description="KV-cache kinds compared (fp32, fp16, q8_0, q4_0, nf4; q8/q4 accepted)")
    batch_size: int = Field(1, ge=1, description="sequences held in the cache")
    measure_length: int = Field(
        128, ge=0, le=1 << 20, description="tokens of a real prefill whose cache allocation "
        "and peak memory are measured; 0 skips it")

    @field_validator("cache_kinds")
    @classmethod
    def _kinds(cls, values: list[str]) -> list[str]:
        return [check_kind(KIND_ALIASES.get(v, v)) for v in values]

    @field_validator("sequence_lengths")
    @classmethod
    def _positive(cls, values: list[int]) -> list[int]:
        if any(v < 1 for v in values):
            raise ValueError("sequence lengths must be positive")
        return values


def spec_with_fallback(shapes: list[dict[str, tuple[int, int]]], kind: str
                       ) -> tuple[CacheSpec, list[str]]:
    """A CacheSpec of `kind`, with fp16 for tensors some layer cannot store in it."""
    names = sorted({name for layer in shapes for name in layer})
    fallback = [n for n in names
                if not all(supports(kind, *layer[n]) for layer in shapes if n in layer)]
    return CacheSpec(kind=kind, kinds=dict.fromkeys(fallback, "fp16")), fallback


def _peak(device: torch.device) -> dict[str, int]:
    if device.type == "cuda":
        return {"peak_allocated_bytes": int(torch.cuda.max_memory_allocated(device))}
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"process_peak_rss_bytes": int(rss if sys.platform == "darwin" else rss * 1024)}


@torch.no_grad()
def _measure(model: Any, data: Any, config: MemoryConfig, device: torch.device) -> dict[str, int]:
    x, _ = data.val.batch(config.batch_size, config.measure_length,
                          torch.Generator().manual_seed(0))
    spec = CacheSpec(kind="fp16", capacity=config.measure_length)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)  # this model's peak, not the process's
    model(x.to(device), spec.context())
    return {"measured_tokens": config.measure_length, "measured_cache_bytes": spec.nbytes,
            "measured_bytes_per_token": spec.bytes_per_token, **_peak(device)}


class MemoryBenchmark:
    """KV-cache bytes per token and at each sequence length, per kind; weights; peak memory."""

    Config = MemoryConfig

    def run(self, bench_id: str, config: MemoryConfig, models: dict[str, Any], data: Any,
            device: torch.device) -> BenchmarkResult:
        result = BenchmarkResult(bench_id)
        for name, model in models.items():
            shapes = cache_shapes(model)
            weights = sum(p.numel() * p.element_size() for p in model.parameters())
            summary: dict[str, Any] = {"weights_bytes": weights}
            for kind in config.cache_kinds:
                spec, fallback = spec_with_fallback(shapes, kind)
                per_token = bytes_per_token(shapes, spec)
                summary[f"kv_bytes_per_token_{kind}"] = per_token
                for length in config.sequence_lengths:
                    result.rows.append({
                        "model": name, "cache_kind": kind, "seq_len": length,
                        "batch_size": config.batch_size, "kv_bytes_per_token": per_token,
                        "cache_bytes": per_token * length * config.batch_size,
                        "fp16_fallback": " ".join(fallback)})
            if config.measure_length:
                was_training = model.training
                model.eval()
                summary.update(_measure(model, data, config, device))
                model.train(was_training)
            result.summary[name] = summary
        first = config.cache_kinds[0]
        result.compare(**{f"kv_reduction_{kind}": (f"kv_bytes_per_token_{kind}", "ratio")
                          for kind in config.cache_kinds})
        comparison = result.summary.get("student_vs_teacher")
        if comparison:  # report how many times smaller, not the fraction
            for key in list(comparison):
                comparison[key] = 1.0 / comparison[key] if comparison[key] else 0.0
            comparison["kv_reduction"] = comparison.get(f"kv_reduction_{first}", 0.0)
        return result
