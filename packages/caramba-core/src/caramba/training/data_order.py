"""Which training windows a micro-batch sees: a pure function of (seed, step, micro-step).

Each micro-batch draws its offsets from a fresh generator seeded by a hash of the three
integers, so a resumed run needs no data-loader state and two runs with the same seed see
the same batches, whatever happened in between.
"""

from __future__ import annotations

import hashlib

import torch


def batch_seed(seed: int, step: int, micro: int) -> int:
    """A 63-bit seed; hashing keeps nearby (seed, step) pairs from giving related streams."""
    digest = hashlib.blake2b(f"{seed}:{step}:{micro}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def batch_generator(seed: int, step: int, micro: int) -> torch.Generator:
    """The CPU generator for micro-batch `micro` of optimizer step `step` (0-based)."""
    return torch.Generator().manual_seed(batch_seed(seed, step, micro))
