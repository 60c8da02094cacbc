"""A block of children repeated with independent weights (a stack of N transformer blocks)."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from caramba.layers.base import BuildChild, ForwardContext
from caramba.topologies._common import ChildrenConfig, build_children, run_in_order


class NestedTopologyConfig(ChildrenConfig):
    type: Literal["NestedTopology"] = "NestedTopology"
    repeat: int = Field(
        1, ge=1, le=4096, description="copies of the children, each with its own weights"
    )


class NestedTopology(nn.Module):
    """The children sequence repeated `repeat` times, every copy with independent parameters.

    Children [a, b] with repeat 3 run as a0 b0 a1 b1 a2 b2, stored flat in `layers`
    (`layers.0` is a0, `layers.3` is b1). Each copy is built and initialized separately.
    Compare `CyclicTopology`, which repeats the same weights.
    """

    Config = NestedTopologyConfig

    def __init__(self, layers: nn.ModuleList) -> None:
        super().__init__()
        self.layers = layers

    @classmethod
    def from_config(cls, config: NestedTopologyConfig, build: BuildChild) -> NestedTopology:
        return cls(build_children(config.layers * config.repeat, build))

    def forward(self, x: torch.Tensor, ctx: ForwardContext | None = None) -> torch.Tensor:
        return run_in_order(self.layers, x, ctx)
