// Run-time selection of the SIMD variants, and the default thread count.

#include <initializer_list>
#include <thread>

#include "caramba/cpu.h"
#include "internal.h"

#if defined(__linux__)
#include <sched.h>
#endif

namespace caramba::detail {

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#define CARAMBA_X86_DISPATCH 1
#endif

bool avx2_cpu_supported() {
#ifdef CARAMBA_X86_DISPATCH
    static const bool supported = [] {
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
               __builtin_cpu_supports("f16c");
    }();
    return supported;
#else
    return false;
#endif
}

bool avx512_cpu_supported() {
#ifdef CARAMBA_X86_DISPATCH
    // libgcc's checks include the OS saving the AVX-512 register state (XCR0).
    static const bool supported = [] {
        __builtin_cpu_init();
        return avx2_cpu_supported() && __builtin_cpu_supports("avx512f") &&
               __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
               __builtin_cpu_supports("avx512dq");
    }();
    return supported;
#else
    return false;
#endif
}

bool amd_cpu() {
#ifdef CARAMBA_X86_DISPATCH
    static const bool amd = [] {
        __builtin_cpu_init();
        return __builtin_cpu_is("amd") != 0;
    }();
    return amd;
#else
    return false;
#endif
}

namespace {

bool has(caramba_path path) {
    switch (path) {
        case CARAMBA_PATH_AVX2:
            return avx2_codec() != nullptr && avx2_attention_kernels() != nullptr && avx2_cpu_supported();
        case CARAMBA_PATH_AVX512:
            return has(CARAMBA_PATH_AVX2) && avx512_attention_kernels() != nullptr && avx512_cpu_supported();
        case CARAMBA_PATH_NEON:  // part of the AArch64 baseline
            return neon_codec() != nullptr && neon_attention_kernels() != nullptr;
        default:
            return false;
    }
}

caramba_path best_simd() {
    for (caramba_path p : {CARAMBA_PATH_AVX512, CARAMBA_PATH_AVX2, CARAMBA_PATH_NEON}) {
        if (has(p)) return p;
    }
    return CARAMBA_PATH_SCALAR;
}

}  // namespace

bool simd_cpu_supported() { return best_simd() != CARAMBA_PATH_SCALAR; }

const char* simd_isa_name() {
    const caramba_path p = best_simd();
    return p == CARAMBA_PATH_SCALAR ? "none" : path_name(p);
}

const char* path_name(int path) {
    switch (path) {
        case CARAMBA_PATH_AUTO: return "auto";
        case CARAMBA_PATH_SCALAR: return "scalar";
        case CARAMBA_PATH_SIMD: return "simd";
        case CARAMBA_PATH_AVX2: return "avx2";
        case CARAMBA_PATH_AVX512: return "avx512";
        case CARAMBA_PATH_NEON: return "neon";
    }
    return nullptr;
}

const RowCodec* path_codec(caramba_path path) {
    if (path == CARAMBA_PATH_SCALAR) return &scalar_codec();
    if (path == CARAMBA_PATH_AUTO || path == CARAMBA_PATH_SIMD) {
        const bool automatic = path == CARAMBA_PATH_AUTO;
        path = best_simd();
        if (path == CARAMBA_PATH_SCALAR) return automatic ? &scalar_codec() : nullptr;
    }
    if (!has(path)) return nullptr;
    switch (path) {
        case CARAMBA_PATH_NEON: return neon_codec();
        case CARAMBA_PATH_AVX512: return avx512_codec();  // the AVX2 quantizer, 16-lane dequantizer
        default: return avx2_codec();
    }
}

const AttentionKernels* path_attention_kernels(caramba_path path) {
    if (path == CARAMBA_PATH_SCALAR) return &scalar_attention_kernels();
    if (path == CARAMBA_PATH_AUTO || path == CARAMBA_PATH_SIMD) {
        const bool automatic = path == CARAMBA_PATH_AUTO;
        path = best_simd();
        if (path == CARAMBA_PATH_SCALAR) return automatic ? &scalar_attention_kernels() : nullptr;
    }
    if (!has(path)) return nullptr;
    switch (path) {
        case CARAMBA_PATH_AVX512: return avx512_attention_kernels();
        case CARAMBA_PATH_AVX2: return avx2_attention_kernels();
        default: return neon_attention_kernels();
    }
}

}  // namespace caramba::detail

extern "C" {

int caramba_simd_available(void) { return caramba::detail::simd_cpu_supported() ? 1 : 0; }

int caramba_path_available(caramba_path path) {
    if (caramba::detail::path_name(caramba::detail::raw(path)) == nullptr) return 0;
    return caramba::detail::path_attention_kernels(path) != nullptr ? 1 : 0;
}

const char* caramba_simd_name(void) { return caramba::detail::simd_isa_name(); }

const char* caramba_path_name(caramba_path path) {
    return caramba::detail::path_name(caramba::detail::raw(path));
}

int caramba_default_num_threads(void) {
#if defined(__linux__)
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0) {
        const int n = CPU_COUNT(&set);
        if (n > 0) return n;
    }
#endif
    const unsigned n = std::thread::hardware_concurrency();
    return n > 0 ? static_cast<int>(n) : 1;
}

const char* caramba_status_code_name(caramba_status_code code) {
    switch (code) {
        case CARAMBA_OK: return "ok";
        case CARAMBA_ERR_INVALID_ARGUMENT: return "invalid_argument";
        case CARAMBA_ERR_UNSUPPORTED: return "unsupported";
        case CARAMBA_ERR_OUT_OF_MEMORY: return "out_of_memory";
        case CARAMBA_ERR_INTERNAL: return "internal";
    }
    return "unknown";
}

}  // extern "C"
