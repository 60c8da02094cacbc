// Scalar reference for the decode-attention inner kernels: decode a block, then plain loops.

#include <algorithm>
#include <cmath>

#include "internal.h"

namespace caramba::detail {
namespace {

// Decodes elements [i0, i0 + count) of a row into y, count = the block size (quantized) or up
// to 64 elements (f32/f16). Returns count.
int64_t decode_chunk(caramba_format format, const uint8_t* row, int64_t i0, int64_t dim,
                     float* y) {
    switch (format) {
        case CARAMBA_FORMAT_F32:
        case CARAMBA_FORMAT_F16: {
            const int64_t count = std::min<int64_t>(64, dim - i0);
            const int64_t esize = format == CARAMBA_FORMAT_F32 ? 4 : 2;
            for (int64_t j = 0; j < count; ++j) {
                dequantize_block_scalar(format, row + (i0 + j) * esize, y + j);
            }
            return count;
        }
        default: {
            const int64_t be = caramba_format_block_elems(format);
            dequantize_block_scalar(format, row + (i0 / be) * caramba_format_block_bytes(format),
                                    y);
            return be;
        }
    }
}

void score(caramba_format format, const uint8_t* rows, int64_t row_stride, int n_rows,
           const float* q, int64_t q_stride, int ng, int64_t dim, float scale, float* s,
           int64_t s_stride, bool accumulate) {
    float buf[64];
    for (int t = 0; t < n_rows; ++t) {
        const uint8_t* row = rows + t * row_stride;
        for (int g = 0; g < ng; ++g) s[g * s_stride + t] = accumulate ? s[g * s_stride + t] : 0.0f;
        // Dot products accumulate in float, one chunk at a time, scaled at the end.
        float dot[64];
        for (int g0 = 0; g0 < ng; g0 += 64) {
            const int gn = std::min(64, ng - g0);
            for (int g = 0; g < gn; ++g) dot[g] = 0.0f;
            for (int64_t i = 0; i < dim;) {
                const int64_t count = decode_chunk(format, row, i, dim, buf);
                for (int g = 0; g < gn; ++g) {
                    const float* qg = q + (g0 + g) * q_stride + i;
                    float acc = dot[g];
                    for (int64_t j = 0; j < count; ++j) acc += qg[j] * buf[j];
                    dot[g] = acc;
                }
                i += count;
            }
            for (int g = 0; g < gn; ++g) s[(g0 + g) * s_stride + t] += scale * dot[g];
        }
    }
}

void value(caramba_format format, const uint8_t* rows, int64_t row_stride, int n_rows,
           const float* p, int64_t p_stride, int ng, int64_t dim, float* acc,
           int64_t acc_stride) {
    float buf[64];
    for (int t = 0; t < n_rows; ++t) {
        const uint8_t* row = rows + t * row_stride;
        for (int64_t i = 0; i < dim;) {
            const int64_t count = decode_chunk(format, row, i, dim, buf);
            for (int g = 0; g < ng; ++g) {
                const float pg = p[g * p_stride + t];
                float* a = acc + g * acc_stride + i;
                for (int64_t j = 0; j < count; ++j) a[j] += pg * buf[j];
            }
            i += count;
        }
    }
}

}  // namespace

void softmax_tile_scalar(float* s, int64_t s_stride, int n, int ng, float* m, float* l, float* alpha) {
    for (int g = 0; g < ng; ++g) {
        float* row = s + g * s_stride;
        float tile_max = row[0];
        for (int t = 1; t < n; ++t) tile_max = std::max(tile_max, row[t]);
        const float m_new = std::max(m[g], tile_max);
        float sum = 0.0f;
        for (int t = 0; t < n; ++t) {
            row[t] = std::exp(row[t] - m_new);
            sum += row[t];
        }
        alpha[g] = std::exp(m[g] - m_new);
        l[g] = l[g] * alpha[g] + sum;
        m[g] = m_new;
    }
}

void token_score_scalar(const float* rows, int64_t row_pad, int n_rows, const float* q,
                        int64_t q_stride, int nh, int group, int64_t dim, float scale, float* s,
                        int64_t s_stride, bool accumulate, float* /*scratch*/) {
    for (int h = 0; h < nh; ++h) {
        const float* qh = q + h * q_stride;
        const int64_t col = (h / group) * dim;
        for (int t = 0; t < n_rows; ++t) {
            const float* k = rows + t * row_pad + col;
            float dot = 0.0f;
            for (int64_t i = 0; i < dim; ++i) dot += qh[i] * k[i];
            float* dst = s + h * s_stride + t;
            *dst = accumulate ? *dst + scale * dot : scale * dot;
        }
    }
}

const AttentionKernels& scalar_attention_kernels() {
    static const AttentionKernels kernels{score, value, softmax_tile_scalar, token_score_scalar, nullptr};
    return kernels;
}

}  // namespace caramba::detail
