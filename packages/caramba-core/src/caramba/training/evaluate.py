"""Validation loss over deterministic windows of the validation split."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from caramba.devices import autocast
from caramba.errors import DataError


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    objective: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    split: Any,
    *,
    batch_size: int,
    block_size: int,
    max_batches: int,
    device: torch.device,
    dtype: torch.dtype,
) -> float:
    """Token-weighted mean loss over up to `max_batches` batches; one device sync at the end.

    Runs in eval mode (no dropout) and restores the previous mode, so it consumes no random
    numbers and cannot perturb a run it interrupts.
    """
    was_training = model.training
    model.eval()
    # float64 keeps a long sum exact enough; MPS has no float64.
    acc_dtype = torch.float32 if device.type == "mps" else torch.float64
    total = torch.zeros((), device=device, dtype=acc_dtype)
    count = 0
    try:
        for x, y in split.iter_eval_batches(batch_size, block_size, max_batches):
            x = x.to(device, non_blocking=True)
            y = y.to(device, non_blocking=True)
            with autocast(device, dtype):
                loss = objective(model(x), y)
            total += loss.to(acc_dtype) * y.numel()
            count += y.numel()
    finally:
        model.train(was_training)
    if count == 0:
        raise DataError(
            f"the validation split yields no windows of block_size {block_size}.",
            hint="use a larger validation split or a smaller train.block_size.",
        )
    return (total / count).item()


def perplexity(loss: float) -> float:
    """exp(loss), inf instead of OverflowError for a diverged model."""
    try:
        return math.exp(loss)
    except OverflowError:
        return float("inf")
