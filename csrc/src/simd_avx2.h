// AVX2 helpers shared by the AVX2 sources: per-format "strip" loaders (8 values -> one __m256).
// Only included by files compiled with -mavx2 -mfma -mf16c.
#pragma once

#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "internal.h"

namespace caramba::detail::avx2 {

inline float hsum(__m256 v) {
    __m128 lo = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    __m128 sh = _mm_movehdup_ps(lo);
    __m128 s = _mm_add_ps(lo, sh);
    sh = _mm_movehl_ps(sh, s);
    return _mm_cvtss_f32(_mm_add_ss(s, sh));
}

// fp16 -> fp32 through vmovd: _cvtsh_ss compiles to vpinsrw, which merges into (and so waits
// for) whatever last wrote its register, chaining the blocks of a row together.
inline float block_scale(const uint8_t* blk) {
    uint16_t h;
    std::memcpy(&h, blk, sizeof h);
    return _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(h)));
}

inline __m128i load8_bytes(const uint8_t* p) {
    return _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p));
}

// Quantized formats: a block of kElems values in kBytes bytes, read as kStrips strips of 8.
// strip<S>(blk) returns the unscaled values of strip S (multiply by block_scale(blk)).
struct Q8 {
    static constexpr int kElems = CARAMBA_QK8_0, kBytes = 34, kStrips = 4;
    static constexpr bool kNibbles = false;
    static __m256 strip(const uint8_t* blk, int s) {
        return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(load8_bytes(blk + 2 + 8 * s)));
    }
};

// The low or high 4-bit codes of the widened bytes w (0..255); a high nibble is w >> 4 whole,
// with no mask.
inline __m256i nibbles(__m256i w, bool high) {
    return high ? _mm256_srli_epi32(w, 4) : _mm256_and_si256(w, _mm256_set1_epi32(0x0F));
}

// Strip order for kernels that decode a few strips at a time: a nibble format's strips s and
// s + kStrips/2 read the same bytes, so taking them together loads and widens those once.
template <class F>
constexpr int paired_strip(int i) {
    return F::kNibbles ? i / 2 + (i % 2) * (F::kStrips / 2) : i;
}

struct Q4 {
    static constexpr int kElems = CARAMBA_QK4_0, kBytes = 18, kStrips = 4;
    static constexpr bool kNibbles = true;
    // strips 0,1: low nibbles of bytes 0-7, 8-15; strips 2,3: high nibbles of the same bytes.
    static __m256 strip(const uint8_t* blk, int s) {
        const __m256i w = _mm256_cvtepu8_epi32(load8_bytes(blk + 2 + 8 * (s & 1)));
        return _mm256_cvtepi32_ps(_mm256_sub_epi32(nibbles(w, s >= 2), _mm256_set1_epi32(8)));
    }
};

struct NF4 {
    static constexpr int kElems = CARAMBA_QKNF4, kBytes = 34, kStrips = 8;
    static constexpr bool kNibbles = true;
    static __m256 lookup(__m256i idx) {
        const __m256 lo = _mm256_loadu_ps(kNf4Codebook);
        const __m256 hi = _mm256_loadu_ps(kNf4Codebook + 8);
        // Index bit 3 picks the table half: moved to the sign bit for blendv.
        const __m256 sel = _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28));
        return _mm256_blendv_ps(_mm256_permutevar8x32_ps(lo, idx),
                                _mm256_permutevar8x32_ps(hi, idx), sel);
    }
    // strips 0-3: low nibbles of bytes 0-31; strips 4-7: high nibbles.
    static __m256 strip(const uint8_t* blk, int s) {
        const __m256i w = _mm256_cvtepu8_epi32(load8_bytes(blk + 2 + 8 * (s & 3)));
        return lookup(nibbles(w, s >= 4));
    }
};

// Plain formats: element i of a row.
struct F32 {
    static __m256 load8(const uint8_t* row, int64_t i) {
        return _mm256_loadu_ps(reinterpret_cast<const float*>(row) + i);
    }
    static float load1(const uint8_t* row, int64_t i) {
        float f;
        std::memcpy(&f, row + 4 * i, sizeof f);
        return f;
    }
};

struct F16 {
    static __m256 load8(const uint8_t* row, int64_t i) {
        return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + 2 * i)));
    }
    static float load1(const uint8_t* row, int64_t i) { return block_scale(row + 2 * i); }
};

}  // namespace caramba::detail::avx2
