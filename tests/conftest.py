"""Shared test setup: one corpus/tokenizer cache for the whole session (building the real
English token dataset takes tens of seconds once, then is reused)."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("CARAMBA_CACHE", str(REPO / ".caramba-cache"))
