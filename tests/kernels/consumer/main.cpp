// One q8_0-K / q4_0-V decode through the installed library, checked against plain loops.
#include <cmath>
#include <cstdio>
#include <vector>

#include <caramba/kernels.h>

int main() {
    const int64_t B = 1, Hq = 4, Hkv = 2, S = 50, D = 64;
    int64_t kb = 0, vb = 0;
    caramba_row_bytes(CARAMBA_FORMAT_Q8_0, D, &kb);
    caramba_row_bytes(CARAMBA_FORMAT_Q4_0, D, &vb);
    std::vector<float> q(B * Hq * D), kf(Hkv * S * D), vf(Hkv * S * D), out(B * Hq * D);
    for (size_t i = 0; i < q.size(); ++i) q[i] = std::sin(0.37f * i);
    for (size_t i = 0; i < kf.size(); ++i) kf[i] = std::cos(0.11f * i);
    for (size_t i = 0; i < vf.size(); ++i) vf[i] = std::sin(0.05f * i + 1);
    std::vector<uint8_t> k(Hkv * S * kb), v(Hkv * S * vb);
    std::vector<float> kd(kf.size()), vd(vf.size());
    for (int64_t r = 0; r < Hkv * S; ++r) {
        caramba_quantize(CARAMBA_FORMAT_Q8_0, &kf[r * D], D, &k[r * kb], kb, CARAMBA_PATH_AUTO);
        caramba_quantize(CARAMBA_FORMAT_Q4_0, &vf[r * D], D, &v[r * vb], vb, CARAMBA_PATH_AUTO);
        caramba_dequantize(CARAMBA_FORMAT_Q8_0, &k[r * kb], kb, D, &kd[r * D], CARAMBA_PATH_SCALAR);
        caramba_dequantize(CARAMBA_FORMAT_Q4_0, &v[r * vb], vb, D, &vd[r * D], CARAMBA_PATH_SCALAR);
    }
    const int32_t lengths[1] = {37};
    const float scale = 0.125f;

    caramba_decode_params p;
    caramba_decode_params_init(&p);
    p.batch = B;
    p.num_q_heads = Hq;
    p.num_kv_heads = Hkv;
    p.max_seq_len = S;
    const caramba_status st = caramba_decode_attention(
        &p, {q.data(), D, Hq * D, D}, {k.data(), CARAMBA_FORMAT_Q8_0, D, Hkv * S * kb, S * kb, kb},
        {v.data(), CARAMBA_FORMAT_Q4_0, D, Hkv * S * vb, S * vb, vb}, lengths, scale,
        {out.data(), D, Hq * D, D});
    if (st.code != CARAMBA_OK) {
        std::printf("consumer: decode failed: %s\n", st.message);
        return 1;
    }
    double worst = 0.0;
    for (int64_t h = 0; h < Hq; ++h) {
        const int64_t g = h / (Hq / Hkv);
        std::vector<double> s(lengths[0]);
        double m = -1e300, sum = 0.0;
        for (int t = 0; t < lengths[0]; ++t) {
            double dot = 0.0;
            for (int64_t d = 0; d < D; ++d) dot += q[h * D + d] * kd[(g * S + t) * D + d];
            s[t] = dot * scale;
            m = std::fmax(m, s[t]);
        }
        for (int t = 0; t < lengths[0]; ++t) sum += std::exp(s[t] - m);
        for (int64_t d = 0; d < D; ++d) {
            double o = 0.0;
            for (int t = 0; t < lengths[0]; ++t) o += std::exp(s[t] - m) / sum * vd[(g * S + t) * D + d];
            worst = std::fmax(worst, std::fabs(o - out[h * D + d]));
        }
    }
    std::printf("consumer: caramba_kernels %s, simd %s, max error %.3g\n",
                CARAMBA_KERNELS_VERSION_STRING, caramba_simd_name(), worst);
    if (!(worst < 1e-5)) return 1;
    std::printf("consumer: ok\n");
    return 0;
}
