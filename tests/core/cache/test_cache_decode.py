"""Layer caches inside a model: fp32 decoding reproduces the full forward pass, the decode
kernels (through caramba.kernels.dispatch) agree with the exact path for every kind, decode
plans change shapes but not results, rollback is exact, memory accounting adds up."""

import pytest
import torch

from caramba.cache import CacheSpec, CacheTensor, DecodePlan, bytes_per_token, cache_shapes
from caramba.infer import tiny
from caramba.infer.quality import decode_logits
from caramba.models.language_model import LanguageModelSystem

KINDS = ["fp32", "fp16", "q8_0", "q4_0", "nf4"]


def fresh(cfg):
    torch.manual_seed(0)
    return LanguageModelSystem.build(tiny.definition(cfg)).eval()


@pytest.fixture(scope="module", params=["standard", "dba"])
def model(request):
    return fresh(tiny.STANDARD if request.param == "standard" else tiny.DBA)


@pytest.mark.parametrize("chunk", [1, 5])
def test_fp32_cache_decoding_reproduces_full_forward_logits(model, val_tokens, chunk):
    tokens = val_tokens[:96].view(2, 48)
    with torch.no_grad():
        full = model(tokens).float()
    spec = CacheSpec(kind="fp32")
    logits = decode_logits(model, tokens, spec, prefill=8, chunk=chunk)
    torch.testing.assert_close(logits, full[:, 7:], rtol=1e-5, atol=1e-5)
    if chunk == 1:  # single-token steps went through the kernel dispatch
        assert all(c.kernel_calls == 40 for c in spec.caches)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("decoupled", [False, True])
def test_decode_kernels_agree_with_the_exact_path_on_the_same_cache(kind, decoupled):
    """One decode step over identical stored values: the dispatch kernel (the C++ backend
    when installed, else the reference) and the exact SDPA path agree to float rounding."""
    from caramba.cache import DecoupledKVCache, LayerKVCache

    torch.manual_seed(0)
    widths = {"k_sem": 32, "k_geo": 64, "v": 64} if decoupled else {"k": 64, "v": 64}
    if kind == "nf4" and decoupled:
        widths["k_sem"] = 64
    tensors = {n: CacheTensor(kind, 2, 2, w, block_tokens=0, name=n) for n, w in widths.items()}
    for t in tensors.values():
        t.append(torch.randn(2, 2, 37, t.head_dim))
    if decoupled:
        cache = DecoupledKVCache(tensors["k_sem"], tensors["k_geo"], tensors["v"])
        q_sem, q_geo = torch.randn(2, 4, 1, widths["k_sem"]), torch.randn(2, 4, 1, 64)
        fast = cache.attend(q_sem, q_geo, scale_sem=0.2, scale_geo=0.1)
        cache.use_kernels = False
        slow = cache.attend(q_sem, q_geo, scale_sem=0.2, scale_geo=0.1)
    else:
        cache = LayerKVCache(tensors["k"], tensors["v"])
        q = torch.randn(2, 4, 1, 64)
        fast = cache.attend(q)
        cache.use_kernels = False
        slow = cache.attend(q)
    assert (cache.kernel_calls, cache.exact_calls) == (1, 1)
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-5)


# Tiny models whose quantized caches use each row layout: per-head rows (head dims 64, 32)
# and rows spanning all KV heads (per-head widths 16 / 4 + 8 + 16, narrower than a block).
LAYOUT_MODELS = {
    "standard-head": tiny.STANDARD,
    "dba-head": tiny.DBA,
    "standard-token": tiny.TinyConfig(n_heads=8, n_kv_heads=4),  # head dim 16
    "dba-token": tiny.TinyConfig(mode="dba", n_heads=16, n_kv_heads=8, sem_dim=64,
                                 geo_dim=128, attn_dim=256),  # per head 4 + 8, v 16
}


@pytest.fixture(scope="module")
def layout_models():
    return {name: fresh(cfg) for name, cfg in LAYOUT_MODELS.items()}


def spec_for(model, kind, **extra):
    """`kind` for every cached tensor that can hold it, fp16 for the rest (nf4's 64-value
    blocks are wider than some tensors' rows)."""
    from caramba.cache.kinds import supports

    kinds = {n: "fp16" for layer in cache_shapes(model) for n, shape in layer.items()
             if not supports(kind, *shape)}
    return CacheSpec(kind=kind, kinds=kinds, **extra)


@pytest.mark.parametrize("tail", [32, 0], ids=["tail", "no-tail"])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("arch", list(LAYOUT_MODELS))
def test_kernel_and_exact_decoding_agree_through_a_model(layout_models, val_tokens, arch,
                                                         kind, tail):
    """Every single-token step through the kernels (quantized prefix by the backend, the
    full-precision tail exactly, merged by log-sum-exp) against the exact path on real text.
    Across steps a layer's keys can differ by one quantization step (a 1e-7 difference in
    the previous layer lands on the other side of a rounding boundary), so the bound here is
    looser than float rounding; the greedy choices agree."""
    model = layout_models[arch]
    tokens = val_tokens[200:296].view(2, 48)
    fast = spec_for(model, kind, block_tokens=tail)
    exact = spec_for(model, kind, block_tokens=tail, use_kernels=False)
    a = decode_logits(model, tokens, fast, prefill=8)
    b = decode_logits(model, tokens, exact, prefill=8)
    assert {t.layout for c in fast.caches for t in c.tensors} == {arch.split("-")[1]}
    steps = tokens.shape[1] - 8
    for c in fast.caches:
        assert c.exact_calls == 1  # the prefill; every decode step took the kernel path
        quantized_tail = tail and kind not in ("fp32", "fp16")
        # 8 prefilled + 40 decoded (lengths 9..48): the first block is quantized at length
        # 32, so 9..31 are tail only, 32 is prefix only and 33..48 merge prefix and tail.
        assert c.kernel_calls == (17 if quantized_tail else steps)
        assert c.tail_calls == (steps - 1 if quantized_tail else 0)
    assert all(c.kernel_calls == 0 and c.tail_calls == 0 for c in exact.caches)
    torch.testing.assert_close(a, b, rtol=0, atol=5e-3)
    assert (a.argmax(-1) == b.argmax(-1)).float().mean() > 0.97


def attend(cache, qs):
    if len(qs) == 2:
        return cache.attend(*qs, scale_sem=0.4, scale_geo=0.2)
    return cache.attend(*qs)


@pytest.mark.parametrize("kind", ["fp16", "q8_0", "q4_0", "nf4"])
@pytest.mark.parametrize("layout", ["head", "token"])
@pytest.mark.parametrize("decoupled", [False, True], ids=["standard", "dba"])
def test_merged_decode_step_equals_the_exact_path_on_the_same_cache(kind, layout, decoupled):
    """Identical stored values, 70 tokens (64 stored + 6 pending, or all stored): prefix
    kernel + exact tail, merged, equals one exact softmax over everything to float rounding."""
    from caramba.cache import DecoupledKVCache, LayerKVCache

    torch.manual_seed(0)
    Hkv, group = (2, 2) if layout == "head" else (8, 2)
    if layout == "head":
        widths = {"k_sem": 64, "k_geo": 64, "v": 64} if decoupled else {"k": 64, "v": 64}
    else:
        widths = {"k_sem": 8, "k_geo": 8, "v": 16} if decoupled else {"k": 8, "v": 16}
    for tail in (32, 0):
        tensors = {n: CacheTensor(kind, 2, Hkv, w, block_tokens=tail, name=n)
                   for n, w in widths.items()}
        for t in tensors.values():
            assert t.layout == layout
            t.append(torch.randn(2, Hkv, 50, t.head_dim))
            t.append(torch.randn(2, Hkv, 20, t.head_dim))
        qs = [torch.randn(2, Hkv * group, 1, w) for n, w in widths.items() if n != "v"]
        if decoupled:
            cache = DecoupledKVCache(tensors["k_sem"], tensors["k_geo"], tensors["v"])
        else:
            cache = LayerKVCache(tensors["k"], tensors["v"])
        fast = attend(cache, qs)
        cache.use_kernels = False
        slow = attend(cache, qs)
        pending = kind != "fp16" and tail
        assert (cache.kernel_calls, cache.tail_calls, cache.exact_calls) == (
            1, int(bool(pending)), 1)
        torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode", ["auto", "fixed"])
@pytest.mark.parametrize("kind", ["fp32", "q8_0"])
@pytest.mark.parametrize("kernels", [False, True], ids=["exact", "kernels"])
def test_decode_plans_bucket_shapes_without_changing_results(model, val_tokens, mode, kind,
                                                             kernels):
    tokens = val_tokens[400:600].view(1, 200)
    plain = CacheSpec(kind=kind, plan=DecodePlan("none"), use_kernels=kernels)
    bucketed = CacheSpec(kind=kind, plan=DecodePlan(mode, bucket=64), use_kernels=kernels)
    a = decode_logits(model, tokens, plain, prefill=4)
    b = decode_logits(model, tokens, bucketed, prefill=4)
    if kind == "fp32":
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
        assert torch.equal(a.argmax(-1), b.argmax(-1))
    else:
        # Padding (exact path) or a different capacity (a backend may split the sequence by
        # it) changes float rounding by ~1e-7, which can move a later layer's key across a
        # q8_0 rounding boundary (one quantization step): a small, bounded difference.
        torch.testing.assert_close(a, b, rtol=0, atol=1e-3)
        assert (a.argmax(-1) == b.argmax(-1)).float().mean() > 0.99
    if kernels:
        # Shapes the kernels saw: storage capacities, grown in few bucketed steps.
        assert all(c.kernel_calls > 150 for c in bucketed.caches)
        assert len(bucketed.plan.spans) <= 8
    elif kind == "q8_0":
        # The exact path padded keys to the buckets: few distinct lengths.
        assert len(plain.plan.spans) > 150
        assert len(bucketed.plan.spans) <= 8


def test_prefill_in_chunks_equals_one_pass(model, val_tokens):
    tokens = val_tokens[:300].view(1, 300)
    one = CacheSpec(kind="fp32")
    chunked = CacheSpec(kind="fp32", plan=DecodePlan("fixed", prefill_chunk=64))
    from caramba.infer.generate import prefill

    a = prefill(model, tokens, one.context(), one.plan)
    b = prefill(model, tokens, chunked.context(), chunked.plan)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["fp32", "q8_0", "nf4"])
def test_rollback_then_redecode_gives_the_same_logits(model, val_tokens, kind):
    kinds = {"k_sem": "fp16"} if kind == "nf4" else {}
    tokens = val_tokens[:40].view(1, 40)
    spec = CacheSpec(kind=kind, kinds=kinds)
    ctx = spec.context()

    def step(i):
        out = model(tokens[:, i : i + 1], ctx)
        ctx.position += 1
        return out

    with torch.no_grad():
        model(tokens[:, :30], ctx)
        ctx.position = 30
        first = [step(i) for i in range(30, 36)]
        spec.truncate(31)  # back across the block boundary at 32
        ctx.position = 31
        again = [step(i) for i in range(31, 36)]
    for x, y in zip(first[1:], again, strict=True):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_memory_accounting_matches_the_analytic_figures(model, val_tokens, kind):
    kinds = {"k_sem": "fp16"} if kind == "nf4" else {}
    spec = CacheSpec(kind=kind, kinds=kinds, capacity=64)
    decode_logits(model, val_tokens[:40].view(1, 40), spec, prefill=30)
    assert spec.bytes_per_token == bytes_per_token(cache_shapes(model), spec)
    assert spec.nbytes == sum(t.nbytes for c in spec.caches for t in c.tensors)
    assert spec.length == 40


def test_dba_cache_is_smaller_than_the_standard_one():
    """Per token and layer: standard GQA 1 x (64 + 64) values; DBA 1 x (32 + 64 + 64)."""
    std, dba = fresh(tiny.STANDARD), fresh(tiny.DBA)
    for kind, (s, d) in {"fp16": (256, 320), "q8_0": (136, 170)}.items():
        spec = CacheSpec(kind=kind)
        per_layer_std = bytes_per_token(cache_shapes(std), spec) // 2
        per_layer_dba = bytes_per_token(cache_shapes(dba), spec) // 2
        assert (per_layer_std, per_layer_dba) == (s, d)
