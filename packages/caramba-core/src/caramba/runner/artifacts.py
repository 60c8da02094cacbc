"""Where a target's artifacts live and how the non-training ones are written."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from caramba.atomic import atomic_write_json, atomic_write_text


@dataclass(frozen=True)
class TargetArtifacts:
    """`runs/<manifest name>/<target>/` and the files in it."""

    root: Path

    @property
    def resolved_manifest(self) -> Path:
        return self.root / "manifest.resolved.yml"

    @property
    def plan(self) -> Path:
        return self.root / "plan.json"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def report(self) -> Path:
        return self.root / "report.json"

    @property
    def loss_curve(self) -> Path:
        return self.root / "loss.png"

    @property
    def samples(self) -> Path:
        return self.root / "samples.txt"

    def write_inputs(self, resolved_data: dict[str, Any], plan_json: str) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.resolved_manifest,
                          yaml.safe_dump(resolved_data, sort_keys=False, allow_unicode=True))
        atomic_write_text(self.plan, plan_json)

    def write_report(self, report: dict[str, Any]) -> None:
        atomic_write_json(self.report, report)
