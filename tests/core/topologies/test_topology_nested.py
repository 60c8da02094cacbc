"""NestedTopology: children repeated with independent weights."""

import torch

from caramba.layers.linear import LinearLayer
from caramba.layers.norm import LayerNormLayer
from caramba.models.builder import build_node
from caramba.topologies.nested import NestedTopology


def config(repeat):
    children = (LinearLayer.Config(d_in=4, d_out=4), LayerNormLayer.Config(d_model=4))
    return NestedTopology.Config(layers=children, repeat=repeat)


def test_repeat_builds_independent_copies_in_order():
    model = build_node(config(3))
    assert len(model.layers) == 6
    assert [type(m).__name__ for m in model.layers[:2]] == ["LinearLayer", "LayerNormLayer"]
    assert sum(p.numel() for p in model.parameters()) == 3 * sum(
        p.numel() for p in build_node(config(1)).parameters()
    )
    assert model.layers[0].weight is not model.layers[2].weight
    assert not torch.equal(model.layers[0].weight, model.layers[2].weight)


def test_output_is_the_flat_sequence_applied_in_order():
    model = build_node(config(2))
    x = torch.randn(2, 3, 4)
    expected = x
    for layer in model.layers:
        expected = layer(expected)
    torch.testing.assert_close(model(x), expected)


def test_build_sees_a_distinct_index_per_copy():
    seen = []
    NestedTopology.from_config(config(2), lambda child, i: seen.append(i) or build_node(child))
    assert seen == [0, 1, 2, 3]
