"""The manifest front end: file → validated, fully resolved manifest.

parse (YAML with positions) → overrides → interpolate `${…}` → merge defaults → validate
(pydantic schema, then registry-provided node and dataset schemas). Every problem becomes a
located Diagnostic; all are collected and raised together as one ManifestError.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path as FsPath
from typing import Any

from pydantic import BaseModel, ValidationError

from caramba.errors import InputError, did_you_mean
from caramba.layers.base import NodeConfig
from caramba.manifest.diagnostics import Diagnostic, ManifestError, Path
from caramba.manifest.interpolate import interpolate
from caramba.manifest.merge import merge_defaults
from caramba.manifest.nodes import NodeValidator
from caramba.manifest.overrides import apply_overrides
from caramba.manifest.pydantic_errors import diagnostics_from
from caramba.manifest.schema import ExperimentTarget, Manifest, ProcessTarget
from caramba.manifest.source import SourceMap, load_yaml_with_positions, read_manifest_text
from caramba.preset_catalog import resolve_manifest_path


@dataclass(frozen=True)
class ResolvedTarget:
    """A target plus its registry-validated parts (None for process targets)."""

    spec: ExperimentTarget | ProcessTarget
    path: Path
    embedder: NodeConfig | None = None
    topology: NodeConfig | None = None
    data_config: BaseModel | None = None


@dataclass(frozen=True)
class ResolvedManifest:
    file: FsPath
    manifest: Manifest
    targets: tuple[ResolvedTarget, ...]
    data: dict[str, Any]  # the resolved document (vars substituted, defaults merged)
    source: SourceMap = field(repr=False, compare=False)
    node_paths: dict[int, Path] = field(repr=False, compare=False, default_factory=dict)

    def target(self, name: str) -> ResolvedTarget:
        for t in self.targets:
            if t.spec.name == name:
                return t
        raise KeyError(name)

    def diagnostic(self, path: Path, message: str) -> Diagnostic:
        return self.source.diagnostic(path, message)


def load_manifest(
    ref: str | FsPath, overrides: list[str] | None = None, target: str | None = None
) -> ResolvedManifest:
    """Load, resolve and validate a manifest file or `preset:<name>`."""
    file = resolve_manifest_path(str(ref))
    text = read_manifest_text(file)
    raw, smap = load_yaml_with_positions(text, str(file))
    if not isinstance(raw, dict):
        raise ManifestError([smap.diagnostic((), "the manifest must be a mapping with keys "
                                             "version, name, targets, ...")])
    raw = copy.deepcopy(raw)
    if overrides:
        apply_overrides(raw, overrides, target)
    data = interpolate(raw, smap)
    merge_defaults(data, smap)
    try:
        manifest = Manifest.model_validate(data)
    except ValidationError as exc:
        raise ManifestError(diagnostics_from(exc, Manifest, data, smap)) from None
    except RecursionError:
        raise ManifestError([smap.diagnostic((), "the manifest nests too deeply")]) from None
    if target is not None and target not in {t.name for t in manifest.targets}:
        names = [t.name for t in manifest.targets]
        hint = did_you_mean(target, names)
        raise InputError(
            f"{file}: no target named {target!r}" + (f" — did you mean {hint!r}?" if hint else ""),
            hint=f"targets in this manifest: {', '.join(names)}.",
        )
    validator = NodeValidator(smap)
    targets = []
    for i, spec in enumerate(manifest.targets):
        tpath: Path = ("targets", i)
        if isinstance(spec, ProcessTarget):
            targets.append(ResolvedTarget(spec, tpath))
            continue
        mpath = tpath + ("system", "config", "model")
        model = spec.system.config.model
        embedder = validator.embedder(model.embedder, mpath + ("embedder",))
        topology = validator.node(model.topology, mpath + ("topology",))
        data_config = validator.dataset(spec.data.ref, spec.data.config, tpath + ("data", "config"))
        for bi, bench in enumerate(spec.benchmarks):
            validator.benchmark(bench.config, tpath + ("benchmarks", bi, "config"))
        targets.append(ResolvedTarget(spec, tpath, embedder, topology, data_config))
    if validator.errors:
        raise ManifestError(validator.errors)
    return ResolvedManifest(file, manifest, tuple(targets), data, smap, validator.paths)
