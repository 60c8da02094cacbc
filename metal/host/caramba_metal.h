/* Metal backend of caramba_kernels: KV-cache quantization and fused decode attention on Apple
 * GPUs. Built only on Apple platforms, with the CMake option CARAMBA_METAL.
 *
 * The same operations, layouts and formats as caramba.kernels (and the C++ CPU library):
 *   quantize / dequantize  rows (num_rows, dim) float <-> (num_rows, row_bytes)
 *   append                 rows (B, H, dim) float -> cache[b, h, lengths[b]]
 *   decode_attention       q (B, Hq, D) float, caches (B, Hkv, S_max, row_bytes),
 *                          lengths int32 (B,), out (B, Hq, Dv) float; GQA head h -> h / (Hq/Hkv)
 *   dba_decode_attention   two key caches (semantic, geometric) summed before one softmax
 * Caches are contiguous: row_bytes = caramba_row_bytes(format, dim) (f16 rows are 2 * dim
 * bytes). q8_0 / q4_0 rows are GGML blocks, byte for byte.
 *
 * Metal objects cross this C API as void*: pass id<MTLDevice>, id<MTLBuffer> and
 * id<MTLCommandBuffer> with (__bridge void*). Every call encodes into `command_buffer` when it is
 * non-NULL (the caller commits it; nothing waits), or else makes one, commits it and waits.
 * Arguments are checked on the host; lengths live on the GPU and are not read back, so lengths
 * outside [1, S_max] are the caller's error (the kernels clamp them to stay inside the cache).
 */
#ifndef CARAMBA_METAL_H
#define CARAMBA_METAL_H

#include <stddef.h>
#include <stdint.h>

#include "caramba/quant.h"
#include "caramba/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct caramba_metal_context caramba_metal_context;

/* An id<MTLBuffer> (bridged) and a byte offset into it. */
typedef struct caramba_metal_buffer {
    void* buffer;
    uint64_t offset;
} caramba_metal_buffer;

/* A contiguous (B, H, S_max, row) cache of rows of `dim` values in `format`. */
typedef struct caramba_metal_kv_tensor {
    caramba_metal_buffer data;
    caramba_format format;
    int64_t dim;
} caramba_metal_kv_tensor;

typedef struct caramba_metal_decode_params {
    int64_t batch;
    int64_t num_q_heads;
    int64_t num_kv_heads; /* num_q_heads % num_kv_heads == 0 */
    int64_t max_seq_len;  /* S_max */
    int32_t num_splits;   /* split-K chunks per sequence, 0 = auto */
    int32_t simdgroups;   /* SIMD groups per threadgroup (1..8), 0 = auto */
    /* Scratch for the split states, at least caramba_metal_decode_workspace_bytes(); a NULL
     * buffer = a temporary buffer per call. */
    caramba_metal_buffer workspace;
    uint64_t workspace_bytes;
} caramba_metal_decode_params;

/* Compiles the kernels for `device` (an id<MTLDevice>, or NULL for the system default). */
CARAMBA_API caramba_status caramba_metal_context_create(void* device, caramba_metal_context** ctx);
CARAMBA_API void caramba_metal_context_destroy(caramba_metal_context* ctx);
CARAMBA_API const char* caramba_metal_device_name(const caramba_metal_context* ctx);

CARAMBA_API caramba_status caramba_metal_quantize(caramba_metal_context* ctx, caramba_format format,
                                                  caramba_metal_buffer x, int64_t num_rows,
                                                  int64_t dim, caramba_metal_buffer dst,
                                                  void* command_buffer);

CARAMBA_API caramba_status caramba_metal_dequantize(caramba_metal_context* ctx,
                                                    caramba_format format, caramba_metal_buffer src,
                                                    int64_t num_rows, int64_t dim,
                                                    caramba_metal_buffer y, void* command_buffer);

/* Writes rows[b, h] into cache[b, h, lengths[b]]; the caller advances lengths afterwards. */
CARAMBA_API caramba_status caramba_metal_append(caramba_metal_context* ctx, caramba_format format,
                                                caramba_metal_buffer cache, int64_t batch,
                                                int64_t num_heads, int64_t max_seq_len,
                                                int64_t dim, caramba_metal_buffer rows,
                                                caramba_metal_buffer lengths,
                                                void* command_buffer);

/* Sets params to defaults (auto splits and SIMD groups, no workspace). */
CARAMBA_API void caramba_metal_decode_params_init(caramba_metal_decode_params* params);

/* Scratch a decode call with these params and value width dim_v needs (0 with one split). */
CARAMBA_API caramba_status caramba_metal_decode_workspace_bytes(
    const caramba_metal_decode_params* params, int64_t dim_v, uint64_t* bytes);

CARAMBA_API caramba_status caramba_metal_decode_attention(
    caramba_metal_context* ctx, const caramba_metal_decode_params* params,
    caramba_metal_buffer q, caramba_metal_kv_tensor k, caramba_metal_kv_tensor v,
    caramba_metal_buffer lengths, float scale, caramba_metal_buffer out, void* command_buffer);

CARAMBA_API caramba_status caramba_metal_dba_decode_attention(
    caramba_metal_context* ctx, const caramba_metal_decode_params* params,
    caramba_metal_buffer q_sem, caramba_metal_buffer q_geo, caramba_metal_kv_tensor k_sem,
    caramba_metal_kv_tensor k_geo, caramba_metal_kv_tensor v, caramba_metal_buffer lengths,
    float scale_sem, float scale_geo, caramba_metal_buffer out, void* command_buffer);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* CARAMBA_METAL_H */
