// Decode attention (standard and DBA) against a naive double-precision reference over many
// random shapes: batch 1..8, GQA ratio 1..8, head dims 32..256, odd lengths and lengths that are
// not a multiple of the chunk or tile size, padded strides, every format, both paths.
//
// The reference runs on the dequantized cache, so the only differences are float32 rounding:
// |out - ref| <= 3e-5 * max|v| * (1 + max_s scale * sum_i |q_i k_si|) bounds the error of
// float32 dot products of length <= 512 fed through exp and of the weighted value sums.

#include <algorithm>
#include <cstring>

#include "test_util.h"

namespace {

const caramba_format kFormats[] = {CARAMBA_FORMAT_F32, CARAMBA_FORMAT_F16, CARAMBA_FORMAT_Q8_0,
                                   CARAMBA_FORMAT_Q4_0, CARAMBA_FORMAT_NF4};

// A (B, H, S_max, dim) cache: the quantized bytes (rows padded by `pad` bytes), the decoded values.
struct Cache {
    caramba_format format;
    int64_t B, H, S, dim, row_bytes, stride_s;
    std::vector<uint8_t> bytes;
    std::vector<double> values;  // dequantized, (B, H, S, dim)

    caramba_kv_tensor tensor() const {
        return caramba_kv_tensor{bytes.data(), format, dim, H * S * stride_s, S * stride_s, stride_s};
    }
    const double* row(int64_t b, int64_t h, int64_t s) const {
        return values.data() + ((b * H + h) * S + s) * dim;
    }
};

Cache make_cache(std::mt19937& rng, caramba_format f, int64_t B, int64_t H, int64_t S, int64_t dim,
                 int64_t pad) {
    Cache c{f, B, H, S, dim, test::row_bytes(f, dim), 0, {}, {}};
    c.stride_s = c.row_bytes + pad;
    c.bytes.assign(static_cast<size_t>(B * H * S * c.stride_s), 0xAB);
    c.values.resize(static_cast<size_t>(B * H * S * dim));
    std::vector<float> row(static_cast<size_t>(dim));
    for (int64_t r = 0; r < B * H * S; ++r) {
        row = test::randn(rng, static_cast<size_t>(dim));
        uint8_t* dst = c.bytes.data() + r * c.stride_s;
        CHECK_OK(caramba_quantize(f, row.data(), dim, dst, c.row_bytes, CARAMBA_PATH_SCALAR));
        CHECK_OK(caramba_dequantize(f, dst, c.row_bytes, dim, row.data(), CARAMBA_PATH_SCALAR));
        std::copy(row.begin(), row.end(), c.values.begin() + r * dim);
    }
    return c;
}

struct Case {
    int64_t B, Hq, Hkv, S;
    std::vector<int32_t> lengths;
};

// out (B, Hq, Dv) in double; also returns the error scale (1 + max_s |scaled score terms|).
std::vector<double> reference(const Case& cs, const std::vector<const std::vector<float>*>& qs,
                              const std::vector<const Cache*>& ks, const std::vector<float>& scales,
                              const Cache& v, double* err_scale) {
    const int64_t G = cs.Hq / cs.Hkv, Dv = v.dim;
    std::vector<double> out(static_cast<size_t>(cs.B * cs.Hq * Dv), 0.0);
    double worst = 0.0;
    for (int64_t b = 0; b < cs.B; ++b) {
        for (int64_t h = 0; h < cs.Hq; ++h) {
            const int64_t len = cs.lengths[b];
            std::vector<double> s(static_cast<size_t>(len), 0.0);
            for (int64_t t = 0; t < len; ++t) {
                double l1 = 0.0;
                for (size_t i = 0; i < ks.size(); ++i) {
                    const int64_t D = ks[i]->dim;
                    const float* q = qs[i]->data() + (b * cs.Hq + h) * D;
                    const double* k = ks[i]->row(b, h / G, t);
                    double dot = 0.0, abs = 0.0;
                    for (int64_t j = 0; j < D; ++j) {
                        dot += static_cast<double>(q[j]) * k[j];
                        abs += std::fabs(static_cast<double>(q[j]) * k[j]);
                    }
                    s[t] += scales[i] * dot;
                    l1 += std::fabs(scales[i]) * abs;
                }
                worst = std::max(worst, l1);
            }
            const double m = *std::max_element(s.begin(), s.end());
            double sum = 0.0;
            double* o = out.data() + (b * cs.Hq + h) * Dv;
            for (int64_t t = 0; t < len; ++t) {
                const double p = std::exp(s[t] - m);
                sum += p;
                const double* vr = v.row(b, h / G, t);
                for (int64_t j = 0; j < Dv; ++j) o[j] += p * vr[j];
            }
            for (int64_t j = 0; j < Dv; ++j) o[j] /= sum;
        }
    }
    *err_scale = 1.0 + worst;
    return out;
}

int64_t pick(std::mt19937& rng, int64_t lo, int64_t hi) {
    return std::uniform_int_distribution<int64_t>(lo, hi)(rng);
}

int64_t pick_dim(std::mt19937& rng, caramba_format f) {
    // 32..256; plain formats also get widths that are not multiples of 8.
    const int64_t be = f == CARAMBA_FORMAT_NF4 ? 64 : (f == CARAMBA_FORMAT_F32 || f == CARAMBA_FORMAT_F16 ? 1 : 32);
    if (be == 1 && pick(rng, 0, 3) == 0) return pick(rng, 32, 100);
    const int64_t unit = std::max<int64_t>(be, 32);
    return unit * pick(rng, 1, 256 / unit);
}

int64_t g_cases = 0;

void run_case(std::mt19937& rng, bool dba) {
    Case cs;
    cs.B = pick(rng, 1, 8);
    const int64_t G = pick(rng, 1, 8);
    cs.Hkv = pick(rng, 1, cs.B > 4 ? 1 : 3);
    cs.Hq = cs.Hkv * G;
    cs.S = pick(rng, 1, pick(rng, 0, 3) == 0 ? 400 : 70);
    for (int64_t b = 0; b < cs.B; ++b) {
        cs.lengths.push_back(static_cast<int32_t>(pick(rng, 0, 2) == 0 ? cs.S : pick(rng, 1, cs.S)));
    }
    const int n_terms = dba ? 2 : 1;
    std::vector<Cache> ks;
    std::vector<std::vector<float>> qs;
    std::vector<float> scales;
    for (int i = 0; i < n_terms; ++i) {
        const caramba_format f = kFormats[pick(rng, 0, 4)];
        int64_t dim = pick_dim(rng, f);
        if (dba && i == 0) dim = std::min<int64_t>(dim, 128);  // keep DBA cases small
        ks.push_back(make_cache(rng, f, cs.B, cs.Hkv, cs.S, dim, pick(rng, 0, 1) * 6));
        qs.push_back(test::randn(rng, static_cast<size_t>(cs.B * cs.Hq * dim)));
        scales.push_back(static_cast<float>(1.0 / std::sqrt(static_cast<double>(dim)) * (i ? 0.7 : 1.0)));
    }
    const caramba_format vf = kFormats[pick(rng, 0, 4)];
    const Cache v = make_cache(rng, vf, cs.B, cs.Hkv, cs.S, pick_dim(rng, vf), pick(rng, 0, 1) * 2);

    double err_scale = 0.0;
    std::vector<const std::vector<float>*> qp;
    std::vector<const Cache*> kp;
    for (int i = 0; i < n_terms; ++i) {
        qp.push_back(&qs[i]);
        kp.push_back(&ks[i]);
    }
    const std::vector<double> ref = reference(cs, qp, kp, scales, v, &err_scale);
    double vmax = 0.0;
    for (double x : v.values) vmax = std::max(vmax, std::fabs(x));
    const double tol = 3e-5 * std::max(vmax, 1e-30) * err_scale;

    const int64_t out_pad = pick(rng, 0, 1) * 3;
    const int64_t Dv = v.dim;
    const int64_t osh = Dv + out_pad;
    std::vector<float> scalar_out;  // the reference path's answer, for the SIMD paths to match
    for (caramba_path path : {CARAMBA_PATH_SCALAR, CARAMBA_PATH_AVX2, CARAMBA_PATH_AVX512,
                              CARAMBA_PATH_NEON}) {
        if (!caramba_path_available(path)) continue;
        caramba_decode_params p = test::decode_params(cs.B, cs.Hq, cs.Hkv, cs.S);
        p.num_splits = static_cast<int32_t>(pick(rng, 0, 3) == 0 ? 0 : pick(rng, 1, 9));
        p.num_threads = static_cast<int32_t>(pick(rng, 0, 4));
        p.path = path;
        std::vector<float> out(static_cast<size_t>(cs.B * cs.Hq * osh), -7.0f);
        const caramba_output_tensor ot{out.data(), Dv, cs.Hq * osh, osh};
        auto qt = [&](int i) {
            const int64_t D = ks[i].dim;
            return caramba_query_tensor{qs[i].data(), D, cs.Hq * D, D};
        };
        if (dba) {
            CHECK_OK(caramba_dba_decode_attention(&p, qt(0), qt(1), ks[0].tensor(), ks[1].tensor(),
                                                  v.tensor(), cs.lengths.data(), scales[0],
                                                  scales[1], ot));
        } else {
            CHECK_OK(caramba_decode_attention(&p, qt(0), ks[0].tensor(), v.tensor(), cs.lengths.data(),
                                              scales[0], ot));
        }
        double worst = 0.0;
        for (int64_t r = 0; r < cs.B * cs.Hq; ++r) {
            for (int64_t j = 0; j < Dv; ++j) {
                const double d = std::fabs(out[r * osh + j] - ref[r * Dv + j]);
                worst = std::isnan(d) ? 1e30 : std::max(worst, d);
            }
            for (int64_t j = Dv; j < osh; ++j) CHECK(out[r * osh + j] == -7.0f);  // padding untouched
        }
        if (path == CARAMBA_PATH_SCALAR) {
            scalar_out = out;
        } else {
            // scalar vs SIMD directly: each is within tol of the float64 answer
            double apart = 0.0;
            for (size_t i = 0; i < out.size(); ++i) {
                apart = std::max(apart, static_cast<double>(std::fabs(out[i] - scalar_out[i])));
            }
            CHECK(apart <= 2 * tol);
        }
        if (!(worst <= tol)) {
            CHECK(worst <= tol);
            std::fprintf(stderr,
                         "  %s path=%s B=%lld Hq=%lld Hkv=%lld S=%lld k=%s/%lld v=%s/%lld splits=%d "
                         "threads=%d err=%g tol=%g\n",
                         dba ? "dba" : "decode", caramba_path_name(path),
                         (long long)cs.B, (long long)cs.Hq, (long long)cs.Hkv, (long long)cs.S,
                         caramba_format_name(ks[0].format), (long long)ks[0].dim,
                         caramba_format_name(vf), (long long)Dv, p.num_splits, p.num_threads, worst, tol);
        }
        ++g_cases;
    }
}

void test_workspace_and_single_position() {
    // A caller-provided workspace, and a cache of one position (out = v exactly, any scale).
    std::mt19937 rng(7);
    const Cache k = make_cache(rng, CARAMBA_FORMAT_Q8_0, 2, 2, 1, 64, 0);
    const Cache v = make_cache(rng, CARAMBA_FORMAT_Q4_0, 2, 2, 1, 32, 0);
    std::vector<float> q = test::randn(rng, 2 * 4 * 64);
    std::vector<float> out(2 * 4 * 32);
    const int32_t lengths[2] = {1, 1};
    caramba_decode_params p = test::decode_params(2, 4, 2, 1);
    p.num_threads = 3;
    size_t need = 0;
    CHECK_OK(caramba_decode_workspace_bytes(&p, 32, &need));
    std::vector<char> ws(need + 1);
    p.workspace = ws.data() + 1;  // deliberately misaligned: the library aligns inside it
    p.workspace_bytes = need;
    CHECK_OK(caramba_decode_attention(&p, {q.data(), 64, 4 * 64, 64}, k.tensor(), v.tensor(), lengths,
                                      123.0f, {out.data(), 32, 4 * 32, 32}));
    for (int64_t b = 0; b < 2; ++b)
        for (int64_t h = 0; h < 4; ++h)
            for (int64_t j = 0; j < 32; ++j)
                CHECK(std::fabs(out[(b * 4 + h) * 32 + j] - v.row(b, h / 2, 0)[j]) <= 1e-6 * (1 + std::fabs(v.row(b, h / 2, 0)[j])));
}

void test_queried_workspace_serves_equal_and_ragged_lengths() {
    // The workspace query knows no lengths: its bytes must serve equal and ragged lengths
    // alike, with the same output as a workspace the library allocates itself.
    std::mt19937 rng(11);
    const int64_t B = 3, Hq = 4, Hkv = 2, S = 700, D = 32;
    const Cache k = make_cache(rng, CARAMBA_FORMAT_Q4_0, B, Hkv, S, D, 0);
    const Cache v = make_cache(rng, CARAMBA_FORMAT_Q8_0, B, Hkv, S, D, 0);
    std::vector<float> q = test::randn(rng, B * Hq * D);
    caramba_decode_params p = test::decode_params(B, Hq, Hkv, S);
    p.num_threads = 2;
    size_t need = 0;
    CHECK_OK(caramba_decode_workspace_bytes(&p, D, &need));
    std::vector<char> ws(need);
    const int32_t equal[3] = {700, 700, 700}, ragged[3] = {700, 5, 300};
    for (const int32_t* lengths : {equal, ragged}) {
        std::vector<float> own(B * Hq * D), given(B * Hq * D);
        p.workspace = nullptr;
        p.workspace_bytes = 0;
        CHECK_OK(caramba_decode_attention(&p, {q.data(), D, Hq * D, D}, k.tensor(), v.tensor(), lengths,
                                          0.2f, {own.data(), D, Hq * D, D}));
        p.workspace = ws.data();
        p.workspace_bytes = need;
        CHECK_OK(caramba_decode_attention(&p, {q.data(), D, Hq * D, D}, k.tensor(), v.tensor(), lengths,
                                          0.2f, {given.data(), D, Hq * D, D}));
        CHECK(own == given);
    }
}

}  // namespace

int main() {
    std::mt19937 rng(20240601);
    test_workspace_and_single_position();
    test_queried_workspace_serves_equal_and_ragged_lengths();
    // CARAMBA_CPP_FUZZ=N: N of each (formats drawn at random: N = 5000 is about 1,000 per format).
    for (int i = 0, n = test::fuzz_count(600); i < n; ++i) run_case(rng, false);
    for (int i = 0, n = test::fuzz_count(300); i < n; ++i) run_case(rng, true);
    std::printf("test_attention: %lld decode calls checked\n", static_cast<long long>(g_cases));
    return test::finish("test_attention");
}
