"""Dropout as a node, so residual and embedding dropout are placed explicitly in a manifest."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from caramba.layers.base import BuildChild, ForwardContext, LayerConfig


class DropoutLayerConfig(LayerConfig):
    type: Literal["DropoutLayer"] = "DropoutLayer"
    p: float = Field(0.0, ge=0.0, lt=1.0, description="probability of zeroing an element")


class DropoutLayer(nn.Dropout):
    """`nn.Dropout` with the node contract: active in train mode only."""

    Config = DropoutLayerConfig

    @classmethod
    def from_config(cls, config: DropoutLayerConfig, build: BuildChild) -> DropoutLayer:
        return cls(p=config.p)

    def forward(self, x: torch.Tensor, ctx: ForwardContext | None = None) -> torch.Tensor:
        return super().forward(x)
