"""BranchingTopology: same input to every child, outputs concatenated on the last dim."""

import torch

from caramba.layers.linear import LinearLayer
from caramba.models.builder import build_node
from caramba.topologies.branching import BranchingTopology


def test_concatenates_children_outputs_on_features():
    children = (LinearLayer.Config(d_in=4, d_out=2), LinearLayer.Config(d_in=4, d_out=5))
    model = build_node(BranchingTopology.Config(layers=children))
    x = torch.randn(2, 3, 4)
    out = model(x)
    assert out.shape == (2, 3, 7)
    torch.testing.assert_close(out, torch.cat([model.layers[0](x), model.layers[1](x)], -1))
