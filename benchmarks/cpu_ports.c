// Throughput of the instructions the AVX-512 decode kernels are built from, on this CPU.
//
// The CPU decode kernels are bound by their arithmetic, so what they can reach depends on how
// many 512-bit FMAs the core retires per cycle (one unit or two), and on what a gather and a
// bf16 dot product cost. Those are not in /proc/cpuinfo, so this measures them:
//
//     gcc -O2 -mavx512f -mavx512bw -mavx512bf16 -mavx512vl -mfma -o /tmp/cpu_ports
//         benchmarks/cpu_ports.c && /tmp/cpu_ports
//
// Clock: a dependent chain of FMAs (4 cycles each on every AVX-512 core since Skylake).
// Throughput: 10 independent chains, so latency is hidden; ns per instruction * clock = the
// cycles each costs, 0.5 meaning two per cycle. Times are thread CPU time, best of 5.

#include <immintrin.h>
#include <stdint.h>
#include <stdio.h>
#include <time.h>

static double cpu_seconds(void) {
    struct timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

enum { N = 4000000, CHAINS = 10, REPEATS = 5 };
static uint8_t rows[1 << 16];

static double fma_latency_ns(void) {
    __m512 a = _mm512_set1_ps(1.0f);
    const __m512 x = _mm512_set1_ps(0.5f), y = _mm512_set1_ps(0.5f);
    const double t0 = cpu_seconds();
    for (long n = 0; n < N; ++n) {
        a = _mm512_fmadd_ps(a, x, y);
        __asm__ volatile("" : "+v"(a));
    }
    return (cpu_seconds() - t0) / N * 1e9;
}

// Ten independent chains, written out so that they stay in registers; the empty asm keeps
// the compiler from folding or dropping them.
#define CHAIN10(a, op)                                                                          \
    do {                                                                                        \
        a##0 = op(a##0); a##1 = op(a##1); a##2 = op(a##2); a##3 = op(a##3); a##4 = op(a##4);    \
        a##5 = op(a##5); a##6 = op(a##6); a##7 = op(a##7); a##8 = op(a##8); a##9 = op(a##9);    \
        __asm__ volatile("" : "+v"(a##0), "+v"(a##1), "+v"(a##2), "+v"(a##3), "+v"(a##4),      \
                         "+v"(a##5), "+v"(a##6), "+v"(a##7), "+v"(a##8), "+v"(a##9));           \
    } while (0)

// ns per instruction of `op` over ten independent chains of `vec` registers.
#define CHAIN_THROUGHPUT(name, vec, start, op)                                   \
    static double name(void) {                                                   \
        vec a0 = start, a1 = start, a2 = start, a3 = start, a4 = start;          \
        vec a5 = start, a6 = start, a7 = start, a8 = start, a9 = start;          \
        const double t0 = cpu_seconds();                                         \
        for (long n = 0; n < N; ++n) CHAIN10(a, op);                             \
        return (cpu_seconds() - t0) / ((double)N * CHAINS) * 1e9;                \
    }

#define HALF512 _mm512_set1_ps(0.5f)
#define HALF256 _mm256_set1_ps(0.5f)
#define HALF_BF16 ((__m512bh)_mm512_set1_epi32(0x3f003f00))  // (0.5, 0.5) in bf16
#define FMA512(v) _mm512_fmadd_ps(v, HALF512, HALF512)
#define FMA256(v) _mm256_fmadd_ps(v, HALF256, HALF256)
#define DPBF16(v) _mm512_dpbf16_ps(v, HALF_BF16, HALF_BF16)
CHAIN_THROUGHPUT(fma512_ns, __m512, HALF512, FMA512)
CHAIN_THROUGHPUT(fma256_ns, __m256, HALF256, FMA256)
CHAIN_THROUGHPUT(dpbf16_ns, __m512, _mm512_setzero_ps(), DPBF16)

// 16 dwords of 16 rows 198 bytes apart (a DBA q4_0 token row), 4 gathers in flight.
static double gather_ns(void) {
    const __m512i offset = _mm512_mullo_epi32(
        _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15), _mm512_set1_epi32(198));
    __m512i acc[4] = {_mm512_setzero_si512(), _mm512_setzero_si512(), _mm512_setzero_si512(),
                      _mm512_setzero_si512()};
    const long n_gathers = N / 4;
    const double t0 = cpu_seconds();
    for (long n = 0; n < n_gathers; ++n) {
        for (int j = 0; j < 4; ++j) {
            acc[j] = _mm512_add_epi32(acc[j], _mm512_i32gather_epi32(offset, rows + 4 * j + (n & 63), 1));
        }
    }
    const double t = cpu_seconds() - t0;
    __asm__ volatile("" : : "v"(acc[0]), "v"(acc[1]), "v"(acc[2]), "v"(acc[3]));
    return t / ((double)n_gathers * 4) * 1e9;
}

static double best(double (*f)(void)) {
    double b = 1e30;
    for (int r = 0; r < REPEATS; ++r) {
        const double t = f();
        if (t < b) b = t;
    }
    return b;
}

int main(void) {
    const double ghz = 4.0 / best(fma_latency_ns);
    printf("clock (from the 4-cycle FMA latency): %.2f GHz\n", ghz);
    const struct {
        const char* name;
        double (*f)(void);
    } ops[] = {{"vfmadd231ps zmm", fma512_ns},
               {"vfmadd231ps ymm", fma256_ns},
               {"vdpbf16ps zmm", dpbf16_ns},
               {"vpgatherdd zmm (16 rows)", gather_ns}};
    for (unsigned i = 0; i < sizeof ops / sizeof ops[0]; ++i) {
        const double ns = best(ops[i].f);
        printf("%-26s %.3f ns = %.2f cycles each\n", ops[i].name, ns, ns * ghz);
    }
    return 0;
}
