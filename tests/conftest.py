"""Shared test setup: one corpus/tokenizer cache for the whole session (building the real
English token dataset takes tens of seconds once, then is reused), and under pytest-xdist the
machine's cores shared out between the workers."""

from __future__ import annotations

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("CARAMBA_CACHE", str(REPO / ".caramba-cache"))


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _threads_per_worker() -> int | None:
    """Intra-op threads for each xdist worker (and each process its tests start): the cores
    divided between the workers. `make test` runs one worker per core here, and a worker's
    second OpenMP thread then has no core of its own and spins at every barrier: on 2 cores the
    suite took 12:31 and 22.6 min of CPU that way, 9:58 and 16.9 min with one thread each."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    return max(1, _cores() // workers) if workers else None


_THREADS = _threads_per_worker()
if _THREADS is not None:
    # Before torch is imported here, and inherited by every `caramba` subprocess a test runs;
    # a value the user exported wins.
    os.environ.setdefault("OMP_NUM_THREADS", str(_THREADS))


def pytest_configure(config) -> None:
    if _THREADS is not None and "torch" in sys.modules:  # imported before this file: set it
        sys.modules["torch"].set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
