// Fused decode attention over q8_0 / q4_0 caches on tensor cores (mma.sync m16n8k16, sm_80+).
//
// Why a CUDA kernel next to the Triton one: decoding narrow quantized heads is bound by
// instruction issue, not memory. Triton unpacks GGML blocks (2-byte aligned, 18 or 34 bytes) one
// 16-bit word and one value at a time and moves tiles through shared memory to reach the tensor
// cores. Here each lane builds its mma fragments straight from the bytes it loads: two nibbles
// (or two int8) become one half2 with one byte permute and one LOP3, and the softmax weights
// move from the score accumulators to the value operand with one register transpose
// (movmatrix) per 8x8 tile.
//
// One warp owns one (sequence, KV head, split) and walks its positions 32 at a time:
//   scores  S^T (32 tokens x 8 heads) = K (tokens x keys) @ Q^T       2 x KS mma
//   values  O^T (dv x 8 heads)       += V^T (dv x tokens) @ P'^T        (dv / 16) x 2 mma
// Keys are dequantized into the A operand (fp16, as the Triton kernel). Values enter as exact
// small integers; each token's block scale rides on its softmax weight (P' = p * d). The query
// heads of one KV head (at most 8) are the n = 8 columns; the key dimension (semantic values
// then geometric, zero-padded) is the mma's k.
//
// Value rows are permuted so that one 16-bit load gives a lane all it needs of a token: within
// a block, tile 0 row r holds value 2r (r < 8) or 2(r - 8) + 1, tile 1 the same plus 16, i.e.
// lane g reads bytes 2g and 2g + 1: q4_0 low nibbles are values 2g, 2g + 1 and high nibbles
// 2g + 16, 2g + 17.
#include "caramba/cuda.h"

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <cstdio>

#include "decode_rows.h"
#include "mma_fragments.cuh"

namespace {

using namespace caramba_cuda;

constexpr int kChunk = 32;  // positions per warp loop step
constexpr int kWarps = 8;   // warps per block, each its own (sequence, KV head, split)
// Resident blocks per SM the register budget is cut for: the narrowest heads over q4_0 values
// (one key k-step, one value block: the Llama DBA cache) fit 3 blocks (24 warps) without
// spilling; the others keep the compiler's choice.
template <int VFMT, int NBV, int KS>
constexpr int min_blocks() { return VFMT == CARAMBA_FORMAT_Q4_0 && NBV * KS == 1 ? 3 : 1; }
constexpr int kMaxKeySteps = 4;

template <int KFMT, int VFMT, int NBV, int KS>
__global__ void __launch_bounds__(kWarps * 32, min_blocks<VFMT, NBV, KS>())
    decode_mma_kernel(const caramba_cuda_decode_params p) {
    // The merge grid may start as soon as every warp here has (H100, DBA q8_0, batch 1 x 4k:
    // 9.5 -> 8.8 us a call with the merge a dependent launch).
    allow_dependent_launch();
    const int lane = threadIdx.x & 31;
    const int g = lane >> 2;  // mma groupID: token row / value row / query head
    const int c = lane & 3;   // mma thread in group: column pair
    // Warps in (batch, split, KV head) order: the warps of a block are the KV heads of one
    // (sequence, split) and read the same token-layout rows, which L1 then serves once.
    const int64_t warp = int64_t(blockIdx.x) * kWarps + (threadIdx.x >> 5);
    if (warp >= int64_t(p.batch) * p.n_splits * p.kv_heads) return;
    const int kvh = static_cast<int>(warp % p.kv_heads);
    const int split = static_cast<int>(warp / p.kv_heads % p.n_splits);
    const int b = static_cast<int>(warp / p.kv_heads / p.n_splits);
    const int G = p.q_heads / p.kv_heads;
    const bool dba = p.q_geo != nullptr;
    const int ds = p.k_sem.dim, dg = dba ? p.k_geo.dim : 0, dv = p.v.dim;

    const SplitRange range = split_range(p, b, split);  // this split's positions
    const int start = range.start, end = range.end;

    auto head_rows = [&](const caramba_cuda_cache& t) {
        return static_cast<const uint8_t*>(t.data) + b * t.batch_stride + kvh * t.head_stride;
    };

    // Per key group (k-step, half): its tensor's rows, and where this lane's pair sits in a row.
    // The query fragments (B operand: k = key position, n = query head) follow the same map,
    // with each path's scale and log2 e folded in.
    const uint8_t* key_data[KS][2];   // this lane's pair in row 0
    const uint8_t* key_scale[KS][2];  // its block's scale in row 0
    uint32_t key_stride[KS][2];
    constexpr bool kKeyQ4 = KFMT == CARAMBA_FORMAT_Q4_0;
    PairOffsets key_at[KS][2];
    uint32_t qf[KS][2];
    const int h = kvh * G + g;
    // Group (ks, half): its path, the path's head width, and this lane's value in the head.
    // Groups past both paths (padding up to the k-step) read the semantic rows. The loops
    // below call this again rather than keep its results in arrays: keeping them (4131102)
    // cost standard q4_0 9% on an H200 (113.0 vs 103.8 us at batch 8 x 32k), the arrays
    // living in registers across the query loads.
    auto key_group = [&](int ks, int half, bool& geo, int& d, int& j) {
        const int group = 2 * ks + half;
        geo = group >= groups(ds) && group < groups(ds) + groups(dg);
        d = geo ? dg : ds;
        j = 8 * (geo ? group - groups(ds) : group) + 2 * c;
    };
#pragma unroll
    for (int ks = 0; ks < KS; ++ks) {
#pragma unroll
        for (int half = 0; half < 2; ++half) {
            bool geo;
            int d, j;
            key_group(ks, half, geo, d, j);
            const caramba_cuda_cache& t = geo ? p.k_geo : p.k_sem;
            key_stride[ks][half] = static_cast<uint32_t>(t.token_stride);
            // A padding pair (j >= d) reads the row's first bytes (finite once dequantized)
            // against zero queries.
            key_at[ks][half] = pair_offsets(j < d ? kvh * t.head_shift + j : 0, kKeyQ4);
            key_data[ks][half] = head_rows(t) + key_at[ks][half].data;
            key_scale[ks][half] = head_rows(t) + key_at[ks][half].scale;
        }
    }
    // Queries: every raw load, then the conversions (query_bits, mma_fragments.cuh).
    uint32_t q_raw[KS][2][2];
    auto gather = [&](auto f32) {
#pragma unroll
        for (int ks = 0; ks < KS; ++ks)
#pragma unroll
            for (int half = 0; half < 2; ++half) {
                bool geo;
                int d, j;
                key_group(ks, half, geo, d, j);
                const int64_t row = (int64_t(b) * p.q_heads + h) * d;
                const void* q = geo ? p.q_geo : p.q_sem;
                const bool real = g < G && j < d;
#pragma unroll
                for (int e = 0; e < 2; ++e)
                    q_raw[ks][half][e] = real ? query_bits<decltype(f32)::value>(q, row + j + e) : 0u;
            }
    };
    if (p.q_type == CARAMBA_CUDA_QUERY_F32) gather(std::true_type{});
    else gather(std::false_type{});
#pragma unroll
    for (int ks = 0; ks < KS; ++ks) {
#pragma unroll
        for (int half = 0; half < 2; ++half) {
            bool geo;
            int d, j;
            key_group(ks, half, geo, d, j);
            const float scale = (geo ? p.scale_geo : p.scale_sem) * kLog2e;
            float x[2] = {0.f, 0.f};
#pragma unroll
            for (int e = 0; e < 2; ++e)
                if (g < G && j < d) x[e] = query_float(q_raw[ks][half][e], p.q_type) * scale;
            qf[ks][half] = pack(x[0], x[1]);
        }
    }
    constexpr bool kQ4 = VFMT == CARAMBA_FORMAT_Q4_0;
    constexpr int kBlockBytes = kQ4 ? 18 : 34;
    const uint8_t* v_rows = head_rows(p.v);
    const uint8_t* v_data = v_rows + 2 + 2 * g;  // bytes 2g, 2g + 1 of block 0
    const uint32_t v_stride = static_cast<uint32_t>(p.v.token_stride);

    // One chunk's raw bytes, two 16-bit loads per register. Where registers allow (kPrefetch)
    // they are loaded a chunk ahead of their use, so that each warp has the next chunk's loads
    // in flight while it computes this one.
    constexpr int kValueWords = kQ4 ? 2 : 4;
    constexpr bool kPrefetch = 8 * KS + NBV * (2 + 2 * kValueWords) <= 24;
    struct Raw {
        uint32_t key[2][KS][2][2];        // [m-tile][k-step][half][row]: pair | scale << 16
        uint32_t v_scale[NBV][2];         // [value block][m-tile]: row g | row g + 8 << 16
        uint32_t v[NBV][2][kValueWords];  // [value block][k-step]: tokens (t, t + 1) per word
    };
    // Positions past `end` (only in a split's last chunk) read position end - 1 instead:
    // their weights are zero, and its bytes are in bounds and finite.
    auto load = [&](Raw& raw, int t0, bool tail) {
        auto at = [&](int t) -> uint32_t { return tail ? min(t, end - 1) : t; };
#pragma unroll
        for (int mt = 0; mt < 2; ++mt) {
            uint32_t vs[NBV][2];
#pragma unroll
            for (int row = 0; row < 2; ++row) {
                const uint32_t t = at(t0 + 16 * mt + g + 8 * row);
#pragma unroll
                for (int ks = 0; ks < KS; ++ks) {
#pragma unroll
                    for (int half = 0; half < 2; ++half) {
                        const uint32_t stride = key_stride[ks][half];
                        raw.key[mt][ks][half][row] =
                            load_u16(key_data[ks][half], t, stride) |
                            load_u16(key_scale[ks][half], t, stride) << 16;
                    }
                }
#pragma unroll
                for (int nb = 0; nb < NBV; ++nb)
                    vs[nb][row] = load_u16(v_rows + nb * kBlockBytes, t, v_stride);
            }
#pragma unroll
            for (int nb = 0; nb < NBV; ++nb) raw.v_scale[nb][mt] = vs[nb][0] | vs[nb][1] << 16;
        }
#pragma unroll
        for (int kt = 0; kt < 2; ++kt) {
#pragma unroll
            for (int nb = 0; nb < NBV; ++nb) {
                uint32_t x[4], y[4];
#pragma unroll
                for (int i = 0; i < 4; ++i) {
                    const uint32_t t = at(t0 + 16 * kt + 2 * c + (i & 1) + 8 * (i >> 1));
                    x[i] = load_u16(v_data + nb * kBlockBytes, t, v_stride);
                    y[i] = kQ4 ? 0u : load_u16(v_data + nb * kBlockBytes + 16, t, v_stride);
                }
                raw.v[nb][kt][0] = __byte_perm(x[0], x[1], 0x5410);  // tokens 2c, 2c + 1
                raw.v[nb][kt][1] = __byte_perm(x[2], x[3], 0x5410);  // tokens 2c + 8, 2c + 9
                if (!kQ4) {
                    raw.v[nb][kt][2] = __byte_perm(y[0], y[1], 0x5410);
                    raw.v[nb][kt][3] = __byte_perm(y[2], y[3], 0x5410);
                }
            }
        }
    };

    float m_run[2] = {-INFINITY, -INFINITY};  // heads 2c, 2c + 1
    float l_run[2] = {0.f, 0.f};              // this lane's share of the rows
    float acc[NBV][2][4] = {};                // O^T fragments per value block and tile

    auto fetch = [&](Raw& raw, int t0) {
        if (t0 + kChunk <= end) load(raw, t0, false);
        else if (t0 < end) load(raw, t0, true);
    };
    // One chunk: scores, online softmax, weighted values.
    auto step = [&](const Raw& cur, int t0) {
        // ---- scores: S^T (tokens x heads), m-tile mt holds tokens t0 + 16 mt + [0, 16)
        float s[2][4] = {};
#pragma unroll
        for (int mt = 0; mt < 2; ++mt) {
#pragma unroll
            for (int ks = 0; ks < KS; ++ks) {
                uint32_t a[4];
#pragma unroll
                for (int half = 0; half < 2; ++half) {
#pragma unroll
                    for (int row = 0; row < 2; ++row) {
                        a[2 * half + row] = key_values<kKeyQ4>(cur.key[mt][ks][half][row],
                                                               key_at[ks][half].shift);
                    }
                }
                mma16816(s[mt], a, qf[ks][0], qf[ks][1]);
            }
        }

        // ---- online softmax over this chunk; s[.][0..1] are row g, s[.][2..3] row g + 8
        float cmax[2] = {-INFINITY, -INFINITY};
#pragma unroll
        for (int mt = 0; mt < 2; ++mt) {
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                if (t0 + kChunk > end && t0 + 16 * mt + g + 8 * (i >> 1) >= end)
                    s[mt][i] = -INFINITY;  // past the length (a split's last chunk only)
                cmax[i & 1] = fmaxf(cmax[i & 1], s[mt][i]);
            }
        }
        float alpha[2];
#pragma unroll
        for (int i = 0; i < 2; ++i) {
            const float m_new = fmaxf(m_run[i], warp_max_over_rows(cmax[i]));
            alpha[i] = fast_exp2(m_run[i] - m_new);  // 0 on the first chunk
            m_run[i] = m_new;
            l_run[i] *= alpha[i];
        }
#pragma unroll
        for (int mt = 0; mt < 2; ++mt) {
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                s[mt][i] = fast_exp2(s[mt][i] - m_run[i & 1]);
                l_run[i & 1] += s[mt][i];
            }
        }
#pragma unroll
        for (int nb = 0; nb < NBV; ++nb)
#pragma unroll
            for (int tile = 0; tile < 2; ++tile)
#pragma unroll
                for (int i = 0; i < 4; ++i) acc[nb][tile][i] *= alpha[i & 1];

        // ---- values: per block, weights times the block's scale, then V^T @ P'^T
#pragma unroll
        for (int nb = 0; nb < NBV; ++nb) {
            uint32_t pb[2][2];  // B fragments of the k-steps (tokens 0-15, 16-31)
#pragma unroll
            for (int mt = 0; mt < 2; ++mt) {
                const uint32_t scales = cur.v_scale[nb][mt];
                const float da = __half2float(__ushort_as_half(scales & 0xFFFFu));
                const float db = __half2float(__ushort_as_half(scales >> 16));
                pb[mt][0] = transpose8x8(pack(s[mt][0] * da, s[mt][1] * da));
                pb[mt][1] = transpose8x8(pack(s[mt][2] * db, s[mt][3] * db));
            }
#pragma unroll
            for (int kt = 0; kt < 2; ++kt) {
                const uint32_t lo = cur.v[nb][kt][0];  // tokens 2c, 2c + 1
                const uint32_t hi = cur.v[nb][kt][1];  // tokens 2c + 8, 2c + 9
                uint32_t a0[4], a1[4];  // tiles 0 and 1 of this block
                if (kQ4) {
                    a0[0] = as_u32(nibbles(lo));
                    a0[1] = as_u32(nibbles(lo >> 8));
                    a0[2] = as_u32(nibbles(hi));
                    a0[3] = as_u32(nibbles(hi >> 8));
                    a1[0] = as_u32(nibbles(lo >> 4));
                    a1[1] = as_u32(nibbles(lo >> 12));
                    a1[2] = as_u32(nibbles(hi >> 4));
                    a1[3] = as_u32(nibbles(hi >> 12));
                } else {
                    int8_value_fragments(lo, hi, cur.v[nb][kt][kValueWords - 2],
                                         cur.v[nb][kt][kValueWords - 1], a0, a1);
                }
                mma16816(acc[nb][0], a0, pb[kt][0], pb[kt][1]);
                mma16816(acc[nb][1], a1, pb[kt][0], pb[kt][1]);
            }
        }
    };
    if (kPrefetch) {  // two buffers, alternating (no copies between them)
        Raw a, b;
        fetch(a, start);
        for (int t0 = start; t0 < end; t0 += 2 * kChunk) {
            fetch(b, t0 + kChunk);
            step(a, t0);
            if (t0 + kChunk >= end) break;
            fetch(a, t0 + 2 * kChunk);
            step(b, t0 + kChunk);
        }
    } else {
        Raw a;
        for (int t0 = start; t0 < end; t0 += kChunk) {
            fetch(a, t0);
            step(a, t0);
        }
    }

    // ---- partials: heads 2c, 2c + 1 of this KV head
#pragma unroll
    for (int i = 0; i < 2; ++i) {
        const int hl = 2 * c + i;
        const float l = warp_sum_over_rows(l_run[i]);
        if (hl >= G) continue;
        const int64_t part = (int64_t(b) * p.q_heads + kvh * G + hl) * p.n_splits + split;
        if (g == 0) {
            p.m[part] = m_run[i];
            p.l[part] = l;
        }
        float* o = p.o + part * dv;
#pragma unroll
        for (int nb = 0; nb < NBV; ++nb) {
#pragma unroll
            for (int tile = 0; tile < 2; ++tile) {
                const int value = 32 * nb + 16 * tile + 2 * g;
                o[value] = acc[nb][tile][i];          // row g
                o[value + 1] = acc[nb][tile][2 + i];  // row g + 8
            }
        }
    }
}

caramba_status status(caramba_status_code code, const char* message) {
    caramba_status s;
    s.code = code;
    std::snprintf(s.message, sizeof s.message, "%s", message);
    return s;
}

int key_steps(const caramba_cuda_decode_params& p) {
    return caramba_cuda::key_steps(p.k_sem.dim, p.q_geo ? p.k_geo.dim : 0);
}

// A row address is position * token_stride in one 32 x 32 -> 64-bit multiply-add.
bool stride_fits(const caramba_cuda_cache& t) {
    return t.token_stride > 0 && t.token_stride <= int64_t(UINT32_MAX);
}

using Kernel = DecodeKernel;

template <int KFMT, int VFMT, int NBV>
Kernel pick_steps(int steps) {
    switch (steps) {
        case 1: return decode_mma_kernel<KFMT, VFMT, NBV, 1>;
        case 2: return decode_mma_kernel<KFMT, VFMT, NBV, 2>;
        default: return decode_mma_kernel<KFMT, VFMT, NBV, 4>;  // 3 runs with a zero k-step
    }
}

template <int KFMT, int VFMT>
Kernel pick_blocks(int blocks, int steps) {
    switch (blocks) {
        case 1: return pick_steps<KFMT, VFMT, 1>(steps);
        case 2: return pick_steps<KFMT, VFMT, 2>(steps);
        default: return pick_steps<KFMT, VFMT, 4>(steps);
    }
}

template <int KFMT>
Kernel pick_values(int v_format, int blocks, int steps) {
    return v_format == CARAMBA_FORMAT_Q4_0 ? pick_blocks<KFMT, CARAMBA_FORMAT_Q4_0>(blocks, steps)
                                           : pick_blocks<KFMT, CARAMBA_FORMAT_Q8_0>(blocks, steps);
}

Kernel pick(const caramba_cuda_decode_params& p) {
    const int blocks = p.v.dim / 32, steps = key_steps(p);
    return p.k_sem.format == CARAMBA_FORMAT_Q4_0
               ? pick_values<CARAMBA_FORMAT_Q4_0>(p.v.format, blocks, steps)
               : pick_values<CARAMBA_FORMAT_Q8_0>(p.v.format, blocks, steps);
}

bool quantized(int format) {
    return format == CARAMBA_FORMAT_Q8_0 || format == CARAMBA_FORMAT_Q4_0;
}

}  // namespace

extern "C" caramba_status caramba_cuda_decode_supported(const caramba_cuda_decode_params* params) {
    if (!params) return status(CARAMBA_ERR_INVALID_ARGUMENT, "params: NULL");
    const caramba_cuda_decode_params& p = *params;
    const bool dba = p.q_geo != nullptr;
    if (!quantized(p.k_sem.format) || (dba && !quantized(p.k_geo.format)) ||
        !quantized(p.v.format))
        return status(CARAMBA_ERR_UNSUPPORTED, "formats: q8_0 or q4_0 caches only");
    if (dba && p.k_geo.format != p.k_sem.format)
        return status(CARAMBA_ERR_UNSUPPORTED, "formats: k_sem and k_geo in one format");
    if (p.k_sem.dim <= 0 || p.k_sem.dim % 2 || (dba && (p.k_geo.dim <= 0 || p.k_geo.dim % 2)))
        return status(CARAMBA_ERR_UNSUPPORTED, "key dims: positive and even");
    if (!stride_fits(p.k_sem) || (dba && !stride_fits(p.k_geo)) || !stride_fits(p.v))
        return status(CARAMBA_ERR_UNSUPPORTED, "token strides: positive and under 4 GiB");
    if (p.v.dim != 32 && p.v.dim != 64 && p.v.dim != 128)
        return status(CARAMBA_ERR_UNSUPPORTED, "v.dim: 32, 64 or 128");
    if (p.v.head_shift != 0)
        return status(CARAMBA_ERR_UNSUPPORTED, "v: heads must start on a block");
    if (p.kv_heads <= 0 || p.q_heads % p.kv_heads || p.q_heads / p.kv_heads > 8)
        return status(CARAMBA_ERR_UNSUPPORTED, "heads: at most 8 query heads per KV head");
    if (p.q_type != CARAMBA_CUDA_QUERY_F32 && p.q_type != CARAMBA_CUDA_QUERY_F16 &&
        p.q_type != CARAMBA_CUDA_QUERY_BF16)
        return status(CARAMBA_ERR_INVALID_ARGUMENT, "q_type: a caramba_cuda_query_type");
    if (p.kernel != CARAMBA_CUDA_KERNEL_AUTO && p.kernel != CARAMBA_CUDA_KERNEL_HEADS &&
        p.kernel != CARAMBA_CUDA_KERNEL_ROWS)
        return status(CARAMBA_ERR_INVALID_ARGUMENT, "kernel: a caramba_cuda_kernel");
    if (p.batch <= 0 || p.s_max <= 0 || p.n_splits <= 0 || p.split_len <= 0 ||
        p.split_len % kChunk)
        return status(CARAMBA_ERR_INVALID_ARGUMENT,
                      "batch, s_max, n_splits: positive; split_len: a positive multiple of 32");
    // Wider keys only where a row kernel instance takes them (standard attention at head dim 128).
    if (key_steps(p) > kMaxKeySteps && !row_kernel(p).kernel)
        return status(CARAMBA_ERR_UNSUPPORTED,
                      "key dims: at most 8 groups of 8 key values per head (ceil(d_sem / 8) + "
                      "ceil(d_geo / 8) <= 8), or standard attention at head dim 128 with 4 query "
                      "heads per KV head in the head layout (kernel auto or rows)");
    return status(CARAMBA_OK, "");
}

namespace {

// The per-KV-head kernel's launch shape: one warp per (sequence, KV head, split), kWarps to a
// block; the row kernel's: one block of kRowRuns teams of warps per (sequence, split, head group).
struct Launch {
    Kernel kernel;
    int block_threads;
    int smem_bytes;
    int64_t blocks;
};

Launch launch_for(const caramba_cuda_decode_params& p) {
    const RowKernel rows = row_kernel(p);
    if (rows.kernel) {
        // Above 48 KiB a kernel must opt in to its dynamic shared memory (once is enough; the
        // call is cheap and not a stream operation, so also fine during graph capture).
        cudaFuncSetAttribute(rows.kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                             rows.smem_bytes);
        return {rows.kernel, rows.warps * 32, rows.smem_bytes,
                int64_t(p.batch) * rows.head_groups * p.n_splits};
    }
    const int64_t warps = int64_t(p.batch) * p.n_splits * p.kv_heads;
    return {pick(p), kWarps * 32, 0, (warps + kWarps - 1) / kWarps};
}

}  // namespace

extern "C" int caramba_cuda_decode_warps_per_sm(const caramba_cuda_decode_params* params) {
    if (caramba_cuda_decode_supported(params).code != CARAMBA_OK) return 0;
    const Launch l = launch_for(*params);
    int blocks = 0;
    if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, l.kernel, l.block_threads,
                                                      l.smem_bytes) != cudaSuccess)
        return 0;
    return blocks * (l.block_threads / 32);
}

extern "C" caramba_status caramba_cuda_decode_split_shape(const caramba_cuda_decode_params* params,
                                                          int32_t* warps, int32_t* positions) {
    caramba_status s = caramba_cuda_decode_supported(params);
    if (s.code != CARAMBA_OK) return s;
    if (!warps || !positions) return status(CARAMBA_ERR_INVALID_ARGUMENT, "warps, positions: NULL");
    const RowKernel row = row_kernel(*params);
    const bool rows = row.kernel != nullptr;
    *warps = rows ? row.warps * row.head_groups : params->kv_heads;
    *positions = rows ? kRowPositions : kChunk;
    return s;
}

extern "C" caramba_status caramba_cuda_decode_partials(const caramba_cuda_decode_params* params,
                                                       void* stream) {
    caramba_status s = caramba_cuda_decode_supported(params);
    if (s.code != CARAMBA_OK) return s;
    const Launch l = launch_for(*params);
    l.kernel<<<dim3(static_cast<unsigned>(l.blocks)), l.block_threads, l.smem_bytes,
               static_cast<cudaStream_t>(stream)>>>(*params);
    const cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return status(CARAMBA_ERR_INTERNAL, cudaGetErrorString(err));
    return s;
}
