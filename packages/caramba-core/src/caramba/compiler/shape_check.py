"""Build a target's model on the meta device and push a fake batch through it.

This costs no memory and no FLOPs, yet catches every shape mismatch between layers (an
RMSNorm of the wrong width, a Linear whose d_in is not the previous width) and points at
the manifest node whose module failed. Leaf outputs seen on the way give the activation
estimate for the plan's memory figures.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from caramba.errors import CarambaError
from caramba.manifest.diagnostics import Path
from caramba.models.definition import ModelDefinition
from caramba.registry import SYSTEMS


@dataclass
class ShapeReport:
    model: nn.Module
    output_shape: tuple[int, ...] | None
    activation_bytes: int  # fp32 bytes of every leaf module's output for batch 1
    failed_config: Any = None  # config of the innermost module that raised
    error: str | None = None


def build_on_meta(system_ref: str, definition: ModelDefinition) -> nn.Module:
    with torch.device("meta"):
        return SYSTEMS.get(system_ref).build(definition)


def shape_pass(model: nn.Module, seq_len: int) -> ShapeReport:
    stack: list[Any] = []
    activation = [0]
    failed: list[Any] = []

    def pre(module: nn.Module, _args: Any) -> None:
        stack.append(module.__dict__.get("_caramba_config"))

    def post(module: nn.Module, _args: Any, output: Any) -> None:
        stack.pop()
        if not any(True for _ in module.children()) and isinstance(output, torch.Tensor):
            activation[0] += output.numel() * 4

    handles = [m.register_forward_pre_hook(pre) for m in model.modules()]
    handles += [m.register_forward_hook(post) for m in model.modules()]
    tokens = torch.zeros((1, seq_len), dtype=torch.long, device="meta")
    try:
        with torch.no_grad():
            out = model(tokens)
        return ShapeReport(model, tuple(out.shape), activation[0])
    except CarambaError:
        raise
    except Exception as exc:  # noqa: BLE001 - any torch error here is a shape problem
        failed = [c for c in stack if c is not None]
        return ShapeReport(model, None, activation[0], failed[-1] if failed else None,
                           f"{type(exc).__name__}: {exc}".splitlines()[0])
    finally:
        for h in handles:
            h.remove()


def failing_path(report: ShapeReport, node_paths: dict[int, Path], fallback: Path) -> Path:
    if report.failed_config is not None and id(report.failed_config) in node_paths:
        return node_paths[id(report.failed_config)]
    return fallback
