/* Which implementation runs: the portable scalar reference or the SIMD variant.
 *
 * Every kernel has a scalar reference (plain loops, the definition of the result) and SIMD
 * variants (AVX2+FMA+F16C and AVX-512 on x86-64, chosen at run time; NEON on AArch64). Each is
 * callable explicitly so tests can compare them; CARAMBA_PATH_AUTO picks the best the CPU has.
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
    CARAMBA_PATH_SIMD = 2,       /* the best SIMD variant below; CARAMBA_ERR_UNSUPPORTED if none */
    CARAMBA_PATH_AVX2 = 3,       /* x86-64 AVX2+FMA+F16C */
    CARAMBA_PATH_AVX512 = 4,     /* x86-64 AVX-512 F/BW/VL/DQ attention kernels (AVX2 codecs) */
    CARAMBA_PATH_NEON = 5        /* AArch64 NEON */
} caramba_path;

/* 1 if some SIMD path can run on this CPU (checked once, at run time). */
CARAMBA_API int caramba_simd_available(void);

/* 1 if this particular path can run here (AUTO and SCALAR always can). */
CARAMBA_API int caramba_path_available(caramba_path path);

/* "avx512", "avx2", "neon" or "none": what CARAMBA_PATH_SIMD runs. */
CARAMBA_API const char* caramba_simd_name(void);

/* "auto", "scalar", "simd", "avx2", "avx512", "neon"; NULL for an unknown value. */
CARAMBA_API const char* caramba_path_name(caramba_path path);

/* Threads used when a caller passes num_threads = 0: the CPUs this process may run on. */
CARAMBA_API int caramba_default_num_threads(void);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* CARAMBA_CPU_H */
