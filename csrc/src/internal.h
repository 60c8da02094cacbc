// Internal helpers shared by the kernel sources (not installed).
#pragma once

#include <cmath>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstring>

#include "caramba/attention.h"
#include "caramba/quant.h"
#include "caramba/status.h"

namespace caramba::detail {

// The integer in an enum object from a C caller, which may hold any value: loading an
// out-of-range value as the C++ enum type is undefined, copying its bytes is not.
template <class E>
inline int raw(const E& e) {
    static_assert(sizeof(E) == sizeof(int), "C enums are int-sized");
    int v;
    std::memcpy(&v, &e, sizeof v);
    return v;
}

inline caramba_status ok_status() {
    caramba_status s;
    s.code = CARAMBA_OK;
    s.message[0] = '\0';
    return s;
}

#if defined(__GNUC__) || defined(__clang__)
__attribute__((format(printf, 2, 3)))
#endif
inline caramba_status
make_status(caramba_status_code code, const char* fmt, ...) {
    caramba_status s;
    s.code = code;
    va_list args;
    va_start(args, fmt);
    std::vsnprintf(s.message, sizeof(s.message), fmt, args);
    va_end(args);
    return s;
}

// ---- fp16 <-> fp32, bit-exact with F16C / numpy (round to nearest, ties to even) ----------
// The branch-free algorithm of the FP16 library (Marat Dukhan), as in ggml-impl.h. It relies
// on IEEE float arithmetic: the library is built without -ffast-math and with
// -ffp-contract=off.

inline float fp32_from_bits(uint32_t w) {
    float f;
    std::memcpy(&f, &w, sizeof f);
    return f;
}

inline uint32_t fp32_to_bits(float f) {
    uint32_t w;
    std::memcpy(&w, &f, sizeof w);
    return w;
}

inline float fp16_to_fp32_ref(uint16_t h) {
    const uint32_t w = static_cast<uint32_t>(h) << 16;
    const uint32_t sign = w & UINT32_C(0x80000000);
    const uint32_t two_w = w + w;
    const uint32_t exp_offset = UINT32_C(0xE0) << 23;
    const float exp_scale = 0x1.0p-112f;
    const float normalized = fp32_from_bits((two_w >> 4) + exp_offset) * exp_scale;
    const uint32_t magic_mask = UINT32_C(126) << 23;
    const float magic_bias = 0.5f;
    const float denormalized = fp32_from_bits((two_w >> 17) | magic_mask) - magic_bias;
    const uint32_t denormalized_cutoff = UINT32_C(1) << 27;
    const uint32_t result =
        sign | (two_w < denormalized_cutoff ? fp32_to_bits(denormalized) : fp32_to_bits(normalized));
    return fp32_from_bits(result);
}

inline uint16_t fp32_to_fp16_ref(float f) {
    const float scale_to_inf = 0x1.0p+112f;
    const float scale_to_zero = 0x1.0p-110f;
    float base = (std::fabs(f) * scale_to_inf) * scale_to_zero;
    const uint32_t w = fp32_to_bits(f);
    const uint32_t shl1_w = w + w;
    const uint32_t sign = w & UINT32_C(0x80000000);
    uint32_t bias = shl1_w & UINT32_C(0xFF000000);
    if (bias < UINT32_C(0x71000000)) bias = UINT32_C(0x71000000);
    base = fp32_from_bits((bias >> 1) + UINT32_C(0x07800000)) + base;
    const uint32_t bits = fp32_to_bits(base);
    const uint32_t exp_bits = (bits >> 13) & UINT32_C(0x00007C00);
    const uint32_t mantissa_bits = bits & UINT32_C(0x00000FFF);
    const uint32_t nonsign = exp_bits + mantissa_bits;
    return static_cast<uint16_t>((sign >> 16) |
                                 (shl1_w > UINT32_C(0xFF000000) ? UINT32_C(0x7E00) : nonsign));
}

inline float load_fp16(const uint8_t* p) {
    uint16_t h;
    std::memcpy(&h, p, sizeof h);
    return fp16_to_fp32_ref(h);
}

extern const float kNf4Codebook[16];

// ---- row codecs: one implementation per path ---------------------------------------------
// n is a positive multiple of the block; buffers are large enough (checked by the caller).

struct RowCodec {
    void (*quantize)(caramba_format format, const float* x, int64_t n, uint8_t* dst);
    void (*dequantize)(caramba_format format, const uint8_t* src, int64_t n, float* y);
};

const RowCodec& scalar_codec();
// The codec and kernels a path runs: nullptr where the build or the CPU lacks that variant.
// CARAMBA_PATH_AUTO and CARAMBA_PATH_SIMD give the best one available.
const RowCodec* path_codec(caramba_path path);

// ---- decode-attention inner kernels: one implementation per path -------------------------
// Rows are `row_stride` bytes apart; t < n_rows <= kTileRows; g < ng (heads sharing a KV head).
//   score: s[g*s_stride + t] (+)= scale * dot(q + g*q_stride, row_t)     (dim elements); a
//          kernel may also write entries n_rows .. kTileRows - 1 (s_stride >= kTileRows)
//   value: acc[g*acc_stride + i] += sum_t p[g*p_stride + t] * row_t[i]   (i < dim)

constexpr int kTileRows = 32;

// The SIMD softmaxes' exp(x), x <= 0: 2^n 2^f with n = round(x log2 e) and 2^f, |f| <= 1/2, by
// this degree-6 Taylor polynomial in f (Horner order, highest degree first); below x = kExpMin
// the result is 0. Relative error <= 1.1e-6 for x >= -17, absolute <= 1.7e-7 over [-87, 0].
constexpr float kExpMin = -87.33654f;
constexpr float kLog2e = 1.44269504088896341f;
constexpr float kExp2Taylor[7] = {1.5403530393381606e-4f, 1.3333558146428443e-3f, 9.618129107628477e-3f,
                                  5.550410866482158e-2f,  0.2402265069591007f,    0.6931471805599453f,
                                  1.0f};

// softmax: online-softmax step over one tile of scores, per head g < ng: with the tile max
//   m_new = max(m[g], max_t s[g][t]), s[g][t] <- exp(s[g][t] - m_new) for t < n (entries
//   n .. kTileRows-1 may be overwritten), l[g] <- l[g] * alpha + sum_t s[g][t], m[g] <- m_new,
//   alpha[g] = exp(m_old - m_new) (0 when m_old = -inf).
struct AttentionKernels {
    void (*score)(caramba_format format, const uint8_t* rows, int64_t row_stride, int n_rows,
                  const float* q, int64_t q_stride, int ng, int64_t dim, float scale, float* s,
                  int64_t s_stride, bool accumulate);
    void (*value)(caramba_format format, const uint8_t* rows, int64_t row_stride, int n_rows,
                  const float* p, int64_t p_stride, int ng, int64_t dim, float* acc,
                  int64_t acc_stride);
    void (*softmax)(float* s, int64_t s_stride, int n, int ng, float* m, float* l, float* alpha);
    // Token-layout scores from a tile of dequantized rows. A row holds row_elems =
    // (nh / group) * dim floats; rows are row_pad = round_up(row_elems, 8) floats apart and
    // round_up(n_rows, 8) of them are present, zeros past n_rows rows and past row_elems.
    // For every query head h < nh (reading KV head h / group) and t < n_rows:
    //   s[h*s_stride + t] (+)= scale * dot(q + h*q_stride, rows + t*row_pad + (h / group)*dim)
    // scratch: at least row_pad * kTileRows floats, 64-byte aligned.
    void (*token_score)(const float* rows, int64_t row_pad, int n_rows, const float* q,
                        int64_t q_stride, int nh, int group, int64_t dim, float scale, float* s,
                        int64_t s_stride, bool accumulate, float* scratch);
    // The same scores from n_rows quantized rows (row_stride bytes apart, each (nh / group) *
    // dim values in `format`), without the dequantized tile; scratch: (nh / group) * dim *
    // kTileRows floats, 64-byte aligned (used only for groups of more than 8 heads). Returns
    // false (having done nothing) for a format it does not read or rows too far apart for its
    // 32-bit offsets; nullptr where no ISA variant has one.
    bool (*token_score_quant)(caramba_format format, const uint8_t* rows, int64_t row_stride,
                              int n_rows, const float* q, int64_t q_stride, int nh, int group,
                              int64_t dim, float scale, float* s, int64_t s_stride, bool accumulate,
                              float* scratch);
};

// The scalar token-layout score (plain loops over the row-major tile), shared by scalar/NEON.
void token_score_scalar(const float* rows, int64_t row_pad, int n_rows, const float* q,
                        int64_t q_stride, int nh, int group, int64_t dim, float scale, float* s,
                        int64_t s_stride, bool accumulate, float* scratch);

// The scalar softmax step (std::exp), shared by the scalar and NEON tables.
void softmax_tile_scalar(float* s, int64_t s_stride, int n, int ng, float* m, float* l, float* alpha);

const AttentionKernels& scalar_attention_kernels();
const AttentionKernels* path_attention_kernels(caramba_path path);

// Compiled-in SIMD variants report whether the running CPU supports them.
bool simd_cpu_supported();
const char* simd_isa_name();
const char* path_name(int path);  // nullptr for an unknown value

}  // namespace caramba::detail

namespace caramba::detail {

// One block of a quantized format (block_elems values), or one element of f32/f16.
void dequantize_block_scalar(caramba_format format, const uint8_t* blk, float* y);

// Per-ISA tables; each returns nullptr when its file was compiled for another target.
const RowCodec* avx2_codec();
const RowCodec* avx512_codec();  // AVX2 quantizer, AVX-512 dequantizer
const RowCodec* neon_codec();
const AttentionKernels* avx2_attention_kernels();
// The token path's tile transpose (AVX2, also used by the AVX-512 kernels):
// kt[j*kTileRows + t] = rows[t*row_pad + j] for t < 8*nv, j < row_pad (row_pad % 8 == 0).
void transpose_tile_avx2(const float* rows, int64_t row_pad, int nv, float* kt);
const AttentionKernels* avx512_attention_kernels();
bool avx512_cpu_supported();
const AttentionKernels* neon_attention_kernels();
bool avx2_cpu_supported();
// An AMD processor (its gathers cost more than Intel's: attention_avx512.cpp, columns_win).
bool amd_cpu();

}  // namespace caramba::detail
