"""Atomic file and directory writes.

A reader (or a resumed run after a crash) sees either the old content or the new content,
never half a file: data goes to a temporary sibling, is fsynced, then renamed over the target
with `os.replace`, which POSIX guarantees to be atomic within one filesystem. The temporary
lives in the target's own directory so the rename never crosses filesystems.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

# Names this module gives its temporaries; `remove_stale_temporaries` sweeps them.
_STALE = re.compile(r"^(\..+\.[A-Za-z0-9_]+\.tmp|.+\.(tmp|old)-\d+)$")


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write `data` to `path` so that `path` is never observed partially written."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")

    def write() -> None:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)

    _publish(tmp, target, write)


def atomic_write_file(path: str | os.PathLike[str], write: Callable[[str], None]) -> None:
    """`write(name)` creates and fills a temporary sibling of `path` by its file name (for
    writers that take one, such as safetensors' save_file), which then replaces `path` as in
    atomic_write_bytes. The name is unique per call, so concurrent writers never share it."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = str(target.parent / f".{target.name}.{uuid.uuid4().hex}.tmp")
    _publish(tmp, target, lambda: write(tmp))


def _publish(tmp: str, target: Path, write: Callable[[], None]) -> None:
    """Run `write` (it fills `tmp`), fsync `tmp` and rename it over `target`; on any exception
    `tmp` is removed and `target` untouched."""
    try:
        write()
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        _unlink_quietly(tmp)
        raise
    fsync_directory(target.parent)


def atomic_write_text(path: str | os.PathLike[str], text: str, encoding: str = "utf-8") -> None:
    atomic_write_bytes(path, text.encode(encoding))


def atomic_write_json(path: str | os.PathLike[str], obj: Any, *, indent: int | None = 2) -> None:
    """Serialise first, then write: a value json cannot encode never touches the disk."""
    text = json.dumps(obj, indent=indent, sort_keys=False, allow_nan=True)
    atomic_write_text(path, text + "\n")


@contextmanager
def atomic_directory(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a scratch directory that becomes `path` only if the block completes.

    Files go into `<path>.tmp-<pid>`; on success every file is fsynced and the directory is
    renamed to `path` (an existing `path` is replaced). On any exception, including
    KeyboardInterrupt, the scratch directory is removed and `path` is untouched.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    if scratch.exists():
        shutil.rmtree(scratch)
    scratch.mkdir()
    try:
        yield scratch
        _fsync_tree(scratch)
        if target.exists():
            # rename(2) cannot replace a non-empty directory: move the old one aside first.
            old = target.with_name(f"{target.name}.old-{os.getpid()}")
            if old.exists():
                shutil.rmtree(old)
            os.replace(target, old)
            os.replace(scratch, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(scratch, target)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    fsync_directory(target.parent)


def remove_stale_temporaries(directory: str | os.PathLike[str]) -> list[Path]:
    """Delete temporaries left in `directory` by a process that was killed mid-write."""
    removed: list[Path] = []
    root = Path(directory)
    if not root.is_dir():
        return removed
    for entry in root.iterdir():
        if _STALE.match(entry.name):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                _unlink_quietly(entry)
            removed.append(entry)
    return removed


def fsync_directory(directory: str | os.PathLike[str]) -> None:
    """Persist a rename: on POSIX the directory entry itself must be fsynced."""
    if os.name != "posix":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            with open(os.path.join(dirpath, name), "rb") as handle:
                os.fsync(handle.fileno())
        fsync_directory(dirpath)


def _unlink_quietly(path: str | os.PathLike[str]) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
