"""Random inputs for the quantize / dequantize / append fuzz tests of every backend.

One generator, so the C++, Triton and Metal codecs are all fuzzed over the same kinds of
shapes: random rank and width (any width for f32/f16, whole blocks otherwise), magnitudes from
fp16-subnormal scales to 2^11, all-zero blocks and exact .5 ties after scaling.
"""

from __future__ import annotations

import numpy as np

from quant_bounds import BLOCK


def random_rows(rng: np.random.Generator, kind: str) -> np.ndarray:
    """A random (..., D) float32 array: random rank, width, magnitude and special blocks."""
    block = max(BLOCK[kind], 1)
    D = block * int(rng.integers(1, 5)) if block > 1 else int(rng.integers(1, 97))
    lead = tuple(int(n) for n in rng.integers(1, 4, size=int(rng.integers(0, 3))))
    scale = 2.0 ** float(rng.integers(-30, 12))  # amax stays below fp16 overflow
    x = (rng.standard_normal((*lead, D)) * scale).astype(np.float32)
    flat = x.reshape(-1)
    if rng.random() < 0.2:  # a zero block
        flat[: min(block, flat.size)] = 0
    if rng.random() < 0.2:  # exact ties after scaling: multiples of amax / 254
        k = min(block, flat.size)
        flat[:k] = (rng.integers(-127, 128, size=k) * 0.5).astype(np.float32)
    return x


def random_append_case(
    rng: np.random.Generator, kind: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(cache contents (B, H, S, D), new rows (B, H, D), lengths (B,) int32 in [0, S)): one
    append of a token per sequence into a cache of random size, at random free slots."""
    B, H, S = (int(n) for n in rng.integers(1, [5, 4, 10]))
    rows = random_rows(rng, kind)
    D = rows.shape[-1]
    cache = rng.standard_normal((B, H, S, D)).astype(np.float32)
    new = (rng.standard_normal((B, H, D)) * float(np.abs(rows).max() + 1)).astype(np.float32)
    new.reshape(-1, D)[0] = rows.reshape(-1, D)[0]  # the special row (zeros, ties) is appended
    lengths = rng.integers(0, S, size=B).astype(np.int32)
    return cache, new, lengths
