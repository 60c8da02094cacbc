"""RecurrentTopology: chunked execution with the KV cache passed from chunk to chunk."""

import pytest
import torch

from caramba.layers.attention import AttentionLayer
from caramba.layers.base import ForwardContext
from caramba.layers.glu import SwiGLULayer
from caramba.layers.norm import RMSNormLayer
from caramba.models.builder import build_node
from caramba.topologies.nested import NestedTopology
from caramba.topologies.recurrent import RecurrentTopology
from caramba.topologies.residual import ResidualTopology
from caramba.topologies.stacked import StackedTopology


def body():
    attention = ResidualTopology.Config(
        layers=(
            RMSNormLayer.Config(d_model=16),
            AttentionLayer.Config(d_model=16, n_heads=4, n_kv_heads=2, mode="gqa"),
        )
    )
    mlp = ResidualTopology.Config(
        layers=(RMSNormLayer.Config(d_model=16), SwiGLULayer.Config(d_model=16, d_ff=32))
    )
    return (NestedTopology.Config(layers=(attention, mlp), repeat=2),)


@pytest.mark.parametrize("chunk_size", [1, 3, 4, 16])
def test_equals_stacked_on_the_full_sequence(chunk_size):
    torch.manual_seed(0)
    stacked = build_node(StackedTopology.Config(layers=body()))
    recurrent = build_node(RecurrentTopology.Config(layers=body(), chunk_size=chunk_size))
    recurrent.load_state_dict(stacked.state_dict())
    x = torch.randn(2, 10, 16)
    torch.testing.assert_close(recurrent(x), stacked(x), rtol=1e-5, atol=1e-5)


def test_gradients_flow_across_chunks():
    model = build_node(RecurrentTopology.Config(layers=body(), chunk_size=2))
    x = torch.randn(1, 4, 16, requires_grad=True)
    model(x)[:, -1].sum().backward()
    assert x.grad[:, 0].abs().sum() > 0


def test_uses_and_extends_the_callers_state():
    torch.manual_seed(0)
    model = build_node(RecurrentTopology.Config(layers=body(), chunk_size=3))
    x = torch.randn(1, 8, 16)
    full = model(x)
    ctx = ForwardContext(state={})
    first = model(x[:, :5], ctx)
    ctx.position = 5
    rest = model(x[:, 5:], ctx)
    torch.testing.assert_close(torch.cat([first, rest], 1), full, rtol=1e-5, atol=1e-5)
