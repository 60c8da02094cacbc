// The row kernel: fused decode over narrow-head q8_0 / q4_0 caches, one warp per token row of
// every KV head (mma.sync m16n8k16, sm_80+).
//
// Why a second kernel: with narrow heads (the Llama-3.2-1B DBA preset keeps 4 semantic and 8
// geometric key values per KV head, eight heads to a 32-value block) the per-KV-head kernel
// (decode_mma.cu) spends most of its instructions gathering 2-byte pieces of key blocks that
// eight warps share, and half its softmax lanes on padding (4 query heads in n = 8 columns).
// Here one warp takes all KV heads of a sequence, 16 positions per step:
//   scores  S (16 positions x 8 query heads, per n-tile j) = sum over the k-steps of the row
//           that hold n-tile j's KV heads of K_row (positions x 16 row values) @ Q^T, Q^T being
//           block-diagonal (a query head sees only its KV head's values);
//   values  O^T (dv x 8 heads) of KV head h += V_h^T (dv x positions) @ P'^T of h's n-tile;
//           the columns of the n-tile's other KV heads are computed and dropped.
// Every byte of a key row goes to some lane (no duplicate gathers), and the softmax columns
// are all real query heads. The running maximum is re-reduced across the warp only when a
// score passes it by more than kLazyMax (a warp vote): weights are then at most 2^kLazyMax,
// which keeps p * d within fp16 for any fp16-representable block scale, and the result is the
// same online softmax (only rounding differs). The warps of a block split their (sequence,
// split)'s positions 32 at a time and merge through shared memory into one partial per head.
//
// Operands are the per-KV-head kernel's (fp16 dequantized keys and queries, fp16 weights p * d
// against exact integer values, fp32 accumulation), so its tolerances hold here.
#include "decode_rows.h"

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "mma_fragments.cuh"

namespace caramba_cuda {
namespace {

constexpr int kStep = 16;         // positions per step (the value mma's k)
constexpr float kLazyMax = 3.0f;  // log2 headroom of the running maximum (weights <= 8)

__device__ __forceinline__ uint32_t ld16(const uint8_t* at) {
    uint32_t v;
    asm("ld.global.nc.u16 %0, [%1];" : "=r"(v) : "l"(at));
    return v;
}

// Low 16 bits of a and of b in one word (a low).
__device__ __forceinline__ uint32_t join16(uint32_t a, uint32_t b) {
    return __byte_perm(a, b, 0x5410);
}

// The compile-time shape of one instance: formats, query heads per KV head (G), KV heads,
// per-head key widths (DG = 0: standard attention) and value blocks per head.
template <int KFMT, int VFMT, int G_, int HKV_, int DS, int DG, int NBV_>
struct Shape {
    static constexpr int G = G_, HKV = HKV_, NBV = NBV_;
    static constexpr int HQ = G * HKV, NT = HQ / 8, DV = 32 * NBV, PATHS = DG > 0 ? 2 : 1;
    static constexpr bool KQ4 = KFMT == CARAMBA_FORMAT_Q4_0, VQ4 = VFMT == CARAMBA_FORMAT_Q4_0;
    static constexpr int KBYTES = KQ4 ? 18 : 34, VBYTES = VQ4 ? 18 : 34;
    static constexpr int KW = KQ4 ? 1 : 2;  // words per key block and row: 2 (4) 16-bit pieces
    static constexpr int VW = VQ4 ? 2 : 4;  // words per value block and step
    __host__ __device__ static constexpr int dim(int path) { return path ? DG : DS; }
    __host__ __device__ static constexpr int blocks(int path) { return HKV * dim(path) / 32; }
    // Row values of n-tile j's KV heads (8 / G heads of dim values): a run of rho values at j rho.
    __host__ __device__ static constexpr int rho(int path) { return 8 * dim(path) / G; }
    __host__ __device__ static constexpr int first_step(int path, int j) {
        return j * rho(path) / kStep;
    }
    __host__ __device__ static constexpr int steps(int path) {
        return rho(path) < kStep ? 1 : rho(path) / kStep;
    }
    __host__ __device__ static constexpr bool uses(int path, int j, int step) {
        return step >= first_step(path, j) && step < first_step(path, j) + steps(path);
    }
    static constexpr int MAX_BLOCKS = blocks(0) > blocks(1) ? blocks(0) : blocks(1);
    static constexpr int MAX_STEPS = steps(0) > steps(1) ? steps(0) : steps(1);
    static constexpr bool valid(int path) {
        return dim(path) > 0 && (HKV * dim(path)) % 32 == 0 &&
               (rho(path) < kStep ? kStep % rho(path) == 0 : rho(path) % kStep == 0);
    }
    static_assert(8 % G == 0 && HQ % 8 == 0, "n-tiles of whole KV heads");
    static_assert(valid(0) && (DG == 0 || valid(1)), "rows of whole blocks, aligned n-tile runs");
    static_assert(HKV * NBV <= 8, "value accumulators: at most 64 registers");
    static_assert(G >= 2, "a lane's two columns of an n-tile share one KV head");
};

template <class S>
__global__ void __launch_bounds__(kRowWarps * 32, 2) decode_rows_kernel(const caramba_cuda_decode_params p) {
    constexpr int NT = S::NT, HKV = S::HKV, NBV = S::NBV, PATHS = S::PATHS, G = S::G;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int g = lane >> 2;  // mma groupID: position row / value row / query head
    const int c = lane & 3;   // mma thread in group: column pair
    const int b = static_cast<int>(blockIdx.x / p.n_splits);
    const int split = static_cast<int>(blockIdx.x % p.n_splits);

    // This split's positions (caramba/cuda.h's rule, as the per-KV-head kernel).
    const int length = min(max(p.lengths[b], 0), p.s_max);
    int split_len = ((length + p.n_splits - 1) / p.n_splits + 31) / 32 * 32;
    split_len = max(min(split_len, p.split_len), 32);
    const int start = split * split_len;
    const int end = min(start + split_len, length);

    // Key rows: every KV head's values of one path in one row of whole blocks.
    const uint8_t* key_data[PATHS];   // this lane's bytes 2c, 2c + 1 of block 0 in row 0
    const uint8_t* key_scale[PATHS];  // block 0's scale in row 0
    uint32_t key_stride[PATHS];
    // Query fragments (B operand, k = row value, n = query head): n-tile j's k-steps only.
    uint32_t qf[PATHS][NT][S::MAX_STEPS][2];
#pragma unroll
    for (int path = 0; path < PATHS; ++path) {
        const caramba_cuda_cache& t = path ? p.k_geo : p.k_sem;
        const uint8_t* rows = static_cast<const uint8_t*>(t.data) + b * t.batch_stride;
        key_data[path] = rows + 2 + 2 * c;
        key_scale[path] = rows;
        key_stride[path] = static_cast<uint32_t>(t.token_stride);
        const float* q = path ? p.q_geo : p.q_sem;
        const float scale = (path ? p.scale_geo : p.scale_sem) * kLog2e;
        const int d = S::dim(path);
#pragma unroll
        for (int j = 0; j < NT; ++j) {
            const int h = 8 * j + g, kv = h / G;
#pragma unroll
            for (int i = 0; i < S::steps(path); ++i) {
                float x[4];
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const int u = kStep * (S::first_step(path, j) + i) + 2 * c + (e & 1) +
                                  8 * (e >> 1) - kv * d;  // value of head h's key
                    x[e] = u >= 0 && u < d ? q[(int64_t(b) * p.q_heads + h) * d + u] * scale : 0.f;
                }
                qf[path][j][i][0] = pack(x[0], x[1]);
                qf[path][j][i][1] = pack(x[2], x[3]);
            }
        }
    }
    // Values: head layout or token layout, each head starting on a block.
    const uint8_t* v_rows = static_cast<const uint8_t*>(p.v.data) + b * p.v.batch_stride;
    const uint8_t* v_data = v_rows + 2 + 2 * g;  // bytes 2g, 2g + 1 of block 0
    const uint32_t v_stride = static_cast<uint32_t>(p.v.token_stride);
    const int64_t v_head = p.v.head_stride;
    // The KV head of this lane's columns 2c, 2c + 1 in n-tile j, whose scales weight them.
    const uint8_t* v_scale[NT];
#pragma unroll
    for (int j = 0; j < NT; ++j) v_scale[j] = v_rows + ((8 * j + 2 * c) / G) * v_head;

    // One step's raw bytes, loaded a step ahead of their use.
    struct Raw {
        uint32_t key[PATHS][S::MAX_BLOCKS][2][S::KW];  // [path][block][row g / g + 8][word]
        uint32_t key_scale[PATHS][S::MAX_BLOCKS];      // row g | row g + 8 << 16
        uint32_t v[HKV][NBV][S::VW];                   // positions (2c, 2c + 1), (2c + 8, 2c + 9)
        uint32_t v_scale[NT][NBV];                     // row g | row g + 8 << 16
    };
    // Positions past `end` (only in a split's last step) read position end - 1 instead: their
    // weights are zero, and its bytes are in bounds and finite.
    auto load = [&](Raw& raw, int t0, bool tail) {
        auto at = [&](int t) -> uint32_t { return tail ? min(t, end - 1) : t; };
#pragma unroll
        for (int path = 0; path < PATHS; ++path) {
            uint32_t sc[S::MAX_BLOCKS][2];
#pragma unroll
            for (int row = 0; row < 2; ++row) {
                const uint32_t t = at(t0 + g + 8 * row);
                const uint8_t* data = key_data[path] + size_t(t) * key_stride[path];
                const uint8_t* scale = key_scale[path] + size_t(t) * key_stride[path];
#pragma unroll
                for (int blk = 0; blk < S::blocks(path); ++blk) {
                    const uint8_t* at_blk = data + blk * S::KBYTES;
                    raw.key[path][blk][row][0] = join16(ld16(at_blk), ld16(at_blk + 8));
                    if (!S::KQ4) raw.key[path][blk][row][1] = join16(ld16(at_blk + 16), ld16(at_blk + 24));
                    sc[blk][row] = ld16(scale + blk * S::KBYTES);
                }
            }
#pragma unroll
            for (int blk = 0; blk < S::blocks(path); ++blk)
                raw.key_scale[path][blk] = join16(sc[blk][0], sc[blk][1]);
        }
        const uint8_t* rows[4];  // positions 2c, 2c + 1, 2c + 8, 2c + 9
#pragma unroll
        for (int e = 0; e < 4; ++e)
            rows[e] = v_data + size_t(at(t0 + 2 * c + (e & 1) + 8 * (e >> 1))) * v_stride;
#pragma unroll
        for (int kvh = 0; kvh < HKV; ++kvh) {
#pragma unroll
            for (int nb = 0; nb < NBV; ++nb) {
                const int64_t off = kvh * v_head + nb * S::VBYTES;
                uint32_t x[4], y[4];
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    x[e] = ld16(rows[e] + off);
                    y[e] = S::VQ4 ? 0u : ld16(rows[e] + off + 16);
                }
                raw.v[kvh][nb][0] = join16(x[0], x[1]);
                raw.v[kvh][nb][1] = join16(x[2], x[3]);
                if (!S::VQ4) {
                    raw.v[kvh][nb][2] = join16(y[0], y[1]);
                    raw.v[kvh][nb][3] = join16(y[2], y[3]);
                }
            }
        }
#pragma unroll
        for (int j = 0; j < NT; ++j) {
            const uint8_t* r0 = v_scale[j] + size_t(at(t0 + g)) * v_stride;
            const uint8_t* r1 = v_scale[j] + size_t(at(t0 + g + 8)) * v_stride;
#pragma unroll
            for (int nb = 0; nb < NBV; ++nb)
                raw.v_scale[j][nb] = join16(ld16(r0 + nb * S::VBYTES), ld16(r1 + nb * S::VBYTES));
        }
    };

    float m_run[NT][2], l_run[NT][2];  // columns 2c, 2c + 1 of each n-tile
    float acc[HKV][NBV][2][4] = {};    // O^T fragments per KV head, value block and tile
#pragma unroll
    for (int j = 0; j < NT; ++j) {
        m_run[j][0] = m_run[j][1] = -INFINITY;
        l_run[j][0] = l_run[j][1] = 0.f;
    }

    auto step = [&](const Raw& cur, int t0) {
        // ---- scores, one key block (two k-steps) at a time
        float s[NT][4] = {};
#pragma unroll
        for (int path = 0; path < PATHS; ++path) {
#pragma unroll
            for (int blk = 0; blk < S::blocks(path); ++blk) {
                uint32_t a[2][4];  // k-steps 2 blk (values 0-15), 2 blk + 1 (16-31)
                const uint32_t sc = cur.key_scale[path][blk];
                const __half2 scale[2] = {as_h2(__byte_perm(sc, 0, 0x1010)),
                                          as_h2(__byte_perm(sc, 0, 0x3232))};
#pragma unroll
                for (int row = 0; row < 2; ++row) {
#pragma unroll
                    for (int half = 0; half < 2; ++half) {  // k 2c, 2c + 1 | 2c + 8, 2c + 9
                        if (S::KQ4) {
                            const uint32_t y = __byte_perm(cur.key[path][blk][row][0], 0,
                                                           half ? 0x4342 : 0x4140);
                            a[0][2 * half + row] = as_u32(__hmul2(nibbles(y), scale[row]));
                            a[1][2 * half + row] = as_u32(__hmul2(nibbles(y >> 4), scale[row]));
                        } else {
#pragma unroll
                            for (int ks = 0; ks < 2; ++ks) {
                                const uint32_t y = __byte_perm(cur.key[path][blk][row][ks], 0,
                                                               half ? 0x4342 : 0x4140);
                                a[ks][2 * half + row] = as_u32(__hmul2(int8s(y), scale[row]));
                            }
                        }
                    }
                }
#pragma unroll
                for (int ks = 0; ks < 2; ++ks) {
                    const int step_index = 2 * blk + ks;
#pragma unroll
                    for (int j = 0; j < NT; ++j) {
                        if (!S::uses(path, j, step_index)) continue;
                        const int i = step_index - S::first_step(path, j);
                        mma16816(s[j], a[ks], qf[path][j][i][0], qf[path][j][i][1]);
                    }
                }
            }
        }

        // ---- online softmax; s[j][0..1] are row g, s[j][2..3] row g + 8
        if (t0 + kStep > end) {
#pragma unroll
            for (int row = 0; row < 2; ++row) {
                if (t0 + g + 8 * row < end) continue;
#pragma unroll
                for (int j = 0; j < NT; ++j) s[j][2 * row] = s[j][2 * row + 1] = -INFINITY;
            }
        }
        float cmax[NT][2];
        bool rising = false;
#pragma unroll
        for (int j = 0; j < NT; ++j) {
#pragma unroll
            for (int i = 0; i < 2; ++i) {
                cmax[j][i] = fmaxf(s[j][i], s[j][2 + i]);
                rising |= cmax[j][i] > m_run[j][i] + kLazyMax;
            }
        }
        if (__any_sync(0xffffffffu, rising)) {
#pragma unroll
            for (int j = 0; j < NT; ++j) {
#pragma unroll
                for (int i = 0; i < 2; ++i) {
                    const float m_new = fmaxf(m_run[j][i], warp_max_over_rows(cmax[j][i]));
                    const float alpha = fast_exp2(m_run[j][i] - m_new);  // 0 on the first step
                    m_run[j][i] = m_new;
                    l_run[j][i] *= alpha;
#pragma unroll
                    for (int kvh = 8 * j / G; kvh < 8 * (j + 1) / G; ++kvh)
#pragma unroll
                        for (int nb = 0; nb < NBV; ++nb)
#pragma unroll
                            for (int tile = 0; tile < 2; ++tile) {
                                acc[kvh][nb][tile][i] *= alpha;
                                acc[kvh][nb][tile][2 + i] *= alpha;
                            }
                }
            }
        }
#pragma unroll
        for (int j = 0; j < NT; ++j) {
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                s[j][i] = fast_exp2(s[j][i] - m_run[j][i & 1]);
                l_run[j][i & 1] += s[j][i];
            }
        }

        // ---- values: weights times their KV head's block scale, then V^T @ P'^T per KV head
        uint32_t pb[NT][NBV][2];  // B fragments: positions 0-7 | 8-15 of the step
#pragma unroll
        for (int j = 0; j < NT; ++j) {
#pragma unroll
            for (int nb = 0; nb < NBV; ++nb) {
                const uint32_t scales = cur.v_scale[j][nb];
                const float da = __half2float(__ushort_as_half(scales & 0xFFFFu));
                const float db = __half2float(__ushort_as_half(scales >> 16));
                pb[j][nb][0] = transpose8x8(pack(s[j][0] * da, s[j][1] * da));
                pb[j][nb][1] = transpose8x8(pack(s[j][2] * db, s[j][3] * db));
            }
        }
#pragma unroll
        for (int kvh = 0; kvh < HKV; ++kvh) {
            const int j = kvh * G / 8;
#pragma unroll
            for (int nb = 0; nb < NBV; ++nb) {
                const uint32_t lo = cur.v[kvh][nb][0];  // positions 2c, 2c + 1
                const uint32_t hi = cur.v[kvh][nb][1];  // positions 2c + 8, 2c + 9
                uint32_t a0[4], a1[4];                  // tiles 0 and 1 of this block
                if (S::VQ4) {
                    a0[0] = as_u32(nibbles(lo));
                    a0[1] = as_u32(nibbles(lo >> 8));
                    a0[2] = as_u32(nibbles(hi));
                    a0[3] = as_u32(nibbles(hi >> 8));
                    a1[0] = as_u32(nibbles(lo >> 4));
                    a1[1] = as_u32(nibbles(lo >> 12));
                    a1[2] = as_u32(nibbles(hi >> 4));
                    a1[3] = as_u32(nibbles(hi >> 12));
                } else {
                    const uint32_t lo2 = cur.v[kvh][nb][S::VW - 2];
                    const uint32_t hi2 = cur.v[kvh][nb][S::VW - 1];
                    a0[0] = as_u32(int8s(lo));
                    a0[1] = as_u32(int8s(lo >> 8));
                    a0[2] = as_u32(int8s(hi));
                    a0[3] = as_u32(int8s(hi >> 8));
                    a1[0] = as_u32(int8s(lo2));
                    a1[1] = as_u32(int8s(lo2 >> 8));
                    a1[2] = as_u32(int8s(hi2));
                    a1[3] = as_u32(int8s(hi2 >> 8));
                }
                mma16816(acc[kvh][nb][0], a0, pb[j][nb][0], pb[j][nb][1]);
                mma16816(acc[kvh][nb][1], a1, pb[j][nb][0], pb[j][nb][1]);
            }
        }
    };

    // Warp w takes positions start + 32 (w + kRowWarps i) + [0, 32), one step of 16 at a time,
    // each step's bytes loaded while the one before it computes.
    auto next = [&](int t) {
        return ((t - start) & kStep) ? t + kStep + 32 * (kRowWarps - 1) : t + kStep;
    };
    auto fetch = [&](Raw& raw, int t0) {
        if (t0 + kStep <= end) load(raw, t0, false);
        else if (t0 < end) load(raw, t0, true);
    };
    {
        Raw ra, rb;
        int t = start + 32 * warp;
        fetch(ra, t);
        while (t < end) {
            const int t1 = next(t);
            fetch(rb, t1);
            step(ra, t);
            if (t1 >= end) break;
            const int t2 = next(t1);
            fetch(ra, t2);
            step(rb, t1);
            t = t2;
        }
    }

    // ---- merge the block's warps through shared memory: one partial per (head, split)
    constexpr int DV = S::DV, HQ = S::HQ;
    __shared__ float sm_m[kRowWarps][HQ], sm_l[kRowWarps][HQ];
    __shared__ float sm_o[kRowWarps][HQ][DV + 1];  // + 1: lanes c write heads DV apart
#pragma unroll
    for (int j = 0; j < NT; ++j) {
#pragma unroll
        for (int i = 0; i < 2; ++i) {
            const float l = warp_sum_over_rows(l_run[j][i]);
            if (g == 0) {
                sm_m[warp][8 * j + 2 * c + i] = m_run[j][i];
                sm_l[warp][8 * j + 2 * c + i] = l;
            }
        }
    }
#pragma unroll
    for (int kvh = 0; kvh < HKV; ++kvh) {
        const int j = kvh * G / 8;
#pragma unroll
        for (int i = 0; i < 2; ++i) {
            const int h = 8 * j + 2 * c + i;
            if (h / G != kvh) continue;  // a column of the n-tile's other KV head
#pragma unroll
            for (int nb = 0; nb < NBV; ++nb) {
#pragma unroll
                for (int tile = 0; tile < 2; ++tile) {
                    const int value = 32 * nb + 16 * tile + 2 * g;
                    sm_o[warp][h][value] = acc[kvh][nb][tile][i];          // row g
                    sm_o[warp][h][value + 1] = acc[kvh][nb][tile][2 + i];  // row g + 8
                }
            }
        }
    }
    __syncthreads();
    for (int x = threadIdx.x; x < HQ * DV; x += kRowWarps * 32) {
        const int h = x / DV, value = x % DV;
        float m = -INFINITY;
#pragma unroll
        for (int w = 0; w < kRowWarps; ++w) m = fmaxf(m, sm_m[w][h]);
        float l = 0.f, o = 0.f;
        if (m > -INFINITY) {
#pragma unroll
            for (int w = 0; w < kRowWarps; ++w) {
                const float f = exp2f(sm_m[w][h] - m);  // 0 for a warp without positions
                l += f * sm_l[w][h];
                o += f * sm_o[w][h][value];
            }
        }
        const int64_t part = (int64_t(b) * HQ + h) * p.n_splits + split;
        p.o[part * DV + value] = o;
        if (value == 0) {
            p.m[part] = m;
            p.l[part] = l;
        }
    }
}

// ---- instances and the host-side match ---------------------------------------------------

template <class S>
bool matches(const caramba_cuda_decode_params& p, int dg) {
    return p.q_heads == S::HQ && p.kv_heads == S::HKV && p.k_sem.dim == S::dim(0) &&
           dg == S::dim(1) && p.v.dim == S::DV;
}

// Keys of every KV head in one row: value g * dim + i of the row at data + t * token_stride.
bool whole_rows(const caramba_cuda_cache& t, int kv_heads) {
    const int64_t block = t.format == CARAMBA_FORMAT_Q4_0 ? 18 : 34;
    const bool shifted = t.head_stride == 0 && t.head_shift == t.dim;
    const bool blocked = t.head_shift == 0 && t.dim % 32 == 0 && t.head_stride == t.dim / 32 * block;
    return (shifted || blocked) && (int64_t(kv_heads) * t.dim) % 32 == 0;
}

template <int G, int HKV, int DS, int DG, int NBV>
DecodeKernel instance(const caramba_cuda_decode_params& p, int dg) {
    using Q4Q4 = Shape<CARAMBA_FORMAT_Q4_0, CARAMBA_FORMAT_Q4_0, G, HKV, DS, DG, NBV>;
    if (!matches<Q4Q4>(p, dg)) return nullptr;
    const bool k4 = p.k_sem.format == CARAMBA_FORMAT_Q4_0, v4 = p.v.format == CARAMBA_FORMAT_Q4_0;
    if (k4 && v4) return decode_rows_kernel<Q4Q4>;
    if (k4) return decode_rows_kernel<Shape<CARAMBA_FORMAT_Q4_0, CARAMBA_FORMAT_Q8_0, G, HKV, DS, DG, NBV>>;
    if (v4) return decode_rows_kernel<Shape<CARAMBA_FORMAT_Q8_0, CARAMBA_FORMAT_Q4_0, G, HKV, DS, DG, NBV>>;
    return decode_rows_kernel<Shape<CARAMBA_FORMAT_Q8_0, CARAMBA_FORMAT_Q8_0, G, HKV, DS, DG, NBV>>;
}

}  // namespace

DecodeKernel row_kernel(const caramba_cuda_decode_params& p) {
    const bool dba = p.q_geo != nullptr;
    const int dg = dba ? p.k_geo.dim : 0;
    if (!whole_rows(p.k_sem, p.kv_heads) || (dba && !whole_rows(p.k_geo, p.kv_heads)))
        return nullptr;
    // The instances: head shapes whose key rows are narrow enough for one warp.
    // Llama-3.2-1B DBA preset (presets/llama32_1b_dba.yml): 32 query / 8 KV heads, per KV
    // head 4 semantic + 8 geometric key values, 32 values.
    return instance<4, 8, 4, 8, 1>(p, dg);
}

}  // namespace caramba_cuda
