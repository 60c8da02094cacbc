"""A layer defined outside caramba-core: y = scale · tanh(x / scale), a soft clamp.

It follows the same contract as core's layers (`Config`, `from_config`, `forward`) and is
registered only by this package's entry point.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from caramba.layers.base import ForwardContext, LayerConfig


class ScaledTanhConfig(LayerConfig):
    type: Literal["ScaledTanhLayer"] = "ScaledTanhLayer"
    scale: float = Field(3.0, gt=0.0, description="output magnitude bound")


class ScaledTanhLayer(nn.Module):
    Config = ScaledTanhConfig

    def __init__(self, config: ScaledTanhConfig) -> None:
        super().__init__()
        self.scale = config.scale

    @classmethod
    def from_config(cls, config: ScaledTanhConfig, build: object) -> ScaledTanhLayer:
        return cls(config)

    def forward(self, x: torch.Tensor, ctx: ForwardContext | None = None) -> torch.Tensor:
        return self.scale * torch.tanh(x / self.scale)
