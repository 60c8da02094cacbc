"""Device and precision resolution for `train.device` / `train.dtype`.

Mixed precision here means autocast: parameters and optimizer state stay float32, matmuls
run in the low-precision dtype. float16 needs loss scaling (a GradScaler) because its
exponent range underflows small gradients; bfloat16 has float32's range and needs none.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import sys
from typing import Any

import torch

from caramba.errors import InputError

log = logging.getLogger("caramba.devices")
KEEP_HEAP_ENV = "CARAMBA_KEEP_HEAP"
_heap_kept: bool | None = None


def resolve_device(requested: str = "auto") -> torch.device:
    """`auto` picks cuda, then mps, then cpu; an unavailable explicit device is an InputError."""
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if requested == "cpu":
        return torch.device("cpu")
    if requested.startswith("cuda"):
        if not torch.cuda.is_available():
            raise InputError(
                f"train.device is {requested!r} but CUDA is not available "
                f"(torch {torch.__version__}, built with CUDA {torch.version.cuda}).",
                hint="set train.device: auto (or cpu), or install a CUDA build of torch.",
            )
        device = torch.device(requested)
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise InputError(
                f"train.device is {requested!r} but this machine has {count} CUDA device(s) "
                f"(cuda:0 .. cuda:{count - 1}).",
                hint="set train.device to an existing index, or to cuda / auto.",
            )
        return device
    if requested == "mps":
        if not _mps_available():
            raise InputError(
                "train.device is 'mps' but the Apple MPS backend is not available here.",
                hint="set train.device: auto (or cpu).",
            )
        return torch.device("mps")
    raise InputError(
        f"train.device {requested!r} is not one of cpu, cuda, cuda:N, mps, auto.",
        hint="set train.device: auto.",
    )


def resolve_dtype(requested: str, device: torch.device) -> torch.dtype:
    """`auto` is bfloat16 on a CUDA device that supports it and on a CPU with native bf16 dot
    products (AVX512-BF16 or AMX: bf16 matmuls ~4x float32, a training step ~2.75x faster on
    this project's 2-core machine), float32 everywhere else (emulated bf16 is slower)."""
    if requested == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        if device.type == "cpu" and cpu_has_native_bf16():
            return torch.bfloat16
        return torch.float32
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}.get(
        requested
    )
    if dtype is None:
        raise InputError(
            f"train.dtype {requested!r} is not one of float32, bfloat16, float16, auto.",
            hint="set train.dtype: auto.",
        )
    if dtype is torch.float32:
        return dtype
    if dtype is torch.float16 and device.type != "cuda":
        raise InputError(
            f"train.dtype is 'float16' but the device is {device.type}; float16 training needs "
            "CUDA (loss scaling).",
            hint="set train.dtype: bfloat16 or float32.",
        )
    if dtype is torch.bfloat16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise InputError(
            f"train.dtype is 'bfloat16' but {torch.cuda.get_device_name(device)} does not "
            "support it.",
            hint="set train.dtype: float16 (or auto).",
        )
    if not _autocast_available(device.type):
        raise InputError(
            f"train.dtype is {requested!r} but torch {torch.__version__} has no autocast for "
            f"{device.type}.",
            hint="set train.dtype: float32.",
        )
    return dtype


def autocast(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager[Any]:
    """The forward-pass context: autocast for bf16/fp16, a no-op for float32."""
    if dtype is torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def grad_scaler(device: torch.device, dtype: torch.dtype) -> torch.amp.GradScaler | None:
    """A GradScaler for float16 on CUDA, None otherwise (nothing to scale)."""
    if dtype is torch.float16 and device.type == "cuda":
        return torch.amp.GradScaler("cuda")
    return None


def cpu_has_native_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """True when the CPU flags list avx512_bf16 or amx_bf16 (Linux; False where unknown)."""
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[-1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        return False
    return False


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def _autocast_available(device_type: str) -> bool:
    check = getattr(torch.amp.autocast_mode, "is_autocast_available", None)
    if check is None:  # older torch: cuda and cpu always had autocast
        return device_type in ("cuda", "cpu")
    return bool(check(device_type))


def keep_freed_memory() -> bool:
    """On Linux with glibc, keep freed memory in the process heap for the next allocation.

    By default glibc serves every allocation over 32 MB with a fresh mmap and unmaps it on
    free. A CPU training step allocates many such tensors (logits over a 49k vocabulary are
    200 MB in float32), so each step page-faults and zeroes them anew: measured on this
    project's 2-core machine, a SmolLM2-135M distillation step spent half its time in the
    kernel this way (4.3 s per step; 2.1 s with this call). This turns off mmap for large
    blocks and heap trimming (mallopt M_MMAP_MAX 0, M_TRIM_THRESHOLD 2 GB): the process keeps
    its peak heap instead of returning it. Idempotent; CARAMBA_KEEP_HEAP=0 skips it. Returns
    whether it is in effect.
    """
    global _heap_kept
    if _heap_kept is None:
        _heap_kept = False
        if sys.platform == "linux" and os.environ.get(KEEP_HEAP_ENV, "1") != "0":
            try:
                mallopt = ctypes.CDLL("libc.so.6").mallopt
            except (OSError, AttributeError):  # not glibc (musl, ...): nothing to tune
                return False
            M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
            _heap_kept = mallopt(M_MMAP_MAX, 0) == 1 and mallopt(M_TRIM_THRESHOLD, 2**31 - 1) == 1
            log.debug("glibc keeps freed memory in the heap: %s", _heap_kept)
    return _heap_kept
