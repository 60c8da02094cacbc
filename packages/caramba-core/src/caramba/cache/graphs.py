"""CUDA-graph replay of a cache's single-token decode attention.

An eager decode step costs ~40 kernel launches (the backend's fused decode, the exact tail,
the log-sum-exp merge), each a few microseconds of Python and driver time, so at batch 32
the host, not the cache read, sets the step time. The step's shapes change only when the
storage capacity does (in few, decode-plan-bucketed steps), so one graph per (op, batch,
storage buffers) is captured once and replayed every step. What changes per step lives on
the device: the prefix length (the kernels' lengths tensor) and the number of pending tail
rows (a mask over the whole fixed-size tail buffer), both written by a fill before replay.

Eligible: CUDA tensors, every cached tensor plain (no tail) or every one quantized with one
block size (the tail lives in each tensor's fixed `tail` buffer). Off with
CARAMBA_CUDA_GRAPHS=0 or CacheSpec(cuda_graphs=False).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from caramba.kernels.dispatch import call_decode, get_backend

if TYPE_CHECKING:
    from caramba.cache.tensor import CacheTensor

log = logging.getLogger("caramba.cache")

ENV = "CARAMBA_CUDA_GRAPHS"


def graphs_enabled() -> bool:
    """False when CARAMBA_CUDA_GRAPHS is 0 / off / false / no."""
    return os.environ.get(ENV, "1").strip().lower() not in ("0", "off", "false", "no")


def masked_tail_merge(
    out: torch.Tensor, lse: torch.Tensor, qs: list[torch.Tensor], ks: list[torch.Tensor],
    scales: list[float], v: torch.Tensor, pending: torch.Tensor,
) -> torch.Tensor:
    """Attention over a prefix partial (out (B, Hq, Dv), lse (B, Hq)) and the first `pending`
    rows of fixed-size tail buffers, float32 (B, Hq, Dv), without reading `pending` on the host.

    qs[i] (B, Hq, D_i) pair with ks[i] (B, Hkv, R, D_i) (score = sum_i scale_i q_i . k_i),
    v (B, Hkv, R, Dv); rows at or past `pending` (an int tensor) are masked. The prefix joins
    the softmax as one pseudo-key of score lse and value out, which is the log-sum-exp merge
    (caramba.kernels.merge) in one softmax.
    """
    B, Hq = qs[0].shape[:2]
    Hkv, R, Dv = v.shape[1], v.shape[2], v.shape[3]
    G = Hq // Hkv
    scores = None
    for q, k, scale in zip(qs, ks, scales, strict=True):
        s = (q.to(torch.float32).reshape(B, Hkv, G, q.shape[-1])
             @ k.to(torch.float32).transpose(-1, -2)) * scale
        scores = s if scores is None else scores + s
    assert scores is not None
    masked = torch.arange(R, device=v.device) >= pending
    scores = scores.masked_fill(masked, float("-inf"))
    prefix = lse.to(torch.float32).reshape(B, Hkv, G, 1)
    weights = torch.softmax(torch.cat((prefix, scores), dim=-1), dim=-1)
    merged = (weights[..., :1] * out.to(torch.float32).reshape(B, Hkv, G, Dv)
              + weights[..., 1:] @ v.to(torch.float32))
    return merged.reshape(B, Hq, Dv)


def staged_mode(tensors: tuple[CacheTensor, ...]) -> str | None:
    """"plain" (no tensor has a tail), "tail" (all quantized, one block size) or None: the
    caches a fixed-shape step (device-side lengths, whole tail buffers) can attend."""
    if any(not t.kernel_ready for t in tensors):
        return None
    if all(not t.fmt.quantized for t in tensors):
        return "plain"
    blocks = {t.block_tokens for t in tensors if t.fmt.quantized}
    if all(t.fmt.quantized for t in tensors) and len(blocks) == 1 and blocks != {0}:
        return "tail"
    return None


def graph_mode(tensors: tuple[CacheTensor, ...]) -> str | None:
    """staged_mode for CUDA tensors, else None."""
    if any(t.device.type != "cuda" for t in tensors):
        return None
    return staged_mode(tensors)


def staged_attention(tensors: tuple[CacheTensor, ...], mode: str, op: str,
                     rows: list[torch.Tensor], scales: list[float], lengths: torch.Tensor,
                     pending: torch.Tensor) -> torch.Tensor:
    """Decode attention (B, Hq, Dv) float32 of the query rows (B, Hq, D) over the cache, with
    no host-side length: the backend reads the stored prefix up to `lengths` (B,) int32, and
    in mode "tail" the first `pending` rows of every tail buffer join by log-sum-exp."""
    *keys, v = tensors
    views = [t.kernel_view() for t in tensors]
    backend = get_backend(rows[0].device)
    out, lse = call_decode(backend, op, *rows, *views, lengths, *scales,
                           *(t.fmt.name for t in tensors), return_lse=True)
    if mode == "tail":
        # A backend's one-launch merge_tail where it has one, else this module's torch ops.
        merge = getattr(backend, "merge_tail", masked_tail_merge)
        out = merge(out, lse, rows, [k.tail for k in keys], scales, v.tail, pending)
    return out


@dataclass
class _Graph:
    graph: torch.cuda.CUDAGraph
    qs: list[torch.Tensor]
    lengths: torch.Tensor
    pending: torch.Tensor
    out: torch.Tensor


class DecodeGraphs:
    """The captured decode steps of one cache, keyed by (op, scales, query shapes, storage)."""

    def __init__(self) -> None:
        self._graphs: dict[tuple, _Graph] = {}
        self.captures = 0
        self.replays = 0
        self.failed = False

    def step(self, tensors: tuple[CacheTensor, ...], mode: str, op: str,
             qs: list[torch.Tensor], scales: list[float]) -> torch.Tensor:
        """The decode attention (B, Hq, Dv) float32 (a static buffer: copy before the next
        step). qs are the (B, Hq, 1, D) queries."""
        prefix = min(t.stored for t in tensors)
        pending = tensors[0].length - prefix
        key = (op, tuple(scales), tuple(q.shape for q in qs),
               tuple((t.storage.data_ptr(), t.capacity, t.tail.data_ptr()) for t in tensors))
        entry = self._graphs.get(key)
        if entry is None:
            # A new storage buffer makes every older graph stale: free them first.
            self._graphs.clear()
            entry = self._capture(tensors, mode, op, qs, scales, prefix, pending)
            self._graphs[key] = entry
            self.captures += 1
        for static, q in zip(entry.qs, qs, strict=True):
            static.copy_(q[:, :, 0])
        entry.lengths.fill_(prefix)
        entry.pending.fill_(pending)
        entry.graph.replay()
        self.replays += 1
        return entry.out

    def _capture(self, tensors, mode, op, qs, scales, prefix, pending) -> _Graph:
        device = qs[0].device
        static_qs = [q[:, :, 0].to(torch.float32).contiguous() for q in qs]
        lengths = torch.full((qs[0].shape[0],), prefix, dtype=torch.int32, device=device)
        count = torch.full((), pending, dtype=torch.int32, device=device)

        def body() -> torch.Tensor:
            return staged_attention(tensors, mode, op, static_qs, scales, lengths, count)

        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            body()  # compiles and autotunes the kernels outside the capture
        torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = body()
        return _Graph(graph, static_qs, lengths, count, out)
