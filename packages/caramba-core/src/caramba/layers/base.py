"""The contract every layer and topology follows.

A registered component is an `nn.Module` class with two class-level hooks:

- `Config`: a pydantic model (subclass of `LayerConfig` or `TopologyConfig`) that validates
  the manifest node. Semantic checks (d_model divisible by n_heads, ...) are pydantic
  validators, so their errors point at the manifest line.
- `from_config(config, build)`: constructs the module. `build(child_config, index)` builds a
  child node; layers ignore it, topologies call it for their children.

Forward signature is `forward(x, ctx=None)`. `ctx` carries what a layer may need beyond `x`:
the absolute position of x's first token and, during incremental decoding, per-module state.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, SerializeAsAny


class NodeConfig(BaseModel):
    """A manifest node: a mapping with a `type` naming a registered layer or topology."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    type: str


class LayerConfig(NodeConfig):
    """Config of a leaf layer."""


class TopologyConfig(NodeConfig):
    """Config of a topology; `layers` holds already-validated child configs.

    The manifest loader validates children itself (dispatching on each child's `type`), so
    the raw child mappings never reach pydantic as untyped dicts.
    """

    # SerializeAsAny: dump each child with its own fields, not just NodeConfig's `type`.
    layers: tuple[SerializeAsAny[NodeConfig], ...] = ()

    # Names of fields (besides `layers`) that a topology understands; used for did-you-mean.
    child_field: ClassVar[str] = "layers"


@dataclass(frozen=True)
class DeviceStep:
    """A staged single-token step: `position` (0-d int64 on the model's device) is the number
    of tokens the caches held before it, written before each replay; `limit` (host) bounds
    every position the captured step may see (the caches' capacity), so position tables are
    sized once, before capture."""

    position: Any  # torch.Tensor; Any keeps this module free of torch
    limit: int


@dataclass
class ForwardContext:
    """Per-call information that flows through the topology tree.

    position: absolute position of x[:, 0]; layers using RoPE offset by it.
    state: per-module decoding state keyed by id(module) (for example a layer's KV cache);
        None means no incremental decoding: every call sees the whole sequence.
    step: set while a single-token decode step is staged for CUDA-graph replay
        (caramba.infer.step_graph): the position then lives on the device, and a layer that
        reads `position` must read `step.position` instead (or declare the class attribute
        `device_step_unsafe = True`, which keeps models containing it eager).
    """

    position: int = 0
    state: dict[int, Any] | None = None
    extras: dict[str, Any] = field(default_factory=dict)
    step: DeviceStep | None = None

    def module_state(self, module: object) -> Any:
        return None if self.state is None else self.state.get(id(module))

    def set_module_state(self, module: object, value: Any) -> None:
        if self.state is not None:
            self.state[id(module)] = value


BuildChild = Callable[[NodeConfig, int], Any]
