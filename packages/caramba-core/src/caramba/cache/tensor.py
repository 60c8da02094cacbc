"""One cached stream of per-head vectors (B, H, n, D), stored in one cache kind.

Storage is a (B, Hs, capacity, W) tensor in one of the decode kernels' two layouts: Hs = H
rows per token ("head" layout) or Hs = 1 row spanning all heads ("token" layout, for
per-head widths smaller than a quantization block). Capacity grows geometrically, so
appending a token is amortised O(1) and never reallocates per token.

Quantized kinds keep the newest, not yet full block of `block_tokens` tokens in full
precision (the activations' dtype) and quantize a block in one call when it fills. Recent
tokens, which attention weighs most, are therefore exact, and the previous block's exact
copy is kept too, so a speculative rollback of up to one block restores exact values.
"""

from __future__ import annotations

import logging

import torch

from caramba.cache.kinds import kind_format, row_layout
from caramba.cache.plan import DecodePlan
from caramba.kernels.dispatch import get_backend
from caramba.kernels.formats import storage_width

log = logging.getLogger("caramba.cache")

DEFAULT_BLOCK_TOKENS = 32
MIN_CAPACITY = 64


class CacheTensor:
    """Append-only (with rollback) storage for one of a layer's cached tensors."""

    def __init__(
        self,
        kind: str,
        batch: int,
        heads: int,
        head_dim: int,
        *,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        capacity: int = 0,
        max_len: int | None = None,
        block_tokens: int = DEFAULT_BLOCK_TOKENS,
        plan: DecodePlan | None = None,
        name: str = "cache",
    ) -> None:
        self.kind = kind
        self.fmt = kind_format(kind)
        self.batch, self.heads, self.head_dim = batch, heads, head_dim
        self.layout = row_layout(kind, heads, head_dim, what=name)
        self.row_heads = heads if self.layout == "head" else 1
        self.row_dim = head_dim if self.layout == "head" else heads * head_dim
        self.width = storage_width(self.fmt.name, self.row_dim)
        self.device = torch.device(device)
        self.dtype = dtype  # of the full-precision tail and of what `read` returns
        self.max_len = max_len
        self.block_tokens = block_tokens if self.fmt.quantized else 0
        self.plan = plan or DecodePlan()
        self.name = name
        self.length = 0  # tokens held
        self.stored = 0  # tokens in `storage`; the rest (length - stored) sit in the tail
        self.reallocations = 0
        self._grad_values: torch.Tensor | None = None  # plain kinds under autograd
        self.storage = self._empty(self._bounded(capacity) if capacity else 0)
        tail_shape = (batch, heads, self.block_tokens, head_dim)
        self.tail = torch.zeros(tail_shape, device=self.device, dtype=dtype)
        self.prev_block = torch.zeros(tail_shape, device=self.device, dtype=dtype)
        self._prev_valid = False

    # ------------------------------------------------------------------ accounting

    @property
    def capacity(self) -> int:
        return self.storage.shape[2]

    @property
    def bytes_per_token(self) -> int:
        """Storage bytes one token of one sequence takes (all heads)."""
        return self.row_heads * self.width * self.storage.element_size()

    @property
    def nbytes(self) -> int:
        """Bytes allocated right now: storage at its capacity plus the full-precision tail."""
        total = self.storage.nbytes + self.tail.nbytes + self.prev_block.nbytes
        if self._grad_values is not None:
            total += self._grad_values.nbytes
        return total

    @property
    def pending(self) -> int:
        """Tokens held in full precision, not yet in `storage`."""
        return self.length - self.stored

    # ------------------------------------------------------------------ writing

    def append(self, x: torch.Tensor) -> None:
        """Append x (B, H, T, D): T new tokens."""
        B, H, T, D = x.shape
        if (B, H, D) != (self.batch, self.heads, self.head_dim):
            raise ValueError(
                f"{self.name}: expected (B, H, T, D) = ({self.batch}, {self.heads}, T, "
                f"{self.head_dim}), got {tuple(x.shape)}"
            )
        if self.max_len is not None and self.length + T > self.max_len:
            raise ValueError(
                f"{self.name}: {self.length} + {T} tokens exceed the cache's max_len "
                f"{self.max_len}"
            )
        self.reserve(self.length + T)  # storage always spans every held token, tail too
        if not self.fmt.quantized:
            self._append_plain(x)
        elif self.block_tokens == 0:
            self._store(x)
        else:
            self._append_blocked(x)
        self.length += T

    def _append_plain(self, x: torch.Tensor) -> None:
        if x.requires_grad or self._grad_values is not None:
            # Training through a RecurrentTopology: keep the graph, no in-place writes.
            held = self._grad_values if self._grad_values is not None else self.read()
            self._grad_values = torch.cat((held, x.to(self.fmt.dtype)), dim=2)
            self.stored += x.shape[2]
            return
        self._store(x)

    def _append_blocked(self, x: torch.Tensor) -> None:
        R, r = self.block_tokens, self.pending
        if r + x.shape[2] < R:  # the block does not fill (most decode steps): one copy
            self.tail[:, :, r : r + x.shape[2]] = x
            return
        rows = torch.cat((self.tail[:, :, :r], x.to(self.dtype)), dim=2) if r else x
        full = rows.shape[2] // R * R
        if full:
            self._store(rows[:, :, :full])
            self.prev_block.copy_(rows[:, :, full - R : full])
            self._prev_valid = True
        rest = rows.shape[2] - full
        if rest:
            self.tail[:, :, :rest] = rows[:, :, full:]

    def _store(self, x: torch.Tensor) -> None:
        """Write T rows into storage at `stored` (quantizing for block kinds)."""
        T = x.shape[2]
        self.reserve(self.stored + T)
        if self.fmt.quantized:
            rows = self._to_rows(x).to(torch.float32).contiguous()
            data = get_backend(self.device).quantize(self.fmt.name, rows)
        else:
            data = self._to_rows(x).to(self.fmt.dtype)
        self.storage[:, :, self.stored : self.stored + T] = data
        self.stored += T

    # ------------------------------------------------------------------ staged steps

    def stage(self, x: torch.Tensor, position: torch.Tensor) -> None:
        """Write one token x (B, H, 1, D) at a device-side `position` (0-d int64: the tokens
        held before it), without touching the host bookkeeping: the write a CUDA graph of a
        whole decode step can replay (caramba.infer.step_graph). `commit` then counts it.

        Plain kinds write storage row `position`; quantized kinds write tail row
        position % block_tokens (blocks flush exactly when they fill, so `stored` is always
        length // block_tokens * block_tokens). Storage must already hold position + 1 rows
        (`reserve`)."""
        if self.fmt.quantized and self.block_tokens == 0:
            raise ValueError(f"{self.name}: a quantized cache without a tail cannot stage")
        if not self.fmt.quantized:
            self.storage.index_copy_(2, position.view(1), self._to_rows(x).to(self.fmt.dtype))
        else:
            row = torch.remainder(position, self.block_tokens).view(1)
            self.tail.index_copy_(2, row, x.to(self.dtype))

    def commit(self) -> None:
        """Count the token `stage` wrote: a quantized tail that fills is quantized into
        storage (eagerly, once per block), keeping the block's exact copy for rollback."""
        self.length += 1
        if not self.fmt.quantized:
            self.stored += 1
        elif self.pending == self.block_tokens:
            self._store(self.tail)
            self.prev_block.copy_(self.tail)
            self._prev_valid = True

    def reserve(self, n: int, *, exact: bool = False) -> None:
        """Make room for n tokens in storage, growing geometrically (to exactly n with
        `exact`, used to keep a layer's tensors at one capacity)."""
        if n <= self.capacity:
            return
        grown = n if exact else self.plan.capacity(max(n, MIN_CAPACITY), self.capacity)
        new = self._empty(self._bounded(grown))
        if self.stored:
            new[:, :, : self.stored] = self.storage[:, :, : self.stored]
        self.storage = new
        self.reallocations += 1

    def _bounded(self, n: int) -> int:
        return n if self.max_len is None else max(min(n, self.max_len), 1)

    def _empty(self, capacity: int) -> torch.Tensor:
        # Zeros, not empty: fused kernels may read (and must ignore) slots past the length.
        shape = (self.batch, self.row_heads, capacity, self.width)
        return torch.zeros(shape, device=self.device, dtype=self.fmt.dtype)

    # ------------------------------------------------------------------ layouts

    def _to_rows(self, x: torch.Tensor) -> torch.Tensor:
        if self.layout == "head":
            return x
        B, H, T, D = x.shape
        return x.transpose(1, 2).reshape(B, 1, T, H * D)

    def _from_rows(self, rows: torch.Tensor) -> torch.Tensor:
        if self.layout == "head":
            return rows
        B, _, T, _ = rows.shape
        return rows.reshape(B, T, self.heads, self.head_dim).transpose(1, 2)

    # ------------------------------------------------------------------ reading

    def read(self, dtype: torch.dtype | None = None, span: int | None = None) -> torch.Tensor:
        """Held tokens (B, H, n, D): dequantized storage with the exact tail in place.

        n = length, or with `span` (decode-plan bucketing) n = max(length, min(span,
        capacity)): rows past the length are padding — finite, meaningless, to be masked —
        which costs nothing extra because storage already extends that far.
        """
        dtype = dtype or self.dtype
        if self._grad_values is not None:
            return self._grad_values.to(dtype)
        n = self.length if span is None else max(min(span, self.capacity), self.length)
        rows = self.storage[:, :, :n]
        if not self.fmt.quantized:
            return self._from_rows(rows).to(dtype)
        if n == 0:
            return torch.zeros(self.batch, self.heads, 0, self.head_dim, device=self.device,
                               dtype=dtype)
        # Backends read C-contiguous blocks; the copy is of the (small) quantized bytes.
        values = get_backend(self.device).dequantize(self.fmt.name, rows.contiguous(),
                                                     self.row_dim)
        values = self._from_rows(values).to(dtype)
        if self.pending:
            values[:, :, self.stored : self.length] = self.tail[:, :, : self.pending]
        return values

    def recent(self, start: int, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Tokens start .. length-1 as (B, H, n, D): rows already in storage dequantized,
        pending ones from the exact tail. Cheap for the few tokens a decode step needs."""
        dtype = dtype or self.dtype
        if not 0 <= start <= self.length:
            raise ValueError(f"{self.name}: start {start} outside [0, {self.length}]")
        if self._grad_values is not None:
            return self._grad_values[:, :, start:].to(dtype)
        parts = []
        if start < self.stored:
            rows = self.storage[:, :, start : self.stored]
            if self.fmt.quantized:
                rows = get_backend(self.device).dequantize(self.fmt.name, rows.contiguous(),
                                                           self.row_dim)
            parts.append(self._from_rows(rows).to(dtype))
        if self.pending:
            first = max(start - self.stored, 0)
            parts.append(self.tail[:, :, first : self.pending].to(dtype))
        if not parts:
            return torch.zeros(self.batch, self.heads, 0, self.head_dim, device=self.device,
                               dtype=dtype)
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=2)

    @property
    def kernel_ready(self) -> bool:
        """Whether the decode kernels can read the stored tokens straight from `storage`
        (either layout; the pending tail is attended separately and merged by log-sum-exp).
        False only for a plain cache holding an autograd graph."""
        return self._grad_values is None

    def kernel_view(self) -> torch.Tensor:
        """The whole storage, (B, Hs, capacity, W) and contiguous, for the decode kernels:
        they mask slots past the length, and the capacity changes in few, bucketed steps."""
        self.plan.spans.add(self.capacity)
        return self.storage

    # ------------------------------------------------------------------ rollback

    def truncate(self, n: int) -> None:
        """Keep the first n tokens (speculative rollback)."""
        if not 0 <= n <= self.length:
            raise ValueError(f"{self.name}: cannot truncate {self.length} tokens to {n}")
        if self._grad_values is not None:
            self._grad_values = self._grad_values[:, :, :n]
        if not self.fmt.quantized or self.block_tokens == 0 or n >= self.stored:
            self.length = n
            self.stored = min(self.stored, n)
            return
        R = self.block_tokens
        start = n // R * R  # the block boundary n falls into; rows start..n return to the tail
        if self._prev_valid and start == self.stored - R:
            self.tail[:, :, : n - start] = self.prev_block[:, :, : n - start]
        else:
            # Older than the exact copy: the dequantized values are all that is left.
            log.debug("%s: rollback past the exact block; tail restored from %s", self.name,
                      self.kind)
            rows = self.storage[:, :, start:n].contiguous()
            values = get_backend(self.device).dequantize(self.fmt.name, rows, self.row_dim)
            self.tail[:, :, : n - start] = self._from_rows(values).to(self.dtype)
        self._prev_valid = False
        self.stored = start
        self.length = n

    def __repr__(self) -> str:
        return (
            f"CacheTensor({self.name}, kind={self.kind}, layout={self.layout}, "
            f"length={self.length}, capacity={self.capacity}, {self.nbytes} bytes)"
        )
