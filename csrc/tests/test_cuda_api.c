/* The CUDA library's C API compiles as C, links from a C program and says, without a GPU, what
 * it serves (host checks only: the kernel itself is fuzzed on a GPU by tests/kernels). */
#include <stdio.h>
#include <string.h>

#include "caramba/cuda.h"

static int failures = 0;

static void expect(caramba_status st, caramba_status_code code, const char* word, const char* what) {
    if (st.code != code || (word && !strstr(st.message, word))) {
        printf("FAIL %s: code %d, message '%s'\n", what, (int)st.code, st.message);
        ++failures;
    }
}

/* The Llama-3.2-1B DBA cache: 32 query heads, 8 KV heads; per head sem 4 + geo 8 (token
 * layout, one row of 8 x 4 and 8 x 8 values per token) and v 32 (head layout). */
static caramba_cuda_decode_params llama_dba(const float* dummy) {
    caramba_cuda_decode_params p;
    memset(&p, 0, sizeof p);
    p.q_sem = dummy;
    p.q_geo = dummy;
    p.k_sem.data = dummy;
    p.k_sem.token_stride = 18;
    p.k_sem.head_shift = 4;
    p.k_sem.format = CARAMBA_FORMAT_Q4_0;
    p.k_sem.dim = 4;
    p.k_geo = p.k_sem;
    p.k_geo.token_stride = 36;
    p.k_geo.head_shift = 8;
    p.k_geo.dim = 8;
    p.v.data = dummy;
    p.v.head_stride = 18 * 1024;
    p.v.token_stride = 18;
    p.v.format = CARAMBA_FORMAT_Q4_0;
    p.v.dim = 32;
    p.batch = 1;
    p.q_heads = 32;
    p.kv_heads = 8;
    p.s_max = 1024;
    p.split_len = 1024;
    p.n_splits = 1;
    return p;
}

static void expect_shape(const caramba_cuda_decode_params* p, int warps, int positions,
                         const char* what) {
    int32_t w = -1, n = -1;
    caramba_status st = caramba_cuda_decode_split_shape(p, &w, &n);
    if (st.code != CARAMBA_OK || w != warps || n != positions) {
        printf("FAIL %s: code %d, %d warps x %d positions (want %d x %d)\n", what, (int)st.code,
               (int)w, (int)n, warps, positions);
        ++failures;
    }
}

int main(void) {
    _Alignas(16) float dummy[4] = {0.0f}; /* the row kernel copies 16-byte pieces */
    caramba_cuda_decode_params p = llama_dba(dummy);
    expect(caramba_cuda_decode_supported(&p), CARAMBA_OK, NULL, "the Llama DBA cache");
    p.q_geo = NULL; /* standard attention over the semantic keys alone */
    expect(caramba_cuda_decode_supported(&p), CARAMBA_OK, NULL, "standard attention");

    p = llama_dba(dummy);
    p.v.format = CARAMBA_FORMAT_F16;
    expect(caramba_cuda_decode_supported(&p), CARAMBA_ERR_UNSUPPORTED, "formats", "f16 values");
    p = llama_dba(dummy);
    p.k_geo.format = CARAMBA_FORMAT_Q8_0;
    expect(caramba_cuda_decode_supported(&p), CARAMBA_ERR_UNSUPPORTED, "one format", "mixed keys");
    p = llama_dba(dummy);
    p.k_sem.dim = 5;
    expect(caramba_cuda_decode_supported(&p), CARAMBA_ERR_UNSUPPORTED, "even", "odd key dim");
    p = llama_dba(dummy);
    p.k_geo.dim = 64;
    expect(caramba_cuda_decode_supported(&p), CARAMBA_ERR_UNSUPPORTED, "groups", "9 key groups");
    p = llama_dba(dummy);
    p.v.dim = 96;
    expect(caramba_cuda_decode_supported(&p), CARAMBA_ERR_UNSUPPORTED, "v.dim", "v.dim 96");
    p = llama_dba(dummy);
    p.q_heads = 128;
    expect(caramba_cuda_decode_supported(&p), CARAMBA_ERR_UNSUPPORTED, "heads", "16 per KV head");
    p = llama_dba(dummy);
    p.split_len = 48;
    expect(caramba_cuda_decode_supported(&p), CARAMBA_ERR_INVALID_ARGUMENT, "split_len", "split 48");
    expect(caramba_cuda_decode_supported(NULL), CARAMBA_ERR_INVALID_ARGUMENT, "NULL", "NULL");
    /* Refused before any CUDA call: no GPU is needed to get the reason back. */
    expect(caramba_cuda_decode_partials(&p, NULL), CARAMBA_ERR_INVALID_ARGUMENT, "split_len",
           "partials with split 48");
    if (caramba_cuda_decode_warps_per_sm(&p) != 0) {
        printf("FAIL warps per SM of unsupported parameters is not 0\n");
        ++failures;
    }

    /* Which kernel serves the call: rows (4 teams of 2 warps) for this narrow-head cache, by
     * request, or (AUTO) always where every tensor is q4_0 and otherwise from 64k cached
     * positions per call; the per-KV-head kernel (a warp per KV head) otherwise. */
    p = llama_dba(dummy);
    p.kernel = CARAMBA_CUDA_KERNEL_ROWS;
    expect_shape(&p, 8, 128, "rows asked for");
    p.kernel = CARAMBA_CUDA_KERNEL_HEADS;
    expect_shape(&p, 8, 32, "heads asked for");
    p.kernel = CARAMBA_CUDA_KERNEL_AUTO;
    expect_shape(&p, 8, 128, "auto, q4_0, 1024 positions");
    p.k_sem.format = p.k_geo.format = p.v.format = CARAMBA_FORMAT_Q8_0;
    p.k_sem.token_stride = 34;
    p.k_geo.token_stride = 68;
    p.v.token_stride = 34;
    p.v.head_stride = 34 * 1024;
    expect_shape(&p, 8, 32, "auto, q8_0, 1024 positions");
    p.s_max = 32768;
    p.v.head_stride = 34 * 32768;
    expect_shape(&p, 8, 32, "auto, q8_0, 32768 positions");
    p.batch = 2;
    expect_shape(&p, 8, 128, "auto, q8_0, 2 x 32768 positions");
    p.k_sem.token_stride = 36; /* rows with gaps: no contiguous runs to copy */
    expect_shape(&p, 8, 32, "auto, sparse key rows");
    p = llama_dba(dummy);
    p.kernel = 7;
    expect(caramba_cuda_decode_supported(&p), CARAMBA_ERR_INVALID_ARGUMENT, "kernel", "kernel 7");
    p = llama_dba(dummy);
    p.q_type = 9;
    expect(caramba_cuda_decode_supported(&p), CARAMBA_ERR_INVALID_ARGUMENT, "q_type", "q_type 9");
    printf("%s\n", failures ? "FAILED" : "ok");
    return failures != 0;
}
