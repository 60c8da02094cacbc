"""AttentionLayer mode dba: config validation, the two-path score against a naive
implementation, RoPE on the geometric path only, GQA grouping, init, and cached decoding."""

import math

import pytest
import torch
from pydantic import ValidationError

from caramba.cache import CacheSpec
from caramba.layers.attention import AttentionLayer
from caramba.layers.base import ForwardContext
from caramba.layers.rotary import RotaryCache, apply_rotary
from caramba.models.builder import build_node


def make(**fields):
    base = {"d_model": 32, "n_heads": 4, "n_kv_heads": 2, "mode": "dba", "sem_dim": 16,
            "geo_dim": 32}
    return build_node(AttentionLayer.Config(**{**base, **fields}))


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"geo_dim": 32}, r"needs sem_dim and geo_dim"),
        ({"sem_dim": 18, "geo_dim": 32}, r"sem_dim \(18\) must be divisible by n_heads \(4\)"),
        ({"sem_dim": 16, "geo_dim": 30}, r"geo_dim \(30\) must be divisible by n_heads \(4\)"),
        ({"sem_dim": 16, "geo_dim": 12}, r"geo_dim / n_heads \(12 / 4 = 3\) must be even"),
        ({"sem_dim": 16, "geo_dim": 32, "attn_dim": 30}, r"attn_dim \(30\) must be divisible"),
        ({"sem_dim": 16, "geo_dim": 32, "head_dim": 8}, r"head_dim does not apply"),
        ({"sem_dim": 16, "geo_dim": 32, "n_kv_heads": 3}, r"divisible by n_kv_heads \(3\)"),
    ],
)
def test_config_errors_name_the_numbers(fields, message):
    with pytest.raises(ValidationError, match=message):
        AttentionLayer.Config(d_model=32, n_heads=4, mode="dba", **fields)


def test_dba_widths_are_rejected_in_other_modes():
    with pytest.raises(ValidationError, match="sem_dim only applies to mode 'dba'"):
        AttentionLayer.Config(d_model=32, n_heads=4, sem_dim=16)


def test_odd_geometric_head_width_is_fine_without_rope():
    layer = make(geo_dim=12, rope=False)
    assert layer(torch.randn(1, 3, 32)).shape == (1, 3, 32)


def test_projection_shapes_and_cached_tensors():
    layer = make(attn_dim=48)
    assert layer.wq_sem.weight.shape == (16, 32) and layer.wk_sem.weight.shape == (8, 32)
    assert layer.wq_geo.weight.shape == (32, 32) and layer.wk_geo.weight.shape == (16, 32)
    assert layer.wv.weight.shape == (24, 32) and layer.wo.weight.shape == (32, 48)
    assert layer.cache_shapes() == {"k_sem": (2, 4), "k_geo": (2, 8), "v": (2, 12)}
    assert (layer.scale_sem, layer.scale_geo) == (1 / 2, 1 / math.sqrt(8))


def naive_dba(layer, x, position=0):
    """Loops over heads and positions: the definition, written the slow way in float64."""
    B, T, _ = x.shape
    H, KV = layer.n_heads, layer.n_kv_heads
    ds, dg, dv = layer.sem_head_dim, layer.geo_head_dim, layer.v_head_dim
    q_sem = layer.wq_sem(x).view(B, T, H, ds)
    k_sem = layer.wk_sem(x).view(B, T, KV, ds)
    q_geo = layer.wq_geo(x).view(B, T, H, dg)
    k_geo = layer.wk_geo(x).view(B, T, KV, dg)
    v = layer.wv(x).view(B, T, KV, dv)
    if layer.rotary is not None:
        rot = RotaryCache(dg, 10000.0)
        cos, sin = rot(position, T)
        q_geo = apply_rotary(q_geo.transpose(1, 2), cos, sin).transpose(1, 2)
        k_geo = apply_rotary(k_geo.transpose(1, 2), cos, sin).transpose(1, 2)
    out = torch.zeros(B, T, H, dv, dtype=torch.float64)
    for b in range(B):
        for h in range(H):
            g = h // (H // KV)
            for i in range(T):
                seen = range(i + 1) if layer.causal else range(T)
                scores = torch.stack([
                    (q_sem[b, i, h] @ k_sem[b, j, g]) / math.sqrt(ds)
                    + (q_geo[b, i, h] @ k_geo[b, j, g]) / math.sqrt(dg) for j in seen])
                w = torch.softmax(scores.double(), 0)
                out[b, i, h] = sum(w[n] * v[b, j, g].double() for n, j in enumerate(seen))
    return layer.wo(out.reshape(B, T, H * dv).to(x.dtype))


@pytest.mark.parametrize("rope", [True, False])
@pytest.mark.parametrize("kv_heads", [1, 2, 4])
@pytest.mark.parametrize("causal", [True, False])
def test_matches_naive_two_path_attention(rope, kv_heads, causal):
    torch.manual_seed(0)
    layer = make(rope=rope, n_kv_heads=kv_heads, causal=causal, attn_dim=48).double()
    x = torch.randn(2, 5, 32, dtype=torch.float64)
    torch.testing.assert_close(layer(x), naive_dba(layer, x), rtol=1e-10, atol=1e-10)


def test_rope_rotates_only_the_geometric_path():
    """Same weights with and without RoPE: equal outputs when only the semantic path scores
    (geometric queries zeroed), different ones as soon as the geometric path scores."""
    torch.manual_seed(0)
    with_rope, without = make(), make(rope=False)
    without.load_state_dict(with_rope.state_dict())
    x = torch.randn(2, 6, 32)
    assert not torch.allclose(with_rope(x), without(x), atol=1e-4)
    with torch.no_grad():
        for layer in (with_rope, without):
            layer.wq_geo.weight.zero_()
    torch.testing.assert_close(with_rope(x), without(x))


def test_semantic_path_ignores_position_and_geometric_path_is_relative():
    torch.manual_seed(0)
    layer = make()
    x = torch.randn(1, 6, 32)

    def at(position):
        return layer(x, ForwardContext(position=position))

    with torch.no_grad():
        layer.wq_geo.weight.zero_()
    torch.testing.assert_close(at(0), at(11))
    with torch.no_grad():
        layer.wq_sem.weight.zero_()
        layer.wq_geo.weight.normal_()
    # Only the geometric path scores: RoPE depends on relative position alone.
    torch.testing.assert_close(at(0), at(11), rtol=1e-4, atol=1e-5)


def test_init_scales_queries_so_summed_score_matches_one_head():
    torch.manual_seed(0)
    layer = make(d_model=256, n_heads=4, n_kv_heads=4, sem_dim=64, geo_dim=128)
    bound = 1 / math.sqrt(256)
    for proj in (layer.wq_sem, layer.wq_geo):
        assert proj.weight.abs().max() <= bound * 2**-0.5 + 1e-7
        assert proj.weight.abs().max() > 0.9 * bound * 2**-0.5
    for proj in (layer.wk_sem, layer.wk_geo, layer.wv, layer.wo):
        assert proj.weight.abs().max() > 0.9 * bound
    # Empirically: the two-path score's variance is about one standard head's.
    std = build_node(AttentionLayer.Config(d_model=256, n_heads=4))
    x = torch.randn(64, 256)
    q = layer.wq_sem(x).view(64, 4, 16)
    k = layer.wk_sem(x).view(64, 4, 16)
    qg = layer.wq_geo(x).view(64, 4, 32)
    kg = layer.wk_geo(x).view(64, 4, 32)
    dba = torch.einsum("ihd,jhd->hij", q, k) / 4 + torch.einsum("ihd,jhd->hij", qg, kg) / 32**0.5
    qs, ks = std.wq(x).view(64, 4, 64), std.wk(x).view(64, 4, 64)
    ref = torch.einsum("ihd,jhd->hij", qs, ks) / 8
    assert 0.6 < (dba.var() / ref.var()).item() < 1.6


@pytest.mark.parametrize("chunks", [[9], [1] * 9, [4, 1, 4], [2, 7]])
def test_chunked_decoding_with_fp32_cache_equals_full_forward(chunks):
    torch.manual_seed(0)
    layer = make()
    x = torch.randn(2, 9, 32)
    full = layer(x)
    spec = CacheSpec(kind="fp32")
    ctx, outs, pos = spec.context(), [], 0
    for n in chunks:
        ctx.position = pos
        outs.append(layer(x[:, pos : pos + n], ctx))
        pos += n
    torch.testing.assert_close(torch.cat(outs, 1), full, rtol=1e-5, atol=1e-5)
    cache = ctx.module_state(layer)
    assert cache.length == 9 and set(cache.kinds) == {"k_sem", "k_geo", "v"}


def test_gradients_reach_every_projection():
    layer = make()
    layer(torch.randn(2, 5, 32)).square().mean().backward()
    for name, p in layer.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
