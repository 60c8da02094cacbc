"""Located manifest errors: `file:line:col: key.path: what was wrong, what was expected`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from caramba.errors import InputError

Path = tuple[str | int, ...]


def format_path(path: Path) -> str:
    """`('targets', 0, 'runs', 1, 'train')` → `targets[0].runs[1].train`."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "<root>"


@dataclass(frozen=True)
class Diagnostic:
    file: str
    line: int  # 1-based; 0 when unknown
    col: int
    path: Path
    message: str

    def render(self) -> str:
        where = f"{self.file}:{self.line}:{self.col}" if self.line else self.file
        return f"{where}: {format_path(self.path)}: {self.message}"


class ManifestError(InputError):
    """One or more problems in a manifest, each with its location."""

    def __init__(self, diagnostics: Sequence[Diagnostic]) -> None:
        self.diagnostics = list(diagnostics)
        shown = self.diagnostics[:20]
        lines = [d.render() for d in shown]
        if len(self.diagnostics) > len(shown):
            lines.append(f"... and {len(self.diagnostics) - len(shown)} more")
        count = len(self.diagnostics)
        head = f"invalid manifest ({count} problem{'s' if count != 1 else ''}):"
        super().__init__(head + "\n  " + "\n  ".join(lines))
