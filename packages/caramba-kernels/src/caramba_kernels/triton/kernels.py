"""Triton kernels: fused decode attention over quantized KV caches, split-K merge, quantize.

Importing this module imports triton; `caramba_kernels.triton.ops` does so on first kernel call.

Cache rows are read straight from their storage format and dequantized in registers: a q8_0
row is never expanded to a float copy in memory. Format codes (FMT) are constexprs, so each
(K format, V format) pair compiles to its own specialised kernel.
"""

from __future__ import annotations

import triton
import triton.language as tl

F32, F16, Q8_0, Q4_0, NF4 = 0, 1, 2, 3, 4
FORMAT_CODES = {"f32": F32, "f16": F16, "q8_0": Q8_0, "q4_0": Q4_0, "nf4": NF4}


@triton.jit
def _load_rows(base, row_off, cols, mask, FMT: tl.constexpr, cb_ptr):
    """float32 (N, C) values at rows `row_off[:, None]` (element offsets) and columns `cols`.

    Plain formats: `base` points at floats and offsets count floats. Block formats: `base`
    points at uint8 and offsets count bytes; the fp16 scale sits in the first two bytes of each
    block (2-byte aligned, as blocks are 34 or 18 bytes long).
    """
    if FMT == 0 or FMT == 1:
        x = tl.load(base + row_off[:, None] + cols[None, :], mask=mask, other=0.0)
        x = x.to(tl.float32)
    elif FMT == 2:  # q8_0: [d fp16][32 x int8]
        blk = cols // 32
        off = row_off[:, None] + (blk * 34)[None, :]
        d = tl.load((base + off).to(tl.pointer_type(tl.float16)), mask=mask, other=0.0)
        q = tl.load(base + off + (2 + cols % 32)[None, :], mask=mask, other=0)
        x = q.to(tl.int8, bitcast=True).to(tl.float32) * d.to(tl.float32)
    elif FMT == 3:  # q4_0: [d fp16][16 bytes: element j low nibble, j + 16 high]
        blk = cols // 32
        j = cols % 32
        off = row_off[:, None] + (blk * 18)[None, :]
        d = tl.load((base + off).to(tl.pointer_type(tl.float16)), mask=mask, other=0.0)
        byte = tl.load(base + off + (2 + (j & 15))[None, :], mask=mask, other=0).to(tl.int32)
        q = (byte >> ((j >> 4) * 4)[None, :]) & 15
        x = (q - 8).to(tl.float32) * d.to(tl.float32)
    else:  # nf4: [absmax fp16][32 bytes: element j low nibble, j + 32 high]
        blk = cols // 64
        j = cols % 64
        off = row_off[:, None] + (blk * 34)[None, :]
        d = tl.load((base + off).to(tl.pointer_type(tl.float16)), mask=mask, other=0.0)
        byte = tl.load(base + off + (2 + (j & 31))[None, :], mask=mask, other=0).to(tl.int32)
        q = (byte >> ((j >> 5) * 4)[None, :]) & 15
        x = tl.load(cb_ptr + q, mask=mask, other=0.0) * d.to(tl.float32)
    return x


@triton.jit
def _columns(FMT: tl.constexpr, C: tl.constexpr, PACKED: tl.constexpr):
    """Logical column held at each of the C positions of a tile that `_tile` returns.

    The packed loaders keep values in the order they unpack from 16-bit words; attention does
    not care about column order as long as q is gathered and the output scattered the same way.
    """
    c = tl.arange(0, C)
    if PACKED and FMT == 3:  # q4_0: position ((b*8 + i)*2 + f)*2 + h -> b*32 + 2i + f + 16h
        return (c >> 5) * 32 + ((c >> 2) & 7) * 2 + ((c >> 1) & 1) + (c & 1) * 16
    elif PACKED and FMT == 4:  # nf4: ((b*16 + i)*2 + f)*2 + h -> b*64 + 2i + f + 32h
        return (c >> 6) * 64 + ((c >> 2) & 15) * 2 + ((c >> 1) & 1) + (c & 1) * 32
    else:
        return c


@triton.jit
def _load_packed(
    base, row_off, tmask, nb, FMT: tl.constexpr, N: tl.constexpr, C: tl.constexpr, cb_ptr
):  # fmt: skip
    """float32 (N, C) tile of block rows, read as one fp16 scale and 16-bit words per block.

    Blocks are 34 or 18 bytes, so words are the widest loads every block start allows; each
    word is unpacked into its two bytes (q8_0) or four nibbles (q4_0, nf4) in registers.
    """
    if FMT == 2:
        BB: tl.constexpr = 34
        W: tl.constexpr = 16
        NB: tl.constexpr = C // 32
    elif FMT == 3:
        BB: tl.constexpr = 18
        W: tl.constexpr = 8
        NB: tl.constexpr = C // 32
    else:
        BB: tl.constexpr = 34
        W: tl.constexpr = 16
        NB: tl.constexpr = C // 64
    blk = tl.arange(0, NB)
    start = base + (row_off[:, None] + (blk * BB)[None, :])  # (N, NB), even byte addresses
    bmask = tmask[:, None] & (blk < nb)[None, :]
    d = tl.load(start.to(tl.pointer_type(tl.float16)), mask=bmask, other=0.0).to(tl.float32)
    i = tl.arange(0, W)
    wmask = bmask[:, :, None] & (i < W)[None, None, :]
    words = start.to(tl.pointer_type(tl.int16))[:, :, None] + 1 + i[None, None, :]
    w = tl.load(words, mask=wmask, other=0).to(tl.int32)  # sign-extended
    if FMT == 2:  # bytes 2i, 2i+1 are elements 2i, 2i+1 (int8)
        x = tl.join((w << 24) >> 24, w >> 8).to(tl.float32) * d[:, :, None, None]
    else:  # low nibbles: elements 2i, 2i+1; high nibbles: 2i + half, 2i + 1 + half
        b0 = w & 0xFF
        b1 = (w >> 8) & 0xFF
        q = tl.join(tl.join(b0 & 15, b1 & 15), tl.join(b0 >> 4, b1 >> 4))
        if FMT == 3:
            x = (q - 8).to(tl.float32) * d[:, :, None, None, None]
        else:
            x = tl.load(cb_ptr + q) * d[:, :, None, None, None]
    return tl.reshape(x, (N, C))


@triton.jit
def _tile(base, row_off, tmask, width, cols, FMT: tl.constexpr, N: tl.constexpr,
          C: tl.constexpr, PACKED: tl.constexpr, cb_ptr, shift):  # fmt: skip
    """float32 (N, C) values of N cache rows, columns in `_columns` order.

    `shift` moves the columns right by that many values (a head inside a token-layout row
    that does not start on a block boundary; only the byte-wise loader, PACKED off, takes it).
    """
    if PACKED and FMT >= 2:
        if FMT == 4:
            nb = width // 64
        else:
            nb = width // 32
        x = _load_packed(base, row_off, tmask, nb, FMT, N, C, cb_ptr)
    else:
        mask = tmask[:, None] & (cols < width)[None, :]
        x = _load_rows(base, row_off, cols + shift, mask, FMT, cb_ptr)
    return x


@triton.jit
def decode_partial_kernel(
    q1_ptr, q2_ptr, k1_ptr, k2_ptr, v_ptr, len_ptr, cb_ptr,
    m_ptr, l_ptr, o_ptr, lse_ptr,
    scale1, scale2,
    sq1_b, sq1_h, sq2_b, sq2_h,
    sk1_b, sk1_h, sk1_s, sk2_b, sk2_h, sk2_s, sv_b, sv_h, sv_s,
    ck1_h, ck2_h, cv_h,
    Hkv, S_max, split_len, n_splits, G, D1, D2, DV,
    G_PAD: tl.constexpr, D1_PAD: tl.constexpr, D2_PAD: tl.constexpr, DV_PAD: tl.constexpr,
    K1_FMT: tl.constexpr, K2_FMT: tl.constexpr, V_FMT: tl.constexpr,
    DBA: tl.constexpr, BLOCK_N: tl.constexpr, SINGLE: tl.constexpr,
    USE_DOT: tl.constexpr, PRECISION: tl.constexpr,
    PK1: tl.constexpr, PK2: tl.constexpr, PKV: tl.constexpr, RETURN_LSE: tl.constexpr,
):  # fmt: skip
    """One program: one (batch, KV head, split) and every query head of that KV head's group.

    Sizes are runtime values and only their power-of-two paddings are compiled in as
    constexprs. Triton still specializes integer arguments equal to 1 or divisible by 16
    (strides above all), which lets loads vectorize but compiles an instance for most new
    shapes (188 over 200 fuzzed DBA q4_0 shapes: benchmarks/results/decode_rows_slots.md,
    session 28). Reads each K/V row of its split once for
    the whole GQA group, keeps an online softmax in the log2 domain (scales arrive multiplied
    by log2 e), and writes either the normalised output (SINGLE: one split; RETURN_LSE adds
    the natural log-sum-exp of the scores) or the split's (max, sum, unnormalised output) for
    the merge. A KV head's rows start `s*_h` elements/bytes apart and `c*_h` values further
    right (the token layout: every head in one row per token); PK* packs each tensor's loads.

    USE_DOT does both products on the tensor cores (G_PAD >= 16; PRECISION "tf32x3" keeps
    float32 accuracy with three tf32 products); otherwise they are broadcast-and-sum on the
    CUDA cores.
    """
    pid = tl.program_id(0)
    split = tl.program_id(1)
    b = pid // Hkv
    hk = pid % Hkv
    length = tl.minimum(tl.maximum(tl.load(len_ptr + b), 0), S_max)
    # The splits cut this sequence's own length (split_len, cut from S_max, bounds it): a cache
    # whose capacity is far past its length still spreads its tokens over every split.
    split_len = tl.minimum(tl.cdiv(tl.cdiv(length, n_splits), BLOCK_N) * BLOCK_N, split_len)
    split_len = tl.maximum(split_len, BLOCK_N)
    start = split * split_len
    end = tl.minimum(start + split_len, length)

    g = tl.arange(0, G_PAD)
    heads = hk * G + g
    gmask = g < G
    b64 = b.to(tl.int64)
    hk64 = hk.to(tl.int64)

    d1 = _columns(K1_FMT, D1_PAD, PK1)
    q1 = (
        tl.load(
            q1_ptr + b64 * sq1_b + heads[:, None] * sq1_h + d1[None, :],
            mask=gmask[:, None] & (d1[None, :] < D1),
            other=0.0,
        ).to(tl.float32)
        * scale1
    )
    k1_base = k1_ptr + b64 * sk1_b + hk64 * sk1_h
    sh1 = hk * ck1_h
    sh2 = hk * ck2_h
    shv = hk * cv_h
    if DBA:
        d2 = _columns(K2_FMT, D2_PAD, PK2)
        q2 = (
            tl.load(
                q2_ptr + b64 * sq2_b + heads[:, None] * sq2_h + d2[None, :],
                mask=gmask[:, None] & (d2[None, :] < D2),
                other=0.0,
            ).to(tl.float32)
            * scale2
        )
        k2_base = k2_ptr + b64 * sk2_b + hk64 * sk2_h
    dv = _columns(V_FMT, DV_PAD, PKV)
    v_base = v_ptr + b64 * sv_b + hk64 * sv_h

    m_i = tl.full([G_PAD], float("-inf"), tl.float32)
    l_i = tl.zeros([G_PAD], tl.float32)
    acc = tl.zeros([G_PAD, DV_PAD], tl.float32)
    for n0 in range(start, end, BLOCK_N):
        t = n0 + tl.arange(0, BLOCK_N)
        tmask = t < end
        t64 = t.to(tl.int64)
        k1 = _tile(k1_base, t64 * sk1_s, tmask, D1, d1, K1_FMT, BLOCK_N, D1_PAD, PK1, cb_ptr, sh1)
        s = _qk(q1, k1, USE_DOT, PRECISION)
        if DBA:
            k2 = _tile(
                k2_base, t64 * sk2_s, tmask, D2, d2, K2_FMT, BLOCK_N, D2_PAD, PK2, cb_ptr, sh2
            )
            s += _qk(q2, k2, USE_DOT, PRECISION)
        s = tl.where(tmask[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        vv = _tile(v_base, t64 * sv_s, tmask, DV, dv, V_FMT, BLOCK_N, DV_PAD, PKV, cb_ptr, shv)
        acc = acc * alpha[:, None] + _pv(p, vv, USE_DOT, PRECISION)
        m_i = m_new

    row = b64 * (Hkv * G) + heads  # flat (batch, query head)
    omask = gmask[:, None] & (dv[None, :] < DV)
    if SINGLE:
        out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
        tl.store(o_ptr + row[:, None] * DV + dv[None, :], out, mask=omask)
        if RETURN_LSE:
            lse = (m_i + tl.log2(l_i)) * 0.6931471805599453
            tl.store(lse_ptr + row, lse, mask=gmask)
    else:
        part = row * n_splits + split
        tl.store(m_ptr + part, m_i, mask=gmask)
        tl.store(l_ptr + part, l_i, mask=gmask)
        tl.store(o_ptr + part[:, None] * DV + dv[None, :], acc, mask=omask)


@triton.jit
def _qk(q, k, USE_DOT: tl.constexpr, PRECISION: tl.constexpr):
    """(G, N) scores of query rows q (G, D) against key rows k (N, D)."""
    if USE_DOT:
        return tl.dot(q, tl.trans(k), input_precision=PRECISION)
    return tl.sum(q[:, None, :] * k[None, :, :], axis=2)


@triton.jit
def _pv(p, v, USE_DOT: tl.constexpr, PRECISION: tl.constexpr):
    """(G, DV) weighted values: p (G, N) times v (N, DV)."""
    if USE_DOT:
        return tl.dot(p, v, input_precision=PRECISION)
    return tl.sum(p[:, :, None] * v[None, :, :], axis=1)


@triton.jit
def merge_kernel(
    m_ptr, l_ptr, o_ptr, out_ptr, lse_ptr, n_splits, DV,
    DV_PAD: tl.constexpr, P_BLOCK: tl.constexpr, RETURN_LSE: tl.constexpr,
    WAIT_PRIOR: tl.constexpr = False,
):  # fmt: skip
    """One program per (batch, query head): log-sum-exp merge of its splits' partials.

    Partials are in the log2 domain; RETURN_LSE also writes ln(sum exp(score)). The merge is
    online over blocks of P_BLOCK splits (rescaling what it has when the maximum rises), so a
    plan of at most P_BLOCK splits loads m, l and o in one round trip, not a pass over m first.
    WAIT_PRIOR: launched as a programmatic dependent of the kernel that writes the partials
    (launch_pdl), so it first waits for that grid's writes (griddepcontrol.wait).
    """
    if WAIT_PRIOR:
        tl.extra.cuda.gdc_wait()
    row = tl.program_id(0).to(tl.int64)
    dv = tl.arange(0, DV_PAD)
    acc = tl.zeros([DV_PAD], tl.float32)
    m_run = tl.max(tl.full([P_BLOCK], float("-inf"), tl.float32), axis=0)
    total = tl.sum(tl.zeros([P_BLOCK], tl.float32), axis=0)
    for p0 in range(0, n_splits, P_BLOCK):
        p = p0 + tl.arange(0, P_BLOCK)
        pmask = p < n_splits
        m = tl.load(m_ptr + row * n_splits + p, mask=pmask, other=float("-inf"))
        l = tl.load(l_ptr + row * n_splits + p, mask=pmask, other=0.0)  # noqa: E741
        o = tl.load(
            o_ptr + (row * n_splits + p)[:, None] * DV + dv[None, :],
            mask=pmask[:, None] & (dv[None, :] < DV),
            other=0.0,
        )
        m_new = tl.maximum(m_run, tl.max(m, axis=0))
        # Empty splits (m = -inf) weigh nothing; while every split so far is empty (m_new =
        # -inf) the guards give weights of 0, not exp2(-inf + inf) = NaN.
        alpha = tl.where(m_run > float("-inf"), tl.exp2(m_run - m_new), 0.0)
        w = tl.where(m > float("-inf"), tl.exp2(m - m_new), 0.0)
        acc = acc * alpha + tl.sum(w[:, None] * o, axis=0)
        total = total * alpha + tl.sum(w * l, axis=0)
        m_run = m_new
    out = acc / tl.where(total > 0, total, 1.0)
    tl.store(out_ptr + row * DV + dv, out, mask=dv < DV)
    if RETURN_LSE:
        tl.store(lse_ptr + row, (m_run + tl.log2(total)) * 0.6931471805599453)


@triton.jit
def quantize_kernel(
    x_ptr, dst_ptr, len_ptr, cb_ptr,
    H, S_max, sx_row, sd_b, sd_h, sd_s, D,
    FMT: tl.constexpr, BLOCK: tl.constexpr, HAS_LEN: tl.constexpr,
):  # fmt: skip
    """One program per (row, block): quantize BLOCK values of row `pid0` into its destination.

    Row r = b * H + h goes to dst + b*sd_b + h*sd_h + pos*sd_s with pos = lengths[b] when
    HAS_LEN (append; a position outside [0, S_max) writes nothing), else pos = 0. Launch with
    enable_fp_fusion=False: GGML's reference rounds x * id and x * id + 8.5 separately, and a
    fused multiply-add would round them once and could differ.
    """
    r = tl.program_id(0).to(tl.int64)
    blk = tl.program_id(1)
    b = r // H
    h = r % H
    pos = tl.load(len_ptr + b).to(tl.int64) if HAS_LEN else r * 0
    ok = (pos >= 0) & (pos < S_max)  # never write outside the cache
    dst = dst_ptr + b * sd_b + h * sd_h + tl.where(ok, pos, 0) * sd_s
    src = x_ptr + r * sx_row + blk * BLOCK
    if FMT == 0 or FMT == 1:
        c = blk * BLOCK + tl.arange(0, BLOCK)
        x = tl.load(src + tl.arange(0, BLOCK), mask=c < D, other=0.0)
        keep = (c < D) & _all(pos, S_max, BLOCK)
        if FMT == 1:
            tl.store(dst + c, x.to(tl.float16), mask=keep)
        else:
            tl.store(dst + c, x.to(tl.float32), mask=keep)
    elif FMT == 2:  # q8_0
        x = tl.load(src + tl.arange(0, 32)).to(tl.float32)
        amax = tl.max(tl.abs(x), axis=0)
        d = tl.math.div_rn(amax, 127.0)
        inv = tl.where(d != 0.0, tl.math.div_rn(1.0, tl.where(d != 0.0, d, 1.0)), 0.0)
        v = x * inv
        t = v.to(tl.int32)  # toward zero; |v| <= 127.5
        frac = v - t.to(tl.float32)
        q = t + (frac >= 0.5).to(tl.int32) - (frac <= -0.5).to(tl.int32)
        out = dst + blk * 34
        tl.store(out.to(tl.pointer_type(tl.float16)), d.to(tl.float16), mask=ok)
        tl.store(
            out + 2 + tl.arange(0, 32),
            q.to(tl.int8).to(tl.uint8, bitcast=True),
            mask=_all(pos, S_max, 32),
        )
    elif FMT == 3:  # q4_0
        lo = tl.load(src + tl.arange(0, 16)).to(tl.float32)
        hi = tl.load(src + 16 + tl.arange(0, 16)).to(tl.float32)
        mx = _signed_absmax(lo, hi, 16)
        d = tl.math.div_rn(mx, -8.0)
        inv = tl.where(d != 0.0, tl.math.div_rn(1.0, tl.where(d != 0.0, d, 1.0)), 0.0)
        q_lo = tl.minimum((lo * inv + 8.5).to(tl.int32), 15)  # >= 0: truncation is trunc
        q_hi = tl.minimum((hi * inv + 8.5).to(tl.int32), 15)
        out = dst + blk * 18
        tl.store(out.to(tl.pointer_type(tl.float16)), d.to(tl.float16), mask=ok)
        tl.store(
            out + 2 + tl.arange(0, 16), (q_lo | (q_hi << 4)).to(tl.uint8), mask=_all(pos, S_max, 16)
        )
    else:  # nf4
        lo = tl.load(src + tl.arange(0, 32)).to(tl.float32)
        hi = tl.load(src + 32 + tl.arange(0, 32)).to(tl.float32)
        amax = tl.maximum(tl.max(tl.abs(lo), axis=0), tl.max(tl.abs(hi), axis=0))
        safe = tl.where(amax != 0.0, amax, 1.0)
        n_lo = tl.where(amax != 0.0, tl.math.div_rn(lo, safe), 0.0)
        n_hi = tl.where(amax != 0.0, tl.math.div_rn(hi, safe), 0.0)
        q_lo = _nearest_code(n_lo, cb_ptr, 32)
        q_hi = _nearest_code(n_hi, cb_ptr, 32)
        out = dst + blk * 34
        tl.store(out.to(tl.pointer_type(tl.float16)), amax.to(tl.float16), mask=ok)
        tl.store(
            out + 2 + tl.arange(0, 32), (q_lo | (q_hi << 4)).to(tl.uint8), mask=_all(pos, S_max, 32)
        )


@triton.jit
def _all(pos, S_max, N: tl.constexpr):
    """An N-wide store mask: pos is a slot of the cache (a vector, as the interpreter wants)."""
    p = tl.zeros([N], tl.int64) + pos
    return (p >= 0) & (p < S_max)


@triton.jit
def _signed_absmax(lo, hi, N: tl.constexpr):
    """The signed value of largest |x| over [lo, hi], the first one on ties (GGML q4_0)."""
    idx = tl.arange(0, N)
    a_lo = tl.max(tl.abs(lo), axis=0)
    a_hi = tl.max(tl.abs(hi), axis=0)
    i_lo = tl.min(tl.where(tl.abs(lo) == a_lo, idx, N), axis=0)
    i_hi = tl.min(tl.where(tl.abs(hi) == a_hi, idx, N), axis=0)
    m_lo = tl.sum(tl.where(idx == i_lo, lo, 0.0), axis=0)
    m_hi = tl.sum(tl.where(idx == i_hi, hi, 0.0), axis=0)
    return tl.where(a_hi > a_lo, m_hi, m_lo)


@triton.jit
def _nearest_code(n, cb_ptr, N: tl.constexpr):
    """Index of the NF4 entry nearest to each n (float32 |n - c|), ties to the lower index."""
    best = tl.full([N], float("inf"), tl.float32)
    code = tl.zeros([N], tl.int32)
    for i in tl.static_range(16):
        dist = tl.abs(n - tl.load(cb_ptr + i))
        closer = dist < best
        best = tl.where(closer, dist, best)
        code = tl.where(closer, i, code)
    return code


@triton.jit
def dequantize_kernel(
    src_ptr, out_ptr, cb_ptr, s_row, D,
    FMT: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    """One program per (row, BLOCK_C columns): float32 values of stored rows."""
    r = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    row_off = tl.zeros([1], tl.int64) + r * s_row
    x = _load_rows(src_ptr, row_off, c, (c < D)[None, :], FMT, cb_ptr)
    tl.store(out_ptr + r * D + c[None, :], x, mask=(c < D)[None, :])
