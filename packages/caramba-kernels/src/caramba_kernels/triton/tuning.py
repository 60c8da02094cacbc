"""Launch tuning of the Triton kernels: the TUNING table (ops.TUNING is the same dict), its
override from CARAMBA_TRITON_TUNING, and the value checks that override shares with the calls.
Importing this module needs torch only (through caramba_kernels.cuda)."""

from __future__ import annotations

import json
import os
from typing import Any

from caramba_kernels import cuda

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
