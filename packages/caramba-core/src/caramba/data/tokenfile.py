"""The `.tokens` file format: token ids as plain text, readable and writable by any tool.

Format (version 1):

- A UTF-8 text file. Token ids are non-negative base-10 integers (ASCII digits only, no sign)
  separated by any whitespace; line breaks carry no meaning.
- A line whose first non-blank character is `#` is a comment and is ignored.
- Ids must be below 2**32. Which tokenizer they belong to is not recorded in the file: say it
  with `data.config.tokenizer` in the manifest.

Example::

    # tokens of "In the beginning" under tokenizer.json
    644 263 2904
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from caramba.errors import DataError

_VALID = re.compile(r"[0-9\s]*")
_INVALID_CHAR = re.compile(r"[^0-9\s]")
MAX_ID = 2**32 - 1


def read_tokens(path: Path) -> np.ndarray:
    """The ids in a `.tokens` file, as uint16 when they all fit, else uint32."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{path} is not a text file ({exc}); a .tokens file holds token ids as "
            f"whitespace-separated decimal integers."
        ) from exc
    lines = text.splitlines()
    if any(line.lstrip().startswith("#") for line in lines):
        text = "\n".join(line for line in lines if not line.lstrip().startswith("#"))
    if _VALID.fullmatch(text) is None:
        raise DataError(_describe_bad_token(path, lines))
    parts = text.split()
    if any(len(p) > 10 for p in parts):
        raise DataError(f"{path} holds a token id of more than 10 digits; ids must be < 2**32.")
    ids = np.array(parts, dtype=np.int64)
    if ids.size and int(ids.max()) > MAX_ID:
        raise DataError(f"{path} holds token id {int(ids.max())}; ids must be < 2**32.")
    return ids.astype(np.uint16 if ids.size == 0 or ids.max() < 2**16 else np.uint32)


def write_tokens(
    path: Path, ids: Sequence[int] | np.ndarray, *, comment: str | None = None, per_line: int = 32
) -> None:
    """Write ids as a `.tokens` file, `per_line` ids to a line, after an optional comment."""
    array = np.asarray(ids)
    if array.ndim != 1 or (array.size and (array.min() < 0 or array.max() > MAX_ID)):
        raise DataError(
            f"cannot write {path}: token ids must be a 1-D sequence of integers in [0, 2**32)."
        )
    out: list[str] = []
    if comment:
        out += [f"# {line}" for line in comment.splitlines()]
    values = array.tolist()
    out += [" ".join(map(str, values[i : i + per_line])) for i in range(0, len(values), per_line)]
    Path(path).write_text("\n".join(out) + "\n", encoding="utf-8")


def _describe_bad_token(path: Path, lines: list[str]) -> str:
    for lineno, line in enumerate(lines, 1):
        if line.lstrip().startswith("#"):
            continue
        match = _INVALID_CHAR.search(line)
        if match:
            token = next(t for t in line.split() if _INVALID_CHAR.search(t))
            return (
                f"{path}:{lineno}: {token!r} is not a token id; a .tokens file holds "
                f"non-negative decimal integers separated by whitespace ('#' starts a comment "
                f"line)."
            )
    return f"{path} is not a valid .tokens file."
