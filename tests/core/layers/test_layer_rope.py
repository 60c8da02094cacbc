"""RoPE layer and the shared rotary helper, with Llama 3.x frequency scaling."""

import math

import pytest
import torch
from pydantic import ValidationError

from caramba.layers.base import ForwardContext
from caramba.layers.rope import RoPE
from caramba.layers.rotary import RopeScaling, RotaryCache, apply_rotary, rotate_half


def test_rope_rejects_odd_dimension():
    with pytest.raises(ValidationError, match=r"d_model \(5\) must be even"):
        RoPE.Config(d_model=5)


def test_rotation_pairs_feature_i_with_i_plus_half_and_preserves_norm():
    d, base = 8, 10000.0
    x = torch.randn(1, 6, d)
    y = RoPE(d, base)(x)
    t = torch.arange(6, dtype=torch.float32)[:, None]
    theta = t * base ** (-torch.arange(0, d, 2, dtype=torch.float32) / d)
    x1, x2 = x[..., : d // 2], x[..., d // 2 :]
    expected = torch.cat(
        (x1 * theta.cos() - x2 * theta.sin(), x2 * theta.cos() + x1 * theta.sin()), dim=-1
    )
    torch.testing.assert_close(y, expected)
    torch.testing.assert_close(y.norm(dim=-1), x.norm(dim=-1))


def test_position_offset_from_context_equals_slicing_a_longer_sequence():
    layer = RoPE(16)
    x = torch.randn(2, 10, 16)
    full = layer(x)
    tail = layer(x[:, 7:], ForwardContext(position=7))
    torch.testing.assert_close(tail, full[:, 7:])


def test_scores_depend_only_on_relative_position():
    cache = RotaryCache(8)
    q, k = torch.randn(8), torch.randn(8)

    def score(pq, pk):
        cq, sq = cache(pq, 1)
        ck, sk = cache(pk, 1)
        return (apply_rotary(q[None], cq, sq) * apply_rotary(k[None], ck, sk)).sum()

    torch.testing.assert_close(score(5, 2), score(103, 100))


def test_cache_grows_on_demand_and_rotate_half_is_a_quarter_turn():
    cache = RotaryCache(4)
    cos, sin = cache(1000, 3)
    assert cos.shape == sin.shape == (3, 4)
    x = torch.randn(4)
    torch.testing.assert_close(rotate_half(rotate_half(x)), -x)


# --- Llama 3.x frequency scaling ------------------------------------------------------------

LLAMA32_1B = {"type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
              "original_max_position_embeddings": 8192}


def meta_llama3_inv_freq(dim, theta, factor, low_freq_factor, high_freq_factor, old_context_len):
    """Meta's published rule (llama-models, `apply_scaling`), one frequency at a time in
    Python floats: the reference the vectorized implementation must match."""
    low_freq_wavelen = old_context_len / low_freq_factor
    high_freq_wavelen = old_context_len / high_freq_factor
    out = []
    for i in range(0, dim, 2):
        freq = 1.0 / theta ** (i / dim)
        wavelen = 2 * math.pi / freq
        if wavelen < high_freq_wavelen:
            out.append(freq)
        elif wavelen > low_freq_wavelen:
            out.append(freq / factor)
        else:
            smooth = (old_context_len / wavelen - low_freq_factor) / (
                high_freq_factor - low_freq_factor)
            out.append((1 - smooth) * freq / factor + smooth * freq)
    return torch.tensor(out, dtype=torch.float64)


def _regimes(dim, theta, context=8192, low=1.0, high=4.0):
    wavelen = [2 * math.pi * theta ** (i / dim) for i in range(0, dim, 2)]
    return (sum(w < context / high for w in wavelen), sum(w > context / low for w in wavelen))


@pytest.mark.parametrize(("dim", "theta", "params"), [
    (64, 500000.0, LLAMA32_1B),  # Llama-3.2-1B/3B
    (128, 500000.0, {**LLAMA32_1B, "factor": 8.0}),  # Llama-3.1-8B
    (16, 10000.0, {**LLAMA32_1B, "factor": 4.0, "low_freq_factor": 2.0,
                   "high_freq_factor": 16.0, "original_max_position_embeddings": 512}),
])
def test_llama3_scaling_matches_metas_formula(dim, theta, params):
    scaling = RopeScaling(**params)
    got = RotaryCache(dim, theta, scaling).inv_freq
    want = meta_llama3_inv_freq(dim, theta, params["factor"], params["low_freq_factor"],
                                params["high_freq_factor"],
                                params["original_max_position_embeddings"])
    torch.testing.assert_close(got.double(), want, rtol=2e-6, atol=0)
    # Every case has kept, divided and blended frequencies, so all three branches are pinned.
    kept, divided = _regimes(dim, theta, params["original_max_position_embeddings"],
                             params["low_freq_factor"], params["high_freq_factor"])
    assert kept > 0 and divided > 0 and kept + divided < dim // 2
    unscaled = RotaryCache(dim, theta).inv_freq
    assert torch.equal(got[:kept], unscaled[:kept])
    assert not torch.allclose(got[-1], unscaled[-1])


def test_scaled_cache_rotates_by_the_scaled_frequencies():
    scaling = RopeScaling(**LLAMA32_1B)
    cache = RotaryCache(64, 500000.0, scaling)
    cos, sin = cache(1000, 3)
    angles = torch.arange(1000, 1003, dtype=torch.float64)[:, None] * meta_llama3_inv_freq(
        64, 500000.0, 32.0, 1.0, 4.0, 8192)
    torch.testing.assert_close(cos.double(), torch.cat((angles, angles), -1).cos(), atol=2e-4,
                               rtol=0)
    torch.testing.assert_close(sin.double(), torch.cat((angles, angles), -1).sin(), atol=2e-4,
                               rtol=0)
    layer = RoPE(64, 500000.0, scaling)
    assert torch.equal(layer.rotary.inv_freq, cache.inv_freq)
    assert "llama3(factor=32.0)" in repr(layer)


def test_attention_layer_takes_rope_scaling_from_its_config():
    from caramba.layers.attention import AttentionLayer, AttentionLayerConfig

    config = AttentionLayerConfig(d_model=128, n_heads=2, n_kv_heads=1, mode="gqa",
                                  rope_base=500000.0, rope_scaling=LLAMA32_1B)
    layer = AttentionLayer(config)
    torch.testing.assert_close(layer.rotary.inv_freq.double(),
                               meta_llama3_inv_freq(64, 500000.0, 32.0, 1.0, 4.0, 8192),
                               rtol=2e-6, atol=0)
    # A DBA geometric path of 16 dims per head on the teacher's pairs 0, 4, 8, ..., 28
    # (base**(4 * 16/64)) with the same scaling carries exactly those pairs' scaled
    # frequencies, blended and divided ones included: the rule acts per frequency.
    dba = AttentionLayer(AttentionLayerConfig(
        d_model=128, n_heads=2, n_kv_heads=1, mode="dba", sem_dim=8, geo_dim=32,
        rope_base=500000.0 ** (4 * 16 / 64), rope_scaling=LLAMA32_1B))
    torch.testing.assert_close(dba.rotary.inv_freq, layer.rotary.inv_freq[0:32:4], rtol=1e-5,
                               atol=0)
    torch.testing.assert_close(dba.rotary.inv_freq[-1] * 32, RotaryCache(16, 500000.0).inv_freq[-1])
    plain = AttentionLayer(config.model_copy(update={"rope_scaling": None}))
    assert plain.rotary.scaling is None


@pytest.mark.parametrize(("change", "message"), [
    ({"high_freq_factor": 1.0}, r"high_freq_factor \(1.0\) must be greater than low_freq_factor"),
    ({"type": "yarn"}, "type"),
    ({"factor": 0.5}, "factor"),
    ({"factr": 8.0}, "factr"),
])
def test_bad_rope_scaling_is_a_validation_error_naming_the_key(change, message):
    from caramba.layers.attention import AttentionLayerConfig

    with pytest.raises(ValidationError, match=message):
        AttentionLayerConfig(d_model=64, n_heads=2, rope_scaling={**LLAMA32_1B, **change})


def test_rope_scaling_without_rope_is_refused():
    from caramba.layers.attention import AttentionLayerConfig

    with pytest.raises(ValidationError, match="rope_scaling needs rope: true"):
        AttentionLayerConfig(d_model=64, n_heads=2, rope=False, rope_scaling=LLAMA32_1B)
