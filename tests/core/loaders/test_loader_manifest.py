"""The architecture a loader generates is an ordinary manifest model: it validates through
the manifest front end and a manifest holding it builds the very parameters the weights
load into."""

from __future__ import annotations

import pytest
import yaml
from loader_fixtures import teacher_path

from caramba.compiler.shape_check import build_on_meta
from caramba.errors import CheckpointError
from caramba.layers.attention import AttentionLayerConfig
from caramba.loaders import LlamaArchitecture, model_config, model_definition
from caramba.loaders.gguf import architecture, open_gguf
from caramba.loaders.llama import caramba_name, expected_tensors, hf_name
from caramba.manifest.load import load_manifest
from caramba.preset_catalog import resolve_manifest_path


@pytest.fixture(scope="module")
def teacher_arch() -> LlamaArchitecture:
    """The teacher's architecture from its GGUF metadata alone (no weights dequantized)."""
    reader = open_gguf(teacher_path())
    return architecture(reader.metadata, {t.name for t in reader.tensors}, teacher_path())


def test_generated_config_is_the_documented_node_tree(teacher_arch):
    config = model_config(teacher_arch)
    assert config["embedder"] == {"type": "token", "vocab_size": 49152, "d_model": 576}
    blocks, norm, head = config["topology"]["layers"]
    assert blocks["type"] == "NestedTopology" and blocks["repeat"] == 30
    attn_block, ffn_block = blocks["layers"]
    assert [c["type"] for c in attn_block["layers"]] == ["RMSNormLayer", "AttentionLayer"]
    assert [c["type"] for c in ffn_block["layers"]] == ["RMSNormLayer", "SwiGLULayer"]
    attention = attn_block["layers"][1]
    assert (attention["mode"], attention["n_heads"], attention["n_kv_heads"],
            attention["rope_base"]) == ("gqa", 9, 3, 100000.0)
    assert attn_block["layers"][0]["eps"] == 1e-5
    assert norm["type"] == "RMSNormLayer" and head == {
        "type": "LinearLayer", "d_in": 576, "d_out": 49152, "bias": False}
    assert config["tie_embeddings"] is True


def test_generated_config_validates_through_the_node_validator(teacher_arch):
    definition = model_definition(model_config(teacher_arch), "teacher")
    attention = definition.topology.layers[0].layers[0].layers[1]
    assert isinstance(attention, AttentionLayerConfig) and attention.kv_heads == 3
    assert definition.tie_embeddings


def test_a_manifest_holding_the_generated_config_builds_the_same_parameters(
    teacher_arch, tmp_path
):
    document = yaml.safe_load(resolve_manifest_path("preset:standard_transformer").read_text())
    config = model_config(teacher_arch)
    document["targets"][0]["system"]["config"]["model"] = config
    path = tmp_path / "smollm2.yml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))

    resolved = load_manifest(path)
    target = resolved.targets[0]
    definition = model_definition(config, "teacher")
    assert target.topology == definition.topology and target.embedder == definition.embedder

    model = build_on_meta("system.language_model", definition)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    expected = {caramba_name(n): s for n, s in expected_tensors(teacher_arch).items()}
    expected["topology.layers.2.weight"] = (49152, 576)  # the tied head
    assert shapes == expected
    assert all(caramba_name(hf_name(k)) == k for k in shapes)


def test_architecture_caramba_cannot_express_is_a_checkpoint_error():
    arch = LlamaArchitecture(
        vocab_size=300, d_model=64, n_layers=1, n_heads=5, n_kv_heads=5, head_dim=13, d_ff=96,
        rope_base=10000.0, rms_norm_eps=1e-5, context_length=128, tie_embeddings=False)
    with pytest.raises(CheckpointError, match=r"odd\.gguf: .*head_dim \(13\) must be even"):
        model_definition(model_config(arch), "odd.gguf")


def test_kv_bytes_per_token_counts_keys_and_values_of_every_layer():
    arch = LlamaArchitecture(
        vocab_size=128256, d_model=2048, n_layers=16, n_heads=32, n_kv_heads=8, head_dim=64,
        d_ff=8192, rope_base=500000.0, rms_norm_eps=1e-5, context_length=131072,
        tie_embeddings=True)
    # Llama-3.2-1B: 2048 bytes per token per layer in fp16 (DESIGN.md), 16 layers.
    assert arch.kv_bytes_per_token() == 16 * 2048
    assert arch.kv_bytes_per_token(bytes_per_element=4) == 2 * 16 * 2048
