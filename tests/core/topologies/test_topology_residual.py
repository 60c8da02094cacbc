"""ResidualTopology: x + f(x)."""

import torch

from caramba.layers.linear import LinearLayer
from caramba.layers.norm import RMSNormLayer
from caramba.models.builder import build_node
from caramba.topologies.residual import ResidualTopology


def test_adds_input_to_children_output():
    model = build_node(
        ResidualTopology.Config(
            layers=(RMSNormLayer.Config(d_model=8), LinearLayer.Config(d_in=8, d_out=8))
        )
    )
    x = torch.randn(2, 3, 8)
    torch.testing.assert_close(model(x), x + model.layers[1](model.layers[0](x)))
