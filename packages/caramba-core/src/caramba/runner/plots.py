"""The loss curve PNG: training loss per step and validation loss at each evaluation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from caramba.atomic import atomic_write_bytes


def loss_curve_png(records: list[dict[str, Any]], path: Path, title: str) -> Path:
    import io

    import matplotlib

    matplotlib.use("Agg")  # no display needed; must precede pyplot import
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    runs = sorted({str(r.get("run")) for r in records})
    for run in runs:
        train = [(r["step"], r["loss"]) for r in records
                 if r.get("run") == run and "loss" in r and r.get("kind") != "eval"]
        evals = [(r["step"], r["val_loss"]) for r in records
                 if r.get("run") == run and r.get("kind") == "eval"]
        if train:
            xs, ys = zip(*train)
            ax.plot(xs, ys, lw=1.2, label=f"{run} train")
        if evals:
            xs, ys = zip(*evals)
            ax.plot(xs, ys, "o--", lw=1.2, label=f"{run} validation")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if runs:
        ax.legend()
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())
    return path
