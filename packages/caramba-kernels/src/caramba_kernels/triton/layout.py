"""Where each KV head's values live in a cache tensor: the "head" and the "token" layouts.

A cache tensor (B, H, S_max, W) is in the head layout when H == Hkv (one row per token and KV
head) and in the token layout when H == 1 and a row holds Hkv x d values (KV head g at values
[g*d, (g+1)*d) of the row, possibly straddling blocks). Hkv is read off the first key tensor and
must agree across the call; see caramba.kernels.decode for the whole contract.

`CacheView` turns either layout into what the kernels address: a per-KV-head offset (`head`,
elements or bytes) plus, where a head does not start on a block boundary, a per-KV-head shift in
values (`shift`) that only the byte-wise loader takes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from caramba_kernels.blocks import BLOCKS


@dataclass(frozen=True)
class CacheView:
    """One cache tensor as the kernels read it."""

    x: torch.Tensor
    kind: str
    token: bool  # token layout (every KV head in one row per token)
    d: int  # values per KV head
    row_elems: int  # values per stored row

    @property
    def block(self) -> int:
        return BLOCKS[self.kind][0]

    @property
    def aligned(self) -> bool:
        """Whether each KV head starts on a block boundary of its row."""
        return not self.token or self.d % self.block == 0

    @property
    def head(self) -> int:
        """Offset of KV head g + 1's first value from KV head g's (elements or bytes)."""
        if not self.token:
            return self.x.stride(1)
        if not self.aligned:
            return 0
        block, block_bytes = BLOCKS[self.kind]
        return self.d if block == 1 else self.d // block * block_bytes

    @property
    def shift(self) -> int:
        """Values to move right per KV head (token layout, heads straddling blocks)."""
        return 0 if self.aligned else self.d

    @property
    def sub_elems(self) -> int:
        """Values per stored sub-row: one KV head (head layout) or the whole row (token)."""
        return self.row_elems if self.token else self.d


def key_heads(
    x: torch.Tensor, kind: str, row_elems: int, D: int, argument: str
) -> tuple[int, bool]:
    """(Hkv, token layout?) of a key tensor whose rows hold `row_elems` values of width-D heads."""
    if x.shape[1] != 1:
        if row_elems != D:
            raise ValueError(
                f"{argument}: rows hold {row_elems} values in {kind}, but the query has head dim "
                f"{D} (a head-layout cache with {x.shape[1]} heads holds one head per row)"
            )
        return x.shape[1], False
    if row_elems % D:
        raise ValueError(
            f"{argument}: a row holds {row_elems} values, not a whole number of heads of the "
            f"query's head dim {D} (token layout: Hkv x D values per row)"
        )
    return row_elems // D, row_elems != D


def value_heads(x: torch.Tensor, row_elems: int, Hkv: int, argument: str) -> tuple[int, bool]:
    """(dv, token layout?) of a value tensor, given the keys' Hkv."""
    if x.shape[1] == Hkv:
        return row_elems, False
    if x.shape[1] != 1:
        raise ValueError(
            f"{argument}: {x.shape[1]} heads, but the keys have {Hkv} KV heads (use {Hkv}, or 1 "
            "for the token layout)"
        )
    if row_elems % Hkv:
        raise ValueError(
            f"{argument}: a row holds {row_elems} values, not a multiple of the keys' {Hkv} KV "
            "heads (token layout: Hkv x dv values per row)"
        )
    return row_elems // Hkv, True
