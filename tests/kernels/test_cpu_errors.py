"""Bad input to the C++ CPU backend raises TypeError / ValueError naming the argument.

Nothing here may crash the interpreter or return a silently wrong result: wrong dtypes,
non-contiguous or misaligned arrays, mismatched shapes, widths that are not whole blocks,
empty caches, lengths outside [1, S_max], aliasing outputs, unknown formats and paths.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

cpu = pytest.importorskip(
    "caramba_kernels.cpu",
    reason="caramba_kernels is not installed (pip install ./packages/caramba-kernels)",
)
backend = cpu.backend

B, HQ, HKV, S, D, DV = 2, 4, 2, 8, 64, 32


def good() -> dict:
    rng = np.random.default_rng(0)
    return dict(
        q=rng.standard_normal((B, HQ, D)).astype(np.float32),
        k=backend.quantize("q8_0", rng.standard_normal((B, HKV, S, D)).astype(np.float32)),
        v=rng.standard_normal((B, HKV, S, DV)).astype(np.float16),
        lengths=np.array([3, S], np.int32),
        scale=0.125,
        k_format="q8_0",
        v_format="f16",
    )


def call(**changes):
    args = good()
    args.update(changes)
    return backend.decode_attention(
        args.pop("q"), args.pop("k"), args.pop("v"), args.pop("lengths"), **args
    )


def misaligned(shape, dtype) -> np.ndarray:
    """A C-contiguous array whose data pointer is off by one byte."""
    n = int(np.prod(shape)) * np.dtype(dtype).itemsize
    return np.frombuffer(np.zeros(n + 1, np.uint8)[1:].data, dtype=dtype).reshape(shape)


def test_the_good_call_works() -> None:
    assert call().shape == (B, HQ, DV)


@pytest.mark.parametrize(
    ("changes", "error", "message"),
    [
        (dict(q=np.zeros((B, HQ, D), np.float64)), TypeError, "q: expected dtype float32, got float64"),
        (dict(q=[[0.0]]), TypeError, "q: expected an array"),
        (dict(q=np.zeros((B, HQ, 2 * D), np.float32)[:, :, ::2]), ValueError, "q: must be C-contiguous"),
        (dict(q=misaligned((B, HQ, D), np.float32)), ValueError, "q: data is not aligned"),
        (dict(q=np.zeros((B, HQ), np.float32)), ValueError, "q: expected shape (B, Hq, D)"),
        (dict(q=np.zeros((B, 3, D), np.float32)), ValueError, "k: 2 KV heads do not divide the query's 3 heads"),
        (dict(q=np.zeros((B + 1, HQ, D), np.float32)), ValueError, "k: batch 2 does not match the query's 3"),
        (dict(q=np.zeros((B, HQ, 96), np.float32)), ValueError, "k: rows hold 64 values in q8_0, the query has head dim 96"),
        (dict(q=np.zeros((B, HQ, 48), np.float32)), ValueError, "k: head dim 48 is not a multiple of the q8_0 block size 32"),
        (dict(k=np.zeros((B, HKV, S, 60), np.uint8)), ValueError, "k: last dimension 60 is not a whole number of q8_0 blocks"),
        (dict(k=np.zeros((B, HKV, S, 68), np.int8)), TypeError, "k: expected dtype uint8, got int8"),
        (dict(k=np.zeros((B, HKV, 0, 68), np.uint8)), ValueError, "k: the cache is empty (S_max = 0)"),
        (dict(v=np.zeros((B, HKV, S, DV), np.float32)), TypeError, "v: expected dtype float16, got float32"),
        (dict(v=np.zeros((B, HKV, S + 1, DV), np.float16)), ValueError, "v: (heads, S_max) = (2, 9) does not match k's (2, 8)"),
        (dict(lengths=np.array([0, 1], np.int32)), ValueError, "lengths[0] = 0"),
        (dict(lengths=np.array([1, S + 1], np.int32)), ValueError, "lengths[1] = 9 exceeds the cache's S_max = 8"),
        (dict(lengths=np.array([-5, 1], np.int32)), ValueError, "lengths[0] = -5"),
        (dict(lengths=np.array([1, 1], np.int64)), TypeError, "lengths: expected dtype int32, got int64"),
        (dict(lengths=np.array([1], np.int32)), ValueError, "lengths: expected shape (2,), got (1,)"),
        (dict(lengths=[1, 2]), TypeError, "lengths: expected an array"),
        (dict(scale=float("nan")), ValueError, "scale: expected a finite float"),
        (dict(scale="big"), TypeError, "scale: expected a float"),
        (dict(scale=None), TypeError, "scale: required"),
        (dict(k_format="q5_k"), ValueError, "k_format: unknown format 'q5_k'"),
        (dict(v_format=3), TypeError, "v_format: expected a format name"),
        (dict(num_splits=-1), ValueError, "num_splits: expected an int in [0, 2^31)"),
        (dict(num_threads=2**40), ValueError, "num_threads: expected an int in [0, 2^31)"),
        (dict(num_threads=1.5), TypeError, "num_threads: expected an int >= 0"),
        (dict(path="gpu"), ValueError, "path: expected one of"),
        (dict(out=np.zeros((B, HQ, DV + 1), np.float32)), ValueError, "out: expected shape (2, 4, 32)"),
        (dict(out=np.zeros((B, HQ, DV), np.float64)), TypeError, "out: expected dtype float32"),
        (dict(out=np.zeros((B, HQ, 2 * DV), np.float32)[:, :, ::2]), ValueError, "out: must be C-contiguous"),
    ],
)
def test_bad_decode_arguments_raise_naming_the_argument(changes, error, message) -> None:
    with pytest.raises(error, match=re.escape(message)):
        call(**changes)


def test_read_only_out_is_refused() -> None:
    out = np.zeros((B, HQ, DV), np.float32)
    out.flags.writeable = False
    with pytest.raises(ValueError, match="out: the array is read-only"):
        call(out=out)


def test_out_aliasing_an_input_is_refused() -> None:
    args = good()
    q = np.zeros((B, HQ, DV), np.float32)  # out may not be q itself
    k = backend.quantize("q8_0", np.zeros((B, HKV, S, DV), np.float32))
    with pytest.raises(ValueError, match="out overlaps q"):
        backend.decode_attention(
            q, k, args["v"], args["lengths"], scale=1.0, k_format="q8_0", v_format="f16", out=q
        )


def test_read_only_inputs_are_accepted() -> None:
    args = good()
    for name in ("q", "k", "v", "lengths"):
        args[name].flags.writeable = False
    out = backend.decode_attention(
        args["q"], args["k"], args["v"], args["lengths"], scale=0.1, k_format="q8_0", v_format="f16"
    )
    assert np.isfinite(out).all()


def test_dba_mismatches_name_the_argument() -> None:
    rng = np.random.default_rng(1)
    q_sem = rng.standard_normal((B, HQ, 32)).astype(np.float32)
    q_geo = rng.standard_normal((B, HQ, 64)).astype(np.float32)
    k_sem = backend.quantize("q4_0", rng.standard_normal((B, HKV, S, 32)).astype(np.float32))
    k_geo = backend.quantize("nf4", rng.standard_normal((B, HKV, S, 64)).astype(np.float32))
    v = backend.quantize("q8_0", rng.standard_normal((B, HKV, S, 32)).astype(np.float32))
    lengths = np.array([1, S], np.int32)
    kw = dict(scale_sem=0.2, scale_geo=0.1, k_sem_format="q4_0", k_geo_format="nf4", v_format="q8_0")
    assert backend.dba_decode_attention(q_sem, q_geo, k_sem, k_geo, v, lengths, **kw).shape == (B, HQ, 32)
    with pytest.raises(ValueError, match=re.escape("q_geo: (B, Hq) = (2, 2) does not match q_sem's (2, 4)")):
        backend.dba_decode_attention(q_sem, q_geo[:, :2].copy(), k_sem, k_geo, v, lengths, **kw)
    with pytest.raises(ValueError, match=re.escape("k_geo: (heads, S_max) = (2, 7) does not match k_sem's (2, 8)")):
        backend.dba_decode_attention(q_sem, q_geo, k_sem, k_geo[:, :, :7].copy(), v, lengths, **kw)
    with pytest.raises(ValueError, match="k_geo: head dim 32 is not a multiple of the nf4 block size 64"):
        backend.dba_decode_attention(q_sem, q_geo[..., :32].copy(), k_sem, k_geo, v, lengths, **kw)
    with pytest.raises(ValueError, match="scale_geo: expected a finite float"):
        backend.dba_decode_attention(q_sem, q_geo, k_sem, k_geo, v, lengths, **{**kw, "scale_geo": float("inf")})
    with pytest.raises(TypeError, match="k_sem_format, k_geo_format and v_format are required"):
        backend.dba_decode_attention(q_sem, q_geo, k_sem, k_geo, v, lengths, 0.2, 0.1)


@pytest.mark.parametrize(
    ("call_", "error", "message"),
    [
        (lambda: backend.quantize("q4_0", np.zeros((2, 48), np.float32)), ValueError, "x: row width 48 is not a multiple of the q4_0 block size 32"),
        (lambda: backend.quantize("q8_0", np.zeros((2, 64), np.float64)), TypeError, "x: expected dtype float32, got float64"),
        (lambda: backend.quantize("q8_0", np.array(1.0, np.float32)), ValueError, "x: expected at least one dimension"),
        (lambda: backend.quantize("bogus", np.zeros(32, np.float32)), ValueError, "kind: unknown format 'bogus'"),
        (lambda: backend.quantize("q8_0", np.zeros((0, 32), np.float32)), ValueError, "x: empty array"),
        (lambda: backend.quantize("q8_0", np.zeros((2, 64), np.float32), path="simd2"), ValueError, "path: expected one of"),
        (lambda: backend.dequantize("q8_0", np.zeros((2, 34), np.uint8), 64), ValueError, "D: 64 does not match blocks of width 34"),
        (lambda: backend.dequantize("nf4", np.zeros((2, 34), np.uint8), 32), ValueError, "D: head dim 32 is not a multiple of the nf4 block size 64"),
        (lambda: backend.dequantize("q8_0", np.zeros((2, 34), np.uint8), 32.0), TypeError, "D: expected the row width as an int"),
        (lambda: backend.dequantize("f16", np.zeros((2, 34), np.float32), 34), TypeError, "blocks: expected dtype float16, got float32"),
        (lambda: backend.append("q8_0", np.zeros((1, 1, 2, 34), np.uint8), np.zeros((1, 1, 32), np.float32), np.array([2], np.int32)), ValueError, "lengths[0] = 2: no free slot"),
        (lambda: backend.append("q8_0", np.zeros((1, 1, 2, 34), np.uint8), np.zeros((1, 2, 32), np.float32), np.array([0], np.int32)), ValueError, "rows: expected shape (1, 1, D)"),
    ],
)
def test_bad_codec_arguments_raise_naming_the_argument(call_, error, message) -> None:
    with pytest.raises(error, match=re.escape(message)):
        call_()


def test_torch_tensors_are_validated_too() -> None:
    torch = pytest.importorskip("torch")
    args = good()
    with pytest.raises(ValueError, match="q: must be C-contiguous"):
        call(q=torch.from_numpy(args["q"]).transpose(0, 1).contiguous().transpose(0, 1))
    with pytest.raises(TypeError, match="q: expected dtype float32, got bfloat16"):
        call(q=torch.zeros(B, HQ, D, dtype=torch.bfloat16))
