"""RoPE as a standalone layer: rotates the whole feature vector of each token by its position."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from caramba.layers.base import BuildChild, ForwardContext, LayerConfig
from caramba.layers.rotary import RopeScaling, RotaryCache, apply_rotary


class RoPEConfig(LayerConfig):
    type: Literal["RoPE"] = "RoPE"
    d_model: int = Field(..., gt=0, description="size of the rotated (last) dimension; even")
    base: float = Field(10000.0, gt=0.0, description="rotary frequency base (theta)")
    scaling: RopeScaling | None = Field(
        None, description="frequency scaling, as AttentionLayer's rope_scaling; none if unset"
    )

    @model_validator(mode="after")
    def _even(self) -> RoPEConfig:
        if self.d_model % 2:
            raise ValueError(f"d_model ({self.d_model}) must be even for RoPE")
        return self


class RoPE(nn.Module):
    """Applies rotary position embedding to x (B, T, d_model), treated as one head.

    Token t is rotated by its absolute position `ctx.position + t`, rotate-half convention
    (see `caramba.layers.rotary`). Attention applies RoPE to q and k itself (`rope: true`);
    this layer is for topologies that want position mixed into the residual stream directly.
    """

    Config = RoPEConfig

    def __init__(self, d_model: int, base: float = 10000.0,
                 scaling: RopeScaling | None = None) -> None:
        super().__init__()
        self.rotary = RotaryCache(d_model, base, scaling)

    @classmethod
    def from_config(cls, config: RoPEConfig, build: BuildChild) -> RoPE:
        return cls(config.d_model, config.base, config.scaling)

    def forward(self, x: torch.Tensor, ctx: ForwardContext | None = None) -> torch.Tensor:
        if ctx is not None and ctx.step is not None:
            cos, sin = self.rotary.at(ctx.step.position, ctx.step.limit, x.device)
        else:
            cos, sin = self.rotary(0 if ctx is None else ctx.position, x.shape[-2], x.device)
        return apply_rotary(x, cos, sin)
