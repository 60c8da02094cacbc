"""Pick a kernel backend for a device: an installed fast one, else the torch reference.

Backends come from the entry point group `caramba.kernels` (`caramba.registry.KERNELS`):
"cpu" (the C++ library), "triton" (CUDA), "metal" (Apple). A backend is any object with

    quantize(kind, x) / dequantize(kind, blocks, D) / append(kind, cache, rows, lengths)
    decode_attention(q, k, v, lengths, scale, k_format, v_format, *, num_splits=None)
    dba_decode_attention(q_sem, q_geo, k_sem, k_geo, v, lengths, scale_sem, scale_geo,
                         k_sem_format, k_geo_format, v_format, *, num_splits=None)

and optionally `supports(device) -> bool` (say False when, e.g., no GPU is present). Ops a
backend lacks are served by the reference. CARAMBA_KERNELS=reference forces the reference;
CARAMBA_KERNELS=<name> forces that backend and fails loudly if it cannot serve the device.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch

from caramba.errors import RegistryError
from caramba.kernels import decode, quant
from caramba.registry import KERNELS

log = logging.getLogger("caramba.kernels")

OPS = ("quantize", "dequantize", "append", "decode_attention", "dba_decode_attention")
ENV = "CARAMBA_KERNELS"

# Which registered backends may serve a device type, best first.
PREFERRED: dict[str, tuple[str, ...]] = {"cpu": ("cpu",), "cuda": ("triton",), "mps": ("metal",)}


class ReferenceBackend:
    """The pure-torch reference: correct on any device, fast on none."""

    name = "reference"
    quantize = staticmethod(quant.quantize)
    dequantize = staticmethod(quant.dequantize)
    append = staticmethod(quant.append)
    decode_attention = staticmethod(decode.decode_attention)
    dba_decode_attention = staticmethod(decode.dba_decode_attention)

    def supports(self, device: torch.device) -> bool:
        return True

    def __repr__(self) -> str:
        return "<kernel backend 'reference'>"


reference = ReferenceBackend()


class _WithFallback:
    """A backend that lacks some ops, completed by the reference."""

    def __init__(self, backend: Any, missing: tuple[str, ...]) -> None:
        self._backend = backend
        self.name = getattr(backend, "name", "?")
        self.missing = missing

    def __getattr__(self, op: str) -> Any:
        if op in self.missing:
            return getattr(reference, op)
        return getattr(self._backend, op)

    def __repr__(self) -> str:
        return f"<kernel backend {self.name!r}, reference for {', '.join(self.missing)}>"


_chosen: dict[tuple[str, str], Any] = {}


def _device(device: torch.device | str) -> torch.device:
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device: not a torch device: {device!r}") from exc


def _load(name: str, device: torch.device, forced: bool) -> Any | None:
    """The backend `name` if it is installed, loads and serves `device`; else None."""
    if name not in KERNELS:
        if forced:
            known = ", ".join(["reference", *KERNELS.names()])
            raise ValueError(
                f"{ENV}={name!r}: no such kernel backend is installed. Known: {known}."
            )
        return None
    try:
        backend = KERNELS.get(name)
    except RegistryError as exc:
        if forced:
            raise ValueError(f"{ENV}={name!r}: {exc}") from exc
        log.warning("kernel backend %r is installed but cannot be loaded: %s", name, exc)
        return None
    supports = getattr(backend, "supports", None)
    if supports is not None and not supports(device):
        if forced:
            raise ValueError(f"{ENV}={name!r}: that backend cannot serve device {device}.")
        return None
    missing = tuple(op for op in OPS if not callable(getattr(backend, op, None)))
    return _WithFallback(backend, missing) if missing else backend


def get_backend(device: torch.device | str = "cpu") -> Any:
    """The kernel backend for tensors on `device` (chosen once per device, then cached)."""
    device = _device(device)
    choice = os.environ.get(ENV, "").strip() or "auto"
    key = (str(device), choice)
    if key in _chosen:
        return _chosen[key]
    if choice == "reference":
        backend, why = reference, f"{ENV}=reference"
    elif choice != "auto":
        backend, why = _load(choice, device, forced=True), f"{ENV}={choice}"
    else:
        backend, why = None, ""
        for name in PREFERRED.get(device.type, ()):
            backend = _load(name, device, forced=False)
            if backend is not None:
                why = "installed"
                break
        if backend is None:
            backend = reference
            why = f"no installed fast backend for {device.type}"
    log.info("kernels on %s: %s backend (%s)", device, getattr(backend, "name", "?"), why)
    _chosen[key] = backend
    return backend


def reset() -> None:
    """Forget cached choices (after registering a backend at run time, or in tests)."""
    _chosen.clear()
