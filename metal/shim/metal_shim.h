/* Enough of the Metal Shading Language for our .metal sources to compile as C++17 with g++/clang.
 *
 * The shaders include this instead of <metal_stdlib> when __METAL_VERSION__ is not defined, so
 * the same source runs on the CPU against the reference (metal/shim/harness.cpp). What it maps:
 *
 *   kernel, device, constant, thread   -> nothing (one flat address space on the CPU)
 *   threadgroup                        -> nothing; kernels take threadgroup memory as a
 *                                         pointer argument (CARAMBA_THREADGROUP_MEMORY(0), which
 *                                         is [[threadgroup(0)]] on Metal) that the harness
 *                                         shares between the threads of one threadgroup
 *   [[buffer(n)]], [[thread_...]]      -> ignored attributes (compile with -Wno-attributes); the
 *                                         harness passes positions as ordinary arguments
 *   [[function_constant(n)]]           -> a global the harness sets before a launch
 *   half                               -> IEEE binary16 storage, float <-> half rounds to nearest
 *                                         even (as Metal's conversions do)
 *   uchar, ushort, uint, ulong, float2 .. uint4  -> fixed-width scalars, small vector structs
 *   simd_sum, simd_max, simdgroup_barrier, threadgroup_barrier
 *                                      -> hooks into the threadgroup emulator (shim/grid.h),
 *                                         which runs each thread as a fiber and releases them
 *                                         together, so cooperative kernels run faithfully
 *
 * Include it after every standard header (its macros rename `device`, `kernel`, ...). Signed
 * bytes are int8_t in the shaders: MSL's `char` is signed, C++'s need not be.
 */
#ifndef CARAMBA_METAL_SHIM_H
#define CARAMBA_METAL_SHIM_H

#ifdef __METAL_VERSION__
#error "metal_shim.h is for C++ builds of the shaders; Metal has <metal_stdlib>"
#endif

#include <stdint.h>
#include <string.h>

#include <cmath>
#include <type_traits>

namespace caramba_shim {

/* Emulator hooks, defined by the threadgroup emulator (shim/grid.h). */
float simd_reduce(int op, float x); /* op 0: sum, 1: max over the 32 lanes of a SIMD group */
void simd_barrier();
void threadgroup_barrier();

inline uint32_t float_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

inline float bits_float(uint32_t u) {
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* float -> binary16 bits, round to nearest, ties to even (overflow to inf, NaN stays NaN). */
inline uint16_t fp32_to_fp16(float f) {
    const uint32_t x = float_bits(f);
    const uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
    const uint32_t a = x & 0x7fffffffu;
    if (a > 0x7f800000u) return (uint16_t)(sign | 0x7e00u | ((a >> 13) & 0x3ffu)); /* NaN */
    if (a >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u); /* >= 65520 rounds to inf */
    uint32_t h, rem, halfway;
    if (a < 0x38800000u) { /* below 2^-14: a half subnormal (or zero) */
        const uint32_t e = a >> 23;
        const uint32_t shift = 126u - e; /* value = mant * 2^(e - 150) = h * 2^-24 */
        if (e == 0 || shift > 24u) return sign;
        const uint32_t mant = (a & 0x7fffffu) | 0x800000u;
        h = mant >> shift;
        rem = mant & ((1u << shift) - 1u);
        halfway = 1u << (shift - 1u);
    } else {
        h = (a >> 13) - (112u << 10); /* rebias the exponent: 127 -> 15 */
        rem = a & 0x1fffu;
        halfway = 0x1000u;
    }
    if (rem > halfway || (rem == halfway && (h & 1u))) h += 1u; /* a carry may bump the exponent */
    return (uint16_t)(sign | h);
}

/* binary16 bits -> float (exact). */
inline float fp16_to_fp32(uint16_t h) {
    const uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t mant = h & 0x3ffu;
    if (exp == 0x1fu) return bits_float(sign | 0x7f800000u | (mant << 13));
    if (exp == 0) {
        if (mant == 0) return bits_float(sign);
        exp = 113; /* normalise the subnormal: mant * 2^-24 = 1.f * 2^(exp - 127) */
        while (!(mant & 0x400u)) {
            mant <<= 1;
            exp -= 1;
        }
        return bits_float(sign | (exp << 23) | ((mant & 0x3ffu) << 13));
    }
    return bits_float(sign | ((exp + 112u) << 23) | (mant << 13));
}

template <class T, int N>
struct vec;

template <class T>
struct vec<T, 2> {
    T x, y;
    vec() = default;
    explicit vec(T s) : x(s), y(s) {}
    vec(T x_, T y_) : x(x_), y(y_) {}
    T& operator[](int i) { return (&x)[i]; }
    const T& operator[](int i) const { return (&x)[i]; }
};

template <class T>
struct vec<T, 3> {
    T x, y, z;
    vec() = default;
    explicit vec(T s) : x(s), y(s), z(s) {}
    vec(T x_, T y_, T z_) : x(x_), y(y_), z(z_) {}
    T& operator[](int i) { return (&x)[i]; }
    const T& operator[](int i) const { return (&x)[i]; }
};

template <class T>
struct vec<T, 4> {
    T x, y, z, w;
    vec() = default;
    explicit vec(T s) : x(s), y(s), z(s), w(s) {}
    vec(T x_, T y_, T z_, T w_) : x(x_), y(y_), z(z_), w(w_) {}
    T& operator[](int i) { return (&x)[i]; }
    const T& operator[](int i) const { return (&x)[i]; }
};

#define CARAMBA_SHIM_VEC_OP(op)                                                 \
    template <class T, int N>                                                   \
    vec<T, N> operator op(vec<T, N> a, const vec<T, N>& b) {                    \
        for (int i = 0; i < N; ++i) a[i] = a[i] op b[i];                        \
        return a;                                                               \
    }                                                                           \
    template <class T, int N>                                                   \
    vec<T, N> operator op(vec<T, N> a, T s) {                                   \
        for (int i = 0; i < N; ++i) a[i] = a[i] op s;                           \
        return a;                                                               \
    }
CARAMBA_SHIM_VEC_OP(+)
CARAMBA_SHIM_VEC_OP(-)
CARAMBA_SHIM_VEC_OP(*)
CARAMBA_SHIM_VEC_OP(/)
#undef CARAMBA_SHIM_VEC_OP

} /* namespace caramba_shim */

/* MSL's `half`: 16 bits of storage; arithmetic happens in float after an implicit conversion. */
struct half {
    uint16_t bits;
    half() = default;
    half(float f) : bits(caramba_shim::fp32_to_fp16(f)) {}
    operator float() const { return caramba_shim::fp16_to_fp32(bits); }
};
static_assert(sizeof(half) == 2 && alignof(half) == 2, "half must be 2 bytes, 2-aligned");
static_assert(std::is_trivially_copyable<half>::value, "half must be plain storage");

typedef unsigned char uchar;
typedef unsigned short ushort;
typedef unsigned int uint;
typedef uint64_t ulong;

typedef caramba_shim::vec<float, 2> float2;
typedef caramba_shim::vec<float, 3> float3;
typedef caramba_shim::vec<float, 4> float4;
typedef caramba_shim::vec<half, 2> half2;
typedef caramba_shim::vec<half, 4> half4;
typedef caramba_shim::vec<int, 2> int2;
typedef caramba_shim::vec<int, 3> int3;
typedef caramba_shim::vec<int, 4> int4;
typedef caramba_shim::vec<uint, 2> uint2;
typedef caramba_shim::vec<uint, 3> uint3;
typedef caramba_shim::vec<uint, 4> uint4;
typedef caramba_shim::vec<ushort, 2> ushort2;
typedef caramba_shim::vec<ushort, 3> ushort3;
typedef caramba_shim::vec<uchar, 2> uchar2;
typedef caramba_shim::vec<uchar, 4> uchar4;
typedef caramba_shim::vec<int8_t, 2> char2;
typedef caramba_shim::vec<int8_t, 4> char4;

namespace metal {

using std::exp;
using std::fabs;
using std::floor;
using std::fma;
using std::isfinite;
using std::isinf;
using std::isnan;
using std::log;
using std::round; /* half-way cases away from zero, like MSL's round */
using std::sqrt;
using std::trunc;

template <class T>
inline T max(T a, T b) {
    return a > b ? a : b;
}
template <class T>
inline T min(T a, T b) {
    return a < b ? a : b;
}
template <class T>
inline T clamp(T x, T lo, T hi) {
    return min(max(x, lo), hi);
}

enum mem_flags { mem_none = 0, mem_device = 1, mem_threadgroup = 2, mem_texture = 4 };

inline float simd_sum(float x) { return caramba_shim::simd_reduce(0, x); }
inline float simd_max(float x) { return caramba_shim::simd_reduce(1, x); }
inline void simdgroup_barrier(mem_flags) { caramba_shim::simd_barrier(); }
inline void threadgroup_barrier(mem_flags) { caramba_shim::threadgroup_barrier(); }

} /* namespace metal */

/* Address spaces and function qualifiers: one flat memory on the CPU. */
#define kernel
#define device
#define constant
#define thread
#define threadgroup

#endif /* CARAMBA_METAL_SHIM_H */
