// Scalar reference (de)quantization: the definition every other path must match bit for bit.
// q8_0 and q4_0 transcribe quantize_row_q8_0_ref / quantize_row_q4_0_ref from ggml-quants.c.

#include <cmath>
#include <cstring>

#include "internal.h"

namespace caramba::detail {

const float kNf4Codebook[16] = {
    -1.0f,
    -0.6961928009986877f,
    -0.5250730514526367f,
    -0.39491748809814453f,
    -0.28444138169288635f,
    -0.18477343022823334f,
    -0.09105003625154495f,
    0.0f,
    0.07958029955625534f,
    0.16093020141124725f,
    0.24611230194568634f,
    0.33791524171829224f,
    0.44070982933044434f,
    0.5626170039176941f,
    0.7229568362236023f,
    1.0f,
};

namespace {

void quantize_q8_0(const float* x, int64_t n, caramba_block_q8_0* y) {
    for (int64_t i = 0; i < n / CARAMBA_QK8_0; ++i) {
        const float* xb = x + i * CARAMBA_QK8_0;
        float amax = 0.0f;
        for (int j = 0; j < CARAMBA_QK8_0; ++j) {
            const float a = std::fabs(xb[j]);
            amax = amax > a ? amax : a;
        }
        const float d = amax / ((1 << 7) - 1);
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        y[i].d = fp32_to_fp16_ref(d);
        for (int j = 0; j < CARAMBA_QK8_0; ++j) {
            y[i].qs[j] = static_cast<int8_t>(std::roundf(xb[j] * id));
        }
    }
}

void quantize_q4_0(const float* x, int64_t n, caramba_block_q4_0* y) {
    constexpr int half = CARAMBA_QK4_0 / 2;
    for (int64_t i = 0; i < n / CARAMBA_QK4_0; ++i) {
        const float* xb = x + i * CARAMBA_QK4_0;
        float amax = 0.0f;  // absolute max
        float max = 0.0f;   // the signed value that has it (first one on ties)
        for (int j = 0; j < CARAMBA_QK4_0; ++j) {
            if (amax < std::fabs(xb[j])) {
                amax = std::fabs(xb[j]);
                max = xb[j];
            }
        }
        const float d = max / -8;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        y[i].d = fp32_to_fp16_ref(d);
        for (int j = 0; j < half; ++j) {
            const float x0 = xb[j] * id;
            const float x1 = xb[half + j] * id;
            const int q0 = static_cast<int8_t>(x0 + 8.5f);
            const int q1 = static_cast<int8_t>(x1 + 8.5f);
            const uint8_t xi0 = static_cast<uint8_t>(q0 < 15 ? q0 : 15);
            const uint8_t xi1 = static_cast<uint8_t>(q1 < 15 ? q1 : 15);
            y[i].qs[j] = static_cast<uint8_t>(xi0 | (xi1 << 4));
        }
    }
}

// Nearest codebook entry; strict '<' keeps the first (lower, more negative) entry on a tie.
inline uint8_t nf4_code(float xn) {
    uint8_t best = 0;
    float best_dist = std::fabs(xn - kNf4Codebook[0]);
    for (uint8_t c = 1; c < 16; ++c) {
        const float dist = std::fabs(xn - kNf4Codebook[c]);
        if (dist < best_dist) {
            best_dist = dist;
            best = c;
        }
    }
    return best;
}

void quantize_nf4(const float* x, int64_t n, caramba_block_nf4* y) {
    constexpr int half = CARAMBA_QKNF4 / 2;
    for (int64_t i = 0; i < n / CARAMBA_QKNF4; ++i) {
        const float* xb = x + i * CARAMBA_QKNF4;
        float amax = 0.0f;
        for (int j = 0; j < CARAMBA_QKNF4; ++j) {
            const float a = std::fabs(xb[j]);
            amax = amax > a ? amax : a;
        }
        y[i].d = fp32_to_fp16_ref(amax);
        for (int j = 0; j < half; ++j) {
            const uint8_t lo = amax != 0.0f ? nf4_code(xb[j] / amax) : 7;
            const uint8_t hi = amax != 0.0f ? nf4_code(xb[half + j] / amax) : 7;
            y[i].qs[j] = static_cast<uint8_t>(lo | (hi << 4));
        }
    }
}

void quantize(caramba_format format, const float* x, int64_t n, uint8_t* dst) {
    switch (format) {
        case CARAMBA_FORMAT_F32:
            std::memcpy(dst, x, static_cast<size_t>(n) * sizeof(float));
            break;
        case CARAMBA_FORMAT_F16:
            for (int64_t i = 0; i < n; ++i) {
                const uint16_t h = fp32_to_fp16_ref(x[i]);
                std::memcpy(dst + 2 * i, &h, 2);
            }
            break;
        case CARAMBA_FORMAT_Q8_0: {
            // Blocks are byte arrays from the caller: encode through an aligned temporary.
            for (int64_t i = 0; i < n / CARAMBA_QK8_0; ++i) {
                caramba_block_q8_0 b;
                quantize_q8_0(x + i * CARAMBA_QK8_0, CARAMBA_QK8_0, &b);
                std::memcpy(dst + i * sizeof b, &b, sizeof b);
            }
            break;
        }
        case CARAMBA_FORMAT_Q4_0:
            for (int64_t i = 0; i < n / CARAMBA_QK4_0; ++i) {
                caramba_block_q4_0 b;
                quantize_q4_0(x + i * CARAMBA_QK4_0, CARAMBA_QK4_0, &b);
                std::memcpy(dst + i * sizeof b, &b, sizeof b);
            }
            break;
        case CARAMBA_FORMAT_NF4:
            for (int64_t i = 0; i < n / CARAMBA_QKNF4; ++i) {
                caramba_block_nf4 b;
                quantize_nf4(x + i * CARAMBA_QKNF4, CARAMBA_QKNF4, &b);
                std::memcpy(dst + i * sizeof b, &b, sizeof b);
            }
            break;
    }
}

}  // namespace

// Decodes one block of `format` (block_elems values) into y. Shared by the scalar kernels.
void dequantize_block_scalar(caramba_format format, const uint8_t* blk, float* y) {
    switch (format) {
        case CARAMBA_FORMAT_F32:
            std::memcpy(y, blk, sizeof(float));
            break;
        case CARAMBA_FORMAT_F16:
            y[0] = load_fp16(blk);
            break;
        case CARAMBA_FORMAT_Q8_0: {
            const float d = load_fp16(blk);
            const int8_t* qs = reinterpret_cast<const int8_t*>(blk + 2);
            for (int j = 0; j < CARAMBA_QK8_0; ++j) y[j] = qs[j] * d;
            break;
        }
        case CARAMBA_FORMAT_Q4_0: {
            const float d = load_fp16(blk);
            const uint8_t* qs = blk + 2;
            for (int j = 0; j < CARAMBA_QK4_0 / 2; ++j) {
                y[j] = ((qs[j] & 0x0F) - 8) * d;
                y[j + CARAMBA_QK4_0 / 2] = ((qs[j] >> 4) - 8) * d;
            }
            break;
        }
        case CARAMBA_FORMAT_NF4: {
            const float d = load_fp16(blk);
            const uint8_t* qs = blk + 2;
            for (int j = 0; j < CARAMBA_QKNF4 / 2; ++j) {
                y[j] = kNf4Codebook[qs[j] & 0x0F] * d;
                y[j + CARAMBA_QKNF4 / 2] = kNf4Codebook[qs[j] >> 4] * d;
            }
            break;
        }
    }
}

namespace {

void dequantize(caramba_format format, const uint8_t* src, int64_t n, float* y) {
    switch (format) {
        case CARAMBA_FORMAT_F32:
            std::memcpy(y, src, static_cast<size_t>(n) * sizeof(float));
            return;
        case CARAMBA_FORMAT_F16:
            for (int64_t i = 0; i < n; ++i) y[i] = load_fp16(src + 2 * i);
            return;
        default: {
            const int64_t be = caramba_format_block_elems(format);
            const int64_t bb = caramba_format_block_bytes(format);
            for (int64_t i = 0; i < n / be; ++i) {
                dequantize_block_scalar(format, src + i * bb, y + i * be);
            }
        }
    }
}

}  // namespace

const RowCodec& scalar_codec() {
    static const RowCodec codec{quantize, dequantize};
    return codec;
}

}  // namespace caramba::detail
