/* Fused decode attention over (possibly quantized) KV caches: one new query token per sequence.
 *
 * Standard:  out[b,h] = softmax_s( scale * q[b,h] . k[b,g(h),s] ) @ v[b,g(h),s]
 * DBA:       score    = scale_sem * (q_sem . k_sem) + scale_geo * (q_geo . k_geo), one softmax
 *
 * for s in [0, lengths[b]), with GQA head mapping g(h) = h / (num_q_heads / num_kv_heads).
 * Quantized blocks are read in place (no dequantized copy of the cache is made). The sequence
 * is split into chunks (split-K) processed by a thread pool; partial (max, sum, acc) triples
 * are merged by log-sum-exp.
 */
#ifndef CARAMBA_ATTENTION_H
#define CARAMBA_ATTENTION_H

#include <stddef.h>
#include <stdint.h>

#include "caramba/cpu.h"
#include "caramba/quant.h"
#include "caramba/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* A (batch, kv_head, position) grid of rows. The row (b, h, s) starts at
 * (const char*)data + b*stride_b + h*stride_h + s*stride_s (strides in BYTES) and holds `dim`
 * elements in `format` (dim / block_elems contiguous blocks). */
typedef struct caramba_kv_tensor {
    const void* data;
    caramba_format format;
    int64_t dim;
    int64_t stride_b, stride_h, stride_s;
} caramba_kv_tensor;

/* Float32 (batch, head, dim) with a contiguous last dim; strides in ELEMENTS. */
typedef struct caramba_query_tensor {
    const float* data;
    int64_t dim;
    int64_t stride_b, stride_h;
} caramba_query_tensor;

typedef struct caramba_output_tensor {
    float* data;
    int64_t dim;
    int64_t stride_b, stride_h;
} caramba_output_tensor;

typedef struct caramba_decode_params {
    int64_t batch;
    int64_t num_q_heads;
    int64_t num_kv_heads; /* num_q_heads % num_kv_heads == 0 */
    int64_t max_seq_len;  /* S_max: every lengths[b] must be in [1, max_seq_len] */
    int32_t num_splits;   /* chunks per sequence, 0 = auto */
    int32_t num_threads;  /* 0 = caramba_default_num_threads() */
    caramba_path path;
    /* Optional scratch of at least caramba_decode_workspace_bytes(); NULL = one allocation per
     * call, made before any thread starts (never inside the loops). */
    void* workspace;
    size_t workspace_bytes;
} caramba_decode_params;

/* Sets params fields to defaults (auto splits/threads/path, no workspace). */
CARAMBA_API void caramba_decode_params_init(caramba_decode_params* params);

/* Scratch needed by a call with these params and value width dv (an upper bound over all
 * lengths <= max_seq_len). */
CARAMBA_API caramba_status caramba_decode_workspace_bytes(const caramba_decode_params* params,
                                                          int64_t dv, size_t* bytes);

CARAMBA_API caramba_status caramba_decode_attention(const caramba_decode_params* params,
                                                    caramba_query_tensor q, caramba_kv_tensor k,
                                                    caramba_kv_tensor v, const int32_t* lengths,
                                                    float scale, caramba_output_tensor out);

CARAMBA_API caramba_status caramba_dba_decode_attention(
    const caramba_decode_params* params, caramba_query_tensor q_sem, caramba_query_tensor q_geo,
    caramba_kv_tensor k_sem, caramba_kv_tensor k_geo, caramba_kv_tensor v,
    const int32_t* lengths, float scale_sem, float scale_geo, caramba_output_tensor out);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* CARAMBA_ATTENTION_H */
