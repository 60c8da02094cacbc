/* The public headers compile as C and the library links from a C program. */
#include <math.h>
#include <stdio.h>

#include "caramba/kernels.h"

int main(void) {
    float q[64], out[32];
    float x[32];
    caramba_block_q8_0 k[2][2];
    caramba_block_q4_0 v[2];
    int32_t lengths[1] = {2};
    caramba_decode_params p;
    caramba_status st;
    int i;
    for (i = 0; i < 64; ++i) q[i] = (float)(i % 5) * 0.1f;
    for (i = 0; i < 32; ++i) x[i] = (float)i / 31.0f;
    for (i = 0; i < 2; ++i) {
        caramba_quantize(CARAMBA_FORMAT_Q8_0, q, 64, k[i], sizeof k[i], CARAMBA_PATH_AUTO);
        caramba_quantize(CARAMBA_FORMAT_Q4_0, x, 32, &v[i], sizeof v[i], CARAMBA_PATH_AUTO);
    }
    caramba_decode_params_init(&p);
    p.batch = 1;
    p.num_q_heads = 1;
    p.num_kv_heads = 1;
    p.max_seq_len = 2;
    {
        caramba_query_tensor qt = {q, 64, 64, 64};
        caramba_kv_tensor kt = {k, CARAMBA_FORMAT_Q8_0, 64, sizeof k, sizeof k, sizeof k[0]};
        caramba_kv_tensor vt = {v, CARAMBA_FORMAT_Q4_0, 32, sizeof v, sizeof v, sizeof v[0]};
        caramba_output_tensor ot = {out, 32, 32, 32};
        st = caramba_decode_attention(&p, qt, kt, vt, lengths, 0.125f, ot);
    }
    if (st.code != CARAMBA_OK) {
        printf("test_c_api: %s\n", st.message);
        return 1;
    }
    /* Two identical rows: the output is that row, within q4_0's error of x. */
    for (i = 0; i < 32; ++i) {
        if (fabsf(out[i] - x[i]) > 1.0f / 8.0f) {
            printf("test_c_api: out[%d] = %g, expected ~%g\n", i, out[i], x[i]);
            return 1;
        }
    }
    printf("test_c_api: ok (%s, version %s)\n", caramba_simd_name(), CARAMBA_KERNELS_VERSION_STRING);
    return 0;
}
