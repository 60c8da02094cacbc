"""Find a trained model for inference from a manifest or a checkpoint path.

    MANIFEST (file or preset:NAME)  ->  runs/<name>/<target>/, its latest checkpoint
    a checkpoint directory / file    ->  the run folder among its ancestors

Either way the model is rebuilt from the run folder's `manifest.resolved.yml` (what the
checkpoint was trained with), or from the given manifest when the folder lacks one. The
target's dataset supplies the tokenizer and held-out text for cache probes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from caramba.errors import CheckpointError, InputError
from caramba.manifest.load import ResolvedManifest, ResolvedTarget, load_manifest
from caramba.manifest.schema import ExperimentTarget

log = logging.getLogger("caramba.infer")

RESOLVED = "manifest.resolved.yml"
PROBE_TOKENS = 50_000


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: Any  # caramba.data.tokenizer.Tokenizer, or None when the data has none
    probe: torch.Tensor | None  # held-out tokens for cache_kind auto
    checkpoint: Path  # the model file that was loaded
    run_dir: Path  # runs/<name>/<target>/
    max_seq_len: int  # the longest training block of the target
    description: str


def _is_manifest(ref: str) -> bool:
    return ref.startswith("preset:") or (ref.endswith((".yml", ".yaml")) and Path(ref).is_file())


def _run_folder(path: Path) -> Path | None:
    for folder in (path, *path.parents):
        if (folder / RESOLVED).is_file():
            return folder
    return None


def _experiment(resolved: ResolvedManifest, name: str | None, origin: str) -> ResolvedTarget:
    targets = [t for t in resolved.targets if isinstance(t.spec, ExperimentTarget)]
    if name is not None:
        matches = [t for t in targets if t.spec.name == name]
        if not matches:
            known = ", ".join(t.spec.name for t in targets) or "none"
            raise InputError(f"{origin}: no experiment target named {name!r} (experiment "
                             f"targets: {known}).")
        return matches[0]
    if not targets:
        raise InputError(f"{origin} has no experiment target, so there is no model to load.")
    return targets[0]


def _latest_checkpoint(run_dir: Path, target: ResolvedTarget) -> Path:
    spec = target.spec
    assert isinstance(spec, ExperimentTarget)
    root = run_dir / "checkpoints"
    for run in reversed(spec.runs):  # the last run's weights are the trained model
        if (root / run.id / "latest.json").is_file():
            return root / run.id
    found = sorted(root.glob("*/latest.json"), key=lambda p: p.stat().st_mtime)
    if found:
        return found[-1].parent
    raise CheckpointError(
        f"no checkpoint in {run_dir} (looked for checkpoints/<run id>/latest.json).",
        hint="train the model first with `caramba run MANIFEST` (same --runs-dir).")


def load_for_inference(ref: str, *, target: str | None = None, runs_dir: Path = Path("runs"),
                       device: torch.device | str = "cpu") -> LoadedModel:
    """The model (weights loaded, eval mode, on `device`), tokenizer and probe text."""
    from caramba.models.definition import ModelDefinition
    from caramba.registry import DATASETS, SYSTEMS
    from caramba.training.checkpoint import load_model_weights

    path = Path(ref).expanduser()
    if _is_manifest(ref):
        given = load_manifest(ref, target=target)
        chosen = _experiment(given, target, ref)
        run_dir = Path(runs_dir) / given.manifest.name / chosen.spec.name
        checkpoint = _latest_checkpoint(run_dir, chosen)
        resolved = load_manifest(run_dir / RESOLVED) if (run_dir / RESOLVED).is_file() else given
        chosen = _experiment(resolved, chosen.spec.name, str(resolved.file))
    elif path.exists():
        run_dir = _run_folder(path.resolve())
        if run_dir is None:
            raise InputError(
                f"{path}: found no {RESOLVED} in it or its parent folders, so the model's "
                "architecture is unknown.",
                hint="pass the manifest instead (caramba generate MANIFEST), or a checkpoint "
                "inside a runs/<name>/<target>/ folder.")
        resolved = load_manifest(run_dir / RESOLVED)
        chosen = _experiment(resolved, target or run_dir.name, str(run_dir / RESOLVED))
        checkpoint = _latest_checkpoint(run_dir, chosen) if path.resolve() == run_dir else path
    else:
        raise InputError(f"{ref}: no such manifest, preset or checkpoint.",
                         hint="pass a manifest file, preset:<name>, or a checkpoint directory.")
    spec = chosen.spec
    assert isinstance(spec, ExperimentTarget)
    definition = ModelDefinition(chosen.embedder, chosen.topology,
                                 spec.system.config.model.tie_embeddings)
    model = SYSTEMS.get(spec.system.ref).build(definition)
    loaded = load_model_weights(model, checkpoint)
    model = model.to(device).eval()
    data = DATASETS.get(spec.data.ref).open(chosen.data_config, resolved.file.parent)
    probe = None
    if getattr(data, "val", None) is not None and len(data.val):
        probe = torch.as_tensor(data.val.data[:PROBE_TOKENS].astype("int64"))
    context = max(r.train.block_size for r in spec.runs)
    log.info("loaded %s (%s / %s) from %s", loaded, resolved.manifest.name, spec.name, run_dir)
    return LoadedModel(model, data.tokenizer, probe, loaded, run_dir, context,
                       f"{resolved.manifest.name}/{spec.name} from {loaded}")
