/* Quantized block layouts and the per-block codecs every Metal kernel shares.
 *
 * Byte for byte the blocks of caramba.kernels.formats and csrc/include/caramba/quant.h:
 *
 *   q8_0  half d, int8 qs[32]                     value = qs[j] * d            (GGML block_q8_0)
 *   q4_0  half d, uint8 qs[16]: byte j = element j (low nibble) | element j+16 (high nibble)
 *                                                 value = (nibble - 8) * d     (GGML block_q4_0)
 *   nf4   half d = absmax, uint8 qs[32]: byte j = element j | element j+32 << 4
 *                                                 value = NF4[nibble] * d
 *
 * Encoders repeat GGML's quantize_row_*_ref (and the reference's nf4 rule) one float operation
 * at a time in the same order, so the bytes match the reference exactly; that needs IEEE division
 * and no contraction of x * id + 8.5 into an fma (the host compiles with fast math off; the
 * pragmas below say the same in the source).
 */
#ifndef CARAMBA_METAL_BLOCKS_H
#define CARAMBA_METAL_BLOCKS_H

#ifdef __METAL_VERSION__
#include <metal_stdlib>
using namespace metal;
#if __METAL_VERSION__ >= 320
#pragma METAL fp math_mode(safe)
#endif
#pragma clang fp contract(off)
#else
#include "../shim/metal_shim.h"
using namespace metal;
#endif

// The [[threadgroup(n)]] attribute of a kernel's threadgroup-memory argument. Spelled through a
// macro because the C++ shim maps the `threadgroup` address space to nothing, which would also
// empty the attribute; the harness passes the memory as an ordinary pointer.
#ifdef __METAL_VERSION__
#define CARAMBA_THREADGROUP_MEMORY(n) [[threadgroup(n)]]
#else
#define CARAMBA_THREADGROUP_MEMORY(n)
#endif

#include "params.h"

typedef struct {
    half d;
    int8_t qs[32];
} block_q8_0;

typedef struct {
    half d;
    uint8_t qs[16];
} block_q4_0;

typedef struct {
    half d; /* absmax of the 64 values */
    uint8_t qs[32];
} block_nf4;

static_assert(sizeof(block_q8_0) == 34, "q8_0 block must be 34 bytes");
static_assert(sizeof(block_q4_0) == 18, "q4_0 block must be 18 bytes");
static_assert(sizeof(block_nf4) == 34, "nf4 block must be 34 bytes");

/* QLoRA's NormalFloat-4 codebook (caramba.kernels.formats.NF4_CODEBOOK), as float32 values. */
constexpr constant static float caramba_nf4_values[16] = {
    -1.0f,
    -0.6961928009986877f,
    -0.5250730514526367f,
    -0.39491748809814453f,
    -0.28444138169288635f,
    -0.18477343022823334f,
    -0.09105003625154495f,
    0.0f,
    0.07958029955625534f,
    0.16093020141124725f,
    0.24611230194568634f,
    0.33791524171829224f,
    0.44070982933044434f,
    0.5626170039176941f,
    0.7229568362236023f,
    1.0f,
};

/* ---- decoding: element d of a stored row ---------------------------------------------- */

static inline float load_element(int format, device const uchar * row, uint d) {
    if (format == CARAMBA_METAL_F32) {
        return ((device const float *) row)[d];
    }
    if (format == CARAMBA_METAL_F16) {
        return float(((device const half *) row)[d]);
    }
    if (format == CARAMBA_METAL_Q8_0) {
        device const block_q8_0 * b = (device const block_q8_0 *) row + d / 32;
        return float(b->qs[d % 32]) * float(b->d);
    }
    if (format == CARAMBA_METAL_Q4_0) {
        device const block_q4_0 * b = (device const block_q4_0 *) row + d / 32;
        const uint j = d % 32;
        const uint packed = b->qs[j % 16];
        const int code = (int) (j < 16 ? packed & 15u : packed >> 4);
        return float(code - 8) * float(b->d);
    }
    device const block_nf4 * b = (device const block_nf4 *) row + d / 64;
    const uint j = d % 64;
    const uint packed = b->qs[j % 32];
    return caramba_nf4_values[j < 32 ? packed & 15u : packed >> 4] * float(b->d);
}

/* sum_d q[d] * row[d] over a stored row of `dim` values; q lives in threadgroup memory. The scale
 * of a block multiplies its partial sum once. */
static inline float dot_row(int format, device const uchar * row, threadgroup const float * q,
                            uint dim) {
    float sum = 0.0f;
    if (format == CARAMBA_METAL_F32) {
        device const float * x = (device const float *) row;
        for (uint d = 0; d < dim; ++d) sum += q[d] * x[d];
    } else if (format == CARAMBA_METAL_F16) {
        device const half * x = (device const half *) row;
        for (uint d = 0; d < dim; ++d) sum += q[d] * float(x[d]);
    } else if (format == CARAMBA_METAL_Q8_0) {
        device const block_q8_0 * b = (device const block_q8_0 *) row;
        for (uint i = 0; i < dim / 32; ++i, q += 32) {
            float s = 0.0f;
            for (uint j = 0; j < 32; ++j) s += q[j] * float(b[i].qs[j]);
            sum += s * float(b[i].d);
        }
    } else if (format == CARAMBA_METAL_Q4_0) {
        device const block_q4_0 * b = (device const block_q4_0 *) row;
        for (uint i = 0; i < dim / 32; ++i, q += 32) {
            float s = 0.0f;
            for (uint j = 0; j < 16; ++j) {
                const uint packed = b[i].qs[j];
                s += q[j] * float((int) (packed & 15u) - 8) + q[j + 16] * float((int) (packed >> 4) - 8);
            }
            sum += s * float(b[i].d);
        }
    } else {
        device const block_nf4 * b = (device const block_nf4 *) row;
        for (uint i = 0; i < dim / 64; ++i, q += 64) {
            float s = 0.0f;
            for (uint j = 0; j < 32; ++j) {
                const uint packed = b[i].qs[j];
                s += q[j] * caramba_nf4_values[packed & 15u] + q[j + 32] * caramba_nf4_values[packed >> 4];
            }
            sum += s * float(b[i].d);
        }
    }
    return sum;
}

/* ---- encoding: one block (or one element of a plain format) ------------------------------ */

static inline void quantize_q8_0(device const float * x, device block_q8_0 * y) {
    float amax = 0.0f;
    for (int j = 0; j < 32; ++j) amax = max(amax, fabs(x[j]));
    const float d = amax / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    y->d = half(d);
    for (int j = 0; j < 32; ++j) {
        const float v = x[j] * id;
        y->qs[j] = (int8_t) round(v);
    }
}

static inline void quantize_q4_0(device const float * x, device block_q4_0 * y) {
    float amax = 0.0f;
    float vmax = 0.0f; /* the signed value of largest magnitude, the first one on ties */
    for (int j = 0; j < 32; ++j) {
        if (amax < fabs(x[j])) {
            amax = fabs(x[j]);
            vmax = x[j];
        }
    }
    const float d = vmax / -8.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    y->d = half(d);
    for (int j = 0; j < 16; ++j) {
        const float x0 = x[j] * id;
        const float x1 = x[j + 16] * id;
        const int q0 = min(15, (int) (x0 + 8.5f));
        const int q1 = min(15, (int) (x1 + 8.5f));
        y->qs[j] = (uint8_t) (q0 | (q1 << 4));
    }
}

/* Index of the codebook entry nearest n; a tie goes to the lower index. */
static inline uint nearest_nf4(float n) {
    uint best = 0;
    float best_err = fabs(n - caramba_nf4_values[0]);
    for (uint i = 1; i < 16; ++i) {
        const float err = fabs(n - caramba_nf4_values[i]);
        if (err < best_err) {
            best = i;
            best_err = err;
        }
    }
    return best;
}

static inline void quantize_nf4(device const float * x, device block_nf4 * y) {
    float amax = 0.0f;
    for (int j = 0; j < 64; ++j) amax = max(amax, fabs(x[j]));
    y->d = half(amax);
    for (int j = 0; j < 32; ++j) {
        const float n0 = amax != 0.0f ? x[j] / amax : 0.0f;
        const float n1 = amax != 0.0f ? x[j + 32] / amax : 0.0f;
        y->qs[j] = (uint8_t) (nearest_nf4(n0) | (nearest_nf4(n1) << 4));
    }
}

/* Encode block_elems(format) values of x into dst (block_bytes(format) bytes). */
static inline void quantize_unit(int format, device const float * x, device uchar * dst) {
    if (format == CARAMBA_METAL_F32) {
        *(device float *) dst = x[0];
    } else if (format == CARAMBA_METAL_F16) {
        *(device half *) dst = half(x[0]);
    } else if (format == CARAMBA_METAL_Q8_0) {
        quantize_q8_0(x, (device block_q8_0 *) dst);
    } else if (format == CARAMBA_METAL_Q4_0) {
        quantize_q4_0(x, (device block_q4_0 *) dst);
    } else {
        quantize_nf4(x, (device block_nf4 *) dst);
    }
}

#endif /* CARAMBA_METAL_BLOCKS_H */
