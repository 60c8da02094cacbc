"""The Triton kernel backend: caramba's dispatch interface for CUDA tensors.

Importing this module needs torch only; triton is imported on the first kernel call. Under
TRITON_INTERPRET=1 the same kernels also run on CPU tensors (that is how CI tests them).

Checks here cost no device synchronisation: shapes, dtypes, formats, devices and strides are
validated, but the *values* of `lengths` are not read back. Inside the kernels a length is
clamped to [0, S_max] (0 gives a zero output row) and an append at a position outside the
cache writes nothing. The reference in caramba-core raises for both.
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass
from typing import Any

import torch

LOG2E = 1.4426950408889634

# name -> (values per block, bytes per block, storage dtype); the table in caramba.kernels.formats.
FORMATS: dict[str, tuple[int, int, torch.dtype]] = {
    "f32": (1, 4, torch.float32),
    "f16": (1, 2, torch.float16),
    "q8_0": (32, 34, torch.uint8),
    "q4_0": (32, 18, torch.uint8),
    "nf4": (64, 34, torch.uint8),
}
NF4_CODEBOOK = (
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
)  # fmt: skip

# Launch tuning for the decode kernel, measured on an H100 (benchmarks/kernels_gpu.py --sweep).
# packed: read block rows as fp16 scales + 16-bit words (else one byte load per value).
# use_dot: products on tensor cores (3 x tf32, float32-accurate) instead of CUDA-core FMAs.
# tile_elements: register budget of one loop step's (query heads x tokens x features) product
# on the FMA path; block_n: tokens per loop step on the dot path; waves: programs per SM.
TUNING: dict[str, Any] = {
    "packed": True,
    "use_dot": True,
    "precision": "tf32x3",
    "block_n": 64,
    "tile_elements": 8192,
    "num_warps": 4,
    "waves": 4,
}
MAX_SPLITS = 1024
SMEM_TOKEN_COLUMNS = 16384  # tokens per step x padded columns of all rows read (dot path)


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@functools.cache
def _kernels() -> Any:
    from caramba_kernels.triton import kernels

    return kernels


@functools.cache
def _codebook(device: torch.device) -> torch.Tensor:
    return torch.tensor(NF4_CODEBOOK, dtype=torch.float32, device=device)


@functools.cache
def _sm_count(device: torch.device) -> int:
    if device.type != "cuda":
        return 1
    return torch.cuda.get_device_properties(device).multi_processor_count


def _pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def _pad(n: int) -> int:
    return max(16, _pow2(n))  # tl.dot needs 16 along every dimension


# ----------------------------------------------------------------------------- validation


def _format(kind: object, argument: str) -> tuple[int, int, torch.dtype]:
    fmt = FORMATS.get(kind) if isinstance(kind, str) else None
    if fmt is None:
        raise ValueError(f"{argument}: unknown cache format {kind!r}. Known: {', '.join(FORMATS)}.")
    return fmt


def _tensor(x: object, argument: str, dims: int | None = None) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{argument}: expected a torch.Tensor, got {type(x).__name__}")
    if dims is not None and x.dim() != dims:
        raise ValueError(f"{argument}: expected {dims} dimensions, got shape {tuple(x.shape)}")
    return x


def _check_device(x: torch.Tensor, argument: str, device: torch.device | None = None) -> None:
    if device is not None and x.device != device:
        raise ValueError(f"{argument}: on {x.device}, but the query is on {device}")
    if x.device.type != "cuda" and not (x.device.type == "cpu" and interpreting()):
        raise ValueError(
            f"{argument}: the triton backend needs CUDA tensors (CPU only under "
            f"TRITON_INTERPRET=1), got {x.device}"
        )


def _check_width(kind: str, D: int, argument: str) -> int:
    block, block_bytes, _ = _format(kind, "kind")
    if D <= 0 or D % block:
        raise ValueError(
            f"{argument}: row width {D} is not a positive multiple of the {kind} block size {block}"
        )
    return D if block == 1 else D // block * block_bytes


def _logical_width(kind: str, stored: int, argument: str) -> int:
    block, block_bytes, _ = FORMATS[kind]
    if block == 1:
        return stored
    if stored <= 0 or stored % block_bytes:
        raise ValueError(
            f"{argument}: last dimension {stored} is not a whole number of {kind} blocks "
            f"({block_bytes} bytes each)"
        )
    return stored // block_bytes * block


def _check_cache(
    x: object, argument: str, kind: str, fmt_argument: str, q: torch.Tensor, D: int | None
) -> int:
    block, _, dtype = _format(kind, fmt_argument)
    x = _tensor(x, argument, 4)
    if x.dtype != dtype:
        raise ValueError(f"{argument}: a {kind} cache holds {dtype}, got {x.dtype}")
    _check_device(x, argument, q.device)
    B, Hq = q.shape[:2]
    if x.shape[0] != B:
        raise ValueError(f"{argument}: batch {x.shape[0]} does not match the query's {B}")
    if x.shape[1] == 0 or Hq % x.shape[1]:
        raise ValueError(f"{argument}: {x.shape[1]} KV heads do not divide the query's {Hq} heads")
    if x.shape[2] == 0:
        raise ValueError(f"{argument}: the cache is empty (S_max = 0)")
    width = _logical_width(kind, x.shape[3], argument)
    if D is not None:
        if D % block:
            raise ValueError(
                f"{argument}: head dim {D} is not a multiple of the {kind} block size {block}"
            )
        if width != D:
            raise ValueError(
                f"{argument}: rows hold {width} values in {kind}, but the query has head dim {D}"
            )
    _check_layout(x, argument, kind)
    return width


def _check_layout(x: torch.Tensor, argument: str, kind: str) -> None:
    if x.shape[-1] > 1 and x.stride(-1) != 1:
        raise ValueError(f"{argument}: rows must be contiguous (stride of the last dim is 1)")
    if FORMATS[kind][0] > 1 and (x.data_ptr() % 2 or any(s % 2 for s in x.stride()[:-1])):
        raise ValueError(f"{argument}: block rows must start on even byte addresses (fp16 scales)")


def _check_lengths(lengths: object, B: int, device: torch.device) -> torch.Tensor:
    if not isinstance(lengths, torch.Tensor):
        raise ValueError(f"lengths: expected an int32 tensor, got {type(lengths).__name__}")
    if lengths.dtype != torch.int32:
        raise ValueError(f"lengths: expected dtype torch.int32, got {lengths.dtype}")
    if tuple(lengths.shape) != (B,):
        raise ValueError(f"lengths: expected shape ({B},), got {tuple(lengths.shape)}")
    if lengths.device != device:
        raise ValueError(f"lengths: on {lengths.device}, but the query is on {device}")
    return lengths.contiguous()


def _check_scale(scale: object, argument: str) -> float:
    if isinstance(scale, torch.Tensor) and scale.numel() == 1:
        scale = scale.item()
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise ValueError(f"{argument}: expected a finite float, got {scale!r}")
    return float(scale)


def _check_query(q: object, argument: str, like: torch.Tensor | None = None) -> torch.Tensor:
    q = _tensor(q, argument, 3)
    if not q.is_floating_point():
        raise ValueError(f"{argument}: expected a floating-point tensor, got {q.dtype}")
    if q.shape[0] == 0 or q.shape[1] == 0:
        raise ValueError(f"{argument}: batch and heads must be non-empty, got {tuple(q.shape)}")
    if like is not None and q.shape[:2] != like.shape[:2]:
        raise ValueError(
            f"{argument}: batch and heads {tuple(q.shape[:2])} do not match {tuple(like.shape[:2])}"
        )
    _check_device(q, argument, None if like is None else like.device)
    return q if q.stride(-1) == 1 else q.contiguous()


# ----------------------------------------------------------------------------- launch plan


@dataclass(frozen=True)
class DecodePlan:
    """How one decode call is cut up: tokens per loop step, tokens per split, splits."""

    block_n: int
    split_len: int
    n_splits: int
    num_warps: int
    use_dot: bool
    precision: str
    g_pad: int
    packed: bool


def plan_decode(
    B: int, Hkv: int, group: int, S_max: int, widths: list[int], device: torch.device,
    num_splits: int | None,
) -> DecodePlan:  # fmt: skip
    """Split-K plan: enough (batch, KV head, split) programs to fill the GPU several times."""
    use_dot = bool(TUNING["use_dot"])
    if use_dot:
        g_pad = max(16, _pow2(group))  # tl.dot needs at least 16 rows
        # The software pipeline keeps a few steps of K/V tiles in shared memory (227 KiB on
        # Hopper): wide rows get fewer tokens per step.
        fit = SMEM_TOKEN_COLUMNS // sum(_pad(w) for w in widths)
        block_n = max(16, min(int(TUNING["block_n"]), 1 << max(0, fit.bit_length() - 1)))
    else:
        g_pad = _pow2(group)
        widest = max(_pow2(w) for w in widths)
        budget = int(TUNING["tile_elements"]) // (g_pad * widest)
        block_n = max(16, min(128, 1 << max(0, budget.bit_length() - 1)))  # a power of two
    if num_splits is None:
        target = int(TUNING["waves"]) * _sm_count(device)
        wanted = -(-target // (B * Hkv))
        # A split shorter than a few loop steps costs more in partials than it saves.
        most = max(1, S_max // (4 * block_n))
        splits = max(1, min(wanted, most, MAX_SPLITS))
        split_len = -(-S_max // splits)
        split_len = -(-split_len // block_n) * block_n
    else:
        if isinstance(num_splits, bool) or not isinstance(num_splits, int) or num_splits < 1:
            raise ValueError(f"num_splits: expected an int >= 1 or None, got {num_splits!r}")
        split_len = -(-S_max // min(num_splits, MAX_SPLITS))
    n_splits = -(-S_max // split_len)
    return DecodePlan(
        block_n=block_n,
        split_len=split_len,
        n_splits=n_splits,
        num_warps=int(TUNING["num_warps"]),
        use_dot=use_dot,
        precision=str(TUNING["precision"]),
        g_pad=g_pad,
        packed=bool(TUNING["packed"]),
    )


# ----------------------------------------------------------------------------- the backend


class TritonBackend:
    """Fused decode attention, split-K merge and quantize-on-append as Triton kernels."""

    name = "triton"

    def supports(self, device: torch.device | str) -> bool:
        import importlib.util

        device = torch.device(device)
        if importlib.util.find_spec("triton") is None:
            return False
        if device.type == "cuda":
            return torch.cuda.is_available()
        return device.type == "cpu" and interpreting()

    def __repr__(self) -> str:
        return "<kernel backend 'triton'>"

    # -- storage ---------------------------------------------------------------------------

    def quantize(self, kind: str, x: torch.Tensor) -> torch.Tensor:
        """Rows of x (..., D) in format `kind` (bytes identical to the reference)."""
        block, _, dtype = _format(kind, "kind")
        x = _tensor(x, "x")
        if not x.is_floating_point() or x.dim() < 1:
            raise ValueError(f"x: expected a floating-point tensor with rows, got {x.dtype}")
        width = _check_width(kind, x.shape[-1], "x")
        _check_device(x, "x")
        if block == 1:
            return x.to(dtype)
        D = x.shape[-1]
        rows = x.reshape(-1, D).contiguous()
        out = torch.empty(rows.shape[0], width, dtype=torch.uint8, device=x.device)
        if rows.shape[0]:
            self._quantize_rows(kind, rows, out, None, H=1, S_max=1, strides=(width, 0, 0))
        return out.reshape(*x.shape[:-1], width)

    def append(
        self, kind: str, cache: torch.Tensor, rows: torch.Tensor, lengths: torch.Tensor
    ) -> torch.Tensor:
        """Quantize rows (B, H, D) into cache (B, H, S_max, W) at position lengths[b]."""
        _, _, dtype = _format(kind, "kind")
        cache = _tensor(cache, "cache", 4)
        rows = _tensor(rows, "rows", 3)
        if cache.dtype != dtype:
            raise ValueError(f"cache: a {kind} cache holds {dtype}, got {cache.dtype}")
        if not rows.is_floating_point():
            raise ValueError(f"rows: expected a floating-point tensor, got {rows.dtype}")
        B, H, S_max, W = cache.shape
        if tuple(rows.shape[:2]) != (B, H):
            raise ValueError(f"rows: expected shape ({B}, {H}, D), got {tuple(rows.shape)}")
        D = rows.shape[-1]
        if _check_width(kind, D, "rows") != W:
            raise ValueError(f"rows: width {D} does not match cache rows of width {W} in {kind}")
        _check_device(cache, "cache")
        _check_device(rows, "rows", cache.device)
        _check_layout(cache, "cache", kind)
        lengths = _check_lengths(lengths, B, cache.device)
        strides = (cache.stride(0), cache.stride(1), cache.stride(2))
        self._quantize_rows(
            kind, rows.contiguous(), cache, lengths, H=H, S_max=S_max, strides=strides
        )
        return cache

    def _quantize_rows(self, kind, rows, dst, lengths, *, H, S_max, strides) -> None:
        k = _kernels()
        block = FORMATS[kind][0]
        D = rows.shape[-1]
        BLOCK = block if block > 1 else min(128, _pow2(D))
        grid = (rows.numel() // D, -(-D // BLOCK))
        k.quantize_kernel[grid](
            rows, dst, lengths if lengths is not None else rows, _codebook(rows.device),
            H, S_max, D, *strides, D,
            FMT=k.FORMAT_CODES[kind], BLOCK=BLOCK, HAS_LEN=lengths is not None,
            enable_fp_fusion=False,
        )  # fmt: skip

    def dequantize(self, kind: str, blocks: torch.Tensor, D: int) -> torch.Tensor:
        """float32 (..., D) values of rows stored in format `kind`."""
        _, _, dtype = _format(kind, "kind")
        blocks = _tensor(blocks, "blocks")
        if blocks.dtype != dtype:
            raise ValueError(f"blocks: a {kind} cache holds {dtype}, got {blocks.dtype}")
        if blocks.dim() < 1:
            raise ValueError("blocks: expected at least one dimension (the row), got a scalar")
        _check_width(kind, D, "D")
        if _logical_width(kind, blocks.shape[-1], "blocks") != D:
            raise ValueError(f"D: {D} does not match blocks of width {blocks.shape[-1]}")
        _check_device(blocks, "blocks")
        if FORMATS[kind][0] == 1:
            return blocks.to(torch.float32)
        rows = blocks.reshape(-1, blocks.shape[-1]).contiguous()
        out = torch.empty(rows.shape[0], D, dtype=torch.float32, device=blocks.device)
        if rows.shape[0]:
            k = _kernels()
            BLOCK_C = min(256, _pow2(D))
            k.dequantize_kernel[(rows.shape[0], -(-D // BLOCK_C))](
                rows, out, _codebook(blocks.device), rows.stride(0), D,
                FMT=k.FORMAT_CODES[kind], BLOCK_C=BLOCK_C,
            )  # fmt: skip
        return out.reshape(*blocks.shape[:-1], D)

    # -- attention -------------------------------------------------------------------------

    def decode_attention(
        self, q, k, v, lengths, scale, k_format, v_format, *, num_splits=None
    ) -> torch.Tensor:
        """Standard / GQA decode attention; see caramba.kernels.decode for the contract."""
        q = _check_query(q, "q")
        _check_cache(k, "k", k_format, "k_format", q, q.shape[-1])
        scale = _check_scale(scale, "scale")
        return self._decode([q], [k], [k_format], [scale], v, v_format, lengths, num_splits)

    def dba_decode_attention(
        self, q_sem, q_geo, k_sem, k_geo, v, lengths, scale_sem, scale_geo,
        k_sem_format, k_geo_format, v_format, *, num_splits=None,
    ) -> torch.Tensor:  # fmt: skip
        """Decoupled (DBA) decode: two score paths, one softmax, one pass over the cache."""
        q_sem = _check_query(q_sem, "q_sem")
        q_geo = _check_query(q_geo, "q_geo", like=q_sem)
        _check_cache(k_sem, "k_sem", k_sem_format, "k_sem_format", q_sem, q_sem.shape[-1])
        _check_cache(k_geo, "k_geo", k_geo_format, "k_geo_format", q_geo, q_geo.shape[-1])
        if k_geo.shape[1:3] != k_sem.shape[1:3]:
            raise ValueError(
                f"k_geo: (heads, S_max) = {tuple(k_geo.shape[1:3])} does not match "
                f"k_sem's {tuple(k_sem.shape[1:3])}"
            )
        scales = [_check_scale(scale_sem, "scale_sem"), _check_scale(scale_geo, "scale_geo")]
        return self._decode(
            [q_sem, q_geo], [k_sem, k_geo], [k_sem_format, k_geo_format], scales,
            v, v_format, lengths, num_splits,
        )  # fmt: skip

    def _decode(self, qs, ks, k_formats, scales, v, v_format, lengths, num_splits):
        q = qs[0]
        Dv = _check_cache(v, "v", v_format, "v_format", q, None)
        if v.shape[1:3] != ks[0].shape[1:3]:
            raise ValueError(
                f"v: (heads, S_max) = {tuple(v.shape[1:3])} does not match the keys' "
                f"{tuple(ks[0].shape[1:3])}"
            )
        B, Hq = q.shape[:2]
        Hkv, S_max = ks[0].shape[1:3]
        group = Hq // Hkv
        lengths = _check_lengths(lengths, B, q.device)
        dims = [x.shape[-1] for x in qs]
        plan = plan_decode(B, Hkv, group, S_max, [*dims, Dv], q.device, num_splits)

        dba = len(qs) == 2
        q2, k2 = (qs[1], ks[1]) if dba else (q, ks[0])
        D2 = dims[1] if dba else 1
        k = _kernels()
        out = torch.empty(B, Hq, Dv, dtype=torch.float32, device=q.device)
        single = plan.n_splits == 1
        if single:
            m = l_part = o = out
        else:
            m = torch.empty(B * Hq * plan.n_splits, dtype=torch.float32, device=q.device)
            l_part = torch.empty_like(m)
            o = torch.empty(B * Hq * plan.n_splits, Dv, dtype=torch.float32, device=q.device)
        k.decode_partial_kernel[(B * Hkv, plan.n_splits)](
            q, q2, ks[0], k2, v, lengths, _codebook(q.device),
            m, l_part, o,
            scales[0] * LOG2E, (scales[1] if dba else 1.0) * LOG2E,
            q.stride(0), q.stride(1), q2.stride(0), q2.stride(1),
            ks[0].stride(0), ks[0].stride(1), ks[0].stride(2),
            k2.stride(0), k2.stride(1), k2.stride(2),
            v.stride(0), v.stride(1), v.stride(2),
            Hkv, S_max, plan.split_len, plan.n_splits, group, dims[0], D2, Dv,
            G_PAD=plan.g_pad, D1_PAD=_pad(dims[0]), D2_PAD=_pad(D2), DV_PAD=_pad(Dv),
            K1_FMT=k.FORMAT_CODES[k_formats[0]],
            K2_FMT=k.FORMAT_CODES[k_formats[1] if dba else k_formats[0]],
            V_FMT=k.FORMAT_CODES[v_format],
            DBA=dba, BLOCK_N=plan.block_n, SINGLE=single,
            USE_DOT=plan.use_dot, PRECISION=plan.precision, PACKED=plan.packed,
            num_warps=plan.num_warps,
        )  # fmt: skip
        if not single:
            p_pad = _pow2(plan.n_splits)
            k.merge_kernel[(B * Hq,)](
                m, l_part, o, out, plan.n_splits, Dv,
                DV_PAD=_pow2(Dv), P_PAD=p_pad, P_BLOCK=min(16, p_pad),
                num_warps=4,
            )  # fmt: skip
        return out


backend = TritonBackend()
