"""AttentionLayer: validation, shapes, GQA, RoPE, KV cache."""

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from caramba.layers.attention import AttentionLayer
from caramba.layers.base import ForwardContext
from caramba.models.builder import build_node


def make(**fields):
    return build_node(AttentionLayer.Config(**fields))


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"d_model": 250, "n_heads": 4}, r"d_model \(250\) must be divisible by n_heads \(4\)"),
        ({"d_model": 64, "n_heads": 8, "n_kv_heads": 3, "mode": "gqa"},
         r"n_heads \(8\) must be divisible by n_kv_heads \(3\)"),
        ({"d_model": 64, "n_heads": 8, "n_kv_heads": 2},
         r"mode 'standard' needs n_kv_heads \(2\) == n_heads \(8\)"),
        ({"d_model": 64, "n_heads": 4, "head_dim": 7}, r"head_dim \(7\) must be even"),
    ],
)
def test_config_errors_name_the_numbers(fields, message):
    with pytest.raises(ValidationError, match=message):
        AttentionLayer.Config(**fields)


def test_head_dim_may_override_divisibility_and_odd_head_dim_is_fine_without_rope():
    layer = make(d_model=30, n_heads=4, head_dim=6)
    assert layer.wq.weight.shape == (24, 30)
    assert layer(torch.randn(1, 3, 30)).shape == (1, 3, 30)
    AttentionLayer.Config(d_model=64, n_heads=4, head_dim=7, rope=False)


def test_gqa_shapes():
    layer = make(d_model=64, n_heads=8, n_kv_heads=2, mode="gqa")
    assert layer.wq.weight.shape == (64, 64)
    assert layer.wk.weight.shape == layer.wv.weight.shape == (16, 64)
    assert layer(torch.randn(3, 5, 64)).shape == (3, 5, 64)


def test_gqa_equals_standard_attention_with_repeated_kv_weights():
    torch.manual_seed(0)
    gqa = make(d_model=32, n_heads=4, n_kv_heads=2, mode="gqa")
    mha = make(d_model=32, n_heads=4)
    with torch.no_grad():
        mha.wq.weight.copy_(gqa.wq.weight)
        mha.wo.weight.copy_(gqa.wo.weight)
        for name in ("wk", "wv"):
            w = getattr(gqa, name).weight.view(2, 8, 32)
            getattr(mha, name).weight.copy_(w.repeat_interleave(2, dim=0).reshape(32, 32))
    x = torch.randn(2, 6, 32)
    torch.testing.assert_close(gqa(x), mha(x))


def test_matches_reference_causal_attention_without_rope():
    torch.manual_seed(0)
    layer = make(d_model=16, n_heads=2, rope=False)
    x = torch.randn(1, 5, 16)
    q, k, v = (m(x).view(1, 5, 2, 8).transpose(1, 2) for m in (layer.wq, layer.wk, layer.wv))
    scores = (q @ k.transpose(-1, -2)) / 8**0.5
    scores = scores.masked_fill(torch.ones(5, 5).triu(1).bool(), float("-inf"))
    y = (F.softmax(scores, -1) @ v).transpose(1, 2).reshape(1, 5, 16)
    torch.testing.assert_close(layer(x), layer.wo(y))


def test_causal_output_ignores_future_tokens_and_non_causal_does_not():
    x = torch.randn(1, 6, 16)
    y = x.clone()
    y[:, 4:] = torch.randn(1, 2, 16)
    causal = make(d_model=16, n_heads=2)
    torch.testing.assert_close(causal(x)[:, :4], causal(y)[:, :4])
    full = make(d_model=16, n_heads=2, causal=False)
    assert not torch.allclose(full(x)[:, :4], full(y)[:, :4])


@pytest.mark.parametrize("chunks", [[8], [1] * 8, [3, 1, 4], [5, 3]])
def test_kv_cache_in_chunks_equals_full_forward(chunks):
    torch.manual_seed(0)
    layer = make(d_model=32, n_heads=4, n_kv_heads=2, mode="gqa")
    x = torch.randn(2, 8, 32)
    full = layer(x)
    ctx, outs, pos = ForwardContext(state={}), [], 0
    for n in chunks:
        ctx.position = pos
        outs.append(layer(x[:, pos : pos + n], ctx))
        pos += n
    torch.testing.assert_close(torch.cat(outs, 1), full, rtol=1e-5, atol=1e-5)
    assert ctx.module_state(layer).length == 8
