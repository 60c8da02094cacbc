// Device helpers of the tensor-core decode kernel (decode_mma.cu): mma.sync and movmatrix,
// GGML bytes to fp16 mma operands, row loads, warp reductions, and the key-group map.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "caramba/cuda.h"
#include "caramba/quant.h"

namespace caramba_cuda {

constexpr float kLog2e = 1.4426950408889634f;

// Lets the grid queued after this one (the split merge, launched as a programmatic dependent)
// start its blocks while this grid's last blocks run, instead of after all of them: the merge
// waits for this grid's writes itself (griddepcontrol.wait). A no-op before sm_90, and where
// the next launch is not a programmatic dependent.
__device__ __forceinline__ void allow_dependent_launch() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;");
#endif
}

__device__ __forceinline__ void mma16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                         uint32_t b1) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ uint32_t transpose8x8(uint32_t x) {
    uint32_t y;
    asm("movmatrix.sync.aligned.m8n8.trans.b16 %0, %1;\n" : "=r"(y) : "r"(x));
    return y;
}

__device__ __forceinline__ uint32_t as_u32(__half2 h) { return *reinterpret_cast<uint32_t*>(&h); }
__device__ __forceinline__ __half2 as_h2(uint32_t u) { return *reinterpret_cast<__half2*>(&u); }

__device__ __forceinline__ uint32_t pack(float lo, float hi) {
    return as_u32(__floats2half2_rn(lo, hi));
}

// Queries are read in two passes: every raw load first (query_bits, with one branch on the
// element size around all of a kernel's loads), then the conversions (query_float, no loads),
// so a block waits one global-load latency for its queries. A type switch around each element's
// load made every load wait for the one before: ~16 us per call at 32 elements per lane.
template <bool F32>
__device__ __forceinline__ uint32_t query_bits(const void* q, int64_t i) {
    if constexpr (F32) return __ldg(static_cast<const unsigned int*>(q) + i);
    else return __ldg(static_cast<const unsigned short*>(q) + i);
}

__device__ __forceinline__ float query_float(uint32_t bits, int type) {  // selects, no branch
    const float f16 = __half2float(__ushort_as_half(static_cast<unsigned short>(bits)));
    const float other = __uint_as_float(type == CARAMBA_CUDA_QUERY_BF16 ? bits << 16 : bits);
    return type == CARAMBA_CUDA_QUERY_F16 ? f16 : other;
}

// 16 bits at row t of rows `stride` bytes apart from `at`: one 32 x 32 -> 64-bit multiply-add
// and one load, through the read-only path.
__device__ __forceinline__ uint32_t load_u16(const uint8_t* at, uint32_t t, uint32_t stride) {
    uint32_t v;
    asm("{\n\t.reg .u64 a;\n\tmad.wide.u32 a, %1, %2, %3;\n\tld.global.nc.u16 %0, [a];\n\t}"
        : "=r"(v)
        : "r"(t), "r"(stride), "l"(at));
    return v;
}

// 2^x to 2^-22 relative (the tolerance the tests derive allows it); 2^-inf = 0.
__device__ __forceinline__ float fast_exp2(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}

// The fp16 bits of 1024 in both halves, as a constant-memory word: an operand the compiler
// cannot fold into an immediate, so (x & mask) | magic stays one LOP3 (with two immediates it
// becomes an AND and an OR).
static __constant__ uint32_t kMagic1024[1] = {0x64006400u};

// One LOP3 of x, an immediate mask and a register word: (x & Mask) | bits (0xEA) or
// (x & Mask) ^ bits (0x6A).
template <uint32_t Mask, int Lut>
__device__ __forceinline__ uint32_t lop3_mask(uint32_t x, uint32_t bits) {
    uint32_t y;
    asm("lop3.b32 %0, %1, %2, %3, %4;" : "=r"(y) : "r"(x), "n"(Mask), "r"(bits), "n"(Lut));
    return y;
}
template <uint32_t Mask>
__device__ __forceinline__ uint32_t and_or(uint32_t x, uint32_t bits) {
    return lop3_mask<Mask, 0xEA>(x, bits);
}

// Two q4_0 nibbles (bits 0-3 of each 16-bit lane) -> half2 of (nibble - 8), exact.
__device__ __forceinline__ __half2 nibbles(uint32_t y) {
    const __half2 x = as_h2(and_or<0x000F000Fu>(y, kMagic1024[0]));  // 1024 + n
    return __hsub2(x, __half2half2(__ushort_as_half(0x6408)));  // - 1032
}

// Two q4_0 high nibbles (bits 4-7 of each 16-bit lane) -> half2 of (nibble - 8), exact without a
// shift: 1024 + 16 n times 1/16 minus 72 in one fused multiply-add (one rounding of an exact
// small integer).
__device__ __forceinline__ __half2 high_nibbles(uint32_t y) {
    const __half2 x = as_h2(and_or<0x00F000F0u>(y, kMagic1024[0]));             // 1024 + 16 n
    return __hfma2(x, __half2half2(__ushort_as_half(0x2C00)),                  // * 1/16
                   __half2half2(__ushort_as_half(0xD480)));                    // - 72
}

// Two int8 (bits 0-7 of each 16-bit lane) -> half2 of their values, exact.
__device__ __forceinline__ __half2 int8s(uint32_t y) {
    const __half2 x = as_h2((y & 0x00FF00FFu) ^ 0x64806480u);  // 1024 + 128 + q
    return __hsub2(x, __half2half2(__ushort_as_half(0x6480)));  // - 1152
}

// Value bytes as fp16 subnormal bit patterns: a value v in 0..255 stored as the 16-bit lane v is
// exactly v * 2^-24, and the tensor cores multiply subnormal fp16 operands exactly. So a value
// fragment is one mask (q4_0 nibbles: n 2^-24 from the low nibble, n 2^-20 from the high one) or
// one mask-and-flip (q8_0: b + 128 from the two's complement byte b) with no fp16 arithmetic; the
// kernel adds the offset back once per split as offset * (sum of the weights) and undoes the
// power of two when it writes its partials.
static __constant__ uint32_t kBias128[1] = {0x00800080u};  // a word for one LOP3 (see and_or)

// Bytes 0 and 2 of y (two's complement) -> their values + 128 as subnormal fp16 lanes.
__device__ __forceinline__ uint32_t biased_bytes(uint32_t y) {
    return lop3_mask<0x00FF00FFu, 0x6A>(y, kBias128[0]);
}

// V^T fragments (m-tiles 0 and 1) of one q8_0 value block: lo, hi hold bytes 2g, 2g + 1 of
// positions (2c, 2c + 1) and (2c + 8, 2c + 9) (one 16-bit half per position), lo2, hi2 bytes
// 2g + 16, 2g + 17 of the same positions.
__device__ __forceinline__ void int8_value_fragments(uint32_t lo, uint32_t hi, uint32_t lo2,
                                                     uint32_t hi2, uint32_t (&a0)[4],
                                                     uint32_t (&a1)[4]) {
    a0[0] = as_u32(int8s(lo));
    a0[1] = as_u32(int8s(lo >> 8));
    a0[2] = as_u32(int8s(hi));
    a0[3] = as_u32(int8s(hi >> 8));
    a1[0] = as_u32(int8s(lo2));
    a1[1] = as_u32(int8s(lo2 >> 8));
    a1[2] = as_u32(int8s(hi2));
    a1[3] = as_u32(int8s(hi2 >> 8));
}

// A key pair (the low 16 bits of `raw`; q4_0 high halves shifted down by `shift`) times its
// block's fp16 scale (the high 16 bits).
template <bool Q4>
__device__ __forceinline__ uint32_t key_values(uint32_t raw, int shift) {
    const uint32_t y = __byte_perm(raw >> shift, 0, 0x4140);  // bytes 0, 1 -> lanes 0, 1
    const __half2 q = Q4 ? nibbles(y) : int8s(y);
    return as_u32(__hmul2(q, as_h2(__byte_perm(raw, 0, 0x3232))));  // scale in both lanes
}

__device__ __forceinline__ float warp_max_over_rows(float x) {
    x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 4));
    x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 8));
    return fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 16));
}

__device__ __forceinline__ float warp_sum_over_rows(float x) {
    x += __shfl_xor_sync(0xffffffffu, x, 4);
    x += __shfl_xor_sync(0xffffffffu, x, 8);
    return x + __shfl_xor_sync(0xffffffffu, x, 16);
}

// The positions [start, end) of one split of sequence b, caramba/cuda.h's rule (the Triton
// kernel's): splits of n = max(32, min(split_len, 32 * ceil(ceil(length / n_splits) / 32)))
// positions, length = clamp(lengths[b], 0, s_max). Both CUDA kernels use it.
struct SplitRange {
    int start, end;
};

__device__ __forceinline__ SplitRange split_range(const caramba_cuda_decode_params& p, int b,
                                                  int split) {
    const int length = min(max(p.lengths[b], 0), p.s_max);
    int split_len = ((length + p.n_splits - 1) / p.n_splits + 31) / 32 * 32;
    split_len = max(min(split_len, p.split_len), 32);
    const int start = split * split_len;
    return {start, min(start + split_len, length)};
}

// Key groups: the mma's k axis is cut into groups of 8 positions, group i = (k-step i / 2,
// half i % 2); the semantic values take the first ceil(d_sem / 8) groups, the geometric ones
// the next ceil(d_geo / 8). So every group reads one tensor (a warp-uniform base) and lane c
// holds values 2c, 2c + 1 of its group.
__host__ __device__ inline int groups(int d) { return (d + 7) / 8; }

__host__ __device__ inline int key_steps(int ds, int dg) {
    return (groups(ds) + groups(dg) + 1) / 2;
}

// Where a lane's key pair lives: value index u (even) of a row of `format` blocks.
struct PairOffsets {
    uint32_t data, scale;
    int shift;
};

__device__ __forceinline__ PairOffsets pair_offsets(int u, bool q4) {
    const int block = u >> 5, r = u & 31;
    PairOffsets o;
    o.scale = block * (q4 ? 18 : 34);
    o.data = o.scale + 2 + (q4 ? (r & 15) : r);
    o.shift = q4 ? (r & 16) >> 2 : 0;
    return o;
}

}  // namespace caramba_cuda
