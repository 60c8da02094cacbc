// Quantization: fp16 conversion, round-trip error bounds per format, scalar == SIMD bytes.

#include <algorithm>
#include <cstring>

#include "test_util.h"

namespace {

const caramba_format kFormats[] = {CARAMBA_FORMAT_F32, CARAMBA_FORMAT_F16, CARAMBA_FORMAT_Q8_0,
                                   CARAMBA_FORMAT_Q4_0, CARAMBA_FORMAT_NF4};

void test_fp16() {
    // Every finite fp16 survives fp16 -> fp32 -> fp16.
    for (uint32_t h = 0; h < 0x10000; ++h) {
        const bool nan = (h & 0x7C00) == 0x7C00 && (h & 0x03FF) != 0;
        if (nan) continue;
        CHECK(caramba_fp32_to_fp16(caramba_fp16_to_fp32(static_cast<caramba_fp16>(h))) == h);
    }
    // Round to nearest, ties to even: 1 + 2^-11 is halfway between 1 and 1 + 2^-10.
    CHECK(caramba_fp32_to_fp16(1.0f + std::ldexp(1.0f, -11)) == 0x3C00);
    CHECK(caramba_fp32_to_fp16(1.0f + 3 * std::ldexp(1.0f, -11)) == 0x3C02);
    CHECK(caramba_fp32_to_fp16(65520.0f) == 0x7C00);  // rounds to infinity
    CHECK(caramba_fp32_to_fp16(std::ldexp(1.0f, -25)) == 0x0000);  // tie to even (zero)
    CHECK(caramba_fp32_to_fp16(std::ldexp(1.5f, -25)) == 0x0001);
}

// Largest |x| in each block of `be` values.
float block_amax(const float* x, int be) {
    float m = 0.0f;
    for (int j = 0; j < be; ++j) m = std::max(m, std::fabs(x[j]));
    return m;
}

void check_roundtrip(caramba_format f, const std::vector<float>& x, caramba_path path) {
    const int64_t n = static_cast<int64_t>(x.size());
    std::vector<uint8_t> q(static_cast<size_t>(test::row_bytes(f, n)));
    std::vector<float> y(x.size());
    CHECK_OK(caramba_quantize(f, x.data(), n, q.data(), static_cast<int64_t>(q.size()), path));
    CHECK_OK(caramba_dequantize(f, q.data(), static_cast<int64_t>(q.size()), n, y.data(), path));
    const int be = static_cast<int>(caramba_format_block_elems(f));
    const float fp16_rel = std::ldexp(1.0f, -11);
    for (int64_t i = 0; i < n; ++i) {
        const float amax = block_amax(x.data() + (i / be) * be, be);
        // fp16 scales lose relative precision 2^-11, or absolute 2^-25 once subnormal.
        auto scale_err = [&](float d) { return std::max(d * fp16_rel, std::ldexp(1.0f, -25)); };
        float bound = 0.0f;
        switch (f) {
            case CARAMBA_FORMAT_F32: bound = 0.0f; break;
            case CARAMBA_FORMAT_F16: bound = scale_err(std::fabs(x[i])); break;
            // half a step, plus the scale's rounding times |q| <= 127
            case CARAMBA_FORMAT_Q8_0: bound = amax / 254 + 127 * scale_err(amax / 127); break;
            // the value opposite the signed max clamps at 15: up to one full step d = amax/8
            case CARAMBA_FORMAT_Q4_0: bound = amax / 8 + 8 * scale_err(amax / 8); break;
            // half the widest codebook gap (-1 .. -0.696), plus the scale's rounding
            case CARAMBA_FORMAT_NF4: bound = amax * 0.1520f + scale_err(amax); break;
        }
        bound *= 1.0001f;
        if (!(std::fabs(y[i] - x[i]) <= bound + 1e-30f)) {
            CHECK(std::fabs(y[i] - x[i]) <= bound);
            std::fprintf(stderr, "  %s i=%lld x=%g y=%g bound=%g\n", caramba_format_name(f),
                         static_cast<long long>(i), x[i], y[i], bound);
            return;
        }
    }
}

std::vector<float> special_rows(std::mt19937& rng, int be) {
    // Zeros, one spike, negative max, ties after scaling, tiny (subnormal-scale) values.
    std::vector<float> x;
    std::vector<float> b(static_cast<size_t>(be), 0.0f);
    x.insert(x.end(), b.begin(), b.end());
    b[3] = -2.5f;
    x.insert(x.end(), b.begin(), b.end());
    for (int j = 0; j < be; ++j) b[j] = static_cast<float>(j - be / 2) * 0.5f;
    x.insert(x.end(), b.begin(), b.end());
    for (int j = 0; j < be; ++j) b[j] = static_cast<float>(j % 7) * 127.0f / 254.0f;  // .5 ties
    x.insert(x.end(), b.begin(), b.end());
    for (int j = 0; j < be; ++j) b[j] = std::ldexp(static_cast<float>(j) - 3.0f, -30);
    x.insert(x.end(), b.begin(), b.end());
    auto r = test::randn(rng, static_cast<size_t>(be), 1e4f);
    x.insert(x.end(), r.begin(), r.end());
    return x;
}

void test_formats() {
    std::mt19937 rng(1234);
    std::vector<caramba_path> simd_paths;
    for (caramba_path p : {CARAMBA_PATH_AVX2, CARAMBA_PATH_AVX512, CARAMBA_PATH_NEON}) {
        if (caramba_path_available(p)) simd_paths.push_back(p);
    }
    for (caramba_format f : kFormats) {
        const int be = static_cast<int>(std::max<int64_t>(64, caramba_format_block_elems(f)));
        for (int trial = 0, trials = test::fuzz_count(200); trial < trials; ++trial) {
            const int64_t blocks = 1 + trial % 9;
            std::vector<float> x = test::randn(rng, static_cast<size_t>(blocks * be),
                                               std::ldexp(1.0f, trial % 20 - 10));
            if (trial == 0) x = special_rows(rng, be);
            check_roundtrip(f, x, CARAMBA_PATH_SCALAR);
            for (caramba_path path : simd_paths) {
                check_roundtrip(f, x, path);
                // Identical bytes and identical decoded values on every path.
                const int64_t n = static_cast<int64_t>(x.size());
                const int64_t nb = test::row_bytes(f, n);
                std::vector<uint8_t> a(nb), b(nb);
                CHECK_OK(caramba_quantize(f, x.data(), n, a.data(), nb, CARAMBA_PATH_SCALAR));
                CHECK_OK(caramba_quantize(f, x.data(), n, b.data(), nb, path));
                CHECK(a == b);
                std::vector<float> ya(x.size()), yb(x.size());
                CHECK_OK(caramba_dequantize(f, a.data(), nb, n, ya.data(), CARAMBA_PATH_SCALAR));
                CHECK_OK(caramba_dequantize(f, a.data(), nb, n, yb.data(), path));
                CHECK(std::memcmp(ya.data(), yb.data(), ya.size() * sizeof(float)) == 0);
            }
        }
    }
}

void test_layouts() {
    // Hand-checked blocks in GGML's layout.
    float x[32];
    for (int j = 0; j < 32; ++j) x[j] = static_cast<float>(j) - 16.0f;  // max |x| = 16 at j=0
    caramba_block_q8_0 b8;
    CHECK_OK(caramba_quantize(CARAMBA_FORMAT_Q8_0, x, 32, &b8, sizeof b8, CARAMBA_PATH_SCALAR));
    CHECK(b8.d == caramba_fp32_to_fp16(16.0f / 127));
    CHECK(b8.qs[0] == -127 && b8.qs[16] == 0 && b8.qs[31] == 119);  // roundf(15 * 127/16) = 119
    caramba_block_q4_0 b4;
    CHECK_OK(caramba_quantize(CARAMBA_FORMAT_Q4_0, x, 32, &b4, sizeof b4, CARAMBA_PATH_SCALAR));
    CHECK(b4.d == caramba_fp32_to_fp16(2.0f));  // max = -16, d = -16 / -8
    // element 0: -16 * 0.5 + 8.5 = 0.5 -> 0; element 16: 0 -> 8 (high nibble of byte 0)
    CHECK(b4.qs[0] == (0 | (8 << 4)));
    const float* cb = caramba_nf4_codebook();
    CHECK(cb[7] == 0.0f && cb[0] == -1.0f && cb[15] == 1.0f);
    float z[64];
    for (int j = 0; j < 64; ++j) z[j] = j < 32 ? -1.0f : 1.0f;
    caramba_block_nf4 bn;
    CHECK_OK(caramba_quantize(CARAMBA_FORMAT_NF4, z, 64, &bn, sizeof bn, CARAMBA_PATH_SCALAR));
    CHECK(bn.qs[0] == (0 | (15 << 4)));
    // Tie between codebook entries 6 and 7 (-0.0910 and 0) goes to the lower index.
    for (int j = 0; j < 64; ++j) z[j] = j == 1 ? 1.0f : (cb[6] + cb[7]) / 2;
    CHECK_OK(caramba_quantize(CARAMBA_FORMAT_NF4, z, 64, &bn, sizeof bn, CARAMBA_PATH_SCALAR));
    const float mid = (cb[6] + cb[7]) / 2;
    if (std::fabs(mid - cb[6]) == std::fabs(mid - cb[7])) CHECK((bn.qs[0] & 0x0F) == 6);
}

}  // namespace

int main() {
    test_fp16();
    test_layouts();
    test_formats();
    return test::finish("test_quant");
}
