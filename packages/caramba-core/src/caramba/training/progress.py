"""What a person watching a run sees, on stderr.

`rich`: a live bar (run id, step/steps, loss, tokens/s, lr, elapsed, ETA). When stderr is not
a terminal (CI, a log file) the bar would be noise, so `rich` falls back to `plain`: one line
every `log_every` steps. `none` prints nothing. The trainer calls `advance` every step
(cheap, no device sync) and `update` only on logging steps, where it has synced anyway.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, Task, TextColumn
from rich.text import Text


def format_duration(seconds: float) -> str:
    if seconds != seconds or seconds in (float("inf"), float("-inf")):  # nan / inf
        return "-:--:--"
    seconds = max(0, int(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class ProgressDisplay:
    """Base class and the `none` display: every hook is a no-op."""

    def start(self, run_id: str, total_steps: int, start_step: int, elapsed_s: float) -> None:
        self.run_id = run_id
        self.total_steps = total_steps
        self.start_step = start_step
        self.elapsed_offset = elapsed_s
        self.started = time.perf_counter()

    def advance(self, step: int) -> None:
        """`step` updates are done. Called every step: must stay cheap."""

    def update(self, *, step: int, loss: float, lr: float, tokens_per_s: float) -> None:
        """Fresh numbers at a logging step."""

    def message(self, text: str) -> None:
        """A one-off line (evaluation result, checkpoint saved, resumed)."""

    def close(self) -> None:
        pass

    # Shared arithmetic for the displays that print something.
    def elapsed(self) -> float:
        return self.elapsed_offset + time.perf_counter() - self.started

    def eta(self, step: int) -> float:
        done = step - self.start_step
        if done <= 0:
            return float("nan")
        return (time.perf_counter() - self.started) / done * (self.total_steps - step)


class PlainProgress(ProgressDisplay):
    """One line per logging step; for logs and non-interactive terminals."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream

    def update(self, *, step: int, loss: float, lr: float, tokens_per_s: float) -> None:
        self._print(
            f"[{self.run_id}] step {step}/{self.total_steps} loss {loss:.4f} "
            f"tok/s {tokens_per_s:,.0f} lr {lr:.3e} elapsed {format_duration(self.elapsed())} "
            f"eta {format_duration(self.eta(step))}"
        )

    def message(self, text: str) -> None:
        self._print(f"[{self.run_id}] {text}")

    def _print(self, line: str) -> None:
        stream = self.stream or sys.stderr
        print(line, file=stream, flush=True)


class RichProgress(ProgressDisplay):
    """A live rich progress bar."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.console = Console(file=stream or sys.stderr)
        self._progress: Progress | None = None
        self._task = 0

    def start(self, run_id: str, total_steps: int, start_step: int, elapsed_s: float) -> None:
        super().start(run_id, total_steps, start_step, elapsed_s)
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[stats]}"),
            _ClockColumn(self),
            console=self.console,
            transient=False,
        )
        self._progress.start()
        self._task = self._progress.add_task(
            run_id, total=total_steps, completed=start_step, stats="loss -"
        )

    def advance(self, step: int) -> None:
        if self._progress is not None:
            self._progress.update(self._task, completed=step)

    def update(self, *, step: int, loss: float, lr: float, tokens_per_s: float) -> None:
        if self._progress is not None:
            stats = f"loss {loss:.4f} {tokens_per_s:,.0f} tok/s lr {lr:.2e}"
            self._progress.update(self._task, completed=step, stats=stats)

    def message(self, text: str) -> None:
        self.console.print(f"[{self.run_id}] {text}", markup=False, highlight=False)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


class _ClockColumn(ProgressColumn):
    """Elapsed time of the whole run (across resumes) and ETA from this session's pace."""

    def __init__(self, display: ProgressDisplay) -> None:
        super().__init__()
        self.display = display

    def render(self, task: Task) -> Text:
        step = int(task.completed)
        elapsed = format_duration(self.display.elapsed())
        return Text(f"{elapsed} eta {format_duration(self.display.eta(step))}")


def make_progress(instrument: str, stream: TextIO | None = None) -> ProgressDisplay:
    """The display for `logging.instrument` (rich | plain | none)."""
    if instrument == "none":
        return ProgressDisplay()
    if instrument == "plain":
        return PlainProgress(stream)
    if instrument == "rich":
        target = stream or sys.stderr
        isatty = getattr(target, "isatty", None)
        return RichProgress(stream) if isatty is not None and isatty() else PlainProgress(stream)
    raise ValueError(f"unknown instrument {instrument!r}; expected rich, plain or none")
