"""Rotary position embedding (Su et al., 2021), shared by `RoPE` and `AttentionLayer`.

Rotate-half convention (GPT-NeoX, Llama in Hugging Face): feature i is paired with feature
i + dim/2, and the pair is rotated by angle `position * base**(-2i/dim)`. Checkpoints that use
the interleaved convention (feature 2i with 2i+1) need their q/k weights permuted.
"""

from __future__ import annotations

import torch
from torch import nn


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
    are a pure function of dim and base) and `model.to(bfloat16)` cannot round the angles.
    They are rebuilt when a call asks for another device.
    """

    def __init__(self, dim: int, base: float = 10000.0) -> None:
        super().__init__()
        if dim % 2:
            raise ValueError(f"rotary dim ({dim}) must be even")
        self.dim = dim
        self.base = base
        self._cos = torch.empty(0, dim)
        self._sin = torch.empty(0, dim)

    def _build(self, n: int, device: torch.device) -> None:
        exponents = torch.arange(0, self.dim, 2, device=device, dtype=torch.float32) / self.dim
        inv_freq = 1.0 / (self.base**exponents)
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

    def extra_repr(self) -> str:
        return f"dim={self.dim}, base={self.base}"
