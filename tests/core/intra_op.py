"""torch's intra-op thread count, set for a block of work (the tests of tiny models and of the
real teacher run on one: on a busy 2-core machine a second spinning OpenMP thread makes them
slower, a 135M forward 5-10x)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run torch on `n` intra-op threads, then restore the previous setting."""
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
