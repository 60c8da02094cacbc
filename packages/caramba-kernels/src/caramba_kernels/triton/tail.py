"""Triton kernel: join a decode prefix partial with a quantized cache's exact tail rows.

A quantized cache holds its newest, not yet full block (at most block_tokens rows) in full
precision. A CUDA-graph decode step (caramba.cache.graphs, caramba.infer.step_graph) cannot
read how many of those rows are live on the host, so it attends the whole fixed-size tail
buffer with rows at or past `pending` masked, and joins the result to the prefix partial
(out, lse) from the fused decode kernel by log-sum-exp. In torch that is some sixteen small
kernels per layer step; here it is one program per (sequence, KV head), which holds the KV
head's tail keys and values and loops over its query heads.

Scores are in the log2 domain (scales arrive multiplied by log2 e; lse is converted).
"""

from __future__ import annotations

import triton
import triton.language as tl

LOG2E = tl.constexpr(1.4426950408889634)


@triton.jit
def _tile(ptr, base, rows, cols, rmask, n_cols, C: tl.constexpr):
    """(rows, C) float32 tile of a row-major (.., n_cols) tensor from row `base` on."""
    c = tl.arange(0, C)
    mask = rmask[:, None] & (c < n_cols)[None, :]
    x = tl.load(ptr + (base + rows)[:, None] * n_cols + c[None, :], mask=mask, other=0.0)
    return x.to(tl.float32)


@triton.jit
def tail_merge_kernel(
    out_ptr, lse_ptr, q1_ptr, q2_ptr, k1_ptr, k2_ptr, v_ptr, pending_ptr, res_ptr,
    scale1, scale2, Hq, Hkv, G, R, D1, D2, Dv,
    R_PAD: tl.constexpr, D1_PAD: tl.constexpr, D2_PAD: tl.constexpr, DV_PAD: tl.constexpr,
    DBA: tl.constexpr,
):  # fmt: skip
    """One program: sequence b, KV head h. Tails are (B, Hkv, R, D) row-major, queries
    (B, Hq, D) float32, out (B, Hq, Dv) and lse (B, Hq) the prefix partial (lse natural-log,
    -inf for an empty prefix); res gets the joined (B, Hq, Dv) float32."""
    b = tl.program_id(0)
    h = tl.program_id(1)
    pending = tl.load(pending_ptr).to(tl.int32)
    r = tl.arange(0, R_PAD)
    live = (r < R) & (r < pending)
    tail_row = (b * Hkv + h) * R
    k1 = _tile(k1_ptr, tail_row, r, D1, live, D1, D1_PAD)
    if DBA:
        k2 = _tile(k2_ptr, tail_row, r, D2, live, D2, D2_PAD)
    v = _tile(v_ptr, tail_row, r, Dv, live, Dv, DV_PAD)
    c1 = tl.arange(0, D1_PAD)
    c2 = tl.arange(0, D2_PAD)
    cv = tl.arange(0, DV_PAD)
    for g in range(0, G):
        row = b * Hq + h * G + g
        q1 = tl.load(q1_ptr + row * D1 + c1, mask=c1 < D1, other=0.0)
        s = tl.sum(k1 * q1[None, :], axis=1) * scale1
        if DBA:
            q2 = tl.load(q2_ptr + row * D2 + c2, mask=c2 < D2, other=0.0)
            s += tl.sum(k2 * q2[None, :], axis=1) * scale2
        s = tl.where(live, s, float("-inf"))
        prefix = tl.load(lse_ptr + row) * LOG2E
        m = tl.maximum(prefix, tl.max(s, axis=0))
        w0 = tl.exp2(prefix - m)
        w = tl.exp2(s - m)
        o = tl.load(out_ptr + row * Dv + cv, mask=cv < Dv, other=0.0)
        o = tl.where(w0 > 0, o * w0, 0.0)  # an empty prefix's row is never read
        acc = o + tl.sum(w[:, None] * v, axis=0)
        tl.store(res_ptr + row * Dv + cv, acc / (w0 + tl.sum(w, axis=0)), mask=cv < Dv)
