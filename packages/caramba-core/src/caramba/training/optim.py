"""The optimizer of the standard trainer: AdamW with decoupled weight decay.

Weight decay applies only to parameters with two or more dimensions (matmul weights and
embeddings). Biases and norm gains are 1-D: decaying them toward zero only fights the
normalisation they implement, as in nanoGPT and most LM codebases.
"""

from __future__ import annotations

import torch

from caramba.manifest.schema import TrainConfig


def build_adamw(
    model: torch.nn.Module, train: TrainConfig, device: torch.device
) -> torch.optim.AdamW:
    """Two param groups, always in this order: [decayed (>=2-D), not decayed (<2-D)]."""
    decay, no_decay = [], []
    for param in model.parameters():  # tied parameters appear once
        if param.requires_grad:
            (decay if param.dim() >= 2 else no_decay).append(param)
    groups = [
        {"params": decay, "weight_decay": train.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    # The fused CUDA kernel updates every parameter in one launch; CPU keeps the default.
    extra = {"fused": True} if device.type == "cuda" else {}
    return torch.optim.AdamW(groups, lr=train.lr, betas=train.betas, eps=1e-8, **extra)
