"""LinearLayer, LayerNormLayer, RMSNormLayer, DropoutLayer: contract, shapes, numerics."""

import pytest
import torch
from pydantic import ValidationError

from caramba.layers.dropout import DropoutLayer
from caramba.layers.linear import LinearLayer
from caramba.layers.norm import LayerNormLayer, RMSNormLayer
from caramba.models.builder import build_node
from caramba.registry import LAYERS


@pytest.mark.parametrize(
    "name", ["LinearLayer", "LayerNormLayer", "RMSNormLayer", "DropoutLayer", "RoPE",
             "AttentionLayer", "SwiGLULayer", "GEGLULayer"]
)
def test_every_layer_entry_point_loads_and_has_a_described_config(name):
    cls = LAYERS.get(name)
    assert cls.Config(**_minimal(name)).type == name
    for field_name, field in cls.Config.model_fields.items():
        assert field_name == "type" or field.description, f"{name}.{field_name} has no description"


def _minimal(name):
    return {
        "LinearLayer": {"d_in": 4, "d_out": 4},
        "LayerNormLayer": {"d_model": 4},
        "RMSNormLayer": {"d_model": 4},
        "DropoutLayer": {},
        "RoPE": {"d_model": 4},
        "AttentionLayer": {"d_model": 8, "n_heads": 2},
        "SwiGLULayer": {"d_model": 4, "d_ff": 8},
        "GEGLULayer": {"d_model": 4, "d_ff": 8},
    }[name]


def test_linear_defaults_to_no_bias_and_maps_features():
    layer = build_node(LinearLayer.Config(d_in=3, d_out=5))
    assert layer.bias is None
    assert layer(torch.randn(2, 4, 3)).shape == (2, 4, 5)


def test_configs_reject_unknown_fields():
    with pytest.raises(ValidationError):
        LinearLayer.Config(d_in=3, d_out=5, biass=True)


def test_layernorm_matches_torch():
    x = torch.randn(2, 3, 8)
    layer = build_node(LayerNormLayer.Config(d_model=8))
    torch.testing.assert_close(layer(x), torch.nn.functional.layer_norm(x, (8,), eps=1e-5))


def test_rmsnorm_normalizes_to_unit_rms_and_keeps_dtype():
    layer = build_node(RMSNormLayer.Config(d_model=16))
    x = torch.randn(2, 3, 16) * 7
    y = layer(x)
    torch.testing.assert_close(y.pow(2).mean(-1), torch.ones(2, 3), rtol=1e-4, atol=1e-4)
    assert layer(x.to(torch.bfloat16)).dtype == torch.bfloat16


def test_dropout_p_must_be_below_one_and_is_identity_in_eval():
    with pytest.raises(ValidationError):
        DropoutLayer.Config(p=1.0)
    layer = build_node(DropoutLayer.Config(p=0.5)).eval()
    x = torch.randn(4, 4)
    assert torch.equal(layer(x), x)
