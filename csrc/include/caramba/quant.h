/* KV-cache storage formats and row (de)quantization.
 *
 * A row of logical width n is stored as n / block_elems consecutive blocks. q8_0 and q4_0 are
 * GGML's blocks, byte for byte (quantize_row_q8_0_ref / quantize_row_q4_0_ref in
 * ggml-quants.c), so rows are interchangeable with GGUF tensors. nf4 is QLoRA's NormalFloat-4
 * codebook with one fp16 absmax per 64 values.
 *
 *   q8_0: value = qs[j] * d                         d = amax / 127, q = roundf(x / d)
 *   q4_0: value = (nibble - 8) * d                  d = max / -8 (max = signed value of
 *         byte j: low nibble = element j,           largest |x|), q = min(15, (int8)(x/d + 8.5))
 *                 high nibble = element j + 16
 *   nf4:  value = caramba_nf4_codebook[nibble] * d  d = absmax; nibble = nearest codebook entry
 *         byte j: low nibble = element j,           to x / absmax; a tie goes to the lower index
 *                 high nibble = element j + 32      (the more negative entry); absmax 0 -> all 7
 *
 * fp16 conversions round to nearest, ties to even (as F16C and numpy's astype(float16) do).
 * Quantizing NaN or infinity is not supported (the bytes are unspecified, nothing crashes).
 */
#ifndef CARAMBA_QUANT_H
#define CARAMBA_QUANT_H

#include <stddef.h>
#include <stdint.h>

#include "caramba/cpu.h"
#include "caramba/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum caramba_format {
    CARAMBA_FORMAT_F32 = 0,
    CARAMBA_FORMAT_F16 = 1,
    CARAMBA_FORMAT_Q8_0 = 2,
    CARAMBA_FORMAT_Q4_0 = 3,
    CARAMBA_FORMAT_NF4 = 4
} caramba_format;

#define CARAMBA_FORMAT_COUNT 5

typedef uint16_t caramba_fp16; /* IEEE binary16 bits */

#define CARAMBA_QK8_0 32
#define CARAMBA_QK4_0 32
#define CARAMBA_QKNF4 64

typedef struct caramba_block_q8_0 {
    caramba_fp16 d;
    int8_t qs[CARAMBA_QK8_0];
} caramba_block_q8_0;

typedef struct caramba_block_q4_0 {
    caramba_fp16 d;
    uint8_t qs[CARAMBA_QK4_0 / 2];
} caramba_block_q4_0;

typedef struct caramba_block_nf4 {
    caramba_fp16 d; /* absmax of the 64 values */
    uint8_t qs[CARAMBA_QKNF4 / 2];
} caramba_block_nf4;

CARAMBA_STATIC_ASSERT(sizeof(caramba_block_q8_0) == 34, "q8_0 block must be 34 bytes");
CARAMBA_STATIC_ASSERT(sizeof(caramba_block_q4_0) == 18, "q4_0 block must be 18 bytes");
CARAMBA_STATIC_ASSERT(sizeof(caramba_block_nf4) == 34, "nf4 block must be 34 bytes");

/* The NormalFloat-4 codebook (bitsandbytes / QLoRA), ascending; entry 7 is exactly 0. */
CARAMBA_API const float* caramba_nf4_codebook(void);

/* "f32", "f16", "q8_0", "q4_0", "nf4"; NULL for an unknown value. */
CARAMBA_API const char* caramba_format_name(caramba_format format);
CARAMBA_API caramba_status caramba_format_parse(const char* name, caramba_format* format);

/* Elements per block (1 for f32 and f16) and bytes per block (4, 2, 34, 18, 34). */
CARAMBA_API int64_t caramba_format_block_elems(caramba_format format);
CARAMBA_API int64_t caramba_format_block_bytes(caramba_format format);

/* Bytes of a row of n elements; fails if n is not a positive multiple of the block. */
CARAMBA_API caramba_status caramba_row_bytes(caramba_format format, int64_t n, int64_t* bytes);

/* Encode n floats (n a multiple of the block) into dst, which must hold dst_bytes >= the row
 * bytes. Scalar and SIMD paths produce identical bytes. */
CARAMBA_API caramba_status caramba_quantize(caramba_format format, const float* x, int64_t n,
                                            void* dst, int64_t dst_bytes, caramba_path path);

/* Decode n elements from src (src_bytes >= the row bytes) into y. */
CARAMBA_API caramba_status caramba_dequantize(caramba_format format, const void* src,
                                              int64_t src_bytes, int64_t n, float* y,
                                              caramba_path path);

CARAMBA_API caramba_fp16 caramba_fp32_to_fp16(float x);
CARAMBA_API float caramba_fp16_to_fp32(caramba_fp16 h);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* CARAMBA_QUANT_H */
