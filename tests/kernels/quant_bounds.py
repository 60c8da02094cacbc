"""Formats and the per-element quantization error bound shared by the CPU kernel tests.

The bound is test_cpu_quant's derivation: round-to-nearest on the block's scale, plus fp16
rounding of that scale (worst case: loose for the 4-bit formats, tight for f16 and q8_0).
"""

from __future__ import annotations

import numpy as np

FORMATS = ("f32", "f16", "q8_0", "q4_0", "nf4")
BLOCK = {"f32": 1, "f16": 1, "q8_0": 32, "q4_0": 32, "nf4": 64}
U = 2.0**-24  # float32 unit roundoff
U16 = 2.0**-11  # float16 unit roundoff


def delta_bound(kind: str, x: np.ndarray) -> np.ndarray:
    """Per-element bound on |dequantize(quantize(x)) - x| over rows x (..., row)."""
    if kind == "f32":
        return np.zeros(x.shape)
    if kind == "f16":
        return np.maximum(np.abs(x) * U16, 2.0**-25)
    block = BLOCK[kind]
    amax = np.abs(x.reshape(*x.shape[:-1], -1, block)).max(axis=-1, keepdims=True)
    rel, qmax = {
        "q8_0": (1 / 254 + U16, 127),
        "q4_0": (1 / 8 + U16, 8),
        "nf4": (0.1519037 + U16, 1),
    }[kind]
    bound = amax * rel * (1 + 1e-4) + qmax * 2.0**-25
    return np.broadcast_to(bound, (*amax.shape[:-1], block)).reshape(x.shape)
