"""Children applied side by side to the same input, outputs combined."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from caramba.layers.base import BuildChild, ForwardContext
from caramba.topologies._common import ChildrenConfig, build_children


class ParallelTopologyConfig(ChildrenConfig):
    type: Literal["ParallelTopology"] = "ParallelTopology"
    combine: Literal["stack", "sum", "mean"] = Field(
        "stack", description="stack: new dimension `dim`; sum or mean: elementwise"
    )
    dim: int = Field(0, description="where `stack` inserts the new dimension")


class ParallelTopology(nn.Module):
    """Every child sees the same x; outputs are combined.

    combine "stack" (default) returns torch.stack(outputs, dim) — with dim 0 a (n_children,
    B, T, D) tensor, for a consumer that reads the branches apart. "sum" and "mean" need
    outputs of one shape and keep it: sum of an attention and an MLP child is the parallel
    block of GPT-J/PaLM (wrap it in a ResidualTopology for the skip).
    """

    Config = ParallelTopologyConfig

    def __init__(self, layers: nn.ModuleList, combine: str = "stack", dim: int = 0) -> None:
        super().__init__()
        self.layers = layers
        self.combine = combine
        self.dim = dim

    @classmethod
    def from_config(cls, config: ParallelTopologyConfig, build: BuildChild) -> ParallelTopology:
        return cls(build_children(config.layers, build), config.combine, config.dim)

    def forward(self, x: torch.Tensor, ctx: ForwardContext | None = None) -> torch.Tensor:
        outputs = [layer(x, ctx) for layer in self.layers]
        if self.combine == "stack":
            return torch.stack(outputs, dim=self.dim)
        total = torch.stack(outputs).sum(dim=0)
        return total / len(outputs) if self.combine == "mean" else total

    def extra_repr(self) -> str:
        return f"combine={self.combine!r}, dim={self.dim}"
