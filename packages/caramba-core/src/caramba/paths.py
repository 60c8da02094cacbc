"""Where caramba keeps files it can rebuild (built datasets, downloaded artifacts)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """`$CARAMBA_CACHE` if set, else `~/.cache/caramba`; created on first use.

    Everything under it can be deleted at any time: it is rebuilt on demand.
    """
    env = os.environ.get("CARAMBA_CACHE")
    path = Path(env).expanduser() if env else Path.home() / ".cache" / "caramba"
    path.mkdir(parents=True, exist_ok=True)
    return path
