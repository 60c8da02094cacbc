"""Gated feed-forward blocks (Shazeer, 2020): w2(act(w1 x) * w3 x)."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from caramba.layers.base import BuildChild, ForwardContext, LayerConfig


class GLUConfig(LayerConfig):
    d_model: int = Field(..., gt=0, description="input and output features")
    d_ff: int = Field(..., gt=0, description="hidden features of the gated projection")
    bias: bool = Field(False, description="add learned biases to w1, w2, w3")


class _GatedFeedForward(nn.Module):
    """w1 is the gate (through the activation), w3 the value, w2 projects back (Llama naming)."""

    def __init__(self, d_model: int, d_ff: int, bias: bool = False) -> None:
        super().__init__()
        self.w1 = nn.Linear(d_model, d_ff, bias=bias)
        self.w3 = nn.Linear(d_model, d_ff, bias=bias)
        self.w2 = nn.Linear(d_ff, d_model, bias=bias)

    @classmethod
    def from_config(cls, config: GLUConfig, build: BuildChild) -> _GatedFeedForward:
        return cls(config.d_model, config.d_ff, bias=config.bias)

    def activation(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor, ctx: ForwardContext | None = None) -> torch.Tensor:
        return self.w2(self.activation(self.w1(x)) * self.w3(x))


class SwiGLUConfig(GLUConfig):
    type: Literal["SwiGLULayer"] = "SwiGLULayer"


class SwiGLULayer(_GatedFeedForward):
    """SwiGLU feed-forward (Llama): w2(silu(w1 x) * w3 x)."""

    Config = SwiGLUConfig

    def activation(self, x: torch.Tensor) -> torch.Tensor:
        return F.silu(x)


class GEGLUConfig(GLUConfig):
    type: Literal["GEGLULayer"] = "GEGLULayer"


class GEGLULayer(_GatedFeedForward):
    """GEGLU feed-forward: w2(gelu(w1 x) * w3 x), exact (erf) GELU."""

    Config = GEGLUConfig

    def activation(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(x)
