"""Launch plans of the Triton decode kernels: split-K, positions a step, the all-heads kernel's
applicability, compile-time arguments and launch options. Importing this module needs torch only;
fused_constexprs imports the kernels (and so triton) when called."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import torch

from caramba_kernels.blocks import BLOCKS
from caramba_kernels.triton.layout import CacheView
from caramba_kernels.triton.tuning import TUNING, _check_launch_override

FUSED_FORMATS = ("f16", "q8_0", "q4_0")
FUSED_MAX_HEADS = 64  # query heads of one program
FUSED_MAX_KEY_COLUMNS = 256  # padded values of all key rows of one token
FUSED_MAX_VALUE_COLUMNS = 256  # padded values of a token's value rows
FUSED_MAX_ACC = 8192  # fp32 accumulator: query heads x padded value columns it keeps
FUSED_MAX_TILE = 24576  # tokens per loop step x padded key and value columns of one program
MAX_SPLITS = 1024
SMEM_TOKEN_COLUMNS = 16384  # tokens per step x padded columns of all rows read (dot path)


@functools.cache
def _sm_count(device: torch.device) -> int:
    if device.type != "cuda":
        return 1
    return torch.cuda.get_device_properties(device).multi_processor_count


def _pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def _pad(n: int) -> int:
    return max(16, _pow2(n))  # tl.dot needs 16 along every dimension


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
    from caramba_kernels.triton.kernels import FORMAT_CODES as codes  # imports triton

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
