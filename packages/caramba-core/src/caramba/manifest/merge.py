"""Merge `defaults` into every experiment target; the target's own values win."""

from __future__ import annotations

from typing import Any

from caramba.manifest.source import SourceMap


def _deep_merge(base: Any, own: Any) -> Any:
    if isinstance(base, dict) and isinstance(own, dict):
        merged = dict(base)
        for key, value in own.items():
            merged[key] = _deep_merge(base.get(key), value) if key in base else value
        return merged
    return own


def merge_defaults(data: dict[str, Any], smap: SourceMap) -> None:
    """In place: defaults.data → data.config, .train → runs[*].train, .runtime, .logging."""
    defaults = data.get("defaults")
    if not isinstance(defaults, dict):
        return
    targets = data.get("targets")
    if not isinstance(targets, list):
        return  # wrong type: validation reports it
    for ti, target in enumerate(targets):
        if not isinstance(target, dict) or target.get("type") != "experiment":
            continue
        tpath = ("targets", ti)
        placements = [("data", tpath + ("data", "config"), target.get("data"), "config")]
        runs = target.get("runs")
        for ri, run in enumerate(runs if isinstance(runs, list) else []):
            if isinstance(run, dict):
                placements.append(("train", tpath + ("runs", ri, "train"), run, "train"))
        placements.append(("runtime", tpath + ("runtime",), target, "runtime"))
        placements.append(("logging", tpath + ("logging",), target, "logging"))
        for section, dst, holder, key in placements:
            base = defaults.get(section)
            if not isinstance(base, dict) or not base or not isinstance(holder, dict):
                continue
            own = holder.get(key)
            if own is not None and not isinstance(own, dict):
                continue  # wrong type: leave it for validation to report
            holder[key] = _deep_merge(base, own or {})
            smap.copy_subtree(("defaults", section), dst)
