"""SwiGLU and GEGLU feed-forward layers."""

import torch
import torch.nn.functional as F

from caramba.layers.glu import GEGLULayer, SwiGLULayer
from caramba.models.builder import build_node


def test_swiglu_is_w2_of_silu_gate_times_value():
    layer = build_node(SwiGLULayer.Config(d_model=8, d_ff=12))
    x = torch.randn(2, 3, 8)
    expected = layer.w2(F.silu(layer.w1(x)) * layer.w3(x))
    torch.testing.assert_close(layer(x), expected)
    assert sum(p.numel() for p in layer.parameters()) == 3 * 8 * 12


def test_geglu_uses_exact_gelu():
    layer = build_node(GEGLULayer.Config(d_model=8, d_ff=12, bias=True))
    x = torch.randn(2, 3, 8)
    expected = layer.w2(F.gelu(layer.w1(x), approximate="none") * layer.w3(x))
    torch.testing.assert_close(layer(x), expected)
    assert layer.w1.bias is not None
