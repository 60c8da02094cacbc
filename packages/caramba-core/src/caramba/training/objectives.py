"""Training objectives: callables `(logits, targets) -> scalar loss`."""

from __future__ import annotations

import torch
import torch.nn.functional as F


class NextTokenCrossEntropy:
    """Mean cross-entropy of next-token prediction over every position of the batch.

    Computed in float32 even when the forward ran under bf16/fp16 autocast: log-softmax over
    a large vocabulary loses several digits in half precision, and the loss is what we report.
    Targets equal to `ignore_index` do not count.
    """

    def __init__(self, ignore_index: int = -100) -> None:
        self.ignore_index = ignore_index

    def __call__(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        vocab = logits.shape[-1]
        return F.cross_entropy(
            logits.reshape(-1, vocab).float(),
            targets.reshape(-1),
            ignore_index=self.ignore_index,
        )

    def __repr__(self) -> str:
        return f"NextTokenCrossEntropy(ignore_index={self.ignore_index})"
