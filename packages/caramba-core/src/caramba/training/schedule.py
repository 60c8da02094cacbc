"""Learning-rate schedule: linear warmup, then cosine decay to a floor.

A pure function of the step, so a resumed run needs no scheduler state.
"""

from __future__ import annotations

import math


def lr_at(
    step: int, *, lr: float, total_steps: int, warmup_steps: int = 0, min_lr_ratio: float = 0.1
) -> float:
    """Learning rate of optimizer update `step` (0-based; the run has `total_steps` updates).

    Warmup ramps linearly to `lr` over the first `warmup_steps` updates: (step + 1) / warmup,
    so the first update is not wasted at lr 0. After warmup the rate follows half a cosine
    from `lr` down to `lr * min_lr_ratio`, reached exactly at the last update
    (`total_steps - 1`). If warmup leaves no room for decay, the rate stays at `lr`.
    """
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    decay_steps = total_steps - 1 - warmup_steps
    if decay_steps <= 0:
        return lr
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    floor = lr * min_lr_ratio
    return floor + 0.5 * (lr - floor) * (1.0 + math.cos(math.pi * progress))
