"""The benchmark contract and the table it returns.

A registered benchmark is a class with a pydantic `Config` (the manifest's
`benchmarks[].config`, whose `type` names it) and `run(config, models, data, device)`,
returning a `BenchmarkResult`: rows for a CSV, a small summary for report.json.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from caramba.atomic import atomic_write_text


class BenchmarkConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    type: str


@dataclass
class BenchmarkResult:
    id: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)

    def write_csv(self, path: Path) -> Path:
        if not self.rows:
            return path
        columns = list(dict.fromkeys(key for row in self.rows for key in row))
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns)
        writer.writeheader()
        writer.writerows(self.rows)
        atomic_write_text(path, buffer.getvalue())
        return path
