"""Every kind of malformed manifest gives a located, actionable ManifestError."""

from __future__ import annotations

from pathlib import Path

import pytest

from caramba.compiler.lower import compile_manifest
from caramba.manifest.diagnostics import ManifestError
from caramba.preset_catalog import resolve_manifest_path

PRESET = resolve_manifest_path("preset:standard_transformer").read_text()


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "m.yml"
    path.write_text(text)
    return path


def _error(path: Path, *overrides: str) -> str:
    with pytest.raises(ManifestError) as info:
        compile_manifest(str(path), list(overrides))
    return str(info.value)


def _line_of(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


def test_bad_yaml_points_at_line_and_column(tmp_path: Path) -> None:
    text = "version: 2\nname: x\ntargets:\n  - type: experiment\n    name: [oops\n"
    path = _write(tmp_path, text)
    message = _error(path)
    assert f"{path}:6:1" in message or f"{path}:5:" in message
    assert "YAML syntax error" in message


def test_unknown_key_suggests_the_closest_one(tmp_path: Path) -> None:
    text = PRESET.replace("        steps: 600\n", "        stepz: 600\n")
    path = _write(tmp_path, text)
    message = _error(path)
    line = _line_of(text, "stepz:")
    assert f"m.yml:{line}:9: targets[0].runs[0].stepz: unknown key 'stepz'" in message
    assert "did you mean 'steps'?" in message


def test_wrong_type_names_the_key_and_the_value(tmp_path: Path) -> None:
    text = PRESET.replace("lr: 0.002", "lr: fast")
    message = _error(_write(tmp_path, text))
    assert f"m.yml:{_line_of(text, 'lr: fast')}:11: targets[0].runs[0].train.lr" in message
    assert "'fast'" in message


def test_unknown_layer_type_suggests_a_registered_one(tmp_path: Path) -> None:
    text = PRESET.replace("type: SwiGLULayer", "type: SwiGluLayer")
    message = _error(_write(tmp_path, text))
    assert "unknown layer type or topology type 'SwiGluLayer'" in message
    assert "did you mean 'SwiGLULayer'?" in message
    assert f"m.yml:{_line_of(text, 'SwiGluLayer')}:" in message


def test_undefined_variable_suggests_a_defined_one(tmp_path: Path) -> None:
    text = PRESET.replace("d_ff: ${d_ff}", "d_ff: ${dff}")
    message = _error(_write(tmp_path, text))
    assert "undefined variable ${dff}" in message and "did you mean ${d_ff}?" in message
    assert f"m.yml:{_line_of(text, '${dff}')}:" in message


def test_heads_not_dividing_width_is_reported_with_numbers(tmp_path: Path) -> None:
    message = _error(_write(tmp_path, PRESET), "vars.n_heads=5", "vars.n_kv_heads=5")
    assert "d_model (256) must be divisible by n_heads (5)" in message
    assert "topology.layers[0].layers[0].layers[1]" in message


def test_width_mismatch_between_layers_points_at_the_failing_node(tmp_path: Path) -> None:
    text = PRESET.replace("""                      - type: SwiGLULayer
                        d_model: ${d_model}""", """                      - type: SwiGLULayer
                        d_model: 128""")
    message = _error(_write(tmp_path, text))
    assert "shape mismatch" in message
    assert "topology.layers[0].layers[1].layers[1]" in message


def test_vocabulary_head_must_match_embedder(tmp_path: Path) -> None:
    text = PRESET.replace("d_out: ${vocab_size}", "d_out: 1000")
    message = _error(_write(tmp_path, text))
    assert "LinearLayer of d_out 8192" in message


def test_duplicate_keys_are_rejected(tmp_path: Path) -> None:
    text = PRESET.replace("        seed: 42\n", "        seed: 42\n        seed: 43\n")
    message = _error(_write(tmp_path, text))
    assert "duplicate key 'seed'" in message


def test_missing_required_key(tmp_path: Path) -> None:
    text = PRESET.replace("        steps: 600\n", "")
    message = _error(_write(tmp_path, text))
    assert "targets[0].runs[0].steps: required key 'steps' is missing" in message


def test_several_problems_are_reported_together(tmp_path: Path) -> None:
    norm = "type: RMSNormLayer\n{0}d_{1}: ${{d_model}}\n{2}- type: AttentionLayer"
    indent, dash = " " * 24, " " * 22
    text = PRESET.replace("type: SwiGLULayer", "type: SwiGluLayer").replace(
        norm.format(indent, "model", dash), norm.format(indent, "modl", dash))
    message = _error(_write(tmp_path, text))
    assert "3 problems" in message and "'d_modl'" in message and "'SwiGluLayer'" in message


def test_unknown_target_type_is_suggested(tmp_path: Path) -> None:
    text = PRESET.replace("type: experiment", "type: experimnt")
    message = _error(_write(tmp_path, text))
    assert "did you mean 'experiment'?" in message
