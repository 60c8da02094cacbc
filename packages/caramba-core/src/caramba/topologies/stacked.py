"""Sequential composition."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from caramba.layers.base import BuildChild, ForwardContext
from caramba.topologies._common import ChildrenConfig, build_children, run_in_order


class StackedTopologyConfig(ChildrenConfig):
    type: Literal["StackedTopology"] = "StackedTopology"


class StackedTopology(nn.Module):
    """y = f_n(... f_2(f_1(x))): children applied in order, like `nn.Sequential`."""

    Config = StackedTopologyConfig

    def __init__(self, layers: nn.ModuleList) -> None:
        super().__init__()
        self.layers = layers

    @classmethod
    def from_config(cls, config: StackedTopologyConfig, build: BuildChild) -> StackedTopology:
        return cls(build_children(config.layers, build))

    def forward(self, x: torch.Tensor, ctx: ForwardContext | None = None) -> torch.Tensor:
        return run_in_order(self.layers, x, ctx)
