"""Shared fixtures of the kernel tests."""

from __future__ import annotations

import sys

import pytest


@pytest.fixture(autouse=True)
def _triton_kernels_under_test(monkeypatch: pytest.MonkeyPatch) -> None:
    """The Triton tests test Triton's kernels: where libcaramba_kernels_cuda is built, it would
    otherwise serve the q8_0/q4_0 calls it supports (test_cuda_decode turns it back on)."""
    ops = sys.modules.get("caramba_kernels.triton.ops")
    if ops is not None:
        monkeypatch.setitem(ops.TUNING, "cuda", False)
