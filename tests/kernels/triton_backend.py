"""The Triton backend for the Triton tests: on a machine without CUDA its kernels run under
TRITON_INTERPRET=1 (set here, before triton is first imported), and a checkout that has not
installed caramba-kernels imports it from the source tree. Modules that import this skip
when triton is missing."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
pytest.importorskip("triton", reason="triton is not installed (pip install triton)")

try:
    from caramba_kernels.triton import backend, ops, plan, tuning
except ImportError:
    sys.path.insert(0, str(Path(__file__).parents[2] / "packages/caramba-kernels/src"))
    try:
        from caramba_kernels.triton import backend, ops, plan, tuning
    except ImportError as exc:
        pytest.skip(f"caramba_kernels.triton cannot be imported: {exc}", allow_module_level=True)

ON_GPU = torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET", "0") in ("", "0")
DEVICE = torch.device("cuda" if ON_GPU else "cpu")

__all__ = ["DEVICE", "ON_GPU", "backend", "ops", "plan", "tuning"]
