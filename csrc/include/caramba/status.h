/* Status codes returned by every caramba_kernels entry point.
 *
 * No function aborts or throws on bad input: each returns a caramba_status whose `message`
 * names the offending argument. The struct is returned by value so that no thread-local or
 * global error state exists.
 */
#ifndef CARAMBA_STATUS_H
#define CARAMBA_STATUS_H

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32) && defined(CARAMBA_KERNELS_SHARED)
#  ifdef CARAMBA_KERNELS_BUILDING
#    define CARAMBA_API __declspec(dllexport)
#  else
#    define CARAMBA_API __declspec(dllimport)
#  endif
#elif defined(__GNUC__) || defined(__clang__)
#  define CARAMBA_API __attribute__((visibility("default")))
#else
#  define CARAMBA_API
#endif

#if defined(__cplusplus)
#  define CARAMBA_STATIC_ASSERT(cond, msg) static_assert(cond, msg)
#else
#  define CARAMBA_STATIC_ASSERT(cond, msg) _Static_assert(cond, msg)
#endif

typedef enum caramba_status_code {
    CARAMBA_OK = 0,
    CARAMBA_ERR_INVALID_ARGUMENT = 1, /* bad shape, stride, format, length, pointer */
    CARAMBA_ERR_UNSUPPORTED = 2,      /* e.g. the SIMD path on a CPU without AVX2/FMA/F16C */
    CARAMBA_ERR_OUT_OF_MEMORY = 3,    /* workspace allocation failed */
    CARAMBA_ERR_INTERNAL = 4          /* a bug: please report it */
} caramba_status_code;

#define CARAMBA_STATUS_MESSAGE_SIZE 256

typedef struct caramba_status {
    caramba_status_code code;
    char message[CARAMBA_STATUS_MESSAGE_SIZE]; /* NUL-terminated; "" when code == CARAMBA_OK */
} caramba_status;

/* "ok", "invalid_argument", "unsupported", "out_of_memory", "internal". */
CARAMBA_API const char* caramba_status_code_name(caramba_status_code code);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* CARAMBA_STATUS_H */
