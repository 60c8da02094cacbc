"""The Plan: what will run, frozen, printable and hashed.

Artifacts and caches key on `Plan.hash`, a SHA-256 of the plan's canonical JSON, so the same
manifest (after vars, defaults and overrides) always gives the same hash, and any change
that alters what runs changes it. The source file path is not part of the hash.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from pydantic import BaseModel

from caramba.layers.base import NodeConfig
from caramba.manifest.schema import ExperimentTarget, ProcessTarget, RunSpec


@dataclass(frozen=True)
class ModuleSummary:
    """One node of the built model: its type, manifest path and parameter count."""

    name: str
    type: str
    params: int
    path: str = ""
    children: tuple[ModuleSummary, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "type": self.type, "params": self.params}
        if self.children:
            out["children"] = [c.to_dict() for c in self.children]
        return out


@dataclass(frozen=True)
class MemoryEstimate:
    """Training memory for one run, in bytes. Activations are an estimate from a shape pass."""

    weights: int
    gradients: int
    optimizer: int
    activations: int

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer + self.activations

    def to_dict(self) -> dict[str, int]:
        return {"weights": self.weights, "gradients": self.gradients,
                "optimizer": self.optimizer, "activations": self.activations, "total": self.total}


@dataclass(frozen=True)
class RunPlan:
    spec: RunSpec
    memory: MemoryEstimate | None = None

    def to_dict(self) -> dict[str, Any]:
        out = self.spec.model_dump(mode="json")
        if self.memory is not None:
            out["memory_estimate"] = self.memory.to_dict()
        return out


@dataclass(frozen=True)
class TargetPlan:
    spec: ExperimentTarget | ProcessTarget
    embedder: NodeConfig | None = None
    topology: NodeConfig | None = None
    data_config: BaseModel | None = None
    model: ModuleSummary | None = None
    runs: tuple[RunPlan, ...] = ()

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def kind(self) -> str:
        return self.spec.type

    @property
    def param_count(self) -> int:
        return self.model.params if self.model else 0

    def to_dict(self) -> dict[str, Any]:
        out = self.spec.model_dump(mode="json", exclude={"runs"})
        if isinstance(self.spec, ExperimentTarget):
            model = out["system"]["config"]["model"]
            model["embedder"] = _dump(self.embedder)
            model["topology"] = _dump(self.topology)
            out["data"]["config"] = _dump(self.data_config)
            out["runs"] = [r.to_dict() for r in self.runs]
            out["param_count"] = self.param_count
            if self.model is not None:
                out["model_tree"] = self.model.to_dict()
        return out


@dataclass(frozen=True)
class Plan:
    manifest_name: str
    source: str
    targets: tuple[TargetPlan, ...]
    notes: str = ""

    def target(self, name: str) -> TargetPlan:
        return next(t for t in self.targets if t.name == name)

    def to_dict(self) -> dict[str, Any]:
        return {"manifest": self.manifest_name, "notes": self.notes,
                "targets": [t.to_dict() for t in self.targets]}

    @cached_property
    def hash(self) -> str:
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    def to_json(self) -> str:
        return json.dumps({"hash": self.hash, "source": self.source, **self.to_dict()}, indent=2)


def _dump(config: BaseModel | None) -> Any:
    return None if config is None else config.model_dump(mode="json")
