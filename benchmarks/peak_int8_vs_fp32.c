/* The CPU's peak int8 (AVX-512 VNNI vpdpbusd) and fp32 (AVX-512 FMA) multiply-accumulate rates on one core:
 * the ceiling any integer-vs-float speedup is measured against (docs/speed.md).
 * Twelve independent accumulators per loop hide the instructions' latency; registers only, no memory. */
#include <immintrin.h>
#include <stdio.h>
#include <time.h>

#define TWELVE(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8) X(9) X(10) X(11)

static double seconds(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

__attribute__((target("avx512f,avx512vnni"))) int main(void) {
    const long rounds = 100000000;
#define DECLARE_INT(i) __m512i a##i = _mm512_set1_epi32(i);
#define STEP_INT(i) a##i = _mm512_dpbusd_epi32(a##i, x, y);
#define SUM_INT(i) check += _mm512_reduce_add_epi32(a##i);
    TWELVE(DECLARE_INT)
    __m512i x = _mm512_set1_epi32(0x01010101), y = _mm512_set1_epi32(0x02020202);
    double t = seconds();
    for (long n = 0; n < rounds; n++) { TWELVE(STEP_INT) }
    t = seconds() - t;
    int check = 0;
    TWELVE(SUM_INT)
    double int8 = rounds * 12 * 64 / t / 1e9;
#define DECLARE_FLOAT(i) __m512 f##i = _mm512_set1_ps(i * 1e-3f);
#define STEP_FLOAT(i) f##i = _mm512_fmadd_ps(f##i, p, q);
#define SUM_FLOAT(i) total += _mm512_reduce_add_ps(f##i);
    TWELVE(DECLARE_FLOAT)
    __m512 p = _mm512_set1_ps(0.5f), q = _mm512_set1_ps(0.25f);
    t = seconds();
    for (long n = 0; n < rounds; n++) { TWELVE(STEP_FLOAT) }
    t = seconds() - t;
    float total = 0;
    TWELVE(SUM_FLOAT)
    double fp32 = rounds * 12 * 16 / t / 1e9;
    printf("int8 vpdpbusd: %.1f GMAC/s per core\nfp32 FMA:      %.1f GMAC/s per core\nratio:         %.2f\n",
           int8, fp32, int8 / fp32);
    return (check == 0 && total < 0) ? 1 : 0; /* keeps the sums alive */
}
