"""C++ CPU backend (and torch reference) quantization: gguf byte equality, a numpy codec, paths.

- q8_0 / q4_0 bytes equal gguf.quants (GGML's quantize_row_*_ref) on random arrays, including
  scales that go subnormal in fp16, exact .5 ties and all-zero blocks.
- Every format, over >= 1,000 random shapes: quantize equals an independent numpy encoder (the
  nf4 rule: nearest codebook entry of x / absmax in float32, ties to the lower index), and
  dequantize equals a numpy decoder bit for bit (value = float32(q) * float32(fp16 scale)).
- The scalar and SIMD paths, and caramba-core's torch reference, give identical bytes and
  identical floats; append writes the reference's bytes at random slots of random caches.
- Round-trip error per element, with amax the block's max |x| (u16 = 2^-11 is fp16's unit
  roundoff; subnormal fp16 scales add an absolute 2^-25 per unit of |q|):
      f32 exact; f16 |x| u16; q8_0 amax (1/254 + u16); q4_0 amax (1/8 + u16) (the element
      opposite the signed max clamps from 16 to 15: one full step); nf4 amax (0.1519 + u16)
      (half the widest codebook gap, (1 - 0.6962) / 2).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from caramba.kernels import reference
from codec_cases import random_append_case, random_rows
from quant_bounds import BLOCK, FORMATS, U16

cpu = pytest.importorskip(
    "caramba_kernels.cpu",
    reason="caramba_kernels is not installed (pip install ./packages/caramba-kernels)",
)
backend = cpu.backend

try:
    from gguf import GGMLQuantizationType
    from gguf import quants as gguf_quants
except ImportError:  # pragma: no cover - only where gguf is absent
    GGMLQuantizationType = gguf_quants = None

needs_gguf = pytest.mark.skipif(
    gguf_quants is None, reason="gguf is not installed (pip install gguf): no GGML reference"
)
# the reference and every SIMD variant this CPU runs ("simd" is the best of them)
PATHS = tuple(p for p in backend.paths if p not in ("auto", "simd"))
NF4 = np.array(
    [
        -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
        -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
        0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
        0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
    ],
    dtype=np.float32,
)  # fmt: skip


# -- an independent numpy codec ------------------------------------------------------------


def np_quantize_nf4(x: np.ndarray) -> np.ndarray:
    xb = x.astype(np.float32).reshape(-1, 64)
    amax = np.abs(xb).max(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        n = np.where(amax != 0, xb / amax, np.float32(0)).astype(np.float32)
    q = np.abs(n[..., None] - NF4).argmin(axis=-1).astype(np.uint8)  # first minimum on ties
    packed = q[:, :32] | (q[:, 32:] << 4)
    out = np.concatenate([amax.astype(np.float16).view(np.uint8), packed], axis=1)
    return out.reshape(*x.shape[:-1], -1)


def np_dequantize(kind: str, blocks: np.ndarray, D: int) -> np.ndarray:
    if kind in ("f32", "f16"):
        return blocks.astype(np.float32)
    bb = {"q8_0": 34, "q4_0": 18, "nf4": 34}[kind]
    b = blocks.reshape(-1, bb)
    d = b[:, :2].copy().view(np.float16).astype(np.float32)
    body = b[:, 2:]
    if kind == "q8_0":
        vals = body.view(np.int8).astype(np.float32)
    elif kind == "q4_0":
        vals = np.concatenate([body & 15, body >> 4], axis=1).astype(np.float32) - 8
    else:
        vals = NF4[np.concatenate([body & 15, body >> 4], axis=1)]
    return (vals * d).astype(np.float32).reshape(*blocks.shape[:-1], D)


def gguf_quantize(kind: str, x: np.ndarray) -> np.ndarray:
    qtype = {"q8_0": GGMLQuantizationType.Q8_0, "q4_0": GGMLQuantizationType.Q4_0}[kind]
    return gguf_quants.quantize(x, qtype)


def np_quantize(kind: str, x: np.ndarray) -> np.ndarray:
    if kind == "f32":
        return x.astype(np.float32)
    if kind == "f16":
        return x.astype(np.float16)
    if kind == "nf4":
        return np_quantize_nf4(x)
    return gguf_quantize(kind, x)


def round_trip_bound(kind: str, x: np.ndarray) -> np.ndarray:
    if kind == "f32":
        return np.zeros_like(x)
    if kind == "f16":
        return np.maximum(np.abs(x) * U16, 2.0**-25)
    block = BLOCK[kind]
    amax = np.abs(x.reshape(-1, block)).max(axis=1, keepdims=True)
    rel, qmax = {
        "q8_0": (1 / 254 + U16, 127), "q4_0": (1 / 8 + U16, 8), "nf4": (0.1519037 + U16, 1)
    }[kind]
    bound = amax * rel * (1 + 1e-4) + qmax * 2.0**-25
    return np.broadcast_to(bound, (amax.shape[0], block)).reshape(x.shape)


# -- tests ---------------------------------------------------------------------------------


@needs_gguf
@pytest.mark.parametrize("kind", ["q8_0", "q4_0"])
@pytest.mark.parametrize("path", PATHS)
def test_bytes_equal_gguf_quants(kind: str, path: str) -> None:
    rng = np.random.default_rng(3)
    for scale in (1e-7, 1e-3, 1.0, 1e4):
        x = (rng.standard_normal((257, 256)) * scale).astype(np.float32)
        x[0] = 0.0  # all-zero blocks: d = 0
        x[1, :32] = np.arange(32, dtype=np.float32) - 16  # exact ties after scaling
        x[2, :32] = -x[1, :32]  # the signed max negative and positive
        ours = backend.quantize(kind, x, path=path)
        row_bytes = 256 // 32 * {"q8_0": 34, "q4_0": 18}[kind]
        assert ours.dtype == np.uint8 and ours.shape == (257, row_bytes)
        np.testing.assert_array_equal(ours, gguf_quantize(kind, x))


@pytest.mark.parametrize("kind", FORMATS)
def test_codec_matches_numpy_over_1000_random_shapes(kind: str) -> None:
    """Every C++ path and caramba-core's torch reference ("torch") against the numpy codec."""
    if kind in ("q8_0", "q4_0") and gguf_quants is None:
        pytest.skip("gguf is not installed (pip install gguf): no GGML reference encoder")
    rng = np.random.default_rng(hash(kind) % 2**32)
    for _ in range(1000):
        x = random_rows(rng, kind)
        D = x.shape[-1]
        expected = np_quantize(kind, x)
        blocks = {p: backend.quantize(kind, x, path=p) for p in PATHS}
        blocks["torch"] = reference.quantize(kind, torch.from_numpy(x)).numpy()
        for p, got in blocks.items():
            assert got.dtype == expected.dtype and got.shape == expected.shape, (kind, p, x.shape)
            assert np.array_equal(got.view(np.uint8), expected.view(np.uint8)), (kind, p, x.shape)
        values = np_dequantize(kind, expected, D)
        decoded = {p: backend.dequantize(kind, expected, D, path=p) for p in PATHS}
        decoded["torch"] = reference.dequantize(kind, torch.from_numpy(expected), D).numpy()
        for p, got in decoded.items():
            assert got.dtype == np.float32 and got.shape == x.shape, (kind, p, x.shape)
            assert np.array_equal(got.view(np.uint32), values.view(np.uint32)), (kind, p, x.shape)
        err = np.abs(values.astype(np.float64) - x)
        assert np.all(err <= round_trip_bound(kind, x)), (kind, x.shape, float(err.max()))


@pytest.mark.parametrize("kind", FORMATS)
def test_append_matches_the_reference_over_1000_random_shapes(kind: str) -> None:
    """append writes exactly the torch reference's bytes into random caches at random slots."""
    rng = np.random.default_rng(50 + FORMATS.index(kind))
    for _ in range(1000):
        cache_x, rows, lengths = random_append_case(rng, kind)
        cache = backend.quantize(kind, cache_x)
        expected = reference.append(
            kind, torch.from_numpy(cache.copy()), torch.from_numpy(rows), torch.from_numpy(lengths)
        ).numpy()
        assert backend.append(kind, cache, rows, lengths) is cache
        where = (kind, cache_x.shape, lengths.tolist())
        assert np.array_equal(cache.view(np.uint8), expected.view(np.uint8)), where


def test_nf4_ties_go_to_the_lower_codebook_index() -> None:
    x = np.zeros((1, 64), np.float32)
    x[0, 0] = 1.0  # absmax 1: x / absmax = x
    mid = np.float32((NF4[6] + NF4[7]) / 2)  # equidistant in float32 from entries 6 and 7
    assert abs(mid - NF4[6]) == abs(mid - NF4[7])
    x[0, 1] = mid
    for p in PATHS:
        q = backend.quantize("nf4", x, path=p)
        assert q[0, 2 + 1] & 0x0F == 6
        assert q[0, 2 + 0] & 0x0F == 15


def test_quantize_writes_into_out_and_returns_it() -> None:
    x = np.ones((3, 64), np.float32)
    out = np.empty((3, 68), np.uint8)
    assert backend.quantize("q8_0", x, out=out) is out
    assert np.array_equal(out, backend.quantize("q8_0", x))


def test_append_quantizes_one_row_per_sequence_at_its_length() -> None:
    rng = np.random.default_rng(5)
    cache = np.zeros((2, 3, 5, 34), np.uint8)  # nf4, D = 64: one block
    rows = rng.standard_normal((2, 3, 64)).astype(np.float32)
    lengths = np.array([0, 4], np.int32)
    assert backend.append("nf4", cache, rows, lengths) is cache
    np.testing.assert_array_equal(cache[0, :, 0], backend.quantize("nf4", rows[0]))
    np.testing.assert_array_equal(cache[1, :, 4], backend.quantize("nf4", rows[1]))
    assert not cache[0, :, 1:].any() and not cache[1, :, :4].any()
