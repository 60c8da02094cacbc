"""Reference decode attention against a float64 naive implementation, split-K, bad input.

Each fuzz case draws a shape (batch 1..4, KV heads 1..3, GQA group 1..4, head dims 32/64/128,
S_max 1..48, random lengths in 1..S_max, some splits) and checks two things:

1. Against float64 attention over the *dequantized* caches: only float32 rounding separates
   them. With Sigma = max_t scale * sum_d |q_d k_td| (summed over both DBA paths) the score error
   is at most eps_s = (D + 4) * 2^-24 * Sigma (Higham's gamma_n for a dot product), the softmax
   weights then move by a factor within exp(+-2 eps_s), and the weighted sum over S positions
   adds (S + 4) * 2^-24 * max|v|, so
       |out - naive| <= ((exp(2 eps_s) - 1) + (S + 4) * 2^-24) * max|v| * 4   (4 = slack).
2. Against float64 attention over the *original* float caches: the quantization error bounds
   (test_kernels_quant's table: per element e_k, e_v from each block's amax) move every score by
   at most eps_q = max_t scale * sum_d |q_d| e_k[t, d], so
       |out - exact| <= (exp(2 eps_q) - 1) * max|v| + max e_v + the float32 term of 1.
   For f32 caches e = 0; for f16 e = |x| 2^-11 + 2^-25.
"""

from __future__ import annotations

import math

import pytest
import torch

from caramba.kernels import dba_decode_attention, decode_attention, dequantize, quantize
from caramba.kernels.formats import FORMATS

FORMAT_NAMES = ["f32", "f16", "q8_0", "q4_0", "nf4"]
CASES_PER_FORMAT = 1000
BOUND_REL = {"q8_0": 1 / 254 + 2**-11, "q4_0": 1 / 8 + 2**-11, "nf4": 0.1519036 + 2**-11}
BOUND_ABS = {"q8_0": 127 * 2**-25, "q4_0": 8 * 2**-25, "nf4": 2**-25}
U = 2.0**-24  # float32 unit roundoff


def error_bound(kind: str, x: torch.Tensor) -> torch.Tensor:
    """Per-element bound on |dequantize(quantize(x)) - x| (float64)."""
    x = x.double()
    if kind == "f32":
        return torch.zeros_like(x)
    if kind == "f16":
        return x.abs() * 2**-11 + 2**-25
    block = FORMATS[kind].block
    lead, D = x.shape[:-1], x.shape[-1]
    amax = x.reshape(*lead, D // block, block).abs().amax(-1, keepdim=True)
    bound = amax * BOUND_REL[kind] * (1 + 1e-4) + BOUND_ABS[kind]
    return bound.expand(*lead, D // block, block).reshape(*lead, D)


def naive(
    qs: list[torch.Tensor],
    ks: list[torch.Tensor],
    scales: list[float],
    v: torch.Tensor,
    lengths: torch.Tensor,
) -> torch.Tensor:
    """float64, KV heads expanded per query head, explicit mask: shares no code with ours."""
    Hq = qs[0].shape[1]
    group = Hq // ks[0].shape[1]
    scores = 0
    for q, k, scale in zip(qs, ks, scales, strict=True):
        kk = k.double().repeat_interleave(group, dim=1)  # (B, Hq, S, D)
        scores = scores + (q.double()[:, :, None, :] * kk).sum(-1) * scale
    S = v.shape[2]
    mask = torch.arange(S)[None, :] >= lengths.long()[:, None]
    scores = scores.masked_fill(mask[:, None, :], float("-inf"))
    p = torch.softmax(scores, dim=-1)
    return (p[..., None] * v.double().repeat_interleave(group, dim=1)).sum(-2)


def score_magnitude(qs, ks, scales, group: int, weights=None) -> float:
    """max_t scale * sum_d |q_d| w_td over all heads and paths (w = |k| or an error bound)."""
    total = 0
    for i, (q, k, scale) in enumerate(zip(qs, ks, scales, strict=True)):
        w = k.double().abs() if weights is None else weights[i]
        w = w.repeat_interleave(group, dim=1)
        total = total + (q.double().abs()[:, :, None, :] * w).sum(-1) * abs(scale)
    return float(total.max())


def draw_case(gen: torch.Generator, kind: str, dba: bool):
    def pick(options):
        return options[int(torch.randint(len(options), (1,), generator=gen))]

    block = FORMATS[kind].block
    dims = [d for d in (32, 64, 128) if d % block == 0]
    B = int(torch.randint(1, 5, (1,), generator=gen))
    Hkv = int(torch.randint(1, 4, (1,), generator=gen))
    Hq = Hkv * int(torch.randint(1, 5, (1,), generator=gen))
    S = int(torch.randint(1, 49, (1,), generator=gen))
    lengths = torch.randint(1, S + 1, (B,), generator=gen, dtype=torch.int32)
    lengths[int(torch.randint(B, (1,), generator=gen))] = pick([1, S])
    Dv = pick(dims)
    key_dims = [pick(dims), pick(dims)] if dba else [pick(dims)]
    amp = float(torch.empty(1).uniform_(0.2, 3.0, generator=gen))
    qs = [torch.randn(B, Hq, D, generator=gen) * amp for D in key_dims]
    ks = [torch.randn(B, Hkv, S, D, generator=gen) for D in key_dims]
    v = torch.randn(B, Hkv, S, Dv, generator=gen) * amp
    scales = [
        float(torch.empty(1).uniform_(0.3, 1.5, generator=gen)) / math.sqrt(D) for D in key_dims
    ]
    splits = pick([None, None, 1, 2, 3, 7, S, S + 3])
    return qs, ks, v, lengths, scales, splits


def run_reference(kind: str, qs, ks_stored, v_stored, lengths, scales, splits):
    if len(qs) == 1:
        return decode_attention(
            qs[0], ks_stored[0], v_stored, lengths, scales[0], kind, kind, num_splits=splits
        )
    return dba_decode_attention(
        qs[0], qs[1], ks_stored[0], ks_stored[1], v_stored, lengths, scales[0], scales[1],
        kind, kind, kind, num_splits=splits,
    )  # fmt: skip


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("dba", [False, True], ids=["standard", "dba"])
@pytest.mark.parametrize("kind", FORMAT_NAMES)
def test_reference_matches_float64_naive_on_random_shapes(kind: str, dba: bool) -> None:
    gen = torch.Generator().manual_seed(10 * FORMAT_NAMES.index(kind) + int(dba))
    for case in range(CASES_PER_FORMAT):
        qs, ks, v, lengths, scales, splits = draw_case(gen, kind, dba)
        ks_stored = [quantize(kind, k) for k in ks]
        v_stored = quantize(kind, v)
        out = run_reference(kind, qs, ks_stored, v_stored, lengths, scales, splits)
        assert out.dtype == torch.float32 and out.shape == (*qs[0].shape[:2], v.shape[-1])
        group = qs[0].shape[1] // ks[0].shape[1]
        S, D = v.shape[2], max(q.shape[-1] for q in qs)

        # 1. Same caches in float64: float32 rounding only.
        ks_deq = [dequantize(kind, s, k.shape[-1]) for s, k in zip(ks_stored, ks, strict=True)]
        v_deq = dequantize(kind, v_stored, v.shape[-1])
        vmax = float(v_deq.abs().max())
        eps_s = (D + 4) * U * score_magnitude(qs, ks_deq, scales, group)
        fp32_tol = (math.expm1(2 * eps_s) + (S + 4) * U) * vmax * 4
        err = float((out.double() - naive(qs, ks_deq, scales, v_deq, lengths)).abs().max())
        assert err <= fp32_tol, f"case {case}: {err} > {fp32_tol} (float32 rounding)"

        # 2. Original float caches: the format's quantization error bound.
        eps_q = score_magnitude(qs, ks, scales, group, [error_bound(kind, k) for k in ks])
        e_v = float(error_bound(kind, v).max())
        q_tol = math.expm1(2 * eps_q) * float(v.abs().max()) + e_v + fp32_tol
        err = float((out.double() - naive(qs, ks, scales, v, lengths)).abs().max())
        assert err <= q_tol, f"case {case}: {err} > {q_tol} (quantization bound)"


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("kind", ["f32", "q8_0", "q4_0"])
def test_split_k_merge_equals_unsplit(kind: str) -> None:
    gen = torch.Generator().manual_seed(99)
    for _ in range(200):
        qs, ks, v, lengths, scales, _ = draw_case(gen, kind, dba=True)
        ks_stored = [quantize(kind, k) for k in ks]
        v_stored = quantize(kind, v)
        whole = run_reference(kind, qs, ks_stored, v_stored, lengths, scales, None)
        S = v.shape[2]
        for splits in (2, 5, S, S + 4):
            part = run_reference(kind, qs, ks_stored, v_stored, lengths, scales, splits)
            torch.testing.assert_close(part, whole, rtol=1e-5, atol=1e-5 * float(v.abs().max()))


def test_gqa_query_head_reads_kv_head_h_div_group() -> None:
    B, Hkv, group, S, D = 1, 2, 3, 5, 32
    q = torch.randn(B, Hkv * group, D)
    k = torch.randn(B, Hkv, S, D)
    v = torch.zeros(B, Hkv, S, D)
    v[:, 1] = 1.0  # KV head 1 outputs ones, head 0 zeros
    out = decode_attention(q, k, v, torch.tensor([S], dtype=torch.int32), 0.1, "f32", "f32")
    assert torch.equal(out[0, :group], torch.zeros(group, D))
    torch.testing.assert_close(out[0, group:], torch.ones(group, D))


def test_slots_past_the_length_are_ignored_even_when_not_finite() -> None:
    q = torch.randn(2, 2, 32)
    k = torch.randn(2, 2, 10, 32)
    v = torch.randn(2, 2, 10, 32)
    lengths = torch.tensor([3, 7], dtype=torch.int32)
    out = decode_attention(q, k, v, lengths, 0.2, "f32", "f32")
    k2, v2 = k.clone(), v.clone()
    k2[0, :, 3:] = 1e4
    v2[0, :, 3:] = float("nan")
    k2[1, :, 7:] = float("nan")
    v2[1, :, 7:] = float("inf")
    assert torch.equal(decode_attention(q, k2, v2, lengths, 0.2, "f32", "f32"), out)


def test_dba_equals_standard_attention_on_concatenated_keys() -> None:
    """With equal scales, the two score paths are one dot product over [sem | geo]."""
    qs, qg = torch.randn(2, 4, 32), torch.randn(2, 4, 64)
    ks, kg = torch.randn(2, 2, 9, 32), torch.randn(2, 2, 9, 64)
    v = torch.randn(2, 2, 9, 32)
    lengths = torch.tensor([9, 4], dtype=torch.int32)
    dba = dba_decode_attention(qs, qg, ks, kg, v, lengths, 0.3, 0.3, "f32", "f32", "f32")
    std = decode_attention(
        torch.cat((qs, qg), -1), torch.cat((ks, kg), -1), v, lengths, 0.3, "f32", "f32"
    )
    torch.testing.assert_close(dba, std, rtol=1e-5, atol=1e-6)


def good_args():
    q = torch.randn(2, 4, 64)
    k = quantize("q8_0", torch.randn(2, 2, 8, 64))
    v = quantize("q4_0", torch.randn(2, 2, 8, 32))
    lengths = torch.tensor([8, 1], dtype=torch.int32)
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
        (with_(q=lambda a: a["q"].int()), r"q: expected a floating-point tensor"),
        (with_(q=lambda a: a["q"][:, :3]), r"k: 2 KV heads do not divide the query's 3 heads"),
        (with_(q=lambda a: a["q"][:, :, :32]), r"k: rows hold 64 values in q8_0, but .* 32"),
        (with_(q=lambda a: torch.randn(2, 4, 48)), r"k: head dim 48 is not a multiple"),
        (with_(q=lambda a: a["q"][:1]), r"k: batch 2 does not match the query's 1"),
        (with_(k=lambda a: a["k"].float()), r"k: a q8_0 cache holds torch.uint8"),
        (with_(k=lambda a: a["k"][:, :, :0]), r"k: the cache is empty"),
        (with_(k=lambda a: a["k"][..., :-1]), r"k: last dimension 67"),
        (with_(k_format="q5_1"), r"k_format: unknown cache format 'q5_1'"),
        (with_(v_format="q8_0"), r"v: last dimension 18 is not a whole number of q8_0 blocks"),
        (with_(v_format="f16"), r"v: a f16 cache holds torch.float16"),
        (with_(v=lambda a: a["v"][:, :, :5]), r"v: \(heads, S_max\) = \(2, 5\)"),
        (with_(lengths=torch.tensor([8, 0], dtype=torch.int32)), r"lengths: .* \[1, 8\]"),
        (with_(lengths=torch.tensor([9, 1], dtype=torch.int32)), r"lengths: .* \[1, 8\]"),
        (with_(lengths=torch.tensor([8, 1])), r"lengths: expected dtype torch.int32"),
        (with_(lengths=torch.tensor([8], dtype=torch.int32)), r"lengths: expected shape \(2,\)"),
        (with_(lengths=[8, 1]), r"lengths: expected an int32 tensor"),
        (with_(scale=float("nan")), r"scale: expected a finite float"),
        (with_(scale="0.1"), r"scale: expected a float"),
        (with_(k=lambda a: a["k"].to("meta")), r"k: on meta, but the query is on cpu"),
    ],
)
def test_bad_decode_input_names_the_argument(args, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        decode_attention(**args)


def test_bad_split_count_names_the_argument() -> None:
    with pytest.raises(ValueError, match=r"num_splits: expected an int >= 1"):
        decode_attention(**good_args(), num_splits=0)


def test_bad_dba_input_names_the_argument() -> None:
    qs, qg = torch.randn(1, 2, 32), torch.randn(1, 2, 64)
    ks = quantize("q4_0", torch.randn(1, 1, 4, 32))
    kg = quantize("q8_0", torch.randn(1, 1, 4, 64))
    v = torch.randn(1, 1, 4, 32)
    lengths = torch.tensor([4], dtype=torch.int32)
    args = (qs, qg, ks, kg, v, lengths, 0.1, 0.1, "q4_0", "q8_0", "f32")
    assert dba_decode_attention(*args).shape == (1, 2, 32)
    with pytest.raises(ValueError, match=r"q_geo: batch and heads \(1, 1\) do not match"):
        dba_decode_attention(qs, qg[:, :1], *args[2:])
    with pytest.raises(ValueError, match=r"k_geo: \(heads, S_max\) = \(1, 3\) does not match"):
        dba_decode_attention(qs, qg, ks, kg[:, :, :3], *args[4:])
    with pytest.raises(ValueError, match=r"k_geo_format: unknown cache format"):
        dba_decode_attention(*args[:9], "q8", "f32")
    with pytest.raises(ValueError, match=r"scale_geo: expected a finite float"):
        dba_decode_attention(*args[:7], float("inf"), *args[8:])


# ------------------------------------------------------------------ token layout, return_lse


def to_token(x: torch.Tensor) -> torch.Tensor:
    """(B, H, S, d) per-head rows -> (B, 1, S, H d): one row per token, head g at [g d, ...)."""
    B, H, S, d = x.shape
    return x.transpose(1, 2).reshape(B, 1, S, H * d).contiguous()


def from_token(rows: torch.Tensor, H: int) -> torch.Tensor:
    B, _, S, W = rows.shape
    return rows.reshape(B, S, H, W // H).transpose(1, 2)


def naive_lse(qs, ks, scales, lengths) -> torch.Tensor:
    """float64 log sum exp of the scores over each sequence's positions, (B, Hq)."""
    group = qs[0].shape[1] // ks[0].shape[1]
    scores = 0
    for q, k, scale in zip(qs, ks, scales, strict=True):
        kk = k.double().repeat_interleave(group, dim=1)
        scores = scores + (q.double()[:, :, None, :] * kk).sum(-1) * scale
    mask = torch.arange(scores.shape[-1])[None, :] >= lengths.long()[:, None]
    return torch.logsumexp(scores.masked_fill(mask[:, None, :], float("-inf")), dim=-1)


def draw_layout_case(gen: torch.Generator, kind: str, dba: bool):
    """A case whose tensors each pick the head or the token layout. Token-layout tensors
    have per-head widths down to 4 values (DBA's semantic keys at Llama-3.2-1B widths), so
    their rows straddle blocks; only Hkv x d must fill whole blocks."""

    def pick(options):
        return options[int(torch.randint(len(options), (1,), generator=gen))]

    block = FORMATS[kind].block
    B = int(torch.randint(1, 4, (1,), generator=gen))
    Hkv = pick([1, 2, 4, 8, 16])
    Hq = Hkv * pick([1, 2, 4])
    S = int(torch.randint(1, 41, (1,), generator=gen))
    lengths = torch.randint(1, S + 1, (B,), generator=gen, dtype=torch.int32)
    lengths[int(torch.randint(B, (1,), generator=gen))] = pick([1, S])

    def layout_and_dim():
        options = [("head", d) for d in (32, 64, 128) if d % block == 0]
        options += [("token", d) for d in (4, 8, 12, 16, 32) if (Hkv * d) % block == 0]
        return pick(options)

    tensors = [layout_and_dim() for _ in range(3 if dba else 2)]  # keys..., v
    amp = float(torch.empty(1).uniform_(0.2, 3.0, generator=gen))
    qs = [torch.randn(B, Hq, d, generator=gen) * amp for _, d in tensors[:-1]]
    ks = [torch.randn(B, Hkv, S, d, generator=gen) for _, d in tensors[:-1]]
    v = torch.randn(B, Hkv, S, tensors[-1][1], generator=gen) * amp
    scales = [float(torch.empty(1).uniform_(0.3, 1.5, generator=gen)) / math.sqrt(d)
              for _, d in tensors[:-1]]
    layouts = [layout for layout, _ in tensors]
    splits = pick([None, None, 1, 2, 3, 7, S + 3])
    return qs, ks, v, lengths, scales, splits, layouts


def store(kind: str, x: torch.Tensor, layout: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(stored tensor, its dequantized values as (B, Hkv, S, d))."""
    if layout == "head":
        stored = quantize(kind, x)
        return stored, dequantize(kind, stored, x.shape[-1])
    stored = quantize(kind, to_token(x))
    return stored, from_token(dequantize(kind, stored, x.shape[1] * x.shape[-1]), x.shape[1])


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("dba", [False, True], ids=["standard", "dba"])
@pytest.mark.parametrize("kind", FORMAT_NAMES)
def test_layouts_and_lse_match_float64_naive_on_random_shapes(kind: str, dba: bool) -> None:
    """Any mix of head- and token-layout tensors, with return_lse: out and lse against float64
    over the same dequantized values (float32 rounding bounds as in the module docstring;
    lse = max + log(sum) adds (S + 4) 2^-24 and the rounding of the max)."""
    gen = torch.Generator().manual_seed(1000 + 10 * FORMAT_NAMES.index(kind) + int(dba))
    seen = set()
    for case in range(300):
        qs, ks, v, lengths, scales, splits, layouts = draw_layout_case(gen, kind, dba)
        stored = [store(kind, x, layout) for x, layout in zip([*ks, v], layouts, strict=True)]
        seen.update(layouts)
        (k_st, k_deq), (v_st, v_deq) = zip(*stored[:-1], strict=True), stored[-1]
        out, lse = run_reference_lse(kind, qs, list(k_st), v_st, lengths, scales, splits)
        assert out.shape == (*qs[0].shape[:2], v.shape[-1]) and lse.shape == qs[0].shape[:2]
        assert out.dtype == lse.dtype == torch.float32
        group = qs[0].shape[1] // ks[0].shape[1]
        S, D = v.shape[2], max(q.shape[-1] for q in qs)
        sigma = score_magnitude(qs, list(k_deq), scales, group)
        eps_s = (D + 4) * U * sigma
        vmax = float(v_deq.abs().max())
        fp32_tol = (math.expm1(2 * eps_s) + (S + 4) * U) * vmax * 4
        err = float((out.double() - naive(qs, list(k_deq), scales, v_deq, lengths)).abs().max())
        assert err <= fp32_tol, f"case {case} {layouts}: {err} > {fp32_tol}"
        expected = naive_lse(qs, list(k_deq), scales, lengths)
        lse_tol = (2 * eps_s + (S + 4) * U + U * sigma) * 4
        lse_err = float((lse.double() - expected).abs().max())
        assert lse_err <= lse_tol, f"case {case} {layouts}: lse {lse_err} > {lse_tol}"
    assert seen == {"head", "token"}


def run_reference_lse(kind, qs, ks_stored, v_stored, lengths, scales, splits):
    if len(qs) == 1:
        return decode_attention(qs[0], ks_stored[0], v_stored, lengths, scales[0], kind, kind,
                                num_splits=splits, return_lse=True)
    return dba_decode_attention(
        qs[0], qs[1], ks_stored[0], ks_stored[1], v_stored, lengths, scales[0], scales[1],
        kind, kind, kind, num_splits=splits, return_lse=True,
    )  # fmt: skip


def test_token_and_head_layouts_of_the_same_values_agree() -> None:
    """f32 stores values exactly, so the two layouts of one cache give the same answer."""
    gen = torch.Generator().manual_seed(5)
    q, k = torch.randn(2, 8, 16, generator=gen), torch.randn(2, 4, 9, 16, generator=gen)
    v = torch.randn(2, 4, 9, 8, generator=gen)
    lengths = torch.tensor([9, 5], dtype=torch.int32)
    head = decode_attention(q, k, v, lengths, 0.3, "f32", "f32", return_lse=True)
    for kt, vt in ((to_token(k), v), (k, to_token(v)), (to_token(k), to_token(v))):
        mixed = decode_attention(q, kt, vt, lengths, 0.3, "f32", "f32", return_lse=True)
        torch.testing.assert_close(mixed, head, rtol=1e-6, atol=1e-6)
    # Without return_lse the call answers as before: one tensor.
    assert torch.equal(decode_attention(q, k, v, lengths, 0.3, "f32", "f32"), head[0])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda a: a.update(k=torch.randn(2, 1, 8, 40)),
         r"k: a token-layout row \(shape\[1\] = 1\) holds 40 f32 values, not a whole number "
         r"of the query's head dim 16"),
        (lambda a: a.update(k=torch.randn(2, 1, 8, 48)),
         r"k: 3 KV heads do not divide the query's 8 heads"),
        (lambda a: a.update(v=torch.randn(2, 1, 8, 30)),
         r"v: a token-layout row holds 30 f32 values, not a whole number of the keys' 4"),
        (lambda a: a.update(v=torch.randn(2, 2, 8, 8)),
         r"v: \(heads, S_max\) = \(2, 8\) does not match the keys' \(4, 8\)"),
        (lambda a: a.update(k=quantize("q8_0", torch.randn(2, 1, 8, 96)), k_format="q8_0"),
         r"k: 6 KV heads do not divide the query's 8 heads"),
    ],
)
def test_bad_token_layout_input_names_the_argument(change, message: str) -> None:
    args = dict(q=torch.randn(2, 8, 16), k=torch.randn(2, 1, 8, 64), v=torch.randn(2, 1, 8, 32),
                lengths=torch.tensor([8, 3], dtype=torch.int32), scale=0.25, k_format="f32",
                v_format="f32")
    assert decode_attention(**args).shape == (2, 8, 8)  # token layout, Hkv = 64 / 16 = 4
    change(args)
    with pytest.raises(ValueError, match=message):
        decode_attention(**args)


def test_dba_keys_must_agree_on_kv_heads_across_layouts() -> None:
    qs, qg = torch.randn(1, 8, 4), torch.randn(1, 8, 8)
    ks = quantize("q8_0", torch.randn(1, 1, 6, 32))  # token layout: 8 heads x 4
    kg = quantize("q8_0", torch.randn(1, 1, 6, 32))  # token layout: 4 heads x 8
    v = torch.randn(1, 8, 6, 32)
    lengths = torch.tensor([6], dtype=torch.int32)
    with pytest.raises(ValueError, match=r"k_geo: \(heads, S_max\) = \(4, 6\) does not match "
                                         r"k_sem's \(8, 6\)"):
        dba_decode_attention(qs, qg, ks, kg, v, lengths, 0.5, 0.3, "q8_0", "q8_0", "f32")


def installed_cpu_backends() -> list:
    from caramba.registry import KERNELS

    out = []
    for name in KERNELS.names():
        backend = KERNELS.get(name)
        supports = getattr(backend, "supports", None)
        if supports is None or supports(torch.device("cpu")):
            out.append(pytest.param(backend, id=name))
    return out or [pytest.param(None, marks=pytest.mark.skip(reason="no CPU kernel backend"))]


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("backend", installed_cpu_backends())
@pytest.mark.parametrize("kind", FORMAT_NAMES)
def test_installed_backends_match_the_reference_on_layouts_and_lse(backend, kind: str) -> None:
    """The contract seen from core: every installed CPU backend, token and head layouts mixed,
    return_lse, against this reference. Each side is within the float32 bound of float64
    (fp32_tol), so they are within twice that of each other."""
    gen = torch.Generator().manual_seed(2000 + FORMAT_NAMES.index(kind))
    for case in range(150):
        dba = bool(case % 2)
        qs, ks, v, lengths, scales, splits, layouts = draw_layout_case(gen, kind, dba)
        stored = [store(kind, x, layout) for x, layout in zip([*ks, v], layouts, strict=True)]
        k_st, k_deq = (list(t) for t in zip(*stored[:-1], strict=True))
        v_st, v_deq = stored[-1]
        want = run_reference_lse(kind, qs, k_st, v_st, lengths, scales, None)
        if dba:
            got = backend.dba_decode_attention(
                qs[0], qs[1], k_st[0], k_st[1], v_st, lengths, scales[0], scales[1],
                kind, kind, kind, num_splits=splits, return_lse=True)  # fmt: skip
        else:
            got = backend.decode_attention(qs[0], k_st[0], v_st, lengths, scales[0], kind, kind,
                                           num_splits=splits, return_lse=True)
        group = qs[0].shape[1] // ks[0].shape[1]
        S, D = v.shape[2], max(q.shape[-1] for q in qs)
        sigma = score_magnitude(qs, k_deq, scales, group)
        eps_s = (D + 4) * U * sigma
        out_tol = 2 * (math.expm1(2 * eps_s) + (S + 4) * U) * float(v_deq.abs().max()) * 4
        lse_tol = 2 * (2 * eps_s + (S + 4) * U + U * sigma) * 4
        out_err = float((got[0].double() - want[0].double()).abs().max())
        lse_err = float((got[1].double() - want[1].double()).abs().max())
        assert out_err <= out_tol, f"case {case} {layouts}: out {out_err} > {out_tol}"
        assert lse_err <= lse_tol, f"case {case} {layouts}: lse {lse_err} > {lse_tol}"
