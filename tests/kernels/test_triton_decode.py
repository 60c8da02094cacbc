"""Triton fused decode attention (standard and DBA, split-K) against the caramba-core reference.

Runs on CUDA when a GPU is present (many shapes), otherwise on the CPU under TRITON_INTERPRET=1
(few shapes: the interpreter runs each program in numpy). Both sides read the same quantized
bytes, so only float32 rounding separates them: with Sigma the largest |score| sum
max_t sum_paths scale * sum_d |q_d k_td|, the score error of either side is at most
(D + 4) 2^-24 Sigma, softmax moves by exp(+-2 eps), the weighted sum adds (S + 4) 2^-24 max|v|,
and the GPU's exp2 is approximate (2^-22 relative); two such sides differ by at most
    tol = 2 * ((exp(2 eps) - 1) + (S + 4) 2^-24 + 2^-21) * max|v| * 2   (2 = slack).

The all-heads kernel (fused.py) multiplies fp16 operands: q * scale and the dequantized keys
round to fp16 (2^-11 relative each), so its score error is eps16 = (2 * 2^-11 + (D + 4) 2^-24)
Sigma, and the weights p (or p * d) round to fp16 too (2^-11 relative):
    tol16 = 2 * ((exp(2 eps16) - 1) + 2^-10 + (S + 4) 2^-24 + 2^-21) * max|v| * 2.
Each fuzz case runs both kernels: the per-KV-head one (fused off) and, where it applies, the
all-heads one.
"""

from __future__ import annotations

import math
import os

import pytest
import torch

from caramba.kernels import dispatch, reference
from caramba.kernels.formats import FORMATS
from triton_backend import DEVICE, ON_GPU, backend, ops

# Fuzzed problems per format set. A GPU compiles a kernel for each new shape class (1-3 s on an
# H100, cached in ~/.triton/cache for later runs), the interpreter runs it in numpy: about as slow
# per problem, so both take the same default.
FUZZ_CASES = int(os.environ.get("CARAMBA_TRITON_FUZZ", 10))
# Each format set's cases split over this many tests, so pytest -n spreads a long fuzz over cores.
FUZZ_SHARDS = int(os.environ.get("CARAMBA_TRITON_FUZZ_SHARDS", 1))
U = 2.0**-24


def tolerance(qs, ks_deq, scales, v_deq, group: int, fp16: bool = False) -> float:
    sigma = 0
    for q, k, scale in zip(qs, ks_deq, scales, strict=True):
        kk = k.double().abs().repeat_interleave(group, dim=1)
        sigma = sigma + (q.double().abs()[:, :, None, :] * kk).sum(-1) * abs(scale)
    D = max(q.shape[-1] for q in qs)
    S = v_deq.shape[2]
    eps = ((D + 4) * U + (2 * 2**-11 if fp16 else 0)) * float(sigma.max())
    weights = 2**-10 if fp16 else 0.0
    return 2 * (math.expm1(2 * eps) + weights + (S + 4) * U + 2**-21) * float(v_deq.abs().max()) * 2


def draw(gen: torch.Generator, formats: tuple[str, ...], *, small: bool):
    """A random decode problem: q's, stored caches, lengths, scales (all on the CPU)."""

    def randint(lo: int, hi: int) -> int:
        return int(torch.randint(lo, hi + 1, (1,), generator=gen))

    def dim(kind: str) -> int:
        block = max(FORMATS[kind].block, 32)
        return block * randint(1, 256 // block)  # 32 .. 256, not only powers of two

    B = randint(1, 3 if small else 8)
    Hkv = randint(1, 2 if small else 4)
    group = randint(1, 8)
    S_max = randint(1, 80 if small else 700)
    lengths = torch.randint(1, S_max + 1, (B,), generator=gen, dtype=torch.int32)
    lengths[0] = S_max if randint(0, 1) else max(1, S_max - randint(0, 40))
    key_formats, v_format = formats[:-1], formats[-1]
    dims = [dim(kind) for kind in key_formats]
    Dv = dim(v_format)
    qs = [torch.randn(B, Hkv * group, D, generator=gen) for D in dims]
    ks = [
        reference.quantize(kind, torch.randn(B, Hkv, S_max, D, generator=gen))
        for kind, D in zip(key_formats, dims, strict=True)
    ]
    v = reference.quantize(v_format, torch.randn(B, Hkv, S_max, Dv, generator=gen))
    scales = [float(torch.empty(1).uniform_(0.5, 2.0, generator=gen)) / D**0.5 for D in dims]
    return qs, ks, v, lengths, scales, dims, Dv


def run(impl, formats, qs, ks, v, lengths, scales, num_splits):
    if len(qs) == 1:
        return impl.decode_attention(
            qs[0], ks[0], v, lengths, scales[0], formats[0], formats[1], num_splits=num_splits
        )
    return impl.dba_decode_attention(
        qs[0], qs[1], ks[0], ks[1], v, lengths, scales[0], scales[1], *formats,
        num_splits=num_splits,
    )  # fmt: skip


def check_case(formats, qs, ks, v, lengths, scales, dims, Dv, num_splits) -> None:
    from caramba_kernels.triton import ops

    expected = run(reference, formats, qs, ks, v, lengths, scales, None)
    dev = [t.to(DEVICE) for t in (*qs, *ks, v, lengths)]
    n = len(qs)
    ks_deq = [reference.dequantize(f, k, D) for f, k, D in zip(formats, ks, dims, strict=False)]
    v_deq = reference.dequantize(formats[-1], v, Dv)
    shape = f"q {tuple(qs[0].shape)} cache {tuple(v.shape)} lengths {lengths.tolist()}"
    for fused in (False, True):
        if fused and not _fused_applies(formats, qs, ks, v, dims, Dv):
            continue
        saved = ops.TUNING["fused"]
        ops.TUNING["fused"] = fused
        try:
            got = run(backend, formats, dev[:n], dev[n : 2 * n], dev[-2], dev[-1], scales,
                      num_splits)  # fmt: skip
        finally:
            ops.TUNING["fused"] = saved
        assert got.dtype == torch.float32 and got.shape == expected.shape
        tol = tolerance(qs, ks_deq, scales, v_deq, qs[0].shape[1] // v.shape[1], fp16=fused)
        err = float((got.cpu().double() - expected.double()).abs().max())
        assert err <= tol, (
            f"{formats} {shape} splits {num_splits} fused {fused}: error {err:.3g} > {tol:.3g}"
        )


def _fused_applies(formats, qs, ks, v, dims, Dv) -> bool:
    from caramba_kernels.triton import plan
    from caramba_kernels.triton.layout import CacheView

    keys = [CacheView(k, f, False, D, D) for k, f, D in zip(ks, formats, dims, strict=False)]
    return plan.fused_applies(qs[0].shape[1], keys, CacheView(v, formats[-1], False, Dv, Dv))


STANDARD = [("f16", "f16"), ("q8_0", "q8_0"), ("q4_0", "q4_0")]
DBA = [("f16", "f16", "f16"), ("q8_0", "q8_0", "q8_0"), ("q4_0", "q4_0", "q4_0")]


@pytest.mark.parametrize("shard", range(FUZZ_SHARDS))
@pytest.mark.parametrize("formats", STANDARD + DBA, ids="-".join)
def test_fused_decode_matches_the_reference_on_fuzzed_shapes(formats, shard: int) -> None:
    seed = len(formats) * 100 + STANDARD.index(formats[-2:])
    for case in range(shard, FUZZ_CASES, FUZZ_SHARDS):
        gen = torch.Generator().manual_seed(seed * 100_003 + case)  # the same case in any shard
        problem = draw(gen, formats, small=not ON_GPU)
        S_max = problem[2].shape[2]
        splits = [None, 1, 2, 3, 7, S_max, S_max + 5][case % 7]
        check_case(formats, *problem, num_splits=splits)


@pytest.mark.parametrize("formats", [("q8_0", "q4_0"), ("f16", "q8_0", "q4_0")], ids="-".join)
def test_cuda_core_path_matches_the_reference(formats, monkeypatch) -> None:
    """The other kernel variant: byte-wise loads and broadcast-and-sum (FMA) products."""
    from caramba_kernels.triton import ops as module

    monkeypatch.setitem(module.TUNING, "use_dot", False)
    monkeypatch.setitem(module.TUNING, "packed", False)  # and one byte load per value
    gen = torch.Generator().manual_seed(21)
    for case in range(4):
        problem = draw(gen, formats, small=not ON_GPU)
        check_case(formats, *problem, num_splits=[None, 1, 4][case % 3])


@pytest.mark.parametrize(
    "formats",
    [
        ("f32", "f32"),
        ("nf4", "nf4"),
        ("q8_0", "f16"),
        ("q4_0", "q8_0", "q4_0"),
        ("nf4", "f16", "q8_0"),
    ],
    ids="-".join,
)
def test_other_formats_and_mixed_formats_match_the_reference(formats) -> None:
    gen = torch.Generator().manual_seed(7)
    for case in range(4):
        problem = draw(gen, formats, small=not ON_GPU)
        check_case(formats, *problem, num_splits=[None, 3][case % 2])


def test_llama_sized_gqa_group_with_long_split_cache() -> None:
    """32 query heads on 8 KV heads, head dim 64, a few hundred tokens, many splits."""
    gen = torch.Generator().manual_seed(3)
    B, Hkv, group, S, D = 1, 8 if ON_GPU else 2, 4, 300, 64
    q = torch.randn(B, Hkv * group, D, generator=gen)
    k = reference.quantize("q8_0", torch.randn(B, Hkv, S, D, generator=gen))
    v = reference.quantize("q4_0", torch.randn(B, Hkv, S, D, generator=gen))
    lengths = torch.tensor([S - 13], dtype=torch.int32)
    for splits in (None, 9):
        check_case(("q8_0", "q4_0"), [q], [k], v, lengths, [D**-0.5], [D], D, splits)


def test_split_plan_covers_the_cache_and_fills_the_gpu() -> None:
    from caramba_kernels.triton.plan import plan_decode

    split = plan_decode(1, 8, 4, 65536, [64, 64], torch.device("cpu"), None)
    assert split.n_splits == 1  # the CPU counts as one multiprocessor
    split = plan_decode(1, 8, 4, 1000, [64], torch.device("cpu"), 7)
    assert split.n_splits * split.split_len >= 1000 and split.n_splits <= 7
    assert (split.n_splits - 1) * split.split_len < 1000


def test_split_granule_keeps_the_count_near_a_full_wave() -> None:
    from caramba_kernels.triton.plan import _splits

    # The CUDA row kernel at batch 8, 32k positions: 4 warps a split, 1584 resident warps.
    # Rounded to its 128-position round the plan would fall to 43 splits (344 of 396 blocks);
    # rounded to 32 positions it keeps 49 (392 blocks), never passing the wave.
    assert _splits(32, 32768, 128, 1584, None) == (768, 43)
    assert _splits(32, 32768, 128, 1584, None, 32) == (672, 49)
    for S in (4096, 5000, 32768, 65536, 100_003):
        split_len, n = _splits(32, S, 128, 1584, None, 32)
        assert split_len % 32 == 0 and n * 32 <= 1584
        assert n * split_len >= S > (n - 1) * split_len


# The per-KV-head kernel is float32-accurate; the all-heads one multiplies fp16 operands.
ATOL = {False: 1e-5, True: 2e-3}


@pytest.mark.parametrize("fused", [False, True])
def test_slots_past_the_length_are_never_read(fused, monkeypatch) -> None:
    monkeypatch.setitem(ops.TUNING, "fused", fused)
    q = torch.randn(2, 4, 64)
    k = reference.quantize("q8_0", torch.randn(2, 2, 40, 64))
    v = torch.randn(2, 2, 40, 32).to(torch.float16)
    lengths = torch.tensor([17, 40], dtype=torch.int32)
    expected = reference.decode_attention(q, k, v, lengths, 0.125, "q8_0", "f16")
    k[0, :, 17:] = 0xFF  # scale bytes 0xFFFF: fp16 NaN
    v[0, :, 17:] = float("nan")
    dev = [t.to(DEVICE) for t in (q, k, v, lengths)]
    for splits in (1, 3):
        got = backend.decode_attention(*dev, 0.125, "q8_0", "f16", num_splits=splits)
        torch.testing.assert_close(got.cpu(), expected, rtol=1e-5, atol=ATOL[fused])


@pytest.mark.parametrize("fused", [False, True])
def test_cache_views_with_strides_are_read_in_place(fused, monkeypatch) -> None:
    """K/V as slices of a larger preallocated buffer (capacity > S_max, more heads)."""
    monkeypatch.setitem(ops.TUNING, "fused", fused)
    gen = torch.Generator().manual_seed(11)
    kbuf = reference.quantize("q4_0", torch.randn(2, 3, 50, 64, generator=gen))
    vbuf = torch.randn(2, 3, 50, 32, generator=gen).half()
    k, v = kbuf[:, 1:, :30], vbuf[:, 1:, :30]
    q = torch.randn(2, 4, 64, generator=gen)[:, :, :]
    lengths = torch.tensor([30, 11], dtype=torch.int32)
    expected = reference.decode_attention(q, k, v, lengths, 0.1, "q4_0", "f16")
    kd, vd = kbuf.to(DEVICE)[:, 1:, :30], vbuf.to(DEVICE)[:, 1:, :30]
    got = backend.decode_attention(q.to(DEVICE), kd, vd, lengths.to(DEVICE), 0.1, "q4_0", "f16")
    torch.testing.assert_close(got.cpu(), expected, rtol=1e-5, atol=ATOL[fused])


def good_args():
    q = torch.randn(2, 4, 64, device=DEVICE)
    k = reference.quantize("q8_0", torch.randn(2, 2, 8, 64)).to(DEVICE)
    v = reference.quantize("q4_0", torch.randn(2, 2, 8, 32)).to(DEVICE)
    lengths = torch.tensor([8, 1], dtype=torch.int32, device=DEVICE)
    return dict(q=q, k=k, v=v, lengths=lengths, scale=0.125, k_format="q8_0", v_format="q4_0")


def with_(**changes):
    args = good_args()
    for key, value in changes.items():
        args[key] = value(args) if callable(value) else value
    return args


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (with_(q=lambda a: a["q"][0]), r"q: expected 3 dimensions"),
        (with_(q=lambda a: a["q"][:, :3]), r"k: 2 KV heads do not divide the query's 3 heads"),
        (with_(q=lambda a: a["q"][:, :, :32]), r"k: rows hold 64 values in q8_0"),
        (with_(k=lambda a: a["k"].float()), r"k: a q8_0 cache holds torch.uint8"),
        (with_(k=lambda a: a["k"][:, :, :0]), r"k: the cache is empty"),
        (with_(k=lambda a: a["k"][..., 1:]), r"k: last dimension 67"),
        (with_(k_format="q5_1"), r"k_format: unknown cache format 'q5_1'"),
        (with_(v=lambda a: a["v"][:, :, :5]), r"v: S_max 5 does not match"),
        (with_(lengths=lambda a: a["lengths"].long()), r"lengths: expected dtype torch.int32"),
        (with_(lengths=lambda a: a["lengths"][:1]), r"lengths: expected shape \(2,\)"),
        (with_(scale=float("nan")), r"scale: expected a finite float"),
        (with_(k=lambda a: a["k"].transpose(2, 3)), r"k: "),
    ],
)
def test_bad_input_names_the_argument(args, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        backend.decode_attention(**args)


def test_bad_split_count_names_the_argument() -> None:
    with pytest.raises(ValueError, match=r"num_splits: expected an int >= 1"):
        backend.decode_attention(**good_args(), num_splits=0)


def test_backend_declines_devices_it_cannot_serve() -> None:
    assert backend.supports("cuda") == torch.cuda.is_available()
    assert backend.supports("cpu") == (not ON_GPU)  # CPU only under the interpreter
    assert not backend.supports("meta")


def test_dispatch_picks_the_triton_backend_when_registered(monkeypatch) -> None:
    from caramba.registry import Registry

    registry = Registry("caramba.kernels.test-triton", "kernel backend")
    registry.register("triton", backend)
    monkeypatch.setattr(dispatch, "KERNELS", registry)
    monkeypatch.setenv("CARAMBA_KERNELS", "triton")
    dispatch.reset()
    try:
        assert dispatch.get_backend(DEVICE) is backend
    finally:
        dispatch.reset()


@pytest.mark.parametrize("dv", [40, 256])
def test_merge_joins_split_partials_by_log_sum_exp(dv) -> None:
    """The split merge against a float64 log-sum-exp over hand-made partials: 37 splits, so
    values 256 wide take three online blocks of 16 (40 wide: one block of 64); one sequence's
    first 20 splits are empty (its first block entirely), and one has no positions at all."""
    gen = torch.Generator().manual_seed(21)
    B, Hq, n = 3, 2, 37
    m = torch.randn(B * Hq, n, generator=gen, dtype=torch.float64) * 8
    m[:Hq] += torch.linspace(0, 40, n, dtype=torch.float64)  # rising maxima across blocks
    l = torch.rand(B * Hq, n, generator=gen, dtype=torch.float64) + 0.5  # noqa: E741
    o = torch.randn(B * Hq, n, dv, generator=gen, dtype=torch.float64)
    m[Hq : 2 * Hq, :20] = -math.inf  # empty splits: m = -inf, l = 0, o = 0
    l[Hq : 2 * Hq, :20] = 0
    o[Hq : 2 * Hq, :20] = 0
    m[2 * Hq :], l[2 * Hq :], o[2 * Hq :] = -math.inf, 0, 0  # a sequence with no positions
    top = m.max(dim=1, keepdim=True).values
    w = torch.where(m > -math.inf, torch.exp2(m - top.clamp(min=-1e300)), 0.0)
    denom = (w * l).sum(dim=1)
    want = (w[..., None] * o).sum(dim=1) / denom.clamp(min=1e-300)[:, None]
    want_lse = (top[:, 0] + torch.log2(denom)) * math.log(2)
    parts = tuple(x.float().reshape(-1, *x.shape[2:]).contiguous().to(DEVICE) for x in (m, l, o))
    out = torch.empty(B, Hq, dv, device=DEVICE)
    lse = torch.empty(B, Hq, device=DEVICE)
    backend._merge(B, Hq, dv, n, parts, out, lse, True)
    torch.testing.assert_close(out.cpu().double().reshape(B * Hq, dv), want, rtol=1e-5, atol=1e-6)
    assert (out[2].cpu() == 0).all()
    torch.testing.assert_close(lse.cpu().double().reshape(-1), want_lse, rtol=1e-6, atol=1e-5)
    assert torch.isneginf(lse[2].cpu()).all()


def test_the_merge_is_a_dependent_launch_only_on_hopper_gpus(monkeypatch) -> None:
    """The split merge asks for a programmatic dependent launch (and waits for the partials in
    the kernel) on sm_90+ GPUs alone: never on the CPU, in the interpreter, on older GPUs, with
    a triton that lacks launch_pdl, or with TUNING merge_pdl off. test_cuda_decode checks on a
    GPU that both launches agree."""
    gpu0 = torch.device("cuda", 0)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(ops, "_hopper_or_newer", lambda device: True)
    monkeypatch.setattr(ops, "_triton_launches_dependents", lambda: True)
    assert ops._dependent_launch(gpu0) == {"WAIT_PRIOR": True, "launch_pdl": True}
    monkeypatch.setattr(ops, "_triton_launches_dependents", lambda: False)  # triton < 3.3
    assert ops._dependent_launch(gpu0) == {}
    monkeypatch.setattr(ops, "_triton_launches_dependents", lambda: True)
    assert ops._dependent_launch(torch.device("cpu")) == {}
    monkeypatch.setitem(ops.TUNING, "merge_pdl", False)
    assert ops._dependent_launch(gpu0) == {}
    monkeypatch.setitem(ops.TUNING, "merge_pdl", True)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert ops._dependent_launch(gpu0) == {}
    monkeypatch.delenv("TRITON_INTERPRET")
    monkeypatch.setattr(ops, "_hopper_or_newer", lambda device: False)
    assert ops._dependent_launch(gpu0) == {}
