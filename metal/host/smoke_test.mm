// The first thing to run on Apple hardware: the Metal kernels against the C++ CPU library.
//
// quantize and append must give the CPU library's bytes; dequantize its floats, bit for bit;
// decode attention (standard and DBA, several split counts) agree to float32 rounding. Prints one
// line per check and exits non-zero on any failure. Registered with ctest as caramba_metal_smoke.
// Written without Apple hardware: never built or run yet.
#import <Foundation/Foundation.h>
#import <Metal/Metal.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "caramba/attention.h"
#include "caramba/quant.h"
#include "caramba_metal.h"

namespace {

int g_failures = 0;

void check(bool ok, const char* what) {
    std::printf("%s %s\n", ok ? "ok  " : "FAIL", what);
    if (!ok) ++g_failures;
}

bool ok(caramba_status s, const char* what) {
    if (s.code != CARAMBA_OK) std::printf("FAIL %s: %s\n", what, s.message);
    if (s.code != CARAMBA_OK) ++g_failures;
    return s.code == CARAMBA_OK;
}

id<MTLBuffer> shared(id<MTLDevice> dev, const void* data, size_t bytes) {
    id<MTLBuffer> b = [dev newBufferWithLength:(bytes ? bytes : 4) options:MTLResourceStorageModeShared];
    if (data) std::memcpy(b.contents, data, bytes);
    return b;
}

caramba_metal_buffer view(id<MTLBuffer> b) { return caramba_metal_buffer{(__bridge void*)b, 0}; }

int64_t row_bytes(caramba_format f, int64_t dim) {
    int64_t bytes = 0;
    caramba_row_bytes(f, dim, &bytes);
    return bytes;
}

std::vector<float> randn(std::mt19937& rng, size_t n, float scale = 1.0f) {
    std::normal_distribution<float> dist(0.0f, scale);
    std::vector<float> x(n);
    for (float& v : x) v = dist(rng);
    return x;
}

// A (B, H, S, row) cache of random rows, quantized by the CPU library.
std::vector<uint8_t> make_cache(std::mt19937& rng, caramba_format f, int64_t rows, int64_t dim) {
    const int64_t rb = row_bytes(f, dim);
    std::vector<uint8_t> cache(rows * rb);
    const std::vector<float> x = randn(rng, rows * dim);
    for (int64_t r = 0; r < rows; ++r) {
        caramba_quantize(f, x.data() + r * dim, dim, cache.data() + r * rb, rb, CARAMBA_PATH_SCALAR);
    }
    return cache;
}

void test_codecs(caramba_metal_context* ctx, id<MTLDevice> dev, std::mt19937& rng) {
    const int64_t rows = 64, dim = 128;
    for (int f = CARAMBA_FORMAT_F32; f <= CARAMBA_FORMAT_NF4; ++f) {
        const caramba_format fmt = static_cast<caramba_format>(f);
        const int64_t rb = row_bytes(fmt, dim);
        const std::vector<float> x = randn(rng, rows * dim, 3.0f);
        std::vector<uint8_t> expected(rows * rb);
        for (int64_t r = 0; r < rows; ++r) {
            caramba_quantize(fmt, x.data() + r * dim, dim, expected.data() + r * rb, rb,
                             CARAMBA_PATH_SCALAR);
        }
        id<MTLBuffer> bx = shared(dev, x.data(), x.size() * 4);
        id<MTLBuffer> bq = shared(dev, nullptr, expected.size());
        char what[64];
        std::snprintf(what, sizeof what, "quantize %s", caramba_format_name(fmt));
        if (ok(caramba_metal_quantize(ctx, fmt, view(bx), rows, dim, view(bq), nullptr), what)) {
            check(std::memcmp(bq.contents, expected.data(), expected.size()) == 0, what);
        }
        std::vector<float> y(rows * dim);
        for (int64_t r = 0; r < rows; ++r) {
            caramba_dequantize(fmt, expected.data() + r * rb, rb, dim, y.data() + r * dim,
                               CARAMBA_PATH_SCALAR);
        }
        id<MTLBuffer> by = shared(dev, nullptr, y.size() * 4);
        std::snprintf(what, sizeof what, "dequantize %s", caramba_format_name(fmt));
        id<MTLBuffer> bsrc = shared(dev, expected.data(), expected.size());
        if (ok(caramba_metal_dequantize(ctx, fmt, view(bsrc), rows, dim, view(by), nullptr), what)) {
            check(std::memcmp(by.contents, y.data(), y.size() * 4) == 0, what);
        }
        // append: 2 x 3 rows into a (2, 3, 5, row) cache at positions 4 and 0
        const int64_t B = 2, H = 3, S = 5;
        std::vector<uint8_t> cache(B * H * S * rb, 0x5a);
        std::vector<uint8_t> want = cache;
        const int32_t lengths[2] = {4, 0};
        for (int64_t b = 0; b < B; ++b)
            for (int64_t h = 0; h < H; ++h)
                std::memcpy(want.data() + ((b * H + h) * S + lengths[b]) * rb,
                            expected.data() + (b * H + h) * rb, rb);
        id<MTLBuffer> bc = shared(dev, cache.data(), cache.size());
        id<MTLBuffer> bl = shared(dev, lengths, sizeof lengths);
        std::snprintf(what, sizeof what, "append %s", caramba_format_name(fmt));
        if (ok(caramba_metal_append(ctx, fmt, view(bc), B, H, S, dim, view(bx), view(bl), nullptr),
               what)) {
            check(std::memcmp(bc.contents, want.data(), want.size()) == 0, what);
        }
    }
}

void test_decode(caramba_metal_context* ctx, id<MTLDevice> dev, std::mt19937& rng,
                 caramba_format kf, caramba_format gf, caramba_format vf, bool dba, int splits) {
    const int64_t B = 2, Hq = 8, Hkv = 2, S = 300, D = 128, Dg = 64, Dv = 128;
    const int32_t lengths[B] = {300, 77};
    const std::vector<float> q = randn(rng, B * Hq * D), qg = randn(rng, B * Hq * Dg);
    const std::vector<uint8_t> k = make_cache(rng, kf, B * Hkv * S, D);
    const std::vector<uint8_t> g = make_cache(rng, gf, B * Hkv * S, Dg);
    const std::vector<uint8_t> v = make_cache(rng, vf, B * Hkv * S, Dv);
    const float scale = 1.0f / std::sqrt(float(D)), scale_geo = 1.0f / std::sqrt(float(Dg));

    std::vector<float> expected(B * Hq * Dv);
    caramba_decode_params cp;
    caramba_decode_params_init(&cp);
    cp.batch = B;
    cp.num_q_heads = Hq;
    cp.num_kv_heads = Hkv;
    cp.max_seq_len = S;
    cp.path = CARAMBA_PATH_SCALAR;
    auto kv = [&](const std::vector<uint8_t>& c, caramba_format f, int64_t dim) {
        const int64_t rb = row_bytes(f, dim);
        return caramba_kv_tensor{c.data(), f, dim, Hkv * S * rb, S * rb, rb};
    };
    const caramba_query_tensor cq{q.data(), D, Hq * D, D}, cg{qg.data(), Dg, Hq * Dg, Dg};
    const caramba_output_tensor co{expected.data(), Dv, Hq * Dv, Dv};
    if (dba) {
        ok(caramba_dba_decode_attention(&cp, cq, cg, kv(k, kf, D), kv(g, gf, Dg), kv(v, vf, Dv),
                                        lengths, scale, scale_geo, co),
           "CPU dba decode");
    } else {
        ok(caramba_decode_attention(&cp, cq, kv(k, kf, D), kv(v, vf, Dv), lengths, scale, co),
           "CPU decode");
    }

    caramba_metal_decode_params mp;
    caramba_metal_decode_params_init(&mp);
    mp.batch = B;
    mp.num_q_heads = Hq;
    mp.num_kv_heads = Hkv;
    mp.max_seq_len = S;
    mp.num_splits = splits;
    id<MTLBuffer> bq = shared(dev, q.data(), q.size() * 4), bg = shared(dev, qg.data(), qg.size() * 4);
    id<MTLBuffer> bk = shared(dev, k.data(), k.size()), bkg = shared(dev, g.data(), g.size());
    id<MTLBuffer> bv = shared(dev, v.data(), v.size()), bl = shared(dev, lengths, sizeof lengths);
    id<MTLBuffer> bo = shared(dev, nullptr, expected.size() * 4);
    const caramba_metal_kv_tensor mk{view(bk), kf, D}, mg{view(bkg), gf, Dg}, mv{view(bv), vf, Dv};
    char what[96];
    std::snprintf(what, sizeof what, "%s k=%s%s%s v=%s splits=%d", dba ? "dba" : "decode",
                  caramba_format_name(kf), dba ? " k_geo=" : "", dba ? caramba_format_name(gf) : "",
                  caramba_format_name(vf), splits);
    const caramba_status st =
        dba ? caramba_metal_dba_decode_attention(ctx, &mp, view(bq), view(bg), mk, mg, mv, view(bl),
                                                 scale, scale_geo, view(bo), nullptr)
            : caramba_metal_decode_attention(ctx, &mp, view(bq), mk, mv, view(bl), scale, view(bo),
                                             nullptr);
    if (!ok(st, what)) return;
    const float* got = static_cast<const float*>(bo.contents);
    float err = 0.0f;
    for (size_t i = 0; i < expected.size(); ++i) err = std::fmax(err, std::fabs(got[i] - expected[i]));
    char line[160];
    std::snprintf(line, sizeof line, "%s (max |metal - cpu| = %.3g)", what, err);
    check(err <= 1e-4f, line);
}

} // namespace

int main() {
    @autoreleasepool {
        caramba_metal_context* ctx = nullptr;
        if (!ok(caramba_metal_context_create(nullptr, &ctx), "create a Metal context")) return 1;
        std::printf("device: %s\n", caramba_metal_device_name(ctx));
        id<MTLDevice> dev = MTLCreateSystemDefaultDevice();
        std::mt19937 rng(1234);
        test_codecs(ctx, dev, rng);
        const caramba_format F[] = {CARAMBA_FORMAT_F32, CARAMBA_FORMAT_F16, CARAMBA_FORMAT_Q8_0,
                                    CARAMBA_FORMAT_Q4_0, CARAMBA_FORMAT_NF4};
        for (caramba_format kf : F)
            for (caramba_format vf : F)
                for (int splits : {1, 5, 0}) test_decode(ctx, dev, rng, kf, kf, vf, false, splits);
        for (caramba_format gf : F) {
            test_decode(ctx, dev, rng, CARAMBA_FORMAT_Q8_0, gf, CARAMBA_FORMAT_Q4_0, true, 3);
        }
        caramba_metal_context_destroy(ctx);
    }
    std::printf("%d failure(s)\n", g_failures);
    return g_failures ? 1 : 0;
}
