"""Random inputs for the quantize / dequantize / append fuzz tests of every backend, and the
fuzz loop the torch-tensor backends (Triton, the Metal shim) share.

One generator, so the C++, Triton and Metal codecs are all fuzzed over the same kinds of
shapes: random rank and width (any width for f32/f16, whole blocks otherwise), magnitudes from
fp16-subnormal scales to 2^11, all-zero blocks and exact .5 ties after scaling.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from caramba.kernels import reference
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


def as_bytes(t: torch.Tensor) -> torch.Tensor:
    """A cache tensor as uint8 rows (f32 / f16 caches are viewed, not converted)."""
    t = t.contiguous()
    return t if t.dtype == torch.uint8 else t.view(torch.uint8)


def check_codecs_against_reference(
    rng: np.random.Generator,
    kind: str,
    cases: int,
    quantize: Callable[[str, torch.Tensor], torch.Tensor],
    dequantize: Callable[[str, torch.Tensor, int], torch.Tensor],
    append: Callable[[str, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
) -> None:
    """`cases` random shapes of a backend's quantize, dequantize and append (each taking and
    returning CPU tensors; append returns the cache it wrote), byte for byte and bit for bit
    against caramba-core's reference."""
    for _ in range(cases):
        x = torch.from_numpy(random_rows(rng, kind))
        D = x.shape[-1]
        expected = reference.quantize(kind, x)
        got = quantize(kind, x)
        where = f"{kind} {tuple(x.shape)}"
        assert got.dtype == expected.dtype and got.shape == expected.shape, where
        assert torch.equal(as_bytes(got), as_bytes(expected)), where
        values = dequantize(kind, expected, D)
        assert torch.equal(values, reference.dequantize(kind, expected, D)), where

        cache_x, rows, lengths = (torch.from_numpy(a) for a in random_append_case(rng, kind))
        cache = reference.quantize(kind, cache_x)
        want = reference.append(kind, cache.clone(), rows, lengths)
        written = append(kind, cache, rows, lengths)
        where = f"{kind} cache {tuple(cache_x.shape)} lengths {lengths.tolist()}"
        assert torch.equal(as_bytes(written), as_bytes(want)), where
