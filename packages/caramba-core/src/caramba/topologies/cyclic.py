"""The same children applied several times with shared weights (universal-transformer style)."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from caramba.layers.base import BuildChild, ForwardContext
from caramba.topologies._common import ChildrenConfig, build_children, run_in_order


class CyclicTopologyConfig(ChildrenConfig):
    type: Literal["CyclicTopology"] = "CyclicTopology"
    cycles: int = Field(2, ge=1, le=4096, description="passes through the children, weights shared")


class CyclicTopology(nn.Module):
    """Children [a, b] with cycles 3 run as a b a b a b using one set of weights.

    Parameter count does not depend on `cycles`; compute does. During incremental decoding
    each cycle gets its own sub-state, because one module (say an attention layer) runs once
    per cycle and needs a separate KV cache for each pass.
    """

    Config = CyclicTopologyConfig

    def __init__(self, layers: nn.ModuleList, cycles: int = 2) -> None:
        super().__init__()
        self.layers = layers
        self.cycles = cycles

    @classmethod
    def from_config(cls, config: CyclicTopologyConfig, build: BuildChild) -> CyclicTopology:
        return cls(build_children(config.layers, build), config.cycles)

    def forward(self, x: torch.Tensor, ctx: ForwardContext | None = None) -> torch.Tensor:
        if ctx is None or ctx.state is None:
            for _ in range(self.cycles):
                x = run_in_order(self.layers, x, ctx)
            return x
        states = ctx.module_state(self)
        if states is None:
            states = [{} for _ in range(self.cycles)]
            ctx.set_module_state(self, states)
        for state in states:
            cycle_ctx = ForwardContext(position=ctx.position, state=state, extras=ctx.extras,
                                       step=ctx.step)
            x = run_in_order(self.layers, x, cycle_ctx)
        return x

    def extra_repr(self) -> str:
        return f"cycles={self.cycles}"
