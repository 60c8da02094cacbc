"""Metrics as JSON Lines: one object per line, flushed on every write.

A target's runs share one file; each record names its run. Train records:
    {"run", "step", "loss", "lr", "grad_norm", "tokens_per_s", "tokens", "elapsed_s"}
Eval records:
    {"kind": "eval", "run", "step", "val_loss", "val_ppl"}
Trainers may add records of their own kind through `log` (the upcycle trainer's
{"kind": "blockwise", "run", "step", "block", "l1", ...}).
`step` counts optimizer updates completed. A line cut short by a crash is dropped the next
time the file is rewritten; readers should skip lines that do not parse.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from caramba.atomic import atomic_write_text


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """All complete records of a metrics file (malformed lines skipped)."""
    path = Path(path)
    if not path.exists():
        return []
    records = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


class MetricsWriter:
    """Appends one run's records to a shared JSONL file."""

    def __init__(self, path: str | Path, run_id: str) -> None:
        self.path = Path(path)
        self.run_id = run_id
        self._handle: IO[str] | None = None

    def truncate_after(self, step: int) -> None:
        """Rewrite the file without this run's records after `step` (atomically).

        Called when a run resumes from the checkpoint at `step` (0 for a fresh start), so the
        steps it is about to redo are not recorded twice.
        """
        self.close()
        if not self.path.exists():
            return
        kept = [
            r for r in read_records(self.path)
            if r.get("run") != self.run_id or _step(r) <= step
        ]
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))

    def log_train(self, *, step: int, loss: float, lr: float, grad_norm: float | None,
                  tokens_per_s: float, tokens: int, elapsed_s: float) -> None:
        self._write({"run": self.run_id, "step": step, "loss": loss, "lr": lr,
                     "grad_norm": grad_norm, "tokens_per_s": tokens_per_s, "tokens": tokens,
                     "elapsed_s": elapsed_s})

    def log_eval(self, *, step: int, val_loss: float, val_ppl: float) -> None:
        self._write({"kind": "eval", "run": self.run_id, "step": step, "val_loss": val_loss,
                     "val_ppl": val_ppl})

    def log(self, **fields: Any) -> None:
        """A record of a trainer's own kind (e.g. kind="blockwise"); `run` is added."""
        self._write({"run": self.run_id, **fields})

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def __enter__(self) -> MetricsWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _write(self, record: dict[str, Any]) -> None:
        if self._handle is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._handle = open(self.path, "a", encoding="utf-8")  # noqa: SIM115
            self._end_partial_line()
        self._handle.write(json.dumps(record) + "\n")
        self._handle.flush()

    def _end_partial_line(self) -> None:
        # A crash mid-line leaves no newline; start ours on a fresh line so both parse apart.
        assert self._handle is not None
        if self.path.stat().st_size == 0:
            return
        with open(self.path, "rb") as reader:
            reader.seek(-1, 2)
            if reader.read(1) != b"\n":
                self._handle.write("\n")


def _step(record: dict[str, Any]) -> float:
    step = record.get("step")
    return step if isinstance(step, (int, float)) else float("inf")
