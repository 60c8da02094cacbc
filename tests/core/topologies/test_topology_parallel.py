"""ParallelTopology: same input to every child, outputs stacked, summed or averaged."""

import pytest
import torch

from caramba.layers.linear import LinearLayer
from caramba.models.builder import build_node
from caramba.topologies.parallel import ParallelTopology


def make(**fields):
    children = (LinearLayer.Config(d_in=4, d_out=4),) * 3
    return build_node(ParallelTopology.Config(layers=children, **fields))


def test_stack_adds_a_leading_dimension_by_default():
    model = make()
    x = torch.randn(2, 5, 4)
    out = model(x)
    assert out.shape == (3, 2, 5, 4)
    for i, child in enumerate(model.layers):
        torch.testing.assert_close(out[i], child(x))


def test_stack_dim_is_configurable():
    assert make(dim=-1)(torch.randn(2, 5, 4)).shape == (2, 5, 4, 3)


@pytest.mark.parametrize("combine, scale", [("sum", 1.0), ("mean", 1 / 3)])
def test_sum_and_mean_combine_elementwise(combine, scale):
    model = make(combine=combine)
    x = torch.randn(2, 5, 4)
    expected = sum(child(x) for child in model.layers) * scale
    torch.testing.assert_close(model(x), expected)
