// Argument checks and launch plans of the Metal kernels: everything the host decides.
//
// Plain C++17 with no Metal types, so that the host glue (caramba_metal.mm) and the CPU
// harness (metal/shim/harness.cpp) run the very same code: on Linux the harness checks these
// plans by running the kernels over exactly the grids they describe.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdarg>
#include <cstdint>
#include <cstdio>

#include "../kernels/params.h"
#include "caramba_metal.h"

namespace caramba::metal {

static_assert(CARAMBA_METAL_F32 == CARAMBA_FORMAT_F32 && CARAMBA_METAL_F16 == CARAMBA_FORMAT_F16 &&
                  CARAMBA_METAL_Q8_0 == CARAMBA_FORMAT_Q8_0 &&
                  CARAMBA_METAL_Q4_0 == CARAMBA_FORMAT_Q4_0 && CARAMBA_METAL_NF4 == CARAMBA_FORMAT_NF4,
              "the shaders number formats as caramba_format does");

constexpr int64_t kAutoThreadgroups = 256; // auto split-K aims for at least this many groups
constexpr int64_t kMinChunk = 64;          // ... but never chunks shorter than this
constexpr int64_t kMaxSplits = 256;
constexpr int64_t kMaxU32 = 0xffffffffLL;

inline caramba_status ok() {
    caramba_status s;
    s.code = CARAMBA_OK;
    s.message[0] = '\0';
    return s;
}

inline caramba_status vstatus(caramba_status_code code, const char* fmt, va_list args) {
    caramba_status s;
    s.code = code;
    std::vsnprintf(s.message, sizeof(s.message), fmt, args);
    return s;
}

#if defined(__GNUC__) || defined(__clang__)
#define CARAMBA_METAL_PRINTF(i, j) __attribute__((format(printf, i, j)))
#else
#define CARAMBA_METAL_PRINTF(i, j)
#endif

CARAMBA_METAL_PRINTF(2, 3)
inline caramba_status status(caramba_status_code code, const char* fmt, ...) {
    va_list args;
    va_start(args, fmt);
    const caramba_status s = vstatus(code, fmt, args);
    va_end(args);
    return s;
}

CARAMBA_METAL_PRINTF(1, 2)
inline caramba_status invalid(const char* fmt, ...) {
    va_list args;
    va_start(args, fmt);
    const caramba_status s = vstatus(CARAMBA_ERR_INVALID_ARGUMENT, fmt, args);
    va_end(args);
    return s;
}

inline const char* format_name(int f) {
    static const char* const names[] = {"f32", "f16", "q8_0", "q4_0", "nf4"};
    return f >= 0 && f < 5 ? names[f] : "?";
}

// A row of `dim` values in `format`: checks the width, returns its bytes.
inline caramba_status check_row(const char* what, caramba_format format, int64_t dim,
                                uint32_t* row_bytes) {
    const int f = static_cast<int>(format);
    if (f < 0 || f > CARAMBA_METAL_NF4) return invalid("%s: unknown format %d", what, f);
    const int64_t block = caramba_metal_block_elems(f);
    if (dim <= 0 || dim % block) {
        return invalid("%s: row width %lld is not a positive multiple of the %s block size %lld",
                       what, static_cast<long long>(dim), format_name(f),
                       static_cast<long long>(block));
    }
    const int64_t bytes = dim / block * caramba_metal_block_bytes(f);
    if (bytes > kMaxU32) return invalid("%s: rows of %lld values are too wide", what, (long long)dim);
    *row_bytes = static_cast<uint32_t>(bytes);
    return ok();
}

inline caramba_status check_count(const char* what, int64_t n) {
    if (n < 1 || n > kMaxU32) {
        return invalid("%s: expected a count in [1, 2^32), got %lld", what, static_cast<long long>(n));
    }
    return ok();
}

#define CARAMBA_METAL_TRY(expr)                    \
    do {                                           \
        caramba_status _s = (expr);                \
        if (_s.code != CARAMBA_OK) return _s;      \
    } while (0)

// caramba_quantize_rows / caramba_dequantize_rows: grid (dim / block_elems or dim, num_rows).
inline caramba_status plan_rows(caramba_format format, int64_t num_rows, int64_t dim,
                                caramba_metal_rows_args* args) {
    CARAMBA_METAL_TRY(check_count("num_rows", num_rows));
    uint32_t row_bytes = 0;
    CARAMBA_METAL_TRY(check_row("dim", format, dim, &row_bytes));
    args->num_rows = static_cast<uint32_t>(num_rows);
    args->dim = static_cast<uint32_t>(dim);
    args->row_bytes = row_bytes;
    return ok();
}

// caramba_append: grid (dim / block_elems, num_heads, batch).
inline caramba_status plan_append(caramba_format format, int64_t batch, int64_t num_heads,
                                  int64_t max_seq_len, int64_t dim,
                                  caramba_metal_append_args* args) {
    CARAMBA_METAL_TRY(check_count("batch", batch));
    CARAMBA_METAL_TRY(check_count("num_heads", num_heads));
    CARAMBA_METAL_TRY(check_count("max_seq_len", max_seq_len));
    uint32_t row_bytes = 0;
    CARAMBA_METAL_TRY(check_row("dim", format, dim, &row_bytes));
    args->batch = static_cast<uint32_t>(batch);
    args->num_heads = static_cast<uint32_t>(num_heads);
    args->max_seq_len = static_cast<uint32_t>(max_seq_len);
    args->dim = static_cast<uint32_t>(dim);
    args->row_bytes = row_bytes;
    return ok();
}

struct DecodePlan {
    caramba_metal_decode_args args;
    bool dba;
    uint32_t groups[3];         // threadgroups of caramba_decode_partial: (splits, Hq, B)
    uint32_t threads_per_group; // 32 * simdgroups
    uint32_t threadgroup_bytes; // dynamic threadgroup memory (index 0), a multiple of 16
    uint64_t workspace_bytes;   // partials (B, Hq, splits, 2 + Dv) float; 0 with one split
};

// Splits and SIMD groups for a call: auto picks enough threadgroups to fill a GPU without
// chunks shorter than kMinChunk; a requested count is capped at one position per split.
inline caramba_status choose_splits(const caramba_metal_decode_params* p, uint32_t* splits,
                                    uint32_t* chunk, uint32_t* simdgroups) {
    if (p->num_splits < 0) return invalid("num_splits: expected >= 0 (0 = auto), got %d", p->num_splits);
    if (p->simdgroups < 0 || p->simdgroups > CARAMBA_METAL_MAX_SIMDGROUPS) {
        return invalid("simdgroups: expected 0 (auto) .. %d, got %d", CARAMBA_METAL_MAX_SIMDGROUPS,
                       p->simdgroups);
    }
    const int64_t S = p->max_seq_len;
    int64_t n = p->num_splits;
    if (n == 0) {
        const int64_t groups = p->batch * p->num_q_heads;
        n = std::min((kAutoThreadgroups + groups - 1) / groups, (S + kMinChunk - 1) / kMinChunk);
        n = std::min(n, kMaxSplits);
    }
    n = std::max<int64_t>(1, std::min(n, S));
    const int64_t c = (S + n - 1) / n;
    *chunk = static_cast<uint32_t>(c);
    *splits = static_cast<uint32_t>((S + c - 1) / c); // no split left without a position
    const int64_t tiles = (c + CARAMBA_METAL_SIMD_WIDTH - 1) / CARAMBA_METAL_SIMD_WIDTH;
    *simdgroups = static_cast<uint32_t>(p->simdgroups ? p->simdgroups : std::min<int64_t>(4, tiles));
    return ok();
}

inline uint64_t partials_bytes(const caramba_metal_decode_params* p, uint32_t splits, int64_t dim_v) {
    return splits == 1 ? 0
                       : static_cast<uint64_t>(p->batch) * static_cast<uint64_t>(p->num_q_heads) *
                             splits * static_cast<uint64_t>(2 + dim_v) * sizeof(float);
}

// caramba_metal_decode_workspace_bytes: what plan_decode will ask for, from the sizes alone.
inline caramba_status workspace_bytes(const caramba_metal_decode_params* p, int64_t dim_v,
                                      uint64_t* bytes) {
    if (!p) return invalid("params: must not be NULL");
    if (!bytes) return invalid("bytes: must not be NULL");
    CARAMBA_METAL_TRY(check_count("batch", p->batch));
    CARAMBA_METAL_TRY(check_count("num_q_heads", p->num_q_heads));
    CARAMBA_METAL_TRY(check_count("max_seq_len", p->max_seq_len));
    if (dim_v < 1 || dim_v > CARAMBA_METAL_MAX_DIM_V) {
        return invalid("dim_v: expected 1 .. %d, got %lld", CARAMBA_METAL_MAX_DIM_V,
                       static_cast<long long>(dim_v));
    }
    uint32_t splits = 0, chunk = 0, nsg = 0;
    CARAMBA_METAL_TRY(choose_splits(p, &splits, &chunk, &nsg));
    *bytes = partials_bytes(p, splits, dim_v);
    return ok();
}

// Checks a decode call and plans its launch. k_geo_format == nullptr: standard attention.
inline caramba_status plan_decode(const caramba_metal_decode_params* p, caramba_format k_format,
                                  int64_t dim_k, const caramba_format* k_geo_format,
                                  int64_t dim_k_geo, caramba_format v_format, int64_t dim_v,
                                  float scale, float scale_geo, DecodePlan* plan) {
    if (!p) return invalid("params: must not be NULL");
    CARAMBA_METAL_TRY(check_count("batch", p->batch));
    CARAMBA_METAL_TRY(check_count("num_q_heads", p->num_q_heads));
    CARAMBA_METAL_TRY(check_count("num_kv_heads", p->num_kv_heads));
    CARAMBA_METAL_TRY(check_count("max_seq_len", p->max_seq_len));
    if (p->num_q_heads % p->num_kv_heads) {
        return invalid("num_kv_heads: %lld KV heads do not divide %lld query heads",
                       static_cast<long long>(p->num_kv_heads), static_cast<long long>(p->num_q_heads));
    }
    const bool dba = k_geo_format != nullptr;
    caramba_metal_decode_args& a = plan->args;
    a = caramba_metal_decode_args{};
    CARAMBA_METAL_TRY(check_row(dba ? "k_sem" : "k", k_format, dim_k, &a.row_bytes_k));
    if (dba) CARAMBA_METAL_TRY(check_row("k_geo", *k_geo_format, dim_k_geo, &a.row_bytes_k_geo));
    CARAMBA_METAL_TRY(check_row("v", v_format, dim_v, &a.row_bytes_v));
    if (dim_v > CARAMBA_METAL_MAX_DIM_V) {
        return invalid("v: value width %lld is over the Metal kernels' limit of %d",
                       static_cast<long long>(dim_v), CARAMBA_METAL_MAX_DIM_V);
    }
    if (!std::isfinite(scale)) return invalid("%s: must be finite", dba ? "scale_sem" : "scale");
    if (dba && !std::isfinite(scale_geo)) return invalid("scale_geo: must be finite");

    uint32_t splits = 0, chunk = 0, nsg = 0;
    CARAMBA_METAL_TRY(choose_splits(p, &splits, &chunk, &nsg));
    const int64_t dim_g = dba ? dim_k_geo : 0;
    const int64_t floats = dim_k + dim_g + nsg * (CARAMBA_METAL_SIMD_WIDTH + 2 + dim_v);
    const int64_t bytes = (floats * 4 + 15) / 16 * 16;
    if (bytes > CARAMBA_METAL_MAX_THREADGROUP_MEMORY) {
        return invalid("%s: key widths %lld + %lld with %u SIMD groups need %lld bytes of "
                       "threadgroup memory, over %d",
                       dba ? "k_sem" : "k", static_cast<long long>(dim_k),
                       static_cast<long long>(dim_g), nsg, static_cast<long long>(bytes),
                       CARAMBA_METAL_MAX_THREADGROUP_MEMORY);
    }
    a.batch = static_cast<uint32_t>(p->batch);
    a.num_q_heads = static_cast<uint32_t>(p->num_q_heads);
    a.num_kv_heads = static_cast<uint32_t>(p->num_kv_heads);
    a.max_seq_len = static_cast<uint32_t>(p->max_seq_len);
    a.dim_k = static_cast<uint32_t>(dim_k);
    a.dim_k_geo = static_cast<uint32_t>(dim_g);
    a.dim_v = static_cast<uint32_t>(dim_v);
    a.num_splits = splits;
    a.chunk_len = chunk;
    a.simdgroups = nsg;
    a.scale = scale;
    a.scale_geo = dba ? scale_geo : 0.0f;
    plan->dba = dba;
    plan->groups[0] = splits;
    plan->groups[1] = a.num_q_heads;
    plan->groups[2] = a.batch;
    plan->threads_per_group = nsg * CARAMBA_METAL_SIMD_WIDTH;
    plan->threadgroup_bytes = static_cast<uint32_t>(bytes);
    plan->workspace_bytes = partials_bytes(p, splits, dim_v);
    return ok();
}

} // namespace caramba::metal
