// AVX-512 (F, BW, VL, DQ) decode-attention inner kernels: the AVX2 design with 16-lane strips.
//
// On CPUs with full-width 512-bit FMA units (AMD Zen 5, Intel server cores) decode over a GQA
// group is bound by multiply-adds, not memory, so twice the lanes is nearly twice the speed.
// The online-softmax step is the AVX2 one (a tile is only 32 scores wide).

#include "internal.h"

#if !defined(CARAMBA_KERNELS_NO_SIMD) && defined(__AVX512F__) && defined(__AVX512BW__) && \
    defined(__AVX512VL__) && defined(__AVX512DQ__) && defined(__FMA__) && defined(__F16C__)

#include <immintrin.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <utility>

namespace caramba::detail {
namespace {

// fp16 -> fp32 through vmovd: _cvtsh_ss compiles to vpinsrw, which merges into (and so waits
// for) whatever last wrote its register, chaining the blocks of a row together.
inline float block_scale(const uint8_t* blk) {
    uint16_t h;
    std::memcpy(&h, blk, sizeof h);
    return _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(h)));
}

inline __m128i load16_bytes(const uint8_t* p) {
    return _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
}

// Quantized formats, read as kStrips strips of 16 values (unscaled; times block_scale).
struct Q8 {
    static constexpr int kElems = CARAMBA_QK8_0, kBytes = 34, kStrips = 2;
    static __m512 strip(const uint8_t* blk, int s) {
        return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(load16_bytes(blk + 2 + 16 * s)));
    }
};

struct Q4 {  // strip 0: low nibbles (elements 0-15), strip 1: high nibbles (16-31)
    static constexpr int kElems = CARAMBA_QK4_0, kBytes = 18, kStrips = 2;
    static __m512 strip(const uint8_t* blk, int s) {
        __m512i w = _mm512_cvtepu8_epi32(load16_bytes(blk + 2));
        w = s == 0 ? _mm512_and_si512(w, _mm512_set1_epi32(0x0F)) : _mm512_srli_epi32(w, 4);
        return _mm512_cvtepi32_ps(_mm512_sub_epi32(w, _mm512_set1_epi32(8)));
    }
};

struct NF4 {  // strips 0,1: low nibbles of bytes 0-15, 16-31; strips 2,3: their high nibbles
    static constexpr int kElems = CARAMBA_QKNF4, kBytes = 34, kStrips = 4;
    static __m512 strip(const uint8_t* blk, int s) {
        __m512i w = _mm512_cvtepu8_epi32(load16_bytes(blk + 2 + 16 * (s & 1)));
        w = s < 2 ? _mm512_and_si512(w, _mm512_set1_epi32(0x0F)) : _mm512_srli_epi32(w, 4);
        return _mm512_permutexvar_ps(w, _mm512_loadu_ps(kNf4Codebook));
    }
};

struct F32 {
    static __m512 load16(const uint8_t* row, int64_t i) {
        return _mm512_loadu_ps(reinterpret_cast<const float*>(row) + i);
    }
    static float load1(const uint8_t* row, int64_t i) {
        float f;
        std::memcpy(&f, row + 4 * i, sizeof f);
        return f;
    }
};

struct F16 {
    static __m512 load16(const uint8_t* row, int64_t i) {
        return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + 2 * i)));
    }
    static float load1(const uint8_t* row, int64_t i) { return block_scale(row + 2 * i); }
};

// Horizontal sums of 8 vectors: lane i of the result sums v[i] (via 256-bit halves).
inline __m256 hsum8(const __m512* v) {
    __m256 h[8];
    for (int i = 0; i < 8; ++i) {
        h[i] = _mm256_add_ps(_mm512_castps512_ps256(v[i]), _mm512_extractf32x8_ps(v[i], 1));
    }
    const __m256 h01 = _mm256_hadd_ps(h[0], h[1]);
    const __m256 h23 = _mm256_hadd_ps(h[2], h[3]);
    const __m256 h45 = _mm256_hadd_ps(h[4], h[5]);
    const __m256 h67 = _mm256_hadd_ps(h[6], h[7]);
    const __m256 h0123 = _mm256_hadd_ps(h01, h23);
    const __m256 h4567 = _mm256_hadd_ps(h45, h67);
    return _mm256_add_ps(_mm256_permute2f128_ps(h0123, h4567, 0x20),
                         _mm256_permute2f128_ps(h0123, h4567, 0x31));
}

template <int NG>
struct RowSums {
    __m512 v[NG][8];

    void put(int g, int t, __m512 x) { v[g][t & 7] = x; }

    void flush(int t0, int count, float scale, float* s, int64_t s_stride, bool accumulate) {
        for (int g = 0; g < NG; ++g) {
            for (int i = count; i < 8; ++i) v[g][i] = _mm512_setzero_ps();
            alignas(32) float out[8];
            _mm256_store_ps(out, _mm256_mul_ps(hsum8(v[g]), _mm256_set1_ps(scale)));
            float* dst = s + g * s_stride + t0;
            for (int i = 0; i < count; ++i) dst[i] = accumulate ? dst[i] + out[i] : out[i];
        }
    }
};

// Independent accumulators per head in the score kernel (32 registers allow more than AVX2).
template <int NG>
constexpr int score_chains() {
    return NG == 1 ? 4 : (NG <= 4 ? 2 : 1);
}

template <class F, int NG>
void score_quant(const uint8_t* rows, int64_t row_stride, int n_rows, const float* q,
                 int64_t q_stride, int64_t dim, float scale, float* s, int64_t s_stride,
                 bool accumulate) {
    constexpr int NA = score_chains<NG>();
    const int64_t nb = dim / F::kElems;
    RowSums<NG> sums;
    for (int t = 0; t < n_rows; ++t) {
        const uint8_t* row = rows + t * row_stride;
        __m512 acc[NG][NA];
        for (int g = 0; g < NG; ++g)
            for (int a = 0; a < NA; ++a) acc[g][a] = _mm512_setzero_ps();
        // BPI blocks per iteration so that every chain gets a strip (chain indices stay
        // compile-time constants, and the accumulators stay in registers).
        constexpr int BPI = NA > F::kStrips ? NA / F::kStrips : 1;
        int64_t b = 0;
        for (; b + BPI <= nb; b += BPI) {
#pragma GCC unroll 4
            for (int bi = 0; bi < BPI; ++bi) {
                const uint8_t* blk = row + (b + bi) * F::kBytes;
                const __m512 d = _mm512_set1_ps(block_scale(blk));
                const float* qb = q + (b + bi) * F::kElems;
#pragma GCC unroll 4
                for (int st = 0; st < F::kStrips; ++st) {
                    const __m512 k = _mm512_mul_ps(F::strip(blk, st), d);
                    const int a = (bi * F::kStrips + st) % NA;
                    for (int g = 0; g < NG; ++g) {
                        acc[g][a] = _mm512_fmadd_ps(_mm512_loadu_ps(qb + g * q_stride + 16 * st), k, acc[g][a]);
                    }
                }
            }
        }
        for (; b < nb; ++b) {
            const uint8_t* blk = row + b * F::kBytes;
            const __m512 d = _mm512_set1_ps(block_scale(blk));
            const float* qb = q + b * F::kElems;
#pragma GCC unroll 4
            for (int st = 0; st < F::kStrips; ++st) {
                const __m512 k = _mm512_mul_ps(F::strip(blk, st), d);
                for (int g = 0; g < NG; ++g) {
                    acc[g][st % NA] = _mm512_fmadd_ps(_mm512_loadu_ps(qb + g * q_stride + 16 * st), k, acc[g][st % NA]);
                }
            }
        }
        for (int g = 0; g < NG; ++g) {
            __m512 sum = acc[g][0];
            for (int a = 1; a < NA; ++a) sum = _mm512_add_ps(sum, acc[g][a]);
            sums.put(g, t, sum);
        }
        if ((t & 7) == 7 || t == n_rows - 1) sums.flush(t & ~7, (t & 7) + 1, scale, s, s_stride, accumulate);
    }
}

template <class F, int NG>
void score_plain(const uint8_t* rows, int64_t row_stride, int n_rows, const float* q,
                 int64_t q_stride, int64_t dim, float scale, float* s, int64_t s_stride,
                 bool accumulate) {
    constexpr int NA = score_chains<NG>();
    RowSums<NG> sums;
    for (int t = 0; t < n_rows; ++t) {
        const uint8_t* row = rows + t * row_stride;
        __m512 acc[NG][NA];
        for (int g = 0; g < NG; ++g)
            for (int a = 0; a < NA; ++a) acc[g][a] = _mm512_setzero_ps();
        int64_t i = 0;
        for (; i + 16 * NA <= dim; i += 16 * NA) {
            for (int a = 0; a < NA; ++a) {
                const __m512 k = F::load16(row, i + 16 * a);
                for (int g = 0; g < NG; ++g) {
                    acc[g][a] = _mm512_fmadd_ps(_mm512_loadu_ps(q + g * q_stride + i + 16 * a), k, acc[g][a]);
                }
            }
        }
        for (; i + 16 <= dim; i += 16) {
            const __m512 k = F::load16(row, i);
            for (int g = 0; g < NG; ++g) {
                acc[g][0] = _mm512_fmadd_ps(_mm512_loadu_ps(q + g * q_stride + i), k, acc[g][0]);
            }
        }
        for (int g = 0; g < NG; ++g) {
            __m512 sum = acc[g][0];
            for (int a = 1; a < NA; ++a) sum = _mm512_add_ps(sum, acc[g][a]);
            if (i < dim) {  // the tail (dim not a multiple of 16) goes into lane 0
                float tail = 0.0f;
                for (int64_t j = i; j < dim; ++j) tail += q[g * q_stride + j] * F::load1(row, j);
                sum = _mm512_add_ps(sum, _mm512_castps128_ps512(_mm_set_ss(tail)));
            }
            sums.put(g, t, sum);
        }
        if ((t & 7) == 7 || t == n_rows - 1) sums.flush(t & ~7, (t & 7) + 1, scale, s, s_stride, accumulate);
    }
}

// Value kernel: NG * SP accumulators, and U independent copies over alternating rows when the
// head group is small (each copy is its own FMA chain), summed at the end.
template <int NG>
constexpr int value_unroll() {
    return NG == 1 ? 4 : (NG == 2 ? 2 : 1);
}

template <class F, int NG>
void value_quant(const uint8_t* rows, int64_t row_stride, int n_rows, const float* p,
                 int64_t p_stride, int64_t dim, float* acc, int64_t acc_stride) {
    constexpr int SP = F::kStrips <= 2 ? F::kStrips : (NG <= 4 ? 4 : 2);
    constexpr int U = value_unroll<NG>();
    const int64_t nb = dim / F::kElems;
    for (int64_t b = 0; b < nb; ++b) {
#pragma GCC unroll 4
        for (int st0 = 0; st0 < F::kStrips; st0 += SP) {
            const int64_t col = b * F::kElems + 16 * st0;
            __m512 a[U][NG][SP];
            for (int g = 0; g < NG; ++g)
                for (int j = 0; j < SP; ++j) {
                    a[0][g][j] = _mm512_loadu_ps(acc + g * acc_stride + col + 16 * j);
                    for (int u = 1; u < U; ++u) a[u][g][j] = _mm512_setzero_ps();
                }
            int t = 0;
            for (; t + U <= n_rows; t += U) {
                for (int u = 0; u < U; ++u) {
                    const uint8_t* blk = rows + (t + u) * row_stride + b * F::kBytes;
                    const __m512 d = _mm512_set1_ps(block_scale(blk));
                    for (int j = 0; j < SP; ++j) {
                        const __m512 v = _mm512_mul_ps(F::strip(blk, st0 + j), d);
                        for (int g = 0; g < NG; ++g) {
                            a[u][g][j] = _mm512_fmadd_ps(_mm512_set1_ps(p[g * p_stride + t + u]), v, a[u][g][j]);
                        }
                    }
                }
            }
            for (; t < n_rows; ++t) {
                const uint8_t* blk = rows + t * row_stride + b * F::kBytes;
                const __m512 d = _mm512_set1_ps(block_scale(blk));
                for (int j = 0; j < SP; ++j) {
                    const __m512 v = _mm512_mul_ps(F::strip(blk, st0 + j), d);
                    for (int g = 0; g < NG; ++g) {
                        a[0][g][j] = _mm512_fmadd_ps(_mm512_set1_ps(p[g * p_stride + t]), v, a[0][g][j]);
                    }
                }
            }
            for (int g = 0; g < NG; ++g)
                for (int j = 0; j < SP; ++j) {
                    __m512 sum = a[0][g][j];
                    for (int u = 1; u < U; ++u) sum = _mm512_add_ps(sum, a[u][g][j]);
                    _mm512_storeu_ps(acc + g * acc_stride + col + 16 * j, sum);
                }
        }
    }
}

template <class F, int NG>
void value_plain(const uint8_t* rows, int64_t row_stride, int n_rows, const float* p,
                 int64_t p_stride, int64_t dim, float* acc, int64_t acc_stride) {
    constexpr int SP = NG <= 2 ? 4 : 2;
    int64_t col = 0;
    for (; col + 16 * SP <= dim; col += 16 * SP) {
        __m512 a[NG][SP];
        for (int g = 0; g < NG; ++g)
            for (int j = 0; j < SP; ++j) a[g][j] = _mm512_loadu_ps(acc + g * acc_stride + col + 16 * j);
        for (int t = 0; t < n_rows; ++t) {
            const uint8_t* row = rows + t * row_stride;
            for (int j = 0; j < SP; ++j) {
                const __m512 v = F::load16(row, col + 16 * j);
                for (int g = 0; g < NG; ++g) {
                    a[g][j] = _mm512_fmadd_ps(_mm512_set1_ps(p[g * p_stride + t]), v, a[g][j]);
                }
            }
        }
        for (int g = 0; g < NG; ++g)
            for (int j = 0; j < SP; ++j) _mm512_storeu_ps(acc + g * acc_stride + col + 16 * j, a[g][j]);
    }
    for (; col + 16 <= dim; col += 16) {
        for (int g = 0; g < NG; ++g) {
            __m512 a = _mm512_loadu_ps(acc + g * acc_stride + col);
            for (int t = 0; t < n_rows; ++t) {
                a = _mm512_fmadd_ps(_mm512_set1_ps(p[g * p_stride + t]), F::load16(rows + t * row_stride, col), a);
            }
            _mm512_storeu_ps(acc + g * acc_stride + col, a);
        }
    }
    for (; col < dim; ++col) {
        for (int g = 0; g < NG; ++g) {
            float a = acc[g * acc_stride + col];
            for (int t = 0; t < n_rows; ++t) a += p[g * p_stride + t] * F::load1(rows + t * row_stride, col);
            acc[g * acc_stride + col] = a;
        }
    }
}

// ---- dispatch: format x head-group size ---------------------------------------------------

using ScoreFn = void (*)(const uint8_t*, int64_t, int, const float*, int64_t, int64_t, float,
                         float*, int64_t, bool);
using ValueFn = void (*)(const uint8_t*, int64_t, int, const float*, int64_t, int64_t, float*,
                         int64_t);
constexpr int kMaxGroup = 8;
using Seq = std::make_index_sequence<kMaxGroup>;

template <template <class, int> class K, class Fn, class F, size_t... I>
constexpr std::array<Fn, kMaxGroup> make_fns(std::index_sequence<I...>) {
    return {&K<F, int(I) + 1>::run...};
}

template <class F, int NG>
struct ScoreQ {
    static void run(const uint8_t* r, int64_t rs, int n, const float* q, int64_t qs, int64_t d,
                    float sc, float* s, int64_t ss, bool acc) {
        score_quant<F, NG>(r, rs, n, q, qs, d, sc, s, ss, acc);
    }
};
template <class F, int NG>
struct ScoreP {
    static void run(const uint8_t* r, int64_t rs, int n, const float* q, int64_t qs, int64_t d,
                    float sc, float* s, int64_t ss, bool acc) {
        score_plain<F, NG>(r, rs, n, q, qs, d, sc, s, ss, acc);
    }
};
template <class F, int NG>
struct ValueQ {
    static void run(const uint8_t* r, int64_t rs, int n, const float* p, int64_t ps, int64_t d,
                    float* a, int64_t as) {
        value_quant<F, NG>(r, rs, n, p, ps, d, a, as);
    }
};
template <class F, int NG>
struct ValueP {
    static void run(const uint8_t* r, int64_t rs, int n, const float* p, int64_t ps, int64_t d,
                    float* a, int64_t as) {
        value_plain<F, NG>(r, rs, n, p, ps, d, a, as);
    }
};

const std::array<ScoreFn, kMaxGroup>& score_fns(caramba_format format) {
    static const auto f32 = make_fns<ScoreP, ScoreFn, F32>(Seq{});
    static const auto f16 = make_fns<ScoreP, ScoreFn, F16>(Seq{});
    static const auto q8 = make_fns<ScoreQ, ScoreFn, Q8>(Seq{});
    static const auto q4 = make_fns<ScoreQ, ScoreFn, Q4>(Seq{});
    static const auto nf4 = make_fns<ScoreQ, ScoreFn, NF4>(Seq{});
    switch (format) {
        case CARAMBA_FORMAT_F32: return f32;
        case CARAMBA_FORMAT_F16: return f16;
        case CARAMBA_FORMAT_Q8_0: return q8;
        case CARAMBA_FORMAT_Q4_0: return q4;
        default: return nf4;
    }
}

const std::array<ValueFn, kMaxGroup>& value_fns(caramba_format format) {
    static const auto f32 = make_fns<ValueP, ValueFn, F32>(Seq{});
    static const auto f16 = make_fns<ValueP, ValueFn, F16>(Seq{});
    static const auto q8 = make_fns<ValueQ, ValueFn, Q8>(Seq{});
    static const auto q4 = make_fns<ValueQ, ValueFn, Q4>(Seq{});
    static const auto nf4 = make_fns<ValueQ, ValueFn, NF4>(Seq{});
    switch (format) {
        case CARAMBA_FORMAT_F32: return f32;
        case CARAMBA_FORMAT_F16: return f16;
        case CARAMBA_FORMAT_Q8_0: return q8;
        case CARAMBA_FORMAT_Q4_0: return q4;
        default: return nf4;
    }
}

void score(caramba_format format, const uint8_t* rows, int64_t row_stride, int n_rows,
           const float* q, int64_t q_stride, int ng, int64_t dim, float scale, float* s,
           int64_t s_stride, bool accumulate) {
    const auto& fns = score_fns(format);
    for (int g0 = 0; g0 < ng; g0 += kMaxGroup) {
        const int gn = std::min(kMaxGroup, ng - g0);
        fns[gn - 1](rows, row_stride, n_rows, q + g0 * q_stride, q_stride, dim, scale,
                    s + g0 * s_stride, s_stride, accumulate);
    }
}

void value(caramba_format format, const uint8_t* rows, int64_t row_stride, int n_rows,
           const float* p, int64_t p_stride, int ng, int64_t dim, float* acc,
           int64_t acc_stride) {
    const auto& fns = value_fns(format);
    for (int g0 = 0; g0 < ng; g0 += kMaxGroup) {
        const int gn = std::min(kMaxGroup, ng - g0);
        fns[gn - 1](rows, row_stride, n_rows, p + g0 * p_stride, p_stride, dim,
                    acc + g0 * acc_stride, acc_stride);
    }
}

}  // namespace

const AttentionKernels* avx512_attention_kernels() {
    const AttentionKernels* avx2 = avx2_attention_kernels();
    if (avx2 == nullptr) return nullptr;
    static const AttentionKernels kernels{score, value, avx2->softmax, avx2->token_score};
    return &kernels;
}

}  // namespace caramba::detail

#else  // not compiled for AVX-512

namespace caramba::detail {
const AttentionKernels* avx512_attention_kernels() { return nullptr; }
}  // namespace caramba::detail

#endif
