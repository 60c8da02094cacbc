"""Build torch modules from validated node configs through the registries.

Nothing here knows any concrete layer: a node's `type` is looked up in the layer registry,
then the topology registry, and the class builds itself with `from_config(config, build)`.
"""

from __future__ import annotations

from typing import Any

from caramba.errors import RegistryError, did_you_mean
from caramba.layers.base import NodeConfig
from caramba.registry import LAYERS, TOPOLOGIES


def component_class(type_name: str) -> Any:
    """The registered class for a node `type` (layer or topology)."""
    if type_name in LAYERS:
        return LAYERS.get(type_name)
    if type_name in TOPOLOGIES:
        return TOPOLOGIES.get(type_name)
    known = LAYERS.names() + TOPOLOGIES.names()
    suggestion = did_you_mean(type_name, known)
    raise RegistryError(
        f"unknown layer or topology type {type_name!r}"
        + (f" — did you mean {suggestion!r}?" if suggestion else "")
        + f" Known: {', '.join(known)}."
    )


def build_node(config: NodeConfig) -> Any:
    """Build the module for `config` and, recursively, its children."""
    cls = component_class(config.type)
    module = cls.from_config(config, lambda child, _index: build_node(child))
    # Remember which manifest node built this module, so shape errors can point at it.
    module.__dict__["_caramba_config"] = config
    return module
