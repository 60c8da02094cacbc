"""A whole single-token decode step — embedding to logits, every layer's cache write and
attention — replayed as one CUDA graph.

An eager decode step launches some thirty kernels per attention layer (projections, RoPE,
the cache append, the attention, the merge), each a few microseconds of Python and driver
time; at batch 32 on an H100 that host time, not the cache read, sets the step time, and a
smaller cache (DBA, quantized kinds) cannot show as speed. A graph replays the whole step
with one launch. What changes between steps lives on the device: the token, and the
position the step writes (`ForwardContext.step`), from which every layer derives its RoPE
angle, its cache row and its attention lengths (see `_CacheBase.stage` and
`attend_staged`). The host keeps the bookkeeping: before a replay it makes room for the
token (`prepare_stage`), after it counts the token and quantizes a tail block that filled
(`commit`). A graph is valid for one set of storage buffers; growing a cache (rare: a
generation pre-sizes its caches) captures a new one.

Eligible: CUDA, caches that `stage_ready()` (kernels on, all plain or all blocked alike, a
block stored), no module declaring `device_step_unsafe`. Otherwise, and with
CARAMBA_CUDA_GRAPHS=0 or GenerateConfig(cuda_graphs=False), the step runs eagerly.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn

from caramba.cache.graphs import graphs_enabled
from caramba.cache.spec import CacheSpec
from caramba.layers.base import DeviceStep, ForwardContext

log = logging.getLogger("caramba.infer")


def staged_context(ctx: ForwardContext, spec: CacheSpec, position: torch.Tensor
                   ) -> ForwardContext:
    """ctx for a staged step at the device-side `position` (0-d int64)."""
    limit = max(t.capacity for cache in spec.caches for t in cache.tensors)
    return ForwardContext(position=ctx.position, state=ctx.state, extras=ctx.extras,
                          step=DeviceStep(position, limit))


def commit_step(ctx: ForwardContext, spec: CacheSpec) -> None:
    """The host side of a staged step once it ran: every cache counts its token."""
    for cache in spec.caches:
        cache.commit()
    ctx.position += 1


def staged_step(module: nn.Module, x: torch.Tensor, ctx: ForwardContext, spec: CacheSpec
                ) -> torch.Tensor:
    """One staged step run eagerly (any device): what a replayed graph computes. Advances
    ctx.position. For tests and for checking a module before trusting its graph."""
    for cache in spec.caches:
        cache.prepare_stage()
    position = torch.full((), ctx.position, dtype=torch.long, device=x.device)
    out = module(x, staged_context(ctx, spec, position))
    commit_step(ctx, spec)
    return out


@dataclass
class _Captured:
    key: tuple
    graph: torch.cuda.CUDAGraph
    x: torch.Tensor
    position: torch.Tensor
    out: torch.Tensor


class StepGraph:
    """Calls `module(x, ctx)` for one new token per sequence, as a CUDA graph when eligible.

        steps = StepGraph(model)
        logits = steps(token, ctx, spec)   # advances ctx.position by one

    A replayed step returns a static buffer that the next step overwrites: consume (or
    copy) it first.
    """

    def __init__(self, module: nn.Module, enabled: bool = True) -> None:
        self.module = module
        self.enabled = enabled
        self.failed = False
        self.captures = 0
        self.replays = 0
        self.eager_steps = 0
        self._captured: _Captured | None = None
        self.unsafe = sorted({type(m).__name__ for m in module.modules()
                              if getattr(m, "device_step_unsafe", False)})

    def eligible(self, x: torch.Tensor, spec: CacheSpec) -> bool:
        return (self.enabled and not self.failed and not self.unsafe and spec.cuda_graphs
                and x.device.type == "cuda" and graphs_enabled() and bool(spec.caches)
                and all(cache.stage_ready() for cache in spec.caches))

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, ctx: ForwardContext, spec: CacheSpec) -> torch.Tensor:
        if self.eligible(x, spec):
            key = (tuple(x.shape), x.dtype, tuple(c.prepare_stage() for c in spec.caches))
            captured = self._captured if self._captured and self._captured.key == key else None
            if captured is None:
                self._captured = None  # a new storage buffer makes the old graph stale
                try:
                    captured = self._capture(key, x, ctx, spec)
                except RuntimeError as exc:  # a backend that cannot be captured: stay eager
                    self.failed = True
                    log.warning("decode step not capturable as a CUDA graph (%s); eager from "
                                "now on", exc)
                else:
                    self._captured = captured
                    self.captures += 1
            if captured is not None:
                captured.x.copy_(x)
                captured.position.fill_(ctx.position)
                captured.graph.replay()
                commit_step(ctx, spec)
                self.replays += 1
                return captured.out
        self.eager_steps += 1
        out = self.module(x, ctx)
        ctx.position += 1
        return out

    def _capture(self, key: tuple, x: torch.Tensor, ctx: ForwardContext, spec: CacheSpec
                 ) -> _Captured:
        static_x = x.clone()
        position = torch.full((), ctx.position, dtype=torch.long, device=x.device)
        step_ctx = staged_context(ctx, spec, position)
        current = torch.cuda.current_stream(x.device)
        side = torch.cuda.Stream(x.device)
        side.wait_stream(current)
        with torch.cuda.stream(side):
            # Compiles and autotunes kernels and sizes position tables outside the capture.
            # It writes this step's token where the replay will write it again: idempotent.
            self.module(static_x, step_ctx)
        current.wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = self.module(static_x, step_ctx)
        return _Captured(key, graph, static_x, position, out)
