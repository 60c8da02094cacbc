// AVX2+FMA+F16C row (de)quantization. Must produce the scalar reference's bytes exactly:
// scales are computed with the same scalar float operations, roundf is emulated exactly, and
// x * id is a plain multiply (no FMA contraction).

#include "internal.h"

#if !defined(CARAMBA_KERNELS_NO_SIMD) && defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)

#include "simd_avx2.h"

namespace caramba::detail {
namespace {

using namespace avx2;

inline __m256 abs_ps(__m256 x) { return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), x); }

inline float hmax(__m256 v) {
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_movehdup_ps(m));
    return _mm_cvtss_f32(m);
}

// roundf (half away from zero), exactly: floor(a) + floor(2 * (a - floor(a))), sign restored.
inline __m256i roundf_epi32(__m256 v) {
    const __m256 sign = _mm256_and_ps(v, _mm256_set1_ps(-0.0f));
    const __m256 a = abs_ps(v);
    const __m256 fl = _mm256_floor_ps(a);
    const __m256 r = _mm256_add_ps(
        fl, _mm256_floor_ps(_mm256_mul_ps(_mm256_sub_ps(a, fl), _mm256_set1_ps(2.0f))));
    return _mm256_cvttps_epi32(_mm256_or_ps(r, sign));
}

void store_fp16(uint8_t* dst, float x) {
    const uint16_t h = fp32_to_fp16_ref(x);
    std::memcpy(dst, &h, 2);
}

void quantize_q8_0(const float* x, int64_t n, uint8_t* dst) {
    for (int64_t i = 0; i < n / CARAMBA_QK8_0; ++i) {
        const float* xb = x + i * CARAMBA_QK8_0;
        uint8_t* yb = dst + i * Q8::kBytes;
        __m256 v[4];
        __m256 m = _mm256_setzero_ps();
        for (int k = 0; k < 4; ++k) {
            v[k] = _mm256_loadu_ps(xb + 8 * k);
            m = _mm256_max_ps(m, abs_ps(v[k]));
        }
        const float amax = hmax(m);
        const float d = amax / ((1 << 7) - 1);
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        store_fp16(yb, d);
        const __m256 vid = _mm256_set1_ps(id);
        __m256i q[4];
        for (int k = 0; k < 4; ++k) q[k] = roundf_epi32(_mm256_mul_ps(v[k], vid));
        // int32 -> int8 with the lane fix-up ggml uses.
        __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
        p = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(yb + 2), p);
    }
}

void quantize_q4_0(const float* x, int64_t n, uint8_t* dst) {
    for (int64_t i = 0; i < n / CARAMBA_QK4_0; ++i) {
        const float* xb = x + i * CARAMBA_QK4_0;
        uint8_t* yb = dst + i * Q4::kBytes;
        float amax = 0.0f, max = 0.0f;  // first element of largest |x|, as the reference
        for (int j = 0; j < CARAMBA_QK4_0; ++j) {
            if (amax < std::fabs(xb[j])) {
                amax = std::fabs(xb[j]);
                max = xb[j];
            }
        }
        const float d = max / -8;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        store_fp16(yb, d);
        const __m256 vid = _mm256_set1_ps(id);
        alignas(32) int32_t q[CARAMBA_QK4_0];
        for (int k = 0; k < 4; ++k) {
            const __m256 t = _mm256_add_ps(_mm256_mul_ps(_mm256_loadu_ps(xb + 8 * k), vid),
                                           _mm256_set1_ps(8.5f));
            const __m256i qi = _mm256_min_epi32(_mm256_cvttps_epi32(t), _mm256_set1_epi32(15));
            _mm256_store_si256(reinterpret_cast<__m256i*>(q + 8 * k), qi);
        }
        for (int j = 0; j < CARAMBA_QK4_0 / 2; ++j) {
            yb[2 + j] = static_cast<uint8_t>(q[j] | (q[j + CARAMBA_QK4_0 / 2] << 4));
        }
    }
}

void quantize_nf4(const float* x, int64_t n, uint8_t* dst) {
    for (int64_t i = 0; i < n / CARAMBA_QKNF4; ++i) {
        const float* xb = x + i * CARAMBA_QKNF4;
        uint8_t* yb = dst + i * NF4::kBytes;
        __m256 m = _mm256_setzero_ps();
        for (int k = 0; k < 8; ++k) m = _mm256_max_ps(m, abs_ps(_mm256_loadu_ps(xb + 8 * k)));
        const float amax = hmax(m);
        store_fp16(yb, amax);
        if (amax == 0.0f) {
            std::memset(yb + 2, 0x77, CARAMBA_QKNF4 / 2);
            continue;
        }
        const __m256 vabs = _mm256_set1_ps(amax);
        alignas(32) int32_t q[CARAMBA_QKNF4];
        for (int k = 0; k < 8; ++k) {
            const __m256 xn = _mm256_div_ps(_mm256_loadu_ps(xb + 8 * k), vabs);
            __m256i best = _mm256_setzero_si256();
            __m256 best_dist = abs_ps(_mm256_sub_ps(xn, _mm256_set1_ps(kNf4Codebook[0])));
            for (int c = 1; c < 16; ++c) {
                const __m256 dist = abs_ps(_mm256_sub_ps(xn, _mm256_set1_ps(kNf4Codebook[c])));
                const __m256 closer = _mm256_cmp_ps(dist, best_dist, _CMP_LT_OQ);
                best_dist = _mm256_blendv_ps(best_dist, dist, closer);
                best = _mm256_blendv_epi8(best, _mm256_set1_epi32(c), _mm256_castps_si256(closer));
            }
            _mm256_store_si256(reinterpret_cast<__m256i*>(q + 8 * k), best);
        }
        for (int j = 0; j < CARAMBA_QKNF4 / 2; ++j) {
            yb[2 + j] = static_cast<uint8_t>(q[j] | (q[j + CARAMBA_QKNF4 / 2] << 4));
        }
    }
}

void quantize(caramba_format format, const float* x, int64_t n, uint8_t* dst) {
    switch (format) {
        case CARAMBA_FORMAT_F16: {
            int64_t i = 0;
            for (; i + 8 <= n; i += 8) {
                const __m128i h = _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT);
                _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + 2 * i), h);
            }
            for (; i < n; ++i) store_fp16(dst + 2 * i, x[i]);
            return;
        }
        case CARAMBA_FORMAT_Q8_0:
            return quantize_q8_0(x, n, dst);
        case CARAMBA_FORMAT_Q4_0:
            return quantize_q4_0(x, n, dst);
        case CARAMBA_FORMAT_NF4:
            return quantize_nf4(x, n, dst);
        default:
            return scalar_codec().quantize(format, x, n, dst);
    }
}

template <class F>
void dequantize_blocks(const uint8_t* src, int64_t n, float* y) {
    for (int64_t i = 0; i < n / F::kElems; ++i) {
        const uint8_t* blk = src + i * F::kBytes;
        const __m256 d = _mm256_set1_ps(block_scale(blk));
        for (int s = 0; s < F::kStrips; ++s) {
            _mm256_storeu_ps(y + i * F::kElems + 8 * s, _mm256_mul_ps(F::strip(blk, s), d));
        }
    }
}

void dequantize(caramba_format format, const uint8_t* src, int64_t n, float* y) {
    switch (format) {
        case CARAMBA_FORMAT_F16: {
            int64_t i = 0;
            for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, F16::load8(src, i));
            for (; i < n; ++i) y[i] = F16::load1(src, i);
            return;
        }
        case CARAMBA_FORMAT_Q8_0:
            return dequantize_blocks<Q8>(src, n, y);
        case CARAMBA_FORMAT_Q4_0:
            return dequantize_blocks<Q4>(src, n, y);
        case CARAMBA_FORMAT_NF4:
            return dequantize_blocks<NF4>(src, n, y);
        default:
            return scalar_codec().dequantize(format, src, n, y);
    }
}

}  // namespace

const RowCodec* avx2_codec() {
    static const RowCodec codec{quantize, dequantize};
    return &codec;
}

}  // namespace caramba::detail

#else  // not compiled for AVX2

namespace caramba::detail {
const RowCodec* avx2_codec() { return nullptr; }
}  // namespace caramba::detail

#endif
