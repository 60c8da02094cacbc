"""Pieces every topology shares: a non-empty child list, building and running children."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from pydantic import Field, SerializeAsAny
from torch import nn

from caramba.layers.base import BuildChild, ForwardContext, NodeConfig, TopologyConfig


class ChildrenConfig(TopologyConfig):
    """A topology config whose `layers` must name at least one child.

    SerializeAsAny: children are subclasses of NodeConfig, and pydantic would otherwise dump
    only the base class's fields (`type`), losing every child's settings.
    """

    layers: tuple[SerializeAsAny[NodeConfig], ...] = Field(
        ..., min_length=1, description="child layers or topologies, in order"
    )


def build_children(
    configs: Iterable[NodeConfig], build: BuildChild, start: int = 0
) -> nn.ModuleList:
    """Build each child through the registry; indices count from `start`."""
    return nn.ModuleList(build(child, start + i) for i, child in enumerate(configs))


def run_in_order(
    layers: Iterable[nn.Module], x: torch.Tensor, ctx: ForwardContext | None
) -> torch.Tensor:
    """x through each layer in turn, every layer seeing the same ctx."""
    for layer in layers:
        x = layer(x, ctx)
    return x
