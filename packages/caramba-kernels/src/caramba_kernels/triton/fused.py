"""Triton kernel: decode attention with ALL heads of a sequence in one program (narrow caches).

The per-KV-head kernel (kernels.decode_partial_kernel) spends its time unpacking: for DBA's
narrow heads (4 semantic + 8 geometric key values per head) every program reads a few bytes
per token and does a full round of address arithmetic for them. Here one program owns
(batch, chunk of positions) and reads each token's rows once for every head:

    scores (Hq, N) = Qbd_sem (Hq, Hkv*d_sem) @ K_sem^T + Qbd_geo (Hq, Hkv*d_geo) @ K_geo^T

where Qbd is block-diagonal (query head h holds its values in the columns of KV head h // G,
zeros elsewhere), so the tensor cores do the work on whole rows (fp16 operands, fp32
accumulation). Block-format caches take the same products transposed (ROWS: positions as the
rows, scores (N, Hq) = K Qbd^T, values V^T P^T), which Hopper runs as warpgroup MMAs. The
weighted values P (Hq, N) @ V (N, Hkv*dv) are taken per (token, KV head)
row when the shapes allow (GROUPED in fused_decode_kernel), so the accumulator holds only
(Hq, dv). Where each KV head's values are one block, the value blocks' scales ride on the
weights (p * d) and the cache bytes only become fp16 integers in registers, never scaled per
value. Column order inside a block is the order values unpack in (kernels._columns); queries
are gathered and outputs scattered in the same order.

A tensor is described by its sub-rows: a head-layout cache has one sub-row per KV head
(`s_h` apart, DSUB = d values each), a token-layout cache one sub-row per token (s_h = 0,
DSUB = Hkv * d). `t_off` offsets count elements (f16) or bytes (q8_0, q4_0).
"""

from __future__ import annotations

import triton
import triton.language as tl

from caramba_kernels.triton.kernels import _columns


@triton.jit
def _cmap(FMT: tl.constexpr, C: tl.constexpr):
    """Flattened logical column (over all sub-rows) of each of the C tile positions."""
    return _columns(FMT, C, True)


@triton.jit
def _load_raw(base, t_off, tmask, s_h, DSUB, NVAL, col0, FMT: tl.constexpr, N: tl.constexpr,
              C: tl.constexpr):  # fmt: skip
    """Raw storage of N tokens from value `col0` (a block start) on: f16 values (N, C), or
    (16-bit words in int32 (N, NB, W), scales (N, NB))."""
    if FMT == 1:
        p = col0 + tl.arange(0, C)
        addr = (p // DSUB) * s_h + p % DSUB
        mask = tmask[:, None] & (p < NVAL)[None, :]
        x = tl.load(base + t_off[:, None] + addr[None, :], mask=mask, other=0.0)
        return x, x
    else:
        if FMT == 2:
            BB: tl.constexpr = 34
            W: tl.constexpr = 16
        else:
            BB: tl.constexpr = 18
            W: tl.constexpr = 8
        NB: tl.constexpr = C // 32
        bps = DSUB // 32
        blk = col0 // 32 + tl.arange(0, NB)
        addr = (blk // bps) * s_h + (blk % bps) * BB
        start = base + (t_off[:, None] + addr[None, :])  # (N, NB), even byte addresses
        bmask = tmask[:, None] & (blk * 32 < NVAL)[None, :]
        d = tl.load(start.to(tl.pointer_type(tl.float16)), mask=bmask, other=0.0)
        return _load_codes(start, bmask, N, NB, W), d


@triton.jit
def _load_codes(start, bmask, N: tl.constexpr, NB: tl.constexpr, W: tl.constexpr):
    """Each block's codes as W 16-bit words in int32 (N, NB, W), read as 32-bit words.

    A block's codes start 2 bytes in, so only every other block's are 4-byte aligned. Each
    block reads the W / 2 aligned words from the one holding its first code on and, where the
    codes start mid-word, the next word of each too (the same cache lines), and shifts each
    pair into place. Against 16-bit reads that is fewer load instructions and registers a
    byte, so more bytes in flight: 5-8% faster on an H100 (benchmarks/results/
    decode_rows_slots.md, session 28). The last word read holds the block's last 2 code bytes:
    an aligned word holding valid bytes, which cannot cross a page.
    """
    codes = start.to(tl.int64) + 2
    shift = ((codes & 3) * 8)[:, :, None]  # 0, or 16 where the codes start mid-word
    i = tl.arange(0, W // 2)
    words = (codes - (codes & 3)).to(tl.pointer_type(tl.int32))[:, :, None] + i[None, None, :]
    lo = tl.load(words, mask=bmask[:, :, None], other=0)
    hi = tl.load(words + 1, mask=bmask[:, :, None] & (shift != 0), other=0)
    pair = (hi.to(tl.int64) << 32) | (lo.to(tl.int64) & 0xFFFFFFFF)
    word = (pair >> shift).to(tl.int32)
    return tl.reshape(tl.join(word & 0xFFFF, (word >> 16) & 0xFFFF), (N, NB, W))


@triton.jit
def _halves(pairs):
    """fp16 (..., 2): the values whose bits are the low and the high half of each int32."""
    lo = (pairs & 0xFFFF).to(tl.int16).to(tl.float16, bitcast=True)
    hi = (pairs >> 16).to(tl.int16).to(tl.float16, bitcast=True)
    return tl.join(lo, hi)


@triton.jit
def _unpack(w, d, FMT: tl.constexpr, N: tl.constexpr, C: tl.constexpr, SCALED: tl.constexpr):
    """fp16 (N, C) tile: raw integers (q8_0: q, q4_0: n in 0..15) or, SCALED, the values.

    No integer-to-float conversions: each code lands in the mantissa of fp16 1024 (bits
    0x6400, whose unit in the last place is 1), two codes to an int32, so 1024 + code (q8_0:
    1152 + q, the sign bit flipped) comes from logic ops alone. Taking the offset off is exact,
    and the one fp16 product with the block scale rounds as float32's product (exact: 8 by 11
    significant bits) rounded to fp16 would, so the tiles are those of a float32 conversion bit
    for bit (tests/kernels/test_triton_unpack.py).
    """
    if FMT == 1:
        return w
    else:
        w = w.to(tl.int32)  # int16 words or 16-bit words in int32: only the low 16 bits count
        if FMT == 2:
            # bytes 0 and 1 of the word into the low bytes of the halves, 0x64 above each
            x = _halves(((w & 0xFF) | ((w << 8) & 0xFF0000)) ^ 0x64806480)
            if SCALED:
                x = (x - 1152.0) * d[:, :, None, None]
            else:
                x = x - 1152.0
        else:
            byte = tl.join(w & 0xFF, (w >> 8) & 0xFF)
            # a byte's low nibble (value j) and high nibble (value j + 16) side by side
            x = _halves((byte & 0xF) | ((byte & 0xF0) << 12) | 0x64006400)
            if SCALED:
                x = (x - 1032.0) * d[:, :, None, None, None]
            else:
                x = x - 1024.0
        return tl.reshape(x, (N, C))


@triton.jit
def _window(kv0, d, FMT: tl.constexpr):
    """First value of the block holding KV head kv0's first value (block formats: 32 values)."""
    if FMT == 1:
        return kv0 * d
    return kv0 * d // 32 * 32


@triton.jit
def _idx(t, WIDE: tl.constexpr):
    if WIDE:
        return t.to(tl.int64)
    return t


@triton.jit
def _block_diag_q(q_ptr, q_b, sq_h, heads, kvh, hmask, d, scale, col0, FMT: tl.constexpr,
                  C: tl.constexpr):  # fmt: skip
    """fp16 (HQ, C): query head h's values (times scale) in the columns of its KV head."""
    c = col0 + _cmap(FMT, C)
    within = c[None, :] - (kvh * d)[:, None]
    mask = hmask[:, None] & (within >= 0) & (within < d)
    x = tl.load(q_ptr + q_b + heads[:, None] * sq_h + within, mask=mask, other=0.0)
    return (x.to(tl.float32) * scale).to(tl.float16)


@triton.jit
def _scores(q, k, ROWS: tl.constexpr):
    """One step's scores: (positions, heads) with ROWS (q given as (C, HQ)), else (heads,
    positions). Positions as the rows make the cache tile the large operand: Hopper runs the
    products as warpgroup MMAs, and the queries stay put instead of being copied into each
    MMA's operand registers (benchmarks/results/decode_rows_slots.md, session 27)."""
    if ROWS:
        s = tl.dot(k, q, out_dtype=tl.float32)
    else:
        s = tl.dot(q, tl.trans(k), out_dtype=tl.float32)
    return s


@triton.jit
def fused_decode_kernel(
    q1_ptr, q2_ptr, k1_ptr, k2_ptr, v_ptr, len_ptr,
    m_ptr, l_ptr, o_ptr, lse_ptr,
    scale1, scale2,
    sq1_b, sq1_h, sq2_b, sq2_h,
    k1_b, k1_h, k1_s, k1_sub, k1_n, d1,
    k2_b, k2_h, k2_s, k2_sub, k2_n, d2,
    v_b, v_h, v_s, v_sub, v_n, dv,
    Hq, G, S_max, split_len, n_splits, kvp,
    HQ: tl.constexpr, C1: tl.constexpr, C2: tl.constexpr, CV: tl.constexpr,
    HKV: tl.constexpr, DVP: tl.constexpr,
    K1_FMT: tl.constexpr, K2_FMT: tl.constexpr, V_FMT: tl.constexpr,
    GROUPED: tl.constexpr, FOLDV: tl.constexpr, PREFETCH: tl.constexpr, WIDE: tl.constexpr,
    DBA: tl.constexpr, ROWS: tl.constexpr, BLOCK_N: tl.constexpr, SINGLE: tl.constexpr,
    RETURN_LSE: tl.constexpr,
):  # fmt: skip
    """One program: one (batch, split) and the query heads of `kvp` KV heads (all of them by
    default; grid (B, splits, Hkv / kvp)); it reads only the blocks that hold its KV heads.
    Same outputs as decode_partial_kernel.

    Scores are in the log2 domain (scales arrive multiplied by log2 e). PREFETCH loads the
    next step's raw tiles before the current step is computed (more registers, loads in
    flight). Offsets inside one sequence's cache are int32 unless WIDE.

    ROWS (plan.fused_constexprs: block-format tiles, not GROUPED) takes the products with the
    positions as rows: scores (N, HQ) = K @ Qbd^T and the accumulator (CV, HQ) = V^T @ P^T.

    GROUPED (Hkv = HKV and dv = DVP powers of two, each KV head's values a contiguous range of
    the tile): the value tile (N, HKV*DVP) is viewed as (N*HKV, DVP) rows of one head each, and
    the weights as (HQ, N*HKV) with p[h, t] at column t*HKV + h // G, zeros elsewhere, so the
    accumulator is (HQ, DVP). FOLDV (one block per KV head): the block scale rides on the
    weights and q4_0's -8 is subtracted once at the end. Otherwise the accumulator is
    (HQ, CV) over every head's columns and each head keeps its own at the end.
    """
    b = tl.program_id(0)
    split = tl.program_id(1)
    length = tl.minimum(tl.maximum(tl.load(len_ptr + b), 0), S_max)
    # The splits cut this sequence's own length (split_len, cut from S_max, bounds it): a cache
    # whose capacity is far past its length still spreads its tokens over every split.
    split_len = tl.minimum(tl.cdiv(tl.cdiv(length, n_splits), BLOCK_N) * BLOCK_N, split_len)
    split_len = tl.maximum(split_len, BLOCK_N)
    start = split * split_len
    end = tl.minimum(start + split_len, length)
    b64 = b.to(tl.int64)

    kv0 = tl.program_id(2) * kvp
    local = tl.arange(0, HQ)
    heads = kv0 * G + local
    hmask = (local < kvp * G) & (heads < Hq)
    kvh = heads // G
    c1 = _window(kv0, d1, K1_FMT)
    c2 = _window(kv0, d2, K2_FMT)
    cv = _window(kv0, dv, V_FMT)
    qbd1 = _block_diag_q(q1_ptr, b64 * sq1_b, sq1_h, heads, kvh, hmask, d1, scale1, c1, K1_FMT, C1)
    if ROWS:
        qbd1 = tl.trans(qbd1)
    base1 = k1_ptr + b64 * k1_b
    if DBA:
        qbd2 = _block_diag_q(
            q2_ptr, b64 * sq2_b, sq2_h, heads, kvh, hmask, d2, scale2, c2, K2_FMT, C2
        )
        if ROWS:
            qbd2 = tl.trans(qbd2)
        base2 = k2_ptr + b64 * k2_b
    base_v = v_ptr + b64 * v_b

    POS: tl.constexpr = 1 - ROWS  # the positions' axis of the scores
    m_i = tl.full([HQ], float("-inf"), tl.float32)
    l_i = tl.zeros([HQ], tl.float32)
    off_i = tl.zeros([HQ], tl.float32)  # sum of p * d, for q4_0's -8 (FOLDV)
    if GROUPED:
        acc = tl.zeros([HQ, DVP], tl.float32)
        own = kvh[:, None] == tl.arange(0, HKV)[None, :]  # (HQ, HKV)
    elif ROWS:
        acc = tl.zeros([CV, HQ], tl.float32)  # transposed: value columns as the rows
    else:
        acc = tl.zeros([HQ, CV], tl.float32)

    if PREFETCH:
        t = start + tl.arange(0, BLOCK_N)
        tmask = t < end
        t64 = _idx(t, WIDE)
        w1, s1 = _load_raw(base1, t64 * k1_s, tmask, k1_h, k1_sub, k1_n, c1, K1_FMT, BLOCK_N, C1)
        if DBA:
            w2, s2 = _load_raw(
                base2, t64 * k2_s, tmask, k2_h, k2_sub, k2_n, c2, K2_FMT, BLOCK_N, C2
            )
        wv, sv = _load_raw(base_v, t64 * v_s, tmask, v_h, v_sub, v_n, cv, V_FMT, BLOCK_N, CV)

    for n0 in range(start, end, BLOCK_N):
        # With PREFETCH the next step's tiles (masked off past the end), else this step's.
        tn = n0 + BLOCK_N * PREFETCH + tl.arange(0, BLOCK_N)
        tnmask = tn < end
        tn64 = _idx(tn, WIDE)
        w1n, s1n = _load_raw(
            base1, tn64 * k1_s, tnmask, k1_h, k1_sub, k1_n, c1, K1_FMT, BLOCK_N, C1
        )
        if DBA:
            w2n, s2n = _load_raw(
                base2, tn64 * k2_s, tnmask, k2_h, k2_sub, k2_n, c2, K2_FMT, BLOCK_N, C2
            )
        wvn, svn = _load_raw(base_v, tn64 * v_s, tnmask, v_h, v_sub, v_n, cv, V_FMT, BLOCK_N, CV)
        if not PREFETCH:
            tmask = tnmask
            w1, s1, wv, sv = w1n, s1n, wvn, svn
            if DBA:
                w2, s2 = w2n, s2n

        k = _unpack(w1, s1, K1_FMT, BLOCK_N, C1, True)
        s = _scores(qbd1, k, ROWS)
        if DBA:
            k = _unpack(w2, s2, K2_FMT, BLOCK_N, C2, True)
            s += _scores(qbd2, k, ROWS)
        s = tl.where(tl.expand_dims(tmask, 1 - POS), s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=POS))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - tl.expand_dims(m_new, POS))
        l_i = l_i * alpha + tl.sum(p, axis=POS)
        x = _unpack(wv, sv, V_FMT, BLOCK_N, CV, not FOLDV)
        if GROUPED:
            if FOLDV:
                w3 = p[:, :, None] * sv.to(tl.float32)[None, :, :]  # sv: (N, HKV) scales
            else:
                w3 = tl.broadcast_to(p[:, :, None], (HQ, BLOCK_N, HKV))
            w3 = tl.where(own[:, None, :], w3, 0.0)
            pd = tl.reshape(w3, (HQ, BLOCK_N * HKV)).to(tl.float16)
            if FOLDV and V_FMT == 3:
                off_i = off_i * alpha + tl.sum(pd.to(tl.float32), axis=1)
            xr = tl.reshape(x, (BLOCK_N * HKV, DVP))
            acc = acc * alpha[:, None] + tl.dot(pd, xr, out_dtype=tl.float32)
        elif ROWS:
            pv = tl.dot(tl.trans(x), p.to(tl.float16), out_dtype=tl.float32)
            acc = acc * alpha[None, :] + pv
        else:
            acc = acc * alpha[:, None] + tl.dot(p.to(tl.float16), x, out_dtype=tl.float32)
        m_i = m_new

        if PREFETCH:
            tmask = tnmask
            w1, s1, wv, sv = w1n, s1n, wvn, svn
            if DBA:
                w2, s2 = w2n, s2n

    if ROWS:
        acc = tl.trans(acc)
    row = b64 * Hq + heads
    if GROUPED:
        if FOLDV and V_FMT == 3:
            acc = acc - 8.0 * off_i[:, None]
        within = tl.broadcast_to(_cmap(V_FMT, DVP)[None, :], (HQ, DVP))
        omask = hmask[:, None] & (within < dv)
    else:
        # Each head keeps the columns of its own KV head.
        c = cv + _cmap(V_FMT, CV)
        within = c[None, :] - (kvh * dv)[:, None]
        omask = hmask[:, None] & (within >= 0) & (within < dv)
    if SINGLE:
        out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
        tl.store(o_ptr + row[:, None] * dv + within, out, mask=omask)
        if RETURN_LSE:
            lse = (m_i + tl.log2(l_i)) * 0.6931471805599453
            tl.store(lse_ptr + row, lse, mask=hmask)
    else:
        part = row * n_splits + split
        tl.store(m_ptr + part, m_i, mask=hmask)
        tl.store(l_ptr + part, l_i, mask=hmask)
        tl.store(o_ptr + part[:, None] * dv + within, acc, mask=omask)
