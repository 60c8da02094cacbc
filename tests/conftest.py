"""Shared test setup: one corpus/tokenizer cache for the whole session (building the real
English token dataset takes tens of seconds once, then is reused)."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("CARAMBA_CACHE", str(REPO / ".caramba-cache"))

# Files that take a minute or more alone (measured on a 2-core VM). `make test` runs whole files
# in 2 xdist workers (`--dist loadfile`), which hand files out in collection order: a long file
# collected last runs alone while the other worker idles (4 of the 19 minutes of a fresh
# clone's run on a Zen 3 VM). Collected first, they overlap with the short files instead.
LONG_FILES = (
    "tests/e2e/test_upcycle.py",
    "tests/kernels/test_triton_decode.py",
    "tests/kernels/test_neon_cross.py",
    "tests/kernels/test_cpu_cmake_consumer.py",
    "tests/core/upcycle/test_upcycle_trainer.py",
    "tests/core/manifest/test_manifest_fuzz.py",
)


def pytest_collection_modifyitems(items: list) -> None:
    """Moves the tests of LONG_FILES to the front, in that order; the rest keep theirs."""

    def rank(item) -> int:
        path = Path(str(item.fspath)).resolve()
        name = path.relative_to(REPO).as_posix() if path.is_relative_to(REPO) else ""
        return LONG_FILES.index(name) if name in LONG_FILES else len(LONG_FILES)

    items.sort(key=rank)
