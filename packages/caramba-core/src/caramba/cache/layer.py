"""A layer's KV cache: standard (k, v) and decoupled for DBA (k_sem, k_geo, v).

Attention reads a cache through one method, `attend`. A single new token (decoding) goes
through the decode kernels (`caramba.kernels.dispatch`, so an installed C++ or Triton backend
serves it) in two exact pieces merged by log-sum-exp:

    prefix  tokens 0 .. P-1 that every tensor holds in storage (quantized or plain, head or
            token layout): the backend's fused decode, return_lse=True;
    tail    tokens P .. length-1 that a quantized tensor still holds in full precision (fewer
            than a block): `partial_attention` over those few rows.

Prefill and multi-token chunks (speculative verification), autograd, and caches with kernels
off take the exact path over the dequantized keys and values.
"""

from __future__ import annotations

import logging
import math

import torch

from caramba.cache.attend import dba_qk, exact_attention, partial_attention
from caramba.cache.graphs import (
    DecodeGraphs,
    graph_mode,
    graphs_enabled,
    staged_attention,
    staged_mode,
)
from caramba.cache.plan import DecodePlan
from caramba.cache.tensor import CacheTensor
from caramba.kernels.dispatch import call_decode, get_backend
from caramba.kernels.merge import merge_partials

log = logging.getLogger("caramba.cache")


def _row(q: torch.Tensor) -> torch.Tensor:
    """(B, H, 1, D) query -> the kernels' (B, H, D) float32, contiguous."""
    return q[:, :, 0].to(torch.float32).contiguous()


class _CacheBase:
    tensors: tuple[CacheTensor, ...]

    def __init__(self, plan: DecodePlan | None, use_kernels: bool,
                 use_graphs: bool = True) -> None:
        self.plan = plan or DecodePlan()
        self.use_kernels = use_kernels
        self.use_graphs = use_graphs  # CUDA-graph decode steps (caramba.cache.graphs)
        self.graphs = DecodeGraphs()
        # Decode steps by how they were served (for tests and reports): the backend read the
        # stored prefix / the full-precision tail was attended exactly and merged / the whole
        # step took the exact path.
        self.kernel_calls = 0
        self.tail_calls = 0
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

    def _decode(self, op: str, qs: list[torch.Tensor], scales: list[float]) -> torch.Tensor:
        """One decode step (qs: the (B, Hq, 1, D) queries, one per key tensor), prefix through
        the backend and tail exactly, merged; returns (B, Hq, 1, Dv) in the query dtype."""
        *keys, v = self.tensors
        prefix = min(t.stored for t in self.tensors)  # what every tensor holds in storage
        mode = graph_mode(self.tensors) if self.use_graphs and prefix else None
        if mode is not None and not self.graphs.failed and graphs_enabled():
            try:
                out = self.graphs.step(self.tensors, mode, op, qs, scales)
            except RuntimeError as exc:  # a backend that cannot be captured: stay eager
                self.graphs.failed = True
                log.warning("decode step not capturable as a CUDA graph (%s); eager from now",
                            exc)
            else:
                self.kernel_calls += 1
                self.tail_calls += prefix < self.length
                return out.unsqueeze(2).to(qs[0].dtype, copy=True)
        rows = [_row(q) for q in qs]
        out = lse = None
        if prefix:
            self.kernel_calls += 1
            lengths = torch.full((rows[0].shape[0],), prefix, dtype=torch.int32,
                                 device=rows[0].device)
            views = [t.kernel_view() for t in self.tensors]
            out, lse = call_decode(
                get_backend(rows[0].device), op, *rows, *views, lengths, *scales,
                *(t.fmt.name for t in self.tensors), return_lse=True)
        if prefix < self.length:
            self.tail_calls += 1
            tail = partial_attention(rows, [k.recent(prefix) for k in keys], scales,
                                     v.recent(prefix))
            out, lse = tail if out is None else merge_partials(out, lse, *tail)
        assert out is not None
        return out.unsqueeze(2).to(qs[0].dtype)

    def _span(self, T: int) -> int | None:
        return self.plan.span(self.length) if T == 1 else None

    # ------------------------------------------------------------------ staged steps
    # A staged step (caramba.infer.step_graph) writes and attends one token at a device-side
    # position, so a CUDA graph of the whole model step replays it: prepare_stage (host:
    # room for the token) -> stage + attend_staged (device) -> commit (host bookkeeping).

    DECODE_OP = "decode_attention"

    def stage_ready(self) -> bool:
        """Whether a staged step can serve this cache now: kernels on, every tensor plain or
        every one blocked alike, and (with tails) at least one block stored, so the prefix
        the backend reads is never empty."""
        mode = staged_mode(self.tensors)
        if not self.use_kernels or mode is None:
            return False
        return mode == "plain" or min(t.stored for t in self.tensors) > 0

    def prepare_stage(self) -> tuple:
        """Room for one more token in every tensor; returns the storage identity (pointers and
        capacities) a captured step is valid for."""
        for t in self.tensors:
            t.reserve(t.length + 1)
        self._sync_capacity()
        return tuple((t.storage.data_ptr(), t.capacity, t.tail.data_ptr())
                     for t in self.tensors)

    def stage(self, position: torch.Tensor, *xs: torch.Tensor) -> None:
        """Write one token's cached tensors (k, v; or k_sem, k_geo, v), each (B, H, 1, D), at
        a device-side position; `commit` counts it."""
        for t, x in zip(self.tensors, xs, strict=True):
            t.stage(x, position)

    def attend_staged(self, position: torch.Tensor, qs: list[torch.Tensor],
                      scales: list[float]) -> torch.Tensor:
        """Attention (B, Hq, 1, Dv) of the staged token's queries over everything held plus
        the staged token, every length derived on the device from `position`. A block the
        token fills is attended from the exact tail and quantized at `commit` (an eager step
        quantizes it first): at that one step the staged one is the more exact."""
        mode = staged_mode(self.tensors)
        assert mode is not None, "attend_staged needs stage_ready()"
        rows = [_row(q) for q in qs]
        if mode == "plain":
            prefix, pending = position + 1, position  # no tail: pending is unused
        else:
            pending = torch.remainder(position, self.tensors[0].block_tokens) + 1
            prefix = position + 1 - pending
        lengths = prefix.to(torch.int32).view(1).expand(rows[0].shape[0]).contiguous()
        out = staged_attention(self.tensors, mode, self.DECODE_OP, rows, scales, lengths,
                               pending)
        return out.unsqueeze(2).to(qs[0].dtype)

    def commit(self) -> None:
        """Count the staged token in every tensor (a filled tail block is quantized)."""
        for t in self.tensors:
            t.commit()
        self.kernel_calls += 1
        self.tail_calls += min(t.stored for t in self.tensors) < self.length


class LayerKVCache(_CacheBase):
    """Keys and values of one standard / GQA attention layer, (B, Hkv, n, D) each."""

    def __init__(self, k: CacheTensor, v: CacheTensor, plan: DecodePlan | None = None,
                 use_kernels: bool = True, use_graphs: bool = True) -> None:
        super().__init__(plan, use_kernels, use_graphs)
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
            scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
            return self._decode("decode_attention", [q], [scale])
        self.exact_calls += 1
        span = self._span(q.shape[2])
        return exact_attention(q, self.k.read(q.dtype, span), self.v.read(q.dtype, span),
                               scale=scale, causal=causal, dropout_p=dropout_p,
                               length=self.length)


class DecoupledKVCache(_CacheBase):
    """DBA's cache: semantic keys (no RoPE), geometric keys (after RoPE) and values, each in
    its own kind."""

    def __init__(self, k_sem: CacheTensor, k_geo: CacheTensor, v: CacheTensor,
                 plan: DecodePlan | None = None, use_kernels: bool = True,
                 use_graphs: bool = True) -> None:
        super().__init__(plan, use_kernels, use_graphs)
        self.k_sem, self.k_geo, self.v = k_sem, k_geo, v
        self.tensors = (k_sem, k_geo, v)

    def append(self, k_sem: torch.Tensor, k_geo: torch.Tensor, v: torch.Tensor) -> None:
        self.k_sem.append(k_sem)
        self.k_geo.append(k_geo)
        self.v.append(v)
        self._sync_capacity()

    DECODE_OP = "dba_decode_attention"

    def attend(self, q_sem: torch.Tensor, q_geo: torch.Tensor, *, scale_sem: float,
               scale_geo: float, causal: bool = True, dropout_p: float = 0.0) -> torch.Tensor:
        """score = (q_sem . k_sem) scale_sem + (q_geo . k_geo) scale_geo, one softmax."""
        if self._kernel_step(q_sem):
            return self._decode("dba_decode_attention", [q_sem, q_geo], [scale_sem, scale_geo])
        self.exact_calls += 1
        dtype, span = q_sem.dtype, self._span(q_sem.shape[2])
        q, k = dba_qk(q_sem, q_geo, self.k_sem.read(dtype, span), self.k_geo.read(dtype, span),
                      scale_sem, scale_geo)
        return exact_attention(q, k, self.v.read(dtype, span), scale=1.0, causal=causal,
                               dropout_p=dropout_p, length=self.length)
