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


@pytest.mark.parametrize("kind", KINDS)
def test_kernel_and_exact_decoding_agree_through_a_model(model, val_tokens, kind):
    """Across steps a layer's keys can differ by one quantization step (a 1e-7 difference in
    the previous layer lands on the other side of a rounding boundary), so the bound here is
    looser than float rounding; the greedy choices agree."""
    tokens = val_tokens[200:296].view(2, 48)
    kinds = {"k_sem": "fp16"} if kind == "nf4" else {}
    fast = CacheSpec(kind=kind, kinds=kinds, block_tokens=0)
    exact = CacheSpec(kind=kind, kinds=kinds, block_tokens=0, use_kernels=False)
    a = decode_logits(model, tokens, fast, prefill=8)
    b = decode_logits(model, tokens, exact, prefill=8)
    assert all(c.kernel_calls > 0 for c in fast.caches)
    assert all(c.kernel_calls == 0 for c in exact.caches)
    torch.testing.assert_close(a, b, rtol=0, atol=5e-3)
    assert (a.argmax(-1) == b.argmax(-1)).float().mean() > 0.97


@pytest.mark.parametrize("mode", ["auto", "fixed"])
@pytest.mark.parametrize("kind", ["fp32", "q8_0"])
def test_decode_plans_bucket_shapes_without_changing_results(model, val_tokens, mode, kind):
    tokens = val_tokens[400:600].view(1, 200)
    plain = CacheSpec(kind=kind, plan=DecodePlan("none"))
    bucketed = CacheSpec(kind=kind, plan=DecodePlan(mode, bucket=64))
    a = decode_logits(model, tokens, plain, prefill=4)
    b = decode_logits(model, tokens, bucketed, prefill=4)
    if kind == "fp32":
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
        assert torch.equal(a.argmax(-1), b.argmax(-1))
    else:
        # Padding changes float rounding by ~1e-7, which can move a later layer's key across
        # a q8_0 rounding boundary (one quantization step): a small, bounded difference.
        torch.testing.assert_close(a, b, rtol=0, atol=1e-3)
        assert (a.argmax(-1) == b.argmax(-1)).float().mean() > 0.99
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
