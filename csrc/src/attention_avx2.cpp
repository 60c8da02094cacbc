// AVX2+FMA+F16C decode-attention inner kernels.
//
// Quantized values are expanded in registers, 8 at a time ("strips"), and each strip is used by
// every query head of the GQA group before the next is loaded: the cache is read once per KV
// head. Heads are processed in register-blocked groups of up to 8 (templates on the count).

#include "internal.h"

#if !defined(CARAMBA_KERNELS_NO_SIMD) && defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <utility>

#include "simd_avx2.h"

namespace caramba::detail {
namespace {

using namespace avx2;

// Accumulators per head in the score kernel: enough independent FMA chains to hide latency
// (two for 3-4 heads, 8 chains: GQA d128 q4_0 +3% on Zen 3; more would spill registers).
template <int NG>
constexpr int score_chains() {
    return NG == 1 ? 4 : (NG <= 4 ? 2 : 1);
}

// Reduces 8 vectors at once: lane i of the result is op over v[i]'s lanes (the layout of
// _mm256_hadd_ps, for any op), cheaper than 8 horizontal reductions.
template <class Op>
inline __m256 reduce8(const __m256* v, Op op) {
    const auto pairs = [op](__m256 a, __m256 b) {  // [a0 op a1, a2 op a3, b0 op b1, b2 op b3 | ...]
        return op(_mm256_shuffle_ps(a, b, 0x88), _mm256_shuffle_ps(a, b, 0xDD));
    };
    const __m256 h0123 = pairs(pairs(v[0], v[1]), pairs(v[2], v[3]));
    const __m256 h4567 = pairs(pairs(v[4], v[5]), pairs(v[6], v[7]));
    return op(_mm256_permute2f128_ps(h0123, h4567, 0x20), _mm256_permute2f128_ps(h0123, h4567, 0x31));
}

inline __m256 vadd(__m256 a, __m256 b) { return _mm256_add_ps(a, b); }
inline __m256 vmax(__m256 a, __m256 b) { return _mm256_max_ps(a, b); }

// Horizontal sums of 8 vectors at once: lane i of the result is the sum of v[i]'s lanes.
inline __m256 hsum8(const __m256* v) { return reduce8(v, vadd); }

// Per-row dot-product vectors are parked here and reduced 8 rows at a time.
template <int NG>
struct RowSums {
    __m256 v[NG][8];

    void put(int g, int t, __m256 x) { v[g][t & 7] = x; }

    // Writes s[g*s_stride + t0 + i] (+)= scale * sum(v[g][i]) for i < count.
    void flush(int t0, int count, float scale, float* s, int64_t s_stride, bool accumulate) {
        for (int g = 0; g < NG; ++g) {
            for (int i = count; i < 8; ++i) v[g][i] = _mm256_setzero_ps();
            alignas(32) float out[8];
            _mm256_store_ps(out, _mm256_mul_ps(hsum8(v[g]), _mm256_set1_ps(scale)));
            float* dst = s + g * s_stride + t0;
            for (int i = 0; i < count; ++i) dst[i] = accumulate ? dst[i] + out[i] : out[i];
        }
    }
};

template <class F, int NG>
void score_quant(const uint8_t* rows, int64_t row_stride, int n_rows, const float* q,
                 int64_t q_stride, int64_t dim, float scale, float* s, int64_t s_stride,
                 bool accumulate) {
    constexpr int NA = score_chains<NG>();
    const int64_t nb = dim / F::kElems;
    RowSums<NG> sums;
    for (int t = 0; t < n_rows; ++t) {
        const uint8_t* row = rows + t * row_stride;
        __m256 acc[NG][NA];
        for (int g = 0; g < NG; ++g)
            for (int a = 0; a < NA; ++a) acc[g][a] = _mm256_setzero_ps();
        for (int64_t b = 0; b < nb; ++b) {
            const uint8_t* blk = row + b * F::kBytes;
            const __m256 d = _mm256_set1_ps(block_scale(blk));
            const float* qb = q + b * F::kElems;
#pragma GCC unroll 8
            for (int st = 0; st < F::kStrips; ++st) {
                const __m256 k = _mm256_mul_ps(F::strip(blk, st), d);
                for (int g = 0; g < NG; ++g) {
                    acc[g][st % NA] =
                        _mm256_fmadd_ps(_mm256_loadu_ps(qb + g * q_stride + 8 * st), k, acc[g][st % NA]);
                }
            }
        }
        for (int g = 0; g < NG; ++g) {
            __m256 sum = acc[g][0];
            for (int a = 1; a < NA; ++a) sum = _mm256_add_ps(sum, acc[g][a]);
            sums.put(g, t, sum);
        }
        if ((t & 7) == 7 || t == n_rows - 1) {
            sums.flush(t & ~7, (t & 7) + 1, scale, s, s_stride, accumulate);
        }
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
        __m256 acc[NG][NA];
        for (int g = 0; g < NG; ++g)
            for (int a = 0; a < NA; ++a) acc[g][a] = _mm256_setzero_ps();
        int64_t i = 0;
        for (; i + 8 * NA <= dim; i += 8 * NA) {
            for (int a = 0; a < NA; ++a) {
                const __m256 k = F::load8(row, i + 8 * a);
                for (int g = 0; g < NG; ++g) {
                    acc[g][a] = _mm256_fmadd_ps(_mm256_loadu_ps(q + g * q_stride + i + 8 * a), k, acc[g][a]);
                }
            }
        }
        for (; i + 8 <= dim; i += 8) {
            const __m256 k = F::load8(row, i);
            for (int g = 0; g < NG; ++g) {
                acc[g][0] = _mm256_fmadd_ps(_mm256_loadu_ps(q + g * q_stride + i), k, acc[g][0]);
            }
        }
        for (int g = 0; g < NG; ++g) {
            __m256 sum = acc[g][0];
            for (int a = 1; a < NA; ++a) sum = _mm256_add_ps(sum, acc[g][a]);
            if (i < dim) {  // widths that are not a multiple of 8: the tail goes into lane 0
                float tail = 0.0f;
                for (int64_t j = i; j < dim; ++j) tail += q[g * q_stride + j] * F::load1(row, j);
                sum = _mm256_add_ps(sum, _mm256_setr_ps(tail, 0, 0, 0, 0, 0, 0, 0));
            }
            sums.put(g, t, sum);
        }
        if ((t & 7) == 7 || t == n_rows - 1) {
            sums.flush(t & ~7, (t & 7) + 1, scale, s, s_stride, accumulate);
        }
    }
}

// 8 rows of a tile from `first`; rows past the tile repeat its last row, so reading them stays
// in the cache (what comes of them lands in entries nothing reads).
struct Rows8 {
    const uint8_t* row[8];
    Rows8(const uint8_t* rows, int64_t row_stride, int first, int n) {
        for (int i = 0; i < 8; ++i) row[i] = rows + std::min(first + i, n - 1) * row_stride;
    }
};

inline __m128i load16(const uint8_t* p) { return _mm_loadu_si128(reinterpret_cast<const __m128i*>(p)); }

inline __m256i pair16(const uint8_t* lo, const uint8_t* hi) {
    return _mm256_inserti128_si256(_mm256_castsi128_si256(load16(lo)), load16(hi), 1);
}

// w[j], lane i = bytes 4j .. 4j+3 of the 16 at rows.row[i] + at.
inline void transpose_words(const Rows8& rows, int64_t at, __m256i* w) {
    const __m256i r0 = pair16(rows.row[0] + at, rows.row[4] + at), r1 = pair16(rows.row[1] + at, rows.row[5] + at);
    const __m256i r2 = pair16(rows.row[2] + at, rows.row[6] + at), r3 = pair16(rows.row[3] + at, rows.row[7] + at);
    const __m256i t0 = _mm256_unpacklo_epi32(r0, r1), t1 = _mm256_unpackhi_epi32(r0, r1);
    const __m256i t2 = _mm256_unpacklo_epi32(r2, r3), t3 = _mm256_unpackhi_epi32(r2, r3);
    w[0] = _mm256_unpacklo_epi64(t0, t2);
    w[1] = _mm256_unpackhi_epi64(t0, t2);
    w[2] = _mm256_unpacklo_epi64(t1, t3);
    w[3] = _mm256_unpackhi_epi64(t1, t3);
}

// The fp16 scale at rows.row[i] + at, as lane i.
inline __m256 scales8(const Rows8& rows, int64_t at) {
    uint16_t h[8];
    for (int i = 0; i < 8; ++i) std::memcpy(&h[i], rows.row[i] + at, sizeof h[i]);
    return _mm256_cvtph_ps(_mm_setr_epi16(static_cast<int16_t>(h[0]), static_cast<int16_t>(h[1]),
                                          static_cast<int16_t>(h[2]), static_cast<int16_t>(h[3]),
                                          static_cast<int16_t>(h[4]), static_cast<int16_t>(h[5]),
                                          static_cast<int16_t>(h[6]), static_cast<int16_t>(h[7])));
}

// Strips processed together in the value kernel: NG * SP accumulators stay in registers.
template <int NG>
constexpr int value_strips() {
    return NG <= 2 ? 4 : (NG <= 4 ? 2 : 1);
}

// The weights p[g][t] * d_t of a block's rows (d_t: row t's scale of block `b`), so the row loop
// FMAs bare codes: 4 multiplies and the scale's decode a row fewer (DBA q4_0 on Zen 3: +3.5%).
// The products (p d)(q - 8) round differently from p ((q - 8) d), as FMAs do from a
// multiply and an add: within the same float32 error.
template <class F, int NG>
void block_weights(const uint8_t* rows, int64_t row_stride, int n_rows, int64_t b, const float* p,
                   int64_t p_stride, float (*w)[kTileRows]) {
    int t0 = 0;
    for (; t0 + 8 <= n_rows; t0 += 8) {
        const Rows8 lanes(rows + b * F::kBytes, row_stride, t0, n_rows);
        const __m256 d = scales8(lanes, 0);
        for (int g = 0; g < NG; ++g) _mm256_store_ps(w[g] + t0, _mm256_mul_ps(_mm256_loadu_ps(p + g * p_stride + t0), d));
    }
    for (int t = t0; t < n_rows; ++t) {
        const float d = block_scale(rows + t * row_stride + b * F::kBytes);
        for (int g = 0; g < NG; ++g) w[g][t] = p[g * p_stride + t] * d;
    }
}

template <class F, int NG>
void value_quant(const uint8_t* rows, int64_t row_stride, int n_rows, const float* p,
                 int64_t p_stride, int64_t dim, float* acc, int64_t acc_stride) {
    constexpr int SP = value_strips<NG>();
    const int64_t nb = dim / F::kElems;
    alignas(32) float w[NG][kTileRows];
    for (int64_t b = 0; b < nb; ++b) {
        block_weights<F, NG>(rows, row_stride, n_rows, b, p, p_stride, w);
#pragma GCC unroll 8
        for (int st0 = 0; st0 < F::kStrips; st0 += SP) {
            int64_t col[SP];  // strips in paired order: a pass shares its loads and widening
            for (int j = 0; j < SP; ++j) col[j] = b * F::kElems + 8 * paired_strip<F>(st0 + j);
            __m256 a[NG][SP];
            for (int g = 0; g < NG; ++g)
                for (int j = 0; j < SP; ++j) a[g][j] = _mm256_loadu_ps(acc + g * acc_stride + col[j]);
            for (int t = 0; t < n_rows; ++t) {
                const uint8_t* blk = rows + t * row_stride + b * F::kBytes;
                for (int j = 0; j < SP; ++j) {
                    const __m256 v = F::strip(blk, paired_strip<F>(st0 + j));
                    for (int g = 0; g < NG; ++g) {
                        a[g][j] = _mm256_fmadd_ps(_mm256_broadcast_ss(w[g] + t), v, a[g][j]);
                    }
                }
            }
            for (int g = 0; g < NG; ++g)
                for (int j = 0; j < SP; ++j) _mm256_storeu_ps(acc + g * acc_stride + col[j], a[g][j]);
        }
    }
}

template <class F, int NG>
void value_plain(const uint8_t* rows, int64_t row_stride, int n_rows, const float* p,
                 int64_t p_stride, int64_t dim, float* acc, int64_t acc_stride) {
    constexpr int SP = value_strips<NG>();
    int64_t col = 0;
    for (; col + 8 * SP <= dim; col += 8 * SP) {
        __m256 a[NG][SP];
        for (int g = 0; g < NG; ++g)
            for (int j = 0; j < SP; ++j) a[g][j] = _mm256_loadu_ps(acc + g * acc_stride + col + 8 * j);
        for (int t = 0; t < n_rows; ++t) {
            const uint8_t* row = rows + t * row_stride;
            for (int j = 0; j < SP; ++j) {
                const __m256 v = F::load8(row, col + 8 * j);
                for (int g = 0; g < NG; ++g) {
                    a[g][j] = _mm256_fmadd_ps(_mm256_broadcast_ss(p + g * p_stride + t), v, a[g][j]);
                }
            }
        }
        for (int g = 0; g < NG; ++g)
            for (int j = 0; j < SP; ++j) _mm256_storeu_ps(acc + g * acc_stride + col + 8 * j, a[g][j]);
    }
    for (; col + 8 <= dim; col += 8) {
        for (int g = 0; g < NG; ++g) {
            __m256 a = _mm256_loadu_ps(acc + g * acc_stride + col);
            for (int t = 0; t < n_rows; ++t) {
                a = _mm256_fmadd_ps(_mm256_broadcast_ss(p + g * p_stride + t),
                                    F::load8(rows + t * row_stride, col), a);
            }
            _mm256_storeu_ps(acc + g * acc_stride + col, a);
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

template <class F, size_t... I>
constexpr std::array<ScoreFn, sizeof...(I)> make_score_quant(std::index_sequence<I...>) {
    return {&score_quant<F, int(I) + 1>...};
}
template <class F, size_t... I>
constexpr std::array<ScoreFn, sizeof...(I)> make_score_plain(std::index_sequence<I...>) {
    return {&score_plain<F, int(I) + 1>...};
}
template <class F, size_t... I>
constexpr std::array<ValueFn, sizeof...(I)> make_value_quant(std::index_sequence<I...>) {
    return {&value_quant<F, int(I) + 1>...};
}
template <class F, size_t... I>
constexpr std::array<ValueFn, sizeof...(I)> make_value_plain(std::index_sequence<I...>) {
    return {&value_plain<F, int(I) + 1>...};
}

using Seq = std::make_index_sequence<kMaxGroup>;

const std::array<ScoreFn, kMaxGroup>& score_fns(caramba_format format) {
    static const std::array<ScoreFn, kMaxGroup> f32 = make_score_plain<F32>(Seq{});
    static const std::array<ScoreFn, kMaxGroup> f16 = make_score_plain<F16>(Seq{});
    static const std::array<ScoreFn, kMaxGroup> q8 = make_score_quant<Q8>(Seq{});
    static const std::array<ScoreFn, kMaxGroup> q4 = make_score_quant<Q4>(Seq{});
    static const std::array<ScoreFn, kMaxGroup> nf4 = make_score_quant<NF4>(Seq{});
    switch (format) {
        case CARAMBA_FORMAT_F32: return f32;
        case CARAMBA_FORMAT_F16: return f16;
        case CARAMBA_FORMAT_Q8_0: return q8;
        case CARAMBA_FORMAT_Q4_0: return q4;
        default: return nf4;
    }
}

const std::array<ValueFn, kMaxGroup>& value_fns(caramba_format format) {
    static const std::array<ValueFn, kMaxGroup> f32 = make_value_plain<F32>(Seq{});
    static const std::array<ValueFn, kMaxGroup> f16 = make_value_plain<F16>(Seq{});
    static const std::array<ValueFn, kMaxGroup> q8 = make_value_quant<Q8>(Seq{});
    static const std::array<ValueFn, kMaxGroup> q4 = make_value_quant<Q4>(Seq{});
    static const std::array<ValueFn, kMaxGroup> nf4 = make_value_quant<NF4>(Seq{});
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

// exp(x) for x <= 0 (kExp2Taylor, internal.h), 2^n as exponent bits (n >= -126 above the
// clamp); exactly 0 below kExpMin (and for -inf). The AVX-512 kernel's form, a few uops fewer
// than the Cephes one this kernel had (two-constant range reduction).
inline __m256 exp_nonpositive(__m256 x) {
    const __m256 lo = _mm256_set1_ps(kExpMin);
    const __m256 underflow = _mm256_cmp_ps(x, lo, _CMP_LT_OQ);
    const __m256 t = _mm256_mul_ps(_mm256_max_ps(x, lo), _mm256_set1_ps(kLog2e));
    const __m256 n = _mm256_round_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m256 f = _mm256_sub_ps(t, n);
    __m256 y = _mm256_set1_ps(kExp2Taylor[0]);
    for (int i = 1; i < 7; ++i) y = _mm256_fmadd_ps(y, f, _mm256_set1_ps(kExp2Taylor[i]));
    const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_andnot_ps(underflow, _mm256_mul_ps(y, _mm256_castsi256_ps(e)));
}

inline float hmax(__m256 v) {
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_movehdup_ps(m));
    return _mm_cvtss_f32(m);
}

static_assert(kTileRows % 8 == 0, "the AVX2 softmax works on whole vectors of the tile");

constexpr int kVecs = kTileRows / 8;

// Vector j of a head's tile row: its scores in lanes t < n (`valid`), -inf past them; a full
// tile (kFull) has no lanes past n.
template <bool kFull>
inline __m256 tile_scores(const float* row, int j, const __m256* valid) {
    if (kFull) return _mm256_loadu_ps(row + 8 * j);
    const __m256 neg_inf = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
    return _mm256_blendv_ps(neg_inf, _mm256_loadu_ps(row + 8 * j), valid[j]);
}

// Lane-wise maximum of a head's tile row (vecs vectors).
template <bool kFull>
inline __m256 row_max(const float* row, int vecs, const __m256* valid) {
    __m256 mx = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
    for (int j = 0; j < vecs; ++j) mx = _mm256_max_ps(mx, tile_scores<kFull>(row, j, valid));
    return mx;
}

// A head's tile row (vecs vectors) becomes exp(s - m_new) in place; returns the lane sums.
template <bool kFull>
inline __m256 exp_row(float* row, float m_new, int vecs, const __m256* valid) {
    const __m256 vm = _mm256_set1_ps(m_new);
    __m256 sum = _mm256_setzero_ps();
    for (int j = 0; j < vecs; ++j) {
        const __m256 p = exp_nonpositive(_mm256_sub_ps(tile_scores<kFull>(row, j, valid), vm));
        _mm256_storeu_ps(row + 8 * j, p);
        sum = _mm256_add_ps(sum, p);
    }
    return sum;
}

// 8 heads at once: tile maxima and sums reduced together, alpha as one vector exp (the
// per-head form below spent a horizontal max, a horizontal sum and a libm exp on each head).
template <bool kFull>
void softmax8(float* s, int64_t s_stride, int vecs, const __m256* valid, float* m, float* l, float* alpha) {
    if (kFull) vecs = kVecs;
    __m256 v[8];
    for (int h = 0; h < 8; ++h) v[h] = row_max<kFull>(s + h * s_stride, vecs, valid);
    const __m256 m_old = _mm256_loadu_ps(m);
    const __m256 m_new = _mm256_max_ps(m_old, reduce8(v, vmax));
    alignas(32) float mn[8];
    _mm256_store_ps(mn, m_new);
    for (int h = 0; h < 8; ++h) v[h] = exp_row<kFull>(s + h * s_stride, mn[h], vecs, valid);
    // m_old = -inf (the first tile) gives exp(-inf) = 0, as std::exp does.
    const __m256 a = exp_nonpositive(_mm256_sub_ps(m_old, m_new));
    _mm256_storeu_ps(alpha, a);
    _mm256_storeu_ps(l, _mm256_fmadd_ps(_mm256_loadu_ps(l), a, reduce8(v, vadd)));
    _mm256_storeu_ps(m, m_new);
}

void softmax(float* s, int64_t s_stride, int n, int ng, float* m, float* l, float* alpha) {
    __m256 valid[kVecs];  // lanes t < n
    for (int j = 0; j < kVecs; ++j) {
        const __m256i idx = _mm256_add_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), _mm256_set1_epi32(8 * j));
        valid[j] = _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32(n), idx));
    }
    const int vecs = (n + 7) / 8;
    int g0 = 0;
    const auto eight = n == kTileRows ? softmax8<true> : softmax8<false>;
    for (; g0 + 8 <= ng; g0 += 8) eight(s + g0 * s_stride, s_stride, vecs, valid, m + g0, l + g0, alpha + g0);
    for (int g = g0; g < ng; ++g) {  // the last ng % 8 heads, one at a time
        float* row = s + g * s_stride;
        const float m_new = std::max(m[g], hmax(row_max<false>(row, vecs, valid)));
        alpha[g] = std::exp(m[g] - m_new);
        l[g] = l[g] * alpha[g] + hsum(exp_row<false>(row, m_new, vecs, valid));
        m[g] = m_new;
    }
}

// ---- token layout -------------------------------------------------------------------------
// The tile of rows is transposed (8x8 blocks) so that one element of a row, for 8 positions,
// is one vector: a head's score over the tile is then `dim` broadcast-FMAs per 8 positions,
// whatever `dim` is, and heads of one KV head share the loaded vectors.

inline void transpose8(__m256* r) {
    const __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
    const __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
    const __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
    const __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
    const __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
    const __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
    const __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE);
    const __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
    r[0] = _mm256_permute2f128_ps(u0, u4, 0x20);
    r[1] = _mm256_permute2f128_ps(u1, u5, 0x20);
    r[2] = _mm256_permute2f128_ps(u2, u6, 0x20);
    r[3] = _mm256_permute2f128_ps(u3, u7, 0x20);
    r[4] = _mm256_permute2f128_ps(u0, u4, 0x31);
    r[5] = _mm256_permute2f128_ps(u1, u5, 0x31);
    r[6] = _mm256_permute2f128_ps(u2, u6, 0x31);
    r[7] = _mm256_permute2f128_ps(u3, u7, 0x31);
}

}  // namespace

// kt[j*kTileRows + t] = rows[t*row_pad + j] for t < 8*nv, j < row_pad.
void transpose_tile_avx2(const float* rows, int64_t row_pad, int nv, float* kt) {
    for (int v = 0; v < nv; ++v) {
        for (int64_t j = 0; j < row_pad; j += 8) {
            __m256 r[8];
            for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(rows + (8 * v + i) * row_pad + j);
            transpose8(r);
            for (int i = 0; i < 8; ++i) _mm256_store_ps(kt + (j + i) * kTileRows + 8 * v, r[i]);
        }
    }
}

namespace {

// NH query heads reading the same KV columns col .. col+dim-1, NV vectors of positions.
template <int NV, int NH>
void token_heads(const float* kt, const float* q, int64_t q_stride, int64_t dim, float scale,
                 float* s, int64_t s_stride, bool accumulate) {
    __m256 acc[NH][NV];
    for (int h = 0; h < NH; ++h)
        for (int v = 0; v < NV; ++v) acc[h][v] = _mm256_setzero_ps();
    for (int64_t i = 0; i < dim; ++i) {
        __m256 k[NV];
        for (int v = 0; v < NV; ++v) k[v] = _mm256_load_ps(kt + i * kTileRows + 8 * v);
        for (int h = 0; h < NH; ++h) {
            const __m256 qi = _mm256_broadcast_ss(q + h * q_stride + i);
            for (int v = 0; v < NV; ++v) acc[h][v] = _mm256_fmadd_ps(qi, k[v], acc[h][v]);
        }
    }
    const __m256 sc = _mm256_set1_ps(scale);
    for (int h = 0; h < NH; ++h) {
        for (int v = 0; v < NV; ++v) {
            float* dst = s + h * s_stride + 8 * v;
            const __m256 x = _mm256_mul_ps(acc[h][v], sc);
            _mm256_storeu_ps(dst, accumulate ? _mm256_add_ps(_mm256_loadu_ps(dst), x) : x);
        }
    }
}

template <int NV>
void token_score_nv(const float* kt, const float* q, int64_t q_stride, int nh, int group,
                    int64_t dim, float scale, float* s, int64_t s_stride, bool accumulate) {
    int h = 0;
    while (h < nh) {
        const float* col = kt + (h / group) * dim * kTileRows;
        if (h + 1 < nh && (h + 1) / group == h / group) {
            token_heads<NV, 2>(col, q + h * q_stride, q_stride, dim, scale, s + h * s_stride,
                               s_stride, accumulate);
            h += 2;
        } else {
            token_heads<NV, 1>(col, q + h * q_stride, q_stride, dim, scale, s + h * s_stride,
                               s_stride, accumulate);
            h += 1;
        }
    }
}

static_assert(kTileRows == 32, "token_score handles up to 4 vectors of positions");

void token_score(const float* rows, int64_t row_pad, int n_rows, const float* q,
                 int64_t q_stride, int nh, int group, int64_t dim, float scale, float* s,
                 int64_t s_stride, bool accumulate, float* scratch) {
    const int nv = (n_rows + 7) / 8;
    transpose_tile_avx2(rows, row_pad, nv, scratch);
    switch (nv) {
        case 1: token_score_nv<1>(scratch, q, q_stride, nh, group, dim, scale, s, s_stride, accumulate); break;
        case 2: token_score_nv<2>(scratch, q, q_stride, nh, group, dim, scale, s, s_stride, accumulate); break;
        case 3: token_score_nv<3>(scratch, q, q_stride, nh, group, dim, scale, s, s_stride, accumulate); break;
        default: token_score_nv<4>(scratch, q, q_stride, nh, group, dim, scale, s, s_stride, accumulate); break;
    }
}

// ---- token layout straight from quantized rows: transposed code words, no float tile --------
//
// As the AVX-512 kernel does with gathers, each column of 8 positions (element e of every
// row's block) is decoded straight from the code bytes and FMA'd into the scores of the query
// heads reading it, instead of dequantizing the tile's rows and transposing the floats. The 8
// rows' code bytes are transposed as 32-bit words by unpacks: an 8-lane vpgatherdd costs 9-11
// cycles on AMD Zen 3, more than the 12 shuffles that move 16 bytes of 8 rows. Same products
// (q - 8) * d and q * d, in the same order, as the row tile: bitwise the same scores.

// A block's 32 columns: column(e) is element e of every lane's block, times its scale.
struct Q4Words {
    static constexpr int kBytes = 18;
    __m256 d;
    __m256i w[4];  // code bytes 4j .. 4j+3, xor 0x88: elements 4j+k (low nibbles), 16+4j+k (high)
    Q4Words(const Rows8& rows, int64_t blk) : d(scales8(rows, blk)) {
        transpose_words(rows, blk + 2, w);
        for (int j = 0; j < 4; ++j) w[j] = _mm256_xor_si256(w[j], _mm256_set1_epi32(static_cast<int>(0x88888888u)));
    }
    // nibble xor 8, sign-extended from its top bit, is the code minus 8
    __m256 column(int e) const {
        const int shift = e < 16 ? 8 * (e % 4) : 8 * (e % 4) + 4;
        const __m256i x = w[(e % 16) / 4];
        const __m256i c = _mm256_srai_epi32(shift == 28 ? x : _mm256_slli_epi32(x, 28 - shift), 28);
        return _mm256_mul_ps(_mm256_cvtepi32_ps(c), d);
    }
};

struct Q8Words {
    static constexpr int kBytes = 34;
    __m256 d;
    __m256i w[8];  // code bytes 4j .. 4j+3: elements 4j .. 4j+3
    Q8Words(const Rows8& rows, int64_t blk) : d(scales8(rows, blk)) {
        transpose_words(rows, blk + 2, w);
        transpose_words(rows, blk + 18, w + 4);
    }
    __m256 column(int e) const {  // byte e % 4 of each lane, sign-extended
        const __m256i x = w[e / 4];
        const __m256i q = _mm256_srai_epi32(e % 4 == 3 ? x : _mm256_slli_epi32(x, 24 - 8 * (e % 4)), 24);
        return _mm256_mul_ps(_mm256_cvtepi32_ps(q), d);
    }
};

// G of the `group` query heads of every KV head, 8 positions: each column is FMA'd into the
// scores of the G heads reading it as it is decoded (token_heads' arithmetic, same order).
// (16 positions at a time, two FMA chains per head, measured slower: the registers run out.)
template <class C, int G>
void scores_from_words(const Rows8& rows, int64_t blocks, const float* q, int64_t q_stride,
                       int group, int64_t dim, float scale, float* s, int64_t s_stride, bool accumulate) {
    __m256 acc[G];
    for (int h = 0; h < G; ++h) acc[h] = _mm256_setzero_ps();
    int64_t i = 0;     // the column's index within its KV head
    int64_t head = 0;  // first query head reading it
    for (int64_t b = 0; b < blocks; ++b) {
        const C cols(rows, b * C::kBytes);
#pragma GCC unroll 32
        for (int e = 0; e < 32; ++e) {
            const __m256 k = cols.column(e);
            for (int h = 0; h < G; ++h) {
                acc[h] = _mm256_fmadd_ps(_mm256_broadcast_ss(q + (head + h) * q_stride + i), k, acc[h]);
            }
            if (++i < dim) continue;
            const __m256 sc = _mm256_set1_ps(scale);
            for (int h = 0; h < G; ++h) {
                float* dst = s + (head + h) * s_stride;
                const __m256 x = _mm256_mul_ps(acc[h], sc);
                _mm256_storeu_ps(dst, accumulate ? _mm256_add_ps(_mm256_loadu_ps(dst), x) : x);
                acc[h] = _mm256_setzero_ps();
            }
            i = 0;
            head += group;
        }
    }
}

// Heads per pass over the columns: up to 6 keep their scores in registers (measured on Zen 3:
// faster than the row tile up to 6 heads per KV head, even at 7, slower at 8); larger groups
// take passes of up to 4, each decoding the columns again.
constexpr int kWordsOnePass = 6, kWordsPass = 4;

using WordsFn = void (*)(const Rows8&, int64_t, const float*, int64_t, int, int64_t, float, float*,
                         int64_t, bool);

template <class C, size_t... I>
constexpr std::array<WordsFn, kWordsOnePass> make_words(std::index_sequence<I...>) {
    return {&scores_from_words<C, int(I) + 1>...};
}

template <class C>
void token_score_words(const uint8_t* rows, int64_t row_stride, int n_rows, const float* q,
                       int64_t q_stride, int nh, int group, int64_t dim, float scale, float* s,
                       int64_t s_stride, bool accumulate) {
    static const std::array<WordsFn, kWordsOnePass> fns = make_words<C>(std::make_index_sequence<kWordsOnePass>{});
    const int64_t blocks = (nh / group) * dim / 32;  // q8_0 and q4_0: 32 values per block
    const int pass = group <= kWordsOnePass ? group : kWordsPass;
    for (int first = 0; first < n_rows; first += 8) {
        const Rows8 lanes(rows, row_stride, first, n_rows);
        for (int h0 = 0; h0 < group; h0 += pass) {
            fns[std::min(pass, group - h0) - 1](lanes, blocks, q + h0 * q_stride, q_stride, group, dim, scale,
                                                s + h0 * s_stride + first, s_stride, accumulate);
        }
    }
}

bool token_score_quant(caramba_format format, const uint8_t* rows, int64_t row_stride, int n_rows,
                       const float* q, int64_t q_stride, int nh, int group, int64_t dim, float scale,
                       float* s, int64_t s_stride, bool accumulate, float*) {
    switch (format) {
        case CARAMBA_FORMAT_Q4_0:
            token_score_words<Q4Words>(rows, row_stride, n_rows, q, q_stride, nh, group, dim, scale, s, s_stride, accumulate);
            return true;
        case CARAMBA_FORMAT_Q8_0:
            token_score_words<Q8Words>(rows, row_stride, n_rows, q, q_stride, nh, group, dim, scale, s, s_stride, accumulate);
            return true;
        default: return false;
    }
}

}  // namespace

const AttentionKernels* avx2_attention_kernels() {
    static const AttentionKernels kernels{score, value, softmax, token_score, token_score_quant};
    return &kernels;
}

}  // namespace caramba::detail

#else  // not compiled for AVX2

namespace caramba::detail {
const AttentionKernels* avx2_attention_kernels() { return nullptr; }
}  // namespace caramba::detail

#endif
