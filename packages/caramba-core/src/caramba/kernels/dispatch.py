"""Pick a kernel backend for a device: an installed fast one, else the torch reference.

Backends come from the entry point group `caramba.kernels` (`caramba.registry.KERNELS`):
"cpu" (the C++ library), "triton" (CUDA), "metal" (Apple). A backend is any object with

    quantize(kind, x) / dequantize(kind, blocks, D) / append(kind, cache, rows, lengths)
    decode_attention(q, k, v, lengths, scale, k_format, v_format, *, num_splits=None,
                     return_lse=False)
    dba_decode_attention(q_sem, q_geo, k_sem, k_geo, v, lengths, scale_sem, scale_geo,
                         k_sem_format, k_geo_format, v_format, *, num_splits=None,
                         return_lse=False)

and optionally `supports(device) -> bool` (say False when, e.g., no GPU is present). The
decode contract (caramba.kernels.decode has the reference and the shapes):

- q (B, Hq, D); each cache tensor independently in the "head" layout (B, Hkv, S_max, W) or
  the "token" layout (B, 1, S_max, W): one row of Hkv x d values per token, KV head g at
  values [g d, (g + 1) d), rows may straddle quantization blocks. Hkv is shape[1] of a
  head-layout key and row_values // D of a token-layout one (it must divide exactly); a
  token-layout value tensor has Dv = row_values // Hkv. Hkv agrees across the call and
  divides Hq (query head h reads KV head h // (Hq // Hkv)). Mismatches raise ValueError
  naming the argument.
- lengths int32 (B,), each in [1, S_max]; slots at or past lengths[b] are ignored.
- Formats f32, f16, q8_0, q4_0, nf4 (caramba.kernels.formats), per tensor.
- Returns out (B, Hq, Dv) float32; with return_lse=True (out, lse), lse (B, Hq) float32 =
  log sum_s exp(score_s) over the attended positions, score_s the full scaled score, so two
  partials over disjoint keys merge exactly (caramba.kernels.merge.merge_partials).

Ops a backend lacks are served by the reference. A backend written before return_lse or the
token layout still works: `call_decode` tries it, and where it refuses such a call (TypeError
or ValueError) while the reference accepts it, that kind of call goes to the reference from
then on, logged once. CARAMBA_KERNELS=reference forces the reference; CARAMBA_KERNELS=<name>
forces that backend and fails loudly if it cannot serve the device.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch

from caramba.errors import RegistryError
from caramba.kernels import decode, quant
from caramba.kernels.formats import logical_width
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
    _refused.clear()


# ------------------------------------------------------------------ contract compatibility

# (backend name, op) -> the feature sets a backend refused; a call needing a superset of one
# goes straight to the reference.
_refused: dict[tuple[str, str], list[frozenset[str]]] = {}
_CACHE_ARGS = {"decode_attention": ((0, 1), 2), "dba_decode_attention": ((0, 2), (1, 3), 4)}


def _token_layout(op: str, args: tuple) -> bool:
    """Whether any cache tensor of a decode call is in the token layout (best effort: a call
    too malformed to tell is handed to the backend, which reports it)."""
    try:
        *pairs, v_at = _CACHE_ARGS[op]
        formats = args[-3:] if op == "dba_decode_attention" else args[-2:]
        heads = 0
        for (q_at, k_at), fmt in zip(pairs, formats, strict=False):
            q, k = args[q_at], args[k_at]
            if k.shape[1] == 1 and logical_width(fmt, k.shape[-1]) != q.shape[-1]:
                return True
            heads = heads or k.shape[1]
        return args[v_at].shape[1] == 1 and heads > 1
    except (AttributeError, IndexError, TypeError, ValueError):
        return False


def call_decode(backend: Any, op: str, *args: Any, return_lse: bool = False,
                **kwargs: Any) -> Any:
    """backend.<op>(*args, return_lse=..., **kwargs) under the current decode contract (the
    contract's arguments positional, options as keywords).

    A backend that refuses a call needing return_lse or the token layout (an older build:
    TypeError for the keyword, ValueError for the shapes) has the call served by the
    reference; if the reference takes it, calls needing those features skip the backend from
    then on (logged once). Input bad for the reference too raises the reference's error.
    """
    if op not in _CACHE_ARGS:
        raise ValueError(f"op: expected one of {', '.join(_CACHE_ARGS)}, got {op!r}")
    if return_lse:
        kwargs["return_lse"] = True
    needs = frozenset(["return_lse"] * bool(return_lse)
                      + ["token layout"] * _token_layout(op, args))
    key = (getattr(backend, "name", type(backend).__name__), op)
    if backend is reference or not needs:
        return getattr(backend, op)(*args, **kwargs)
    if any(refused <= needs for refused in _refused.get(key, ())):
        return getattr(reference, op)(*args, **kwargs)
    try:
        return getattr(backend, op)(*args, **kwargs)
    except (TypeError, ValueError) as exc:
        result = getattr(reference, op)(*args, **kwargs)  # bad input raises here, as it should
        _refused.setdefault(key, []).append(needs)
        log.warning("kernel backend %r cannot take %s with %s (%s: %s); the reference serves "
                    "those calls", key[0], op, " and ".join(sorted(needs)),
                    type(exc).__name__, exc)
        return result
