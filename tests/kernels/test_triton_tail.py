"""Triton merge_tail (one launch) against the torch reference it replaces
(caramba.cache.graphs.masked_tail_merge), over fuzzed shapes: standard and DBA key pairs,
GQA ratios 1..8, head widths 1..256, tails of 1..40 rows, pending 1..R, empty prefixes,
fp32/bf16/fp16 tails. Both compute in float32; they differ only in summation order, so the
tolerance is float32 rounding over at most R + 1 terms of values below ~10: 1e-5 relative,
1e-5 absolute."""

from __future__ import annotations

import os

import pytest
import torch

from caramba.cache.graphs import masked_tail_merge
from triton_backend import DEVICE, backend

CASES = int(os.environ.get("CARAMBA_TRITON_FUZZ", 24))  # GPU too: see test_triton_decode.FUZZ_CASES


def case(gen: torch.Generator, dba: bool):
    def pick(lo, hi):
        return int(torch.randint(lo, hi + 1, (1,), generator=gen))

    B, Hkv, G, R = pick(1, 4), pick(1, 8), pick(1, 8), pick(1, 40)
    Hq = Hkv * G
    widths = [pick(1, 256)] + ([pick(1, 64)] if dba else [])
    Dv = pick(1, 256)
    dtype = (torch.float32, torch.bfloat16, torch.float16)[pick(0, 2)]

    def rnd(*shape, dt=torch.float32):
        return torch.randn(*shape, generator=gen).to(DEVICE, dt)

    qs = [rnd(B, Hq, d) for d in widths]
    ks = [rnd(B, Hkv, R, d, dt=dtype) for d in widths]
    v = rnd(B, Hkv, R, Dv, dt=dtype)
    out = rnd(B, Hq, Dv)
    lse = rnd(B, Hq) * 3
    if pick(0, 3) == 0:  # an empty prefix: lse -inf, its out row zeros (as the kernels return)
        lse[:] = float("-inf")
        out[:] = 0
    scales = [d**-0.5 for d in widths]
    pending = torch.tensor(pick(1, R), dtype=(torch.int32, torch.int64)[pick(0, 1)], device=DEVICE)
    return out, lse, qs, ks, scales, v, pending


@pytest.mark.parametrize("dba", [False, True])
def test_merge_tail_matches_the_torch_reference(dba):
    gen = torch.Generator().manual_seed(11 + dba)
    for _ in range(CASES):
        args = case(gen, dba)
        want = masked_tail_merge(*args)
        got = backend.merge_tail(*args)
        shapes = [tuple(a.shape) for a in (args[2][0], args[3][0], args[5])]
        assert torch.allclose(got, want, rtol=1e-5, atol=1e-5), (shapes, int(args[6]))


def test_merge_tail_reads_pending_on_the_device_only():
    gen = torch.Generator().manual_seed(3)
    out, lse, qs, ks, scales, v, pending = case(gen, True)
    R = v.shape[2]
    for n in sorted({1, R}):
        pending.fill_(n)  # the same tensor, new value: what a CUDA graph replay sees
        assert torch.allclose(
            backend.merge_tail(out, lse, qs, ks, scales, v, pending),
            masked_tail_merge(out, lse, qs, ks, scales, v, pending),
            rtol=1e-5,
            atol=1e-5,
        )


def test_merge_tail_names_the_bad_argument():
    gen = torch.Generator().manual_seed(5)
    out, lse, qs, ks, scales, v, pending = case(gen, False)
    with pytest.raises(ValueError, match="lse"):
        backend.merge_tail(out, lse[:, :1].contiguous(), qs, ks, scales, v, pending)
    with pytest.raises(ValueError, match=r"k_tails\[0\]"):
        backend.merge_tail(out, lse, qs, [ks[0][..., :1].contiguous()], scales, v, pending)
    with pytest.raises(ValueError, match="pending"):
        backend.merge_tail(out, lse, qs, ks, scales, v, pending.float())
    with pytest.raises(ValueError, match="contiguous"):
        backend.merge_tail(out, lse, qs, ks, scales, v.transpose(-1, -2), pending)
    with pytest.raises(ValueError, match="one entry per key tensor"):
        backend.merge_tail(out, lse, qs, ks + ks, scales, v, pending)
