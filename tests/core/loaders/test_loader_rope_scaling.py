"""Llama 3.x RoPE scaling read from checkpoints: a Hugging Face cache whose config.json asks
for `rope_type: llama3`, and GGUF files carrying llama.cpp's `rope_freqs.weight` divisors.
The loaded attention layers must rotate at the frequencies of Meta's published rule; every
other scaling is an error naming the key or tensor."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from loader_fixtures import (
    hub_cache,
    llama_cpp_rope_freqs,
    set_config,
    tiny_hf_weights,
    tiny_vocab,
    write_tiny_gguf,
)

from caramba.errors import CheckpointError
from caramba.layers.attention import AttentionLayer
from caramba.loaders import load_gguf, load_pretrained, model_definition, save_hf_folder

VOCAB = len(tiny_vocab())
THETA = 500000.0
LLAMA32_1B = {"factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
              "original_max_position_embeddings": 8192}
REPO = "caramba-test/tiny-llama3"
COMMIT = "89abcdef0123456789abcdef0123456789abcdef"


def meta_llama3_inv_freq(dim: int, theta: float, factor: float, low_freq_factor: float,
                         high_freq_factor: float, original_max_position_embeddings: int
                         ) -> torch.Tensor:
    """Meta's rule (llama-models `apply_scaling`), one frequency at a time in Python floats."""
    old_context_len = original_max_position_embeddings
    out = []
    for i in range(0, dim, 2):
        freq = 1.0 / theta ** (i / dim)
        wavelen = 2 * math.pi / freq
        if wavelen < old_context_len / high_freq_factor:
            out.append(freq)
        elif wavelen > old_context_len / low_freq_factor:
            out.append(freq / factor)
        else:
            smooth = (old_context_len / wavelen - low_freq_factor) / (
                high_freq_factor - low_freq_factor)
            out.append((1 - smooth) * freq / factor + smooth * freq)
    return torch.tensor(out, dtype=torch.float64)


def attention_layers(model: torch.nn.Module) -> list[AttentionLayer]:
    return [m for m in model.modules() if isinstance(m, AttentionLayer)]


def assert_llama3_frequencies(model: torch.nn.Module, dim: int, params: dict) -> None:
    want = meta_llama3_inv_freq(dim, THETA, **params)
    layers = attention_layers(model)
    assert layers
    for layer in layers:
        assert layer.rotary is not None
        torch.testing.assert_close(layer.rotary.inv_freq.double(), want, rtol=2e-6, atol=0)


def write_gguf(path: Path, weights: dict, rope_freqs: np.ndarray | None = None, **kw) -> Path:
    overrides = dict(kw.pop("tensor_overrides", {}))
    if rope_freqs is not None:
        overrides["rope_freqs.weight"] = rope_freqs
    metadata = {"rope.freq_base": THETA, "context_length": 4096, **kw.pop("metadata", {})}
    return write_tiny_gguf(path, weights, metadata=metadata, tensor_overrides=overrides, **kw)


@pytest.fixture
def weights() -> dict[str, torch.Tensor]:
    return tiny_hf_weights(VOCAB)  # d_model 64, 4 heads of 16: RoPE pairs 0..7


@pytest.fixture
def hf_folder(tmp_path: Path, weights) -> Path:
    """A Hugging Face Llama folder whose config.json is Llama-3.2-1B's RoPE setting."""
    folder = save_hf_folder(load_gguf(write_gguf(tmp_path / "t.gguf", weights)), tmp_path / "hf")
    set_config(folder, rope_theta=THETA, max_position_embeddings=131072,
               rope_scaling={"rope_type": "llama3", **LLAMA32_1B})
    return folder


def test_hf_cache_with_llama3_rope_scaling_loads_metas_frequencies(hf_folder, tmp_path,
                                                                   monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(hub_cache(hf_folder, tmp_path / "hub", REPO, COMMIT)))
    loaded = load_pretrained(f"hf://{REPO}")
    scaling = loaded.architecture.rope_scaling
    assert scaling is not None and scaling.type == "llama3"
    assert scaling.model_dump(exclude={"type"}) == LLAMA32_1B
    assert loaded.architecture.rope_base == THETA
    assert_llama3_frequencies(loaded.model, 16, LLAMA32_1B)
    # With head_dim 16 at theta 500000 the pairs fall in all three of the rule's bands.
    unscaled = 1.0 / THETA ** (torch.arange(0, 16, 2, dtype=torch.float64) / 16)
    ratio = unscaled / meta_llama3_inv_freq(16, THETA, **LLAMA32_1B)
    assert ratio[0] == pytest.approx(1) and ratio[-1] == pytest.approx(32)
    assert 1.5 < ratio[4] < 31
    # The generated manifest model carries the scaling, and validates as a manifest would.
    attention = loaded.model_config["topology"]["layers"][0]["layers"][0]["layers"][1]
    assert attention["rope_scaling"] == {"type": "llama3", **LLAMA32_1B}
    definition = model_definition(loaded.model_config, "llama3")
    assert definition.topology.layers[0].layers[0].layers[1].rope_scaling == scaling


def test_scaling_survives_conversion_back_to_a_hugging_face_folder(hf_folder, tmp_path):
    loaded = load_pretrained(hf_folder)
    again = save_hf_folder(loaded, tmp_path / "again")
    config = json.loads((again / "config.json").read_text())
    assert config["rope_scaling"] == {"rope_type": "llama3", **LLAMA32_1B}
    reloaded = load_pretrained(again)
    assert reloaded.architecture == loaded.architecture
    tokens = torch.randint(3, VOCAB, (1, 300), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(reloaded.model(tokens), loaded.model(tokens))


def test_transformers_v5_rope_parameters_are_read(hf_folder):
    set_config(hf_folder, rope_theta=None, rope_scaling=None, rope_parameters={
        "rope_type": "llama3", "rope_theta": THETA, **LLAMA32_1B})
    loaded = load_pretrained(hf_folder)
    assert loaded.architecture.rope_base == THETA
    assert_llama3_frequencies(loaded.model, 16, LLAMA32_1B)
    set_config(hf_folder, rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    plain = load_pretrained(hf_folder)
    assert plain.architecture.rope_scaling is None and plain.architecture.rope_base == 10000.0


@pytest.mark.parametrize(("rope_scaling", "message"), [
    ({"rope_type": "yarn", "factor": 4.0}, r"`rope_scaling.rope_type` is 'yarn'; caramba "
     r"implements RoPE scaling of type 'llama3' only"),
    ({"type": "linear", "factor": 2.0}, r"`rope_scaling.type` is 'linear'"),
    ({"factor": 8.0}, r"`rope_scaling` \(\{'factor': 8.0\}\) names no rope_type"),
    ({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0},
     r"`rope_scaling.original_max_position_embeddings` is missing"),
    ({"rope_type": "llama3", **LLAMA32_1B, "high_freq_factor": 1.0},
     r"`rope_scaling`: Value error, high_freq_factor \(1.0\) must be greater"),
    ({"rope_type": "llama3", **LLAMA32_1B, "factor": 0.5},
     r"`rope_scaling.factor`: Input should be greater than or equal to 1"),
])
def test_unsupported_hf_rope_scaling_names_the_key(hf_folder, rope_scaling, message):
    set_config(hf_folder, rope_scaling=rope_scaling)
    with pytest.raises(CheckpointError, match=r"config\.json: " + message):
        load_pretrained(hf_folder)


def test_gguf_rope_freqs_become_llama3_scaling(tmp_path, weights):
    divisors = llama_cpp_rope_freqs(16, THETA, **LLAMA32_1B)
    loaded = load_gguf(write_gguf(tmp_path / "llama3.gguf", weights, divisors))
    assert loaded.architecture.rope_scaling.model_dump(exclude={"type"}) == LLAMA32_1B
    assert_llama3_frequencies(loaded.model, 16, LLAMA32_1B)
    # rope_freqs is not a weight; the converted folder states the scaling instead.
    folder = save_hf_folder(loaded, tmp_path / "hf")
    assert json.loads((folder / "config.json").read_text())["rope_scaling"]["factor"] == 32.0
    assert "rope_freqs.weight" not in loaded.model.state_dict()


def test_gguf_rope_freqs_of_other_llama3_parameters_are_fitted(tmp_path):
    # head_dim 64: five pairs fall in the blended band, from which low and high are fitted.
    params = {"factor": 8.0, "low_freq_factor": 2.0, "high_freq_factor": 16.0,
              "original_max_position_embeddings": 8192}
    weights = tiny_hf_weights(VOCAB, d=128, n_heads=2, n_kv=1)
    path = write_gguf(tmp_path / "fit.gguf", weights, llama_cpp_rope_freqs(64, THETA, **params),
                      n_heads=2, n_kv=1)
    loaded = load_gguf(path)
    assert loaded.architecture.rope_scaling.model_dump(exclude={"type"}) == params
    assert_llama3_frequencies(loaded.model, 64, params)


def test_gguf_rope_freqs_of_ones_is_plain_rope(tmp_path, weights):
    loaded = load_gguf(write_gguf(tmp_path / "ones.gguf", weights, np.ones(8, np.float32)))
    assert loaded.architecture.rope_scaling is None


@pytest.mark.parametrize(("kind", "message"), [
    ("random", r"tensor 'rope_freqs.weight' holds per-frequency RoPE divisors .* that follow "
               "no Llama 3 'llama3' scaling rule"),
    ("short", r"tensor 'rope_freqs.weight' has 7 values; RoPE over head_dim 16 needs 8"),
    ("negative", r"tensor 'rope_freqs.weight' holds values that are not positive finite"),
])
def test_gguf_rope_freqs_that_follow_no_llama3_rule_are_named(tmp_path, weights, kind, message):
    values = {"random": np.random.default_rng(0).uniform(1, 5, 8).astype(np.float32),
              "short": llama_cpp_rope_freqs(16, THETA, **LLAMA32_1B)[:7],
              "negative": -llama_cpp_rope_freqs(16, THETA, **LLAMA32_1B)}[kind]
    path = write_gguf(tmp_path / f"{kind}.gguf", weights, values)
    with pytest.raises(CheckpointError, match=rf"{kind}\.gguf: {message}"):
        load_gguf(path)


@pytest.mark.parametrize(("metadata", "message"), [
    ({"rope.scaling.type": "yarn", "rope.scaling.factor": 4.0},
     r"metadata 'llama.rope.scaling.type' is 'yarn'"),
    ({"rope.scaling.factor": 4.0}, r"metadata 'llama.rope.scaling.factor' is 4.0: linear RoPE "
     "scaling"),
])
def test_gguf_rope_scaling_keys_caramba_cannot_follow_are_named(tmp_path, weights, metadata,
                                                               message):
    with pytest.raises(CheckpointError, match=message):
        load_gguf(write_gguf(tmp_path / "keys.gguf", weights, metadata=metadata))


def test_llama32_preset_student_rotates_at_the_teachers_scaled_pairs():
    """The preset's DBA geometric path (8 dims per head, base 500000**(32/64)) with the
    teacher's scaling rotates at Llama-3.2-1B's scaled pairs 0, 4, 8, 12; the teacher's own
    layers, generated from its architecture, at all 32 of Meta's scaled frequencies."""
    from caramba.layers.attention import AttentionLayerConfig
    from caramba.loaders import LlamaArchitecture, model_config
    from caramba.manifest.load import load_manifest
    from caramba.preset_catalog import resolve_manifest_path

    target = load_manifest(resolve_manifest_path("preset:llama32_1b_dba")).targets[0]
    config = target.topology.layers[0].layers[0].layers[1]
    assert isinstance(config, AttentionLayerConfig) and config.mode == "dba"
    assert config.rope_scaling is not None
    assert config.rope_scaling.model_dump(exclude={"type"}) == LLAMA32_1B
    with torch.device("meta"):
        student = AttentionLayer(config)
    teacher_freqs = meta_llama3_inv_freq(64, THETA, **LLAMA32_1B)
    torch.testing.assert_close(student.rotary.inv_freq.double(), teacher_freqs[0:16:4],
                               rtol=1e-5, atol=0)

    arch = LlamaArchitecture(
        vocab_size=128256, d_model=2048, n_layers=16, n_heads=32, n_kv_heads=8, head_dim=64,
        d_ff=8192, rope_base=THETA, rms_norm_eps=1e-5, context_length=131072,
        tie_embeddings=True, rope_scaling=config.rope_scaling)
    teacher = model_definition(model_config(arch), "Llama-3.2-1B")
    with torch.device("meta"):
        layer = AttentionLayer(teacher.topology.layers[0].layers[0].layers[1])
    torch.testing.assert_close(layer.rotary.inv_freq.double(), teacher_freqs, rtol=2e-6, atol=0)
