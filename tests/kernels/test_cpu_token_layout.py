"""C++ CPU decode over token-layout caches and return_lse, against a numpy float64 reference.

A token-layout cache (B, 1, S_max, row) holds one row per token spanning all Hkv heads (head g
at values [g*d, (g+1)*d), which may straddle quantization blocks); Hkv is inferred from the
query's head dim. Each case draws, per tensor (k / v, or k_sem / k_geo / v), a layout — all
token ("token") or each at random ("mixed", which includes the all-head calls) — and a per-head
width that is a block multiple or, in the token layout, often not (4, 8, 12, ... values of a
32-value block). >= 1,000 random shapes per op x key format x layout mode (batch 1..8, GQA
1..8, Hkv 1..8, odd S_max 1..80, ragged lengths, random splits and threads), on the scalar and
every SIMD path, with the log-sum-exp checked beside the output; GQA 9..16 in a test of its own.

Tolerances (test_cpu_decode's derivation; u = 2^-24, Sigma = max_t sum_paths |scale| sum_d
|q_d k_td|, D the summed key width):
    out:  tol_f32 = 2 (expm1(2 eps) + 2 (S + 4) u + 2^-21) max|v|,   eps = (D + 4) u Sigma
    lse:  a float32 score is off by <= eps and log-sum-exp is 1-Lipschitz in the scores; the
          sum of S exponentials adds (S + 4) u relative, the SIMD exp 2^-22, the final float32
          rounding |lse| u:   tol_lse = 2 (eps + (S + 4) u + 2^-21) + 2 |lse| u
Against the original floats the scores move by at most Delta (the quantization bound), so
out gains expm1(2 Delta) max|v| + max delta_v and lse gains Delta.
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

PATHS = tuple(p for p in backend.paths if p not in ("auto", "simd"))
CASES = 1000


class Tensor:
    """One cache tensor: stored bytes, and (B, Hkv, S, d) float64 views of the dequantized
    values, the original values and their quantization bound."""

    def __init__(self, rng, kind: str, B: int, Hkv: int, S: int, d: int, token: bool) -> None:
        self.kind, self.d, self.token = kind, d, token
        if token:
            x = rng.standard_normal((B, 1, S, Hkv * d)).astype(np.float32)
        else:
            x = rng.standard_normal((B, Hkv, S, d)).astype(np.float32)
        self.stored = backend.quantize(kind, x)
        deq = backend.dequantize(kind, self.stored, x.shape[-1]).astype(np.float64)
        delta = delta_bound(kind, x)
        self.deq, self.orig, self.delta = (
            self._heads(a, Hkv, d) for a in (deq, x.astype(np.float64), delta)
        )

    def _heads(self, a: np.ndarray, Hkv: int, d: int) -> np.ndarray:
        if not self.token:
            return a
        B, _, S, _ = a.shape
        return a.reshape(B, S, Hkv, d).transpose(0, 2, 1, 3)


def pick_width(rng, kind: str, Hkv: int, token: bool) -> int:
    """A per-head width; in the token layout only Hkv * d must fill whole blocks."""
    block = BLOCK[kind]
    if not token or Hkv == 1:
        if block == 1:
            return int(rng.integers(1, 80)) if rng.random() < 0.5 else 8 * int(rng.integers(1, 9))
        return block * int(rng.integers(1, 128 // block + 1))
    unit = block // math.gcd(block, Hkv)  # the smallest d with Hkv * d a block multiple
    return unit * int(rng.integers(1, max(1, 64 // unit) + 1))


def call(qs, ks, v, lengths, scales, **kw):
    if len(qs) == 1:
        return backend.decode_attention(
            qs[0],
            ks[0].stored,
            v.stored,
            lengths,
            scale=scales[0],
            k_format=ks[0].kind,
            v_format=v.kind,
            **kw,
        )
    return backend.dba_decode_attention(
        qs[0],
        qs[1],
        ks[0].stored,
        ks[1].stored,
        v.stored,
        lengths,
        scale_sem=scales[0],
        scale_geo=scales[1],
        k_sem_format=ks[0].kind,
        k_geo_format=ks[1].kind,
        v_format=v.kind,
        **kw,
    )


def run_case(
    rng: np.random.Generator, k_kinds: list[str], v_kind: str, mode: str, groups=(1, 9)
) -> None:
    B = int(rng.integers(1, 9))
    G = int(rng.integers(*groups))
    Hkv = int(rng.choice([1, 2, 3, 4, 8, 8])) if B <= 4 else int(rng.choice([1, 2, 4]))
    Hq = Hkv * G
    S = int(rng.integers(1, 81))
    lengths = rng.integers(1, S + 1, size=B).astype(np.int32)
    lengths[rng.random(B) < 0.3] = S
    kinds = [*k_kinds, v_kind]
    tokens = [True] * len(kinds) if mode == "token" else [bool(rng.random() < 0.5) for _ in kinds]
    tensors = []
    for kind, token in zip(kinds, tokens, strict=True):
        d = pick_width(rng, kind, Hkv, token)
        tensors.append(Tensor(rng, kind, B, Hkv, S, d, token))
    *ks, v = tensors
    qs = [(rng.standard_normal((B, Hq, k.d)) * 0.5).astype(np.float32) for k in ks]
    scales = [float(rng.uniform(0.5, 1.5) / math.sqrt(k.d)) for k in ks]

    out_deq, lse_deq, sigma = reference(qs, [k.deq for k in ks], scales, v.deq, lengths)
    out_orig, lse_orig, _ = reference(qs, [k.orig for k in ks], scales, v.orig, lengths)
    D_total = sum(k.d for k in ks)
    vmax = float(np.abs(v.deq).max())
    eps = (D_total + 4) * U * sigma
    tol_out = 2 * (math.expm1(2 * eps) + 2 * (S + 4) * U + 2**-21) * vmax
    tol_lse = 2 * (eps + (S + 4) * U + 2**-21) + 2 * float(np.abs(lse_deq).max()) * U
    delta = propagated(qs, [k.delta for k in ks], scales, lengths)
    tol_out_q = math.expm1(min(2 * delta, 700)) * vmax + float(v.delta.max()) + tol_out
    tol_lse_q = delta + tol_lse

    for path in PATHS:
        kw = dict(
            num_splits=int(rng.integers(0, 6)), num_threads=int(rng.integers(0, 4)), path=path
        )
        out, lse = call(qs, ks, v, lengths, scales, return_lse=True, **kw)
        assert out.shape == (B, Hq, v.d) and out.dtype == np.float32
        assert lse.shape == (B, Hq) and lse.dtype == np.float32
        where = (
            f"k={k_kinds} v={v_kind} layouts={['token' if t else 'head' for t in tokens]} "
            f"d={[t.d for t in tensors]} B={B} Hq={Hq} Hkv={Hkv} S={S} lengths={lengths} {kw}"
        )
        for name, got, want, tol in (
            ("out", out, out_deq, tol_out),
            ("lse", lse, lse_deq, tol_lse),
            ("out vs original", out, out_orig, tol_out_q),
            ("lse vs original", lse, lse_orig, tol_lse_q),
        ):
            err = float(np.abs(got - want).max())
            assert err <= tol, f"{where}: |{name} - float64 reference| = {err:.3g} > {tol:.3g}"


@pytest.mark.parametrize("mode", ["token", "mixed"])
@pytest.mark.parametrize("k_format", FORMATS)
def test_decode_layouts_match_float64_reference_over_1000_random_shapes(
    k_format: str, mode: str
) -> None:
    rng = np.random.default_rng(100 + 2 * FORMATS.index(k_format) + (mode == "mixed"))
    for i in range(CASES):
        run_case(rng, [k_format], FORMATS[i % 5], mode)


@pytest.mark.parametrize("mode", ["token", "mixed"])
@pytest.mark.parametrize("k_sem_format", FORMATS)
def test_dba_layouts_match_float64_reference_over_1000_random_shapes(
    k_sem_format: str, mode: str
) -> None:
    rng = np.random.default_rng(200 + 2 * FORMATS.index(k_sem_format) + (mode == "mixed"))
    combos = [(g, v) for g in FORMATS for v in FORMATS]
    for i in range(CASES):
        k_geo, v = combos[i % len(combos)]
        run_case(rng, [k_sem_format, k_geo], v, mode)


@pytest.mark.parametrize("k_format", ["q8_0", "q4_0"])
def test_groups_wider_than_eight_heads_match_float64_reference(k_format: str) -> None:
    """GQA groups of 9-16 query heads: the AVX-512 path scores quantized token rows from
    registers for up to 8 heads per KV head and through a stored transposed tile beyond."""
    rng = np.random.default_rng(600 + FORMATS.index(k_format))
    for i in range(200):
        k_kinds = [k_format] if i % 2 == 0 else [k_format, FORMATS[i % 5]]
        run_case(rng, k_kinds, FORMATS[(i // 2) % 5], "token", groups=(9, 17))


def merge(out1, lse1, out2, lse2):
    m = np.maximum(lse1, lse2)
    w1, w2 = np.exp(lse1 - m)[..., None], np.exp(lse2 - m)[..., None]
    return (out1 * w1 + out2 * w2) / (w1 + w2), m + np.log(w1[..., 0] + w2[..., 0])


def part(t: Tensor, b: int, lo: int, hi: int) -> np.ndarray:
    """Sequence b's cache positions [lo, hi) as a contiguous (1, ·, hi - lo, ·) cache."""
    return np.ascontiguousarray(t.stored[b : b + 1, :, lo:hi])


@pytest.mark.parametrize("kind", ["q8_0", "q4_0", "nf4", "f16"])
def test_two_partial_results_merged_by_lse_equal_the_whole(kind: str) -> None:
    """Positions [0, c) and [c, L) as two calls (the second on the cache sliced at c), merged
    by the contract's formula, equal one call over [0, L): the quantized-prefix + tail use."""
    rng = np.random.default_rng(300 + FORMATS.index(kind))
    B, Hkv, G, S = 3, 8, 4, 301
    Hq = Hkv * G
    ks = Tensor(rng, kind, B, Hkv, S, 8 if kind == "nf4" else 4, token=True)
    kg = Tensor(rng, kind, B, Hkv, S, 8, token=True)
    v = Tensor(rng, kind, B, Hkv, S, max(32, BLOCK[kind]), token=False)
    q_sem = rng.standard_normal((B, Hq, ks.d)).astype(np.float32)
    q_geo = rng.standard_normal((B, Hq, 8)).astype(np.float32)
    lengths = np.array([301, 257, 40], np.int32)
    cut = np.array([150, 256, 39], np.int32)  # per sequence, each part non-empty
    args = dict(scale_sem=0.5, scale_geo=0.35, k_sem_format=kind, k_geo_format=kind, v_format=kind)
    whole, lse_whole = backend.dba_decode_attention(
        q_sem, q_geo, ks.stored, kg.stored, v.stored, lengths, return_lse=True, **args
    )
    parts = []
    for b in range(B):
        c = int(cut[b])
        one = [np.array([c], np.int32), np.array([lengths[b] - c], np.int32)]
        first = backend.dba_decode_attention(
            q_sem[b : b + 1],
            q_geo[b : b + 1],
            part(ks, b, 0, c),
            part(kg, b, 0, c),
            part(v, b, 0, c),
            one[0],
            return_lse=True,
            **args,
        )
        second = backend.dba_decode_attention(
            q_sem[b : b + 1],
            q_geo[b : b + 1],
            part(ks, b, c, S),
            part(kg, b, c, S),
            part(v, b, c, S),
            one[1],
            return_lse=True,
            **args,
        )
        parts.append(merge(*first, *second))
    merged = np.concatenate([p[0] for p in parts])
    lse = np.concatenate([p[1] for p in parts])
    np.testing.assert_allclose(merged, whole, rtol=0, atol=3e-6)
    np.testing.assert_allclose(
        lse, lse_whole, rtol=0, atol=3e-6 * max(1.0, float(np.abs(lse).max()))
    )

    # the standard op the same way, token-layout k and v
    k = Tensor(rng, kind, B, Hkv, S, 12 if BLOCK[kind] == 32 else 8, token=True)
    vt = Tensor(rng, kind, B, Hkv, S, 4 if BLOCK[kind] == 32 else 8, token=True)
    q = rng.standard_normal((B, Hq, k.d)).astype(np.float32)
    kw = dict(scale=0.3, k_format=kind, v_format=kind, return_lse=True)
    whole, lse_whole = backend.decode_attention(q, k.stored, vt.stored, lengths, **kw)
    for b in range(B):
        c = int(cut[b])
        first = backend.decode_attention(
            q[b : b + 1], part(k, b, 0, c), part(vt, b, 0, c), np.array([c], np.int32), **kw
        )
        second = backend.decode_attention(
            q[b : b + 1],
            part(k, b, c, S),
            part(vt, b, c, S),
            np.array([lengths[b] - c], np.int32),
            **kw,
        )
        out_b, lse_b = merge(*first, *second)
        np.testing.assert_allclose(out_b, whole[b : b + 1], rtol=0, atol=3e-6)
        np.testing.assert_allclose(
            lse_b, lse_whole[b : b + 1], rtol=0, atol=3e-6 * max(1.0, float(np.abs(lse_b).max()))
        )


def test_split_and_thread_counts_agree_on_long_token_layout_sequences() -> None:
    """The Llama-3.2-1B DBA shape (32 q heads, 8 KV heads, sem 4, geo 8, v 32) over ragged
    lengths that cross many tiles: every split and thread count gives the float64 answer, and
    a fixed split the same bits whatever the thread count."""
    rng = np.random.default_rng(400)
    B, Hkv, G, S = 2, 8, 4, 1100
    ks = Tensor(rng, "q4_0", B, Hkv, S, 4, token=True)
    kg = Tensor(rng, "q8_0", B, Hkv, S, 8, token=True)
    v = Tensor(rng, "q4_0", B, Hkv, S, 32, token=False)
    q_sem = rng.standard_normal((B, Hkv * G, 4)).astype(np.float32)
    q_geo = rng.standard_normal((B, Hkv * G, 8)).astype(np.float32)
    lengths = np.array([1099, 33], np.int32)
    expected, lse_expected, _ = reference(
        [q_sem, q_geo], [ks.deq, kg.deq], [0.5, 0.35], v.deq, lengths
    )
    for path in PATHS:
        for splits in (1, 3, 8, 5000):
            results = []
            for threads in (1, 2, 3):
                out, lse = backend.dba_decode_attention(
                    q_sem,
                    q_geo,
                    ks.stored,
                    kg.stored,
                    v.stored,
                    lengths,
                    0.5,
                    0.35,
                    "q4_0",
                    "q8_0",
                    "q4_0",
                    num_splits=splits,
                    num_threads=threads,
                    path=path,
                    return_lse=True,
                )
                np.testing.assert_allclose(out, expected, rtol=0, atol=2e-5)
                np.testing.assert_allclose(lse, lse_expected, rtol=0, atol=2e-5)
                results.append((out, lse))
            for other in results[1:]:
                assert np.array_equal(other[0], results[0][0]) and np.array_equal(
                    other[1], results[0][1]
                )


def test_token_layout_with_one_kv_head_is_the_head_layout() -> None:
    rng = np.random.default_rng(500)
    B, Hq, S, D = 2, 4, 40, 64
    q = rng.standard_normal((B, Hq, D)).astype(np.float32)
    k = backend.quantize("q8_0", rng.standard_normal((B, 1, S, D)).astype(np.float32))
    v = backend.quantize("q4_0", rng.standard_normal((B, 1, S, 32)).astype(np.float32))
    lengths = np.array([40, 7], np.int32)
    out, lse = backend.decode_attention(q, k, v, lengths, 0.125, "q8_0", "q4_0", return_lse=True)
    kd = backend.dequantize("q8_0", k, D).astype(np.float64)
    vd = backend.dequantize("q4_0", v, 32).astype(np.float64)
    ref_out, ref_lse, _ = reference([q], [kd], [0.125], vd, lengths)
    np.testing.assert_allclose(out, ref_out, rtol=0, atol=2e-6)
    np.testing.assert_allclose(lse, ref_lse, rtol=0, atol=2e-6)


def test_torch_in_torch_out_with_lse_and_caller_buffers() -> None:
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(600)
    B, Hkv, G, S = 2, 8, 2, 20
    k = Tensor(rng, "q8_0", B, Hkv, S, 4, token=True)
    v = Tensor(rng, "q8_0", B, Hkv, S, 8, token=True)
    q = rng.standard_normal((B, Hkv * G, 4)).astype(np.float32)
    lengths = np.array([20, 5], np.int32)
    expected = backend.decode_attention(
        q, k.stored, v.stored, lengths, 0.5, "q8_0", "q8_0", return_lse=True
    )
    got = backend.decode_attention(
        torch.from_numpy(q),
        torch.from_numpy(k.stored),
        torch.from_numpy(v.stored),
        torch.from_numpy(lengths),
        0.5,
        "q8_0",
        "q8_0",
        return_lse=True,
    )
    assert all(isinstance(t, torch.Tensor) for t in got)
    assert np.array_equal(got[0].numpy(), expected[0]) and np.array_equal(
        got[1].numpy(), expected[1]
    )
    out, lse = (
        np.full((B, Hkv * G, 8), np.nan, np.float32),
        np.full((B, Hkv * G), np.nan, np.float32),
    )
    res = backend.decode_attention(
        q, k.stored, v.stored, lengths, 0.5, "q8_0", "q8_0", out=out, return_lse=True, lse_out=lse
    )
    assert res[0] is out and res[1] is lse
    assert np.array_equal(out, expected[0]) and np.array_equal(lse, expected[1])


def test_matches_the_caramba_torch_reference_with_token_layouts_and_lse() -> None:
    """The same calls through caramba-core's pure-torch reference (the contract's definition)
    and this backend: mixed head/token layouts, every format, both ops, out and lse."""
    import inspect

    torch = pytest.importorskip("torch")
    ref = pytest.importorskip("caramba.kernels", reason="caramba-core is not installed")
    if "return_lse" not in inspect.signature(ref.decode_attention).parameters:
        pytest.skip("this caramba-core's reference predates the token-layout / return_lse contract")
    rng = np.random.default_rng(700)
    torch.manual_seed(700)
    for _ in range(50):
        B, Hkv, G = int(rng.integers(1, 4)), int(rng.choice([1, 2, 4, 8])), int(rng.integers(1, 5))
        S = int(rng.integers(1, 70))
        kinds = [str(rng.choice(FORMATS)) for _ in range(3)]
        caches, dims = [], []
        for kind in kinds:
            token = Hkv > 1 and rng.random() < 0.6
            d = pick_width(rng, kind, Hkv, token)
            shape = (B, 1, S, Hkv * d) if token else (B, Hkv, S, d)
            caches.append(ref.quantize(kind, torch.randn(*shape)))
            dims.append(d)
        lengths = torch.from_numpy(rng.integers(1, S + 1, size=B).astype(np.int32))
        q_sem, q_geo = torch.randn(B, Hkv * G, dims[0]), torch.randn(B, Hkv * G, dims[1])
        calls = [
            (
                "dba_decode_attention",
                (q_sem, q_geo, caches[0], caches[1], caches[2], lengths, 0.3, 0.2, *kinds),
            ),
            ("decode_attention", (q_sem, caches[0], caches[2], lengths, 0.3, kinds[0], kinds[2])),
        ]
        for op, args in calls:
            want_out, want_lse = getattr(ref, op)(*args, return_lse=True)
            got_out, got_lse = getattr(backend, op)(*args, return_lse=True)
            where = f"{op} kinds={kinds} dims={dims} B={B} Hkv={Hkv} G={G} S={S}"
            torch.testing.assert_close(got_out, want_out, rtol=0, atol=2e-5, msg=where)
            torch.testing.assert_close(got_lse, want_lse, rtol=0, atol=2e-5, msg=where)
