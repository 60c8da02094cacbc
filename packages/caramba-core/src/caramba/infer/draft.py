"""A draft model over a pruned vocabulary: a small network whose embedding and head cover only
the `keep` tokens (the ones a teacher predicts most often), presented to the generator as a
model over the full vocabulary.

Why: a draft's cost on a CPU is dominated by its vocabulary head (SmolLM2's is 49152 x
d_model). Cutting the head to a few thousand tokens makes a draft step an order of magnitude
cheaper. The full-vocabulary logits put -inf on every other token, so the draft's
distribution q is still a distribution over the target's vocabulary (zero outside `keep`):
rejection sampling stays exact, and a greedy draft simply never proposes a pruned token.

Inputs outside `keep` map to one extra embedding row (index len(keep)): the draft sees "some
rare token" there, which costs it a little accuracy and the target nothing.
"""

from __future__ import annotations

import torch
from torch import nn

from caramba.errors import InputError
from caramba.layers.base import ForwardContext


class PrunedVocabModel(nn.Module):
    """logits (B, T, vocab_size) of `inner` (a model over len(keep) + 1 input ids, or the
    full vocabulary without prune_inputs, and len(keep) output ids), -inf outside `keep`."""

    def __init__(self, inner: nn.Module, keep: torch.Tensor, vocab_size: int,
                 prune_inputs: bool = True) -> None:
        super().__init__()
        keep = torch.as_tensor(keep, dtype=torch.long).flatten()
        if keep.numel() == 0 or keep.unique().numel() != keep.numel():
            raise InputError("keep: need a non-empty list of distinct token ids.")
        if int(keep.min()) < 0 or int(keep.max()) >= vocab_size:
            raise InputError(f"keep: token ids must lie in [0, {vocab_size}), got "
                             f"[{int(keep.min())}, {int(keep.max())}].")
        self.inner = inner
        self.vocab_size = vocab_size
        self.prune_inputs = prune_inputs
        index = torch.full((vocab_size,), keep.numel(), dtype=torch.long)
        index[keep] = torch.arange(keep.numel())
        self.register_buffer("keep", keep, persistent=False)
        self.register_buffer("index", index, persistent=False)
        self.max_seq_len = getattr(inner, "max_seq_len", None)

    def to_inner(self, tokens: torch.Tensor) -> torch.Tensor:
        """Full-vocabulary ids -> the inner model's input ids (unknown -> len(keep))."""
        return self.index[tokens]

    def labels(self, tokens: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
        """Full-vocabulary next-token labels -> the inner head's ids (pruned -> ignore)."""
        inner = self.index[tokens]
        return torch.where(inner < self.keep.numel(), inner, ignore_index)

    def forward(self, tokens: torch.Tensor, ctx: ForwardContext | None = None) -> torch.Tensor:
        small = self.inner(self.to_inner(tokens) if self.prune_inputs else tokens, ctx)
        out = small.new_full((*small.shape[:-1], self.vocab_size), float("-inf"))
        out[..., self.keep] = small
        return out
