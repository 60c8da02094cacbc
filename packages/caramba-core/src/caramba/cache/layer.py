"""A layer's KV cache: standard (k, v) and decoupled for DBA (k_sem, k_geo, v).

Attention reads a cache through one method, `attend`. A single new token whose cache the
decode kernels can read (every tensor in the per-head layout, no full-precision rows pending)
goes through `caramba.kernels.dispatch` — so an installed C++ or Triton backend serves it;
everything else (prefill, multi-token chunks, quantized caches with an exact tail) takes the
exact path over the dequantized keys and values.
"""

from __future__ import annotations

import math

import torch

from caramba.cache.attend import dba_qk, exact_attention
from caramba.cache.plan import DecodePlan
from caramba.cache.tensor import CacheTensor
from caramba.kernels.dispatch import get_backend


def _row(q: torch.Tensor) -> torch.Tensor:
    """(B, H, 1, D) query -> the kernels' (B, H, D) float32, contiguous."""
    return q[:, :, 0].to(torch.float32).contiguous()


class _CacheBase:
    tensors: tuple[CacheTensor, ...]

    def __init__(self, plan: DecodePlan | None, use_kernels: bool) -> None:
        self.plan = plan or DecodePlan()
        self.use_kernels = use_kernels
        self.kernel_calls = 0  # decode steps served by the kernels (for tests and reports)
        self.exact_calls = 0

    @property
    def length(self) -> int:
        return self.tensors[0].length

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    @property
    def bytes_per_token(self) -> int:
        return sum(t.bytes_per_token for t in self.tensors)

    @property
    def kinds(self) -> dict[str, str]:
        return {t.name: t.kind for t in self.tensors}

    def truncate(self, n: int) -> None:
        for t in self.tensors:
            t.truncate(n)

    def _sync_capacity(self) -> None:
        """The kernels take every tensor with one S_max: grow the laggards (a quantized
        tensor's storage fills a block later than a plain one's)."""
        capacity = max(t.capacity for t in self.tensors)
        for t in self.tensors:
            t.reserve(capacity, exact=True)

    def _kernel_step(self, q: torch.Tensor) -> bool:
        return (
            self.use_kernels
            and q.shape[2] == 1
            and not q.requires_grad
            and all(t.kernel_ready for t in self.tensors)
        )

    def _span(self, T: int) -> int | None:
        return self.plan.span(self.length) if T == 1 else None

    def _lengths(self, q: torch.Tensor) -> torch.Tensor:
        return torch.full((q.shape[0],), self.length, dtype=torch.int32, device=q.device)


class LayerKVCache(_CacheBase):
    """Keys and values of one standard / GQA attention layer, (B, Hkv, n, D) each."""

    def __init__(self, k: CacheTensor, v: CacheTensor, plan: DecodePlan | None = None,
                 use_kernels: bool = True) -> None:
        super().__init__(plan, use_kernels)
        self.k, self.v = k, v
        self.tensors = (k, v)

    def append(self, k: torch.Tensor, v: torch.Tensor) -> None:
        self.k.append(k)
        self.v.append(v)
        self._sync_capacity()

    def attend(self, q: torch.Tensor, *, scale: float | None = None, causal: bool = True,
               dropout_p: float = 0.0) -> torch.Tensor:
        """Attention of q (B, Hq, T, D) — the newest T tokens, already appended — over the
        cache; returns (B, Hq, T, Dv)."""
        if self._kernel_step(q):
            self.kernel_calls += 1
            out = get_backend(q.device).decode_attention(
                _row(q), self.k.kernel_view(), self.v.kernel_view(),
                self._lengths(q), 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale,
                self.k.fmt.name, self.v.fmt.name)
            return out.unsqueeze(2).to(q.dtype)
        self.exact_calls += 1
        span = self._span(q.shape[2])
        return exact_attention(q, self.k.read(q.dtype, span), self.v.read(q.dtype, span),
                               scale=scale, causal=causal, dropout_p=dropout_p,
                               length=self.length)


class DecoupledKVCache(_CacheBase):
    """DBA's cache: semantic keys (no RoPE), geometric keys (after RoPE) and values, each in
    its own kind."""

    def __init__(self, k_sem: CacheTensor, k_geo: CacheTensor, v: CacheTensor,
                 plan: DecodePlan | None = None, use_kernels: bool = True) -> None:
        super().__init__(plan, use_kernels)
        self.k_sem, self.k_geo, self.v = k_sem, k_geo, v
        self.tensors = (k_sem, k_geo, v)

    def append(self, k_sem: torch.Tensor, k_geo: torch.Tensor, v: torch.Tensor) -> None:
        self.k_sem.append(k_sem)
        self.k_geo.append(k_geo)
        self.v.append(v)
        self._sync_capacity()

    def attend(self, q_sem: torch.Tensor, q_geo: torch.Tensor, *, scale_sem: float,
               scale_geo: float, causal: bool = True, dropout_p: float = 0.0) -> torch.Tensor:
        """score = (q_sem . k_sem) scale_sem + (q_geo . k_geo) scale_geo, one softmax."""
        if self._kernel_step(q_sem):
            self.kernel_calls += 1
            out = get_backend(q_sem.device).dba_decode_attention(
                _row(q_sem), _row(q_geo), self.k_sem.kernel_view(),
                self.k_geo.kernel_view(), self.v.kernel_view(), self._lengths(q_sem),
                scale_sem, scale_geo, self.k_sem.fmt.name, self.k_geo.fmt.name,
                self.v.fmt.name)
            return out.unsqueeze(2).to(q_sem.dtype)
        self.exact_calls += 1
        dtype, span = q_sem.dtype, self._span(q_sem.shape[2])
        q, k = dba_qk(q_sem, q_geo, self.k_sem.read(dtype, span), self.k_geo.read(dtype, span),
                      scale_sem, scale_geo)
        return exact_attention(q, k, self.v.read(dtype, span), scale=1.0, causal=causal,
                               dropout_p=dropout_p, length=self.length)
