"""A layer registered by another distribution's entry point works in a manifest unchanged."""

from __future__ import annotations

import importlib.metadata as metadata
from pathlib import Path

import torch

from caramba.compiler.lower import compile_manifest
from caramba.models.definition import ModelDefinition
from caramba.registry import LAYERS, SYSTEMS

MANIFEST = """
version: 2
name: plugin_test
targets:
  - type: experiment
    name: t
    data: {ref: dataset.tokens, config: {path: corpus:english}}
    system:
      ref: system.language_model
      config:
        model:
          embedder: {type: token, vocab_size: 300, d_model: 16}
          topology:
            type: StackedTopology
            layers:
              - {type: ScaledTanhLayer, scale: 0.5}
              - {type: LinearLayer, d_in: 16, d_out: 300}
    runs: [{id: r, steps: 1}]
"""


def test_plugin_layer_comes_from_its_own_distribution() -> None:
    layers = metadata.entry_points(group="caramba.layers")
    eps = [ep for ep in layers if ep.name == "ScaledTanhLayer"]
    assert eps and eps[0].dist is not None and eps[0].dist.name == "caramba-example-plugin"
    assert "ScaledTanhLayer" in LAYERS.names()


def test_manifest_uses_plugin_layer(tmp_path: Path) -> None:
    path = tmp_path / "m.yml"
    path.write_text(MANIFEST)
    _, plan = compile_manifest(str(path))
    target = plan.target("t")
    layer = target.topology.layers[0]
    assert layer.type == "ScaledTanhLayer" and layer.scale == 0.5
    model = SYSTEMS.get("system.language_model").build(
        ModelDefinition(target.embedder, target.topology))
    hidden = model.topology.layers[0](torch.full((1, 2, 16), 10.0))
    assert torch.allclose(hidden, torch.full((1, 2, 16), 0.5 * torch.tanh(torch.tensor(20.0))))


def test_plugin_layer_config_errors_are_located(tmp_path: Path) -> None:
    import pytest

    from caramba.manifest.diagnostics import ManifestError

    path = tmp_path / "m.yml"
    path.write_text(MANIFEST.replace("scale: 0.5", "scael: 0.5"))
    with pytest.raises(ManifestError, match="did you mean 'scale'"):
        compile_manifest(str(path))
