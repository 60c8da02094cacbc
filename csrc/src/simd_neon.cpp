// NEON (AArch64) variants. Blocks are decoded to a small stack buffer (exact, shared with the
// scalar reference), and the arithmetic runs in float32x4 FMAs. Quantization reuses the
// scalar reference so bytes stay identical. On other targets this file compiles to stubs.

#include "internal.h"

#if !defined(CARAMBA_KERNELS_NO_SIMD) && defined(__ARM_NEON) && defined(__aarch64__)

#include <arm_neon.h>

#include <algorithm>

namespace caramba::detail {
namespace {

int64_t decode_chunk(caramba_format format, const uint8_t* row, int64_t i0, int64_t dim,
                     float* y) {
    switch (format) {
        case CARAMBA_FORMAT_F32: {
            const int64_t count = std::min<int64_t>(64, dim - i0);
            std::memcpy(y, row + 4 * i0, static_cast<size_t>(count) * 4);
            return count;
        }
        case CARAMBA_FORMAT_F16: {
            const int64_t count = std::min<int64_t>(64, dim - i0);
            int64_t j = 0;
            for (; j + 4 <= count; j += 4) {
                uint16x4_t h = vld1_u16(reinterpret_cast<const uint16_t*>(row + 2 * (i0 + j)));
                vst1q_f32(y + j, vcvt_f32_f16(vreinterpret_f16_u16(h)));
            }
            for (; j < count; ++j) y[j] = load_fp16(row + 2 * (i0 + j));
            return count;
        }
        default: {
            const int64_t be = caramba_format_block_elems(format);
            dequantize_block_scalar(format, row + (i0 / be) * caramba_format_block_bytes(format), y);
            return be;
        }
    }
}

float dot(const float* a, const float* b, int64_t n) {
    float32x4_t acc0 = vdupq_n_f32(0.0f), acc1 = vdupq_n_f32(0.0f);
    int64_t j = 0;
    for (; j + 8 <= n; j += 8) {
        acc0 = vfmaq_f32(acc0, vld1q_f32(a + j), vld1q_f32(b + j));
        acc1 = vfmaq_f32(acc1, vld1q_f32(a + j + 4), vld1q_f32(b + j + 4));
    }
    float s = vaddvq_f32(vaddq_f32(acc0, acc1));
    for (; j < n; ++j) s += a[j] * b[j];
    return s;
}

void axpy(float alpha, const float* x, float* y, int64_t n) {
    const float32x4_t va = vdupq_n_f32(alpha);
    int64_t j = 0;
    for (; j + 4 <= n; j += 4) vst1q_f32(y + j, vfmaq_f32(vld1q_f32(y + j), va, vld1q_f32(x + j)));
    for (; j < n; ++j) y[j] += alpha * x[j];
}

void score(caramba_format format, const uint8_t* rows, int64_t row_stride, int n_rows,
           const float* q, int64_t q_stride, int ng, int64_t dim, float scale, float* s,
           int64_t s_stride, bool accumulate) {
    alignas(16) float buf[64];
    for (int t = 0; t < n_rows; ++t) {
        const uint8_t* row = rows + t * row_stride;
        for (int g = 0; g < ng; ++g) {
            if (!accumulate) s[g * s_stride + t] = 0.0f;
        }
        for (int64_t i = 0; i < dim;) {
            const int64_t count = decode_chunk(format, row, i, dim, buf);
            for (int g = 0; g < ng; ++g) {
                s[g * s_stride + t] += scale * dot(q + g * q_stride + i, buf, count);
            }
            i += count;
        }
    }
}

void value(caramba_format format, const uint8_t* rows, int64_t row_stride, int n_rows,
           const float* p, int64_t p_stride, int ng, int64_t dim, float* acc,
           int64_t acc_stride) {
    alignas(16) float buf[64];
    for (int t = 0; t < n_rows; ++t) {
        const uint8_t* row = rows + t * row_stride;
        for (int64_t i = 0; i < dim;) {
            const int64_t count = decode_chunk(format, row, i, dim, buf);
            for (int g = 0; g < ng; ++g) axpy(p[g * p_stride + t], buf, acc + g * acc_stride + i, count);
            i += count;
        }
    }
}

void dequantize(caramba_format format, const uint8_t* src, int64_t n, float* y) {
    for (int64_t i = 0; i < n;) i += decode_chunk(format, src, i, n, y + i);
}

}  // namespace

const RowCodec* neon_codec() {
    static const RowCodec codec{scalar_codec().quantize, dequantize};
    return &codec;
}

const AttentionKernels* neon_attention_kernels() {
    static const AttentionKernels kernels{score, value, softmax_tile_scalar, token_score_scalar, nullptr};
    return &kernels;
}

}  // namespace caramba::detail

#else  // not an AArch64 NEON build

namespace caramba::detail {
const RowCodec* neon_codec() { return nullptr; }
const AttentionKernels* neon_attention_kernels() { return nullptr; }
}  // namespace caramba::detail

#endif
