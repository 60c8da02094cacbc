"""Argument checks of the Triton backend, each failing with a ValueError that names the argument.

They cost no device synchronisation: shapes, dtypes, formats, devices and strides are
validated, but the values of `lengths` are not read back (ops' docstring says what the kernels
do with them).
"""

from __future__ import annotations

import math
import os

import torch

from caramba_kernels.blocks import BLOCKS, row_values

# name -> (values per block, bytes per block, storage dtype); the table in caramba.kernels.formats.
_DTYPES = {"f32": torch.float32, "f16": torch.float16}
FORMATS: dict[str, tuple[int, int, torch.dtype]] = {
    kind: (*shape, _DTYPES.get(kind, torch.uint8)) for kind, shape in BLOCKS.items()
}


def interpreting() -> bool:
    """Whether triton runs kernels in its CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _format(kind: object, argument: str) -> tuple[int, int, torch.dtype]:
    fmt = FORMATS.get(kind) if isinstance(kind, str) else None
    if fmt is None:
        raise ValueError(f"{argument}: unknown cache format {kind!r}. Known: {', '.join(FORMATS)}.")
    return fmt


def _tensor(x: object, argument: str, dims: int | None = None) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{argument}: expected a torch.Tensor, got {type(x).__name__}")
    if dims is not None and x.dim() != dims:
        raise ValueError(f"{argument}: expected {dims} dimensions, got shape {tuple(x.shape)}")
    return x


def _check_device(x: torch.Tensor, argument: str, device: torch.device | None = None) -> None:
    if device is not None and x.device != device:
        raise ValueError(f"{argument}: on {x.device}, but the query is on {device}")
    if x.device.type != "cuda" and not (x.device.type == "cpu" and interpreting()):
        raise ValueError(
            f"{argument}: the triton backend needs CUDA tensors (CPU only under "
            f"TRITON_INTERPRET=1), got {x.device}"
        )


def _check_width(kind: str, D: int, argument: str) -> int:
    block, block_bytes, _ = _format(kind, "kind")
    if D <= 0 or D % block:
        raise ValueError(
            f"{argument}: row width {D} is not a positive multiple of the {kind} block size {block}"
        )
    return D if block == 1 else D // block * block_bytes


def _check_cache(x: object, argument: str, kind: str, fmt_argument: str, q: torch.Tensor) -> int:
    """Validate what one cache tensor is on its own; return the values a row holds."""
    _, _, dtype = _format(kind, fmt_argument)
    x = _tensor(x, argument, 4)
    if x.dtype != dtype:
        raise ValueError(f"{argument}: a {kind} cache holds {dtype}, got {x.dtype}")
    _check_device(x, argument, q.device)
    if x.shape[0] != q.shape[0]:
        raise ValueError(f"{argument}: batch {x.shape[0]} does not match the query's {q.shape[0]}")
    if x.shape[1] == 0:
        raise ValueError(f"{argument}: no heads (shape {tuple(x.shape)})")
    if x.shape[2] == 0:
        raise ValueError(f"{argument}: the cache is empty (S_max = 0)")
    width = row_values(kind, x.shape[3], argument)
    _check_layout(x, argument, kind)
    return width


def _check_layout(x: torch.Tensor, argument: str, kind: str) -> None:
    if x.shape[-1] > 1 and x.stride(-1) != 1:
        raise ValueError(f"{argument}: rows must be contiguous (stride of the last dim is 1)")
    if FORMATS[kind][0] > 1 and (x.data_ptr() % 2 or any(s % 2 for s in x.stride()[:-1])):
        raise ValueError(f"{argument}: block rows must start on even byte addresses (fp16 scales)")


def _check_lengths(lengths: object, B: int, device: torch.device) -> torch.Tensor:
    if not isinstance(lengths, torch.Tensor):
        raise ValueError(f"lengths: expected an int32 tensor, got {type(lengths).__name__}")
    if lengths.dtype != torch.int32:
        raise ValueError(f"lengths: expected dtype torch.int32, got {lengths.dtype}")
    if tuple(lengths.shape) != (B,):
        raise ValueError(f"lengths: expected shape ({B},), got {tuple(lengths.shape)}")
    if lengths.device != device:
        raise ValueError(f"lengths: on {lengths.device}, but the query is on {device}")
    return lengths.contiguous()


def _check_scale(scale: object, argument: str) -> float:
    if isinstance(scale, torch.Tensor) and scale.numel() == 1:
        scale = scale.item()
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise ValueError(f"{argument}: expected a finite float, got {scale!r}")
    return float(scale)


def _check_query(q: object, argument: str, like: torch.Tensor | None = None) -> torch.Tensor:
    q = _tensor(q, argument, 3)
    if not q.is_floating_point():
        raise ValueError(f"{argument}: expected a floating-point tensor, got {q.dtype}")
    if q.shape[0] == 0 or q.shape[1] == 0:
        raise ValueError(f"{argument}: batch and heads must be non-empty, got {tuple(q.shape)}")
    if like is not None and q.shape[:2] != like.shape[:2]:
        raise ValueError(
            f"{argument}: batch and heads {tuple(q.shape[:2])} do not match {tuple(like.shape[:2])}"
        )
    _check_device(q, argument, None if like is None else like.device)
    return q if q.stride(-1) == 1 else q.contiguous()


def _check_rows(x: object, argument: str, dtype: torch.dtype | None, dims: int,
                shape: tuple[int, ...] | None = None, device: torch.device | None = None
                ) -> torch.Tensor:  # fmt: skip
    """A contiguous floating tensor of `dims` dims (of `dtype` and `shape` where given)."""
    x = _tensor(x, argument, dims)
    if not x.is_floating_point() or (dtype is not None and x.dtype != dtype):
        raise ValueError(f"{argument}: expected {dtype or 'a floating'} tensor, got {x.dtype}")
    if shape is not None and tuple(x.shape) != shape:
        raise ValueError(f"{argument}: expected shape {shape}, got {tuple(x.shape)}")
    if not x.is_contiguous():
        raise ValueError(f"{argument}: must be contiguous (call .contiguous())")
    if device is not None:
        _check_device(x, argument, device)
    return x
