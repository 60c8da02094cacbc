/* Kernel arguments shared by the Metal shaders and the code that launches them.
 *
 * Plain C that compiles as MSL, C and C++: no Metal types, every field 4 bytes wide, so a struct
 * has the same layout on the host and on the GPU. Each kernel reads its struct from buffer 0.
 */
#ifndef CARAMBA_METAL_PARAMS_H
#define CARAMBA_METAL_PARAMS_H

#ifdef __METAL_VERSION__
#include <metal_stdlib> /* uint32_t; also first in the embedded library source */
#else
#include <stdint.h>
#endif

/* Storage formats, numbered as caramba_format in csrc/include/caramba/quant.h. */
#define CARAMBA_METAL_F32 0
#define CARAMBA_METAL_F16 1
#define CARAMBA_METAL_Q8_0 2
#define CARAMBA_METAL_Q4_0 3
#define CARAMBA_METAL_NF4 4

#define CARAMBA_METAL_SIMD_WIDTH 32      /* lanes per SIMD group on every Apple GPU */
#define CARAMBA_METAL_MAX_DIM_V 256      /* value width: each lane accumulates dim_v / 32 */
#define CARAMBA_METAL_MAX_SIMDGROUPS 8   /* per decode threadgroup (256 threads) */
#define CARAMBA_METAL_MAX_THREADGROUP_MEMORY 32768

/* Function-constant indices (MTLFunctionConstantValues). */
#define CARAMBA_METAL_FC_FORMAT 0       /* quantize / dequantize / append: the row format */
#define CARAMBA_METAL_FC_K_FORMAT 1     /* decode: the (semantic) key cache format */
#define CARAMBA_METAL_FC_K_GEO_FORMAT 2 /* decode, DBA only: the geometric key cache format */
#define CARAMBA_METAL_FC_V_FORMAT 3     /* decode: the value cache format */
#define CARAMBA_METAL_FC_DBA 4          /* decode: bool, two key paths */

/* Values per block (a "unit" a thread encodes) and bytes per block. */
static inline uint32_t caramba_metal_block_elems(int format) {
    return format == CARAMBA_METAL_Q8_0 || format == CARAMBA_METAL_Q4_0 ? 32u
           : format == CARAMBA_METAL_NF4                                 ? 64u
                                                                         : 1u;
}

static inline uint32_t caramba_metal_block_bytes(int format) {
    return format == CARAMBA_METAL_F32    ? 4u
           : format == CARAMBA_METAL_F16  ? 2u
           : format == CARAMBA_METAL_Q4_0 ? 18u
                                          : 34u; /* q8_0, nf4 */
}

/* caramba_quantize_rows / caramba_dequantize_rows: num_rows contiguous rows of dim values. */
typedef struct caramba_metal_rows_args {
    uint32_t num_rows;
    uint32_t dim;
    uint32_t row_bytes;
} caramba_metal_rows_args;

/* caramba_append: rows (batch, num_heads, dim) float into cache (batch, num_heads,
 * max_seq_len, row_bytes) at position lengths[b]. */
typedef struct caramba_metal_append_args {
    uint32_t batch;
    uint32_t num_heads;
    uint32_t max_seq_len;
    uint32_t dim;
    uint32_t row_bytes;
} caramba_metal_append_args;

/* caramba_decode_partial / caramba_decode_merge. Positions [split * chunk_len, +chunk_len) of
 * each sequence belong to threadgroup `split`; a threadgroup runs `simdgroups` SIMD groups. */
typedef struct caramba_metal_decode_args {
    uint32_t batch;
    uint32_t num_q_heads;
    uint32_t num_kv_heads;
    uint32_t max_seq_len;
    uint32_t dim_k;     /* semantic key / query width */
    uint32_t dim_k_geo; /* geometric key / query width; 0 without DBA */
    uint32_t dim_v;
    uint32_t row_bytes_k;
    uint32_t row_bytes_k_geo;
    uint32_t row_bytes_v;
    uint32_t num_splits;
    uint32_t chunk_len;
    uint32_t simdgroups;
    float scale;
    float scale_geo;
} caramba_metal_decode_args;

#endif /* CARAMBA_METAL_PARAMS_H */
