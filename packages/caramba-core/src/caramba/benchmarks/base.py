"""The benchmark contract and the table it returns.

A registered benchmark is a class with a pydantic `Config` (the manifest's
`benchmarks[].config`, whose `type` names it) and `run(config, models, data, device)`,
returning a `BenchmarkResult`: rows for a CSV, a small summary for report.json.

`models` maps names to models: {"model": m} after plain training, {"teacher": t,
"student": s} after an upcycle. With both, benchmarks add a "student_vs_teacher" entry to
their summary (`BenchmarkResult.compare`).
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from caramba.atomic import atomic_write_text
from caramba.errors import InputError


class BenchmarkConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    type: str


@dataclass
class BenchmarkResult:
    id: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    kind: str = ""  # the benchmark's `type`, set by the runner (plots and tables look for it)

    def compare(self, **ratios: tuple[str, str]) -> None:
        """summary["student_vs_teacher"][name] = student[key] / teacher[key], for each
        name=(key, how) with how "ratio" (student / teacher) or "delta" (student - teacher)."""
        teacher, student = self.summary.get("teacher"), self.summary.get("student")
        if not teacher or not student:
            return
        out = {}
        for name, (key, how) in ratios.items():
            t, s = teacher.get(key), student.get(key)
            if not isinstance(t, (int, float)) or not isinstance(s, (int, float)):
                continue
            if how == "delta":
                out[name] = s - t
            elif t:
                out[name] = s / t
        if out:
            self.summary["student_vs_teacher"] = out

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


def require_tokenizer(bench_id: str, benchmark: str, data: Any, why: str = "") -> Any:
    """The dataset's tokenizer, or the one-paragraph error text benchmarks need it for."""
    tokenizer = getattr(data, "tokenizer", None)
    if tokenizer is None:
        raise InputError(f"benchmark {bench_id!r}: {benchmark} needs the dataset's tokenizer"
                         f"{why}, and this dataset has none.",
                         hint="set data.config.tokenizer.")
    return tokenizer
