"""Vars, defaults and command-line overrides resolve the way the manifest docs say."""

from __future__ import annotations

from pathlib import Path

import pytest

from caramba.compiler.lower import compile_manifest
from caramba.errors import InputError
from caramba.manifest.diagnostics import ManifestError
from caramba.manifest.load import load_manifest

BASE = """
version: 2
name: resolve_test
vars:
  width: 64
  model: {heads: 4, width: "${width}"}
  label: "w${width}-h${model.heads}"
  literal: "$${not_a_var}"
defaults:
  train: {lr: 0.01, batch_size: 2}
  runtime: {eval_batches: 3}
  data: {val_frac: 0.1}
targets:
  - type: experiment
    name: t
    data: {ref: dataset.tokens, config: {path: corpus:english}}
    system:
      ref: system.language_model
      config:
        model:
          embedder: {type: token, vocab_size: 256, d_model: "${model.width}"}
          topology:
            type: StackedTopology
            layers:
              - {type: AttentionLayer, d_model: "${width}", n_heads: "${model.heads}"}
              - {type: LinearLayer, d_in: "${width}", d_out: 256}
    runs:
      - {id: a, steps: 5, train: {lr: 0.5}}
      - {id: b, steps: 7}
  - type: process
    name: review
    process: {type: paper_review}
"""


@pytest.fixture
def manifest(tmp_path: Path) -> Path:
    path = tmp_path / "m.yml"
    path.write_text(BASE)
    return path


def test_vars_keep_types_nest_and_format(manifest: Path) -> None:
    resolved = load_manifest(manifest)
    assert resolved.data["vars"]["model"]["width"] == 64  # nested var reference, still an int
    assert resolved.data["vars"]["label"] == "w64-h4"
    assert resolved.data["vars"]["literal"] == "${not_a_var}"
    assert resolved.targets[0].embedder.d_model == 64


def test_defaults_merge_and_targets_win(manifest: Path) -> None:
    target = load_manifest(manifest).manifest.targets[0]
    assert target.runs[0].train.lr == 0.5 and target.runs[0].train.batch_size == 2
    assert target.runs[1].train.lr == 0.01
    assert target.runtime.eval_batches == 3
    assert target.data.config["val_frac"] == 0.1


def test_overrides_apply_to_vars_runs_and_trainer_shortcut(manifest: Path) -> None:
    resolved = load_manifest(manifest, ["vars.width=32", "runs.1.steps=50", "trainer.lr=3e-4"])
    target = resolved.manifest.targets[0]
    assert resolved.targets[0].embedder.d_model == 32
    assert target.runs[1].steps == 50
    assert [r.train.lr for r in target.runs] == [3e-4, 3e-4]


def test_bad_override_paths_are_clear(manifest: Path) -> None:
    with pytest.raises(InputError, match="did you mean 'runs'"):
        load_manifest(manifest, ["rusn.0.steps=5"])
    with pytest.raises(InputError, match="not a valid index"):
        load_manifest(manifest, ["runs.9.steps=5"])
    with pytest.raises(InputError, match="key.path=value"):
        load_manifest(manifest, ["steps"])
    with pytest.raises(ManifestError, match="steps"):
        load_manifest(manifest, ["runs.0.steps=-1"])


def test_variable_cycles_are_located(tmp_path: Path) -> None:
    path = tmp_path / "m.yml"
    path.write_text(BASE.replace("width: 64", 'width: "${label}"'))
    with pytest.raises(ManifestError, match="cycle"):
        load_manifest(path)


def test_process_targets_validate_without_a_model(manifest: Path) -> None:
    resolved = load_manifest(manifest, target="review")
    assert resolved.target("review").spec.process == {"type": "paper_review"}


def test_unknown_target_is_suggested(manifest: Path) -> None:
    with pytest.raises(InputError, match="did you mean 't'"):
        load_manifest(manifest, target="tt")


def test_plan_hash_is_stable_and_tracks_changes(manifest: Path, tmp_path: Path) -> None:
    _, first = compile_manifest(str(manifest))
    _, again = compile_manifest(str(manifest))
    copy = tmp_path / "elsewhere.yml"
    copy.write_text(manifest.read_text())
    _, moved = compile_manifest(str(copy))
    _, changed = compile_manifest(str(manifest), ["runs.0.steps=6"])
    assert first.hash == again.hash == moved.hash
    assert changed.hash != first.hash


def test_plan_is_immutable_and_counts_parameters(manifest: Path) -> None:
    _, plan = compile_manifest(str(manifest), target="t")
    target = plan.target("t")
    # embedder 256*64 + attention 4*64*64 + head 64*256 + 256? (LinearLayer has no bias)
    assert target.param_count == 256 * 64 + 4 * 64 * 64 + 64 * 256
    with pytest.raises(AttributeError):
        target.spec = None  # type: ignore[misc]
    assert target.runs[0].memory is not None and target.runs[0].memory.total > 0
