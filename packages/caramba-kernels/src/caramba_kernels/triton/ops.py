"""The Triton kernel backend: caramba's dispatch interface for CUDA tensors.

Importing this module needs torch only; triton is imported on the first kernel call. Under
TRITON_INTERPRET=1 the same kernels also run on CPU tensors (that is how CI tests them).
Arguments are checked in checks.py, launches planned in plan.py, tuned by tuning.TUNING.

The checks cost no device synchronisation: the *values* of `lengths` are not read back.
Inside the kernels a length is clamped to [0, S_max] (0 gives a zero output row) and an append
at a position outside the cache writes nothing. The reference in caramba-core raises for both.
"""

from __future__ import annotations

import functools
from typing import Any

import torch

from caramba_kernels import cuda
from caramba_kernels.blocks import row_values
from caramba_kernels.triton.checks import (
    FORMATS,
    _check_cache,
    _check_device,
    _check_layout,
    _check_lengths,
    _check_query,
    _check_rows,
    _check_scale,
    _check_width,
    _format,
    _tensor,
    interpreting,
)
from caramba_kernels.triton.layout import CacheView, key_heads, value_heads
from caramba_kernels.triton.plan import (
    _fused_columns,
    _head_groups,
    _kv_heads,
    _pad,
    _pow2,
    _sm_count,
    _splits,
    fused_applies,
    fused_constexprs,
    fused_tuning,
    plan_decode,
    plan_fused,
)
from caramba_kernels.triton.tuning import TUNING, _cuda_kernel_code

LOG2E = 1.4426950408889634

NF4_CODEBOOK = (
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
)  # fmt: skip


@functools.cache
def _kernels() -> Any:
    from caramba_kernels.triton import kernels

    return kernels


@functools.cache
def _fused() -> Any:
    from caramba_kernels.triton import fused

    return fused


@functools.cache
def _tail() -> Any:
    from caramba_kernels.triton import tail

    return tail


@functools.cache
def _codebook(device: torch.device) -> torch.Tensor:
    return torch.tensor(NF4_CODEBOOK, dtype=torch.float32, device=device)


@functools.cache
def _cuda_kernel_runs(device: torch.device) -> bool:
    """Whether libcaramba_kernels_cuda is built and has code for this GPU (sm_80 and newer:
    mma.sync m16n8k16 and movmatrix); older GPUs keep the Triton kernels."""
    return cuda.load() is not None and torch.cuda.get_device_capability(device) >= (8, 0)


@functools.cache
def _hopper_or_newer(device: torch.device) -> bool:
    return torch.cuda.get_device_capability(device) >= (9, 0)


@functools.cache
def _triton_launches_dependents() -> bool:
    """Whether this triton has programmatic dependent launches (the launch_pdl option and
    gdc_wait: triton 3.3 and newer; the package takes triton >= 3.0)."""
    try:
        import dataclasses

        import triton.language as tl
        from triton.backends.nvidia.compiler import CUDAOptions
    except ImportError:
        return False
    options = {field.name for field in dataclasses.fields(CUDAOptions)}
    return "launch_pdl" in options and hasattr(tl.extra.cuda, "gdc_wait")


def _dependent_launch(device: torch.device) -> dict[str, bool]:
    """Launch options of the split merge: on sm_90+ GPUs (TUNING merge_pdl) a programmatic
    dependent launch of the decode kernel before it, which waits for the partials in the kernel
    (griddepcontrol.wait), so its launch overlaps that kernel's last blocks, not follows them;
    elsewhere (older GPUs or triton, and the CPU interpreter) a plain launch."""
    if not TUNING["merge_pdl"] or device.type != "cuda" or interpreting():
        return {}
    if not _hopper_or_newer(device) or not _triton_launches_dependents():
        return {}
    return {"WAIT_PRIOR": True, "launch_pdl": True}


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
        if row_values(kind, blocks.shape[-1], "blocks") != D:
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
        self, q, k, v, lengths, scale, k_format, v_format, *, num_splits=None, return_lse=False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Standard / GQA decode attention; see caramba.kernels.decode for the contract."""
        q = _check_query(q, "q")
        scale = _check_scale(scale, "scale")
        return self._decode(
            [q], [(k, "k", k_format, "k_format")], [scale], v, v_format, lengths, num_splits,
            return_lse,
        )  # fmt: skip

    def dba_decode_attention(
        self, q_sem, q_geo, k_sem, k_geo, v, lengths, scale_sem, scale_geo,
        k_sem_format, k_geo_format, v_format, *, num_splits=None, return_lse=False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
        """Decoupled (DBA) decode: two score paths, one softmax, one pass over the cache."""
        q_sem = _check_query(q_sem, "q_sem")
        q_geo = _check_query(q_geo, "q_geo", like=q_sem)
        scales = [_check_scale(scale_sem, "scale_sem"), _check_scale(scale_geo, "scale_geo")]
        keys = [(k_sem, "k_sem", k_sem_format, "k_sem_format"),
                (k_geo, "k_geo", k_geo_format, "k_geo_format")]  # fmt: skip
        return self._decode([q_sem, q_geo], keys, scales, v, v_format, lengths, num_splits,
                            return_lse)  # fmt: skip

    def _views(self, qs, keys, v, v_format) -> tuple[list[CacheView], CacheView, int, int]:
        """Validate the caches against each other: (key views, value view, Hkv, S_max)."""
        q = qs[0]
        Hkv = S_max = None
        views = []
        for qi, (k, name, kind, fmt_name) in zip(qs, keys, strict=True):
            elems = _check_cache(k, name, kind, fmt_name, qi)
            D = qi.shape[-1]
            heads, token = key_heads(k, kind, elems, D, name)
            if Hkv is None:
                Hkv, S_max = heads, k.shape[2]
                if q.shape[1] % Hkv:
                    raise ValueError(
                        f"{name}: {Hkv} KV heads do not divide the query's {q.shape[1]} heads"
                    )
            elif heads != Hkv:
                raise ValueError(f"{name}: {heads} KV heads, but {keys[0][1]} has {Hkv}")
            if k.shape[2] != S_max:
                raise ValueError(
                    f"{name}: S_max {k.shape[2]} does not match {keys[0][1]}'s {S_max}"
                )
            views.append(CacheView(k, kind, token, D, elems))
        assert Hkv is not None and S_max is not None
        elems = _check_cache(v, "v", v_format, "v_format", q)
        dv, token = value_heads(v, elems, Hkv, "v")
        if v.shape[2] != S_max:
            raise ValueError(f"v: S_max {v.shape[2]} does not match the keys' {S_max}")
        return views, CacheView(v, v_format, token, dv, elems), Hkv, S_max

    def _decode(self, qs, keys, scales, v, v_format, lengths, num_splits, return_lse):
        q = qs[0]
        kviews, vview, Hkv, S_max = self._views(qs, keys, v, v_format)
        B, Hq = q.shape[:2]
        lengths = _check_lengths(lengths, B, q.device)
        if isinstance(return_lse, torch.Tensor) or not isinstance(return_lse, bool):
            raise ValueError(f"return_lse: expected a bool, got {return_lse!r}")
        Dv = vview.d
        out = torch.empty(B, Hq, Dv, dtype=torch.float32, device=q.device)
        lse = torch.empty(B, Hq, dtype=torch.float32, device=q.device) if return_lse else out
        if self._launch_cuda(qs, kviews, vview, scales, lengths, Hkv, num_splits, out, lse,
                             return_lse):  # fmt: skip
            return (out, lse) if return_lse else out
        if fused_applies(Hq, kviews, vview):
            groups = _head_groups(Hkv, [*kviews, vview])
            columns = _fused_columns(Hkv, kviews, vview, groups)
            tuning = fused_tuning(kviews, vview)
            plan = plan_fused(B, S_max, q.device, num_splits, groups, columns, tuning)
            self._launch_fused(qs, kviews, vview, scales, lengths, plan, groups, out, lse,
                               return_lse)
        else:
            widths = [x.shape[-1] for x in qs] + [Dv]
            plan = plan_decode(B, Hkv, Hq // Hkv, S_max, widths, q.device, num_splits)
            self._launch_heads(qs, kviews, vview, scales, lengths, plan, out, lse, return_lse)
        return (out, lse) if return_lse else out

    def merge_tail(self, out: torch.Tensor, lse: torch.Tensor, qs: list[torch.Tensor],
                   k_tails: list[torch.Tensor], scales: list[float], v_tail: torch.Tensor,
                   pending: torch.Tensor) -> torch.Tensor:
        """The prefix partial (out (B, Hq, Dv), lse (B, Hq), float32) joined by log-sum-exp
        with the first `pending` rows (a device-side int, not read on the host) of the tail
        buffers k_tails[i] (B, Hkv, R, D_i) and v_tail (B, Hkv, R, Dv); score = sum_i
        scale_i q_i . k_i for the float32 query rows qs[i] (B, Hq, D_i). One launch; the
        torch reference is caramba.cache.graphs.masked_tail_merge."""
        if len(qs) not in (1, 2) or len(k_tails) != len(qs) or len(scales) != len(qs):
            raise ValueError("merge_tail: qs, k_tails and scales need one entry per key "
                             f"tensor (1 or 2), got {len(qs)}, {len(k_tails)}, {len(scales)}")
        out = _check_rows(out, "out", torch.float32, 3)
        B, Hq, Dv = out.shape
        lse = _check_rows(lse, "lse", torch.float32, 2, (B, Hq), out.device)
        v_tail = _check_rows(v_tail, "v_tail", None, 4, device=out.device)
        _, Hkv, R, _ = v_tail.shape
        if v_tail.shape != (B, Hkv, R, Dv) or Hkv == 0 or Hq % Hkv:
            raise ValueError(f"v_tail: expected (B, Hkv, R, Dv) = ({B}, Hkv dividing {Hq}, R, "
                             f"{Dv}), got {tuple(v_tail.shape)}")
        qs = [_check_rows(q, f"qs[{i}]", torch.float32, 3, device=out.device)
              for i, q in enumerate(qs)]
        k_tails = [_check_rows(k, f"k_tails[{i}]", None, 4,
                               (B, Hkv, R, qs[i].shape[-1]), out.device)
                   for i, k in enumerate(k_tails)]
        for i, q in enumerate(qs):
            if q.shape[:2] != (B, Hq):
                raise ValueError(f"qs[{i}]: expected (B, Hq, D) = ({B}, {Hq}, D), got "
                                 f"{tuple(q.shape)}")
        pending = _tensor(pending, "pending")
        if pending.numel() != 1 or pending.is_floating_point() or pending.device != out.device:
            raise ValueError("pending: expected one integer on the device of out, got "
                             f"{pending.dtype} {tuple(pending.shape)} on {pending.device}")
        dba = len(qs) == 2
        q2, k2 = (qs[1], k_tails[1]) if dba else (qs[0], k_tails[0])
        res = torch.empty_like(out)
        D1, D2 = qs[0].shape[-1], q2.shape[-1]
        _tail().tail_merge_kernel[(B, Hkv)](
            out, lse, qs[0], q2, k_tails[0], k2, v_tail, pending, res,
            scales[0] * LOG2E, (scales[1] if dba else 1.0) * LOG2E,
            Hq, Hkv, Hq // Hkv, R, D1, D2, Dv,
            R_PAD=_pow2(R), D1_PAD=_pow2(D1), D2_PAD=_pow2(D2), DV_PAD=_pow2(Dv), DBA=dba,
            num_warps=4,
        )  # fmt: skip
        return res

    def _partials(self, B, Hq, Dv, plan, out, device):
        if plan.n_splits == 1:
            return out, out, out
        m = torch.empty(B * Hq * plan.n_splits, dtype=torch.float32, device=device)
        o = torch.empty(B * Hq * plan.n_splits, Dv, dtype=torch.float32, device=device)
        return m, torch.empty_like(m), o

    def _merge(self, B, Hq, Dv, n_splits, parts, out, lse, return_lse) -> None:
        """Join split partials (m, l, o) into out (and lse); a one-split plan wrote out itself
        unless `parts` are separate buffers."""
        if parts[2] is out:
            return
        dv_pad = _pow2(Dv)
        # Splits a program loads at once: all of a typical plan's (one round of load latency,
        # not one per 16 splits), up to 4096 partial values in registers.
        p_block = min(_pow2(n_splits), max(16, 4096 // dv_pad))
        # Warps: one per 2048 partial values a block loads (64 registers a thread), so a small
        # merge is a small program that fits beside the decode kernel's last blocks (H200,
        # CUDA row kernel, batch 8 x 32k, 49 splits x 32 values: 1 warp 25.1 us a call, 2 25.5,
        # 4 25.8, 8 26.0).
        _kernels().merge_kernel[(B * Hq,)](
            *parts, out, lse, n_splits, Dv,
            DV_PAD=dv_pad, P_BLOCK=p_block, RETURN_LSE=return_lse,
            num_warps=min(4, max(1, p_block * dv_pad // 2048)),
            **_dependent_launch(out.device),
        )  # fmt: skip

    def _launch_cuda(self, qs, kviews, vview, scales, lengths, Hkv, num_splits, out, lse,
                     return_lse) -> bool:
        """The tensor-core kernel (caramba_kernels.cuda), where it is built and serves the
        call's formats and shapes; False leaves the call to the Triton kernels."""
        q = qs[0]
        if q.device.type != "cuda" or not TUNING["cuda"] or not _cuda_kernel_runs(q.device):
            return False
        B, Hq, Dv = out.shape
        S_max = kviews[0].x.shape[2]
        p = cuda.params(qs, kviews, vview, scales, lengths, None, Hkv, cuda.CHUNK, 1)
        p.kernel = _cuda_kernel_code(TUNING["cuda_kernel"], "TUNING")
        if not cuda.supported(p):  # host checks; no query is read
            return False
        # The kernel reads float32, float16 and bfloat16 queries as they are (others, or two
        # query tensors of different types, are converted to float32).
        if len({x.dtype for x in qs}) > 1 or str(q.dtype) not in cuda.QUERY_TYPES:
            qs = [x.to(torch.float32) for x in qs]
        qs = [x.contiguous() for x in qs]
        p.q_sem = qs[0].data_ptr()
        p.q_geo = qs[1].data_ptr() if len(qs) == 2 else None
        p.q_type = cuda.QUERY_TYPES[str(qs[0].dtype)]
        with torch.cuda.device(q.device):  # the library runs on the current device
            # One wave of resident warps (TUNING's cuda_warps_per_sm, if set, instead).
            shape = cuda.split_shape(p)  # which kernel: its warps per (sequence, split), round
            per_sm = (TUNING["cuda_warps_per_sm"]
                      or cuda.warps_per_sm(p, q.device.index, shape) or 16)  # fmt: skip
            warps, positions = shape
            split_len, _ = _splits(B * warps, S_max, positions, per_sm * _sm_count(q.device),
                                   num_splits, cuda.CHUNK)  # fmt: skip
            split_len = -(-split_len // cuda.CHUNK) * cuda.CHUNK
            n_splits = -(-S_max // split_len)
            m = torch.empty(B * Hq * n_splits, dtype=torch.float32, device=q.device)
            parts = (m, torch.empty_like(m), torch.empty(B * Hq * n_splits, Dv, device=q.device))
            p.m, p.l, p.o = (x.data_ptr() for x in parts)
            p.split_len, p.n_splits = split_len, n_splits
            cuda.launch(p, torch.cuda.current_stream(q.device).cuda_stream)
        self._merge(B, Hq, Dv, n_splits, parts, out, lse, return_lse)
        return True

    def _launch_heads(self, qs, kviews, vview, scales, lengths, plan, out, lse, return_lse):
        """The per-KV-head kernel: one program per (batch, KV head, split)."""
        q = qs[0]
        B, Hq, Dv = out.shape
        Hkv = _kv_heads(kviews[0])
        dba = len(qs) == 2
        k1 = kviews[0]
        q2, k2 = (qs[1], kviews[1]) if dba else (q, k1)
        D1, D2 = q.shape[-1], (q2.shape[-1] if dba else 1)
        parts = self._partials(B, Hq, Dv, plan, out, q.device)
        k = _kernels()
        k.decode_partial_kernel[(B * Hkv, plan.n_splits)](
            q, q2, k1.x, k2.x, vview.x, lengths, _codebook(q.device),
            *parts, lse,
            scales[0] * LOG2E, (scales[1] if dba else 1.0) * LOG2E,
            q.stride(0), q.stride(1), q2.stride(0), q2.stride(1),
            k1.x.stride(0), k1.head, k1.x.stride(2),
            k2.x.stride(0), k2.head, k2.x.stride(2),
            vview.x.stride(0), vview.head, vview.x.stride(2),
            k1.shift, k2.shift, vview.shift,
            Hkv, k1.x.shape[2], plan.split_len, plan.n_splits, Hq // Hkv, D1, D2, Dv,
            G_PAD=plan.g_pad, D1_PAD=_pad(D1), D2_PAD=_pad(D2), DV_PAD=_pad(Dv),
            K1_FMT=k.FORMAT_CODES[k1.kind], K2_FMT=k.FORMAT_CODES[k2.kind],
            V_FMT=k.FORMAT_CODES[vview.kind],
            DBA=dba, BLOCK_N=plan.block_n, SINGLE=plan.n_splits == 1,
            USE_DOT=plan.use_dot, PRECISION=plan.precision,
            PK1=plan.packed and k1.aligned, PK2=plan.packed and k2.aligned,
            PKV=plan.packed and vview.aligned, RETURN_LSE=return_lse,
            num_warps=plan.num_warps,
        )  # fmt: skip
        self._merge(B, Hq, Dv, plan.n_splits, parts, out, lse, return_lse)

    def _launch_fused(self, qs, kviews, vview, scales, lengths, plan, groups, out, lse,
                      return_lse):
        """The all-heads kernel: one program per (batch, split, group of KV heads)."""
        q = qs[0]
        B, Hq, Dv = out.shape
        dba = len(qs) == 2
        k1 = kviews[0]
        q2, k2 = (qs[1], kviews[1]) if dba else (q, k1)
        Hkv = _kv_heads(k1)
        parts = self._partials(B, Hq, Dv, plan, out, q.device)

        def tensor_args(view: CacheView) -> list[int]:
            x = view.x
            return [x.stride(0), view.head, x.stride(2), view.sub_elems, Hkv * view.d, view.d]

        self.last_fused = _fused().fused_decode_kernel[(B, plan.n_splits, groups)](
            q, q2, k1.x, k2.x, vview.x, lengths,
            *parts, lse,
            scales[0] * LOG2E, (scales[1] if dba else 1.0) * LOG2E,
            q.stride(0), q.stride(1), q2.stride(0), q2.stride(1),
            *tensor_args(k1), *tensor_args(k2), *tensor_args(vview),
            Hq, Hq // Hkv, k1.x.shape[2], plan.split_len, plan.n_splits, Hkv // groups,
            num_warps=plan.num_warps, **dict(plan.options),
            **fused_constexprs(
                Hq, Hkv, kviews, vview, groups, plan.block_n, single=plan.n_splits == 1,
                return_lse=return_lse,
                wide=any(x.stride(0) >= 2**31 // 4 for x in (k1.x, k2.x, vview.x)),
            ),
        )  # fmt: skip
        self._merge(B, Hq, Dv, plan.n_splits, parts, out, lse, return_lse)


backend = TritonBackend()
