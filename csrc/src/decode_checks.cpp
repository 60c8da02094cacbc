// Argument checks for the decode entry points (see decode_checks.h).

#include "decode_checks.h"

#include <cstdint>
#include <utility>

#include "internal.h"

namespace caramba::detail {

caramba_status check_params(const caramba_decode_params* p) {
    if (p == nullptr) return make_status(CARAMBA_ERR_INVALID_ARGUMENT, "params must be non-null");
    if (p->batch < 1) {
        return make_status(CARAMBA_ERR_INVALID_ARGUMENT, "batch must be >= 1, got %lld",
                           static_cast<long long>(p->batch));
    }
    if (p->num_q_heads < 1 || p->num_kv_heads < 1) {
        return make_status(CARAMBA_ERR_INVALID_ARGUMENT,
                           "num_q_heads and num_kv_heads must be >= 1, got %lld and %lld",
                           static_cast<long long>(p->num_q_heads),
                           static_cast<long long>(p->num_kv_heads));
    }
    if (p->num_q_heads % p->num_kv_heads != 0) {
        return make_status(CARAMBA_ERR_INVALID_ARGUMENT,
                           "num_q_heads (%lld) must be a multiple of num_kv_heads (%lld)",
                           static_cast<long long>(p->num_q_heads),
                           static_cast<long long>(p->num_kv_heads));
    }
    if (p->max_seq_len < 1) {
        return make_status(CARAMBA_ERR_INVALID_ARGUMENT, "max_seq_len must be >= 1, got %lld",
                           static_cast<long long>(p->max_seq_len));
    }
    if (p->num_splits < 0 || p->num_threads < 0) {
        return make_status(CARAMBA_ERR_INVALID_ARGUMENT,
                           "num_splits and num_threads must be >= 0 (0 = auto), got %d and %d",
                           p->num_splits, p->num_threads);
    }
    if (path_name(raw(p->path)) == nullptr) {
        return make_status(CARAMBA_ERR_INVALID_ARGUMENT, "path: unknown value %d", raw(p->path));
    }
    if (p->workspace == nullptr && p->workspace_bytes != 0) {
        return make_status(CARAMBA_ERR_INVALID_ARGUMENT, "workspace_bytes is set but workspace is NULL");
    }
    return ok_status();
}

caramba_status check_query(const char* name, const caramba_query_tensor& t, int64_t batch,
                           int64_t heads, Span* span) {
    if (t.data == nullptr) return make_status(CARAMBA_ERR_INVALID_ARGUMENT, "%s: data is NULL", name);
    if (t.dim < 1) {
        return make_status(CARAMBA_ERR_INVALID_ARGUMENT, "%s: dim must be >= 1, got %lld", name,
                           static_cast<long long>(t.dim));
    }
    if (t.stride_b < 0 || t.stride_h < 0) {
        return make_status(CARAMBA_ERR_INVALID_ARGUMENT, "%s: strides must be >= 0", name);
    }
    const int64_t last = (batch - 1) * t.stride_b + (heads - 1) * t.stride_h + t.dim;
    span->lo = reinterpret_cast<const char*>(t.data);
    span->hi = span->lo + last * static_cast<int64_t>(sizeof(float));
    return ok_status();
}

caramba_status check_kv(const char* name, const caramba_kv_tensor& t, int64_t expect_dim,
                        const caramba_decode_params& p, Span* span) {
    if (t.data == nullptr) return make_status(CARAMBA_ERR_INVALID_ARGUMENT, "%s: data is NULL", name);
    if (raw(t.format) < 0 || raw(t.format) >= CARAMBA_FORMAT_COUNT) {
        return make_status(CARAMBA_ERR_INVALID_ARGUMENT, "%s: unknown format %d", name, raw(t.format));
    }
    if (expect_dim >= 0 && t.dim != expect_dim) {
        return make_status(CARAMBA_ERR_INVALID_ARGUMENT,
                           "%s: dim %lld does not match the query's %lld", name,
                           static_cast<long long>(t.dim), static_cast<long long>(expect_dim));
    }
    const int layout = raw(t.layout);
    if (layout != CARAMBA_KV_LAYOUT_HEAD && layout != CARAMBA_KV_LAYOUT_TOKEN) {
        return make_status(CARAMBA_ERR_INVALID_ARGUMENT, "%s: unknown layout %d", name, layout);
    }
    const bool token = layout == CARAMBA_KV_LAYOUT_TOKEN;
    if (t.dim < 1) {
        return make_status(CARAMBA_ERR_INVALID_ARGUMENT, "%s: dim must be >= 1, got %lld", name,
                           static_cast<long long>(t.dim));
    }
    if (token && t.dim > INT64_MAX / p.num_kv_heads) {
        return make_status(CARAMBA_ERR_INVALID_ARGUMENT, "%s: num_kv_heads * dim overflows", name);
    }
    // Token layout: one row holds every KV head's dim values (head g at [g*dim, (g+1)*dim)).
    const int64_t row_elems = token ? p.num_kv_heads * t.dim : t.dim;
    int64_t row_bytes = 0;
    caramba_status st = caramba_row_bytes(t.format, row_elems, &row_bytes);
    if (st.code != CARAMBA_OK) {
        return make_status(CARAMBA_ERR_INVALID_ARGUMENT, "%s: %s%s", name,
                           token ? "token-layout row (num_kv_heads * dim values): " : "", st.message);
    }
    if (t.stride_b < 0 || t.stride_h < 0 || t.stride_s < 0) {
        return make_status(CARAMBA_ERR_INVALID_ARGUMENT, "%s: strides must be >= 0", name);
    }
    const int64_t last = (p.batch - 1) * t.stride_b + (token ? 0 : (p.num_kv_heads - 1) * t.stride_h) +
                         (p.max_seq_len - 1) * t.stride_s + row_bytes;
    span->lo = static_cast<const char*>(t.data);
    span->hi = span->lo + last;
    return ok_status();
}

caramba_status check_lse(const caramba_lse_tensor& t, const caramba_decode_params& p, Span* span) {
    if (t.stride_b < 0 || t.stride_h < 0) {
        return make_status(CARAMBA_ERR_INVALID_ARGUMENT, "lse: strides must be >= 0");
    }
    // Entries are written concurrently: distinct (b, h) must be distinct floats.
    int64_t s_in = t.stride_h, n_in = p.num_q_heads, s_out = t.stride_b, n_out = p.batch;
    if (s_in > s_out) {
        std::swap(s_in, s_out);
        std::swap(n_in, n_out);
    }
    const bool inner_ok = n_in == 1 || s_in >= 1;
    const int64_t inner_extent = n_in == 1 ? 1 : (n_in - 1) * s_in + 1;
    if (!inner_ok || !(n_out == 1 || s_out >= inner_extent)) {
        return make_status(CARAMBA_ERR_INVALID_ARGUMENT, "lse: strides (%lld, %lld) make entries overlap",
                           static_cast<long long>(t.stride_b), static_cast<long long>(t.stride_h));
    }
    const int64_t last = (p.batch - 1) * t.stride_b + (p.num_q_heads - 1) * t.stride_h + 1;
    span->lo = reinterpret_cast<const char*>(t.data);
    span->hi = span->lo + last * static_cast<int64_t>(sizeof(float));
    return ok_status();
}

caramba_status check_output(const caramba_output_tensor& o, int64_t dv,
                            const caramba_decode_params& p, Span* span) {
    if (o.data == nullptr) return make_status(CARAMBA_ERR_INVALID_ARGUMENT, "out: data is NULL");
    if (o.dim != dv) {
        return make_status(CARAMBA_ERR_INVALID_ARGUMENT,
                           "out: dim %lld does not match the value dim %lld",
                           static_cast<long long>(o.dim), static_cast<long long>(dv));
    }
    if (o.stride_b < 0 || o.stride_h < 0) {
        return make_status(CARAMBA_ERR_INVALID_ARGUMENT, "out: strides must be >= 0");
    }
    // Sort the two outer axes by stride; each must step over everything inside it.
    int64_t s_in = o.stride_h, n_in = p.num_q_heads, s_out = o.stride_b, n_out = p.batch;
    if (s_in > s_out) {
        std::swap(s_in, s_out);
        std::swap(n_in, n_out);
    }
    const bool inner_ok = n_in == 1 || s_in >= o.dim;
    const int64_t inner_extent = n_in == 1 ? o.dim : (n_in - 1) * s_in + o.dim;
    const bool outer_ok = n_out == 1 || s_out >= inner_extent;
    if (!inner_ok || !outer_ok) {
        return make_status(CARAMBA_ERR_INVALID_ARGUMENT,
                           "out: strides (%lld, %lld) make output rows overlap",
                           static_cast<long long>(o.stride_b), static_cast<long long>(o.stride_h));
    }
    const int64_t last = (p.batch - 1) * o.stride_b + (p.num_q_heads - 1) * o.stride_h + o.dim;
    span->lo = reinterpret_cast<const char*>(o.data);
    span->hi = span->lo + last * static_cast<int64_t>(sizeof(float));
    return ok_status();
}

}  // namespace caramba::detail
