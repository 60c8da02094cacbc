"""A plain affine projection, used for output heads and any projection a manifest spells out."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from caramba.layers.base import BuildChild, ForwardContext, LayerConfig


class LinearLayerConfig(LayerConfig):
    type: Literal["LinearLayer"] = "LinearLayer"
    d_in: int = Field(..., gt=0, description="input features")
    d_out: int = Field(..., gt=0, description="output features")
    bias: bool = Field(False, description="add a learned bias")


class LinearLayer(nn.Linear):
    """`nn.Linear` with the node contract; parameters are `weight` (d_out, d_in) and `bias`.

    Subclassing keeps `isinstance(m, nn.Linear)` true, so weight tying, quantization and
    parallelism passes that look for linears find it.
    """

    Config = LinearLayerConfig

    @classmethod
    def from_config(cls, config: LinearLayerConfig, build: BuildChild) -> LinearLayer:
        return cls(config.d_in, config.d_out, bias=config.bias)

    def forward(self, x: torch.Tensor, ctx: ForwardContext | None = None) -> torch.Tensor:
        return super().forward(x)
