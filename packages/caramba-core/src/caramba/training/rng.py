"""Seeding and JSON-safe snapshots of every random number generator a run touches.

Checkpoints store these so that dropout masks after a resume are the ones the uninterrupted
run would have drawn. Byte states are base64 so state.json stays small, plain JSON (no pickle).
"""

from __future__ import annotations

import base64
import random
from typing import Any

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and every CUDA device) from one integer."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds all CUDA devices


def capture_rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {
        "torch_cpu": _b64(torch.get_rng_state()),
        "python": _python_state_to_json(random.getstate()),
        "numpy": _numpy_state_to_json(np.random.get_state()),
    }
    # Only when CUDA was used: querying it would otherwise initialise a context.
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [_b64(s) for s in torch.cuda.get_rng_state_all()]
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of `capture_rng_state`; raises KeyError/ValueError on a malformed snapshot."""
    torch.set_rng_state(_unb64(state["torch_cpu"]))
    if "python" in state:
        random.setstate(_python_state_from_json(state["python"]))
    if "numpy" in state:
        np.random.set_state(_numpy_state_from_json(state["numpy"]))
    cuda = state.get("cuda")
    if cuda and torch.cuda.is_available():
        states = [_unb64(s) for s in cuda][: torch.cuda.device_count()]
        for index, s in enumerate(states):
            torch.cuda.set_rng_state(s, index)


def _b64(tensor: torch.Tensor) -> str:
    return base64.b64encode(tensor.cpu().numpy().tobytes()).decode("ascii")


def _unb64(text: str) -> torch.Tensor:
    raw = base64.b64decode(text.encode("ascii"), validate=True)
    return torch.frombuffer(bytearray(raw), dtype=torch.uint8).clone()


def _python_state_to_json(state: tuple[Any, ...]) -> list[Any]:
    version, internal, gauss = state  # internal: 625 32-bit words of the Mersenne Twister
    packed = np.asarray(internal, dtype=np.uint32).tobytes()
    return [version, base64.b64encode(packed).decode("ascii"), gauss]


def _python_state_from_json(state: list[Any]) -> tuple[Any, ...]:
    version, packed, gauss = state
    words = np.frombuffer(base64.b64decode(packed, validate=True), dtype=np.uint32)
    return (version, tuple(int(w) for w in words), gauss)


def _numpy_state_to_json(state: tuple[Any, ...]) -> list[Any]:
    name, keys, pos, has_gauss, cached = state
    packed = base64.b64encode(np.asarray(keys, dtype=np.uint32).tobytes()).decode("ascii")
    return [name, packed, int(pos), int(has_gauss), float(cached)]


def _numpy_state_from_json(state: list[Any]) -> tuple[Any, ...]:
    name, packed, pos, has_gauss, cached = state
    keys = np.frombuffer(base64.b64decode(packed, validate=True), dtype=np.uint32).copy()
    return (name, keys, pos, has_gauss, cached)
