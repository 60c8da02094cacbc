// Minimal test harness: CHECK records failures and keeps going; main returns their count.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "caramba/kernels.h"

namespace test {

inline int& failures() {
    static int n = 0;
    return n;
}

#define CHECK(cond)                                                                    \
    do {                                                                               \
        if (!(cond)) {                                                                 \
            ++test::failures();                                                        \
            if (test::failures() <= 20)                                                \
                std::fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
        }                                                                              \
    } while (0)

#define CHECK_OK(expr)                                                                   \
    do {                                                                                 \
        const caramba_status st_ = (expr);                                               \
        if (st_.code != CARAMBA_OK) {                                                    \
            ++test::failures();                                                          \
            if (test::failures() <= 20)                                                  \
                std::fprintf(stderr, "%s:%d: %s -> %s: %s\n", __FILE__, __LINE__, #expr, \
                             caramba_status_code_name(st_.code), st_.message);           \
        }                                                                                \
    } while (0)

inline int finish(const char* name) {
    if (failures() == 0) {
        std::printf("%s: all checks passed\n", name);
        return 0;
    }
    std::printf("%s: %d checks failed\n", name, failures());
    return 1;
}

// How many random problems a fuzz loop runs: CARAMBA_CPP_FUZZ=N where set (the NEON test under
// qemu runs long ones that way), else the loop's default.
inline int fuzz_count(int fallback) {
    const char* given = std::getenv("CARAMBA_CPP_FUZZ");
    const long n = given ? std::strtol(given, nullptr, 10) : 0;
    return n > 0 ? static_cast<int>(n) : fallback;
}

inline std::vector<float> randn(std::mt19937& rng, size_t n, float sigma = 1.0f) {
    std::normal_distribution<float> dist(0.0f, sigma);
    std::vector<float> x(n);
    for (float& v : x) v = dist(rng);
    return x;
}

inline int64_t row_bytes(caramba_format f, int64_t n) {
    int64_t b = 0;
    caramba_row_bytes(f, n, &b);
    return b;
}

// Decode parameters for B sequences of Hq query / Hkv KV heads over S cached positions; the
// rest (splits, threads, path, workspace) at caramba_decode_params_init's defaults.
inline caramba_decode_params decode_params(int64_t B, int64_t Hq, int64_t Hkv, int64_t S) {
    caramba_decode_params p;
    caramba_decode_params_init(&p);
    p.batch = B;
    p.num_q_heads = Hq;
    p.num_kv_heads = Hkv;
    p.max_seq_len = S;
    return p;
}

}  // namespace test
