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
import json
import math
import os
from dataclasses import dataclass
from typing import Any

import torch

from caramba_kernels import cuda
from caramba_kernels.triton.layout import BLOCKS, CacheView, key_heads, value_heads

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
    # The all-heads kernel (fused.py) for narrow caches: fp16 tensor-core products. Picked by
    # benchmarks/kernels_gpu.py --autotune on an H100 (results/kernels_gpu.json).
    "fused": True,
    "fused_block_n": 128,
    "fused_num_warps": 4,
    "fused_waves": 2,
    "fused_grouped": False,
    "fused_prefetch": False,
    "fused_num_stages": None,  # None: 1 for DBA or block formats, else triton's (fused_tuning)
    "fused_maxnreg": None,  # a register cap per thread (more programs per SM), None: none
    "fused_head_groups": 2,  # programs per (batch, split), each over Hkv / this KV heads
    # fused_* entries that replace the ones above where every tensor of a call is q4_0 ({}: none).
    # 64 positions a step under a 128-register cap fit 4 programs an SM: on an H100, DBA q4_0
    # batch 8 x 32k 70.7 -> 66.2 us, batch 1 x 4k 18.6 -> 12.7, standard q4_0 32k 191 -> 175;
    # q8_0 was slower that way (benchmarks/results/decode_rows_slots.md, session 27).
    "fused_q4_0": {"fused_block_n": 64, "fused_waves": 4, "fused_maxnreg": 128},
    # The tensor-core CUDA kernels (caramba_kernels.cuda) for q8_0/q4_0 caches they serve, where
    # the package was built with them: the per-KV-head kernel (one warp per (batch, KV head,
    # split)) and the row kernel (one block per (batch, split, group of KV heads), every KV
    # head of the group per warp, or half of them per warp in the DBA cache's teams of 2).
    "cuda": True,
    "cuda_kernel": "auto",  # "auto", "heads" or "rows" (caramba_kernels.cuda.KERNELS)
    "cuda_warps_per_sm": None,  # split-K target in warps per SM; None: what one SM holds
    # The split merge as a programmatic dependent launch on sm_90+ (Hopper): it starts while the
    # decode kernel's last blocks run and waits for their partials itself.
    "merge_pdl": True,
}
TUNING_ENV = "CARAMBA_TRITON_TUNING"  # a JSON object of TUNING entries to override


def _cuda_kernel_code(name: Any, source: str) -> int:
    """caramba_cuda_kernel of a TUNING cuda_kernel value, or a ValueError naming `source`."""
    code = cuda.KERNELS.get(name) if isinstance(name, str) else None
    if code is None:
        raise ValueError(f"{source}: cuda_kernel must be one of {sorted(cuda.KERNELS)}, "
                         f"got {name!r}")  # fmt: skip
    return code


_FUSED_LAUNCH_KEYS = {"fused_block_n", "fused_num_warps", "fused_waves", "fused_num_stages",
                      "fused_maxnreg"}  # fmt: skip


def _check_launch_override(value: Any, source: str) -> None:
    """A ValueError naming `source` unless `value` is an object of all-heads launch keys."""
    if not isinstance(value, dict) or not set(value) <= _FUSED_LAUNCH_KEYS:
        raise ValueError(f"{source}: expected an object of keys from "
                         f"{sorted(_FUSED_LAUNCH_KEYS)}, got {value!r}")  # fmt: skip


def _tuning_from_env() -> None:
    """Apply CARAMBA_TRITON_TUNING (e.g. what benchmarks/kernels_gpu.py --autotune picked)."""
    raw = os.environ.get(TUNING_ENV)
    if not raw:
        return
    try:
        given = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{TUNING_ENV}: not JSON ({exc}): {raw!r}") from exc
    unknown = sorted(set(given) - set(TUNING)) if isinstance(given, dict) else None
    if unknown is None or unknown:
        raise ValueError(f"{TUNING_ENV}: expected an object of keys from {sorted(TUNING)}")
    if "cuda_kernel" in given:
        _cuda_kernel_code(given["cuda_kernel"], TUNING_ENV)
    if "fused_q4_0" in given:
        _check_launch_override(given["fused_q4_0"], f"{TUNING_ENV} fused_q4_0")
    TUNING.update(given)


_tuning_from_env()
FUSED_FORMATS = ("f16", "q8_0", "q4_0")
FUSED_MAX_HEADS = 64  # query heads of one program
FUSED_MAX_KEY_COLUMNS = 256  # padded values of all key rows of one token
FUSED_MAX_VALUE_COLUMNS = 256  # padded values of a token's value rows
FUSED_MAX_ACC = 8192  # fp32 accumulator: query heads x padded value columns it keeps
FUSED_MAX_TILE = 24576  # tokens per loop step x padded key and value columns of one program
MAX_SPLITS = 1024
SMEM_TOKEN_COLUMNS = 16384  # tokens per step x padded columns of all rows read (dot path)


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


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
def _sm_count(device: torch.device) -> int:
    if device.type != "cuda":
        return 1
    return torch.cuda.get_device_properties(device).multi_processor_count


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


def _check_cache(x: object, argument: str, kind: str, fmt_argument: str, q: torch.Tensor) -> int:
    """Validate what one cache tensor is on its own; return the values a row holds."""
    _, _, dtype = _format(kind, fmt_argument)
    x = _tensor(x, argument, 4)
    if x.dtype != dtype:
        raise ValueError(f"{argument}: a {kind} cache holds {dtype}, got {x.dtype}")
    _check_device(x, argument, q.device)
    if x.shape[0] != q.shape[0]:
        raise ValueError(f"{argument}: batch {x.shape[0]} does not match the query's {q.shape[0]}")
    if x.shape[1] == 0:
        raise ValueError(f"{argument}: no heads (shape {tuple(x.shape)})")
    if x.shape[2] == 0:
        raise ValueError(f"{argument}: the cache is empty (S_max = 0)")
    width = _logical_width(kind, x.shape[3], argument)
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
    options: tuple[tuple[str, int], ...] = ()  # triton compile options (num_stages, maxnreg)


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
    target = int(TUNING["waves"]) * _sm_count(device)
    split_len, n_splits = _splits(B * Hkv, S_max, block_n, target, num_splits)
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


def fused_tuning(keys: list[Any], v: Any) -> dict[str, Any]:
    """TUNING as the all-heads kernel's launch for these caches reads it (`kind` is all that is
    read): with the entries of TUNING["fused_q4_0"] in place where every tensor is q4_0, and
    fused_num_stages None made 1 (no software pipelining) for DBA or any block-format tile.

    Pipelining copies the loads through shared memory: standard fp16 attention needs it (176
    against 190 us on an H100, B8 x 32k), DBA fp16 loses by it (165 against 141 us), and the
    32-bit code loads of q8_0/q4_0 tiles lose by far (q8_0 DBA 241 against 92 us; session 28 in
    benchmarks/results/decode_rows_slots.md)."""
    tensors = [*keys, v]
    tuning = dict(TUNING)
    if all(x.kind == "q4_0" for x in tensors):
        override = TUNING["fused_q4_0"]
        _check_launch_override(override, 'TUNING["fused_q4_0"]')
        tuning.update(override)
    if tuning["fused_num_stages"] is None and (
        len(keys) == 2 or any(x.kind in ("q8_0", "q4_0") for x in tensors)
    ):
        tuning["fused_num_stages"] = 1
    return tuning


def _launch_options(tuning: dict[str, Any]) -> tuple[tuple[str, int], ...]:
    """The fused kernel's optional compile options that the tuning sets (none by default)."""
    names = {"fused_num_stages": "num_stages", "fused_maxnreg": "maxnreg"}
    return tuple((opt, int(tuning[key])) for key, opt in names.items() if tuning[key] is not None)


def _kv_heads(key: CacheView) -> int:
    return key.row_elems // key.d if key.token else key.x.shape[1]


def _head_groups(Hkv: int, tensors: list[CacheView]) -> int:
    """KV-head groups of the fused kernel's grid (programs per batch and split).

    Head-layout caches alone: one KV head per program (its rows share no block with another
    head's, so grouping heads only widens the tiles and wastes products on the other heads'
    values). A token-layout cache keeps TUNING's groups, where they divide Hkv (else 1): its
    heads share rows, and a program reads each shared row once for all its heads.
    """
    if not any(t.token for t in tensors):
        return Hkv
    groups = int(TUNING["fused_head_groups"])
    return groups if groups >= 1 and Hkv % groups == 0 else 1


def _window(view: CacheView, Hkv: int, groups: int) -> int:
    """Padded tile width that holds the blocks of any one group's KV heads."""
    block = 32 if view.kind in ("q8_0", "q4_0") else 1
    per = Hkv // groups
    widest = max(
        -(-(g + 1) * per * view.d // block) * block - g * per * view.d // block * block
        for g in range(groups)
    )
    return _pad(widest)


def _grouped(Hkv: int, v: CacheView, groups: int) -> bool:
    """Whether the fused kernel can view the value tile as one row per (token, KV head)."""
    pow2 = Hkv == _pow2(Hkv) and v.d == _pow2(v.d)
    return (
        bool(TUNING["fused_grouped"])
        and groups == 1
        and pow2
        and v.d >= 16
        and (v.kind != "q4_0" or v.d % 32 == 0)
    )


def fused_applies(Hq: int, keys: list[CacheView], v: CacheView) -> bool:
    """Whether the all-heads kernel serves this call: f16/q8_0/q4_0 rows whose tiles (one
    group of KV heads wide) fit its register budget."""
    if not TUNING["fused"] or any(x.kind not in FUSED_FORMATS for x in (*keys, v)):
        return False
    Hkv = _kv_heads(keys[0])
    groups = _head_groups(Hkv, [*keys, v])
    key_columns = sum(_window(k, Hkv, groups) for k in keys)
    value_columns = _window(v, Hkv, groups)
    acc = _pad(Hq // groups) * (_pow2(v.d) if _grouped(Hkv, v, groups) else value_columns)
    return (
        _pad(Hq // groups) <= FUSED_MAX_HEADS
        and key_columns <= FUSED_MAX_KEY_COLUMNS
        and value_columns <= FUSED_MAX_VALUE_COLUMNS
        and acc <= FUSED_MAX_ACC
    )


def _splits(programs_per_split: int, S_max: int, block_n: int, target: int,
            num_splits: int | None, granule: int | None = None) -> tuple[int, int]:  # fmt: skip
    """(split_len, n_splits): at most `target` programs in all (one wave of resident
    programs), each split a few loop steps (`block_n` positions) long and a multiple of
    `granule` positions (default block_n). Rounding the split count down matters: one
    program past a full wave starts a second wave, and the step then takes two programs'
    time instead of one slightly longer program's; a fine granule keeps the count near the
    wave (the CUDA row kernel at batch 8, 32k: 49 splits of 672, not 43 of 768)."""
    if num_splits is None:
        wanted = max(1, target // programs_per_split)
        most = max(1, S_max // (4 * block_n))  # shorter splits cost more in partials
        splits = max(1, min(wanted, most, MAX_SPLITS))
        split_len = -(-S_max // splits)
        granule = granule or block_n
        split_len = -(-split_len // granule) * granule
    else:
        if isinstance(num_splits, bool) or not isinstance(num_splits, int) or num_splits < 1:
            raise ValueError(f"num_splits: expected an int >= 1 or None, got {num_splits!r}")
        split_len = -(-S_max // min(num_splits, MAX_SPLITS))
    return split_len, -(-S_max // split_len)


def _fused_columns(Hkv: int, keys: list[CacheView], v: CacheView, groups: int) -> int:
    """Padded values of one token that a program of the all-heads kernel reads (keys + values)."""
    return sum(_window(x, Hkv, groups) for x in (*keys, v))


def fused_block_n(columns: int, tuning: dict[str, Any]) -> int:
    """Positions a loop step of the all-heads kernel: the tuning's, fewer (a power of two, at
    least 16) where a step's tiles, `columns` values a token, would pass FUSED_MAX_TILE."""
    fit = max(16, FUSED_MAX_TILE // columns)
    return min(int(tuning["fused_block_n"]), 1 << (fit.bit_length() - 1))


def fused_constexprs(
    Hq: int, Hkv: int, keys: list[CacheView], v: CacheView, groups: int, block_n: int, *,
    single: bool, return_lse: bool, wide: bool,
) -> dict[str, object]:  # fmt: skip
    """The all-heads kernel's compile-time arguments for these caches and launch.

    One place for them: the launch and benchmarks/triton_sass.py (which compiles the kernel for
    a GPU it does not have) must build the same instance. Only `kind` and `d` of the views are
    read, so the benchmark passes stand-ins without tensors; `wide` (a row stride past int32
    element offsets) needs the tensors and so comes from the caller.
    """
    codes = _kernels().FORMAT_CODES
    grouped = _grouped(Hkv, v, groups)
    # Positions as the products' rows where every tile is unpacked from blocks: 4-6% faster on
    # an H100. fp16 tiles keep the heads as rows: they gained nothing, and with odd head widths
    # (dv 45, 65) that instance read out of bounds on the H100 under triton 3.6 (cause not
    # found; benchmarks/results/decode_rows_slots.md, session 27).
    rows = not grouped and all(x.kind in ("q8_0", "q4_0") for x in (*keys, v))
    return dict(
        HQ=_pad(Hq // groups), C1=_window(keys[0], Hkv, groups), C2=_window(keys[-1], Hkv, groups),
        CV=_window(v, Hkv, groups),
        K1_FMT=codes[keys[0].kind], K2_FMT=codes[keys[-1].kind], V_FMT=codes[v.kind],
        HKV=Hkv, DVP=_pow2(v.d), GROUPED=grouped, PREFETCH=bool(TUNING["fused_prefetch"]),
        WIDE=wide, FOLDV=grouped and v.kind != "f16" and v.d == BLOCKS[v.kind][0],
        DBA=len(keys) == 2, ROWS=rows, BLOCK_N=block_n, SINGLE=single, RETURN_LSE=return_lse,
    )  # fmt: skip


def plan_fused(
    B: int, S_max: int, device: torch.device, num_splits: int | None, groups: int, columns: int,
    tuning: dict[str, Any] | None = None,
) -> DecodePlan:  # fmt: skip
    """Split-K plan of the all-heads kernel: (batch, split, head group) programs filling the GPU,
    `fused_block_n` positions a loop step (wide heads would run out of shared memory), launched
    as `tuning` (fused_tuning's for the call; TUNING by default) says."""
    tuning = tuning or TUNING
    block_n = fused_block_n(columns, tuning)
    target = int(tuning["fused_waves"]) * _sm_count(device)
    split_len, n_splits = _splits(B * groups, S_max, block_n, target, num_splits)
    return DecodePlan(
        block_n=block_n, split_len=split_len, n_splits=n_splits,
        num_warps=int(tuning["fused_num_warps"]), use_dot=True, precision="fp16", g_pad=0,
        packed=True, options=_launch_options(tuning),
    )  # fmt: skip


# ----------------------------------------------------------------------------- the backend


def _check_rows(x: object, argument: str, dtype: torch.dtype | None, dims: int,
                shape: tuple[int, ...] | None = None, device: torch.device | None = None
                ) -> torch.Tensor:
    """A contiguous floating tensor of `dims` dims (of `dtype` and `shape` where given)."""
    x = _tensor(x, argument, dims)
    if not x.is_floating_point() or (dtype is not None and x.dtype != dtype):
        raise ValueError(f"{argument}: expected {dtype or 'a floating'} tensor, got {x.dtype}")
    if shape is not None and tuple(x.shape) != shape:
        raise ValueError(f"{argument}: expected shape {shape}, got {tuple(x.shape)}")
    if not x.is_contiguous():
        raise ValueError(f"{argument}: must be contiguous (call .contiguous())")
    if device is not None:
        _check_device(x, argument, device)
    return x


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
