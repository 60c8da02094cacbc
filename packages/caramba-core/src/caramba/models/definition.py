"""What a system needs to build a model: validated node configs, no YAML."""

from __future__ import annotations

from dataclasses import dataclass

from caramba.layers.base import NodeConfig


@dataclass(frozen=True)
class ModelDefinition:
    embedder: NodeConfig
    topology: NodeConfig
    tie_embeddings: bool = False
