"""Chunked execution over the sequence, with decoding state carried from chunk to chunk."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from caramba.layers.base import BuildChild, ForwardContext
from caramba.topologies._common import ChildrenConfig, build_children, run_in_order


class RecurrentTopologyConfig(ChildrenConfig):
    type: Literal["RecurrentTopology"] = "RecurrentTopology"
    chunk_size: int = Field(..., ge=1, description="tokens per chunk along the sequence (dim 1)")


class RecurrentTopology(nn.Module):
    """Splits x (B, T, ...) into chunks of `chunk_size` tokens and runs the children on each
    chunk in order, all chunks sharing one decoding state.

    Stateful children (an AttentionLayer's KV cache) therefore see every earlier chunk: a
    causal transformer gives the same output as on the whole sequence, with attention memory
    bounded by chunk_size x T instead of T x T. If the caller passes no state, a fresh one is
    made for this call and dropped after; a caller's state (decoding) is used and extended.
    Each chunk's ctx.position is its absolute start. Gradients flow through the cache.
    """

    Config = RecurrentTopologyConfig

    def __init__(self, layers: nn.ModuleList, chunk_size: int) -> None:
        super().__init__()
        self.layers = layers
        self.chunk_size = chunk_size

    @classmethod
    def from_config(cls, config: RecurrentTopologyConfig, build: BuildChild) -> RecurrentTopology:
        return cls(build_children(config.layers, build), config.chunk_size)

    def forward(self, x: torch.Tensor, ctx: ForwardContext | None = None) -> torch.Tensor:
        start = 0 if ctx is None else ctx.position
        state = {} if ctx is None or ctx.state is None else ctx.state
        extras = {} if ctx is None else ctx.extras
        step = None if ctx is None else ctx.step  # a staged step is one token: one chunk
        outputs = []
        for offset in range(0, x.shape[1], self.chunk_size):
            chunk = x[:, offset : offset + self.chunk_size]
            chunk_ctx = ForwardContext(position=start + offset, state=state, extras=extras,
                                       step=step)
            outputs.append(run_in_order(self.layers, chunk, chunk_ctx))
        return torch.cat(outputs, dim=1)

    def extra_repr(self) -> str:
        return f"chunk_size={self.chunk_size}"
