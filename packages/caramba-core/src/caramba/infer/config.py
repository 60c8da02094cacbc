"""GenerateConfig: every knob of a generation, validated on construction."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from caramba.cache.kinds import KINDS, check_kind
from caramba.cache.plan import PLAN_MODES
from caramba.cache.spec import TENSOR_NAMES
from caramba.errors import InputError

CACHE_KINDS = (*KINDS, "auto")


class ConfigError(InputError, ValueError):
    """A generation setting is out of range or unknown."""


@dataclass
class GenerateConfig:
    """How to generate: sampling, stopping, KV-cache kind and the decode plan.

    Sampling: temperature 0 is greedy; top_k keeps the k most likely tokens, top_p the
    smallest set whose probability reaches p; repetition_penalty > 1 divides the positive
    logits (multiplies the negative ones) of tokens already in the sequence (CTRL).

    cache_kind: fp32 | fp16 | q8_0 | q4_0 | nf4, or auto to choose by memory budget, quality
    gates on a probe of real text (max_delta_nll / max_ppl_ratio / max_needle_kl, all vs an
    fp16 cache) and a micro-benchmark. cache_kinds overrides single tensors (k, v, k_sem,
    k_geo), e.g. {"k_sem": "fp16"} for a DBA model.
    """

    max_new_tokens: int = 64
    temperature: float = 0.8
    top_k: int | None = None
    top_p: float | None = None
    repetition_penalty: float = 1.0
    stop_tokens: tuple[int, ...] = ()
    seed: int | None = None
    max_seq_len: int | None = None  # the model's context; None: the model's own, if it has one

    cache_kind: str = "fp16"
    cache_kinds: dict[str, str] = field(default_factory=dict)
    cache_block_tokens: int = 32  # newest tokens a quantized cache keeps in full precision
    cache_budget_mb: float | None = None
    max_delta_nll: float = 0.05
    max_ppl_ratio: float = 1.05
    max_needle_kl: float = 0.05
    cache_auto_benchmark: bool = True
    cache_plan_path: str | None = None
    cache_plan_probe_interval_s: float | None = 7 * 24 * 3600.0
    probe_tokens: int = 192  # tokens per probe sequence for cache_kind auto
    probe_batch: int = 4

    decode_plan: str = "auto"
    decode_bucket: int = 256
    prefill_chunk: int | None = None
    # On CUDA, replay each single-token decode step of the whole model as one CUDA graph
    # (caramba.infer.step_graph); False keeps every step eager.
    cuda_graphs: bool = True

    def __post_init__(self) -> None:
        self.stop_tokens = tuple(int(t) for t in self.stop_tokens)
        self.cache_kinds = dict(self.cache_kinds)
        _int(self.max_new_tokens, "max_new_tokens", 0)
        _float(self.temperature, "temperature", 0.0)
        if self.top_k is not None:
            _int(self.top_k, "top_k", 1)
        if self.top_p is not None and not (0.0 < self.top_p <= 1.0):
            raise ConfigError(f"top_p must lie in (0, 1], got {self.top_p}")
        _float(self.repetition_penalty, "repetition_penalty", 0.0, strict=True)
        if self.max_seq_len is not None:
            _int(self.max_seq_len, "max_seq_len", 1)
        if self.cache_kind != "auto":
            check_kind(self.cache_kind)
        for name, kind in self.cache_kinds.items():
            if name not in TENSOR_NAMES:
                raise ConfigError(f"cache_kinds: unknown tensor {name!r}; known: "
                                  f"{', '.join(TENSOR_NAMES)}.")
            check_kind(kind, what=f"cache_kinds[{name!r}]")
        _int(self.cache_block_tokens, "cache_block_tokens", 0)
        if self.cache_budget_mb is not None:
            _float(self.cache_budget_mb, "cache_budget_mb", 0.0, strict=True)
        for name in ("max_delta_nll", "max_ppl_ratio", "max_needle_kl"):
            _float(getattr(self, name), name, 0.0)
        if self.cache_plan_probe_interval_s is not None:
            _float(self.cache_plan_probe_interval_s, "cache_plan_probe_interval_s", 0.0)
        _int(self.probe_tokens, "probe_tokens", 16)
        _int(self.probe_batch, "probe_batch", 1)
        if self.decode_plan not in PLAN_MODES:
            raise ConfigError(f"decode_plan must be one of {', '.join(PLAN_MODES)}, got "
                              f"{self.decode_plan!r}")
        _int(self.decode_bucket, "decode_bucket", 1)
        if self.prefill_chunk is not None:
            _int(self.prefill_chunk, "prefill_chunk", 1)
        if not isinstance(self.cuda_graphs, bool):
            raise ConfigError(f"cuda_graphs must be true or false, got {self.cuda_graphs!r}")

    def replace(self, **changes: Any) -> GenerateConfig:
        return GenerateConfig(**{**asdict(self), **changes})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _int(value: object, name: str, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name} must be an int >= {minimum}, got {value!r}")


def _float(value: object, name: str, minimum: float, strict: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < minimum or (strict and value == minimum):
        bound = ">" if strict else ">="
        raise ConfigError(f"{name} must be a finite number {bound} {minimum}, got {value!r}")
