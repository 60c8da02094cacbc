/* Which implementation runs: the portable scalar reference or the SIMD variant.
 *
 * Every kernel has a scalar reference (plain loops, the definition of the result) and a SIMD
 * variant (AVX2+FMA+F16C on x86-64, chosen at run time; NEON on AArch64). Both are callable
 * explicitly so tests can compare them; CARAMBA_PATH_AUTO picks SIMD when the CPU has it.
 */
#ifndef CARAMBA_CPU_H
#define CARAMBA_CPU_H

#include "caramba/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum caramba_path {
    CARAMBA_PATH_AUTO = 0,
    CARAMBA_PATH_SCALAR = 1,
    CARAMBA_PATH_SIMD = 2 /* CARAMBA_ERR_UNSUPPORTED where the CPU or the build lacks it */
} caramba_path;

/* 1 if the SIMD path can run on this CPU (checked once, at run time). */
CARAMBA_API int caramba_simd_available(void);

/* "avx2+fma+f16c", "neon" or "none" (what CARAMBA_PATH_SIMD would run). */
CARAMBA_API const char* caramba_simd_name(void);

/* Threads used when a caller passes num_threads = 0: the CPUs this process may run on. */
CARAMBA_API int caramba_default_num_threads(void);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* CARAMBA_CPU_H */
