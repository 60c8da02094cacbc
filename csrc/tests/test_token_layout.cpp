// Token-layout caches (one row per token holding every KV head, heads straddling blocks) and
// the *_lse entry points, against a double-precision reference on the dequantized rows, on
// every path this CPU runs; plus the API rules: a tensor initialized without `layout` is in
// the head layout, unknown layouts and overlapping lse buffers are refused, and a caller's
// workspace of caramba_decode_workspace_bytes_ex() bytes is enough.
//
// Tolerance as in test_attention.cpp: 3e-5 * max|v| * (1 + max_s sum |scaled q.k terms|) for
// the output, 3e-5 * (1 + that sum) for the log-sum-exp.

#include <algorithm>
#include <cstring>

#include "test_util.h"

namespace {

const caramba_format kFormats[] = {CARAMBA_FORMAT_F32, CARAMBA_FORMAT_F16, CARAMBA_FORMAT_Q8_0,
                                   CARAMBA_FORMAT_Q4_0, CARAMBA_FORMAT_NF4};

int64_t pick(std::mt19937& rng, int64_t lo, int64_t hi) {
    return std::uniform_int_distribution<int64_t>(lo, hi)(rng);
}

int64_t block_of(caramba_format f) { return caramba_format_block_elems(f); }

// A cache in either layout; values[(b, g, s, i)] holds the dequantized numbers.
struct Cache {
    caramba_format format;
    bool token;
    int64_t B, Hkv, S, dim, row_bytes;
    std::vector<uint8_t> bytes;
    std::vector<double> values;

    caramba_kv_tensor tensor() const {
        const int64_t rows_per_b = token ? S : Hkv * S;
        caramba_kv_tensor t{bytes.data(), format, dim, rows_per_b * row_bytes, S * row_bytes, row_bytes,
                            token ? CARAMBA_KV_LAYOUT_TOKEN : CARAMBA_KV_LAYOUT_HEAD};
        return t;
    }
    double at(int64_t b, int64_t g, int64_t s, int64_t i) const {
        return values[static_cast<size_t>(((b * Hkv + g) * S + s) * dim + i)];
    }
};

Cache make_cache(std::mt19937& rng, caramba_format f, bool token, int64_t B, int64_t Hkv, int64_t S,
                 int64_t dim) {
    const int64_t row = token ? Hkv * dim : dim;
    Cache c{f, token, B, Hkv, S, dim, test::row_bytes(f, row), {}, {}};
    const int64_t rows = token ? B * S : B * Hkv * S;
    c.bytes.resize(static_cast<size_t>(rows * c.row_bytes));
    c.values.resize(static_cast<size_t>(B * Hkv * S * dim));
    for (int64_t r = 0; r < rows; ++r) {
        std::vector<float> x = test::randn(rng, static_cast<size_t>(row));
        uint8_t* dst = c.bytes.data() + r * c.row_bytes;
        CHECK_OK(caramba_quantize(f, x.data(), row, dst, c.row_bytes, CARAMBA_PATH_SCALAR));
        CHECK_OK(caramba_dequantize(f, dst, c.row_bytes, row, x.data(), CARAMBA_PATH_SCALAR));
        for (int64_t j = 0; j < row; ++j) {
            int64_t b, g, s, i;
            if (token) {
                b = r / S, s = r % S, g = j / dim, i = j % dim;
            } else {
                b = r / (Hkv * S), g = (r / S) % Hkv, s = r % S, i = j;
            }
            c.values[static_cast<size_t>(((b * Hkv + g) * S + s) * dim + i)] = x[static_cast<size_t>(j)];
        }
    }
    return c;
}

// A per-head width: a block multiple in the head layout; in the token layout only Hkv * dim
// must fill blocks, so e.g. 4 values per head with 8 heads and 32-value blocks.
int64_t pick_dim(std::mt19937& rng, caramba_format f, bool token, int64_t Hkv) {
    const int64_t be = block_of(f);
    if (be == 1) return pick(rng, 1, 72);
    if (!token) return be * pick(rng, 1, 2);
    int64_t unit = be;
    while (unit % 2 == 0 && (Hkv * (unit / 2)) % be == 0) unit /= 2;
    return unit * pick(rng, 1, std::max<int64_t>(1, 48 / unit));
}

void run_case(std::mt19937& rng, caramba_path path, bool dba) {
    const int64_t B = pick(rng, 1, 4), G = pick(rng, 1, 8);
    const int64_t Hkv = std::vector<int64_t>{1, 2, 4, 8}[static_cast<size_t>(pick(rng, 0, 3))];
    const int64_t Hq = Hkv * G, S = pick(rng, 1, pick(rng, 0, 3) == 0 ? 300 : 60);
    std::vector<int32_t> lengths(static_cast<size_t>(B));
    for (auto& l : lengths) l = static_cast<int32_t>(pick(rng, 1, S));
    const int n_keys = dba ? 2 : 1;
    std::vector<Cache> ks;
    std::vector<std::vector<float>> qs;
    std::vector<float> scales;
    for (int i = 0; i < n_keys; ++i) {
        const caramba_format f = kFormats[pick(rng, 0, 4)];
        const bool token = pick(rng, 0, 3) != 0;
        const int64_t d = pick_dim(rng, f, token, Hkv);
        ks.push_back(make_cache(rng, f, token, B, Hkv, S, d));
        qs.push_back(test::randn(rng, static_cast<size_t>(B * Hq * d), 0.5f));
        scales.push_back(static_cast<float>(1.0 / std::sqrt(static_cast<double>(d))));
    }
    const caramba_format vf = kFormats[pick(rng, 0, 4)];
    const bool v_token = pick(rng, 0, 1) != 0;
    const Cache v = make_cache(rng, vf, v_token, B, Hkv, S, pick_dim(rng, vf, v_token, Hkv));
    const int64_t Dv = v.dim;

    caramba_decode_params p = test::decode_params(B, Hq, Hkv, S);
    p.num_splits = static_cast<int32_t>(pick(rng, 0, 5));
    p.num_threads = static_cast<int32_t>(pick(rng, 0, 3));
    p.path = path;
    std::vector<float> out(static_cast<size_t>(B * Hq * Dv), -1.0f), lse(static_cast<size_t>(B * Hq));
    const caramba_output_tensor ot{out.data(), Dv, Hq * Dv, Dv};
    const caramba_lse_tensor lt{lse.data(), Hq, 1};
    caramba_query_tensor qt[2];
    for (int i = 0; i < n_keys; ++i) qt[i] = {qs[i].data(), ks[i].dim, Hq * ks[i].dim, ks[i].dim};
    if (dba) {
        CHECK_OK(caramba_dba_decode_attention_lse(&p, qt[0], qt[1], ks[0].tensor(), ks[1].tensor(),
                                                  v.tensor(), lengths.data(), scales[0], scales[1], ot, lt));
    } else {
        CHECK_OK(caramba_decode_attention_lse(&p, qt[0], ks[0].tensor(), v.tensor(), lengths.data(),
                                              scales[0], ot, lt));
    }
    double vmax = 0.0;
    for (double x : v.values) vmax = std::max(vmax, std::fabs(x));
    for (int64_t b = 0; b < B; ++b) {
        for (int64_t h = 0; h < Hq; ++h) {
            const int64_t g = h / G, len = lengths[static_cast<size_t>(b)];
            std::vector<double> s(static_cast<size_t>(len), 0.0);
            double worst = 0.0;
            for (int64_t t = 0; t < len; ++t) {
                double l1 = 0.0;
                for (int i = 0; i < n_keys; ++i) {
                    const int64_t d = ks[i].dim;
                    const float* q = qs[i].data() + (b * Hq + h) * d;
                    double dot = 0.0, abs = 0.0;
                    for (int64_t j = 0; j < d; ++j) {
                        dot += q[j] * ks[i].at(b, g, t, j);
                        abs += std::fabs(q[j] * ks[i].at(b, g, t, j));
                    }
                    s[static_cast<size_t>(t)] += scales[i] * dot;
                    l1 += std::fabs(scales[i]) * abs;
                }
                worst = std::max(worst, l1);
            }
            const double m = *std::max_element(s.begin(), s.end());
            double sum = 0.0;
            std::vector<double> o(static_cast<size_t>(Dv), 0.0);
            for (int64_t t = 0; t < len; ++t) {
                const double e = std::exp(s[static_cast<size_t>(t)] - m);
                sum += e;
                for (int64_t j = 0; j < Dv; ++j) o[static_cast<size_t>(j)] += e * v.at(b, g, t, j);
            }
            const double tol = 3e-5 * (1.0 + worst);
            for (int64_t j = 0; j < Dv; ++j) {
                const double got = out[static_cast<size_t>((b * Hq + h) * Dv + j)];
                CHECK(std::fabs(got - o[static_cast<size_t>(j)] / sum) <= tol * std::max(1.0, vmax));
            }
            CHECK(std::fabs(lse[static_cast<size_t>(b * Hq + h)] - (m + std::log(sum))) <= tol * (1.0 + std::fabs(m)));
        }
    }
}

void api_rules() {
    std::mt19937 rng(7);
    const int64_t B = 1, Hq = 8, Hkv = 8, S = 5, d = 4;
    const Cache k = make_cache(rng, CARAMBA_FORMAT_Q8_0, true, B, Hkv, S, d);
    const Cache v = make_cache(rng, CARAMBA_FORMAT_Q8_0, false, B, Hkv, S, 32);
    std::vector<float> q = test::randn(rng, static_cast<size_t>(Hq * d));
    std::vector<float> out(static_cast<size_t>(Hq * 32)), lse(static_cast<size_t>(Hq));
    const int32_t lengths[1] = {S};
    caramba_decode_params p = test::decode_params(B, Hq, Hkv, S);
    const caramba_query_tensor qt{q.data(), d, Hq * d, d};
    const caramba_output_tensor ot{out.data(), 32, Hq * 32, 32};

    // An initializer written before `layout` existed means the head layout: here a 4-value
    // head row, which is not a whole q8_0 block, so the call is refused.
    const caramba_kv_tensor old_style = {k.bytes.data(), CARAMBA_FORMAT_Q8_0, d, S * 34, S * 34, 34};
    CHECK(old_style.layout == CARAMBA_KV_LAYOUT_HEAD);
    CHECK(caramba_decode_attention(&p, qt, old_style, v.tensor(), lengths, 0.5f, ot).code ==
          CARAMBA_ERR_INVALID_ARGUMENT);

    caramba_kv_tensor bad = k.tensor();
    std::memset(&bad.layout, 0x7F, sizeof bad.layout);
    const caramba_status st = caramba_decode_attention(&p, qt, bad, v.tensor(), lengths, 0.5f, ot);
    CHECK(st.code == CARAMBA_ERR_INVALID_ARGUMENT && std::strstr(st.message, "k: unknown layout") != nullptr);

    // lse may not overlap out, and its entries must be distinct.
    const caramba_status st2 = caramba_decode_attention_lse(&p, qt, k.tensor(), v.tensor(), lengths, 0.5f, ot,
                                                            caramba_lse_tensor{out.data() + 3, Hq, 1});
    CHECK(st2.code == CARAMBA_ERR_INVALID_ARGUMENT && std::strstr(st2.message, "lse overlaps out") != nullptr);
    const caramba_status st3 = caramba_decode_attention_lse(&p, qt, k.tensor(), v.tensor(), lengths, 0.5f, ot,
                                                            caramba_lse_tensor{lse.data(), Hq, 0});
    CHECK(st3.code == CARAMBA_ERR_INVALID_ARGUMENT && std::strstr(st3.message, "lse: strides") != nullptr);

    // A caller's workspace of exactly workspace_bytes_ex() bytes serves the token path; the
    // head-layout size may not (the token path keeps a tile of rows per thread).
    p.num_threads = 2;
    size_t need = 0;
    CHECK_OK(caramba_decode_workspace_bytes_ex(&p, 32, Hkv * d, &need));
    std::vector<char> ws(need);
    p.workspace = ws.data();
    p.workspace_bytes = ws.size();
    CHECK_OK(caramba_decode_attention_lse(&p, qt, k.tensor(), v.tensor(), lengths, 0.5f, ot,
                                          caramba_lse_tensor{lse.data(), Hq, 1}));
    std::vector<float> out2(out.size()), lse2(lse.size());
    p.workspace = nullptr;
    p.workspace_bytes = 0;
    CHECK_OK(caramba_decode_attention_lse(&p, qt, k.tensor(), v.tensor(), lengths, 0.5f,
                                          caramba_output_tensor{out2.data(), 32, Hq * 32, 32},
                                          caramba_lse_tensor{lse2.data(), Hq, 1}));
    CHECK(out == out2 && lse == lse2);
    size_t head_only = 0;
    CHECK_OK(caramba_decode_workspace_bytes(&p, 32, &head_only));
    CHECK(head_only < need);
}

}  // namespace

int main() {
    const caramba_path paths[] = {CARAMBA_PATH_SCALAR, CARAMBA_PATH_AVX2, CARAMBA_PATH_AVX512, CARAMBA_PATH_NEON};
    std::mt19937 rng(2024);
    int n = 0;
    for (caramba_path path : paths) {
        if (!caramba_path_available(path)) continue;
        for (int i = 0, cases = test::fuzz_count(150); i < cases; ++i, ++n) run_case(rng, path, i % 2 == 1);
    }
    api_rules();
    std::printf("%d token-layout cases\n", n);
    return test::finish("test_token_layout");
}
