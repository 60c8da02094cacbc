"""Validate the parts of a manifest whose schema comes from the registries.

Model nodes dispatch on `type` to the registered layer/topology class and validate with its
`Config`; children under `layers` are validated first so errors point at the deepest node.
`data.config` validates with the registered dataset's `Config`.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ValidationError

from caramba.errors import RegistryError, did_you_mean
from caramba.layers.base import NodeConfig, TopologyConfig
from caramba.manifest.diagnostics import Diagnostic, Path
from caramba.manifest.pydantic_errors import diagnostics_from
from caramba.manifest.source import SourceMap
from caramba.registry import BENCHMARKS, DATASETS, EMBEDDERS, LAYERS, TOPOLOGIES, Registry

MAX_DEPTH = 64


class NodeValidator:
    """Collects diagnostics while validating a tree of nodes; remembers each node's path."""

    def __init__(self, smap: SourceMap) -> None:
        self.smap = smap
        self.errors: list[Diagnostic] = []
        self.paths: dict[int, Path] = {}  # id(config) -> manifest path, for shape errors

    def _fail(self, path: Path, message: str) -> None:
        self.errors.append(self.smap.diagnostic(path, message))

    def _lookup(self, type_name: Any, path: Path, registries: list[Registry]) -> Any:
        if not isinstance(type_name, str):
            self._fail(path + ("type",), f"expected a type name string, got {type_name!r}")
            return None
        for registry in registries:
            if type_name in registry:
                try:
                    return registry.get(type_name)
                except RegistryError as exc:
                    self._fail(path + ("type",), exc.message)
                    return None
        known = [n for r in registries for n in r.names()]
        hint = did_you_mean(type_name, known)
        kind = " or ".join(r.kind for r in registries)
        self._fail(path + ("type",), f"unknown {kind} {type_name!r}"
                   + (f" — did you mean {hint!r}?" if hint else "")
                   + f" Known: {', '.join(known)}.")
        return None

    def _validate(self, cls: Any, raw: dict[str, Any], path: Path) -> BaseModel | None:
        try:
            config = cls.Config.model_validate(raw)
        except ValidationError as exc:
            self.errors.extend(diagnostics_from(exc, cls.Config, raw, self.smap, path))
            return None
        self.paths[id(config)] = path
        return config

    def node(self, raw: Any, path: Path, depth: int = 0) -> NodeConfig | None:
        if not isinstance(raw, dict):
            self._fail(path, f"expected a mapping with a `type`, got {type(raw).__name__}")
            return None
        if "type" not in raw:
            self._fail(path, "missing `type` (a layer such as RMSNormLayer or a topology "
                       "such as StackedTopology)")
            return None
        if depth > MAX_DEPTH:
            self._fail(path, f"topologies nest deeper than {MAX_DEPTH} levels")
            return None
        cls = self._lookup(raw["type"], path, [LAYERS, TOPOLOGIES])
        if cls is None:
            return None
        fields = dict(raw)
        if issubclass(cls.Config, TopologyConfig):
            children = raw.get("layers", [])
            if not isinstance(children, list):
                self._fail(path + ("layers",), "expected a list of layers")
                return None
            built = [self.node(c, path + ("layers", i), depth + 1) for i, c in enumerate(children)]
            if any(b is None for b in built):
                return None
            fields["layers"] = tuple(built)
        elif "layers" in raw:
            self._fail(path + ("layers",), f"{raw['type']} is a layer, not a topology: it "
                       "has no `layers` (wrap it in a topology such as StackedTopology)")
            return None
        return self._validate(cls, fields, path)

    def embedder(self, raw: Any, path: Path) -> NodeConfig | None:
        if not isinstance(raw, dict) or "type" not in raw:
            self._fail(path, "expected a mapping with a `type` (for example `type: token`)")
            return None
        cls = self._lookup(raw["type"], path, [EMBEDDERS])
        return None if cls is None else self._validate(cls, raw, path)

    def dataset(self, ref: str, raw: Any, path: Path) -> BaseModel | None:
        cls = self._lookup(ref, path[:-1] + ("ref",), [DATASETS])
        if cls is None:
            return None
        if not isinstance(raw, dict):
            self._fail(path, "expected a mapping")
            return None
        return self._validate(cls, raw, path)

    def benchmark(self, raw: dict[str, Any], path: Path) -> BaseModel | None:
        """`benchmarks[i].config`, validated by the benchmark its `type` names."""
        if "type" not in raw:
            self._fail(path, f"missing `type` (one of: {', '.join(BENCHMARKS.names())})")
            return None
        cls = self._lookup(raw["type"], path, [BENCHMARKS])
        return None if cls is None else self._validate(cls, raw, path)
