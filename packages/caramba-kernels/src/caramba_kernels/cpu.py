"""The C++ CPU kernel backend: quantize, dequantize, append and fused decode attention.

Arrays go to C++ through DLPack without copies: numpy arrays, torch CPU tensors, anything with
`__dlpack__`. Everything is validated before C++ sees a pointer; bad input raises TypeError
(wrong kind of object or dtype) or ValueError (shape, layout, value), naming the argument.

Results are new numpy arrays, written into `out=` when given. When the main input (x, blocks,
q, q_sem) is a torch tensor the result is a torch tensor sharing that memory, so the backend
serves caramba's dispatch (`caramba.kernels.get_backend("cpu")`) unchanged.

Decode caches may be in the head layout (B, Hkv, S_max, row of D values) or the token layout
(B, 1, S_max, row of Hkv x D values: one row per token, head g at values [g*D, (g+1)*D), which
may straddle quantization blocks), each tensor independently; Hkv is inferred (see
caramba.kernels.dispatch). return_lse=True also returns the (B, Hq) float32 natural log of the
softmax denominator, so partial results over disjoint positions merge exactly.

`path` picks the implementation: "scalar" (the reference loops), "avx2" (AVX2+FMA+F16C),
"avx512" (AVX-512 attention kernels), "neon", "simd" (the best of those the CPU has) or "auto"
(= simd, else scalar); `backend.paths` lists what runs here, others raise ValueError. Decode
splits each sequence into `num_splits` chunks run on `num_threads` threads (0 or None = auto)
and merges them by log-sum-exp.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

from caramba_kernels import _ext
from caramba_kernels.blocks import BLOCKS, row_values

# name -> (values per block, bytes per block, storage dtype of a cache in that format)
_DTYPES = {"f32": np.float32, "f16": np.float16}
FORMATS: dict[str, tuple[int, int, Any]] = {
    kind: (*shape, _DTYPES.get(kind, np.uint8)) for kind, shape in BLOCKS.items()
}
PATHS = ("auto", "scalar", "simd", "avx2", "avx512", "neon")


def _is_torch(x: object) -> bool:
    module = type(x).__module__
    return module == "torch" or module.startswith("torch.")


# torch dtypes numpy shares memory with: such a CPU tensor crosses as a numpy view (a C call)
# instead of through torch's __dlpack__ (Python code, ~3 us per tensor, six tensors per decode).
_NUMPY_VIEWABLE = ("torch.float32", "torch.float16", "torch.uint8", "torch.int32", "torch.int64")


def _array(x: object, name: str, view: bool = True) -> Any:
    """`x` if it can cross by DLPack (torch tensors that require grad are detached, a pending
    negation or conjugation is applied; with `view`, CPU tensors numpy can view cross as numpy
    views of the same memory)."""
    if isinstance(x, np.ndarray):
        return x
    if _is_torch(x):
        if view:
            try:  # one C call where it works (0.6 us against 1.4 for the checks below)
                return x.numpy()
            except (RuntimeError, TypeError):  # grad, not CPU, a sign or conj bit, no numpy dtype
                pass
        x = x.detach() if getattr(x, "requires_grad", False) else x
        if x.is_neg() or x.is_conj():  # DLPack and numpy see raw memory, not a pending sign
            x = x.resolve_neg().resolve_conj()
        if view and x.device.type == "cpu" and str(x.dtype) in _NUMPY_VIEWABLE:
            return x.numpy()
        return x
    if hasattr(x, "__dlpack__") and hasattr(x, "shape"):
        return x
    raise TypeError(
        f"{name}: expected an array (numpy array or torch CPU tensor), got {type(x).__name__}"
    )


def _shape(x: Any, name: str, ndim: int | None = None, what: str = "") -> tuple[int, ...]:
    shape = x.shape  # numpy's is a tuple of ints already (most calls: no copy, ~1 us a decode)
    if type(shape) is not tuple:
        shape = tuple(map(int, shape))
    if ndim is not None and len(shape) != ndim:
        raise ValueError(f"{name}: expected shape {what}, got {shape}")
    if ndim is None and len(shape) < 1:
        raise ValueError(f"{name}: expected at least one dimension (the row), got a scalar")
    return shape


def _format(kind: object, name: str) -> tuple[int, int, Any]:
    if not isinstance(kind, str):
        raise TypeError(f"{name}: expected a format name (str), got {type(kind).__name__}")
    if kind not in FORMATS:
        raise ValueError(f"{name}: unknown format {kind!r}; known: {', '.join(FORMATS)}")
    return FORMATS[kind]


def _count(value: object, name: str) -> int:
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name}: expected an int >= 0 (0 or None = auto), got {value!r}")
    if not 0 <= value <= 2**31 - 1:
        raise ValueError(f"{name}: expected an int in [0, 2^31) (0 or None = auto), got {value}")
    return int(value)


def _path(path: object) -> str:
    if path not in PATHS:
        raise ValueError(f"path: expected one of {', '.join(map(repr, PATHS))}, got {path!r}")
    return str(path)


def _scale(value: object, name: str) -> float:
    if value is None:
        raise TypeError(f"{name}: required (a finite float)")
    if isinstance(value, bool):
        raise TypeError(f"{name}: expected a float, got bool")
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise TypeError(f"{name}: expected a float, got {type(value).__name__}") from None


def _value_width(v_format: str, v: Any, k_format: str, k: Any, k_name: str, D: int) -> int:
    """Dv of the value cache: its row width (head layout) or row / Hkv (token layout), with Hkv
    read off the first key cache (k) and its query's head dim D. Inconsistent shapes are left
    to the extension, which names the argument."""
    row_v = row_values(v_format, _shape(v, "v", 4, "(B, Hkv, S_max, width)")[-1], "v")
    hkv = int(_shape(k, k_name, 4, "(B, Hkv, S_max, width)")[1])
    if int(v.shape[1]) != 1:
        return row_v
    if hkv == 1 and D > 0:
        row_k = row_values(k_format, int(k.shape[-1]), k_name)
        hkv = row_k // D if row_k % D == 0 else 1
    return row_v // hkv if row_v % hkv == 0 else row_v


def _out(out: object, shape: tuple[int, ...], dtype: Any, name: str = "out") -> Any:
    if out is None:
        return np.empty(shape, dtype=dtype)
    if isinstance(out, np.ndarray) and not out.flags.writeable:
        raise ValueError(f"{name}: the array is read-only")
    return _array(out, name, view=False)  # the caller gets back the very object it passed


def _lse(return_lse: object, lse_out: object, B: int, Hq: int) -> Any:
    """The (B, Hq) float32 log-sum-exp array to fill, or None when not asked for."""
    if not isinstance(return_lse, (bool, np.bool_)):
        raise TypeError(f"return_lse: expected a bool, got {type(return_lse).__name__}")
    if not return_lse:
        if lse_out is not None:
            raise ValueError("lse_out: given, but return_lse is False; pass return_lse=True")
        return None
    return _out(lse_out, (B, Hq), np.float32, "lse_out")


def _result(out: Any, like: object) -> Any:
    """numpy result -> torch tensor over the same memory when the input was torch."""
    if isinstance(out, np.ndarray) and _is_torch(like):
        return sys.modules["torch"].from_numpy(out)
    return out


class CpuBackend:
    """caramba's `cpu` kernel backend (entry point `caramba.kernels`: cpu)."""

    name = "cpu"
    formats = tuple(FORMATS)

    @property
    def simd(self) -> str:
        """What path="simd" runs here: "avx512", "avx2", "neon" or "none"."""
        return _ext.simd_name()

    @property
    def paths(self) -> tuple[str, ...]:
        """The `path` values that run on this CPU, e.g. ("auto", "scalar", "simd", "avx2")."""
        return tuple(_ext.available_paths())

    @property
    def default_num_threads(self) -> int:
        return _ext.default_num_threads()

    def supports(self, device: object) -> bool:
        return getattr(device, "type", device) == "cpu"

    def __repr__(self) -> str:
        return f"<kernel backend 'cpu' (C++ {_ext.__version__}, simd: {self.simd})>"

    # -- formats ---------------------------------------------------------------------------

    def quantize(self, kind: str, x: Any, *, out: Any = None, path: str = "auto") -> Any:
        """Rows of float32 x (..., D) in format `kind`: uint8 (..., bytes_per_row) blocks, or
        float16/float32 values for the plain formats. Bytes match GGML/gguf for q8_0/q4_0."""
        block, block_bytes, dtype = _format(kind, "kind")
        xa = _array(x, "x")
        shape = _shape(xa, "x")
        D = shape[-1]
        if D % block:
            raise ValueError(f"x: row width {D} is not a multiple of the {kind} block size {block}")
        width = D if block == 1 else D // block * block_bytes
        res = _out(out, (*shape[:-1], width), dtype)
        _ext.quantize(kind, xa, res, _path(path))
        return _result(res, x)

    def dequantize(
        self, kind: str, blocks: Any, D: int, *, out: Any = None, path: str = "auto"
    ) -> Any:
        """float32 (..., D) values of rows stored in format `kind`."""
        _, _, _ = _format(kind, "kind")
        if isinstance(D, bool) or not isinstance(D, (int, np.integer)):
            raise TypeError(f"D: expected the row width as an int, got {type(D).__name__}")
        ba = _array(blocks, "blocks")
        shape = _shape(ba, "blocks")
        res = _out(out, (*shape[:-1], int(D)), np.float32)
        _ext.dequantize(kind, ba, int(D), res, _path(path))
        return _result(res, blocks)

    def append(self, kind: str, cache: Any, rows: Any, lengths: Any) -> Any:
        """Quantize rows (B, H, D) into cache (B, H, S_max, width) at position lengths[b], in
        place; returns cache. The caller advances lengths."""
        _format(kind, "kind")
        if isinstance(cache, np.ndarray) and not cache.flags.writeable:
            raise ValueError("cache: the array is read-only")
        _ext.append(kind, _array(cache, "cache"), _array(rows, "rows"), _array(lengths, "lengths"))
        return cache

    # -- attention -------------------------------------------------------------------------

    def decode_attention(
        self,
        q: Any,
        k: Any,
        v: Any,
        lengths: Any,
        scale: float | None = None,
        k_format: str | None = None,
        v_format: str | None = None,
        *,
        num_splits: int | None = 0,
        num_threads: int | None = 0,
        path: str = "auto",
        out: Any = None,
        return_lse: bool = False,
        lse_out: Any = None,
    ) -> Any:
        """Decode attention: q (B, Hq, D) float32 over caches k, v in k_format / v_format (head
        layout (B, Hkv, S_max, ·) or token layout (B, 1, S_max, ·)), positions 0 .. lengths[b]-1
        -> (B, Hq, Dv) float32, or (out, lse (B, Hq)) with return_lse=True."""
        if k_format is None or v_format is None:
            raise TypeError("k_format and v_format are required")
        _format(k_format, "k_format")
        _format(v_format, "v_format")
        qa, ka, va = _array(q, "q"), _array(k, "k"), _array(v, "v")
        B, Hq, D = _shape(qa, "q", 3, "(B, Hq, D)")
        Dv = _value_width(v_format, va, k_format, ka, "k", D)
        res = _out(out, (B, Hq, Dv), np.float32)
        lse = _lse(return_lse, lse_out, B, Hq)
        _ext.decode_attention(
            qa, ka, va, _array(lengths, "lengths"), k_format, v_format, _scale(scale, "scale"),
            _count(num_splits, "num_splits"), _count(num_threads, "num_threads"), _path(path), res,
            lse,
        )  # fmt: skip
        return (_result(res, q), _result(lse, q)) if lse is not None else _result(res, q)

    def dba_decode_attention(
        self,
        q_sem: Any,
        q_geo: Any,
        k_sem: Any,
        k_geo: Any,
        v: Any,
        lengths: Any,
        scale_sem: float | None = None,
        scale_geo: float | None = None,
        k_sem_format: str | None = None,
        k_geo_format: str | None = None,
        v_format: str | None = None,
        *,
        num_splits: int | None = 0,
        num_threads: int | None = 0,
        path: str = "auto",
        out: Any = None,
        return_lse: bool = False,
        lse_out: Any = None,
    ) -> Any:
        """DBA decode: score = scale_sem (q_sem . k_sem) + scale_geo (q_geo . k_geo), one
        softmax, values from v -> (B, Hq, Dv) float32, or (out, lse) with return_lse=True. Each
        cache is in the head or the token layout independently."""
        if k_sem_format is None or k_geo_format is None or v_format is None:
            raise TypeError("k_sem_format, k_geo_format and v_format are required")
        for fmt, name in (
            (k_sem_format, "k_sem_format"), (k_geo_format, "k_geo_format"), (v_format, "v_format")
        ):  # fmt: skip
            _format(fmt, name)
        qs, qg = _array(q_sem, "q_sem"), _array(q_geo, "q_geo")
        ks, kg, va = _array(k_sem, "k_sem"), _array(k_geo, "k_geo"), _array(v, "v")
        B, Hq, D_sem = _shape(qs, "q_sem", 3, "(B, Hq, D_sem)")
        Dv = _value_width(v_format, va, k_sem_format, ks, "k_sem", D_sem)
        res = _out(out, (B, Hq, Dv), np.float32)
        lse = _lse(return_lse, lse_out, B, Hq)
        _ext.dba_decode_attention(
            qs, qg, ks, kg, va, _array(lengths, "lengths"), k_sem_format, k_geo_format, v_format,
            _scale(scale_sem, "scale_sem"), _scale(scale_geo, "scale_geo"),
            _count(num_splits, "num_splits"), _count(num_threads, "num_threads"), _path(path), res,
            lse,
        )  # fmt: skip
        if lse is None:
            return _result(res, q_sem)
        return _result(res, q_sem), _result(lse, q_sem)


backend = CpuBackend()

__all__ = ["FORMATS", "CpuBackend", "backend"]
