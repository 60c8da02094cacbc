"""The KV-cache storage formats every kernel backend agrees on.

A row of logical width D is stored as D / block consecutive blocks. Plain formats ("f32",
"f16") are stored as float tensors of width D; block formats as uint8 tensors of width
bytes_per_row(kind, D):

    q8_0  fp16 d, 32 x int8 q                      value = q * d              (GGML block_q8_0)
    q4_0  fp16 d, 16 bytes: byte j = q[j] | q[j+16] << 4
                                                   value = (q - 8) * d        (GGML block_q4_0)
    nf4   fp16 absmax, 32 bytes: byte j = q[j] | q[j+32] << 4
                                                   value = NF4[q] * absmax    (QLoRA NormalFloat)

Scales are little-endian IEEE half, so q8_0 and q4_0 rows are byte-for-byte GGUF tensors.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Format:
    """One storage format: `block` logical values take `block_bytes` bytes."""

    name: str
    block: int
    block_bytes: int
    dtype: torch.dtype  # what a cache in this format holds: float for plain, uint8 for blocks

    @property
    def quantized(self) -> bool:
        return self.dtype == torch.uint8


FORMATS: dict[str, Format] = {
    f.name: f
    for f in (
        Format("f32", 1, 4, torch.float32),
        Format("f16", 1, 2, torch.float16),
        Format("q8_0", 32, 34, torch.uint8),
        Format("q4_0", 32, 18, torch.uint8),
        Format("nf4", 64, 34, torch.uint8),
    )
}

# QLoRA's NormalFloat-4 codebook (Dettmers et al. 2023, bitsandbytes), as float32 values.
NF4_CODEBOOK: tuple[float, ...] = (
    -1.0,
    -0.6961928009986877,
    -0.5250730514526367,
    -0.39491748809814453,
    -0.28444138169288635,
    -0.18477343022823334,
    -0.09105003625154495,
    0.0,
    0.07958029955625534,
    0.16093020141124725,
    0.24611230194568634,
    0.33791524171829224,
    0.44070982933044434,
    0.5626170039176941,
    0.7229568362236023,
    1.0,
)


def get_format(kind: object, *, argument: str = "kind") -> Format:
    """The Format named `kind`; ValueError naming `argument` if there is none."""
    fmt = FORMATS.get(kind) if isinstance(kind, str) else None
    if fmt is None:
        close = difflib.get_close_matches(str(kind), list(FORMATS), n=1)
        hint = f" — did you mean {close[0]!r}?" if close else ""
        raise ValueError(
            f"{argument}: unknown cache format {kind!r}{hint} Known: {', '.join(FORMATS)}."
        )
    return fmt


def check_width(kind: str, D: int, *, argument: str = "D") -> Format:
    """The Format for `kind` after checking that a row of width D fills whole blocks."""
    fmt = get_format(kind)
    if not isinstance(D, int) or isinstance(D, bool) or D <= 0:
        raise ValueError(f"{argument}: row width must be a positive int, got {D!r}")
    if D % fmt.block:
        raise ValueError(
            f"{argument}: row width {D} is not a multiple of the {kind} block size {fmt.block}"
        )
    return fmt


def bytes_per_row(kind: str, D: int) -> int:
    """Bytes one row of D logical values takes in format `kind`."""
    fmt = check_width(kind, D)
    return D // fmt.block * fmt.block_bytes


def storage_width(kind: str, D: int) -> int:
    """Last-dimension size of a cache tensor holding rows of width D (elements of fmt.dtype)."""
    fmt = check_width(kind, D)
    return D if not fmt.quantized else bytes_per_row(kind, D)


def logical_width(kind: str, stored: int, *, argument: str = "blocks") -> int:
    """The row width D whose storage is `stored` elements wide (inverse of storage_width)."""
    fmt = get_format(kind)
    if not fmt.quantized:
        return stored
    if stored <= 0 or stored % fmt.block_bytes:
        raise ValueError(
            f"{argument}: last dimension {stored} is not a whole number of {kind} blocks "
            f"({fmt.block_bytes} bytes each)"
        )
    return stored // fmt.block_bytes * fmt.block
