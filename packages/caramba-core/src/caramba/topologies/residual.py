"""Residual connection around a sequence of children."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from caramba.layers.base import BuildChild, ForwardContext
from caramba.topologies._common import ChildrenConfig, build_children, run_in_order


class ResidualTopologyConfig(ChildrenConfig):
    type: Literal["ResidualTopology"] = "ResidualTopology"


class ResidualTopology(nn.Module):
    """y = x + f(x), f = children applied in order.

    Put the norm first among the children to get a pre-norm block: [RMSNorm, Attention].
    """

    Config = ResidualTopologyConfig

    def __init__(self, layers: nn.ModuleList) -> None:
        super().__init__()
        self.layers = layers

    @classmethod
    def from_config(cls, config: ResidualTopologyConfig, build: BuildChild) -> ResidualTopology:
        return cls(build_children(config.layers, build))

    def forward(self, x: torch.Tensor, ctx: ForwardContext | None = None) -> torch.Tensor:
        return x + run_in_order(self.layers, x, ctx)
