"""CyclicTopology: children repeated with shared weights."""

import torch

from caramba.layers.attention import AttentionLayer
from caramba.layers.base import ForwardContext
from caramba.layers.linear import LinearLayer
from caramba.layers.norm import RMSNormLayer
from caramba.models.builder import build_node
from caramba.topologies.cyclic import CyclicTopology
from caramba.topologies.residual import ResidualTopology


def block():
    return ResidualTopology.Config(
        layers=(RMSNormLayer.Config(d_model=16), AttentionLayer.Config(d_model=16, n_heads=2))
    )


def n_params(module):
    return sum(p.numel() for p in module.parameters())


def test_parameter_count_does_not_depend_on_cycles():
    counts = {n_params(build_node(CyclicTopology.Config(layers=(block(),), cycles=c)))
              for c in (1, 2, 5)}
    assert len(counts) == 1


def test_output_is_the_children_applied_cycles_times():
    config = CyclicTopology.Config(layers=(LinearLayer.Config(d_in=4, d_out=4),), cycles=3)
    model = build_node(config)
    x = torch.randn(2, 3, 4)
    f = model.layers[0]
    torch.testing.assert_close(model(x), f(f(f(x))))


def test_incremental_decoding_keeps_one_cache_per_cycle():
    torch.manual_seed(0)
    model = build_node(CyclicTopology.Config(layers=(block(),), cycles=3))
    x = torch.randn(1, 6, 16)
    full = model(x)
    ctx = ForwardContext(state={})
    prefix = model(x[:, :4], ctx)
    steps = []
    for t in (4, 5):
        ctx.position = t
        steps.append(model(x[:, t : t + 1], ctx))
    torch.testing.assert_close(torch.cat([prefix, *steps], 1), full, rtol=1e-5, atol=1e-5)
