"""The Metal kernels (metal/kernels/*.metal), compiled as C++17 against metal/shim, against the
caramba.kernels reference.

On Linux only the shader logic is verified this way: g++ builds the .metal sources with the shim
header and metal/shim/harness.cpp runs every kernel over the grid that the host's launch plan
(metal/host/plan.h, shared with the Objective-C++ glue) describes, emulating threadgroups,
SIMD-group reductions and barriers with fibers. The Metal host glue itself is not built or run
here (no Apple hardware).

Quantization must be byte-identical to the reference. Decode attention is checked twice per case
(the derivation is test_cpu_decode's, which this mirrors):

1. against float64 attention over the *dequantized* caches (what the kernel reads) within
       tol_f32 = 2 * (expm1(2 eps) + 2 (S + 4) u + 2^-21) * max|v|,   eps = (D + 4) u Sigma
   with u = 2^-24, Sigma = max_t sum_paths |scale| sum_d |q_d k_td|, D the summed key width; and
   against the float32 reference caramba.kernels.decode_attention within 2 * tol_f32 (both are
   within tol_f32 of the exact answer);
2. against float64 attention over the *original* floats within the quantization error:
       tol_quant = expm1(2 Delta) * max|v| + max delta_v + tol_f32
   where delta is the per-element bound of |dequantize(quantize(x)) - x| (f16 |x| 2^-11; q8_0
   amax (1/254 + 2^-11); q4_0 amax (1/8 + 2^-11); nf4 amax (0.1519 + 2^-11)) and Delta its
   effect on the scores.

Cache slots past each length are filled with NaN bytes, so a kernel that reads one fails; every
buffer sits against a guard page, so an out-of-bounds access crashes.
"""

from __future__ import annotations

import ctypes
import math
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from caramba.kernels import dba_decode_attention, decode_attention, reference
from caramba.kernels.formats import get_format, logical_width, storage_width
from codec_cases import as_bytes, check_codecs_against_reference
from real_weights import NAMES, gguf_bytes

REPO = Path(__file__).resolve().parents[2]
HARNESS = REPO / "metal" / "shim" / "harness.cpp"
FORMATS = ("f32", "f16", "q8_0", "q4_0", "nf4")
FORMAT_ID = {name: i for i, name in enumerate(FORMATS)}
U = 2.0**-24
U16 = 2.0**-11
# Random shapes per format and op; make test keeps the defaults below (each op's test says
# how many), CARAMBA_METAL_FUZZ=1000 runs 1,000 per format for every op (a few minutes).
FUZZ = os.environ.get("CARAMBA_METAL_FUZZ")


def fuzz_per_format(default: int) -> int:
    return int(FUZZ) if FUZZ else default

c_i64, c_i32, c_f32, c_ptr = ctypes.c_int64, ctypes.c_int32, ctypes.c_float, ctypes.c_void_p


@dataclass
class Shim:
    lib: ctypes.CDLL
    compiler_output: str

    def check(self, rc: int) -> None:
        if rc != 0:
            raise ShimError(rc, self.lib.cm_last_error().decode())


class ShimError(RuntimeError):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"[{code}] {message}")
        self.code = code
        self.message = message


@pytest.fixture(scope="session")
def shim(tmp_path_factory: pytest.TempPathFactory) -> Shim:
    gxx = shutil.which("g++")
    if gxx is None:
        pytest.skip("g++ is not installed: the Metal shader logic is tested by compiling it as C++")
    out = tmp_path_factory.mktemp("metal_shim") / "libcaramba_metal_shim.so"
    cmd = [
        gxx, "-std=c++17", "-O1", "-shared", "-fPIC",
        "-ffp-contract=off", "-fno-strict-aliasing",  # IEEE float32 as Metal's safe math mode
        "-Wall", "-Wextra", "-Wno-attributes",  # Metal's [[buffer(n)]] etc. are ignored
        f"-I{REPO / 'csrc' / 'include'}", str(HARNESS), "-o", str(out),
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.fail(f"the Metal shim harness does not compile:\n{proc.stderr}")
    lib = ctypes.CDLL(str(out))
    lib.cm_last_error.restype = ctypes.c_char_p
    lib.cm_set_guard.argtypes = [ctypes.c_int]
    lib.cm_fp32_to_fp16.argtypes = [c_ptr, c_i64, c_ptr]
    lib.cm_fp16_to_fp32.argtypes = [c_ptr, c_i64, c_ptr]
    lib.cm_quantize.argtypes = [ctypes.c_int, c_ptr, c_i64, c_i64, c_ptr]
    lib.cm_dequantize.argtypes = [ctypes.c_int, c_ptr, c_i64, c_i64, c_ptr]
    lib.cm_append.argtypes = [ctypes.c_int, c_ptr, c_i64, c_i64, c_i64, c_i64, c_ptr, c_ptr]
    lib.cm_decode.argtypes = [
        c_i64, c_i64, c_i64, c_i64, c_i32, c_i32,  # B, Hq, Hkv, S_max, splits, simdgroups
        c_ptr, c_ptr,  # q, q_geo
        c_ptr, ctypes.c_int, c_i64,  # k, format, dim
        c_ptr, ctypes.c_int, c_i64,  # k_geo, format, dim
        c_ptr, ctypes.c_int, c_i64,  # v, format, dim
        c_ptr, c_f32, c_f32, c_ptr,  # lengths, scale, scale_geo, out
        ctypes.c_int, ctypes.c_int, c_ptr,  # reverse, dry_run, plan_out (int64[6])
    ]  # fmt: skip
    lib.cm_emulator_selftest.argtypes = [ctypes.c_int, ctypes.c_int, c_ptr]
    return Shim(lib, proc.stderr)


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """The reference computations here are tiny; on a busy machine torch's thread pool costs
    far more than it saves (10x on two shared cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---- thin wrappers: torch tensors in, torch tensors out ------------------------------------


def from_bytes(kind: str, b: torch.Tensor) -> torch.Tensor:
    fmt = get_format(kind)
    return b if fmt.quantized else b.view(fmt.dtype)


def shim_quantize(shim: Shim, kind: str, x: torch.Tensor) -> torch.Tensor:
    x = x.to(torch.float32).contiguous()
    D = x.shape[-1]
    rows = x.numel() // D
    dst = torch.empty(
        rows, storage_width(kind, D) * get_format(kind).dtype.itemsize, dtype=torch.uint8
    )
    shim.check(shim.lib.cm_quantize(FORMAT_ID[kind], x.data_ptr(), rows, D, dst.data_ptr()))
    return from_bytes(kind, dst).reshape(*x.shape[:-1], -1)


def shim_dequantize(shim: Shim, kind: str, blocks: torch.Tensor, D: int) -> torch.Tensor:
    b = as_bytes(blocks)
    rows = b.numel() // b.shape[-1]
    y = torch.empty(rows, D, dtype=torch.float32)
    shim.check(shim.lib.cm_dequantize(FORMAT_ID[kind], b.data_ptr(), rows, D, y.data_ptr()))
    return y.reshape(*blocks.shape[:-1], D)


def shim_append(
    shim: Shim, kind: str, cache: torch.Tensor, rows: torch.Tensor, lengths
) -> torch.Tensor:
    """Writes rows into cache in place (as the Metal append does) and returns cache."""
    B, H, S, _ = cache.shape
    c = as_bytes(cache)
    r = rows.to(torch.float32).contiguous()
    shim.check(
        shim.lib.cm_append(
            FORMAT_ID[kind], c.data_ptr(), B, H, S, r.shape[-1], r.data_ptr(), lengths.data_ptr()
        )
    )
    return cache.copy_(from_bytes(kind, c).reshape(cache.shape))


@dataclass
class DecodeCall:
    qs: list[torch.Tensor]  # q (or q_sem, q_geo), float32 (B, Hq, D_i)
    ks: list[torch.Tensor]  # stored key caches
    k_kinds: list[str]
    v: torch.Tensor
    v_kind: str
    lengths: torch.Tensor
    scales: list[float]
    num_splits: int = 0
    simdgroups: int = 0
    reverse: bool = False


def shim_decode(shim: Shim, c: DecodeCall, *, dry_run: bool = False) -> tuple[torch.Tensor, list]:
    B, Hq = c.qs[0].shape[:2]
    Hkv, S = c.v.shape[1:3]
    Dv = logical_width(c.v_kind, c.v.shape[-1])
    dba = len(c.qs) == 2
    q = c.qs[0].contiguous()
    q_geo = c.qs[1].contiguous() if dba else None
    k = as_bytes(c.ks[0])
    k_geo = as_bytes(c.ks[1]) if dba else None
    v = as_bytes(c.v)
    out = torch.empty(B, Hq, Dv, dtype=torch.float32)
    plan = (c_i64 * 6)()
    shim.check(
        shim.lib.cm_decode(
            B, Hq, Hkv, S, c.num_splits, c.simdgroups,
            q.data_ptr(), q_geo.data_ptr() if dba else None,
            k.data_ptr(), FORMAT_ID[c.k_kinds[0]], q.shape[-1],
            k_geo.data_ptr() if dba else None, FORMAT_ID[c.k_kinds[-1]],
            q_geo.shape[-1] if dba else 0,
            v.data_ptr(), FORMAT_ID[c.v_kind], Dv,
            c.lengths.data_ptr(), c.scales[0], c.scales[-1] if dba else 0.0, out.data_ptr(),
            int(c.reverse), int(dry_run), plan,
        )
    )  # fmt: skip
    return out, list(plan)


# ---- compiler, fp16 and the emulator -------------------------------------------------------


def test_shader_sources_compile_as_cpp17_without_warnings(shim: Shim) -> None:
    assert "warning" not in shim.compiler_output, shim.compiler_output


def test_fp16_conversion_rounds_to_nearest_even_like_ieee_half(shim: Shim) -> None:
    # Every half -> float exactly (NaNs stay NaNs) ...
    bits = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16)
    got = torch.empty(bits.numel(), dtype=torch.float32)
    shim.lib.cm_fp16_to_fp32(bits.data_ptr(), bits.numel(), got.data_ptr())
    expected = bits.view(torch.float16).to(torch.float32)
    torch.testing.assert_close(got, expected, rtol=0, atol=0, equal_nan=True)
    # ... and float -> half: all halves, the midpoints between neighbours (ties), values around
    # the subnormal and overflow edges, and random floats of every magnitude.
    halves = expected[torch.isfinite(expected)].double()
    ordered = halves.unique()
    mid = ((ordered[1:] + ordered[:-1]) / 2).float()
    near = torch.cat(
        [mid.nextafter(torch.tensor(math.inf)), mid.nextafter(torch.tensor(-math.inf))]
    )
    gen = torch.Generator().manual_seed(0)
    rand = torch.randn(200_000, generator=gen) * torch.pow(
        2.0, torch.randint(-40, 40, (200_000,), generator=gen).float()
    )
    edges = torch.tensor(
        [65504.0, 65519.99, 65520.0, 70000.0, 2.0**-14, 2.0**-14 * (1 - 2.0**-12), 2.0**-24]
        + [2.0**-25, 2.0**-25 * 1.0001, 2.0**-26, 0.0, -0.0, math.inf, -math.inf, 1e-45]
    )
    x = torch.cat([halves.float(), mid, near, rand, edges, -edges])
    got16 = torch.empty(x.numel(), dtype=torch.int16)
    shim.lib.cm_fp32_to_fp16(x.data_ptr(), x.numel(), got16.data_ptr())
    assert torch.equal(got16, x.to(torch.float16).view(torch.int16))


def test_emulator_rejects_divergent_simd_functions_and_unreached_barriers(shim: Shim) -> None:
    result = (c_f32 * 1)()
    for which, words in ((0, "divergent SIMD-group function"), (1, "deadlock")):
        with pytest.raises(ShimError, match=words):
            shim.check(shim.lib.cm_emulator_selftest(which, 0, result))


def test_emulator_exposes_a_missing_barrier_in_one_scheduling_order(shim: Shim) -> None:
    seen = {}
    for which in (2, 3):  # 2: no barrier between the write and the read; 3: a barrier
        for reverse in (0, 1):
            result = (c_f32 * 1)()
            shim.check(shim.lib.cm_emulator_selftest(which, reverse, result))
            seen[which, reverse] = result[0]
    assert seen[3, 0] == seen[3, 1] == 1.0
    assert seen[2, 0] == 1.0 and math.isnan(seen[2, 1])


# ---- quantize / dequantize / append: byte-identical to the reference ---------------------


def rows_for(kind: str, gen: torch.Generator) -> torch.Tensor:
    """Random rows at many scales plus GGML's edge cases (zeros, ties, halves, tiny values)."""
    D = 128
    out = [
        torch.randn(6, D, generator=gen)
        * 10 ** float(torch.empty(1).uniform_(-6, 4, generator=gen))
        for _ in range(8)
    ]
    out.append(torch.zeros(2, D))
    tie = torch.zeros(1, D)
    tie[0, ::32], tie[0, 1::32] = 5.0, -5.0
    out += [tie, -tie]
    half = torch.zeros(1, D)
    half[0, ::32], half[0, 1::32], half[0, 2::32], half[0, 3::32] = 127.0, 2.5, -2.5, 126.5
    out.append(half)
    out.append(torch.linspace(-8, 8, 32).repeat(1, D // 32))
    out.append(torch.linspace(-1, 1, 64).repeat(1, D // 64))
    out.append(torch.full((1, D), 1e-7))
    out.append(torch.full((1, D), 3e-39))  # float32 subnormals
    out.append(torch.randn(3, D, generator=gen).to(torch.float16).float())
    # codebook midpoints for nf4: n exactly between two entries
    cb = torch.tensor([-1.0, -0.6961928009986877, 0.0, 0.07958029955625534, 1.0])
    out.append(torch.cat([(cb[:-1] + cb[1:]) / 2, torch.ones(1)]).repeat(1, 26)[:, :D])
    return torch.cat(out)


@pytest.mark.parametrize("kind", FORMATS)
def test_quantize_is_byte_identical_to_the_reference(shim: Shim, kind: str) -> None:
    gen = torch.Generator().manual_seed(FORMAT_ID[kind])
    x = rows_for(kind, gen)
    got = shim_quantize(shim, kind, x)
    expected = reference.quantize(kind, x)
    assert got.dtype == expected.dtype and got.shape == expected.shape
    assert torch.equal(as_bytes(got), as_bytes(expected))
    # three-dimensional input, several widths
    for D in (64, 128, 256):
        x = torch.randn(2, 3, D, generator=gen) * 3
        assert torch.equal(
            as_bytes(shim_quantize(shim, kind, x)), as_bytes(reference.quantize(kind, x))
        )


@pytest.mark.parametrize("kind", FORMATS)
def test_dequantize_is_bit_identical_to_the_reference(shim: Shim, kind: str) -> None:
    gen = torch.Generator().manual_seed(10 + FORMAT_ID[kind])
    D = 128
    stored = reference.quantize(kind, rows_for(kind, gen))
    random_bytes = torch.randint(
        0, 256, (64, as_bytes(stored).shape[-1]), generator=gen, dtype=torch.uint8
    )
    for blocks in (stored, from_bytes(kind, random_bytes)):  # random bytes: NaN / inf scales too
        got = shim_dequantize(shim, kind, blocks, D)
        expected = reference.dequantize(kind, blocks, D)
        torch.testing.assert_close(got, expected, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("kind", FORMATS)
def test_append_writes_exactly_the_reference_bytes_at_each_length(shim: Shim, kind: str) -> None:
    gen = torch.Generator().manual_seed(20 + FORMAT_ID[kind])
    for B, H, S, D in ((1, 1, 1, 64), (3, 2, 7, 128), (4, 3, 5, 64)):
        width = storage_width(kind, D) * get_format(kind).dtype.itemsize
        garbage = torch.randint(0, 256, (B, H, S, width), generator=gen, dtype=torch.uint8)
        cache = from_bytes(kind, garbage.clone())
        rows = torch.randn(B, H, D, generator=gen) * 2
        lengths = torch.randint(0, S, (B,), generator=gen, dtype=torch.int32)
        expected = reference.append(kind, cache.clone(), rows, lengths)
        shim_append(shim, kind, cache, rows, lengths)
        assert torch.equal(as_bytes(cache), as_bytes(expected))


@pytest.mark.parametrize("kind", ["q8_0", "q4_0"])
@pytest.mark.parametrize("name", NAMES)
def test_quantize_bytes_equal_gguf_on_real_weights(shim: Shim, name: str, kind: str) -> None:
    """SmolLM2's tensors (real_weights) against gguf.quants, byte for byte."""
    x, expected = gguf_bytes(name, kind)
    got = shim_quantize(shim, kind, torch.from_numpy(x))
    assert np.array_equal(as_bytes(got).numpy(), expected), f"{name} {x.shape} {kind}"


@pytest.mark.parametrize("kind", FORMATS)
def test_codecs_match_the_reference_over_random_shapes(shim: Shim, kind: str) -> None:
    """quantize, dequantize and append over random shapes (codec_cases: rank, width, magnitude,
    zero blocks, ties), byte for byte and bit for bit against the reference."""
    check_codecs_against_reference(
        np.random.default_rng(30 + FORMAT_ID[kind]), kind, fuzz_per_format(1000),
        lambda k, x: shim_quantize(shim, k, x),
        lambda k, blocks, D: shim_dequantize(shim, k, blocks, D),
        lambda k, cache, rows, lengths: shim_append(shim, k, cache, rows, lengths),
    )  # fmt: skip


# ---- decode attention ---------------------------------------------------------------------


def delta_bound(kind: str, x: torch.Tensor) -> torch.Tensor:
    """Per-element bound on |dequantize(quantize(x)) - x| (test_cpu_quant's derivation)."""
    x = x.double()
    if kind == "f32":
        return torch.zeros_like(x)
    if kind == "f16":
        return torch.clamp(x.abs() * U16, min=2.0**-25)
    block = get_format(kind).block
    amax = x.reshape(*x.shape[:-1], -1, block).abs().amax(dim=-1, keepdim=True)
    rel, qmax = {
        "q8_0": (1 / 254 + U16, 127),
        "q4_0": (1 / 8 + U16, 8),
        "nf4": (0.1519037 + U16, 1),
    }[kind]
    bound = amax * rel * (1 + 1e-4) + qmax * 2.0**-25
    return bound.expand(*amax.shape[:-1], block).reshape(x.shape)


def attention64(qs, ks, scales, v, lengths):
    """float64 attention, and Sigma: qs (B, Hq, D_i), ks (B, Hkv, S, D_i), v (B, Hkv, S, Dv)."""
    B, Hq = qs[0].shape[:2]
    Hkv, S = v.shape[1:3]
    s = torch.zeros(B, Hkv, Hq // Hkv, S, dtype=torch.float64)
    sigma = torch.zeros_like(s)
    for q, k, scale in zip(qs, ks, scales, strict=True):
        qg = q.double().reshape(B, Hkv, Hq // Hkv, -1)
        s = s + scale * torch.einsum("bhgd,bhsd->bhgs", qg, k.double())
        sigma = sigma + abs(scale) * torch.einsum("bhgd,bhsd->bhgs", qg.abs(), k.double().abs())
    valid = (torch.arange(S)[None, :] < lengths.long()[:, None])[:, None, None, :]
    p = torch.softmax(s.masked_fill(~valid, -math.inf), dim=-1)
    out = torch.einsum("bhgs,bhsd->bhgd", p, v.double()).reshape(B, Hq, -1)
    return out, float(sigma.masked_fill(~valid, 0).max())


def propagated(qs, dks, scales, lengths) -> float:
    """max_t sum_paths |scale| sum_d |q_d| delta_k(t, d) over valid positions."""
    B, Hq = qs[0].shape[:2]
    Hkv, S = dks[0].shape[1:3]
    total = torch.zeros(B, Hkv, Hq // Hkv, S, dtype=torch.float64)
    for q, dk, scale in zip(qs, dks, scales, strict=True):
        qg = q.double().abs().reshape(B, Hkv, Hq // Hkv, -1)
        total = total + abs(scale) * torch.einsum("bhgd,bhsd->bhgs", qg, dk)
    valid = (torch.arange(S)[None, :] < lengths.long()[:, None])[:, None, None, :]
    return float(total.masked_fill(~valid, 0).max())


def poison_past_lengths(stored: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """A copy whose slots at and past each length are all 0xff bytes (NaN floats, NaN scales)."""
    b = as_bytes(stored.clone())
    for i, n in enumerate(lengths.tolist()):
        b[i, :, n:] = 0xFF
    return b if stored.dtype == torch.uint8 else b.view(stored.dtype)


def pick_dim(gen: torch.Generator, kind: str) -> int:
    block = get_format(kind).block
    if block == 1 and torch.rand(1, generator=gen).item() < 0.15:
        return int(torch.randint(1, 161, (1,), generator=gen))  # plain formats: any width
    return block * int(torch.randint(1, 256 // block + 1, (1,), generator=gen))


def rint(gen: torch.Generator, lo: int, hi: int) -> int:
    """A random int in [lo, hi]."""
    return int(torch.randint(lo, hi + 1, (1,), generator=gen))


def run_case(shim: Shim, gen: torch.Generator, k_kinds: list[str], v_kind: str) -> None:
    B, G = rint(gen, 1, 8), rint(gen, 1, 8)
    Hkv = rint(gen, 1, 2) if G <= 4 else 1
    Hq = G * Hkv
    S = rint(gen, 1, 200) if torch.rand(1, generator=gen).item() < 0.1 else rint(gen, 1, 80)
    lengths = torch.randint(1, S + 1, (B,), generator=gen, dtype=torch.int32)
    lengths[torch.rand(B, generator=gen) < 0.3] = S
    qs, ks_x, ks, ks_d, dks, scales = [], [], [], [], [], []
    for kind in k_kinds:
        D = pick_dim(gen, kind)
        qs.append(torch.randn(B, Hq, D, generator=gen) * 0.5)
        x = torch.randn(B, Hkv, S, D, generator=gen)
        stored = reference.quantize(kind, x)
        ks_x.append(x)
        ks.append(poison_past_lengths(stored, lengths))
        ks_d.append(reference.dequantize(kind, stored, D))
        dks.append(delta_bound(kind, x))
        scales.append(float(torch.empty(1).uniform_(0.5, 1.5, generator=gen)) / math.sqrt(D))
    Dv = pick_dim(gen, v_kind)
    v_x = torch.randn(B, Hkv, S, Dv, generator=gen)
    v_stored = reference.quantize(v_kind, v_x)
    v_d = reference.dequantize(v_kind, v_stored, Dv)
    call = DecodeCall(
        qs, ks, k_kinds, poison_past_lengths(v_stored, lengths), v_kind, lengths, scales,
        num_splits=[0, 1, 2, 3, 5, 8, 40][rint(gen, 0, 6)], simdgroups=rint(gen, 0, 4),
        reverse=bool(rint(gen, 0, 1)),
    )  # fmt: skip
    shim.lib.cm_set_guard(rint(gen, 0, 1))
    out, plan = shim_decode(shim, call)
    shim.lib.cm_set_guard(0)

    if len(k_kinds) == 1:
        ref32 = decode_attention(qs[0], call.ks[0], call.v, lengths, scales[0], k_kinds[0], v_kind)
    else:
        ref32 = dba_decode_attention(
            qs[0], qs[1], call.ks[0], call.ks[1], call.v, lengths, scales[0], scales[1],
            k_kinds[0], k_kinds[1], v_kind,
        )  # fmt: skip
    ref_deq, sigma = attention64(qs, ks_d, scales, v_d, lengths)
    ref_orig, _ = attention64(qs, ks_x, scales, v_x, lengths)
    D_total = sum(q.shape[-1] for q in qs)
    vmax = float(v_d.abs().max())
    eps = (D_total + 4) * U * sigma
    tol_f32 = 2 * (math.expm1(2 * eps) + 2 * (S + 4) * U + 2**-21) * vmax
    delta = propagated(qs, dks, scales, lengths)
    tol_quant = (
        math.expm1(min(2 * delta, 700)) * vmax + float(delta_bound(v_kind, v_x).max()) + tol_f32
    )

    where = (
        f"k={k_kinds} v={v_kind} B={B} Hq={Hq} Hkv={Hkv} S={S} lengths={lengths.tolist()} "
        f"D={[q.shape[-1] for q in qs]} Dv={Dv} splits/chunk/simdgroups={plan[:3]} "
        f"reverse={call.reverse}"
    )
    assert out.shape == (B, Hq, Dv) and bool(torch.isfinite(out).all()), where
    err = float((out.double() - ref_deq).abs().max())
    assert err <= tol_f32, f"{where}: |out - ref64(dequantized)| = {err:.3g} > {tol_f32:.3g}"
    err = float((out - ref32).abs().max())
    assert err <= 2 * tol_f32, f"{where}: |out - reference| = {err:.3g} > {2 * tol_f32:.3g}"
    err = float((out.double() - ref_orig).abs().max())
    assert err <= tol_quant, f"{where}: |out - ref64(original)| = {err:.3g} > {tol_quant:.3g}"


def test_decode_matches_the_reference_over_random_shapes_and_every_format_pair(shim: Shim) -> None:
    gen = torch.Generator().manual_seed(1)
    pairs = [(k, v) for k in FORMATS for v in FORMATS]
    for i in range(fuzz_per_format(30) * len(FORMATS)):  # default: every (k, v) pair 6 times
        k, v = pairs[i % len(pairs)]
        run_case(shim, gen, [k], v)


def test_dba_matches_the_reference_over_random_shapes_and_every_format_triple(shim: Shim) -> None:
    gen = torch.Generator().manual_seed(2)
    triples = [(s, g, v) for s in FORMATS for g in FORMATS for v in FORMATS]
    for i in range(fuzz_per_format(50) * len(FORMATS)):  # default: every triple twice
        s, g, v = triples[i % len(triples)]
        run_case(shim, gen, [s, g], v)


def test_split_k_and_simdgroup_counts_agree_on_long_ragged_sequences(shim: Shim) -> None:
    gen = torch.Generator().manual_seed(3)
    B, Hq, Hkv, S, D = 3, 4, 2, 700, 64
    q = torch.randn(B, Hq, D, generator=gen)
    k = reference.quantize("q8_0", torch.randn(B, Hkv, S, D, generator=gen))
    v = reference.quantize("q4_0", torch.randn(B, Hkv, S, D, generator=gen))
    lengths = torch.tensor([697, 1, 333], dtype=torch.int32)  # odd, single, not a multiple of 32
    k, v = poison_past_lengths(k, lengths), poison_past_lengths(v, lengths)
    expected = reference.decode_attention(q, k, v, lengths, D**-0.5, "q8_0", "q4_0")
    for splits, simdgroups in ((1, 1), (1, 8), (3, 2), (7, 3), (64, 1), (5000, 4), (0, 0)):
        call = DecodeCall([q], [k], ["q8_0"], v, "q4_0", lengths, [D**-0.5], splits, simdgroups)
        out, plan = shim_decode(shim, call)
        assert plan[0] == min(splits, S) or splits == 0
        torch.testing.assert_close(out, expected, rtol=0, atol=2e-5)


# ---- the launch plan: choices and argument errors (shared with the Metal host glue) ---------


def plan_of(shim: Shim, **kw) -> list:
    """A dry run of the decode launch plan: [splits, chunk_len, simdgroups, threadgroup bytes,
    workspace bytes, caramba_metal_decode_workspace_bytes]. No buffer is touched, so the pointers
    are placeholders; a key width Dg means DBA."""
    D, Dg, Dv = kw.get("D", 128), kw.get("Dg", 0), kw.get("Dv", 128)
    scale, scale_geo = kw.get("scales", [0.1, 0.1])
    plan = (c_i64 * 6)()
    shim.check(
        shim.lib.cm_decode(
            kw.get("B", 1), kw.get("Hq", 8), kw.get("Hkv", 8), kw.get("S", 4096),
            kw.get("splits", 0), kw.get("simdgroups", 0),
            1, 1 if Dg else None,  # q, q_geo
            1, FORMAT_ID[kw.get("k", "q8_0")], D,
            1, FORMAT_ID[kw.get("g", "q4_0")], Dg,
            1, FORMAT_ID[kw.get("v", "q8_0")], Dv,
            1, scale, scale_geo, 1,  # lengths, scales, out
            0, 1, plan,  # reverse, dry_run
        )
    )  # fmt: skip
    return list(plan)


def test_auto_plan_fills_the_gpu_without_short_chunks(shim: Shim) -> None:
    splits, chunk, simdgroups, tg_bytes, ws, _ = plan_of(shim, B=1, Hq=8, S=4096, Dv=128)
    assert splits == 32 and chunk == 128 and simdgroups == 4  # 256 threadgroups
    assert tg_bytes % 16 == 0 and tg_bytes >= 4 * (128 + 4 * (32 + 2 + 128))
    assert ws == 1 * 8 * 32 * (2 + 128) * 4
    splits, chunk, _, _, ws, _ = plan_of(shim, B=4, Hq=64, Hkv=8, S=4096)
    assert (splits, chunk, ws) == (1, 4096, 0)  # 256 threadgroups without splitting
    splits, chunk, simdgroups, *_ = plan_of(shim, B=1, Hq=2, Hkv=1, S=100)
    assert (splits, chunk, simdgroups) == (2, 50, 2)  # chunks of >= 64 positions -> 2
    splits, chunk, *_ = plan_of(shim, S=10, splits=4)
    assert (splits, chunk) == (4, 3)
    splits, chunk, *_ = plan_of(shim, S=10, splits=6)  # no split without a position
    assert (splits, chunk) == (5, 2)


def test_workspace_bytes_is_what_the_plan_asks_for(shim: Shim) -> None:
    for B, Hq, S, splits, Dv in ((1, 8, 4096, 0, 128), (3, 4, 700, 7, 64), (2, 2, 10, 6, 32)):
        plan = plan_of(shim, B=B, Hq=Hq, Hkv=2, S=S, splits=splits, v="f16", Dv=Dv)
        assert plan[4] == plan[5] == B * Hq * plan[0] * (2 + Dv) * 4


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"Hq": 6, "Hkv": 4}, "num_kv_heads: 4 KV heads do not divide 6 query heads"),
        ({"k": "q4_0", "D": 48}, "k: row width 48 is not a positive multiple of the q4_0 block"),
        ({"v": "nf4", "Dv": 96}, "v: row width 96 is not a positive multiple of the nf4 block"),
        ({"Dg": 40, "g": "q8_0"}, "k_geo: row width 40"),
        ({"v": "f16", "Dv": 320}, "v: value width 320 is over the Metal kernels' limit of 256"),
        ({"simdgroups": 9}, "simdgroups: expected 0 (auto) .. 8, got 9"),
        ({"splits": -1}, "num_splits: expected >= 0"),
        ({"scales": [math.inf, 1.0]}, "scale: must be finite"),
        ({"Dg": 64, "scales": [1.0, math.nan]}, "scale_geo: must be finite"),
        ({"k": "f16", "D": 8000}, "threadgroup memory"),
        ({"B": 0}, "batch: expected a count"),
    ],
)
def test_invalid_arguments_are_refused_with_a_message_naming_the_argument(
    shim: Shim, kw: dict, message: str
) -> None:
    with pytest.raises(ShimError, match=message.replace("(", r"\(").replace(")", r"\)")) as err:
        plan_of(shim, **kw)
    assert err.value.code == 1


def test_quantize_refuses_rows_that_do_not_fill_whole_blocks(shim: Shim) -> None:
    x = torch.zeros(2, 48)
    dst = torch.zeros(1024, dtype=torch.uint8)
    rc = shim.lib.cm_quantize(FORMAT_ID["nf4"], x.data_ptr(), 2, 48, dst.data_ptr())
    with pytest.raises(ShimError, match="dim: row width 48 is not a positive multiple of the nf4"):
        shim.check(rc)
    assert not dst.any()
