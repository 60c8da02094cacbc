"""loss.png: one panel for plain training, two when a blockwise phase logged L1 per step."""

from __future__ import annotations

import struct
from pathlib import Path

from caramba.runner.plots import loss_curve_png


def _png_size(path: Path) -> tuple[int, int]:
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", header[16:24])


def _training(run: str, steps: int) -> list[dict]:
    records = [{"run": run, "step": s, "loss": 6.0 - s / steps} for s in range(1, steps + 1)]
    return records + [{"run": run, "kind": "eval", "step": steps, "val_loss": 5.2}]


def test_plain_training_is_one_panel(tmp_path: Path) -> None:
    out = loss_curve_png(_training("main", 20), tmp_path / "loss.png", "t")
    width, height = _png_size(out)
    assert (width, height) == (840, 480)


def test_blockwise_distillation_gets_its_own_panel(tmp_path: Path) -> None:
    blockwise = [{"run": "blockwise", "kind": "blockwise", "step": s, "l1": 1.0 / s}
                 for s in range(1, 400)]
    blockwise.append({"run": "blockwise", "kind": "eval", "step": 399, "val_loss": 4.3})
    out = loss_curve_png(blockwise + _training("global", 30), tmp_path / "loss.png", "t")
    width, _ = _png_size(out)
    assert width == 1440  # two panels: L1 per block step beside the cross-entropy curves
