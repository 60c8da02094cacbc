"""What goes into and comes out of every attention layer, captured with forward hooks."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from caramba.upcycle.surgery import attention_layers


@contextmanager
def capture_attention(model: nn.Module, *, inputs: bool = True, outputs: bool = True,
                      dtype: torch.dtype | None = None,
                      device: torch.device | str | None = None
                      ) -> Iterator[dict[str, list[tuple[torch.Tensor | None,
                                                         torch.Tensor | None]]]]:
    """Within the block, each forward appends (input, output) per attention layer path.

    Tensors are detached and, if asked, cast/moved (e.g. float16 on the CPU for a cache).
    """
    captured: dict[str, list[tuple[torch.Tensor | None, torch.Tensor | None]]] = {}

    def keep(t: torch.Tensor) -> torch.Tensor:
        return t.detach().to(device=device, dtype=dtype)

    handles = []
    for name, layer in attention_layers(model):
        captured[name] = []

        def hook(_module: nn.Module, args: tuple, output: torch.Tensor, name: str = name) -> None:
            captured[name].append((keep(args[0]) if inputs else None,
                                   keep(output) if outputs else None))

        handles.append(layer.register_forward_hook(hook))
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()


class SecondMoments:
    """Running E[x x^T] of each attention layer's input (float64), for whitened surgery."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}

    def add(self, name: str, x: torch.Tensor) -> None:
        # float32 products (one batch's sum is accurate enough), float64 running sums.
        flat = x.reshape(-1, x.shape[-1]).float()
        moment = (flat.T @ flat).double()
        self.sums[name] = self.sums[name] + moment if name in self.sums else moment
        self.counts[name] = self.counts.get(name, 0) + flat.shape[0]

    def result(self) -> dict[str, torch.Tensor]:
        return {name: total.cpu() / self.counts[name] for name, total in self.sums.items()}
