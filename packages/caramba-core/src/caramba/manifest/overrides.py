"""`key=value` command-line overrides, applied to the raw manifest before interpolation.

A path whose first part is a top-level manifest key (`vars.d_model=512`,
`targets.0.runs.0.steps=10`) is applied at the root. Any other path is applied inside every
selected experiment target (`runs.0.steps=50`, `data.config.path=x.npy`), and
`trainer.<key>=v` is a shortcut that sets `train.<key>` in every run of the target.
Values are parsed as YAML scalars, so `3e-4` is a float and `true` a bool.
"""

from __future__ import annotations

from typing import Any

import yaml

from caramba.errors import InputError, did_you_mean

TOP_LEVEL = ("version", "name", "notes", "vars", "defaults", "targets", "entrypoints")


def parse_override(text: str) -> tuple[list[str], Any]:
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise InputError(
            f"override {text!r} is not of the form key.path=value",
            hint="for example `runs.0.steps=50` or `trainer.lr=3e-4`.",
        )
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def _set(node: Any, parts: list[str], value: Any, shown: str) -> None:
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, list):
            if not part.lstrip("-").isdigit() or not -len(node) <= int(part) < len(node):
                raise InputError(
                    f"override {shown}: {'.'.join(parts[: i + 1])!r} is not a valid index "
                    f"(the list has {len(node)} item{'s' if len(node) != 1 else ''})"
                )
            if last:
                node[int(part)] = value
            else:
                node = node[int(part)]
        elif isinstance(node, dict):
            if last:
                node[part] = value
            else:
                if part not in node or node[part] is None:
                    node[part] = {}
                node = node[part]
        else:
            raise InputError(
                f"override {shown}: {'.'.join(parts[:i])!r} is a {type(node).__name__}, "
                "not a mapping or list, so it has no sub-keys"
            )


def apply_overrides(data: dict[str, Any], overrides: list[str], target: str | None) -> None:
    """Apply each override in place to the raw manifest `data`."""
    for text in overrides:
        parts, value = parse_override(text)
        if parts[0] in TOP_LEVEL:
            _set(data, parts, value, text)
            continue
        all_targets = data.get("targets")
        targets = [
            t for t in (all_targets if isinstance(all_targets, list) else [])
            if isinstance(t, dict) and t.get("type", "experiment") == "experiment"
            and (target is None or t.get("name") == target)
        ]
        if not targets:
            raise InputError(f"override {text!r}: no experiment target to apply it to")
        for t in targets:
            if parts[0] == "trainer" and len(parts) > 1:
                runs = t.get("runs")
                if not isinstance(runs, list) or not runs:
                    raise InputError(f"override {text!r}: target {t.get('name')!r} has no runs")
                for run in runs:
                    if isinstance(run, dict):
                        _set(run, ["train", *parts[1:]], value, text)
                continue
            if parts[0] not in t and len(parts) > 1:
                known = [*t.keys(), *TOP_LEVEL]
                hint = did_you_mean(parts[0], known)
                raise InputError(
                    f"override {text!r}: target {t.get('name')!r} has no key {parts[0]!r}"
                    + (f" — did you mean {hint!r}?" if hint else ""),
                )
            _set(t, parts, value, text)
