/* Fused decode attention over (possibly quantized) KV caches: one new query token per sequence.
 *
 * Standard:  out[b,h] = softmax_s( scale * q[b,h] . k[b,g(h),s] ) @ v[b,g(h),s]
 * DBA:       score    = scale_sem * (q_sem . k_sem) + scale_geo * (q_geo . k_geo), one softmax
 *
 * for s in [0, lengths[b]), with GQA head mapping g(h) = h / (num_q_heads / num_kv_heads).
 * Quantized blocks are read in place (no dequantized copy of the cache is made). The sequence
 * is split into chunks (split-K) processed by a thread pool; partial (max, sum, acc) triples
 * are merged by log-sum-exp.
 *
 * Cache layouts, per tensor (caramba_kv_tensor.layout):
 *   CARAMBA_KV_LAYOUT_HEAD  (0, the default) one row per (batch, kv head, position) holding that
 *                           head's `dim` values; dim must fill whole blocks.
 *   CARAMBA_KV_LAYOUT_TOKEN one row per (batch, position) holding all num_kv_heads heads:
 *                           head g is elements [g*dim, (g+1)*dim) of the row, which may straddle
 *                           quantization blocks; num_kv_heads*dim must fill whole blocks and
 *                           stride_h is ignored. Used for per-head widths narrower than a block
 *                           (DBA's 4-value semantic keys).
 * The tensors of one call may mix layouts. Calls with any token-layout tensor run a loop over
 * (batch, chunk of positions) that dequantizes each row once into a small float tile and
 * computes every query head from it.
 *
 * Log-sum-exp (the *_lse entry points): lse[b,h] = log(sum_s exp(score_s)) over the attended
 * positions, score_s the full scaled score. Two results over disjoint position sets merge
 * exactly: m = max(l1, l2), out = (o1 e^(l1-m) + o2 e^(l2-m)) / (e^(l1-m) + e^(l2-m)).
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

typedef enum caramba_kv_layout {
    CARAMBA_KV_LAYOUT_HEAD = 0,
    CARAMBA_KV_LAYOUT_TOKEN = 1
} caramba_kv_layout;

/* Head layout: a (batch, kv_head, position) grid of rows. The row (b, h, s) starts at
 * (const char*)data + b*stride_b + h*stride_h + s*stride_s (strides in BYTES) and holds `dim`
 * elements in `format` (dim / block_elems contiguous blocks).
 * Token layout: the row (b, s) starts at data + b*stride_b + s*stride_s and holds
 * num_kv_heads * dim elements; `dim` is still the per-head width. `layout` is last so that
 * initializers written before it existed (zero-filled) mean the head layout. */
typedef struct caramba_kv_tensor {
    const void* data;
    caramba_format format;
    int64_t dim;
    int64_t stride_b, stride_h, stride_s;
    caramba_kv_layout layout;
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

/* Float32 (batch, head) log-sum-exp output; strides in ELEMENTS. data = NULL: not wanted. */
typedef struct caramba_lse_tensor {
    float* data;
    int64_t stride_b, stride_h;
} caramba_lse_tensor;

typedef struct caramba_decode_params {
    int64_t batch;
    int64_t num_q_heads;
    int64_t num_kv_heads; /* num_q_heads % num_kv_heads == 0 */
    int64_t max_seq_len;  /* S_max: every lengths[b] must be in [1, max_seq_len] */
    int32_t num_splits;   /* chunks per sequence, 0 = auto */
    int32_t num_threads;  /* 0 = auto: caramba_default_num_threads(), or 1 for a call of under
                           * 4M multiply-adds, which waking helper threads would slow down */
    caramba_path path;
    /* Optional scratch of at least caramba_decode_workspace_bytes(); NULL = one allocation per
     * call, made before any thread starts (never inside the loops). */
    void* workspace;
    size_t workspace_bytes;
} caramba_decode_params;

/* Sets params fields to defaults (auto splits/threads/path, no workspace). */
CARAMBA_API void caramba_decode_params_init(caramba_decode_params* params);

/* Scratch needed by a call with these params and value width dv whose tensors are all in the
 * head layout (an upper bound over all lengths <= max_seq_len). */
CARAMBA_API caramba_status caramba_decode_workspace_bytes(const caramba_decode_params* params,
                                                          int64_t dv, size_t* bytes);

/* The same for any layouts: widest_row = the largest num_kv_heads * dim over the call's key and
 * value tensors when any of them is in the token layout, 0 when none is. */
CARAMBA_API caramba_status caramba_decode_workspace_bytes_ex(const caramba_decode_params* params,
                                                             int64_t dv, int64_t widest_row,
                                                             size_t* bytes);

CARAMBA_API caramba_status caramba_decode_attention(const caramba_decode_params* params,
                                                    caramba_query_tensor q, caramba_kv_tensor k,
                                                    caramba_kv_tensor v, const int32_t* lengths,
                                                    float scale, caramba_output_tensor out);

CARAMBA_API caramba_status caramba_dba_decode_attention(
    const caramba_decode_params* params, caramba_query_tensor q_sem, caramba_query_tensor q_geo,
    caramba_kv_tensor k_sem, caramba_kv_tensor k_geo, caramba_kv_tensor v,
    const int32_t* lengths, float scale_sem, float scale_geo, caramba_output_tensor out);

/* The two calls above, also writing the log-sum-exp of each (batch, query head) into lse
 * (lse.data = NULL: same as the calls above). lse must not overlap out or any input. */
CARAMBA_API caramba_status caramba_decode_attention_lse(const caramba_decode_params* params,
                                                        caramba_query_tensor q, caramba_kv_tensor k,
                                                        caramba_kv_tensor v, const int32_t* lengths,
                                                        float scale, caramba_output_tensor out,
                                                        caramba_lse_tensor lse);

CARAMBA_API caramba_status caramba_dba_decode_attention_lse(
    const caramba_decode_params* params, caramba_query_tensor q_sem, caramba_query_tensor q_geo,
    caramba_kv_tensor k_sem, caramba_kv_tensor k_geo, caramba_kv_tensor v,
    const int32_t* lengths, float scale_sem, float scale_geo, caramba_output_tensor out,
    caramba_lse_tensor lse);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* CARAMBA_ATTENTION_H */
