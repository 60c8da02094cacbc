"""The loss curve PNG: training loss per step and validation loss at each evaluation.

Upcycling targets get a second panel: blockwise distillation logs an attention-output L1 per
block step (thousands of steps, another unit), which would flatten the cross-entropy curves of
the global phase if drawn on the same axes; its closing validation loss becomes a reference line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from caramba.atomic import atomic_write_bytes


def _blockwise_runs(records: list[dict[str, Any]]) -> list[str]:
    return sorted({str(r.get("run")) for r in records if r.get("kind") == "blockwise"})


def _draw_blockwise(ax: Any, records: list[dict[str, Any]], runs: list[str]) -> None:
    for run in runs:
        points = [(r["step"], r["l1"]) for r in records
                  if r.get("run") == run and r.get("kind") == "blockwise" and "l1" in r]
        if points:
            xs, ys = zip(*points, strict=True)
            ax.plot(xs, ys, lw=0.8, label=f"{run} (blocks in turn)")
    ax.set_yscale("log")
    ax.set_xlabel("step (all blocks, one after another)")
    ax.set_ylabel("attention-output L1 vs teacher")
    ax.set_title("blockwise distillation")
    ax.grid(alpha=0.3)
    ax.legend()


def _draw_loss(ax: Any, records: list[dict[str, Any]], skip: list[str], title: str) -> None:
    runs = sorted({str(r.get("run")) for r in records} - set(skip))
    for run in runs:
        train = [(r["step"], r["loss"]) for r in records
                 if r.get("run") == run and "loss" in r and r.get("kind") != "eval"]
        evals = [(r["step"], r["val_loss"]) for r in records
                 if r.get("run") == run and r.get("kind") == "eval"]
        if train:
            xs, ys = zip(*train, strict=True)
            ax.plot(xs, ys, lw=1.2, label=f"{run} train objective")
        if evals:
            xs, ys = zip(*evals, strict=True)
            ax.plot(xs, ys, "o--", lw=1.2, label=f"{run} validation")
    for run in skip:  # validation loss at the end of a blockwise run: where the next one starts
        evals = [r["val_loss"] for r in records if r.get("run") == run and r.get("kind") == "eval"]
        if evals:
            ax.axhline(evals[-1], ls=":", color="gray", label=f"after {run} (validation)")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token; validation: cross-entropy)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if runs or skip:
        ax.legend()


def loss_curve_png(records: list[dict[str, Any]], path: Path, title: str) -> Path:
    import io

    import matplotlib

    matplotlib.use("Agg")  # no display needed; must precede pyplot import
    import matplotlib.pyplot as plt

    blockwise = _blockwise_runs(records)
    if blockwise:
        fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4), dpi=120)
        _draw_blockwise(left, records, blockwise)
        _draw_loss(right, records, blockwise, title)
    else:
        fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
        _draw_loss(ax, records, [], title)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())
    return path
