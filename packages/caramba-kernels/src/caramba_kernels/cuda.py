"""The tensor-core decode kernel (csrc/cuda, caramba/cuda.h) for CUDA tensors, through ctypes.

The library libcaramba_kernels_cuda is built with the package when CMake finds a CUDA compiler
and lives in caramba_kernels/lib; CARAMBA_KERNELS_CUDA_LIB names another file. Without it (or
without a GPU) `load()` returns None and the Triton kernels serve every call. It takes plain
device pointers, so it needs no torch at build time; the Triton backend calls it for the
shapes it serves (`supported`) and merges its split partials with its own merge kernel.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.util
import os
from pathlib import Path
from typing import Any

LIBRARY_ENV = "CARAMBA_KERNELS_CUDA_LIB"
DISABLE_ENV = "CARAMBA_KERNELS_CUDA"  # "0": never use the library
CHUNK = 32  # positions per warp step; split lengths are multiples of it
FORMAT_CODES = {"q8_0": 2, "q4_0": 3}


class Cache(ctypes.Structure):
    _fields_ = [
        ("data", ctypes.c_void_p),
        ("batch_stride", ctypes.c_int64),
        ("head_stride", ctypes.c_int64),
        ("token_stride", ctypes.c_int64),
        ("head_shift", ctypes.c_int32),
        ("format", ctypes.c_int32),
        ("dim", ctypes.c_int32),
    ]


class Params(ctypes.Structure):
    _fields_ = [
        ("q_sem", ctypes.c_void_p),
        ("q_geo", ctypes.c_void_p),
        ("k_sem", Cache),
        ("k_geo", Cache),
        ("v", Cache),
        ("lengths", ctypes.c_void_p),
        ("m", ctypes.c_void_p),
        ("l", ctypes.c_void_p),
        ("o", ctypes.c_void_p),
        ("scale_sem", ctypes.c_float),
        ("scale_geo", ctypes.c_float),
        ("batch", ctypes.c_int32),
        ("q_heads", ctypes.c_int32),
        ("kv_heads", ctypes.c_int32),
        ("s_max", ctypes.c_int32),
        ("split_len", ctypes.c_int32),
        ("n_splits", ctypes.c_int32),
        ("q_type", ctypes.c_int32),
        ("kernel", ctypes.c_int32),
    ]


class Status(ctypes.Structure):
    _fields_ = [("code", ctypes.c_int), ("message", ctypes.c_char * 256)]


def _library_path() -> Path | None:
    given = os.environ.get(LIBRARY_ENV)
    if given:
        return Path(given)
    roots = [Path(__file__).resolve().parent]
    spec = importlib.util.find_spec("caramba_kernels._ext")  # an editable install keeps it apart
    if spec is not None and spec.origin:
        roots.append(Path(spec.origin).resolve().parent)
    for root in roots:
        found = sorted((root / "lib").glob("libcaramba_kernels_cuda*.so"))
        found += sorted((root / "lib").glob("caramba_kernels_cuda*.dll"))
        if found:
            return found[0]
    return None


@functools.cache
def load() -> Any | None:
    """The library's functions, or None where it is not built or disabled."""
    if os.environ.get(DISABLE_ENV, "1") == "0":
        return None
    path = _library_path()
    if path is None or not path.exists():
        return None
    lib = ctypes.CDLL(str(path))
    for name in ("caramba_cuda_decode_supported", "caramba_cuda_decode_partials"):
        fn = getattr(lib, name)
        fn.restype = Status
    lib.caramba_cuda_decode_supported.argtypes = [ctypes.POINTER(Params)]
    lib.caramba_cuda_decode_warps_per_sm.restype = ctypes.c_int
    lib.caramba_cuda_decode_warps_per_sm.argtypes = [ctypes.POINTER(Params)]
    lib.caramba_cuda_decode_partials.argtypes = [ctypes.POINTER(Params), ctypes.c_void_p]
    lib.caramba_cuda_decode_split_shape.restype = Status
    lib.caramba_cuda_decode_split_shape.argtypes = [
        ctypes.POINTER(Params), ctypes.POINTER(ctypes.c_int32), ctypes.POINTER(ctypes.c_int32)]
    return lib


def cache(view: Any) -> Cache:
    """A caramba_cuda_cache of one CacheView (caramba_kernels.triton.layout)."""
    x = view.x
    return Cache(
        data=x.data_ptr(),
        batch_stride=x.stride(0),
        head_stride=view.head,
        token_stride=x.stride(2),
        head_shift=view.shift,
        format=FORMAT_CODES.get(view.kind, -1),
        dim=view.d,
    )


# caramba_cuda_kernel by name: "auto" (the row kernel where it applies: its DBA instance to a
# call of 64k cached positions or more or of q4_0 tensors only, its grouped standard ones at
# head dim 64 and 128 always), "heads" (always the per-KV-head kernel, which serves key widths
# up to 64 only), "rows" (the row kernel wherever it applies).
KERNELS = {"auto": 0, "heads": 1, "rows": 2}

# caramba_cuda_query_type by torch dtype name: queries of these types are read as they are.
QUERY_TYPES = {"torch.float32": 0, "torch.float16": 1, "torch.bfloat16": 2}


def params(
    qs: list[Any], kviews: list[Any], vview: Any, scales: list[float], lengths: Any,
    parts: tuple[Any, Any, Any] | None, Hkv: int, split_len: int, n_splits: int,
) -> Params:  # fmt: skip
    """The call's parameters; qs are float32 contiguous (B, Hq, D) queries, parts the (m, l, o)
    split partials (None: set them later, once the split plan is known)."""
    dba = len(qs) == 2
    m, l, o = (None,) * 3 if parts is None else (x.data_ptr() for x in parts)  # noqa: E741
    q = qs[0]
    return Params(
        q_sem=q.data_ptr(),
        q_geo=qs[1].data_ptr() if dba else None,
        k_sem=cache(kviews[0]),
        k_geo=cache(kviews[1]) if dba else Cache(),
        v=cache(vview),
        lengths=lengths.data_ptr(),
        m=m,
        l=l,
        o=o,
        scale_sem=scales[0],
        scale_geo=scales[1] if dba else 1.0,
        batch=q.shape[0],
        q_heads=q.shape[1],
        kv_heads=Hkv,
        s_max=kviews[0].x.shape[2],
        split_len=split_len,
        n_splits=n_splits,
        q_type=QUERY_TYPES.get(str(q.dtype), 0),
    )


def supported(p: Params) -> bool:
    lib = load()
    return lib is not None and lib.caramba_cuda_decode_supported(ctypes.byref(p)).code == 0


_WARPS_PER_SM: dict[tuple[int | None, ...], int] = {}


def _variant(p: Params) -> tuple[int, ...]:
    """What picks a kernel's instance: formats, head counts, widths and layouts."""
    tensors = (p.k_sem, p.k_geo, p.v) if p.q_geo else (p.k_sem, p.v)
    layout = tuple(
        x
        for t in tensors
        for x in (t.format, t.dim, t.head_shift, min(t.head_stride, t.token_stride), t.token_stride)
    )
    return (p.q_heads, p.kv_heads, *layout)


def warps_per_sm(
    p: Params, device_index: int | None = None, shape: tuple[int, int] | None = None
) -> int:
    """Resident warps per SM of the kernel instance serving `p` on the current GPU (0: none
    serves it); asked of the library once per instance and device. `shape` is split_shape(p)
    where the caller has it already (it says which kernel serves `p`)."""
    key = (device_index, *(split_shape(p) if shape is None else shape), *_variant(p))
    if key not in _WARPS_PER_SM:
        lib = load()
        found = 0 if lib is None else lib.caramba_cuda_decode_warps_per_sm(ctypes.byref(p))
        _WARPS_PER_SM[key] = found
    return _WARPS_PER_SM[key]


def split_shape(p: Params) -> tuple[int, int]:
    """(warps, positions): how many warps of the serving kernel share one (sequence, split) and
    how many positions they take per round between them; (0, 0) where nothing serves `p`. The
    per-KV-head kernel: (KV heads, 32); the row kernel (the seed's DBA cache, narrow heads in
    whole token rows: (8, 128), 4 teams of 2 warps; standard attention at head dim 64 or 128:
    (4 per group of 2 KV heads, 128)). Host checks only."""
    lib = load()
    warps, positions = ctypes.c_int32(0), ctypes.c_int32(0)
    if lib is None:
        return 0, 0
    status = lib.caramba_cuda_decode_split_shape(ctypes.byref(p), ctypes.byref(warps),
                                                 ctypes.byref(positions))  # fmt: skip
    return (warps.value, positions.value) if status.code == 0 else (0, 0)


def launch(p: Params, stream: int) -> None:
    """Queue the partials kernel on `stream` (a cudaStream_t as an int)."""
    lib = load()
    if lib is None:
        raise RuntimeError(f"libcaramba_kernels_cuda is not available (set {LIBRARY_ENV})")
    status = lib.caramba_cuda_decode_partials(ctypes.byref(p), ctypes.c_void_p(stream))
    if status.code != 0:
        raise RuntimeError(f"caramba_cuda_decode_partials: {status.message.decode()}")
