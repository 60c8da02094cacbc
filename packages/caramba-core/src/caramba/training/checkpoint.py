"""Checkpoints that resume a run exactly, stored without pickle.

Layout, one directory per saved step, written atomically (see `caramba.atomic`):

    checkpoints/<run_id>/
        latest.json                 {"step": N, "dir": "step_0000000N"}; updated last
        step_0000000N/
            model.safetensors       the model's state dict, each shared tensor stored once
            optimizer.safetensors   per-parameter optimizer state, keyed "<param name>/<key>"
            state.json              step, tokens, time, RNG, param-group scalars, file hashes

Optimizer state is keyed by parameter name rather than torch's positional index, so a
checkpoint fails loudly (instead of silently mis-assigning moments) if the model changed.
Loading reads only safetensors and JSON: a checkpoint from elsewhere cannot run code.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from caramba.atomic import atomic_directory, atomic_write_json, remove_stale_temporaries
from caramba.errors import CheckpointError

FORMAT = "caramba.checkpoint"
FORMAT_VERSION = 1
MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
STATE_FILE = "state.json"
LATEST_FILE = "latest.json"
RESET_HINT = "delete the directory or run without --resume"

_STEP_DIR = re.compile(r"^step_(\d{8,})$")
# Choices of optimizer implementation, not of the optimization: keep the live optimizer's.
_IMPLEMENTATION_KEYS = {"foreach", "fused", "capturable", "differentiable"}


@dataclass
class TrainingState:
    """Everything besides tensors that a resumed run needs. `extra` belongs to the trainer."""

    step: int
    tokens_seen: int
    elapsed_s: float
    run_id: str
    plan_hash: str
    rng: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------- saving


def save_checkpoint(
    directory: str | Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None,
    state: TrainingState,
) -> Path:
    """Write one checkpoint directory atomically and return its path."""
    directory = Path(directory)
    tensors, aliases = _model_tensors(model)
    with atomic_directory(directory) as scratch:
        save_file(tensors, scratch / MODEL_FILE, metadata=_model_metadata(aliases))
        files = {MODEL_FILE: _file_digest(scratch / MODEL_FILE)}
        optimizer_json = None
        if optimizer is not None:
            opt_tensors, optimizer_json = _optimizer_payload(model, optimizer)
            save_file(opt_tensors, scratch / OPTIMIZER_FILE, metadata={"format": "pt"})
            files[OPTIMIZER_FILE] = _file_digest(scratch / OPTIMIZER_FILE)
        document = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "run_id": state.run_id,
            "plan_hash": state.plan_hash,
            "step": state.step,
            "tokens_seen": state.tokens_seen,
            "elapsed_s": state.elapsed_s,
            "rng": state.rng,
            "optimizer": optimizer_json,
            "files": files,
            "torch_version": torch.__version__,
            "extra": state.extra,
        }
        # Written with a plain open: the whole directory becomes visible atomically.
        (scratch / STATE_FILE).write_text(json.dumps(document, indent=2) + "\n")
    return directory


def _model_tensors(model: torch.nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The state dict with each shared tensor once, plus {alias name: stored name}.

    safetensors refuses tensors that share storage (tied embeddings do). A tensor that is the
    very same view as one already kept becomes an alias; a partial overlap is stored as its
    own copy (load_state_dict writes the same values back through either view).
    """
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple[int, int, tuple[int, ...], tuple[int, ...], torch.dtype], str] = {}
    storages: set[int] = set()
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach()
        if tensor.numel() == 0:
            tensors[name] = tensor.cpu().contiguous()
            continue
        ptr = tensor.untyped_storage().data_ptr()
        view = (ptr, tensor.storage_offset(), tuple(tensor.shape), tensor.stride(), tensor.dtype)
        if view in seen:
            aliases[name] = seen[view]
            continue
        seen[view] = name
        shared = ptr in storages
        storages.add(ptr)
        tensor = tensor.cpu()
        tensors[name] = tensor.clone() if shared else tensor.contiguous()
    return tensors, aliases


def _model_metadata(aliases: dict[str, str]) -> dict[str, str]:
    return {"format": "pt", "caramba_format_version": str(FORMAT_VERSION),
            "caramba_aliases": json.dumps(aliases, sort_keys=True)}


def _optimizer_payload(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    names = _parameter_names(model)
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    groups = []
    for index, group in enumerate(optimizer.param_groups):
        group_names = []
        for param in group["params"]:
            name = names.get(id(param))
            if name is None:
                raise ValueError(f"optimizer param group {index} holds a tensor that is not a "
                                 "parameter of the model being checkpointed")
            group_names.append(name)
            for key, value in optimizer.state.get(param, {}).items():
                if torch.is_tensor(value):
                    tensors[f"{name}/{key}"] = value.detach().cpu().contiguous()
                else:
                    scalars.setdefault(name, {})[key] = value
        settings = {k: _jsonable(v) for k, v in group.items() if k != "params"}
        groups.append({"params": group_names, **settings})
    return tensors, {"param_groups": groups, "state_scalars": scalars}


def _jsonable(value: Any) -> Any:
    if torch.is_tensor(value):
        return value.item()
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    return value


def _parameter_names(model: torch.nn.Module) -> dict[int, str]:
    # named_parameters() lists a tied parameter once, under its first name.
    return {id(p): name for name, p in model.named_parameters()}


def _file_digest(path: Path) -> dict[str, Any]:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return {"bytes": path.stat().st_size, "sha256": digest.hexdigest()}


# ----------------------------------------------------------------------------- loading


def read_state(directory: str | Path) -> dict[str, Any]:
    """Parse and check a checkpoint's state.json (no tensors are read)."""
    path = Path(directory) / STATE_FILE
    if not path.is_file():
        raise CheckpointError(f"checkpoint file {path} is missing.", hint=RESET_HINT)
    try:
        document = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"checkpoint file {path} is truncated or corrupt: {exc}.",
                              hint=RESET_HINT) from exc
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a caramba checkpoint state file.", hint=RESET_HINT)
    if document.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format version {document.get('format_version')!r}; this "
            f"caramba reads version {FORMAT_VERSION}.", hint=RESET_HINT)
    for key, kind in (("run_id", str), ("plan_hash", str), ("step", int), ("tokens_seen", int),
                      ("elapsed_s", (int, float)), ("rng", dict), ("files", dict)):
        if not isinstance(document.get(key), kind):
            raise CheckpointError(f"{path} lacks a valid {key!r} entry.", hint=RESET_HINT)
    return document


def load_checkpoint(
    directory: str | Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    *,
    plan_hash: str | None = None,
) -> TrainingState:
    """Load weights (and optimizer state) into the given objects; return the training state.

    Every file is checked against the sizes and SHA-256 digests recorded at save time, and
    every tensor name and shape against the model, before anything is copied. With
    `plan_hash`, a checkpoint written by a different plan is refused.
    """
    directory = Path(directory)
    document = read_state(directory)
    if plan_hash is not None and document["plan_hash"] != plan_hash:
        raise CheckpointError(
            f"checkpoint {directory} was written by a different plan (plan hash "
            f"{document['plan_hash']!r}, this run's is {plan_hash!r}): the manifest changed "
            "since it was saved.", hint=f"restore the manifest, or {RESET_HINT}")
    _verify_files(directory, document)
    load_model_file(model, directory / MODEL_FILE)
    if optimizer is not None:
        if document.get("optimizer") is None:
            raise CheckpointError(f"checkpoint {directory} holds no optimizer state.",
                                  hint=RESET_HINT)
        _load_optimizer(directory / OPTIMIZER_FILE, document["optimizer"], model, optimizer)
    return TrainingState(
        step=document["step"],
        tokens_seen=document["tokens_seen"],
        elapsed_s=float(document["elapsed_s"]),
        run_id=document["run_id"],
        plan_hash=document["plan_hash"],
        rng=document["rng"],
        extra=document.get("extra") or {},
    )


def load_model_weights(model: torch.nn.Module, path: str | Path) -> Path:
    """Load a checkpoint's weights into `model` (for sampling, benchmarks, ...).

    `path` may be a step directory, its model.safetensors, or a run's checkpoint directory
    (then latest.json picks the step). Returns the model file that was loaded.
    """
    path = Path(path)
    if path.is_dir() and (path / LATEST_FILE).is_file():
        latest = CheckpointManager(path).latest()
        assert latest is not None
        path = latest
    if path.is_dir():
        if (path / STATE_FILE).is_file():
            document = read_state(path)
            _verify_files(path, document, only=(MODEL_FILE,))
        path = path / MODEL_FILE
    load_model_file(model, path)
    return path


def load_model_file(model: torch.nn.Module, path: Path) -> None:
    """Load a model.safetensors into `model`, restoring aliased (tied) tensors."""
    tensors, metadata = _read_safetensors(path)
    try:
        aliases = json.loads(metadata.get("caramba_aliases", "{}"))
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path} has corrupt alias metadata: {exc}.",
                              hint=RESET_HINT) from exc
    for alias, stored in aliases.items():
        if stored not in tensors:
            raise CheckpointError(f"{path}: tensor {alias!r} is stored as {stored!r}, which "
                                  "the file does not contain.", hint=RESET_HINT)
        tensors[alias] = tensors[stored]
    expected = model.state_dict()
    missing = [k for k in expected if k not in tensors]
    unexpected = [k for k in tensors if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing tensor(s) {_names(missing)}")
        if unexpected:
            parts.append(f"unexpected tensor(s) {_names(unexpected)}")
        raise CheckpointError(
            f"{path} does not match the model: {'; '.join(parts)}. The checkpoint was "
            "written for a different architecture.", hint=RESET_HINT)
    for name, wanted in expected.items():
        tensor = tensors[name]
        if tuple(tensor.shape) != tuple(wanted.shape):
            raise CheckpointError(
                f"{path}: tensor {name!r} has shape {tuple(tensor.shape)} but the model "
                f"expects {tuple(wanted.shape)}.", hint=RESET_HINT)
    model.load_state_dict(tensors, strict=True)


def _load_optimizer(
    path: Path, saved: dict[str, Any], model: torch.nn.Module, optimizer: torch.optim.Optimizer
) -> None:
    tensors, _ = _read_safetensors(path)
    params = dict(model.named_parameters())
    names = _parameter_names(model)
    saved_groups = saved.get("param_groups")
    if not isinstance(saved_groups, list) or len(saved_groups) != len(optimizer.param_groups):
        raise CheckpointError(
            f"{path.parent / STATE_FILE}: optimizer has {len(optimizer.param_groups)} param "
            f"group(s) but the checkpoint records "
            f"{len(saved_groups) if isinstance(saved_groups, list) else 'none'}.",
            hint=RESET_HINT)
    index_of: dict[str, int] = {}
    groups = []
    pairs = zip(saved_groups, optimizer.param_groups, strict=True)  # lengths checked above
    for number, (old, live) in enumerate(pairs):
        live_names = [names[id(p)] for p in live["params"]]
        if old.get("params") != live_names:
            raise CheckpointError(
                f"{path.parent / STATE_FILE}: optimizer param group {number} holds "
                f"{_names(old.get('params') or [])} but the model's group holds "
                f"{_names(live_names)}.", hint=RESET_HINT)
        group = {k: v for k, v in live.items() if k != "params"}
        for key, value in old.items():
            if key not in ("params", *_IMPLEMENTATION_KEYS):
                group[key] = tuple(value) if isinstance(value, list) else value
        group["params"] = list(range(len(index_of), len(index_of) + len(live_names)))
        index_of.update({n: i for n, i in zip(live_names, group["params"], strict=True)})
        groups.append(group)
    state: dict[int, dict[str, Any]] = {}
    for key, tensor in tensors.items():
        name, _, slot = key.rpartition("/")
        if name not in index_of:
            raise CheckpointError(
                f"{path}: tensor {key!r} is state of parameter {name!r}, which the model's "
                "optimizer does not hold.", hint=RESET_HINT)
        if tensor.dim() > 0 and tuple(tensor.shape) != tuple(params[name].shape):
            raise CheckpointError(
                f"{path}: tensor {key!r} has shape {tuple(tensor.shape)} but parameter "
                f"{name!r} has shape {tuple(params[name].shape)}.", hint=RESET_HINT)
        state.setdefault(index_of[name], {})[slot] = tensor
    for name, values in (saved.get("state_scalars") or {}).items():
        if name in index_of:
            state.setdefault(index_of[name], {}).update(values)
    try:
        optimizer.load_state_dict({"state": state, "param_groups": groups})
    except (ValueError, KeyError, RuntimeError) as exc:
        raise CheckpointError(f"{path} cannot be loaded into the optimizer: {exc}.",
                              hint=RESET_HINT) from exc


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    if not path.is_file():
        raise CheckpointError(f"checkpoint file {path} is missing.", hint=RESET_HINT)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except Exception as exc:  # safetensors raises its own error types, and OSError
        raise CheckpointError(f"checkpoint file {path} is truncated or corrupt: {exc}.",
                              hint=RESET_HINT) from exc
    return tensors, metadata


def _verify_files(directory: Path, document: dict[str, Any],
                  only: tuple[str, ...] | None = None) -> None:
    for name, recorded in document["files"].items():
        if only is not None and name not in only:
            continue
        path = directory / name
        if not isinstance(recorded, dict):
            raise CheckpointError(f"{directory / STATE_FILE}: entry for {name!r} in 'files' is "
                                  "malformed.", hint=RESET_HINT)
        if not path.is_file():
            raise CheckpointError(f"checkpoint file {path} is missing.", hint=RESET_HINT)
        actual = _file_digest(path)
        if actual["bytes"] != recorded.get("bytes"):
            raise CheckpointError(
                f"checkpoint file {path} is truncated or corrupt: {actual['bytes']} bytes, "
                f"{recorded.get('bytes')} were written.", hint=RESET_HINT)
        if actual["sha256"] != recorded.get("sha256"):
            raise CheckpointError(
                f"checkpoint file {path} is corrupt: its SHA-256 differs from the one "
                "recorded when it was written.", hint=RESET_HINT)


def _names(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


# ----------------------------------------------------------------------------- a run's set


class CheckpointManager:
    """The checkpoints of one run: save, find the latest, keep only the newest `keep`."""

    def __init__(self, root: str | Path, keep: int = 2) -> None:
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self.root = Path(root)
        self.keep = keep

    def step_dir(self, step: int) -> Path:
        return self.root / f"step_{step:08d}"

    def latest(self) -> Path | None:
        """The newest complete checkpoint, or None if this run has none."""
        pointer = self.root / LATEST_FILE
        if not pointer.exists():
            return None
        try:
            document = json.loads(pointer.read_text())
            name = document["dir"]
            if not isinstance(name, str) or not _STEP_DIR.match(name):
                raise ValueError(f"bad directory name {name!r}")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(f"{pointer} is truncated or corrupt: {exc}.",
                                  hint=RESET_HINT) from exc
        path = self.root / name
        if not path.is_dir():
            raise CheckpointError(f"{pointer} points at {path}, which does not exist.",
                                  hint=RESET_HINT)
        return path

    def save(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None,
             state: TrainingState) -> Path:
        """Write step `state.step`, then point latest.json at it, then prune old ones."""
        remove_stale_temporaries(self.root)
        path = save_checkpoint(self.step_dir(state.step), model, optimizer, state)
        atomic_write_json(self.root / LATEST_FILE,
                          {"step": state.step, "dir": path.name, "format_version": FORMAT_VERSION})
        self._prune(state.step)
        return path

    def steps(self) -> list[int]:
        if not self.root.is_dir():
            return []
        found = (_STEP_DIR.match(p.name) for p in self.root.iterdir() if p.is_dir())
        return sorted(int(m.group(1)) for m in found if m)

    def clear(self) -> None:
        """Delete every checkpoint of this run (a fresh, non-resumed start)."""
        shutil.rmtree(self.root, ignore_errors=True)

    def _prune(self, current: int) -> None:
        # Steps after `current` belong to an abandoned timeline (saved, then the run was
        # resumed from an earlier checkpoint); they would otherwise outrank the new ones.
        steps = self.steps()
        stale = [s for s in steps if s > current]
        kept = [s for s in steps if s <= current]
        stale += kept[: max(0, len(kept) - self.keep)]
        for step in stale:
            shutil.rmtree(self.step_dir(step), ignore_errors=True)
