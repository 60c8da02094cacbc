// Fused single-token decode attention over (quantized) KV caches, standard and DBA, split-K.
//
//   standard: score[s] = scale * (q . k[s])
//   DBA:      score[s] = scale * (q_sem . k_sem[s]) + scale_geo * (q_geo . k_geo[s])
//   out       = softmax(score[0 .. len)) @ v[0 .. len)
//
// Layouts as in caramba.kernels.decode: q (B, Hq, D) float; caches (B, Hkv, S_max, row_bytes);
// lengths int (B,); out (B, Hq, Dv) float; query head h reads KV head h / (Hq / Hkv).
//
// caramba_decode_partial runs one threadgroup per (split, query head, batch) with `simdgroups`
// SIMD groups of 32 lanes. The split's positions are cut into tiles of 32; SIMD group g takes
// tiles g, g + simdgroups, ... For a tile, lane i scores position tile + i on its own (reading
// whole key rows, the scaled query sits in threadgroup memory), one simd_max / simd_sum pair
// updates the online softmax, and then every lane owns output elements lane, lane + 32, ... and
// adds the tile's 32 weighted value rows. At the end the SIMD groups' (max, sum, acc) states are
// merged through threadgroup memory. With one split the threadgroup writes `out` directly;
// otherwise it writes its state to `partials` and caramba_decode_merge combines the splits
// with a log-sum-exp (the flash-decoding scheme of the reference).
//
// Only positions below lengths[b] are read, so cache slots past a length may hold anything.

#include "blocks.h"

constant int  caramba_fc_k_format     [[function_constant(CARAMBA_METAL_FC_K_FORMAT)]];
constant int  caramba_fc_k_geo_format [[function_constant(CARAMBA_METAL_FC_K_GEO_FORMAT)]];
constant int  caramba_fc_v_format     [[function_constant(CARAMBA_METAL_FC_V_FORMAT)]];
constant bool caramba_fc_dba          [[function_constant(CARAMBA_METAL_FC_DBA)]];

#define CARAMBA_ACC_PER_LANE (CARAMBA_METAL_MAX_DIM_V / CARAMBA_METAL_SIMD_WIDTH)

// Threadgroup memory (floats), sized by the host (caramba_metal_plan_decode):
//   q_sem * scale [dim_k] | q_geo * scale_geo [dim_k_geo] | tile weights [simdgroups * 32]
//   | per-SIMD-group state [simdgroups * (2 + dim_v)] = (max, sum, acc[dim_v])
// partials (B, Hq, num_splits, 2 + dim_v) float: the same state per split.
kernel void caramba_decode_partial(
        constant caramba_metal_decode_args & args     [[buffer(0)]],
        device const float                 * q        [[buffer(1)]],
        device const float                 * q_geo    [[buffer(2)]],
        device const uchar                 * k        [[buffer(3)]],
        device const uchar                 * k_geo    [[buffer(4)]],
        device const uchar                 * v        [[buffer(5)]],
        device const int                   * lengths  [[buffer(6)]],
        device float                       * out      [[buffer(7)]],
        device float                       * partials [[buffer(8)]],
        threadgroup float                  * shmem    CARAMBA_THREADGROUP_MEMORY(0),
        uint3  tgpig [[threadgroup_position_in_grid]],
        ushort tiitg [[thread_index_in_threadgroup]],
        ushort tiisg [[thread_index_in_simdgroup]],
        ushort sgitg [[simdgroup_index_in_threadgroup]]) {
    const uint split = tgpig.x;
    const uint hq = tgpig.y;
    const uint b = tgpig.z;
    const uint nsg = args.simdgroups;
    const uint nthreads = nsg * CARAMBA_METAL_SIMD_WIDTH;
    const uint dim_k = args.dim_k;
    const uint dim_g = caramba_fc_dba ? args.dim_k_geo : 0u;
    const uint dim_v = args.dim_v;
    const uint hkv = hq / (args.num_q_heads / args.num_kv_heads);

    // lengths are validated by the caller; clamping only keeps the reads inside the cache.
    const uint len = min((uint) max(lengths[b], 0), args.max_seq_len);
    const uint start = split * args.chunk_len;
    const uint end = min(start + args.chunk_len, len); // end <= start: nothing to do

    threadgroup float * sq = shmem;
    threadgroup float * sq_geo = sq + dim_k;
    threadgroup float * sp = sq_geo + dim_g;
    threadgroup float * state = sp + nsg * CARAMBA_METAL_SIMD_WIDTH;

    const ulong qhead = (ulong) b * args.num_q_heads + hq;
    for (uint d = tiitg; d < dim_k; d += nthreads) sq[d] = q[qhead * dim_k + d] * args.scale;
    for (uint d = tiitg; d < dim_g; d += nthreads) sq_geo[d] = q_geo[qhead * dim_g + d] * args.scale_geo;
    threadgroup_barrier(mem_flags::mem_threadgroup);

    const ulong first_row = ((ulong) b * args.num_kv_heads + hkv) * args.max_seq_len;
    device const uchar * krows = k + first_row * args.row_bytes_k;
    device const uchar * grows = k_geo + first_row * args.row_bytes_k_geo;
    device const uchar * vrows = v + first_row * args.row_bytes_v;

    float m = -INFINITY; // running max of this SIMD group's scores
    float l = 0.0f;      // running sum of exp(score - m)
    float acc[CARAMBA_ACC_PER_LANE];
    for (uint i = 0; i < CARAMBA_ACC_PER_LANE; ++i) acc[i] = 0.0f;

    threadgroup float * tile_p = sp + sgitg * CARAMBA_METAL_SIMD_WIDTH;
    for (uint t0 = start + sgitg * CARAMBA_METAL_SIMD_WIDTH; t0 < end; t0 += nthreads) {
        const uint s = t0 + tiisg;
        float score = -INFINITY;
        if (s < end) {
            score = dot_row(caramba_fc_k_format, krows + (ulong) s * args.row_bytes_k, sq, dim_k);
            if (caramba_fc_dba) {
                score += dot_row(caramba_fc_k_geo_format, grows + (ulong) s * args.row_bytes_k_geo,
                                 sq_geo, dim_g);
            }
        }
        const float m_new = max(m, simd_max(score)); // finite: lane 0's position is valid
        const float p = exp(score - m_new);           // 0 for lanes past the end
        const float corr = exp(m - m_new);            // 0 on the first tile
        l = l * corr + simd_sum(p);
        m = m_new;
        tile_p[tiisg] = p;
        simdgroup_barrier(mem_flags::mem_threadgroup);

        const uint n = min(end - t0, (uint) CARAMBA_METAL_SIMD_WIDTH);
        for (uint i = 0; i < CARAMBA_ACC_PER_LANE; ++i) acc[i] *= corr;
        for (uint j = 0; j < n; ++j) {
            const float pj = tile_p[j];
            device const uchar * vrow = vrows + (ulong) (t0 + j) * args.row_bytes_v;
            for (uint i = 0; i < CARAMBA_ACC_PER_LANE; ++i) {
                const uint d = tiisg + i * CARAMBA_METAL_SIMD_WIDTH;
                if (d < dim_v) acc[i] += pj * load_element(caramba_fc_v_format, vrow, d);
            }
        }
        simdgroup_barrier(mem_flags::mem_threadgroup); // tile_p is rewritten by the next tile
    }

    // Merge the SIMD groups' states: weight w_g = exp(m_g - M), M the largest m_g.
    threadgroup float * mine = state + sgitg * (2 + dim_v);
    if (tiisg == 0) {
        mine[0] = m;
        mine[1] = l;
    }
    for (uint i = 0; i < CARAMBA_ACC_PER_LANE; ++i) {
        const uint d = tiisg + i * CARAMBA_METAL_SIMD_WIDTH;
        if (d < dim_v) mine[2 + d] = acc[i];
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);

    float M = -INFINITY;
    for (uint g = 0; g < nsg; ++g) M = max(M, state[g * (2 + dim_v)]);
    float L = 0.0f;
    for (uint g = 0; g < nsg; ++g) {
        const float mg = state[g * (2 + dim_v)];
        if (mg != -INFINITY) L += exp(mg - M) * state[g * (2 + dim_v) + 1];
    }
    device float * part = partials + (qhead * args.num_splits + split) * (2 + dim_v);
    for (uint d = tiitg; d < dim_v; d += nthreads) {
        float a = 0.0f;
        for (uint g = 0; g < nsg; ++g) {
            const float mg = state[g * (2 + dim_v)];
            if (mg != -INFINITY) a += exp(mg - M) * state[g * (2 + dim_v) + 2 + d];
        }
        if (args.num_splits == 1) {
            out[qhead * dim_v + d] = a / L;
        } else {
            part[2 + d] = a;
        }
    }
    if (args.num_splits != 1 && tiitg == 0) {
        part[0] = M; // -inf for a split past the end of this sequence
        part[1] = L;
    }
}

// out[b, h, d] from the splits' states: a log-sum-exp merge. Grid: threads (dim_v, Hq, B).
kernel void caramba_decode_merge(
        constant caramba_metal_decode_args & args     [[buffer(0)]],
        device const float                 * partials [[buffer(1)]],
        device float                       * out      [[buffer(2)]],
        uint3 tpig [[thread_position_in_grid]]) {
    const uint d = tpig.x;
    const uint hq = tpig.y;
    const uint b = tpig.z;
    if (d >= args.dim_v || hq >= args.num_q_heads || b >= args.batch) return;
    const uint stride = 2 + args.dim_v;
    const ulong qhead = (ulong) b * args.num_q_heads + hq;
    device const float * part = partials + qhead * args.num_splits * stride;

    float M = -INFINITY; // finite: split 0 holds position 0 and every length is >= 1
    for (uint s = 0; s < args.num_splits; ++s) M = max(M, part[s * stride]);
    float L = 0.0f;
    float a = 0.0f;
    for (uint s = 0; s < args.num_splits; ++s) {
        const float ms = part[s * stride];
        if (ms == -INFINITY) continue; // a split past this sequence's end weighs nothing
        const float w = exp(ms - M);
        L += w * part[s * stride + 1];
        a += w * part[s * stride + 2 + d];
    }
    out[qhead * args.dim_v + d] = a / L;
}
