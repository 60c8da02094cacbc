"""One builder per cached artifact across processes.

Cached artifacts (tokenized datasets, the trained tiny models) are written atomically, so two
processes that miss the cache at once both end up with a whole file, but both pay for the
build: two pytest-xdist workers, or two runs started together, train the same tiny model twice.
`building(path)` holds an exclusive lock on a `.lock` file beside `path` while the caller
checks the cache and builds: the second process waits, then finds the first one's file.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no lock; concurrent builds stay correct, only duplicated
    fcntl = None  # type: ignore[assignment]


def lock_path(path: Path) -> Path:
    """The lock file that guards building `path`."""
    return path.with_name(f".{path.name}.lock")


@contextmanager
def building(path: str | os.PathLike[str]) -> Iterator[None]:
    """Hold the build lock of `path` (blocking until another holder releases it)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    if fcntl is None:
        yield
        return
    with lock_path(target).open("a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
