"""Multi-head causal self-attention: standard, grouped KV heads (GQA) and decoupled
bottleneck attention (DBA), with RoPE and a KV cache from `caramba.cache`."""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from caramba.cache.attend import dba_qk, exact_attention
from caramba.cache.spec import cache_for
from caramba.layers.base import BuildChild, ForwardContext, LayerConfig
from caramba.layers.rotary import RopeScaling, RotaryCache, apply_rotary


class AttentionLayerConfig(LayerConfig):
    type: Literal["AttentionLayer"] = "AttentionLayer"
    d_model: int = Field(..., gt=0, description="input and output features")
    n_heads: int = Field(..., gt=0, description="query heads")
    n_kv_heads: int | None = Field(
        None, gt=0, description="key/value heads; defaults to n_heads (mode gqa: divides n_heads)"
    )
    mode: Literal["standard", "gqa", "dba"] = Field(
        "standard",
        description="standard: one KV head per query head; gqa: shared KV heads; dba: "
        "decoupled bottleneck attention (a semantic path without RoPE plus a geometric path "
        "with RoPE, scores summed; KV heads shared as in gqa)",
    )
    head_dim: int | None = Field(
        None, gt=0, description="features per head; d_model // n_heads (not for mode dba)"
    )
    sem_dim: int | None = Field(
        None, gt=0,
        description="mode dba: semantic query/key width summed over the query heads (no "
        "RoPE); per head sem_dim / n_heads",
    )
    geo_dim: int | None = Field(
        None, gt=0,
        description="mode dba: geometric query/key width summed over the query heads (RoPE "
        "when rope is true); per head geo_dim / n_heads, even with RoPE",
    )
    attn_dim: int | None = Field(
        None, gt=0,
        description="mode dba: value and output width summed over the query heads; d_model "
        "if unset; per head attn_dim / n_heads",
    )
    rope: bool = Field(
        True, description="rotate q and k by absolute position (RoPE); dba: the geometric path"
    )
    rope_base: float = Field(10000.0, gt=0.0, description="RoPE frequency base (theta)")
    rope_scaling: RopeScaling | None = Field(
        None,
        description="RoPE frequency scaling; unset: none. Llama 3.x: {type: llama3, factor, "
        "low_freq_factor, high_freq_factor, original_max_position_embeddings} as in its "
        "config.json (Llama-3.2-1B: 32, 1, 4, 8192): wavelengths (2 pi / frequency) above "
        "original/low_freq_factor are divided by factor, below original/high_freq_factor "
        "kept, blended in between",
    )
    bias: bool = Field(False, description="add learned biases to the projections")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout on attention weights")
    causal: bool = Field(True, description="each token attends only to itself and the past")

    @property
    def kv_heads(self) -> int:
        return self.n_heads if self.n_kv_heads is None else self.n_kv_heads

    @property
    def resolved_head_dim(self) -> int:
        return self.d_model // self.n_heads if self.head_dim is None else self.head_dim

    @property
    def resolved_attn_dim(self) -> int:
        return self.d_model if self.attn_dim is None else self.attn_dim

    @model_validator(mode="after")
    def _check_rope_scaling(self) -> AttentionLayerConfig:
        if self.rope_scaling is not None and not self.rope:
            raise ValueError("rope_scaling needs rope: true (it rescales RoPE's frequencies)")
        return self

    @model_validator(mode="after")
    def _check_shapes(self) -> AttentionLayerConfig:
        if self.n_heads % self.kv_heads:
            raise ValueError(
                f"n_heads ({self.n_heads}) must be divisible by n_kv_heads ({self.kv_heads})"
            )
        if self.mode == "dba":
            return self._check_dba()
        for name in ("sem_dim", "geo_dim", "attn_dim"):
            if getattr(self, name) is not None:
                raise ValueError(f"{name} only applies to mode 'dba' (mode is {self.mode!r})")
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
        if self.rope and self.resolved_head_dim % 2:
            raise ValueError(
                f"head_dim ({self.resolved_head_dim}) must be even when rope is enabled"
            )
        return self

    def _check_dba(self) -> AttentionLayerConfig:
        if self.sem_dim is None or self.geo_dim is None:
            raise ValueError("mode 'dba' needs sem_dim and geo_dim (e.g. 128 and 256)")
        if self.head_dim is not None:
            raise ValueError(
                "head_dim does not apply to mode 'dba': its per-head widths are sem_dim, "
                "geo_dim and attn_dim divided by n_heads"
            )
        for name, value in (("sem_dim", self.sem_dim), ("geo_dim", self.geo_dim),
                            ("attn_dim", self.resolved_attn_dim)):
            if value % self.n_heads:
                raise ValueError(
                    f"{name} ({value}) must be divisible by n_heads ({self.n_heads}): it is "
                    "the width summed over the query heads"
                )
        if self.rope and (self.geo_dim // self.n_heads) % 2:
            raise ValueError(
                f"geo_dim / n_heads ({self.geo_dim} / {self.n_heads} = "
                f"{self.geo_dim // self.n_heads}) must be even when rope is enabled"
            )
        return self


class AttentionLayer(nn.Module):
    """Self-attention through `F.scaled_dot_product_attention` (flash/memory-efficient kernels).

    Modes standard and gqa: softmax(q k^T / sqrt(head_dim)) v per head, RoPE on q and k.

    Mode dba (decoupled bottleneck attention): each head scores keys on two small paths,

        score = (q_sem . k_sem) / sqrt(d_sem) + (q_geo . k_geo) / sqrt(d_geo)

    where the semantic path carries no position and the geometric path is rotated by RoPE;
    one softmax, then values of width attn_dim / n_heads. Only k_sem, k_geo and v are cached,
    so the cache per token is n_kv_heads * (d_sem + d_geo + d_v) values instead of
    n_kv_heads * 2 * head_dim. Training runs one SDPA call over [q_sem s_sem, q_geo s_geo] .
    [k_sem, k_geo] with scale 1, which is exactly the two-path score.

    Incremental decoding: when `ctx.state` is not None, the layer keeps a KV cache (see
    `caramba.cache`) in `ctx.state`, built from the ctx's CacheSpec (fp32 without one), and
    attends over everything cached, so feeding a sequence in chunks gives the same output as
    one full call. RoPE positions are `ctx.position + t`; the caller keeps `ctx.position`
    equal to the number of tokens already cached.
    """

    Config = AttentionLayerConfig

    def __init__(self, config: AttentionLayerConfig) -> None:
        super().__init__()
        self.mode = config.mode
        self.n_heads = config.n_heads
        self.n_kv_heads = config.kv_heads
        self.causal = config.causal
        self.dropout = config.dropout
        if config.mode == "dba":
            self._init_dba(config)
            return
        self.head_dim = config.resolved_head_dim
        q_dim, kv_dim = self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim
        self.wq = nn.Linear(config.d_model, q_dim, bias=config.bias)
        self.wk = nn.Linear(config.d_model, kv_dim, bias=config.bias)
        self.wv = nn.Linear(config.d_model, kv_dim, bias=config.bias)
        self.wo = nn.Linear(q_dim, config.d_model, bias=config.bias)
        self.rotary = (RotaryCache(self.head_dim, config.rope_base, config.rope_scaling)
                       if config.rope else None)

    def _init_dba(self, config: AttentionLayerConfig) -> None:
        """Projections of the two score paths, the values and the output.

        Every projection starts as nn.Linear's default (uniform in +-1/sqrt(d_model)),
        except that both query projections are scaled by 1/sqrt(2): the two paths' scores
        are independent sums at init, so the summed score then has the variance of one
        standard head's score, and attention starts neither sharper nor flatter than the
        standard layer's.
        """
        H, KV, D = self.n_heads, self.n_kv_heads, config.d_model
        assert config.sem_dim is not None and config.geo_dim is not None
        self.sem_head_dim = config.sem_dim // H
        self.geo_head_dim = config.geo_dim // H
        self.v_head_dim = config.resolved_attn_dim // H
        self.scale_sem = 1.0 / math.sqrt(self.sem_head_dim)
        self.scale_geo = 1.0 / math.sqrt(self.geo_head_dim)
        self.wq_sem = nn.Linear(D, H * self.sem_head_dim, bias=config.bias)
        self.wk_sem = nn.Linear(D, KV * self.sem_head_dim, bias=config.bias)
        self.wq_geo = nn.Linear(D, H * self.geo_head_dim, bias=config.bias)
        self.wk_geo = nn.Linear(D, KV * self.geo_head_dim, bias=config.bias)
        self.wv = nn.Linear(D, KV * self.v_head_dim, bias=config.bias)
        self.wo = nn.Linear(H * self.v_head_dim, D, bias=config.bias)
        with torch.no_grad():
            self.wq_sem.weight.mul_(2**-0.5)
            self.wq_geo.weight.mul_(2**-0.5)
        self.rotary = (RotaryCache(self.geo_head_dim, config.rope_base, config.rope_scaling)
                       if config.rope else None)

    @classmethod
    def from_config(cls, config: AttentionLayerConfig, build: BuildChild) -> AttentionLayer:
        return cls(config)

    def cache_shapes(self) -> dict[str, tuple[int, int]]:
        """(heads, head_dim) of each tensor this layer caches per token."""
        if self.mode == "dba":
            return {"k_sem": (self.n_kv_heads, self.sem_head_dim),
                    "k_geo": (self.n_kv_heads, self.geo_head_dim),
                    "v": (self.n_kv_heads, self.v_head_dim)}
        return {"k": (self.n_kv_heads, self.head_dim), "v": (self.n_kv_heads, self.head_dim)}

    def _heads(self, proj: nn.Linear, x: torch.Tensor, heads: int) -> torch.Tensor:
        B, T, _ = x.shape
        return proj(x).view(B, T, heads, -1).transpose(1, 2)

    def _rope(self, x: torch.Tensor, ctx: ForwardContext | None, *tensors: torch.Tensor):
        if self.rotary is None:
            return tensors
        if ctx is not None and ctx.step is not None:
            cos, sin = self.rotary.at(ctx.step.position, ctx.step.limit, x.device)
        else:
            cos, sin = self.rotary(0 if ctx is None else ctx.position, x.shape[1], x.device)
        return tuple(apply_rotary(t, cos, sin) for t in tensors)

    def _staged_cache(self, ctx: ForwardContext):
        """The cache a staged step (ctx.step: one token at a device-side position) writes:
        it must exist already (built by the prefill), and the step leaves the host-side
        bookkeeping to the caller (caramba.infer.step_graph)."""
        cache = ctx.module_state(self)
        if cache is None:
            raise RuntimeError("a staged decode step needs the caches a prefill builds first")
        return cache

    def forward(self, x: torch.Tensor, ctx: ForwardContext | None = None) -> torch.Tensor:
        if self.mode == "dba":
            return self._forward_dba(x, ctx)
        B, T, _ = x.shape
        q = self._heads(self.wq, x, self.n_heads)
        k = self._heads(self.wk, x, self.n_kv_heads)
        v = self._heads(self.wv, x, self.n_kv_heads)
        q, k = self._rope(x, ctx, q, k)
        dropout = self.dropout if self.training else 0.0
        if ctx is not None and ctx.step is not None:
            cache = self._staged_cache(ctx)
            cache.stage(ctx.step.position, k, v)
            y = cache.attend_staged(ctx.step.position, [q], [1.0 / math.sqrt(self.head_dim)])
        elif ctx is None or ctx.state is None:
            y = exact_attention(q, k, v, causal=self.causal, dropout_p=dropout)
        else:
            cache = cache_for(self, ctx, self.cache_shapes(), B, x.device, k.dtype)
            cache.append(k, v)
            y = cache.attend(q, causal=self.causal, dropout_p=dropout)
        return self.wo(y.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim))

    def _forward_dba(self, x: torch.Tensor, ctx: ForwardContext | None) -> torch.Tensor:
        B, T, _ = x.shape
        q_sem = self._heads(self.wq_sem, x, self.n_heads)
        k_sem = self._heads(self.wk_sem, x, self.n_kv_heads)
        q_geo = self._heads(self.wq_geo, x, self.n_heads)
        k_geo = self._heads(self.wk_geo, x, self.n_kv_heads)
        v = self._heads(self.wv, x, self.n_kv_heads)
        q_geo, k_geo = self._rope(x, ctx, q_geo, k_geo)
        dropout = self.dropout if self.training else 0.0
        if ctx is not None and ctx.step is not None:
            cache = self._staged_cache(ctx)
            cache.stage(ctx.step.position, k_sem, k_geo, v)
            y = cache.attend_staged(ctx.step.position, [q_sem, q_geo],
                                    [self.scale_sem, self.scale_geo])
        elif ctx is None or ctx.state is None:
            q, k = dba_qk(q_sem, q_geo, k_sem, k_geo, self.scale_sem, self.scale_geo)
            y = exact_attention(q, k, v, scale=1.0, causal=self.causal, dropout_p=dropout)
        else:
            cache = cache_for(self, ctx, self.cache_shapes(), B, x.device, v.dtype)
            cache.append(k_sem, k_geo, v)
            y = cache.attend(q_sem, q_geo, scale_sem=self.scale_sem, scale_geo=self.scale_geo,
                             causal=self.causal, dropout_p=dropout)
        return self.wo(y.transpose(1, 2).reshape(B, T, self.n_heads * self.v_head_dim))
