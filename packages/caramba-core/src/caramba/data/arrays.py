"""A 1-D array of token ids and the two ways a trainer reads it: random and evaluation batches.

Random offsets come only from the `torch.Generator` the caller passes, so the trainer can make
the data order a pure function of (seed, step) and resume a run exactly.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from caramba.data.tokenfile import read_tokens
from caramba.errors import DataError

Batch = tuple[torch.Tensor, torch.Tensor]


class TokenArray:
    """Token ids in a 1-D non-negative integer array, memory-mapped when read from .npy."""

    def __init__(self, data: np.ndarray, source: str) -> None:
        _check_array(data, source)
        self.data = data
        self.source = source

    @classmethod
    def load(cls, path: Path, key: str = "data.config.path") -> TokenArray:
        """Open a `.npy` file (memory-mapped, not read into RAM) or parse a `.tokens` file."""
        path = Path(path)
        if not path.is_file():
            raise DataError(f"{key}: token file {path} does not exist; fix the path.")
        if path.stat().st_size == 0:
            raise DataError(
                f"{key}: token file {path} is empty; it must hold at least two token ids."
            )
        if path.suffix == ".tokens":
            return cls(read_tokens(path), str(path))
        if path.suffix != ".npy":
            raise DataError(
                f"{key}: {path} is neither a .npy nor a .tokens file; save token ids with "
                f"numpy.save(..., ids) or write them as a .tokens text file."
            )
        try:
            data = np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise DataError(
                f"{key}: {path} is not a readable .npy array ({exc}); write it with "
                f"numpy.save(path, np.asarray(ids, dtype=np.uint16))."
            ) from exc
        return cls(data, str(path))

    def __len__(self) -> int:
        return int(self.data.shape[0])

    def max_id(self) -> int:
        return int(self.data.max())

    def split(self, val_frac: float) -> tuple[TokenArray, TokenArray]:
        """(first 1 - val_frac, last val_frac): the tail becomes validation, unshuffled."""
        n_val = int(len(self) * val_frac)
        if n_val < 2 or len(self) - n_val < 2:
            raise DataError(
                f"{self.source} holds {len(self)} tokens: too few to split off val_frac="
                f"{val_frac} as validation (each part needs at least 2 tokens); use a larger "
                f"file or a separate validation file (a dataset folder with train.npy and val.npy)."
            )
        cut = len(self) - n_val
        return (
            TokenArray(self.data[:cut], f"{self.source}[:{cut}]"),
            TokenArray(self.data[cut:], f"{self.source}[{cut}:]"),
        )

    def check_block_size(self, block_size: int, what: str) -> None:
        if len(self) < block_size + 1:
            raise DataError(
                f"the {what} split ({self.source}) has {len(self)} tokens, fewer than "
                f"block_size + 1 = {block_size + 1}; lower train.block_size or use more data."
            )

    def batch(self, batch_size: int, block_size: int, generator: torch.Generator) -> Batch:
        """(x, y) int64 tensors of shape (batch_size, block_size), y = x shifted left by one.

        Offsets are uniform over every complete window; `generator` (a CPU generator) is the
        only source of randomness.
        """
        self.check_block_size(block_size, "requested")
        offsets = torch.randint(0, len(self) - block_size, (batch_size,), generator=generator)
        return self._windows(offsets.numpy(), block_size)

    def iter_eval_batches(
        self, batch_size: int, block_size: int, max_batches: int | None = None
    ) -> Iterator[Batch]:
        """Deterministic, non-overlapping windows on the grid 0, T, 2T, ... for validation.

        With `max_batches` too small to cover the grid, the windows are spread evenly over the
        whole array rather than taken from its start: a corpus's validation split is several
        documents in a row, and the first few windows would all come from the first one. The
        last batch may be smaller than `batch_size`.
        """
        self.check_block_size(block_size, "validation")
        n_windows = (len(self) - 1) // block_size
        wanted = n_windows if max_batches is None else min(n_windows, max_batches * batch_size)
        # Evenly spaced, distinct grid indices (floor(i * n / k) is strictly increasing for k <= n).
        index = (np.arange(wanted, dtype=np.int64) * n_windows) // wanted
        for i in range(0, wanted, batch_size):
            yield self._windows(index[i : i + batch_size] * block_size, block_size)

    def _windows(self, starts: np.ndarray, block_size: int) -> Batch:
        rows = starts.astype(np.int64)[:, None] + np.arange(block_size + 1, dtype=np.int64)
        chunk = torch.from_numpy(np.asarray(self.data[rows]).astype(np.int64))
        return chunk[:, :-1].contiguous(), chunk[:, 1:].contiguous()

    def __repr__(self) -> str:
        return f"TokenArray({self.source!r}, {len(self)} tokens, {self.data.dtype})"


def _check_array(data: np.ndarray, source: str) -> None:
    if data.ndim != 1:
        raise DataError(
            f"{source} is a {data.ndim}-D array of shape {tuple(data.shape)}; token data must "
            f"be 1-D (one long stream of ids): save array.reshape(-1) instead."
        )
    if data.dtype.kind not in "ui":
        raise DataError(
            f"{source} holds {data.dtype} values; token ids must be integers: save "
            f"np.asarray(ids, dtype=np.uint16) (or uint32 for vocabularies over 65535)."
        )
    if data.shape[0] == 0:
        raise DataError(f"{source} holds no tokens; it must hold at least two token ids.")
    if data.dtype.kind == "i" and int(data.min()) < 0:
        raise DataError(
            f"{source} holds negative token id {int(data.min())}; token ids must be >= 0."
        )
