// Decode-attention driver: argument checks, split-K planning, the per-chunk online softmax and
// the log-sum-exp merge. The inner loops (scores, value accumulation) are the path's kernels.

#include <algorithm>
#include <cmath>
#include <exception>
#include <limits>
#include <memory>
#include <new>

#include "caramba/attention.h"
#include "internal.h"
#include "decode_checks.h"
#include "thread_pool.h"

namespace caramba::detail {
namespace {

constexpr int kMaxThreads = 256;
constexpr int64_t kMinChunk = 128;           // auto split-K never makes chunks shorter
// Multiply-adds below which auto uses 1 thread: waking a sleeping helper costs 50-100 us on a
// virtual machine. Measured on a 2-core Xeon VM, one thread is as fast or faster up to 3-4M
// (DBA at 1k tokens, 1.4M: 0.076 ms on one thread, 0.115 ms on two; GQA d128 at 256 tokens,
// 2.1M: 0.081 vs 0.101 ms; at 512 tokens, 4.2M, two threads are 10% faster).
constexpr double kSingleThreadWork = 1 << 22;
constexpr size_t kAlign = 64;

struct ScoreTerm {
    caramba_query_tensor q;
    caramba_kv_tensor k;
    float scale;
};

struct Plan {
    int threads = 1;
    int64_t splits = 1;
};

struct Layout {  // offsets in floats into the workspace
    size_t acc = 0, stats = 0, scratch = 0, scratch_stride = 0, total_bytes = 0;
    // token path, per thread: a tile of dequantized rows and its transpose, after the scores
    size_t rows = 0, kt = 0;
};

// ---- checks ------------------------------------------------------------------------------

bool mul_ok(size_t a, size_t b, size_t* out) {
    if (a != 0 && b > std::numeric_limits<size_t>::max() / a) return false;
    *out = a * b;
    return true;
}

size_t round_up(size_t n, size_t to) { return (n + to - 1) / to * to; }

// ---- planning ----------------------------------------------------------------------------

int requested_threads(const caramba_decode_params& p) {
    const int n = p.num_threads > 0 ? p.num_threads : caramba_default_num_threads();
    return std::max(1, std::min(n, kMaxThreads));
}

// The token path's work unit is a (batch, chunk): every KV head of a position is one row.
// `uniform`: every sequence has the same length (false gives the most splits, which the
// workspace query assumes).
Plan make_plan(const caramba_decode_params& p, int threads, int64_t max_len, bool token,
               bool uniform = false) {
    Plan plan;
    const int64_t units = token ? p.batch : p.batch * p.num_kv_heads;
    if (p.num_splits > 0) {
        plan.splits = std::min<int64_t>(p.num_splits, max_len);
    } else {
        // Enough chunks for ~4 per thread over ragged lengths (load balance), 2 over equal ones
        // (each chunk costs a few us of setup and merge: DBA q4_0 at 4k, one sequence, two
        // threads, us: 2 chunks 114, 4 chunks 118, 8 chunks 129), none tiny.
        const int64_t per_thread = uniform ? 2 : 4;
        const int64_t want = (per_thread * threads + units - 1) / units;
        const int64_t cap = std::max<int64_t>(1, (max_len + kMinChunk - 1) / kMinChunk);
        plan.splits = threads == 1 ? 1 : std::max<int64_t>(1, std::min(want, cap));
    }
    plan.threads = static_cast<int>(std::min<int64_t>(threads, units * plan.splits));
    return plan;
}

// widest_row > 0: the token path, with rows of up to widest_row floats.
bool make_layout(const caramba_decode_params& p, const Plan& plan, int64_t dv, int64_t widest_row,
                 Layout* out) {
    const bool token = widest_row > 0;
    const size_t group = static_cast<size_t>(token ? p.num_q_heads : p.num_q_heads / p.num_kv_heads);
    size_t rows = 0, acc = 0, stats = 0, scratch = 0, all = 0;
    if (!mul_ok(static_cast<size_t>(p.batch), static_cast<size_t>(p.num_q_heads), &rows)) return false;
    if (!mul_ok(rows, static_cast<size_t>(plan.splits), &rows)) return false;
    if (!mul_ok(rows, static_cast<size_t>(dv), &acc)) return false;
    if (!mul_ok(rows, 2, &stats)) return false;
    // Per thread: scores/probabilities (heads x tile); running max, sum, rescale (heads each);
    // token path: a tile of rows and its transpose.
    const size_t align = kAlign / sizeof(float);
    size_t tile = 0;
    if (token && !mul_ok(round_up(static_cast<size_t>(widest_row), 8), kTileRows, &tile)) return false;
    tile = round_up(tile, align);
    Layout l;
    l.rows = round_up(group * (kTileRows + 3), align);
    l.kt = l.rows + tile;
    const size_t per_thread = l.kt + tile;
    if (!mul_ok(per_thread, static_cast<size_t>(plan.threads), &scratch)) return false;
    l.acc = 0;
    l.stats = round_up(acc, kAlign / sizeof(float));
    l.scratch = l.stats + round_up(stats, kAlign / sizeof(float));
    l.scratch_stride = per_thread;
    all = l.scratch + scratch;
    if (!mul_ok(all, sizeof(float), &l.total_bytes)) return false;
    l.total_bytes += kAlign;  // room to align a caller's buffer
    *out = l;
    return true;
}

// ---- the work ----------------------------------------------------------------------------

struct Job {
    const AttentionKernels* kernels;
    const caramba_decode_params* p;
    ScoreTerm terms[2];
    int n_terms;
    caramba_kv_tensor v;
    const int32_t* lengths;
    caramba_output_tensor out;
    caramba_lse_tensor lse;
    int64_t group, splits, dv;
    float* ws;
    Layout layout;
    const RowCodec* codec;  // token path: dequantizes token-layout rows into the tile
};

bool is_token(const caramba_kv_tensor& t) { return raw(t.layout) == CARAMBA_KV_LAYOUT_TOKEN; }

// Asks for the rows of the next tile while this one is computed: a tile of quantized rows is
// a few KiB of DRAM per stream, and the score/value kernels otherwise wait on its first lines.
void prefetch_rows(const uint8_t* first, int64_t stride, int n, int64_t row_bytes) {
    if (n <= 0) return;
    constexpr int64_t kLine = 64;
    if (stride == row_bytes) {
        const int64_t bytes = n * row_bytes;
        for (int64_t off = 0; off < bytes; off += kLine) __builtin_prefetch(first + off, 0, 3);
        return;
    }
    for (int i = 0; i < n; ++i) {
        for (int64_t off = 0; off < row_bytes; off += kLine) __builtin_prefetch(first + i * stride + off, 0, 3);
    }
}

// Bytes of one row of t (the whole token row in the token layout).
int64_t row_bytes_of(const caramba_kv_tensor& t, int64_t num_kv_heads) {
    int64_t bytes = 0;
    caramba_row_bytes(t.format, raw(t.layout) == CARAMBA_KV_LAYOUT_TOKEN ? num_kv_heads * t.dim : t.dim,
                      &bytes);
    return bytes;
}

void run_chunk(void* ctx, int64_t item, int worker) {
    const Job& job = *static_cast<const Job*>(ctx);
    const caramba_decode_params& p = *job.p;
    const int64_t split = item % job.splits;
    const int64_t unit = item / job.splits;
    const int64_t hkv = unit % p.num_kv_heads;
    const int64_t b = unit / p.num_kv_heads;
    const int64_t G = job.group;
    const int ng = static_cast<int>(G);

    const int64_t len = job.lengths[b];
    const int64_t chunk = (len + job.splits - 1) / job.splits;
    const int64_t s0 = std::min(len, split * chunk);
    const int64_t s1 = std::min(len, s0 + chunk);

    const int64_t first_row = (b * p.num_q_heads + hkv * G) * job.splits + split;
    float* acc = job.ws + job.layout.acc + first_row * job.dv;
    const int64_t acc_stride = job.splits * job.dv;
    float* stats = job.ws + job.layout.stats + first_row * 2;
    const int64_t stats_stride = job.splits * 2;
    float* s = job.ws + job.layout.scratch + worker * job.layout.scratch_stride;
    float* m = s + G * kTileRows;
    float* l = m + G;
    float* alpha = l + G;

    for (int64_t g = 0; g < G; ++g) {
        std::fill(acc + g * acc_stride, acc + g * acc_stride + job.dv, 0.0f);
        m[g] = -std::numeric_limits<float>::infinity();
        l[g] = 0.0f;
    }

    const float* q_ptr[2];
    const uint8_t* k_ptr[2];
    for (int i = 0; i < job.n_terms; ++i) {
        const ScoreTerm& term = job.terms[i];
        q_ptr[i] = term.q.data + b * term.q.stride_b + hkv * G * term.q.stride_h;
        k_ptr[i] = static_cast<const uint8_t*>(term.k.data) + b * term.k.stride_b + hkv * term.k.stride_h;
    }
    const uint8_t* v_ptr = static_cast<const uint8_t*>(job.v.data) + b * job.v.stride_b + hkv * job.v.stride_h;
    int64_t k_bytes[2] = {0, 0};
    for (int i = 0; i < job.n_terms; ++i) k_bytes[i] = row_bytes_of(job.terms[i].k, p.num_kv_heads);
    const int64_t v_bytes = row_bytes_of(job.v, p.num_kv_heads);

    for (int64_t t0 = s0; t0 < s1; t0 += kTileRows) {
        const int n = static_cast<int>(std::min<int64_t>(kTileRows, s1 - t0));
        const int n_next = static_cast<int>(std::min<int64_t>(kTileRows, s1 - t0 - n));
        for (int i = 0; i < job.n_terms; ++i) {
            const caramba_kv_tensor& k = job.terms[i].k;
            prefetch_rows(k_ptr[i] + (t0 + n) * k.stride_s, k.stride_s, n_next, k_bytes[i]);
        }
        prefetch_rows(v_ptr + (t0 + n) * job.v.stride_s, job.v.stride_s, n_next, v_bytes);
        for (int i = 0; i < job.n_terms; ++i) {
            const ScoreTerm& term = job.terms[i];
            job.kernels->score(term.k.format, k_ptr[i] + t0 * term.k.stride_s, term.k.stride_s, n,
                               q_ptr[i], term.q.stride_h, ng, term.k.dim, term.scale, s, kTileRows,
                               i > 0);
        }
        // Online softmax: scores become probabilities relative to the running max, and the
        // accumulators are rescaled to that max.
        job.kernels->softmax(s, kTileRows, n, ng, m, l, alpha);
        for (int64_t g = 0; g < G; ++g) {
            if (alpha[g] == 1.0f) continue;
            float* a = acc + g * acc_stride;
            for (int64_t i = 0; i < job.dv; ++i) a[i] *= alpha[g];
        }
        job.kernels->value(job.v.format, v_ptr + t0 * job.v.stride_s, job.v.stride_s, n, s,
                           kTileRows, ng, job.dv, acc, acc_stride);
    }
    for (int64_t g = 0; g < G; ++g) {
        stats[g * stats_stride] = m[g];
        stats[g * stats_stride + 1] = l[g];
    }
}

// Dequantizes rows t0 .. t0+n-1 of a token-layout tensor (base = its batch's first row) into
// rows (row_pad floats apart), zero-filling past row_elems and up to round_up(n, 8) rows.
void fill_tile(const RowCodec& codec, const caramba_kv_tensor& t, const uint8_t* base, int64_t t0,
               int n, int64_t row_elems, int64_t row_pad, int64_t row_bytes, float* rows) {
    if (row_elems == row_pad && t.stride_s == row_bytes) {
        // Contiguous rows without padding: one call decodes the tile (n rows of whole blocks).
        codec.dequantize(t.format, base + t0 * t.stride_s, n * row_elems, rows);
    } else {
        for (int i = 0; i < n; ++i) {
            float* dst = rows + i * row_pad;
            codec.dequantize(t.format, base + (t0 + i) * t.stride_s, row_elems, dst);
            std::fill(dst + row_elems, dst + row_pad, 0.0f);
        }
    }
    const int n_pad = (n + 7) / 8 * 8;
    std::fill(rows + n * row_pad, rows + n_pad * row_pad, 0.0f);
}

// One (batch, chunk) when some tensor is in the token layout: each position's rows are
// dequantized once (token layout) or read in place (head layout), for all query heads.
void run_chunk_token(void* ctx, int64_t item, int worker) {
    const Job& job = *static_cast<const Job*>(ctx);
    const caramba_decode_params& p = *job.p;
    const int64_t split = item % job.splits;
    const int64_t b = item / job.splits;
    const int64_t Hq = p.num_q_heads, Hkv = p.num_kv_heads, G = job.group;
    const int nh = static_cast<int>(Hq), ng = static_cast<int>(G);

    const int64_t len = job.lengths[b];
    const int64_t chunk = (len + job.splits - 1) / job.splits;
    const int64_t s0 = std::min(len, split * chunk);
    const int64_t s1 = std::min(len, s0 + chunk);

    const int64_t first_row = b * Hq * job.splits + split;
    float* acc = job.ws + job.layout.acc + first_row * job.dv;
    const int64_t acc_stride = job.splits * job.dv;
    float* stats = job.ws + job.layout.stats + first_row * 2;
    const int64_t stats_stride = job.splits * 2;
    float* scratch = job.ws + job.layout.scratch + worker * job.layout.scratch_stride;
    float* s = scratch;
    float* m = s + Hq * kTileRows;
    float* l = m + Hq;
    float* alpha = l + Hq;
    float* rows = scratch + job.layout.rows;
    float* kt = scratch + job.layout.kt;

    for (int64_t h = 0; h < Hq; ++h) {
        std::fill(acc + h * acc_stride, acc + h * acc_stride + job.dv, 0.0f);
        m[h] = -std::numeric_limits<float>::infinity();
        l[h] = 0.0f;
    }

    const float* q_ptr[2];
    const uint8_t* k_ptr[2];
    for (int i = 0; i < job.n_terms; ++i) {
        const ScoreTerm& term = job.terms[i];
        q_ptr[i] = term.q.data + b * term.q.stride_b;
        k_ptr[i] = static_cast<const uint8_t*>(term.k.data) + b * term.k.stride_b;
    }
    const uint8_t* v_ptr = static_cast<const uint8_t*>(job.v.data) + b * job.v.stride_b;
    const int64_t v_elems = Hkv * job.dv, v_pad = (v_elems + 7) / 8 * 8;
    int64_t k_bytes[2] = {0, 0};
    for (int i = 0; i < job.n_terms; ++i) k_bytes[i] = row_bytes_of(job.terms[i].k, Hkv);
    const int64_t v_bytes = row_bytes_of(job.v, Hkv);

    for (int64_t t0 = s0; t0 < s1; t0 += kTileRows) {
        const int n = static_cast<int>(std::min<int64_t>(kTileRows, s1 - t0));
        const int n_next = static_cast<int>(std::min<int64_t>(kTileRows, s1 - t0 - n));
        for (int i = 0; i < job.n_terms; ++i) {
            const caramba_kv_tensor& k = job.terms[i].k;
            if (is_token(k)) {
                prefetch_rows(k_ptr[i] + (t0 + n) * k.stride_s, k.stride_s, n_next, k_bytes[i]);
            } else {
                for (int64_t g = 0; g < Hkv; ++g) {
                    prefetch_rows(k_ptr[i] + g * k.stride_h + (t0 + n) * k.stride_s, k.stride_s, n_next, k_bytes[i]);
                }
            }
        }
        for (int64_t g = 0; g < (is_token(job.v) ? 1 : Hkv); ++g) {
            prefetch_rows(v_ptr + g * job.v.stride_h + (t0 + n) * job.v.stride_s, job.v.stride_s, n_next, v_bytes);
        }
        for (int i = 0; i < job.n_terms; ++i) {
            const ScoreTerm& term = job.terms[i];
            const int64_t d = term.k.dim;
            if (is_token(term.k)) {
                const auto direct = job.kernels->token_score_quant;
                if (direct != nullptr &&
                    direct(term.k.format, k_ptr[i] + t0 * term.k.stride_s, term.k.stride_s, n, q_ptr[i],
                           term.q.stride_h, nh, ng, d, term.scale, s, kTileRows, i > 0, kt)) {
                    continue;
                }
                const int64_t elems = Hkv * d, pad = (elems + 7) / 8 * 8;
                fill_tile(*job.codec, term.k, k_ptr[i], t0, n, elems, pad, k_bytes[i], rows);
                job.kernels->token_score(rows, pad, n, q_ptr[i], term.q.stride_h, nh, ng, d,
                                         term.scale, s, kTileRows, i > 0, kt);
            } else {
                for (int64_t g = 0; g < Hkv; ++g) {
                    job.kernels->score(term.k.format, k_ptr[i] + g * term.k.stride_h + t0 * term.k.stride_s,
                                       term.k.stride_s, n, q_ptr[i] + g * G * term.q.stride_h,
                                       term.q.stride_h, ng, d, term.scale, s + g * G * kTileRows,
                                       kTileRows, i > 0);
                }
            }
        }
        job.kernels->softmax(s, kTileRows, n, nh, m, l, alpha);
        for (int64_t h = 0; h < Hq; ++h) {
            if (alpha[h] == 1.0f) continue;
            float* a = acc + h * acc_stride;
            for (int64_t i = 0; i < job.dv; ++i) a[i] *= alpha[h];
        }
        if (is_token(job.v)) {
            fill_tile(*job.codec, job.v, v_ptr, t0, n, v_elems, v_pad, v_bytes, rows);
            for (int64_t g = 0; g < Hkv; ++g) {
                job.kernels->value(CARAMBA_FORMAT_F32, reinterpret_cast<const uint8_t*>(rows + g * job.dv),
                                   v_pad * static_cast<int64_t>(sizeof(float)), n, s + g * G * kTileRows,
                                   kTileRows, ng, job.dv, acc + g * G * acc_stride, acc_stride);
            }
        } else {
            for (int64_t g = 0; g < Hkv; ++g) {
                job.kernels->value(job.v.format, v_ptr + g * job.v.stride_h + t0 * job.v.stride_s,
                                   job.v.stride_s, n, s + g * G * kTileRows, kTileRows, ng, job.dv,
                                   acc + g * G * acc_stride, acc_stride);
            }
        }
    }
    for (int64_t h = 0; h < Hq; ++h) {
        stats[h * stats_stride] = m[h];
        stats[h * stats_stride + 1] = l[h];
    }
}

void merge_row(void* ctx, int64_t row, int /*worker*/) {
    const Job& job = *static_cast<const Job*>(ctx);
    const caramba_decode_params& p = *job.p;
    const int64_t b = row / p.num_q_heads;
    const int64_t h = row % p.num_q_heads;
    const float* acc = job.ws + job.layout.acc + row * job.splits * job.dv;
    const float* stats = job.ws + job.layout.stats + row * job.splits * 2;
    float* out = job.out.data + b * job.out.stride_b + h * job.out.stride_h;

    float m_max = -std::numeric_limits<float>::infinity();
    for (int64_t i = 0; i < job.splits; ++i) {
        if (stats[2 * i + 1] > 0.0f) m_max = std::max(m_max, stats[2 * i]);
    }
    float total = 0.0f;
    std::fill(out, out + job.dv, 0.0f);
    for (int64_t i = 0; i < job.splits; ++i) {
        if (!(stats[2 * i + 1] > 0.0f)) continue;  // an empty chunk past this sequence's end
        const float w = std::exp(stats[2 * i] - m_max);
        total += stats[2 * i + 1] * w;
        const float* a = acc + i * job.dv;
        for (int64_t j = 0; j < job.dv; ++j) out[j] += w * a[j];
    }
    const float inv = 1.0f / total;
    for (int64_t j = 0; j < job.dv; ++j) out[j] *= inv;
    if (job.lse.data != nullptr) {
        job.lse.data[b * job.lse.stride_b + h * job.lse.stride_h] = m_max + std::log(total);
    }
}

caramba_status decode(const caramba_decode_params* params, const ScoreTerm* terms, int n_terms,
                      const caramba_kv_tensor& v, const int32_t* lengths,
                      const caramba_output_tensor& out, const caramba_lse_tensor& lse) {
    caramba_status st = check_params(params);
    if (st.code != CARAMBA_OK) return st;
    const caramba_decode_params& p = *params;
    static const char* const q_names[2][2] = {{"q", "q"}, {"q_sem", "q_geo"}};
    static const char* const k_names[2][2] = {{"k", "k"}, {"k_sem", "k_geo"}};
    Span spans[7];
    int n_spans = 0;
    for (int i = 0; i < n_terms; ++i) {
        const char* qn = q_names[n_terms - 1][i];
        const char* kn = k_names[n_terms - 1][i];
        st = check_query(qn, terms[i].q, p.batch, p.num_q_heads, &spans[n_spans++]);
        if (st.code != CARAMBA_OK) return st;
        st = check_kv(kn, terms[i].k, terms[i].q.dim, p, &spans[n_spans++]);
        if (st.code != CARAMBA_OK) return st;
        if (!std::isfinite(terms[i].scale)) {
            return make_status(CARAMBA_ERR_INVALID_ARGUMENT, "%s must be finite",
                               n_terms == 1 ? "scale" : (i == 0 ? "scale_sem" : "scale_geo"));
        }
    }
    st = check_kv("v", v, -1, p, &spans[n_spans++]);
    if (st.code != CARAMBA_OK) return st;
    Span out_span{nullptr, nullptr};
    st = check_output(out, v.dim, p, &out_span);
    if (st.code != CARAMBA_OK) return st;
    if (lengths == nullptr) return make_status(CARAMBA_ERR_INVALID_ARGUMENT, "lengths is NULL");
    spans[n_spans].lo = reinterpret_cast<const char*>(lengths);
    spans[n_spans++].hi = reinterpret_cast<const char*>(lengths + p.batch);
    static const char* const span_names[2][7] = {{"q", "k", "v", "lengths", "", "", ""},
                                                 {"q_sem", "k_sem", "q_geo", "k_geo", "v", "lengths", ""}};
    for (int i = 0; i < n_spans; ++i) {
        if (overlaps(out_span, spans[i])) {
            return make_status(CARAMBA_ERR_INVALID_ARGUMENT, "out overlaps %s in memory",
                               span_names[n_terms - 1][i]);
        }
    }
    if (lse.data != nullptr) {
        Span lse_span{nullptr, nullptr};
        st = check_lse(lse, p, &lse_span);
        if (st.code != CARAMBA_OK) return st;
        if (overlaps(lse_span, out_span)) {
            return make_status(CARAMBA_ERR_INVALID_ARGUMENT, "lse overlaps out in memory");
        }
        for (int i = 0; i < n_spans; ++i) {
            if (overlaps(lse_span, spans[i])) {
                return make_status(CARAMBA_ERR_INVALID_ARGUMENT, "lse overlaps %s in memory",
                                   span_names[n_terms - 1][i]);
            }
        }
    }
    int64_t max_len = 0;
    bool uniform = true;
    double work = 0.0;
    for (int64_t b = 0; b < p.batch; ++b) {
        if (lengths[b] < 1 || lengths[b] > p.max_seq_len) {
            return make_status(CARAMBA_ERR_INVALID_ARGUMENT,
                               "lengths[%lld] = %d is outside [1, max_seq_len = %lld]",
                               static_cast<long long>(b), lengths[b],
                               static_cast<long long>(p.max_seq_len));
        }
        max_len = std::max<int64_t>(max_len, lengths[b]);
        uniform = uniform && lengths[b] == lengths[0];
        work += static_cast<double>(lengths[b]);
    }
    int64_t dk_total = 0;
    int64_t widest_row = 0;  // > 0: some tensor is in the token layout
    for (int i = 0; i < n_terms; ++i) {
        dk_total += terms[i].k.dim;
        if (is_token(terms[i].k)) widest_row = std::max(widest_row, p.num_kv_heads * terms[i].k.dim);
    }
    if (is_token(v)) widest_row = std::max(widest_row, p.num_kv_heads * v.dim);
    work *= static_cast<double>(p.num_q_heads) * static_cast<double>(dk_total + v.dim);

    const AttentionKernels* kernels = path_attention_kernels(p.path);
    const RowCodec* codec = path_codec(p.path);
    if (kernels == nullptr || codec == nullptr) {
        return make_status(CARAMBA_ERR_UNSUPPORTED,
                           "path=%s: not available on this CPU/build (best SIMD here: %s)",
                           path_name(p.path), simd_isa_name());
    }

    const bool token = widest_row > 0;
    int threads = requested_threads(p);
    if (p.num_threads == 0 && work < kSingleThreadWork) threads = 1;
    const Plan plan = make_plan(p, threads, max_len, token, uniform);
    Layout layout;
    if (!make_layout(p, plan, v.dim, widest_row, &layout)) {
        return make_status(CARAMBA_ERR_INVALID_ARGUMENT, "shapes too large: workspace size overflows");
    }

    std::unique_ptr<char[]> owned;
    char* base = static_cast<char*>(p.workspace);
    size_t have = p.workspace_bytes;
    if (base == nullptr) {
        owned.reset(new (std::nothrow) char[layout.total_bytes]);
        if (!owned) {
            return make_status(CARAMBA_ERR_OUT_OF_MEMORY, "cannot allocate %zu bytes of workspace",
                               layout.total_bytes);
        }
        base = owned.get();
        have = layout.total_bytes;
    }
    if (have < layout.total_bytes) {
        return make_status(CARAMBA_ERR_INVALID_ARGUMENT,
                           "workspace holds %zu bytes, this call needs %zu", have, layout.total_bytes);
    }
    const size_t misalign = reinterpret_cast<uintptr_t>(base) % kAlign;
    float* ws = reinterpret_cast<float*>(base + (misalign ? kAlign - misalign : 0));

    Job job{kernels, &p, {}, n_terms, v, lengths, out, lse, p.num_q_heads / p.num_kv_heads,
            plan.splits, v.dim, ws, layout, codec};
    for (int i = 0; i < n_terms; ++i) job.terms[i] = terms[i];

    ThreadPool& pool = ThreadPool::instance();
    const int64_t units = token ? p.batch : p.batch * p.num_kv_heads;
    pool.run(plan.threads, units * plan.splits, token ? run_chunk_token : run_chunk, &job);
    const int64_t rows = p.batch * p.num_q_heads;
    const int merge_threads = plan.splits > 1 && rows * plan.splits * v.dim > (1 << 16) ? plan.threads : 1;
    pool.run(merge_threads, rows, merge_row, &job);
    return ok_status();
}

template <class F>
caramba_status guarded(F&& f) {
    try {
        return f();
    } catch (const std::bad_alloc&) {
        return make_status(CARAMBA_ERR_OUT_OF_MEMORY, "out of memory");
    } catch (const std::exception& e) {
        return make_status(CARAMBA_ERR_INTERNAL, "%s", e.what());
    } catch (...) {
        return make_status(CARAMBA_ERR_INTERNAL, "unknown C++ exception");
    }
}

}  // namespace
}  // namespace caramba::detail

using namespace caramba::detail;

extern "C" {

void caramba_decode_params_init(caramba_decode_params* params) {
    if (params == nullptr) return;
    *params = caramba_decode_params{};
    params->path = CARAMBA_PATH_AUTO;
}

caramba_status caramba_decode_workspace_bytes(const caramba_decode_params* params, int64_t dv,
                                              size_t* bytes) {
    return caramba_decode_workspace_bytes_ex(params, dv, 0, bytes);
}

caramba_status caramba_decode_workspace_bytes_ex(const caramba_decode_params* params, int64_t dv,
                                                 int64_t widest_row, size_t* bytes) {
    return guarded([&] {
        caramba_status st = check_params(params);
        if (st.code != CARAMBA_OK) return st;
        if (bytes == nullptr) return make_status(CARAMBA_ERR_INVALID_ARGUMENT, "bytes is NULL");
        if (dv < 1) return make_status(CARAMBA_ERR_INVALID_ARGUMENT, "dv must be >= 1");
        if (widest_row < 0) {
            return make_status(CARAMBA_ERR_INVALID_ARGUMENT, "widest_row must be >= 0 (0 = head layout only)");
        }
        const Plan plan = make_plan(*params, requested_threads(*params), params->max_seq_len, widest_row > 0);
        Layout layout;
        if (!make_layout(*params, plan, dv, widest_row, &layout)) {
            return make_status(CARAMBA_ERR_INVALID_ARGUMENT, "shapes too large: workspace size overflows");
        }
        *bytes = layout.total_bytes;
        return ok_status();
    });
}

caramba_status caramba_decode_attention(const caramba_decode_params* params,
                                        caramba_query_tensor q, caramba_kv_tensor k,
                                        caramba_kv_tensor v, const int32_t* lengths, float scale,
                                        caramba_output_tensor out) {
    return guarded([&] {
        const ScoreTerm term{q, k, scale};
        return decode(params, &term, 1, v, lengths, out, caramba_lse_tensor{nullptr, 0, 0});
    });
}

caramba_status caramba_decode_attention_lse(const caramba_decode_params* params,
                                            caramba_query_tensor q, caramba_kv_tensor k,
                                            caramba_kv_tensor v, const int32_t* lengths, float scale,
                                            caramba_output_tensor out, caramba_lse_tensor lse) {
    return guarded([&] {
        const ScoreTerm term{q, k, scale};
        return decode(params, &term, 1, v, lengths, out, lse);
    });
}

caramba_status caramba_dba_decode_attention(const caramba_decode_params* params,
                                            caramba_query_tensor q_sem, caramba_query_tensor q_geo,
                                            caramba_kv_tensor k_sem, caramba_kv_tensor k_geo,
                                            caramba_kv_tensor v, const int32_t* lengths,
                                            float scale_sem, float scale_geo,
                                            caramba_output_tensor out) {
    return guarded([&] {
        const ScoreTerm terms[2] = {{q_sem, k_sem, scale_sem}, {q_geo, k_geo, scale_geo}};
        return decode(params, terms, 2, v, lengths, out, caramba_lse_tensor{nullptr, 0, 0});
    });
}

caramba_status caramba_dba_decode_attention_lse(const caramba_decode_params* params,
                                                caramba_query_tensor q_sem, caramba_query_tensor q_geo,
                                                caramba_kv_tensor k_sem, caramba_kv_tensor k_geo,
                                                caramba_kv_tensor v, const int32_t* lengths,
                                                float scale_sem, float scale_geo,
                                                caramba_output_tensor out, caramba_lse_tensor lse) {
    return guarded([&] {
        const ScoreTerm terms[2] = {{q_sem, k_sem, scale_sem}, {q_geo, k_geo, scale_geo}};
        return decode(params, terms, 2, v, lengths, out, lse);
    });
}

}  // extern "C"
