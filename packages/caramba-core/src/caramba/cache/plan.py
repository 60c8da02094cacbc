"""Decode plans: round the sequence length a kernel sees up to a few bucket sizes.

Each decode step attends over one more token, so without bucketing every step is a new
shape — a recompile for `torch.compile` / CUDA graphs, a new launch configuration for a fused
kernel. With a plan, attention sees the cache up to `span(n) >= n` slots and masks the slots
past n, so only a handful of shapes ever occur and the result is unchanged. The decode
kernels read a cache at its capacity (their lengths argument masks the rest), so the plan
also decides how capacity grows: always geometrically, rounded to the plan's buckets.

    none   span(n) = n
    fixed  span(n) = n rounded up to a multiple of `bucket`
    auto   span(n) = the next of 64, 96, 128, 192, 256, 384, ... (2^k and 1.5 * 2^k):
           at most a third wasted, about two shapes per doubling of the context
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

PlanMode = Literal["auto", "fixed", "none"]
PLAN_MODES: tuple[str, ...] = ("auto", "fixed", "none")
AUTO_MIN_SPAN = 64
AUTO_PREFILL_CHUNK = 512


@dataclass
class DecodePlan:
    """How decode shapes are bucketed, and how long prompts are prefilled.

    `spans` records every span handed out (the distinct shapes the kernels saw).
    """

    mode: PlanMode = "none"
    bucket: int = 256
    prefill_chunk: int | None = None
    spans: set[int] = field(default_factory=set, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.mode not in PLAN_MODES:
            raise ValueError(f"decode_plan: expected one of {', '.join(PLAN_MODES)}, "
                             f"got {self.mode!r}")
        if self.bucket < 1:
            raise ValueError(f"decode bucket must be >= 1, got {self.bucket}")

    def span(self, n: int) -> int:
        """The bucketed length for a cache holding n tokens (>= n)."""
        if self.mode == "none":
            s = n
        elif self.mode == "fixed":
            s = -(-n // self.bucket) * self.bucket
        else:
            s = auto_span(n)
        self.spans.add(s)
        return s

    def capacity(self, n: int, current: int) -> int:
        """Storage capacity for n tokens when `current` is too small (geometric growth)."""
        want = max(n, 2 * current)
        if self.mode == "auto":
            return auto_span(max(n, current + current // 3))
        multiple = self.bucket if self.mode == "fixed" else 64
        return -(-want // multiple) * multiple

    def prefill_chunks(self, n: int) -> list[int]:
        """Chunk sizes for prefilling n prompt tokens (exact: chunked prefill = one pass)."""
        chunk = self.prefill_chunk
        if chunk is None and self.mode == "auto":
            chunk = AUTO_PREFILL_CHUNK
        if not chunk or n <= chunk:
            return [n] if n else []
        return [chunk] * (n // chunk) + ([n % chunk] if n % chunk else [])


def auto_span(n: int) -> int:
    """The smallest of 64, 96, 128, 192, 256, ... that is >= n."""
    s = AUTO_MIN_SPAN
    while s < n:
        # From a power of two step by half of it (64 -> 96), else by a third (96 -> 128).
        s += s // 2 if s & (s - 1) == 0 else s // 3
    return s
