"""Block geometry of the cache formats, one table for every backend (no torch, no numpy).

A row of a block format stores whole blocks: GGML's q8_0 (fp16 scale + 32 int8) and q4_0 (fp16
scale + 16 bytes of nibbles), and nf4 (64 values on one scale); f32 and f16 count as blocks of
one value.
"""

from __future__ import annotations

# name -> (values per block, bytes per block)
BLOCKS: dict[str, tuple[int, int]] = {
    "f32": (1, 4),
    "f16": (1, 2),
    "q8_0": (32, 34),
    "q4_0": (32, 18),
    "nf4": (64, 34),
}


def row_values(kind: str, stored: int, argument: str) -> int:
    """Values a row of `stored` elements holds (bytes, for a block format); a ValueError naming
    `argument` unless the row is a whole number of blocks."""
    block, block_bytes = BLOCKS[kind]
    if block == 1:
        return stored
    if stored <= 0 or stored % block_bytes:
        raise ValueError(
            f"{argument}: last dimension {stored} is not a whole number of {kind} blocks "
            f"({block_bytes} bytes each)"
        )
    return stored // block_bytes * block
