"""Triton decode under the layout/LSE contract: head and token layouts per tensor, return_lse.

Every case runs both kernels (the per-KV-head one, and the all-heads one of fused.py where it
applies) against a float64 answer computed here from the same quantized bytes. Tolerances are
those derived in test_triton_decode.py (fp32 products for the per-head kernel, fp16 operands
for the all-heads one); the log-sum-exp moves by at most the score error plus float32 rounding
of the sum: tol_lse = 2 * (eps + (S + 4) 2^-24 + 2^-20) * 2.
"""

from __future__ import annotations

import math
import os
from types import SimpleNamespace

import pytest
import torch

from caramba.kernels import reference
from caramba.kernels.formats import FORMATS
from triton_backend import DEVICE, ON_GPU, backend, ops, plan, tuning

CASES = int(os.environ.get("CARAMBA_TRITON_FUZZ", 8))  # GPU too: see test_triton_decode.FUZZ_CASES
U = 2.0**-24


def randint(gen: torch.Generator, lo: int, hi: int) -> int:
    return int(torch.randint(lo, hi + 1, (1,), generator=gen))


def store(kind: str, values: torch.Tensor, token: bool) -> torch.Tensor:
    """values (B, Hkv, S, d) stored in `kind`, head layout or token layout (B, 1, S, Hkv*d)."""
    if token:
        B, Hkv, S, d = values.shape
        values = values.permute(0, 2, 1, 3).reshape(B, 1, S, Hkv * d)
    return reference.quantize(kind, values.contiguous())


def stored_values(kind: str, x: torch.Tensor, Hkv: int, d: int) -> torch.Tensor:
    """float64 (B, Hkv, S, d) of a stored tensor in either layout."""
    B, H, S = x.shape[:3]
    rows = reference.dequantize(kind, x, d if H == Hkv else Hkv * d).double()
    if H == Hkv:
        return rows
    return rows[:, 0].reshape(B, S, Hkv, d).permute(0, 2, 1, 3)


def pick_width(gen: torch.Generator, kind: str, Hkv: int, token: bool) -> int | None:
    """A head width valid for the layout, or None if the token layout cannot hold Hkv heads."""
    block = FORMATS[kind].block
    if not token:
        return block * randint(gen, 1, max(1, 128 // block)) if block > 1 else randint(gen, 1, 96)
    options = [d for d in (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64) if (Hkv * d) % block == 0]
    return options[randint(gen, 0, len(options) - 1)] if options else None


def draw(gen: torch.Generator, formats: tuple[str, ...]):
    """A decode problem with each cache tensor in a random layout."""
    B, Hkv, group = randint(gen, 1, 3), randint(gen, 1, 8), randint(gen, 1, 4)
    S = randint(gen, 1, 90 if not ON_GPU else 600)
    lengths = torch.randint(1, S + 1, (B,), generator=gen, dtype=torch.int32)
    lengths[0] = S
    tensors, dims = [], []
    for kind in formats:
        token = bool(randint(gen, 0, 1)) and Hkv > 1
        d = pick_width(gen, kind, Hkv, token)
        if d is None:
            token, d = False, pick_width(gen, kind, Hkv, False)
        assert d is not None
        values = torch.randn(B, Hkv, S, d, generator=gen)
        tensors.append(store(kind, values, token))
        dims.append(d)
    qs = [torch.randn(B, Hkv * group, d, generator=gen) for d in dims[:-1]]
    scales = [float(torch.empty(1).uniform_(0.5, 2.0, generator=gen)) / d**0.5 for d in dims[:-1]]
    return qs, tensors[:-1], tensors[-1], lengths, scales, dims, Hkv


def call(formats, qs, ks, v, lengths, scales, num_splits=None, return_lse=True):
    dev = lambda t: t.to(DEVICE)  # noqa: E731
    if len(qs) == 1:
        return backend.decode_attention(
            dev(qs[0]), dev(ks[0]), dev(v), dev(lengths), scales[0], *formats,
            num_splits=num_splits, return_lse=return_lse,
        )  # fmt: skip
    return backend.dba_decode_attention(
        dev(qs[0]), dev(qs[1]), dev(ks[0]), dev(ks[1]), dev(v), dev(lengths), *scales, *formats,
        num_splits=num_splits, return_lse=return_lse,
    )  # fmt: skip


def exact(formats, qs, ks, v, lengths, scales, dims, Hkv):
    """float64 (out, lse, Sigma, max|v|) from the stored bytes."""
    group = qs[0].shape[1] // Hkv
    scores, sigma = 0, 0
    for q, k, kind, d, scale in zip(qs, ks, formats, dims, scales, strict=False):
        kv = stored_values(kind, k, Hkv, d).repeat_interleave(group, dim=1)
        scores = scores + scale * torch.einsum("bhd,bhsd->bhs", q.double(), kv)
        sigma = sigma + abs(scale) * torch.einsum("bhd,bhsd->bhs", q.double().abs(), kv.abs())
    vv = stored_values(formats[-1], v, Hkv, dims[-1]).repeat_interleave(group, dim=1)
    valid = torch.arange(v.shape[2])[None, :] < lengths.long()[:, None]
    scores = scores.masked_fill(~valid[:, None, :], -math.inf)
    out = torch.einsum("bhs,bhsd->bhd", torch.softmax(scores, -1), vv)
    return out, torch.logsumexp(scores, -1), float(sigma.max()), float(vv.abs().max())


def tolerances(sigma: float, vmax: float, D: int, S: int, fp16: bool) -> tuple[float, float]:
    eps = ((D + 4) * U + (2 * 2**-11 if fp16 else 0)) * sigma
    weights = 2**-10 if fp16 else 0.0
    tol = 2 * (math.expm1(2 * eps) + weights + (S + 4) * U + 2**-21) * vmax * 2
    return tol, 2 * (eps + (S + 4) * U + 2**-20) * 2


def views(formats, qs, ks, v):
    """(key views, value view) of a call, as the backend describes its tensors."""
    keys = [(k, f"k{i}", f, f"f{i}") for i, (k, f) in enumerate(zip(ks, formats, strict=False))]
    keys = [(k.to(DEVICE), *rest) for k, *rest in keys]
    kviews, vview, _, _ = backend._views(
        [q.to(DEVICE) for q in qs], keys, v.to(DEVICE), formats[-1]
    )
    return kviews, vview


def kernels_for(formats, qs, ks, v) -> list[bool]:
    """[False] (per-KV-head kernel), plus True when the all-heads kernel takes this call."""
    kviews, vview = views(formats, qs, ks, v)
    return [False, True] if plan.fused_applies(qs[0].shape[1], kviews, vview) else [False]


def check(formats, problem, num_splits=None) -> None:
    qs, ks, v, lengths, scales, dims, Hkv = problem
    want, want_lse, sigma, vmax = exact(formats, qs, ks, v, lengths, scales, dims, Hkv)
    for fused in kernels_for(formats, qs, ks, v):
        saved = ops.TUNING["fused"]
        ops.TUNING["fused"] = fused
        try:
            out, lse = call(formats, qs, ks, v, lengths, scales, num_splits)
        finally:
            ops.TUNING["fused"] = saved
        assert out.dtype == torch.float32 and lse.dtype == torch.float32
        assert out.shape == want.shape and lse.shape == want_lse.shape
        tol, tol_lse = tolerances(sigma, vmax, max(dims[:-1]), v.shape[2], fused)
        err = float((out.cpu().double() - want).abs().max())
        err_lse = float((lse.cpu().double() - want_lse).abs().max())
        what = (f"{formats} fused={fused} shapes {[tuple(k.shape) for k in ks]} v "
                f"{tuple(v.shape)} lengths {lengths.tolist()} splits {num_splits}")  # fmt: skip
        assert err <= tol, f"{what}: out error {err:.3g} > {tol:.3g}"
        assert err_lse <= tol_lse, f"{what}: lse error {err_lse:.3g} > {tol_lse:.3g}"


FORMAT_SETS = [
    ("q4_0", "q4_0"), ("f16", "q8_0"), ("nf4", "f32"),
    ("q4_0", "q4_0", "q4_0"), ("q8_0", "q4_0", "q8_0"), ("f16", "f16", "f16"),
    ("q4_0", "nf4", "f16"), ("f32", "q8_0", "q4_0"),
]  # fmt: skip


@pytest.mark.parametrize("formats", FORMAT_SETS, ids="-".join)
def test_mixed_layouts_with_lse_match_float64(formats) -> None:
    gen = torch.Generator().manual_seed(sum(map(ord, "".join(formats))))
    for case in range(CASES):
        check(formats, draw(gen, formats), num_splits=[None, 1, 3][case % 3])


@pytest.mark.parametrize(
    "head_groups, grouped, prefetch",
    [(1, False, False), (4, False, False), (1, True, False), (4, False, True)],
    ids=["1", "4", "1-grouped", "4-prefetch"],
)
def test_llama_dba_layout_matches_float64(head_groups, grouped, prefetch, monkeypatch) -> None:
    """The Llama-3.2-1B DBA cache: 8 KV heads, sem 4 / geo 8 token layout, v 32 head layout;
    the all-heads kernel with every KV head in one program, or 2 per program; TUNING's
    fused_grouped (one row per token and KV head in the value product, block scales on the
    weights), which only one program per sequence and split can take; and fused_prefetch (the
    next step's tiles loaded before this step computes)."""
    monkeypatch.setitem(ops.TUNING, "fused_head_groups", head_groups)
    monkeypatch.setitem(ops.TUNING, "fused_grouped", grouped)
    monkeypatch.setitem(ops.TUNING, "fused_prefetch", prefetch)
    if prefetch:  # steps of 16 positions, so a split holds several and the prefetch matters
        monkeypatch.setitem(ops.TUNING, "fused_block_n", 16)
        monkeypatch.setitem(ops.TUNING, "fused_q4_0", {})  # the q4_0 case too
    gen = torch.Generator().manual_seed(5)
    B, Hkv, group, S = 2, 8, 4 if ON_GPU else 2, 300 if ON_GPU else 70
    lengths = torch.tensor([S, S // 3], dtype=torch.int32)
    for kind in ("q4_0", "q8_0"):
        ks = [store(kind, torch.randn(B, Hkv, S, d, generator=gen), True) for d in (4, 8)]
        v = store(kind, torch.randn(B, Hkv, S, 32, generator=gen), False)
        qs = [torch.randn(B, Hkv * group, d, generator=gen) for d in (4, 8)]
        problem = (qs, ks, v, lengths, [0.5, 0.35], [4, 8, 32], Hkv)
        if grouped:  # the case must really take the grouped value product
            assert plan._grouped(Hkv, views((kind, kind, kind), qs, ks, v)[1], head_groups)
        check((kind, kind, kind), problem, num_splits=None)
        check((kind, kind, kind), problem, num_splits=5)


def test_partial_results_merge_exactly_by_their_lse() -> None:
    """Attention over [0, L) merged with attention over [L, S) equals attention over [0, S)."""
    gen = torch.Generator().manual_seed(9)
    formats = ("q4_0", "q8_0", "q4_0")
    qs, ks, v, _, scales, dims, Hkv = draw(gen, formats)
    S, B = v.shape[2], v.shape[0]
    S_cut = max(1, S // 2)
    for fused in kernels_for(formats, qs, ks, v):
        saved = ops.TUNING["fused"]
        ops.TUNING["fused"] = fused
        try:
            full, full_lse = call(formats, qs, ks, v, torch.full((B,), S, dtype=torch.int32),
                                  scales)  # fmt: skip
            if S_cut == S:
                continue
            o1, l1 = call(formats, qs, [k[:, :, :S_cut] for k in ks], v[:, :, :S_cut],
                          torch.full((B,), S_cut, dtype=torch.int32), scales)  # fmt: skip
            o2, l2 = call(formats, qs, [k[:, :, S_cut:] for k in ks], v[:, :, S_cut:],
                          torch.full((B,), S - S_cut, dtype=torch.int32), scales)  # fmt: skip
        finally:
            ops.TUNING["fused"] = saved
        m = torch.maximum(l1, l2)
        w1, w2 = torch.exp(l1 - m), torch.exp(l2 - m)
        merged = (o1 * w1[..., None] + o2 * w2[..., None]) / (w1 + w2)[..., None]
        torch.testing.assert_close(merged, full, rtol=1e-3, atol=1e-3)
        torch.testing.assert_close(m + torch.log(w1 + w2), full_lse, rtol=1e-4, atol=1e-4)


def test_old_calls_still_return_one_tensor() -> None:
    gen = torch.Generator().manual_seed(2)
    qs, ks, v, lengths, scales, _, _ = draw(gen, ("q8_0", "q4_0"))
    out = call(("q8_0", "q4_0"), qs, ks, v, lengths, scales, return_lse=False)
    assert isinstance(out, torch.Tensor) and out.shape[:2] == qs[0].shape[:2]


def _dba_args():
    B, Hkv, S = 2, 8, 6
    return dict(
        q_sem=torch.randn(B, 32, 4, device=DEVICE), q_geo=torch.randn(B, 32, 8, device=DEVICE),
        k_sem=store("q4_0", torch.randn(B, Hkv, S, 4), True).to(DEVICE),
        k_geo=store("q4_0", torch.randn(B, Hkv, S, 8), True).to(DEVICE),
        v=store("q4_0", torch.randn(B, Hkv, S, 32), False).to(DEVICE),
        lengths=torch.tensor([S, 2], dtype=torch.int32, device=DEVICE),
        scale_sem=0.5, scale_geo=0.3, k_sem_format="q4_0", k_geo_format="q4_0", v_format="q4_0",
    )  # fmt: skip


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (dict(q_sem=lambda a: a["q_sem"][:, :, :3]), r"k_sem: a row holds 32 values, not a whole"),
        (dict(k_geo=lambda a: store("q4_0", torch.randn(2, 4, 6, 8), True).to(DEVICE)),
         r"k_geo: 4 KV heads, but k_sem has 8"),
        (dict(v=lambda a: store("q4_0", torch.randn(2, 3, 6, 32), False).to(DEVICE)),
         r"v: 3 heads, but the keys have 8 KV heads"),
        (dict(v=lambda a: store("f16", torch.randn(2, 1, 6, 36), False).to(DEVICE),
              v_format="f16"), r"v: a row holds 36 values, not a multiple of the keys' 8"),
        (dict(q_sem=lambda a: a["q_sem"][:, :12], q_geo=lambda a: a["q_geo"][:, :12]),
         r"k_sem: 8 KV heads do not divide the query's 12 heads"),
        (dict(return_lse="yes"), r"return_lse: expected a bool"),
    ],
)  # fmt: skip
def test_layout_mismatches_name_the_argument(change, message) -> None:
    args = _dba_args()
    for key, value in change.items():
        args[key] = value(args) if callable(value) else value
    return_lse = args.pop("return_lse", False)
    with pytest.raises(ValueError, match=message):
        backend.dba_decode_attention(**args, return_lse=return_lse)


def test_tuning_override_from_the_environment(monkeypatch) -> None:
    saved = dict(ops.TUNING)
    try:
        monkeypatch.setenv(tuning.TUNING_ENV, '{"fused_head_groups": 2, "fused_block_n": 32}')
        tuning._tuning_from_env()
        assert ops.TUNING["fused_head_groups"] == 2 and ops.TUNING["fused_block_n"] == 32
        monkeypatch.setenv(tuning.TUNING_ENV, '{"fused_blockn": 32}')
        with pytest.raises(ValueError, match="CARAMBA_TRITON_TUNING: expected an object of keys"):
            tuning._tuning_from_env()
        monkeypatch.setenv(tuning.TUNING_ENV, "{not json")
        with pytest.raises(ValueError, match="CARAMBA_TRITON_TUNING: not JSON"):
            tuning._tuning_from_env()
        monkeypatch.setenv(tuning.TUNING_ENV, '{"cuda_kernel": "rows"}')
        tuning._tuning_from_env()
        assert ops.TUNING["cuda_kernel"] == "rows"
        monkeypatch.setenv(tuning.TUNING_ENV, '{"cuda_kernel": "row"}')
        with pytest.raises(ValueError, match="cuda_kernel must be one of"):
            tuning._tuning_from_env()
        monkeypatch.setenv(tuning.TUNING_ENV, '{"fused_q4_0": {"fused_block_n": 32}}')
        tuning._tuning_from_env()
        assert ops.TUNING["fused_q4_0"] == {"fused_block_n": 32}
        monkeypatch.setenv(tuning.TUNING_ENV, '{"fused_q4_0": {"fused_head_groups": 1}}')
        with pytest.raises(ValueError, match="CARAMBA_TRITON_TUNING fused_q4_0: expected an"):
            tuning._tuning_from_env()
    finally:
        ops.TUNING.clear()
        ops.TUNING.update(saved)


def test_head_layout_caches_take_the_fused_kernel_one_kv_head_per_program() -> None:
    """A standard head-layout cache (Llama-3.2-1B: 8 KV heads of 64) runs the all-heads kernel
    with one KV head per program; token-layout keys keep TUNING's groups; wide heads get fewer
    tokens per step so a step's tiles stay within FUSED_MAX_TILE."""
    gen = torch.Generator().manual_seed(11)

    def views(kinds, d, token):
        k = store(kinds[0], torch.randn(1, 8, 40, d, generator=gen), token).to(DEVICE)
        v = store(kinds[1], torch.randn(1, 8, 40, d, generator=gen), False).to(DEVICE)
        q = torch.randn(1, 32, d, generator=gen).to(DEVICE)
        kviews, vview, _, _ = backend._views([q], [(k, "k", kinds[0], "k_format")], v, kinds[1])
        return kviews, vview

    for kind in ("f16", "q8_0", "q4_0"):
        kviews, vview = views((kind, kind), 64, False)
        assert plan._head_groups(8, [*kviews, vview]) == 8
        assert plan.fused_applies(32, kviews, vview)
        assert plan._fused_columns(8, kviews, vview, 8) == 128
    kviews, vview = views(("q4_0", "q4_0"), 32, True)
    assert plan._head_groups(8, [*kviews, vview]) == plan._head_groups(8, kviews) != 8
    for d, block_n in ((64, ops.TUNING["fused_block_n"]), (128, 64), (256, 32)):
        kviews, vview = views(("f16", "f16"), d, False)
        columns = plan._fused_columns(8, kviews, vview, 8)
        launch = plan.plan_fused(1, 4096, torch.device("cpu"), None, 8, columns)
        assert launch.block_n == min(block_n, ops.TUNING["fused_block_n"])
        assert launch.block_n * columns <= plan.FUSED_MAX_TILE
    kviews, vview = views(("nf4", "nf4"), 64, False)
    assert not plan.fused_applies(32, kviews, vview)  # nf4 stays on the per-KV-head kernel


def test_all_q4_0_calls_take_their_own_launch(monkeypatch) -> None:
    """TUNING["fused_q4_0"] replaces the launch keys where every tensor is q4_0, and only there;
    the plan carries its compile options to the launch; a bad override names the key."""
    q4 = [SimpleNamespace(kind="q4_0")] * 3
    mixed = [SimpleNamespace(kind=kind) for kind in ("q4_0", "q8_0", "q4_0")]
    monkeypatch.setitem(ops.TUNING, "fused_q4_0", {"fused_block_n": 32, "fused_maxnreg": 96})
    q4_tuning = plan.fused_tuning(q4[:2], q4[2])
    assert q4_tuning["fused_block_n"] == 32 and q4_tuning["fused_maxnreg"] == 96
    assert plan.fused_tuning(mixed[:2], mixed[2])["fused_block_n"] == ops.TUNING["fused_block_n"]
    assert plan.fused_tuning(mixed[:2], mixed[2])["fused_maxnreg"] is ops.TUNING["fused_maxnreg"]
    launch = plan.plan_fused(1, 4096, torch.device("cpu"), None, 2, 192, q4_tuning)
    assert launch.block_n == 32 and dict(launch.options) == {"maxnreg": 96, "num_stages": 1}
    assert plan.plan_fused(1, 4096, torch.device("cpu"), None, 2, 192).options == ()
    monkeypatch.setitem(ops.TUNING, "fused_q4_0", {"block_n": 32})
    with pytest.raises(ValueError, match=r'TUNING\["fused_q4_0"\]: expected an object of keys'):
        plan.fused_tuning(q4[:2], q4[2])


def test_pipelining_only_for_standard_fp16() -> None:
    """Unless TUNING sets fused_num_stages, the all-heads kernel runs without software
    pipelining (num_stages 1) for DBA and for any q8_0/q4_0 tile, where pipelining was slower
    on an H100, and keeps triton's default for standard fp16 attention, where it was faster."""
    f16, q8 = SimpleNamespace(kind="f16"), SimpleNamespace(kind="q8_0")
    assert plan.fused_tuning([f16], f16)["fused_num_stages"] is None
    assert plan.fused_tuning([f16, f16], f16)["fused_num_stages"] == 1
    assert plan.fused_tuning([f16], q8)["fused_num_stages"] == 1
    assert plan.fused_tuning([q8], f16)["fused_num_stages"] == 1


def test_a_set_num_stages_is_kept(monkeypatch) -> None:
    monkeypatch.setitem(ops.TUNING, "fused_num_stages", 3)
    q8 = SimpleNamespace(kind="q8_0")
    assert plan.fused_tuning([q8, q8], q8)["fused_num_stages"] == 3


def test_positions_as_rows_only_where_every_tile_is_blocks() -> None:
    """The all-heads kernel takes its products with positions as rows only for q8_0/q4_0 tiles:
    fp16 tiles that way read out of bounds on an H100 (triton 3.6; decode_rows_slots.md,
    session 27), which the interpreter does not show."""

    def rows(kinds: tuple[str, ...]) -> bool:
        caches = [SimpleNamespace(kind=k, d=d) for k, d in zip(kinds, (4, 8, 32), strict=True)]
        return plan.fused_constexprs(
            32, 8, caches[:-1], caches[-1], 2, 64, single=False, return_lse=False, wide=False
        )["ROWS"]

    assert rows(("q4_0", "q4_0", "q4_0")) and rows(("q8_0", "q4_0", "q8_0"))
    assert not rows(("f16", "f16", "f16"))
    assert not rows(("q8_0", "q8_0", "f16")) and not rows(("f16", "q4_0", "q4_0"))
