/* Fused decode attention on NVIDIA tensor cores over q8_0 / q4_0 KV caches (CUDA, sm_80+).
 *
 * A separate library (caramba::kernels_cuda, built when CMake finds a CUDA compiler) so that the
 * CPU library stays free of the CUDA runtime. Pointers are device pointers; nothing is copied
 * to or from the host and no call synchronises.
 *
 * One call computes split-K partials for one new query token per sequence, standard/GQA
 * attention (k_geo.data == NULL) or DBA (score = scale_sem q_sem.k_sem + scale_geo q_geo.k_geo,
 * one softmax). Partial p = (b * q_heads + h) * n_splits + split holds, in the log2 domain,
 * m[p] = max score * log2 e, l[p] = sum exp2(score * log2 e - m[p]) and o[p * dim_v + i] =
 * sum exp2(...) * v_i; an empty split has m = -inf, l = 0, o = 0. Merging the splits by
 * log-sum-exp (caramba_kernels' merge kernel) gives the attention output.
 *
 * The splits of sequence b share out its positions [0, length), length = clamp(lengths[b], 0,
 * s_max); which positions a split holds depends on the kernel that serves the call (the merge
 * does not care). The per-KV-head kernel: split s covers [s * n, min((s + 1) * n, length)),
 * n = max(32, min(split_len, 32 * ceil(ceil(length / n_splits) / 32))). The row kernel: runs of
 * 16 or 32 positions dealt out in turn to the 4 teams of warps of each split (run i to team
 * i mod (4 n_splits), teams numbered 4 s + t), so they read the cache side by side; split_len
 * is not used.
 */
#ifndef CARAMBA_CUDA_H
#define CARAMBA_CUDA_H

#include <stdint.h>

#include "caramba/quant.h"
#include "caramba/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* One cache tensor. Value i of KV head g at position t of sequence b is value
 * (g * head_shift + i) of the row that starts at
 *     data + b * batch_stride + g * head_stride + t * token_stride   (bytes),
 * rows being GGML blocks. Head layout: head_stride = the tensor's head stride, head_shift = 0.
 * Token layout (every head in one row): head_stride = 0 and head_shift = dim, or, where dim is a
 * whole number of blocks, head_stride = the head's bytes and head_shift = 0. */
typedef struct caramba_cuda_cache {
    const void* data;
    int64_t batch_stride;
    int64_t head_stride;
    int64_t token_stride;
    int32_t head_shift;
    int32_t format; /* caramba_format: CARAMBA_FORMAT_Q8_0 or CARAMBA_FORMAT_Q4_0 */
    int32_t dim;    /* values per KV head */
} caramba_cuda_cache;

/* Element type of the queries. */
typedef enum caramba_cuda_query_type {
    CARAMBA_CUDA_QUERY_F32 = 0,
    CARAMBA_CUDA_QUERY_F16 = 1,
    CARAMBA_CUDA_QUERY_BF16 = 2
} caramba_cuda_query_type;

/* Which kernel serves a call. The row kernel (one warp per token row of every KV head) serves
 * narrow heads whose keys sit in whole token rows, such as the seed's DBA cache at
 * Llama-3.2-1B widths; the per-KV-head kernel serves everything else the library takes. */
typedef enum caramba_cuda_kernel {
    CARAMBA_CUDA_KERNEL_AUTO = 0,  /* rows where they apply and batch * s_max >= 65536 */
    CARAMBA_CUDA_KERNEL_HEADS = 1, /* the per-KV-head kernel */
    CARAMBA_CUDA_KERNEL_ROWS = 2   /* the row kernel wherever it applies */
} caramba_cuda_kernel;

typedef struct caramba_cuda_decode_params {
    const void* q_sem;  /* (batch, q_heads, k_sem.dim) of q_type, contiguous */
    const void* q_geo;  /* (batch, q_heads, k_geo.dim) of q_type, contiguous; NULL: standard */
    caramba_cuda_cache k_sem;
    caramba_cuda_cache k_geo;
    caramba_cuda_cache v;
    const int32_t* lengths; /* (batch,) cached positions per sequence */
    float* m;               /* (batch * q_heads * n_splits) */
    float* l;               /* (batch * q_heads * n_splits) */
    float* o;               /* (batch * q_heads * n_splits, v.dim) */
    float scale_sem;        /* natural-log domain (e.g. 1 / sqrt(dim)) */
    float scale_geo;
    int32_t batch;
    int32_t q_heads;
    int32_t kv_heads;
    int32_t s_max;
    int32_t split_len; /* a multiple of 32 */
    int32_t n_splits;
    int32_t q_type; /* caramba_cuda_query_type (zero-initialised params: float32) */
    int32_t kernel; /* caramba_cuda_kernel (zero-initialised params: AUTO) */
} caramba_cuda_decode_params;

/* CARAMBA_OK when caramba_cuda_decode_partials serves these shapes and formats, else
 * CARAMBA_ERR_UNSUPPORTED with the reason (or CARAMBA_ERR_INVALID_ARGUMENT for a bad batch,
 * s_max or split plan). Served: q8_0/q4_0 keys (k_sem and k_geo in one format) and values; an
 * even, positive dim per key tensor with ceil(k_sem.dim / 8) + ceil(k_geo.dim / 8) <= 8;
 * v.dim in {32, 64, 128} with each head starting on a block; token strides in (0, 2^32); at
 * most 8 query heads per KV head. Host checks only: no CUDA call, no pointer read. */
CARAMBA_API caramba_status caramba_cuda_decode_supported(const caramba_cuda_decode_params* params);

/* Warps of the kernel that serves these parameters that one multiprocessor of the current device
 * holds at once (0 when unsupported or on a CUDA error): a split plan of this many warps per SM
 * fills the GPU in one wave. */
CARAMBA_API int caramba_cuda_decode_warps_per_sm(const caramba_cuda_decode_params* params);

/* How the kernel serving these parameters shares out a split: *warps warps work on one
 * (sequence, split) and take *positions of its positions per round between them (so a split
 * plan that fills the GPU counts batch * n_splits * *warps warps, each split a few rounds long).
 * The per-KV-head kernel: one warp per KV head, 32 positions; the row kernel (its instances:
 * the Llama-3.2-1B DBA preset's narrow heads in token rows, and standard attention at head dim
 * 64 or 128 with 4 query heads per KV head): 4 runs of steps per group of KV heads (all of a
 * token row; 2 of a head-layout cache), a run taken by one warp or, for the DBA preset, a team
 * of 2 (so 4 or 8 warps per group), 128 positions.
 * Host checks only. */
CARAMBA_API caramba_status caramba_cuda_decode_split_shape(const caramba_cuda_decode_params* params,
                                                           int32_t* warps, int32_t* positions);

/* Launch on `stream` (a cudaStream_t; NULL: the default stream). On sm_90+ the kernels allow a
 * programmatic dependent launch (griddepcontrol.launch_dependents): a merge launched with
 * cudaLaunchAttributeProgrammaticStreamSerialization starts while their last blocks run, and
 * must wait for the partials itself (cudaGridDependencySynchronize / griddepcontrol.wait).
 * A plain launch after them is ordered as usual. */
CARAMBA_API caramba_status caramba_cuda_decode_partials(const caramba_cuda_decode_params* params,
                                                        void* stream);

#ifdef __cplusplus
}
#endif

#endif /* CARAMBA_CUDA_H */
