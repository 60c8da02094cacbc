"""RoPE layer and the shared rotary helper."""

import pytest
import torch
from pydantic import ValidationError

from caramba.layers.base import ForwardContext
from caramba.layers.rope import RoPE
from caramba.layers.rotary import RotaryCache, apply_rotary, rotate_half


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
