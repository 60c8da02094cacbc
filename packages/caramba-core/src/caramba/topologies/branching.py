"""Children applied side by side to the same input, outputs concatenated on features."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from caramba.layers.base import BuildChild, ForwardContext
from caramba.topologies._common import ChildrenConfig, build_children


class BranchingTopologyConfig(ChildrenConfig):
    type: Literal["BranchingTopology"] = "BranchingTopology"


class BranchingTopology(nn.Module):
    """y = cat([f_1(x), ..., f_n(x)], dim=-1): every child sees the same x.

    Output features are the sum of the children's; follow with a LinearLayer to project back.
    """

    Config = BranchingTopologyConfig

    def __init__(self, layers: nn.ModuleList) -> None:
        super().__init__()
        self.layers = layers

    @classmethod
    def from_config(cls, config: BranchingTopologyConfig, build: BuildChild) -> BranchingTopology:
        return cls(build_children(config.layers, build))

    def forward(self, x: torch.Tensor, ctx: ForwardContext | None = None) -> torch.Tensor:
        return torch.cat([layer(x, ctx) for layer in self.layers], dim=-1)
