"""The all-heads kernel's block unpack (fused._unpack), bit for bit.

The kernel's fp16 tiles must hold each code times its block scale, computed in float32 and
rounded once to fp16 (q4_0: code - 8), or the bare codes where the scale rides on the weights,
in the column order kernels._columns gives. The decode attention tests check the kernel only
within tolerances; this pins the unpack exactly, so a faster way of building the same tiles
(fp16 through exponent tricks instead of int -> float conversions) can be checked against it.
It covers every 16-bit word of codes, with block scales drawn from all finite fp16 values
(subnormal results and overflow to inf included).
"""

from __future__ import annotations

import pytest
import torch

from triton_backend import DEVICE  # first: it sets TRITON_INTERPRET on a CPU-only machine

triton = pytest.importorskip("triton")

import triton.language as tl  # noqa: E402

from caramba_kernels.triton.fused import _unpack  # noqa: E402
from caramba_kernels.triton.kernels import FORMAT_CODES, _columns  # noqa: E402

WORDS = {"q8_0": 16, "q4_0": 8}  # 16-bit words of a block's codes


@triton.jit
def unpack_kernel(w_ptr, d_ptr, o_ptr, FMT: tl.constexpr, N: tl.constexpr, W: tl.constexpr,
                  C: tl.constexpr, SCALED: tl.constexpr):  # fmt: skip
    """One block a row: N rows of W int16 words and one fp16 scale, C = 32 values out."""
    r = tl.arange(0, N)
    i = tl.arange(0, W)
    w = tl.load(w_ptr + (r[:, None] * W + i[None, :])[:, None, :])
    d = tl.load(d_ptr + r[:, None])
    x = _unpack(w, d, FMT, N, C, SCALED)
    tl.store(o_ptr + r[:, None] * C + tl.arange(0, C)[None, :], x)


@triton.jit
def columns_kernel(o_ptr, FMT: tl.constexpr):
    tl.store(o_ptr + tl.arange(0, 32), _columns(FMT, 32, True))


def codes_in_tile_order(kind: str, words: torch.Tensor) -> torch.Tensor:
    """int32 (N, 32) codes of one block a row, in the tile's column order.

    The codes come from GGML's block layout (q8_0: byte j is value j, signed; q4_0: byte j's low
    nibble is value j, its high nibble value j + 16); tile position c holds logical value
    kernels._columns(c), the order in which the kernel gathers queries and scatters outputs."""
    b = words.view(torch.uint8).to(torch.int32).reshape(words.shape[0], -1)  # little-endian
    if kind == "q8_0":
        logical = torch.where(b >= 128, b - 256, b)
    else:
        logical = torch.cat([b & 15, b >> 4], dim=1)
    columns = torch.empty(32, dtype=torch.int32, device=DEVICE)
    columns_kernel[(1,)](columns, FMT=FORMAT_CODES[kind])
    return logical[:, columns.cpu().long()]


def finite_fp16_scales(n: int, gen: torch.Generator) -> torch.Tensor:
    """n fp16 values drawn uniformly from the finite bit patterns of both signs."""
    bits = torch.randint(0, 0x7C00, (n,), generator=gen, dtype=torch.int32)
    sign = torch.randint(0, 2, (n,), generator=gen, dtype=torch.int32) << 15
    return ((bits | sign).to(torch.int16)).view(torch.float16)


@pytest.mark.parametrize("scaled", [True, False], ids=["scaled", "codes"])
@pytest.mark.parametrize("kind", sorted(WORDS))
def test_unpack_matches_float32_conversion_bitwise(kind: str, scaled: bool) -> None:
    fmt, W = FORMAT_CODES[kind], WORDS[kind]
    words = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16)  # every word once
    N = words.numel() // W
    words = words.reshape(N, W)
    scales = finite_fp16_scales(N, torch.Generator().manual_seed(7))
    scales[:4] = torch.tensor([1.0, 6.0e-8, 3000.0, -0.0], dtype=torch.float16)
    out = torch.empty(N, 32, dtype=torch.float16)
    w_d, d_d, o_d = words.to(DEVICE), scales.to(DEVICE), out.to(DEVICE)
    unpack_kernel[(1,)](w_d, d_d, o_d, FMT=fmt, N=N, W=W, C=32, SCALED=scaled)
    got = o_d.cpu()

    q = codes_in_tile_order(kind, words)
    if scaled:
        q = q - 8 if kind == "q4_0" else q
        want = (q.to(torch.float32) * scales.to(torch.float32)[:, None]).to(torch.float16)
    else:
        want = q.to(torch.float16)
    mismatched = (got.view(torch.int16) != want.view(torch.int16)).sum().item()
    assert mismatched == 0, f"{kind}: {mismatched} of {want.numel()} values differ in their bits"
