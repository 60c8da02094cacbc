// Bad input never aborts: each case returns a status naming the problem.

#include <cstring>
#include <limits>
#include <string>

#include "test_util.h"

namespace {

void expect_error(const caramba_status& st, caramba_status_code code, const char* needle) {
    CHECK(st.code == code);
    if (std::strstr(st.message, needle) == nullptr) {
        CHECK(std::strstr(st.message, needle) != nullptr);
        std::fprintf(stderr, "  message '%s' lacks '%s'\n", st.message, needle);
    }
}

struct Setup {
    int64_t B = 2, Hq = 4, Hkv = 2, S = 8, D = 64, Dv = 32;
    std::vector<float> q = std::vector<float>(static_cast<size_t>(B * Hq * D), 0.5f);
    std::vector<uint8_t> k = std::vector<uint8_t>(static_cast<size_t>(B * Hkv * S * 68), 0);
    std::vector<float> v = std::vector<float>(static_cast<size_t>(B * Hkv * S * Dv), 1.0f);
    std::vector<float> out = std::vector<float>(static_cast<size_t>(B * Hq * Dv));
    int32_t lengths[2] = {3, 8};
    caramba_decode_params p = test::decode_params(B, Hq, Hkv, S);
    caramba_query_tensor qt() const { return {q.data(), D, Hq * D, D}; }
    caramba_kv_tensor kt() const { return {k.data(), CARAMBA_FORMAT_Q8_0, D, Hkv * S * 68, S * 68, 68}; }
    caramba_kv_tensor vt() const {
        return {v.data(), CARAMBA_FORMAT_F32, Dv, Hkv * S * Dv * 4, S * Dv * 4, Dv * 4};
    }
    caramba_output_tensor ot() { return {out.data(), Dv, Hq * Dv, Dv}; }
    caramba_status run() { return caramba_decode_attention(&p, qt(), kt(), vt(), lengths, 0.125f, ot()); }
};

void test_decode_errors() {
    {
        Setup s;
        CHECK_OK(s.run());
        CHECK(std::fabs(s.out[0] - 1.0f) < 1e-6f);  // v is all ones
    }
    {
        Setup s;
        s.lengths[1] = 0;
        expect_error(s.run(), CARAMBA_ERR_INVALID_ARGUMENT, "lengths[1] = 0");
    }
    {
        Setup s;
        s.lengths[0] = 9;
        expect_error(s.run(), CARAMBA_ERR_INVALID_ARGUMENT, "max_seq_len");
    }
    {
        Setup s;
        s.p.num_kv_heads = 3;
        expect_error(s.run(), CARAMBA_ERR_INVALID_ARGUMENT, "multiple of num_kv_heads");
    }
    {
        Setup s;
        expect_error(caramba_decode_attention(nullptr, s.qt(), s.kt(), s.vt(), s.lengths, 1.0f, s.ot()),
                     CARAMBA_ERR_INVALID_ARGUMENT, "params");
    }
    {
        Setup s;
        caramba_kv_tensor k = s.kt();
        k.dim = 48;  // not the query's 64, and not a multiple of 32
        expect_error(caramba_decode_attention(&s.p, s.qt(), k, s.vt(), s.lengths, 1.0f, s.ot()),
                     CARAMBA_ERR_INVALID_ARGUMENT, "k: dim 48");
    }
    {
        Setup s;
        caramba_query_tensor q = s.qt();
        q.dim = 48;
        caramba_kv_tensor k = s.kt();
        k.dim = 48;
        expect_error(caramba_decode_attention(&s.p, q, k, s.vt(), s.lengths, 1.0f, s.ot()),
                     CARAMBA_ERR_INVALID_ARGUMENT, "multiple of the q8_0 block");
    }
    {
        Setup s;
        caramba_kv_tensor k = s.kt();
        k.format = static_cast<caramba_format>(42);
        expect_error(caramba_decode_attention(&s.p, s.qt(), k, s.vt(), s.lengths, 1.0f, s.ot()),
                     CARAMBA_ERR_INVALID_ARGUMENT, "unknown format");
    }
    {
        Setup s;
        caramba_output_tensor o = s.ot();
        o.stride_h = 8;  // rows of 32 floats, 8 apart: overlapping writes
        expect_error(caramba_decode_attention(&s.p, s.qt(), s.kt(), s.vt(), s.lengths, 1.0f, o),
                     CARAMBA_ERR_INVALID_ARGUMENT, "overlap");
    }
    {
        Setup s;
        caramba_output_tensor o{s.q.data(), s.Dv, s.Hq * s.Dv, s.Dv};  // out aliases q
        expect_error(caramba_decode_attention(&s.p, s.qt(), s.kt(), s.vt(), s.lengths, 1.0f, o),
                     CARAMBA_ERR_INVALID_ARGUMENT, "out overlaps q");
    }
    {
        Setup s;
        expect_error(caramba_decode_attention(&s.p, s.qt(), s.kt(), s.vt(), s.lengths,
                                              std::numeric_limits<float>::quiet_NaN(), s.ot()),
                     CARAMBA_ERR_INVALID_ARGUMENT, "scale must be finite");
    }
    {
        Setup s;
        caramba_kv_tensor v = s.vt();
        v.data = nullptr;
        expect_error(caramba_decode_attention(&s.p, s.qt(), s.kt(), v, s.lengths, 1.0f, s.ot()),
                     CARAMBA_ERR_INVALID_ARGUMENT, "v: data is NULL");
    }
    {
        Setup s;
        s.p.num_splits = -1;
        expect_error(s.run(), CARAMBA_ERR_INVALID_ARGUMENT, "num_splits");
    }
    {
        Setup s;
        char tiny[16];
        s.p.workspace = tiny;
        s.p.workspace_bytes = sizeof tiny;
        expect_error(s.run(), CARAMBA_ERR_INVALID_ARGUMENT, "workspace holds 16 bytes");
    }
    {
        Setup s;
        s.p.num_splits = 1000000;  // clamped to the longest sequence
        s.p.num_threads = 1000;    // clamped to the work items
        CHECK_OK(s.run());
    }
    {
        Setup s;
        s.p.path = CARAMBA_PATH_SIMD;
        const caramba_status st = s.run();
        if (caramba_simd_available()) {
            CHECK(st.code == CARAMBA_OK);
        } else {
            expect_error(st, CARAMBA_ERR_UNSUPPORTED, "path=simd");
        }
    }
    for (caramba_path path : {CARAMBA_PATH_AVX2, CARAMBA_PATH_AVX512, CARAMBA_PATH_NEON}) {
        Setup s;
        s.p.path = path;
        const caramba_status st = s.run();
        if (caramba_path_available(path)) {
            CHECK(st.code == CARAMBA_OK);
        } else {
            expect_error(st, CARAMBA_ERR_UNSUPPORTED, "not available on this CPU/build");
        }
    }
    {
        Setup s;
        s.p.path = static_cast<caramba_path>(17);
        expect_error(s.run(), CARAMBA_ERR_INVALID_ARGUMENT, "path: unknown value 17");
    }
}

void test_quant_errors() {
    float x[32] = {0};
    uint8_t buf[64];
    expect_error(caramba_quantize(CARAMBA_FORMAT_Q4_0, x, 16, buf, sizeof buf, CARAMBA_PATH_AUTO),
                 CARAMBA_ERR_INVALID_ARGUMENT, "multiple of the q4_0 block");
    expect_error(caramba_quantize(CARAMBA_FORMAT_Q8_0, x, 32, buf, 33, CARAMBA_PATH_AUTO),
                 CARAMBA_ERR_INVALID_ARGUMENT, "dst holds 33 bytes");
    expect_error(caramba_dequantize(CARAMBA_FORMAT_NF4, buf, sizeof buf, 32, x, CARAMBA_PATH_AUTO),
                 CARAMBA_ERR_INVALID_ARGUMENT, "nf4 block (64)");
    caramba_format f;
    expect_error(caramba_format_parse("q5_k", &f), CARAMBA_ERR_INVALID_ARGUMENT, "unknown format 'q5_k'");
    CHECK_OK(caramba_format_parse("nf4", &f));
    CHECK(f == CARAMBA_FORMAT_NF4);
    CHECK(std::string(caramba_status_code_name(CARAMBA_ERR_UNSUPPORTED)) == "unsupported");
}

}  // namespace

int main() {
    test_decode_errors();
    test_quant_errors();
    std::printf("simd: %s, default threads: %d, paths:", caramba_simd_name(), caramba_default_num_threads());
    for (int p = 0; p <= CARAMBA_PATH_NEON; ++p) {
        if (caramba_path_available(static_cast<caramba_path>(p))) {
            std::printf(" %s", caramba_path_name(static_cast<caramba_path>(p)));
        }
    }
    std::printf("\n");
    return test::finish("test_api");
}
