"""Rotary position embedding (Su et al., 2021), shared by `RoPE` and `AttentionLayer`.

Rotate-half convention (GPT-NeoX, Llama in Hugging Face): feature i is paired with feature
i + dim/2, and the pair is rotated by angle `position * inv_freq[i]`, where
`inv_freq[i] = base**(-2i/dim)`, optionally rescaled per frequency (`RopeScaling`).
Checkpoints that use the interleaved convention (feature 2i with 2i+1) need their q/k
weights permuted.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn


class RopeScaling(BaseModel):
    """Llama 3.x RoPE frequency scaling (`rope_type: llama3` in a Hugging Face config.json).

    Frequencies whose wavelength (2*pi / inv_freq, in tokens) is shorter than
    original_max_position_embeddings / high_freq_factor are kept; those longer than
    original_max_position_embeddings / low_freq_factor are divided by `factor`; in between
    the two are blended linearly in original_max_position_embeddings / wavelength. Because
    the rule acts on each frequency, a RoPE of another width (a DBA geometric path) with the
    same scaling keeps exactly the scaled frequencies it shares with the teacher.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    type: Literal["llama3"] = Field(..., description="scaling rule; only 'llama3'")
    factor: float = Field(..., ge=1.0, description="divisor of the lowest frequencies")
    low_freq_factor: float = Field(..., gt=0.0, description="long-wavelength threshold divisor")
    high_freq_factor: float = Field(
        ..., gt=0.0, description="short-wavelength threshold divisor; above low_freq_factor"
    )
    original_max_position_embeddings: int = Field(
        ..., gt=0, description="context length the model was pretrained with (8192 for Llama 3)"
    )

    @model_validator(mode="after")
    def _ordered(self) -> RopeScaling:
        if self.high_freq_factor <= self.low_freq_factor:
            raise ValueError(
                f"high_freq_factor ({self.high_freq_factor}) must be greater than "
                f"low_freq_factor ({self.low_freq_factor})"
            )
        return self

    def apply(self, inv_freq: torch.Tensor) -> torch.Tensor:
        """The scaled inverse frequencies (same shape and dtype; computed in float64)."""
        f = inv_freq.double()
        wavelen = 2 * math.pi / f
        context = self.original_max_position_embeddings
        low, high = self.low_freq_factor, self.high_freq_factor
        smooth = (context / wavelen - low) / (high - low)
        blended = (1 - smooth) * f / self.factor + smooth * f
        scaled = torch.where(wavelen > context / low, f / self.factor,
                             torch.where(wavelen < context / high, f, blended))
        return scaled.to(inv_freq.dtype)


def inverse_frequencies(dim: int, base: float, scaling: RopeScaling | None = None) -> torch.Tensor:
    """inv_freq (dim/2,) float32 on the CPU: base**(-2i/dim), rescaled by `scaling`."""
    exponents = torch.arange(0, dim, 2, dtype=torch.float32, device="cpu") / dim
    inv_freq = 1.0 / (base**exponents)
    return inv_freq if scaling is None else scaling.apply(inv_freq)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(x1, x2) -> (-x2, x1) on the two halves of the last dimension."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x (..., T, dim) by per-position angles; cos and sin are (T, dim) in float32.

    The rotation is done in float32 and cast back, so bf16 activations keep exact angles.
    """
    x32 = x.float()
    return (x32 * cos + rotate_half(x32) * sin).to(x.dtype)


class RotaryCache(nn.Module):
    """cos/sin tables for positions [0, n), grown on demand and sliced per call.

    The tables are plain float32 attributes, not buffers: they stay out of checkpoints (they
    are a pure function of dim, base and scaling) and `model.to(bfloat16)` cannot round the
    angles. They are rebuilt when a call asks for another device.
    """

    def __init__(self, dim: int, base: float = 10000.0, scaling: RopeScaling | None = None
                 ) -> None:
        super().__init__()
        if dim % 2:
            raise ValueError(f"rotary dim ({dim}) must be even")
        self.dim = dim
        self.base = base
        self.scaling = scaling
        self._cos = torch.empty(0, dim)
        self._sin = torch.empty(0, dim)

    @property
    def inv_freq(self) -> torch.Tensor:
        """The (dim/2,) float32 angular frequencies this cache rotates by, scaling applied."""
        return inverse_frequencies(self.dim, self.base, self.scaling)

    def _build(self, n: int, device: torch.device) -> None:
        inv_freq = self.inv_freq.to(device)
        freqs = torch.outer(torch.arange(n, device=device, dtype=torch.float32), inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        self._cos, self._sin = emb.cos(), emb.sin()

    def forward(
        self, start: int, length: int, device: torch.device | str = "cpu"
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(cos, sin), each (length, dim) float32, for positions start .. start+length-1."""
        end = start + length
        device = torch.device(device)
        if end > self._cos.shape[0] or self._cos.device != device:
            self._build(max(end, 2 * self._cos.shape[0], 256), device)
        return self._cos[start:end], self._sin[start:end]

    def at(self, position: torch.Tensor, limit: int, device: torch.device | str = "cpu"
           ) -> tuple[torch.Tensor, torch.Tensor]:
        """(cos, sin), each (1, dim), for a device-side position (0-d int64 tensor) below
        `limit`: a gather, so a CUDA graph replays it at whatever position it holds. The
        tables grow here, never during replay (`limit` bounds every replayed position)."""
        device = torch.device(device)
        if limit > self._cos.shape[0] or self._cos.device != device:
            self._build(max(limit, 2 * self._cos.shape[0], 256), device)
        index = position.view(1)
        return self._cos.index_select(0, index), self._sin.index_select(0, index)

    def extra_repr(self) -> str:
        scaling = "" if self.scaling is None else (
            f", scaling={self.scaling.type}(factor={self.scaling.factor})")
        return f"dim={self.dim}, base={self.base}{scaling}"
