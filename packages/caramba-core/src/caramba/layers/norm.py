"""Normalization layers: LayerNorm and RMSNorm over the last dimension."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from caramba.layers.base import BuildChild, ForwardContext, LayerConfig


class LayerNormLayerConfig(LayerConfig):
    type: Literal["LayerNormLayer"] = "LayerNormLayer"
    d_model: int = Field(..., gt=0, description="size of the normalized (last) dimension")
    eps: float = Field(1e-5, gt=0.0, description="added to the variance for stability")
    elementwise_affine: bool = Field(True, description="learn a per-feature scale")
    bias: bool = Field(True, description="learn a per-feature shift (needs elementwise_affine)")


class LayerNormLayer(nn.LayerNorm):
    """`nn.LayerNorm` with the node contract; parameters are `weight` and `bias`."""

    Config = LayerNormLayerConfig

    @classmethod
    def from_config(cls, config: LayerNormLayerConfig, build: BuildChild) -> LayerNormLayer:
        return cls(
            config.d_model,
            eps=config.eps,
            elementwise_affine=config.elementwise_affine,
            bias=config.bias and config.elementwise_affine,
        )

    def forward(self, x: torch.Tensor, ctx: ForwardContext | None = None) -> torch.Tensor:
        return super().forward(x)


class RMSNormLayerConfig(LayerConfig):
    type: Literal["RMSNormLayer"] = "RMSNormLayer"
    d_model: int = Field(..., gt=0, description="size of the normalized (last) dimension")
    eps: float = Field(1e-5, gt=0.0, description="added to the mean square for stability")


class RMSNormLayer(nn.Module):
    """RMSNorm (Zhang & Sennrich, 2019): x / rms(x) * weight, no mean subtraction or bias.

    Computed in float32 and cast back: the mean of squares underflows or loses precision in
    bf16/fp16. Written out because `nn.RMSNorm` needs torch>=2.4.
    """

    Config = RMSNormLayerConfig

    def __init__(self, d_model: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d_model))

    @classmethod
    def from_config(cls, config: RMSNormLayerConfig, build: BuildChild) -> RMSNormLayer:
        return cls(config.d_model, eps=config.eps)

    def forward(self, x: torch.Tensor, ctx: ForwardContext | None = None) -> torch.Tensor:
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return (normed * self.weight.float()).to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"
