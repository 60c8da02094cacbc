"""The manifests shipped inside caramba-core, addressable as `preset:<name>`."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import yaml

from caramba.errors import InputError, did_you_mean

PREFIX = "preset:"


@dataclass(frozen=True)
class Preset:
    name: str
    path: Path
    notes: str


def presets_dir() -> Path:
    return Path(str(resources.files("caramba") / "presets"))


def list_presets() -> list[Preset]:
    out = []
    for path in sorted(presets_dir().glob("*.yml")):
        try:
            notes = (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("notes", "")
        except yaml.YAMLError:
            notes = "(unreadable)"
        out.append(Preset(path.stem, path, " ".join(str(notes).split())))
    return out


def resolve_manifest_path(ref: str) -> Path:
    """`preset:name` → the shipped file; anything else is a filesystem path."""
    if not ref.startswith(PREFIX):
        return Path(ref)
    name = ref[len(PREFIX):].removesuffix(".yml")
    path = presets_dir() / f"{name}.yml"
    if not path.exists():
        names = [p.name for p in list_presets()]
        hint = did_you_mean(name, names)
        raise InputError(
            f"no shipped preset named {name!r}" + (f" — did you mean {hint!r}?" if hint else ""),
            hint=f"available presets: {', '.join(names)} (see `caramba presets`).",
        )
    return path
