"""Triton quantize / dequantize / append against the caramba-core reference, byte for byte.

Runs on CUDA when a GPU is present, otherwise on the CPU under TRITON_INTERPRET=1.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from caramba.kernels import reference
from codec_cases import check_codecs_against_reference
from real_weights import NAMES, gguf_bytes
from triton_backend import DEVICE, backend

QUANTIZED = ["q8_0", "q4_0", "nf4"]
# Random shapes per format for the codec fuzz: the interpreter takes ~0.2 s a shape
# (CARAMBA_TRITON_FUZZ=1000 here: about 10 minutes), a GPU a few ms.
FUZZ_CASES = int(os.environ.get("CARAMBA_TRITON_FUZZ", 1000 if torch.cuda.is_available() else 16))


def rows_for(kind: str, gen: torch.Generator) -> list[torch.Tensor]:
    """Random rows at several scales plus GGML's edge cases (zeros, ties, halves, tiny)."""
    D = 128
    out = [
        torch.randn(6, D, generator=gen)
        * 10 ** float(torch.empty(1).uniform_(-5, 4, generator=gen))
        for _ in range(4)
    ]
    out.append(torch.zeros(2, D))
    tie = torch.zeros(1, D)
    tie[0, ::32], tie[0, 1::32] = 5.0, -5.0
    out += [tie, -tie]
    half = torch.zeros(1, D)
    half[0, ::32], half[0, 1::32], half[0, 2::32], half[0, 3::32] = 127.0, 2.5, -2.5, 126.5
    out.append(half)
    out.append(torch.linspace(-8, 8, 32).repeat(1, D // 32))
    out.append(torch.full((1, D), 1e-7))
    out.append(torch.randn(3, D, generator=gen).to(torch.float16).float())
    return out


@pytest.mark.parametrize("kind", [*QUANTIZED, "f16", "f32"])
def test_quantize_bytes_equal_the_reference(kind: str) -> None:
    gen = torch.Generator().manual_seed(5)
    for x in rows_for(kind, gen):
        ours = backend.quantize(kind, x.to(DEVICE)).cpu()
        assert torch.equal(ours, reference.quantize(kind, x)), kind


@pytest.mark.parametrize("kind", [*QUANTIZED, "f16", "f32"])
def test_codecs_match_the_reference_over_random_shapes(kind: str) -> None:
    """quantize, dequantize and append over random shapes (codec_cases: rank, width, magnitude,
    zero blocks, ties), byte for byte and bit for bit against the reference."""
    check_codecs_against_reference(
        np.random.default_rng(40 + len(kind) + ord(kind[-1])), kind, FUZZ_CASES,
        lambda k, x: backend.quantize(k, x.to(DEVICE)).cpu(),
        lambda k, blocks, D: backend.dequantize(k, blocks.to(DEVICE), D).cpu(),
        lambda k, cache, rows, lengths: backend.append(
            k, cache.to(DEVICE), rows.to(DEVICE), lengths.to(DEVICE)
        ).cpu(),
    )  # fmt: skip


@pytest.mark.parametrize("kind", ["q8_0", "q4_0"])
def test_quantize_bytes_equal_gguf(kind: str) -> None:
    gguf = pytest.importorskip("gguf", reason="gguf is not installed (pip install gguf)")
    qtype = getattr(gguf.GGMLQuantizationType, kind.upper())
    x = torch.randn(16, 256) * 3
    expected = torch.from_numpy(gguf.quants.quantize(x.numpy(), qtype))
    assert torch.equal(backend.quantize(kind, x.to(DEVICE)).cpu(), expected)


@pytest.mark.parametrize("kind", ["q8_0", "q4_0"])
@pytest.mark.parametrize("name", NAMES)
def test_quantize_bytes_equal_gguf_on_real_weights(name: str, kind: str) -> None:
    """SmolLM2's tensors (real_weights); the first 8 rows of each under the interpreter."""
    x, expected = gguf_bytes(name, kind, rows=None if torch.cuda.is_available() else 8)
    got = backend.quantize(kind, torch.from_numpy(x).to(DEVICE)).cpu().numpy()
    assert np.array_equal(got, expected), f"{name} {x.shape} {kind}"


def test_quantize_accepts_half_inputs_and_keeps_leading_dims() -> None:
    x = torch.randn(2, 3, 64).to(torch.float16)
    ours = backend.quantize("q4_0", x.to(DEVICE)).cpu()
    assert ours.shape == (2, 3, 36)
    assert torch.equal(ours, reference.quantize("q4_0", x))


@pytest.mark.parametrize("kind", QUANTIZED)
def test_dequantize_equals_the_reference(kind: str) -> None:
    blocks = reference.quantize(kind, torch.randn(3, 5, 192))
    ours = backend.dequantize(kind, blocks.to(DEVICE), 192).cpu()
    assert ours.dtype == torch.float32
    assert torch.equal(ours, reference.dequantize(kind, blocks, 192))


@pytest.mark.parametrize("kind", [*QUANTIZED, "f16", "f32"])
def test_append_writes_the_reference_bytes_at_each_length(kind: str) -> None:
    B, H, S, D = 3, 2, 7, 128
    cache = reference.quantize(kind, torch.randn(B, H, S, D))
    rows = torch.randn(B, H, D)
    lengths = torch.tensor([0, 6, 3], dtype=torch.int32)
    expected = reference.append(kind, cache.clone(), rows, lengths)
    ours = cache.to(DEVICE)
    assert backend.append(kind, ours, rows.to(DEVICE), lengths.to(DEVICE)) is ours
    assert torch.equal(ours.cpu(), expected)


def test_append_into_a_strided_cache_view() -> None:
    """A cache that is a slice of a bigger buffer (S_max < capacity) is written in place."""
    buffer = reference.quantize("q8_0", torch.randn(2, 3, 10, 64))
    view = buffer[:, 1:3, :6]
    rows = torch.randn(2, 2, 64)
    lengths = torch.tensor([5, 2], dtype=torch.int32)
    expected = buffer.clone()
    reference.append("q8_0", expected[:, 1:3, :6], rows, lengths)
    ours = buffer.to(DEVICE)
    backend.append("q8_0", ours[:, 1:3, :6], rows.to(DEVICE), lengths.to(DEVICE))
    assert torch.equal(ours.cpu(), expected)
    assert view.shape == (2, 2, 6, 68)


def test_append_outside_the_cache_writes_nothing() -> None:
    cache = reference.quantize("q4_0", torch.randn(2, 1, 4, 32)).to(DEVICE)
    before = cache.clone()
    lengths = torch.tensor([4, -1], dtype=torch.int32, device=DEVICE)
    backend.append("q4_0", cache, torch.randn(2, 1, 32, device=DEVICE), lengths)
    assert torch.equal(cache, before)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: backend.quantize("q5_0", torch.randn(2, 32)), r"kind: unknown cache format"),
        (lambda: backend.quantize("q8_0", torch.randn(2, 48)), r"x: row width 48"),
        (lambda: backend.quantize("q8_0", torch.ones(2, 32, dtype=torch.int32)), r"x: expected"),
        (
            lambda: backend.dequantize("q8_0", torch.zeros(1, 34, dtype=torch.int8), 32),
            r"blocks: a q8_0 cache holds torch.uint8",
        ),
        (
            lambda: backend.append(
                "q8_0",
                torch.zeros(2, 1, 4, 34, dtype=torch.uint8, device=DEVICE),
                torch.randn(2, 1, 32, device=DEVICE),
                torch.tensor([0, 1], device=DEVICE),
            ),
            r"lengths: expected dtype torch.int32",
        ),
        (
            lambda: backend.append(
                "q8_0",
                torch.zeros(2, 1, 4, 34, dtype=torch.uint8, device=DEVICE),
                torch.randn(2, 1, 64, device=DEVICE),
                torch.tensor([0, 1], dtype=torch.int32, device=DEVICE),
            ),
            r"rows: width 64 does not match",
        ),
    ],
)
def test_bad_input_names_the_argument(call, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()
