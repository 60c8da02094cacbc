"""C++ CPU decode attention (standard/GQA and DBA) against a numpy float64 reference.

For each cache format, >= 1,000 random shapes per op (batch 1..8, GQA ratio 1..8, head dims
32..256, S_max 1..48, ragged lengths, random split and thread counts), on the scalar and the SIMD
path. Each case is checked twice:

1. Against float64 attention over the *dequantized* cache (what the kernel reads), so only
   float32 rounding separates them. With u = 2^-24, Sigma = max_t sum_paths |scale| sum_d |q_d k_td|
   and D the summed key width, a float32 score is off by at most eps = (D + 4) u Sigma; the
   softmax weights then move by at most a factor exp(+-2 eps); the weighted sum of S values and
   the normalisation add (S + 4) u max|v| each; the SIMD exp is good to 2^-22 relative:
       tol_f32 = 2 * (expm1(2 eps) + 2 (S + 4) u + 2^-21) * max|v|     (2 = slack)
2. Against float64 attention over the *original* floats, with the tolerance each format's
   quantization error allows. Per element the stored value is within delta of the original
   (amax = the block's max |x|, u16 = 2^-11): f32 0; f16 |x| u16; q8_0 amax (1/254 + u16);
   q4_0 amax (1/8 + u16); nf4 amax (0.1519 + u16) (see test_cpu_quant). Scores then move by at
   most Delta = max_t sum_paths |scale| sum_d |q_d| delta_k(t, d), softmax weights by
   expm1(2 Delta) in total, and the values by max delta_v:
       tol_quant = expm1(2 Delta) * max|v_deq| + max delta_v + tol_f32
   (a worst-case bound: loose for the 4-bit formats, tight for f16 and q8_0).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from float64_decode import propagated, reference
from quant_bounds import BLOCK, FORMATS, U, delta_bound

cpu = pytest.importorskip(
    "caramba_kernels.cpu",
    reason="caramba_kernels is not installed (pip install ./packages/caramba-kernels)",
)
backend = cpu.backend

# the reference and every SIMD variant this CPU runs ("simd" is the best of them)
PATHS = tuple(p for p in backend.paths if p not in ("auto", "simd"))
CASES = 1000


def pick_dim(rng: np.random.Generator, kind: str) -> int:
    if BLOCK[kind] == 1:
        return int(rng.integers(32, 80)) if rng.random() < 0.3 else 32 * int(rng.integers(1, 9))
    return BLOCK[kind] * int(rng.integers(1, 256 // BLOCK[kind] + 1))


def make_cache(rng, kind, B, Hkv, S, D):
    x = rng.standard_normal((B, Hkv, S, D)).astype(np.float32)
    stored = backend.quantize(kind, x)
    return x, stored, backend.dequantize(kind, stored, D).astype(np.float64)


def run_case(rng: np.random.Generator, k_kinds: list[str], v_kind: str) -> None:
    B = int(rng.integers(1, 9))
    G = int(rng.integers(1, 9))
    Hkv = int(rng.integers(1, 3)) if G <= 4 else 1
    Hq = Hkv * G
    S = int(rng.integers(1, 49))
    lengths = rng.integers(1, S + 1, size=B).astype(np.int32)
    lengths[rng.random(B) < 0.3] = S
    qs, ks_x, ks, ks_d, dks, scales = [], [], [], [], [], []
    for kind in k_kinds:
        D = pick_dim(rng, kind)
        qs.append((rng.standard_normal((B, Hq, D)) * 0.5).astype(np.float32))
        x, stored, deq = make_cache(rng, kind, B, Hkv, S, D)
        ks_x.append(x.astype(np.float64))
        ks.append(stored)
        ks_d.append(deq)
        dks.append(delta_bound(kind, x))
        scales.append(float(rng.uniform(0.5, 1.5) / math.sqrt(D)))
    Dv = pick_dim(rng, v_kind)
    v_x, v, v_d = make_cache(rng, v_kind, B, Hkv, S, Dv)

    ref_deq, _, sigma = reference(qs, ks_d, scales, v_d, lengths)
    ref_orig, _, _ = reference(qs, ks_x, scales, v_x.astype(np.float64), lengths)
    D_total = sum(q.shape[-1] for q in qs)
    vmax = float(np.abs(v_d).max())
    eps = (D_total + 4) * U * sigma
    tol_f32 = 2 * (math.expm1(2 * eps) + 2 * (S + 4) * U + 2**-21) * vmax
    delta = propagated(qs, dks, scales, lengths)
    delta_v = float(delta_bound(v_kind, v_x).max())
    tol_quant = math.expm1(min(2 * delta, 700)) * vmax + delta_v + tol_f32

    for path in PATHS:
        kw = dict(
            num_splits=int(rng.integers(0, 6)), num_threads=int(rng.integers(0, 4)), path=path
        )
        if len(k_kinds) == 1:
            out = backend.decode_attention(
                qs[0], ks[0], v, lengths, scale=scales[0], k_format=k_kinds[0], v_format=v_kind,
                **kw,
            )
        else:
            out = backend.dba_decode_attention(
                qs[0], qs[1], ks[0], ks[1], v, lengths, scale_sem=scales[0], scale_geo=scales[1],
                k_sem_format=k_kinds[0], k_geo_format=k_kinds[1], v_format=v_kind, **kw,
            )  # fmt: skip
        assert out.shape == (B, Hq, Dv) and out.dtype == np.float32
        where = f"k={k_kinds} v={v_kind} B={B} Hq={Hq} Hkv={Hkv} S={S} lengths={lengths} {kw}"
        err = float(np.abs(out - ref_deq).max())
        assert err <= tol_f32, f"{where}: |out - ref(dequantized)| = {err:.3g} > {tol_f32:.3g}"
        err = float(np.abs(out - ref_orig).max())
        assert err <= tol_quant, f"{where}: |out - ref(original)| = {err:.3g} > {tol_quant:.3g}"


@pytest.mark.parametrize("k_format", FORMATS)
def test_decode_matches_float64_reference_over_1000_random_shapes(k_format: str) -> None:
    rng = np.random.default_rng(FORMATS.index(k_format))
    for i in range(CASES):  # every value format 200 times
        run_case(rng, [k_format], FORMATS[i % 5])


@pytest.mark.parametrize("k_sem_format", FORMATS)
def test_dba_matches_float64_reference_over_1000_random_shapes(k_sem_format: str) -> None:
    rng = np.random.default_rng(20 + FORMATS.index(k_sem_format))
    # every (k_geo, v) pair several times, the rest random
    combos = [(g, v) for g in FORMATS for v in FORMATS]
    for i in range(CASES):
        k_geo, v = combos[i % len(combos)]
        run_case(rng, [k_sem_format, k_geo], v)


def test_split_k_and_thread_counts_agree_on_long_ragged_sequences() -> None:
    rng = np.random.default_rng(99)
    B, Hq, Hkv, S, D = 3, 8, 2, 1000, 64
    q = rng.standard_normal((B, Hq, D)).astype(np.float32)
    _, k, k_d = make_cache(rng, "q8_0", B, Hkv, S, D)
    _, v, v_d = make_cache(rng, "q4_0", B, Hkv, S, D)
    lengths = np.array([997, 1, 513], np.int32)  # odd, single, not a multiple of any chunk
    expected, _, _ = reference([q], [k_d], [D**-0.5], v_d, lengths)
    for path in PATHS:
        for splits in (1, 3, 7, 64, 5000):
            results = []
            for threads in (1, 2, 5):
                out = backend.decode_attention(
                    q, k, v, lengths, scale=D**-0.5, k_format="q8_0", v_format="q4_0",
                    num_splits=splits, num_threads=threads, path=path,
                )  # fmt: skip
                np.testing.assert_allclose(out, expected, rtol=0, atol=2e-5)
                results.append(out)
            # A fixed split is computed the same way whatever the thread count.
            for other in results[1:]:
                assert np.array_equal(other, results[0])


def test_torch_tensors_in_torch_tensors_out_and_out_is_written() -> None:
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(7)
    q = rng.standard_normal((2, 4, 64)).astype(np.float32)
    _, k, _ = make_cache(rng, "nf4", 2, 2, 10, 64)
    _, v, _ = make_cache(rng, "f16", 2, 2, 10, 32)
    lengths = np.array([10, 3], np.int32)
    expected = backend.decode_attention(
        q, k, v, lengths, scale=0.125, k_format="nf4", v_format="f16"
    )
    got = backend.decode_attention(
        torch.from_numpy(q).requires_grad_(), torch.from_numpy(k), torch.from_numpy(v),
        torch.from_numpy(lengths), 0.125, "nf4", "f16",  # caramba dispatch's positional order
    )  # fmt: skip
    assert isinstance(got, torch.Tensor) and got.dtype == torch.float32
    assert np.array_equal(got.numpy(), expected)
    out = torch.full((2, 4, 32), float("nan"))
    res = backend.decode_attention(
        q, k, v, lengths, scale=0.125, k_format="nf4", v_format="f16", out=out
    )
    assert res is out and np.array_equal(out.numpy(), expected)


def test_matches_the_caramba_torch_reference() -> None:
    torch = pytest.importorskip("torch")
    ref = pytest.importorskip("caramba.kernels", reason="caramba-core is not installed")
    rng = np.random.default_rng(8)
    B, Hq, Hkv, S = 2, 8, 2, 37
    lengths = torch.tensor([37, 20], dtype=torch.int32)
    for kind in FORMATS:
        q_sem = torch.randn(B, Hq, 64)
        q_geo = torch.randn(B, Hq, 128)
        k_sem = ref.quantize(kind, torch.randn(B, Hkv, S, 64))
        k_geo = ref.quantize("q8_0", torch.randn(B, Hkv, S, 128))
        v = ref.quantize(kind, torch.randn(B, Hkv, S, 64))
        args = (q_sem, q_geo, k_sem, k_geo, v, lengths, 0.1, 0.05, kind, "q8_0", kind)
        expected = ref.dba_decode_attention(*args)
        got = backend.dba_decode_attention(*args)
        torch.testing.assert_close(got, expected, rtol=0, atol=2e-5)
    del rng


def test_concurrent_calls_from_python_threads_agree() -> None:
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(12)
    q = rng.standard_normal((2, 8, 64)).astype(np.float32)
    _, k, _ = make_cache(rng, "q4_0", 2, 2, 300, 64)
    _, v, _ = make_cache(rng, "q8_0", 2, 2, 300, 64)
    lengths = np.array([300, 123], np.int32)

    def call(_: int) -> np.ndarray:
        return backend.decode_attention(
            q, k, v, lengths, scale=0.125, k_format="q4_0", v_format="q8_0",
            num_splits=4, num_threads=2,
        )  # fmt: skip

    expected = call(0)
    with ThreadPoolExecutor(4) as pool:  # the GIL is released inside: calls overlap
        for out in pool.map(call, range(40)):
            assert np.array_equal(out, expected)
