"""Named components discovered through entry points.

Core registers its own layers, topologies, trainers and datasets in its pyproject.toml, the
same way a third-party package would: `[project.entry-points."caramba.layers"]`. Entries load
lazily (the module is imported on first use), duplicates across distributions are an error
naming both, and tests or notebooks can `register()` an object directly.
"""

from __future__ import annotations

import importlib.metadata as metadata
from dataclasses import dataclass
from typing import Any

from caramba.errors import RegistryError, did_you_mean


@dataclass(frozen=True)
class _Entry:
    name: str
    source: str  # distribution name, or "<runtime>" for register()
    target: str  # "module:attr"
    loaded: Any = None


class Registry:
    """One entry-point group, e.g. `caramba.layers`, loaded on first lookup."""

    def __init__(self, group: str, kind: str) -> None:
        self.group = group
        self.kind = kind
        self._entries: dict[str, _Entry] | None = None
        self._runtime: dict[str, Any] = {}

    def _discover(self) -> dict[str, _Entry]:
        if self._entries is None:
            found: dict[str, _Entry] = {}
            for ep in metadata.entry_points(group=self.group):
                dist = ep.dist.name if ep.dist is not None else "<unknown>"
                previous = found.get(ep.name)
                if previous is not None and previous.target != ep.value:
                    raise RegistryError(
                        f"{self.kind} {ep.name!r} is registered twice in entry point group "
                        f"{self.group!r}: by {previous.source} ({previous.target}) and by "
                        f"{dist} ({ep.value}).",
                        hint="uninstall one of the two distributions or rename the entry.",
                    )
                found[ep.name] = _Entry(ep.name, dist, ep.value)
            self._entries = found
        return self._entries

    def names(self) -> list[str]:
        return sorted(set(self._discover()) | set(self._runtime))

    def source(self, name: str) -> str:
        """The distribution that registered `name` (`<runtime>` for register())."""
        if name in self._runtime:
            return "<runtime>"
        entry = self._discover().get(name)
        return entry.source if entry is not None else "<unknown>"

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and (name in self._runtime or name in self._discover())

    def register(self, name: str, obj: Any) -> None:
        """Add `obj` under `name` for this process (tests, notebooks)."""
        if name in self._discover():
            raise RegistryError(
                f"{self.kind} {name!r} is already registered by {self._discover()[name].source}."
            )
        self._runtime[name] = obj

    def unregister(self, name: str) -> None:
        self._runtime.pop(name, None)

    def get(self, name: str) -> Any:
        if name in self._runtime:
            return self._runtime[name]
        entries = self._discover()
        entry = entries.get(name)
        if entry is None:
            suggestion = did_you_mean(name, self.names())
            known = ", ".join(self.names()) or "none"
            raise RegistryError(
                f"unknown {self.kind} {name!r}"
                + (f" — did you mean {suggestion!r}?" if suggestion else "")
                + f" Known: {known}."
            )
        if entry.loaded is None:
            module_name, _, attr = entry.target.partition(":")
            try:
                module = __import__(module_name, fromlist=[attr or "_"])
                obj = getattr(module, attr) if attr else module
            except (ImportError, AttributeError) as exc:
                raise RegistryError(
                    f"{self.kind} {name!r} from {entry.source} points to {entry.target}, "
                    f"which cannot be loaded: {exc}"
                ) from exc
            entry = _Entry(entry.name, entry.source, entry.target, obj)
            entries[name] = entry
        return entry.loaded


LAYERS = Registry("caramba.layers", "layer type")
EMBEDDERS = Registry("caramba.embedders", "embedder type")
TOPOLOGIES = Registry("caramba.topologies", "topology type")
SYSTEMS = Registry("caramba.systems", "system")
OBJECTIVES = Registry("caramba.objectives", "objective")
TRAINERS = Registry("caramba.trainers", "trainer")
DATASETS = Registry("caramba.datasets", "dataset")
BENCHMARKS = Registry("caramba.benchmarks", "benchmark")
KERNELS = Registry("caramba.kernels", "kernel backend")
