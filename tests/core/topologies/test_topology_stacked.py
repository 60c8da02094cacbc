"""StackedTopology and the shared topology contract."""

import pytest
import torch
from pydantic import ValidationError

from caramba.layers.attention import AttentionLayer
from caramba.layers.linear import LinearLayer
from caramba.layers.norm import RMSNormLayer
from caramba.models.builder import build_node
from caramba.registry import TOPOLOGIES
from caramba.topologies.residual import ResidualTopology
from caramba.topologies.stacked import StackedTopology


def lin(d_in=4, d_out=4):
    return LinearLayer.Config(d_in=d_in, d_out=d_out)


def test_applies_children_in_order():
    model = build_node(StackedTopology.Config(layers=(lin(4, 6), lin(6, 3))))
    x = torch.randn(2, 5, 4)
    torch.testing.assert_close(model(x), model.layers[1](model.layers[0](x)))
    assert model(x).shape == (2, 5, 3)


def test_parameter_names_follow_the_tree():
    block = ResidualTopology.Config(
        layers=(RMSNormLayer.Config(d_model=8), AttentionLayer.Config(d_model=8, n_heads=2))
    )
    model = build_node(StackedTopology.Config(layers=(block, lin(8, 8))))
    names = [name for name, _ in model.named_parameters()]
    assert "layers.0.layers.1.wq.weight" in names
    assert "layers.1.weight" in names


def test_config_dump_keeps_the_children_settings():
    config = StackedTopology.Config(layers=(lin(4, 6),))
    assert config.model_dump()["layers"][0] == {"type": "LinearLayer", "d_in": 4, "d_out": 6,
                                                "bias": False}


TOPOLOGY_NAMES = ["StackedTopology", "ResidualTopology", "NestedTopology", "ParallelTopology",
                  "BranchingTopology", "CyclicTopology", "RecurrentTopology"]


@pytest.mark.parametrize("name", TOPOLOGY_NAMES)
def test_every_topology_needs_a_child_and_describes_its_fields(name):
    config_cls = TOPOLOGIES.get(name).Config
    with pytest.raises(ValidationError):
        config_cls(layers=())
    for field_name, field in config_cls.model_fields.items():
        assert field_name == "type" or field.description, f"{name}.{field_name} undocumented"
