"""Read the `process` targets of a manifest without importing caramba-core or torch."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml


@dataclass(frozen=True)
class ProcessTarget:
    name: str
    description: str
    team: dict[str, Any]
    process: dict[str, Any]

    @property
    def kind(self) -> str:
        return str(self.process.get("type", "unspecified"))


class ManifestReadError(Exception):
    """The file is missing or is not a manifest with a `targets` list."""


def read_process_targets(path: Path) -> list[ProcessTarget]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ManifestReadError(f"{path}: no such file") from None
    except yaml.YAMLError as exc:
        raise ManifestReadError(f"{path}: not valid YAML ({exc})") from None
    targets = data.get("targets") if isinstance(data, dict) else None
    if not isinstance(targets, list):
        raise ManifestReadError(f"{path}: expected a manifest with a `targets` list")
    return [
        ProcessTarget(str(t.get("name", "?")), str(t.get("description", "")),
                      dict(t.get("team") or {}), dict(t.get("process") or {}))
        for t in targets if isinstance(t, dict) and t.get("type") == "process"
    ]
