"""Reference quantization: GGML byte-equality, round-trip error bounds, append, bad input.

Round-trip bounds, per block with amax = max|x| (derivations; every bound gets a relative slack
of 1e-4 for the float32 steps and an absolute 2^-25 per unit of |q| for fp16 subnormal scales):

    f32   exact
    f16   |x| * 2^-11                       (fp16 round-to-nearest, 11-bit significand)
    q8_0  amax * (1/254 + 2^-11)            |x/d - q| <= 1/2 with d = amax/127, plus
                                            |q| * |d - fp16(d)| <= 127 * d * 2^-11
    q4_0  amax * (1/8 + 2^-11)              d = max/-8; |x/d - (q-8)| <= 1/2, except the
                                            element at -max, clamped from 16 to 15 (error d);
                                            plus 8 * |d - fp16(d)|
    nf4   amax * (0.1519036 + 2^-11)        half the widest codebook gap, (1 - 0.6961928)/2,
                                            plus |NF4[q]| * |amax - fp16(amax)|
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from caramba.kernels import NF4_CODEBOOK, append, bytes_per_row, dequantize, quantize
from caramba.kernels.formats import FORMATS, storage_width

try:
    from gguf import GGMLQuantizationType
    from gguf import quants as gguf_quants
except ImportError:  # pragma: no cover - exercised only where gguf is absent
    GGMLQuantizationType = gguf_quants = None

needs_gguf = pytest.mark.skipif(
    gguf_quants is None, reason="gguf is not installed (pip install gguf): no GGML reference"
)
GGML_TYPES = {"q8_0": "Q8_0", "q4_0": "Q4_0"}

# (relative to block amax, absolute per element); see the module docstring.
BOUNDS = {
    "q8_0": (1 / 254 + 2**-11, 127 * 2**-25),
    "q4_0": (1 / 8 + 2**-11, 8 * 2**-25),
    "nf4": ((1 - 0.6961928009986877) / 2 + 2**-11, 2**-25),
}


def ggml_bytes(kind: str, x: np.ndarray) -> np.ndarray:
    qtype = getattr(GGMLQuantizationType, GGML_TYPES[kind])
    return gguf_quants.quantize(x, qtype)


def random_rows(rng: np.random.Generator, rows: int, D: int) -> np.ndarray:
    """Rows drawn from a few distributions and scales, including heavy tails and sparsity."""
    kind = rng.integers(0, 5)
    if kind == 0:
        x = rng.standard_normal((rows, D))
    elif kind == 1:
        x = rng.uniform(-1, 1, (rows, D))
    elif kind == 2:
        x = rng.standard_cauchy((rows, D)).clip(-1e4, 1e4)
    elif kind == 3:
        x = rng.standard_normal((rows, D)) * (rng.random((rows, D)) < 0.1)
    else:
        x = rng.integers(-20, 21, (rows, D)).astype(np.float64)
    scale = 10.0 ** rng.uniform(-6, 4)
    return (x * scale).astype(np.float32)


def structured_rows(D: int) -> list[np.ndarray]:
    """Edge cases of the GGML rules, each as a (rows, D) float32 array."""
    cases = []
    z = np.zeros((2, D), np.float32)
    cases.append(z)  # d = 0, id = 0
    cases.append(np.full((1, D), 3.25, np.float32))
    cases.append(np.full((1, D), -3.25, np.float32))
    tie = np.zeros((1, D), np.float32)
    tie[0, ::32] = 5.0  # +a then -a in each block: the first one sets q4_0's sign
    tie[0, 1::32] = -5.0
    cases.append(tie)
    tie_neg = -tie
    cases.append(tie_neg)
    # Exactly half-way values of x * id for q8_0: amax 127 gives id = 1.
    half = np.zeros((1, D), np.float32)
    half[0, ::32] = 127.0
    half[0, 1::32] = 2.5
    half[0, 2::32] = -2.5
    half[0, 3::32] = 0.5
    half[0, 4::32] = -0.5
    half[0, 5::32] = 126.5
    cases.append(half)
    # q4_0 rounding edges: max -8 gives id = 1, so x + 8.5 lands on integers and halves.
    edge = np.tile(np.linspace(-8, 8, 32, dtype=np.float32), (1, D // 32))
    cases.append(edge)
    cases.append(-edge)
    cases.append(np.tile(np.arange(32, dtype=np.float32) - 15.5, (1, D // 32)))
    cases.append(np.full((1, D), 1e-7, np.float32))  # fp16-subnormal scale
    cases.append(np.full((1, D), 6.0e-8, np.float32) * np.sign(np.arange(D) % 3 - 1))
    cases.append(np.full((1, D), 1.0e6, np.float32))  # large but finite fp16 scale
    single = np.zeros((1, D), np.float32)
    single[0, 7] = -0.3
    cases.append(single)
    cases.append(np.float32(0.49999997) * np.ones((1, D), np.float32) * np.float32(1 / 127))
    return cases


@needs_gguf
@pytest.mark.filterwarnings("ignore:overflow encountered in cast")
@pytest.mark.parametrize("kind", ["q8_0", "q4_0"])
def test_quantize_matches_ggml_bytes_on_random_rows(kind: str) -> None:
    rng = np.random.default_rng(1234)
    for _ in range(300):
        D = 32 * int(rng.integers(1, 9))
        x = random_rows(rng, int(rng.integers(1, 6)), D)
        ours = quantize(kind, torch.from_numpy(x)).numpy()
        assert ours.dtype == np.uint8
        np.testing.assert_array_equal(ours, ggml_bytes(kind, x))


@needs_gguf
@pytest.mark.filterwarnings("ignore:overflow encountered in cast")
@pytest.mark.parametrize("kind", ["q8_0", "q4_0"])
def test_quantize_matches_ggml_bytes_on_structured_rows(kind: str) -> None:
    for x in structured_rows(128):
        np.testing.assert_array_equal(
            quantize(kind, torch.from_numpy(x)).numpy(), ggml_bytes(kind, x)
        )


@needs_gguf
@pytest.mark.filterwarnings("ignore:overflow encountered in cast")
@pytest.mark.parametrize("kind", ["q8_0", "q4_0"])
def test_dequantize_matches_ggml_values(kind: str) -> None:
    rng = np.random.default_rng(7)
    qtype = getattr(GGMLQuantizationType, GGML_TYPES[kind])
    for _ in range(50):
        x = random_rows(rng, 3, 96)
        blocks = ggml_bytes(kind, x)
        ours = dequantize(kind, torch.from_numpy(blocks), 96).numpy()
        np.testing.assert_array_equal(ours, gguf_quants.dequantize(blocks, qtype))


@needs_gguf
@pytest.mark.filterwarnings("ignore:overflow encountered in cast")
def test_quantize_keeps_leading_dimensions() -> None:
    x = torch.randn(2, 3, 5, 64)
    flat = ggml_bytes("q8_0", x.reshape(-1, 64).numpy())
    out = quantize("q8_0", x)
    assert out.shape == (2, 3, 5, bytes_per_row("q8_0", 64))
    np.testing.assert_array_equal(out.reshape(-1, out.shape[-1]).numpy(), flat)


def test_bytes_per_row_follows_the_block_table() -> None:
    assert bytes_per_row("f32", 64) == 256
    assert bytes_per_row("f16", 64) == 128
    assert bytes_per_row("q8_0", 64) == 68
    assert bytes_per_row("q4_0", 64) == 36
    assert bytes_per_row("nf4", 128) == 68
    assert storage_width("f16", 64) == 64 and storage_width("q4_0", 64) == 36
    assert {f: (FORMATS[f].block, FORMATS[f].block_bytes) for f in FORMATS} == {
        "f32": (1, 4),
        "f16": (1, 2),
        "q8_0": (32, 34),
        "q4_0": (32, 18),
        "nf4": (64, 34),
    }


def nf4_numpy(x: np.ndarray) -> np.ndarray:
    """Independent nf4: per-block loops over the codebook in float32, ties to the lower index."""
    cb = np.array(NF4_CODEBOOK, np.float32)
    rows, D = x.shape
    out = np.zeros((rows, D // 64 * 34), np.uint8)
    for r in range(rows):
        for b in range(D // 64):
            blk = x[r, b * 64 : (b + 1) * 64]
            amax = np.float32(np.abs(blk).max())
            n = blk / amax if amax != 0 else np.zeros_like(blk)
            codes = np.zeros(64, np.uint8)
            for j in range(64):
                best, idx = np.float32(np.inf), 0
                for i in range(16):
                    dist = np.float32(abs(np.float32(n[j]) - cb[i]))
                    if dist < best:
                        best, idx = dist, i
                codes[j] = idx
            o = b * 34
            out[r, o : o + 2] = np.array([amax], np.float16).view(np.uint8)
            out[r, o + 2 : o + 34] = codes[:32] | (codes[32:] << 4)
    return out


@pytest.mark.filterwarnings("ignore:overflow encountered in cast")
def test_nf4_matches_an_independent_float32_implementation() -> None:
    rng = np.random.default_rng(3)
    for _ in range(20):
        x = random_rows(rng, 2, 128)
        np.testing.assert_array_equal(quantize("nf4", torch.from_numpy(x)).numpy(), nf4_numpy(x))
    for x in structured_rows(128):
        np.testing.assert_array_equal(quantize("nf4", torch.from_numpy(x)).numpy(), nf4_numpy(x))


def test_nf4_breaks_exact_ties_toward_the_lower_index() -> None:
    cb = np.array(NF4_CODEBOOK, np.float32)
    x = np.zeros((1, 64), np.float32)
    x[0, 0] = 1.0  # absmax 1: n == x exactly
    x[0, 1] = cb[8] / 2  # equidistant from 0.0 (index 7) and cb[8]
    x[0, 2] = cb[6] / 2  # equidistant from cb[6] and 0.0: index 6
    x[0, 40] = cb[14]  # exact entries land on themselves; high nibble of byte 8
    out = quantize("nf4", torch.from_numpy(x)).numpy()[0]
    assert out[2] & 0x0F == 15  # element 0: 1.0 -> index 15
    assert out[3] & 0x0F == 7
    assert out[4] & 0x0F == 6
    assert out[2 + 8] >> 4 == 14


def test_q4_0_packs_element_j_low_and_j_plus_16_high() -> None:
    x = torch.zeros(1, 32)
    x[0, 0] = -8.0  # d = 1: q = x + 8
    x[0, 1] = 3.0
    x[0, 17] = -5.0
    out = quantize("q4_0", x)[0]
    assert out[2].item() == (0 | (8 << 4))  # element 0 -> q 0, element 16 (0.0) -> q 8
    assert out[3].item() == (11 | (3 << 4))


@pytest.mark.parametrize("kind", ["f32", "f16", "q8_0", "q4_0", "nf4"])
def test_round_trip_error_stays_within_the_format_bound(kind: str) -> None:
    rng = np.random.default_rng(11)
    block = FORMATS[kind].block
    for _ in range(100):
        D = 64 * int(rng.integers(1, 5))
        # Keep every scale inside fp16's range (max 65504); overflow is tested for bytes only.
        x = torch.from_numpy(random_rows(rng, 4, D)).clamp(-6e4, 6e4)
        back = dequantize(kind, quantize(kind, x), D)
        assert back.dtype == torch.float32 and back.shape == x.shape
        err = (back.double() - x.double()).abs()
        if kind == "f32":
            assert err.max().item() == 0.0
            continue
        if kind == "f16":
            bound = x.double().abs() * 2**-11 + 2**-25
        else:
            rel, absolute = BOUNDS[kind]
            amax = x.double().reshape(4, D // block, block).abs().amax(-1, keepdim=True)
            bound = (amax * rel * (1 + 1e-4) + absolute).expand(4, D // block, block)
            bound = bound.reshape(4, D)
        assert bool((err <= bound).all()), f"{kind}: worst excess {(err - bound).max().item()}"


@pytest.mark.parametrize("kind", ["q8_0", "q4_0", "nf4"])
def test_round_trip_bound_is_nearly_reached(kind: str) -> None:
    """The bounds above are tight, so tests built on them are not vacuous."""
    x = torch.randn(4096, 64)
    block = FORMATS[kind].block
    err = (dequantize(kind, quantize(kind, x), 64) - x).abs().reshape(-1, block)
    amax = x.reshape(-1, block).abs().amax(-1)
    ratio = (err.amax(-1) / amax).max().item()
    assert BOUNDS[kind][0] * 0.6 < ratio <= BOUNDS[kind][0] * (1 + 1e-4)


@pytest.mark.parametrize("kind", ["f32", "f16", "q8_0", "q4_0", "nf4"])
def test_append_writes_one_row_per_sequence_at_its_length(kind: str) -> None:
    B, H, S, D = 3, 2, 9, 64
    cache = quantize(kind, torch.randn(B, H, S, D))
    before = cache.clone()
    rows = torch.randn(B, H, D)
    lengths = torch.tensor([0, 8, 4], dtype=torch.int32)
    assert append(kind, cache, rows, lengths) is cache
    expect = quantize(kind, rows)
    for b, pos in enumerate(lengths.tolist()):
        assert torch.equal(cache[b, :, pos], expect[b])
        others = [s for s in range(S) if s != pos]
        assert torch.equal(cache[b, :, others], before[b, :, others])


def test_unknown_format_is_a_value_error_with_a_suggestion() -> None:
    with pytest.raises(ValueError, match=r"kind: unknown cache format 'q8_1'.*'q8_0'"):
        quantize("q8_1", torch.randn(2, 32))


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: quantize("q8_0", torch.randn(2, 48)), r"x: row width 48 is not a multiple"),
        (lambda: quantize("nf4", torch.randn(2, 32)), r"x: row width 32 .* nf4 block size 64"),
        (lambda: quantize("q4_0", torch.ones(2, 32, dtype=torch.int32)), r"x: expected a float"),
        (lambda: quantize("q4_0", [1.0] * 32), r"x: expected a torch.Tensor"),
        (
            lambda: dequantize("q8_0", torch.zeros(2, 34, dtype=torch.int8), 32),
            r"blocks: a q8_0 cache holds torch.uint8",
        ),
        (
            lambda: dequantize("q8_0", torch.zeros(2, 35, dtype=torch.uint8), 32),
            r"blocks: last dimension 35",
        ),
        (
            lambda: dequantize("q8_0", torch.zeros(2, 68, dtype=torch.uint8), 32),
            r"D: 32 does not match",
        ),
        (lambda: dequantize("f16", torch.zeros(2, 32), 32), r"blocks: a f16 cache holds"),
        (lambda: dequantize("q4_0", torch.zeros(2, 18, dtype=torch.uint8), 0), r"D: row width"),
    ],
)
def test_bad_quantization_input_names_the_argument(call, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()


@pytest.mark.parametrize(
    ("lengths", "rows_shape", "message"),
    [
        (torch.tensor([0, 9], dtype=torch.int32), (2, 1, 32), r"lengths: .*\[0, 8\]"),
        (torch.tensor([-1, 0], dtype=torch.int32), (2, 1, 32), r"lengths: .*\[0, 8\]"),
        (torch.tensor([0, 1]), (2, 1, 32), r"lengths: expected dtype torch.int32"),
        (torch.tensor([0], dtype=torch.int32), (2, 1, 32), r"lengths: expected shape \(2,\)"),
        (torch.tensor([0, 1], dtype=torch.int32), (2, 2, 32), r"rows: expected shape"),
        (torch.tensor([0, 1], dtype=torch.int32), (2, 1, 64), r"rows: width 64"),
    ],
)
def test_bad_append_input_names_the_argument(lengths, rows_shape, message: str) -> None:
    cache = torch.zeros(2, 1, 9, 34, dtype=torch.uint8)
    with pytest.raises(ValueError, match=message):
        append("q8_0", cache, torch.randn(*rows_shape), lengths)
