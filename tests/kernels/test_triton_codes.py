"""The all-heads kernel's code loads (fused._load_codes), word for word.

Blocks start at any even byte address, so their codes sit 0 or 2 bytes past a 32-bit word
boundary. The kernel reads aligned 32-bit words and takes the 16-bit halves across neighbouring
words; this checks the halves against the 16-bit words read directly, for blocks of both
phases side by side, masked rows, and a block ending the buffer (its last code bytes come in
through the aligned word holding them, which may reach 2 bytes past the end, never a page).
"""

from __future__ import annotations

import pytest
import torch

from triton_backend import DEVICE  # first: it sets TRITON_INTERPRET on a CPU-only machine

triton = pytest.importorskip("triton")

import triton.language as tl  # noqa: E402

from caramba_kernels.triton.fused import _load_codes  # noqa: E402

BLOCK_BYTES = {16: 34, 8: 18}  # 16-bit code words of a block -> its bytes (q8_0, q4_0)


@triton.jit
def codes_kernel(buf_ptr, starts_ptr, keep_ptr, o_ptr, N: tl.constexpr, NB: tl.constexpr,
                 W: tl.constexpr):  # fmt: skip
    r = tl.arange(0, N)[:, None] * NB + tl.arange(0, NB)[None, :]
    start = buf_ptr + tl.load(starts_ptr + r)
    keep = tl.load(keep_ptr + r) != 0
    w = _load_codes(start, keep, N, NB, W)
    tl.store(o_ptr + r[:, :, None] * W + tl.arange(0, W)[None, None, :], w)


@pytest.mark.parametrize("W", [16, 8])
@pytest.mark.parametrize("seed", range(3))
def test_codes_match_16_bit_reads(W: int, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    N, NB, block = 16, 4, BLOCK_BYTES[W]
    blocks = N * NB
    # Blocks packed back to back from an offset of 0 or 2 bytes (both phases alternate), then
    # shuffled so neighbouring tile entries are not neighbours in memory; the last block ends
    # the buffer.
    offset = 2 * int(torch.randint(0, 2, (1,), generator=gen))
    buf = torch.randint(-128, 128, (offset + blocks * block,), generator=gen, dtype=torch.int8)
    starts = offset + block * torch.randperm(blocks, generator=gen)
    keep = torch.rand(blocks, generator=gen) < 0.8
    out = torch.full((blocks, W), -1, dtype=torch.int32)
    dev = [t.to(DEVICE) for t in (buf, starts.to(torch.int32), keep.to(torch.int32), out)]
    codes_kernel[(1,)](*dev, N=N, NB=NB, W=W)
    got = dev[3].cpu()
    words = torch.stack([buf[s + 2 : s + block].view(torch.int16) for s in starts.tolist()])
    want = words.to(torch.int32) & 0xFFFF
    assert torch.equal(got[keep], want[keep])
    assert torch.equal(got[~keep], torch.zeros_like(got[~keep]))
