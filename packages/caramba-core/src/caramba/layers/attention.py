"""Multi-head causal self-attention with optional grouped KV heads, RoPE and a KV cache."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from caramba.layers.base import BuildChild, ForwardContext, LayerConfig
from caramba.layers.rotary import RotaryCache, apply_rotary


class AttentionLayerConfig(LayerConfig):
    type: Literal["AttentionLayer"] = "AttentionLayer"
    d_model: int = Field(..., gt=0, description="input and output features")
    n_heads: int = Field(..., gt=0, description="query heads")
    n_kv_heads: int | None = Field(
        None, gt=0, description="key/value heads; defaults to n_heads (mode gqa: divides n_heads)"
    )
    mode: Literal["standard", "gqa"] = Field(
        "standard", description="standard: one KV head per query head; gqa: shared KV heads"
    )
    head_dim: int | None = Field(None, gt=0, description="features per head; d_model // n_heads")
    rope: bool = Field(True, description="rotate q and k by absolute position (RoPE)")
    rope_base: float = Field(10000.0, gt=0.0, description="RoPE frequency base (theta)")
    bias: bool = Field(False, description="add learned biases to wq, wk, wv, wo")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout on attention weights")
    causal: bool = Field(True, description="each token attends only to itself and the past")

    @property
    def kv_heads(self) -> int:
        return self.n_heads if self.n_kv_heads is None else self.n_kv_heads

    @property
    def resolved_head_dim(self) -> int:
        return self.d_model // self.n_heads if self.head_dim is None else self.head_dim

    @model_validator(mode="after")
    def _check_shapes(self) -> AttentionLayerConfig:
        if self.head_dim is None and self.d_model % self.n_heads:
            raise ValueError(
                f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads}), "
                "or set head_dim explicitly"
            )
        if self.mode == "standard" and self.kv_heads != self.n_heads:
            raise ValueError(
                f"mode 'standard' needs n_kv_heads ({self.kv_heads}) == n_heads "
                f"({self.n_heads}); use mode 'gqa' for shared key/value heads"
            )
        if self.n_heads % self.kv_heads:
            raise ValueError(
                f"n_heads ({self.n_heads}) must be divisible by n_kv_heads ({self.kv_heads})"
            )
        if self.rope and self.resolved_head_dim % 2:
            raise ValueError(
                f"head_dim ({self.resolved_head_dim}) must be even when rope is enabled"
            )
        return self


@dataclass
class KVCache:
    """Keys and values seen so far, (B, n_kv_heads, S, head_dim), after RoPE."""

    k: torch.Tensor
    v: torch.Tensor

    @property
    def length(self) -> int:
        return self.k.shape[2]


class AttentionLayer(nn.Module):
    """Self-attention through `F.scaled_dot_product_attention` (flash/memory-efficient kernels).

    Incremental decoding: when `ctx.state` is not None, this module keeps its keys and values
    in `ctx.state` and attends over all of them, so feeding a sequence in chunks gives the same
    output as one full call. RoPE positions are `ctx.position + t`; the caller keeps
    `ctx.position` equal to the number of tokens already cached.
    """

    Config = AttentionLayerConfig

    def __init__(self, config: AttentionLayerConfig) -> None:
        super().__init__()
        self.n_heads = config.n_heads
        self.n_kv_heads = config.kv_heads
        self.head_dim = config.resolved_head_dim
        self.causal = config.causal
        self.dropout = config.dropout
        q_dim, kv_dim = self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim
        self.wq = nn.Linear(config.d_model, q_dim, bias=config.bias)
        self.wk = nn.Linear(config.d_model, kv_dim, bias=config.bias)
        self.wv = nn.Linear(config.d_model, kv_dim, bias=config.bias)
        self.wo = nn.Linear(q_dim, config.d_model, bias=config.bias)
        self.rotary = RotaryCache(self.head_dim, config.rope_base) if config.rope else None

    @classmethod
    def from_config(cls, config: AttentionLayerConfig, build: BuildChild) -> AttentionLayer:
        return cls(config)

    def forward(self, x: torch.Tensor, ctx: ForwardContext | None = None) -> torch.Tensor:
        B, T, _ = x.shape
        q = self.wq(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.wk(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.wv(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        if self.rotary is not None:
            cos, sin = self.rotary(0 if ctx is None else ctx.position, T, x.device)
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)

        k, v = self._update_cache(k, v, ctx)
        past = k.shape[2] - T
        if self.n_kv_heads != self.n_heads:
            # Query head h reads KV head h // group, as in Llama 2 and `enable_gqa` (torch>=2.5).
            group = self.n_heads // self.n_kv_heads
            k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)

        mask = None
        is_causal = self.causal and past == 0 and T > 1
        if self.causal and past > 0 and T > 1:
            # Query i sits at cache position past + i and sees keys 0 .. past + i.
            mask = torch.ones(T, past + T, dtype=torch.bool, device=x.device).tril(diagonal=past)
        y = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=is_causal,
        )
        return self.wo(y.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim))

    def _update_cache(
        self, k: torch.Tensor, v: torch.Tensor, ctx: ForwardContext | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Append k, v to this module's cache (if decoding) and return all keys and values.

        The one place that knows the cache format: quantized or compressed caches replace it.
        """
        if ctx is None or ctx.state is None:
            return k, v
        cache: KVCache | None = ctx.module_state(self)
        if cache is not None:
            k = torch.cat((cache.k, k), dim=2)
            v = torch.cat((cache.v, v), dim=2)
        ctx.set_module_state(self, KVCache(k, v))
        return k, v
