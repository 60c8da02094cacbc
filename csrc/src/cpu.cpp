// Run-time selection of the SIMD variant, and the default thread count.

#include <thread>

#include "caramba/cpu.h"
#include "internal.h"

#if defined(__linux__)
#include <sched.h>
#endif

namespace caramba::detail {

bool avx2_cpu_supported() {
#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
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

bool simd_cpu_supported() {
    if (avx2_codec() != nullptr) return avx2_cpu_supported();
    return neon_codec() != nullptr;  // NEON is part of the AArch64 baseline
}

const char* simd_isa_name() {
    if (avx2_codec() != nullptr && avx2_cpu_supported()) return "avx2+fma+f16c";
    if (neon_codec() != nullptr) return "neon";
    return "none";
}

const RowCodec* simd_codec() {
    if (!simd_cpu_supported()) return nullptr;
    return avx2_codec() != nullptr ? avx2_codec() : neon_codec();
}

const AttentionKernels* simd_attention_kernels() {
    if (!simd_cpu_supported()) return nullptr;
    return avx2_attention_kernels() != nullptr ? avx2_attention_kernels() : neon_attention_kernels();
}

}  // namespace caramba::detail

extern "C" {

int caramba_simd_available(void) { return caramba::detail::simd_cpu_supported() ? 1 : 0; }

const char* caramba_simd_name(void) { return caramba::detail::simd_isa_name(); }

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
