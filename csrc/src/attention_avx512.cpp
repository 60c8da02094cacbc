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
#include <cmath>
#include <cstring>
#include <limits>
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

// The block scale broadcast to 16 lanes: vpbroadcastw + one vcvtph2ps (exact, as F16C is).
inline __m512 block_scale16(const uint8_t* blk) {
    uint16_t h;
    std::memcpy(&h, blk, sizeof h);
    return _mm512_cvtph_ps(_mm256_set1_epi16(static_cast<short>(h)));
}

inline __m128i load16_bytes(const uint8_t* p) {
    return _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
}

// Quantized formats, read as kStrips strips of 16 scaled values: prepare(blk) decodes what the
// strips share (the scale; for the 4-bit formats a 16-entry table already multiplied by it, so
// a strip is one permute of the nibbles: vpermps reads only the low 4 bits of each index).
struct Q8 {
    static constexpr int kElems = CARAMBA_QK8_0, kBytes = 34, kStrips = 2;
    struct Block {
        __m512 d;
        const uint8_t* qs;
    };
    static Block prepare(const uint8_t* blk) { return {block_scale16(blk), blk + 2}; }
    static __m512 strip(const Block& b, int s) {
        return _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(load16_bytes(b.qs + 16 * s))), b.d);
    }
};

// A q4_0 code's value before its scale, i - 8, indexed by the code i.
inline __m512 q4_values() {
    return _mm512_setr_ps(-8, -7, -6, -5, -4, -3, -2, -1, 0, 1, 2, 3, 4, 5, 6, 7);
}

struct Q4 {  // strip 0: low nibbles (elements 0-15), strip 1: high nibbles (16-31)
    static constexpr int kElems = CARAMBA_QK4_0, kBytes = 18, kStrips = 2;
    struct Block {
        __m512 table;  // (i - 8) * d
        __m512i w;
    };
    static Block prepare(const uint8_t* blk) {
        return {_mm512_mul_ps(q4_values(), block_scale16(blk)), _mm512_cvtepu8_epi32(load16_bytes(blk + 2))};
    }
    static __m512 strip(const Block& b, int s) {
        return _mm512_permutexvar_ps(s == 0 ? b.w : _mm512_srli_epi32(b.w, 4), b.table);
    }
};

struct NF4 {  // strips 0,1: low nibbles of bytes 0-15, 16-31; strips 2,3: their high nibbles
    static constexpr int kElems = CARAMBA_QKNF4, kBytes = 34, kStrips = 4;
    struct Block {
        __m512 table;  // codebook * d
        __m512i w[2];
    };
    static Block prepare(const uint8_t* blk) {
        return {_mm512_mul_ps(_mm512_loadu_ps(kNf4Codebook), block_scale16(blk)),
                {_mm512_cvtepu8_epi32(load16_bytes(blk + 2)), _mm512_cvtepu8_epi32(load16_bytes(blk + 18))}};
    }
    static __m512 strip(const Block& b, int s) {
        const __m512i w = b.w[s & 1];
        return _mm512_permutexvar_ps(s < 2 ? w : _mm512_srli_epi32(w, 4), b.table);
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
                const typename F::Block blk_d = F::prepare(blk);
                const float* qb = q + (b + bi) * F::kElems;
#pragma GCC unroll 4
                for (int st = 0; st < F::kStrips; ++st) {
                    const __m512 k = F::strip(blk_d, st);
                    const int a = (bi * F::kStrips + st) % NA;
                    for (int g = 0; g < NG; ++g) {
                        acc[g][a] = _mm512_fmadd_ps(_mm512_loadu_ps(qb + g * q_stride + 16 * st), k, acc[g][a]);
                    }
                }
            }
        }
        for (; b < nb; ++b) {
            const uint8_t* blk = row + b * F::kBytes;
            const typename F::Block blk_d = F::prepare(blk);
            const float* qb = q + b * F::kElems;
#pragma GCC unroll 4
            for (int st = 0; st < F::kStrips; ++st) {
                const __m512 k = F::strip(blk_d, st);
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

// R rows at once: each strip of q is loaded once for all R rows, and R * NG * NA independent
// FMA chains are in flight (a GQA group of 4 heads alone leaves the FMA units half idle).
template <class F, int NG, int R>
void score_rows(const uint8_t* row0, int64_t row_stride, const float* q, int64_t q_stride,
                int64_t nb, int t, RowSums<NG>& sums) {
    constexpr int NA = NG == 1 ? 2 : 1;
    __m512 acc[R][NG][NA];
    for (int r = 0; r < R; ++r)
        for (int g = 0; g < NG; ++g)
            for (int a = 0; a < NA; ++a) acc[r][g][a] = _mm512_setzero_ps();
    for (int64_t b = 0; b < nb; ++b) {
        typename F::Block blk[R];
        for (int r = 0; r < R; ++r) blk[r] = F::prepare(row0 + r * row_stride + b * F::kBytes);
        const float* qb = q + b * F::kElems;
#pragma GCC unroll 4
        for (int st = 0; st < F::kStrips; ++st) {
            __m512 k[R];
            for (int r = 0; r < R; ++r) k[r] = F::strip(blk[r], st);
            const int a = st % NA;
            for (int g = 0; g < NG; ++g) {
                const __m512 qv = _mm512_loadu_ps(qb + g * q_stride + 16 * st);
                for (int r = 0; r < R; ++r) acc[r][g][a] = _mm512_fmadd_ps(qv, k[r], acc[r][g][a]);
            }
        }
    }
    for (int r = 0; r < R; ++r) {
        for (int g = 0; g < NG; ++g) {
            __m512 sum = acc[r][g][0];
            for (int a = 1; a < NA; ++a) sum = _mm512_add_ps(sum, acc[r][g][a]);
            sums.put(g, t + r, sum);
        }
    }
}

template <class F, int NG>
void score_quant_rows(const uint8_t* rows, int64_t row_stride, int n_rows, const float* q,
                      int64_t q_stride, int64_t dim, float scale, float* s, int64_t s_stride,
                      bool accumulate) {
    // Rows in flight: 4 for groups of up to 4 heads (R * NG <= 16 accumulators of 32 zmm
    // registers). GQA 32q/8kv d128 q4_0, one thread, Xeon VM: 4 rows 0.80 ms at 4k, 3.48 at
    // 16k; 2 rows 0.92 and 3.76.
    constexpr int R = NG <= 4 ? 4 : 1;
    const int64_t nb = dim / F::kElems;
    RowSums<NG> sums;
    int t = 0;
    for (; t + R <= n_rows; t += R) {
        score_rows<F, NG, R>(rows + t * row_stride, row_stride, q, q_stride, nb, t, sums);
        for (int r = 0; r < R; ++r) {
            const int tr = t + r;
            if ((tr & 7) == 7 || tr == n_rows - 1) sums.flush(tr & ~7, (tr & 7) + 1, scale, s, s_stride, accumulate);
        }
    }
    for (; t < n_rows; ++t) {
        score_rows<F, NG, 1>(rows + t * row_stride, row_stride, q, q_stride, nb, t, sums);
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
                    const typename F::Block blk_d = F::prepare(blk);
                    for (int j = 0; j < SP; ++j) {
                        const __m512 v = F::strip(blk_d, st0 + j);
                        for (int g = 0; g < NG; ++g) {
                            a[u][g][j] = _mm512_fmadd_ps(_mm512_set1_ps(p[g * p_stride + t + u]), v, a[u][g][j]);
                        }
                    }
                }
            }
            for (; t < n_rows; ++t) {
                const uint8_t* blk = rows + t * row_stride + b * F::kBytes;
                const typename F::Block blk_d = F::prepare(blk);
                for (int j = 0; j < SP; ++j) {
                    const __m512 v = F::strip(blk_d, st0 + j);
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

// Two blocks per pass for the 2-strip formats and groups of 2-4 heads: each broadcast of a
// probability feeds 4 strips instead of 2 (NG * 4 <= 16 accumulators stay in registers).
template <class F, int NG>
void value_quant_pairs(const uint8_t* rows, int64_t row_stride, int n_rows, const float* p,
                       int64_t p_stride, int64_t dim, float* acc, int64_t acc_stride) {
    static_assert(F::kStrips == 2, "two blocks of two strips");
    constexpr int SP = 4;
    const int64_t nb = dim / F::kElems;
    for (int64_t b = 0; b + 2 <= nb; b += 2) {
        const int64_t col = b * F::kElems;
        __m512 a[NG][SP];
        for (int g = 0; g < NG; ++g)
            for (int j = 0; j < SP; ++j) a[g][j] = _mm512_loadu_ps(acc + g * acc_stride + col + 16 * j);
        for (int t = 0; t < n_rows; ++t) {
            const uint8_t* blk = rows + t * row_stride + b * F::kBytes;
            const typename F::Block b0 = F::prepare(blk), b1 = F::prepare(blk + F::kBytes);
            const __m512 v[SP] = {F::strip(b0, 0), F::strip(b0, 1), F::strip(b1, 0), F::strip(b1, 1)};
            for (int g = 0; g < NG; ++g) {
                const __m512 pg = _mm512_set1_ps(p[g * p_stride + t]);
                for (int j = 0; j < SP; ++j) a[g][j] = _mm512_fmadd_ps(pg, v[j], a[g][j]);
            }
        }
        for (int g = 0; g < NG; ++g)
            for (int j = 0; j < SP; ++j) _mm512_storeu_ps(acc + g * acc_stride + col + 16 * j, a[g][j]);
    }
    if (nb % 2 != 0) {  // the last block alone
        const int64_t off = (nb - 1) * F::kElems;
        value_quant<F, NG>(rows + (nb - 1) * F::kBytes, row_stride, n_rows, p, p_stride, F::kElems,
                           acc + off, acc_stride);
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
        score_quant_rows<F, NG>(r, rs, n, q, qs, d, sc, s, ss, acc);
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
        if constexpr (F::kStrips == 2 && NG >= 2 && NG <= 4) {
            value_quant_pairs<F, NG>(r, rs, n, p, ps, d, a, as);
        } else {
            value_quant<F, NG>(r, rs, n, p, ps, d, a, as);
        }
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

// The token layout's kernel (below): scores of 16 positions per vector from gathered columns.
bool token_score_quant(caramba_format format, const uint8_t* rows, int64_t row_stride, int n_rows,
                       const float* q, int64_t q_stride, int nh, int group, int64_t dim, float scale,
                       float* s, int64_t s_stride, bool accumulate, float* scratch);

// Whether a head-layout KV head's scores are cheaper from gathered columns (positions in the
// lanes: a shift, permute or sign extension and a scale multiply per column, shared by the ng
// heads) than from rows (values in the lanes, whose every row and head ends in a horizontal
// sum). Rows win where many blocks share each row's sums and few heads share each column.
// One-thread rate, GB/s, rows -> columns, 2k positions, Xeon VM: q4_0 d32 g4 2.8 -> 4.1, d64 g2
// 6.1 -> 7.0, d64 g4 3.9 -> 5.2, d128 g2 7.2 -> 7.2, d128 g4 5.0 -> 5.5, d128 g8 2.5 -> 3.2,
// d256 g4 5.9 -> 5.7; q8_0 d32 g2 7.6 -> 9.3, d64 g2 9.9 -> 9.8, d64 g3 7.9 -> 8.6, d64 g4 6.8
// -> 7.7, d128 g4 9.2 -> 8.2, d128 g6 5.9 -> 6.1, d128 g8 4.2 -> 4.9, d256 g4 9.4 -> 8.1.
// AMD's gathers cost more, and far more on lines that come from DRAM, which prefetching them
// further ahead did not change. Zen 5 (EPYC), one thread, GQA, ns per KV-head position at 32k
// positions (DRAM) / 2k, columns vs rows: q4_0 d32 g2 5.8 vs 5.0 / 4.4 vs 5.2, d32 g4 6.3 vs 8.0
// / 6.1 vs 8.2, d32 g8 12.2 vs 18.3, d64 g4 15.7 vs 10.3 / 9.8 vs 10.4, d64 g8 22.8 vs 27.0,
// d128 g4 28.8 vs 16.3 / 17.6 vs 16.1, d128 g8 43.6 vs 44.5 / 30.9 vs 43.5, d256 g4 75.9 vs 30.5;
// q8_0 d32 g4 12.3 vs 8.8, d32 g8 18.4 vs 18.3 / 11.1 vs 18.7, d128 g4 68.4 vs 17.7, d128 g8
// 83.9 vs 46.9 / 39.1 vs 42.3. There columns take 4 (q4_0) or 8 (q8_0) heads a block.
bool columns_win(caramba_format format, int ng, int64_t dim) {
    const int64_t blocks = dim / 32;
    const bool amd = amd_cpu();
    if (format == CARAMBA_FORMAT_Q4_0) return ng >= (amd ? 4 : 1) * blocks;
    if (format == CARAMBA_FORMAT_Q8_0) return amd ? ng >= 8 * blocks : 2 * ng >= 3 * blocks;
    return false;
}

void score(caramba_format format, const uint8_t* rows, int64_t row_stride, int n_rows,
           const float* q, int64_t q_stride, int ng, int64_t dim, float scale, float* s,
           int64_t s_stride, bool accumulate) {
    if (ng <= kMaxGroup && columns_win(format, ng, dim) &&
        token_score_quant(format, rows, row_stride, n_rows, q, q_stride, ng, ng, dim, scale, s,
                          s_stride, accumulate, nullptr)) {
        return;
    }
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

// ---- online softmax: 16-lane exp --------------------------------------------------------

// exp(x) for x <= 0 as 2^n * 2^f (n = round(x log2 e), |f| <= 1/2, 2^f by its degree-6 Taylor
// polynomial, then one vscalefps); exactly 0 below -87.3 (and for -inf). Against double exp
// over [-87, 0]: relative error <= 1.1e-6 for x >= -17 (x log2 e rounds to float first) and
// <= 4e-6 below, where a weight is under 4e-8 of the maximum; absolute <= 1.7e-7. That is far
// inside the decode tests' 2e-5 of float64, for 3-4 fewer vector uops than the Cephes form
// (two-constant range reduction, a 1 + x + x^2 p(x) tail; the AVX2 kernel's until session 15,
// which now shares kExp2Taylor, internal.h, with this one). One-thread GB/s,
// six alternated runs, median: DBA q4_0 8k 4.81 -> 5.00, q8_0 2k 7.78 -> 7.94; GQA unchanged.
inline __m512 exp_nonpositive(__m512 x) {
    const __m512 lo = _mm512_set1_ps(kExpMin);
    const __mmask16 underflow = _mm512_cmp_ps_mask(x, lo, _CMP_LT_OQ);
    const __m512 t = _mm512_mul_ps(_mm512_max_ps(x, lo), _mm512_set1_ps(kLog2e));
    const __m512 n = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m512 f = _mm512_sub_ps(t, n);
    __m512 y = _mm512_set1_ps(kExp2Taylor[0]);  // internal.h
    for (int i = 1; i < 7; ++i) y = _mm512_fmadd_ps(y, f, _mm512_set1_ps(kExp2Taylor[i]));
    y = _mm512_scalef_ps(y, n);
    return _mm512_maskz_mov_ps(static_cast<__mmask16>(~underflow), y);
}

static_assert(kTileRows == 32, "the AVX-512 softmax and token scores work on two vectors of a tile");

// Reduces 16 vectors at once: lane h of the result is op over the lanes of v[h] (a transpose
// by halves: 256-, 128-, 64-, then 32-bit pieces), cheaper than 16 horizontal reductions.
template <class Op>
__m512 reduce16(__m512* v, Op op) {
    for (int i = 0; i < 8; ++i) {  // [v0.lo, v1.lo] op [v0.hi, v1.hi]: 8 partials of 2 heads
        v[i] = op(_mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], 0x44), _mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], 0xEE));
    }
    for (int i = 0; i < 4; ++i) {  // 4 partials of 4 heads
        v[i] = op(_mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], 0x88), _mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], 0xDD));
    }
    for (int i = 0; i < 2; ++i) {  // 2 partials of 8 heads
        v[i] = op(_mm512_shuffle_ps(v[2 * i], v[2 * i + 1], 0x44), _mm512_shuffle_ps(v[2 * i], v[2 * i + 1], 0xEE));
    }
    return op(_mm512_shuffle_ps(v[0], v[1], 0x88), _mm512_shuffle_ps(v[0], v[1], 0xDD));
}

// Where reduce16 leaves head h: found once by reducing vectors that hold their own index.
const __m512i& reduce16_order() {
    static const __m512i order = [] {
        __m512 v[16];
        for (int h = 0; h < 16; ++h) v[h] = _mm512_set1_ps(static_cast<float>(h));
        alignas(64) float lane_head[16];
        _mm512_store_ps(lane_head, reduce16(v, [](__m512 a, __m512 b) { return _mm512_max_ps(a, b); }));
        alignas(64) int32_t idx[16];
        for (int lane = 0; lane < 16; ++lane) idx[static_cast<int>(lane_head[lane])] = lane;
        return _mm512_load_si512(idx);
    }();
    return order;
}

// A head's tile row, two vectors: its scores in lanes t < n (masks k0, k1), -inf past them.
inline __m512 tile_scores(const float* row, int j, __mmask16 k0, __mmask16 k1) {
    const __m512 neg_inf = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
    return _mm512_mask_loadu_ps(neg_inf, j ? k1 : k0, row + 16 * j);
}

// Lane-wise maximum of a head's tile row.
inline __m512 row_max(const float* row, __mmask16 k0, __mmask16 k1) {
    return _mm512_max_ps(tile_scores(row, 0, k0, k1), tile_scores(row, 1, k0, k1));
}

// A head's tile row becomes exp(s - m_new) in place; returns the lane sums.
inline __m512 exp_row(float* row, float m_new, __mmask16 k0, __mmask16 k1) {
    const __m512 vm = _mm512_set1_ps(m_new);
    const __m512 p0 = exp_nonpositive(_mm512_sub_ps(tile_scores(row, 0, k0, k1), vm));
    const __m512 p1 = exp_nonpositive(_mm512_sub_ps(tile_scores(row, 1, k0, k1), vm));
    _mm512_storeu_ps(row, p0);
    _mm512_storeu_ps(row + 16, p1);
    return _mm512_add_ps(p0, p1);
}

// 16 heads at once: tile maxima and sums reduced together, alpha as one vector exp.
void softmax16(float* s, int64_t s_stride, __mmask16 k0, __mmask16 k1, float* m, float* l, float* alpha) {
    const __m512i order = reduce16_order();
    const auto vmax = [](__m512 a, __m512 b) { return _mm512_max_ps(a, b); };
    const auto vadd = [](__m512 a, __m512 b) { return _mm512_add_ps(a, b); };
    __m512 v[16];
    for (int h = 0; h < 16; ++h) v[h] = row_max(s + h * s_stride, k0, k1);
    const __m512 m_old = _mm512_loadu_ps(m);
    const __m512 m_new = _mm512_max_ps(m_old, _mm512_permutexvar_ps(order, reduce16(v, vmax)));
    alignas(64) float mn[16];
    _mm512_store_ps(mn, m_new);
    for (int h = 0; h < 16; ++h) v[h] = exp_row(s + h * s_stride, mn[h], k0, k1);
    // m_old = -inf (the first tile) gives exp(-inf) = 0, as std::exp does.
    const __m512 a = exp_nonpositive(_mm512_sub_ps(m_old, m_new));
    const __m512 sums = _mm512_permutexvar_ps(order, reduce16(v, vadd));
    _mm512_storeu_ps(alpha, a);
    _mm512_storeu_ps(l, _mm512_fmadd_ps(_mm512_loadu_ps(l), a, sums));
    _mm512_storeu_ps(m, m_new);
}

void softmax(float* s, int64_t s_stride, int n, int ng, float* m, float* l, float* alpha) {
    const __mmask16 k0 = static_cast<__mmask16>(n >= 16 ? 0xFFFF : (1u << n) - 1);
    const __mmask16 k1 = static_cast<__mmask16>(n >= 32 ? 0xFFFF : (n > 16 ? (1u << (n - 16)) - 1 : 0));
    int g0 = 0;
    for (; g0 + 16 <= ng; g0 += 16) softmax16(s + g0 * s_stride, s_stride, k0, k1, m + g0, l + g0, alpha + g0);
    for (int g = g0; g < ng; ++g) {  // the last ng % 16 heads, one at a time
        float* row = s + g * s_stride;
        const float m_new = std::max(m[g], _mm512_reduce_max_ps(row_max(row, k0, k1)));
        alpha[g] = std::exp(m[g] - m_new);
        l[g] = l[g] * alpha[g] + _mm512_reduce_add_ps(exp_row(row, m_new, k0, k1));
        m[g] = m_new;
    }
}

// ---- token layout: the AVX2 tile transpose, then 16 positions per vector -------------------

template <int NV, int NH>
void token_heads(const float* kt, const float* q, int64_t q_stride, int64_t dim, float scale,
                 float* s, int64_t s_stride, bool accumulate) {
    __m512 acc[NH][NV];
    for (int h = 0; h < NH; ++h)
        for (int v = 0; v < NV; ++v) acc[h][v] = _mm512_setzero_ps();
    for (int64_t i = 0; i < dim; ++i) {
        __m512 k[NV];
        for (int v = 0; v < NV; ++v) k[v] = _mm512_load_ps(kt + i * kTileRows + 16 * v);
        for (int h = 0; h < NH; ++h) {
            const __m512 qi = _mm512_set1_ps(q[h * q_stride + i]);
            for (int v = 0; v < NV; ++v) acc[h][v] = _mm512_fmadd_ps(qi, k[v], acc[h][v]);
        }
    }
    const __m512 sc = _mm512_set1_ps(scale);
    for (int h = 0; h < NH; ++h) {
        for (int v = 0; v < NV; ++v) {
            float* dst = s + h * s_stride + 16 * v;
            const __m512 x = _mm512_mul_ps(acc[h][v], sc);
            _mm512_storeu_ps(dst, accumulate ? _mm512_add_ps(_mm512_loadu_ps(dst), x) : x);
        }
    }
}

template <int NV>
void token_score_nv(const float* kt, const float* q, int64_t q_stride, int nh, int group,
                    int64_t dim, float scale, float* s, int64_t s_stride, bool accumulate) {
    int h = 0;
    while (h < nh) {
        const int g = h / group;
        const float* col = kt + g * dim * kTileRows;
        const int same = std::min(nh, (g + 1) * group) - h;  // heads left that read KV head g
        const float* qh = q + h * q_stride;
        float* sh = s + h * s_stride;
        if (same >= 4) {
            token_heads<NV, 4>(col, qh, q_stride, dim, scale, sh, s_stride, accumulate);
            h += 4;
        } else if (same >= 2) {
            token_heads<NV, 2>(col, qh, q_stride, dim, scale, sh, s_stride, accumulate);
            h += 2;
        } else {
            token_heads<NV, 1>(col, qh, q_stride, dim, scale, sh, s_stride, accumulate);
            h += 1;
        }
    }
}

void token_score(const float* rows, int64_t row_pad, int n_rows, const float* q,
                 int64_t q_stride, int nh, int group, int64_t dim, float scale, float* s,
                 int64_t s_stride, bool accumulate, float* scratch) {
    transpose_tile_avx2(rows, row_pad, (n_rows + 7) / 8, scratch);
    // Positions n_rows .. round_up(n_rows, 16) of the transposed tile are read too: the rows
    // past n_rows are zero up to a multiple of 8; clear the rest of the last vector.
    const int nv = (n_rows + 15) / 16;
    const int filled = (n_rows + 7) / 8 * 8;
    if (filled < 16 * nv) {
        for (int64_t j = 0; j < row_pad; ++j) {
            std::fill(scratch + j * kTileRows + filled, scratch + j * kTileRows + 16 * nv, 0.0f);
        }
    }
    if (nv == 1) {
        token_score_nv<1>(scratch, q, q_stride, nh, group, dim, scale, s, s_stride, accumulate);
    } else {
        token_score_nv<2>(scratch, q, q_stride, nh, group, dim, scale, s, s_stride, accumulate);
    }
}

// ---- token layout straight from quantized rows: gathered columns, no row tile -------------
//
// Dequantizing a tile's rows and then transposing them costs more shuffles than the scores
// that follow (DBA q4_0: a quarter of the kernel). Here a vpgatherdd takes the same 4 code
// bytes of 16 rows at once, so a column of 16 positions is a shift, a table permute (q4_0) or
// a sign extension (q8_0), and the scale multiply: the same products q * d as the row tile.
// For groups of up to 8 query heads the columns feed the score FMAs from registers; larger
// groups store them as the transposed tile for token_score_nv.

// Lanes t < n of 16 rows, row_stride bytes apart: their byte offsets, and the valid lanes.
struct Lanes {
    __m512i offset;
    __mmask16 valid;
    int64_t first;   // bytes from the tile's first row to lane 0's
    int64_t stride;  // row_stride
};

inline Lanes tile_lanes(int64_t row_stride, int first, int n) {
    const __m512i t = _mm512_add_epi32(_mm512_set1_epi32(first), _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15));
    const int left = std::clamp(n - first, 0, 16);
    return {_mm512_mullo_epi32(t, _mm512_set1_epi32(static_cast<int32_t>(row_stride))),
            static_cast<__mmask16>((1u << left) - 1), first * row_stride, row_stride};
}

// Dwords 0-3 of the 16 bytes at `at` of all 16 lanes' rows (every lane valid) as w[0..3], lane
// r of w[j] being dword j of row r: 16 loads, three inserts a vector and a 4 x 4 transpose in
// each 128-bit lane (vector k holds rows k, 4 + k, 8 + k, 12 + k, so the transpose leaves the
// rows in lane order). The same bytes as four gather4 calls, which AMD Zen 5 runs slowly: a
// DBA call, one thread, 8k, us, gathers -> this: q4_0 216.7 -> 203.3, q8_0 252.4 -> 211.7.
inline void load4_rows(const uint8_t* at, const Lanes& lanes, __m512i* w) {
    const uint8_t* row0 = at + lanes.first;
    const int64_t st = lanes.stride;
    __m512i a[4];
    for (int k = 0; k < 4; ++k) {
        __m512i x = _mm512_castsi128_si512(load16_bytes(row0 + k * st));
        x = _mm512_inserti32x4(x, load16_bytes(row0 + (4 + k) * st), 1);
        x = _mm512_inserti32x4(x, load16_bytes(row0 + (8 + k) * st), 2);
        a[k] = _mm512_inserti32x4(x, load16_bytes(row0 + (12 + k) * st), 3);
    }
    const __m512i t0 = _mm512_unpacklo_epi32(a[0], a[1]), t1 = _mm512_unpackhi_epi32(a[0], a[1]);
    const __m512i t2 = _mm512_unpacklo_epi32(a[2], a[3]), t3 = _mm512_unpackhi_epi32(a[2], a[3]);
    w[0] = _mm512_unpacklo_epi64(t0, t2);
    w[1] = _mm512_unpackhi_epi64(t0, t2);
    w[2] = _mm512_unpacklo_epi64(t1, t3);
    w[3] = _mm512_unpackhi_epi64(t1, t3);
}

// 4 bytes at `at` of every valid lane's row (0 elsewhere).
inline __m512i gather4(const uint8_t* at, const Lanes& lanes) {
    return _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), lanes.valid, lanes.offset, at, 1);
}

// 16 code bytes at `at` of every lane as 4 dwords: transposed loads where all 16 lanes are
// rows, gathers (0 past the last row) otherwise.
inline void code_words(const uint8_t* at, const Lanes& lanes, __m512i* w) {
    if (lanes.valid == 0xFFFF) {
        load4_rows(at, lanes, w);
        return;
    }
    for (int j = 0; j < 4; ++j) w[j] = gather4(at + 4 * j, lanes);
}

// The fp16 scale at the start of each lane's block, as 16 floats (0 for invalid lanes).
inline __m512 gather_scales(const uint8_t* blk, const Lanes& lanes) {
    return _mm512_cvtph_ps(_mm512_cvtepi32_epi16(gather4(blk, lanes)));
}

// One block of 16 rows as 32 columns: column(e) is element e of every lane's block.
struct Q4Columns {
    static constexpr int kBytes = 18;
    __m512 d;
    __m512i w[4];  // code bytes 4j .. 4j+3: elements 4j+k (low nibbles), 16+4j+k (high)
    Q4Columns() = default;
    Q4Columns(const uint8_t* blk, const Lanes& lanes) : d(gather_scales(blk, lanes)) {
        code_words(blk + 2, lanes, w);
    }
    __m512 column(int e) const {  // vpermps reads only the low 4 bits of each index
        const int shift = e < 16 ? 8 * (e % 4) : 8 * (e % 4) + 4;
        const __m512i x = w[(e % 16) / 4];
        return _mm512_mul_ps(_mm512_permutexvar_ps(shift == 0 ? x : _mm512_srli_epi32(x, shift), q4_values()), d);
    }
};

struct Q8Columns {
    static constexpr int kBytes = 34;
    __m512 d;
    __m512i w[8];  // code bytes 4j .. 4j+3: elements 4j .. 4j+3
    Q8Columns() = default;
    Q8Columns(const uint8_t* blk, const Lanes& lanes) : d(gather_scales(blk, lanes)) {
        code_words(blk + 2, lanes, w);
        code_words(blk + 18, lanes, w + 4);
    }
    __m512 column(int e) const {  // byte e % 4 of each lane, sign-extended
        const __m512i x = w[e / 4];
        const __m512i q = _mm512_srai_epi32(e % 4 == 3 ? x : _mm512_slli_epi32(x, 24 - 8 * (e % 4)), 24);
        return _mm512_mul_ps(_mm512_cvtepi32_ps(q), d);
    }
};

// G query heads per KV head, NV vectors of 16 positions: each column is FMA'd into the
// scores of the G heads reading it as it is decoded (token_heads' arithmetic, same order).
template <class C, int G, int NV>
void scores_from_columns(const uint8_t* rows, const Lanes* lanes, int64_t blocks, const float* q,
                         int64_t q_stride, int64_t dim, float scale, float* s, int64_t s_stride,
                         bool accumulate) {
    __m512 acc[NV][G];
    for (int v = 0; v < NV; ++v)
        for (int h = 0; h < G; ++h) acc[v][h] = _mm512_setzero_ps();
    int64_t i = 0;     // the column's index within its KV head
    int64_t head = 0;  // first query head reading it
    for (int64_t b = 0; b < blocks; ++b) {
        const uint8_t* blk = rows + b * C::kBytes;
        C cols[NV];
        for (int v = 0; v < NV; ++v) cols[v] = C(blk, lanes[v]);
#pragma GCC unroll 32
        for (int e = 0; e < 32; ++e) {
            __m512 k[NV];
            for (int v = 0; v < NV; ++v) k[v] = cols[v].column(e);
            for (int h = 0; h < G; ++h) {
                const __m512 qi = _mm512_set1_ps(q[(head + h) * q_stride + i]);
                for (int v = 0; v < NV; ++v) acc[v][h] = _mm512_fmadd_ps(qi, k[v], acc[v][h]);
            }
            if (++i < dim) continue;
            const __m512 sc = _mm512_set1_ps(scale);
            for (int h = 0; h < G; ++h) {
                for (int v = 0; v < NV; ++v) {
                    float* dst = s + (head + h) * s_stride + 16 * v;
                    const __m512 x = _mm512_mul_ps(acc[v][h], sc);
                    _mm512_storeu_ps(dst, accumulate ? _mm512_add_ps(_mm512_loadu_ps(dst), x) : x);
                    acc[v][h] = _mm512_setzero_ps();
                }
            }
            i = 0;
            head += G;
        }
    }
}

// The transposed tile kt[e * kTileRows + t] of every column, for token_score_nv.
template <class C>
void store_columns(const uint8_t* rows, const Lanes* lanes, int nv, int64_t blocks, float* kt) {
    for (int v = 0; v < nv; ++v) {
        for (int64_t b = 0; b < blocks; ++b) {
            const C cols(rows + b * C::kBytes, lanes[v]);
            float* col = kt + b * 32 * kTileRows + 16 * v;
#pragma GCC unroll 32
            for (int e = 0; e < 32; ++e) _mm512_store_ps(col + e * kTileRows, cols.column(e));
        }
    }
}

using DirectFn = void (*)(const uint8_t*, const Lanes*, int64_t, const float*, int64_t, int64_t,
                          float, float*, int64_t, bool);

template <class C, int NV, size_t... I>
constexpr std::array<DirectFn, kMaxGroup> make_direct(std::index_sequence<I...>) {
    return {&scores_from_columns<C, int(I) + 1, NV>...};
}

template <class C>
void token_score_columns(const uint8_t* rows, int64_t row_stride, int n_rows, const float* q,
                         int64_t q_stride, int nh, int group, int64_t dim, float scale, float* s,
                         int64_t s_stride, bool accumulate, float* scratch) {
    static const std::array<DirectFn, kMaxGroup> one = make_direct<C, 1>(Seq{});
    static const std::array<DirectFn, kMaxGroup> two = make_direct<C, 2>(Seq{});
    const int64_t blocks = (nh / group) * dim / 32;  // q8_0 and q4_0: 32 values per block
    const int nv = (n_rows + 15) / 16;
    const Lanes lanes[2] = {tile_lanes(row_stride, 0, n_rows), tile_lanes(row_stride, 16, n_rows)};
    if (group <= kMaxGroup) {
        (nv == 1 ? one : two)[group - 1](rows, lanes, blocks, q, q_stride, dim, scale, s, s_stride, accumulate);
        return;
    }
    store_columns<C>(rows, lanes, nv, blocks, scratch);
    if (nv == 1) {
        token_score_nv<1>(scratch, q, q_stride, nh, group, dim, scale, s, s_stride, accumulate);
    } else {
        token_score_nv<2>(scratch, q, q_stride, nh, group, dim, scale, s, s_stride, accumulate);
    }
}

bool token_score_quant(caramba_format format, const uint8_t* rows, int64_t row_stride, int n_rows,
                       const float* q, int64_t q_stride, int nh, int group, int64_t dim, float scale,
                       float* s, int64_t s_stride, bool accumulate, float* scratch) {
    if (row_stride > std::numeric_limits<int32_t>::max() / kTileRows) return false;  // 32-bit offsets
    switch (format) {
        case CARAMBA_FORMAT_Q4_0:
            token_score_columns<Q4Columns>(rows, row_stride, n_rows, q, q_stride, nh, group, dim, scale, s, s_stride, accumulate, scratch);
            return true;
        case CARAMBA_FORMAT_Q8_0:
            token_score_columns<Q8Columns>(rows, row_stride, n_rows, q, q_stride, nh, group, dim, scale, s, s_stride, accumulate, scratch);
            return true;
        default: return false;
    }
}

// ---- row dequantization: the token path decodes its tiles with these ---------------------

template <class F>
void dequantize_blocks(const uint8_t* src, int64_t n, float* y) {
    for (int64_t i = 0; i < n / F::kElems; ++i) {
        const typename F::Block blk = F::prepare(src + i * F::kBytes);
        for (int st = 0; st < F::kStrips; ++st) _mm512_storeu_ps(y + i * F::kElems + 16 * st, F::strip(blk, st));
    }
}

void dequantize(caramba_format format, const uint8_t* src, int64_t n, float* y) {
    switch (format) {
        case CARAMBA_FORMAT_Q8_0: return dequantize_blocks<Q8>(src, n, y);
        case CARAMBA_FORMAT_Q4_0: return dequantize_blocks<Q4>(src, n, y);
        case CARAMBA_FORMAT_NF4: return dequantize_blocks<NF4>(src, n, y);
        default: return avx2_codec()->dequantize(format, src, n, y);
    }
}

}  // namespace

// AVX-512 dequantization (same products q * d as every path, so the same floats) beside the
// AVX2 quantizer.
const RowCodec* avx512_codec() {
    const RowCodec* avx2 = avx2_codec();
    if (avx2 == nullptr) return nullptr;
    static const RowCodec codec{avx2->quantize, dequantize};
    return &codec;
}

const AttentionKernels* avx512_attention_kernels() {
    const AttentionKernels* avx2 = avx2_attention_kernels();
    if (avx2 == nullptr) return nullptr;
    static const AttentionKernels kernels{score, value, softmax, token_score, token_score_quant};
    return &kernels;
}

}  // namespace caramba::detail

#else  // not compiled for AVX-512

namespace caramba::detail {
const AttentionKernels* avx512_attention_kernels() { return nullptr; }
const RowCodec* avx512_codec() { return nullptr; }
}  // namespace caramba::detail

#endif
