/* The CPU's peak multiply-accumulate rates on one core, for each instruction set it has: the ceiling any
 * integer-vs-float speedup is measured against (docs/speed.md). Twelve independent accumulators per loop
 * hide the instructions' latency; registers only, no memory. Each step's product reads its own accumulator,
 * so the compiler can neither share one product among the twelve nor hoist it out of the loop. An instruction set the CPU lacks is reported
 * and never run (each kernel is compiled for its own target and called only after the CPU says it has it).
 *
 *   AVX2:         fp32 FMA (8 MAC), vpmaddwd + vpaddd on int16 pairs (16 MAC), vpmaddubsw + vpmaddwd + vpaddd
 *                 on u8 x s8 (32 MAC: the int16 pair sums of vpmaddubsw saturate for general operands)
 *   AVX-512 VNNI: fp32 FMA (16 MAC), vpdpwssd on int16 pairs (32 MAC), vpdpbusd on u8 x s8 (64 MAC)
 */
#include <immintrin.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#define TWELVE(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8) X(9) X(10) X(11)
#define ROUNDS 5000000L /* per piece; the best of PIECES pieces counts (the machines are shared) */
#define PIECES 20

static double seconds(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static volatile int sink; /* keeps every accumulator alive */

/* GMAC/s of the best piece of ROUNDS x 12 steps of STEP on accumulators of TYPE, each step `macs` multiply-accumulates. */
#define RATE(NAME, TARGET, TYPE, INIT, STEP, FOLD, MACS)                                                       \
    __attribute__((target(TARGET))) static double NAME(void) {                                                 \
        _Pragma("GCC diagnostic push") _Pragma("GCC diagnostic ignored \"-Wunused-variable\"")                 \
        INIT;                                                                                                  \
        _Pragma("GCC diagnostic pop")                                                                          \
        double t = 1e9;                                                                                        \
        for (int piece = 0; piece < PIECES; piece++) {                                                         \
            double start = seconds();                                                                          \
            for (long n = 0; n < ROUNDS; n++) { TWELVE(STEP) }                                                 \
            t = seconds() - start < t ? seconds() - start : t;                                                 \
        }                                                                                                      \
        TYPE total = acc0;                                                                                     \
        TWELVE(FOLD)                                                                                           \
        int first;                                                                                             \
        memcpy(&first, &total, sizeof first);                                                                  \
        sink = first;                                                                                          \
        return ROUNDS * 12.0 * (MACS) / t / 1e9;                                                               \
    }

#define DECLARE(T, V) T acc0 = V, acc1 = V, acc2 = V, acc3 = V, acc4 = V, acc5 = V, acc6 = V, acc7 = V, acc8 = V, \
                      acc9 = V, acc10 = V, acc11 = V

/* AVX2 */
#define FMA256(i) acc##i = _mm256_fmadd_ps(acc##i, p, q);
#define FOLD256F(i) total = _mm256_add_ps(total, acc##i);
RATE(fma256, "avx2,fma", __m256, DECLARE(__m256, _mm256_set1_ps(1e-3f)); const __m256 p = _mm256_set1_ps(0.5f);
     const __m256 q = _mm256_set1_ps(0.25f), FMA256, FOLD256F, 8)
#define MADDWD(i) acc##i = _mm256_add_epi32(acc##i, _mm256_madd_epi16(acc##i, y));
#define FOLD256I(i) total = _mm256_add_epi32(total, acc##i);
RATE(maddwd256, "avx2", __m256i, DECLARE(__m256i, _mm256_set1_epi32(1)); const __m256i y = _mm256_set1_epi16(5),
     MADDWD, FOLD256I, 16)
#define MADDUBSW(i) acc##i = _mm256_add_epi32(acc##i, _mm256_madd_epi16(_mm256_maddubs_epi16(acc##i, y), ones));
RATE(maddubsw256, "avx2", __m256i, DECLARE(__m256i, _mm256_set1_epi32(1)); const __m256i y = _mm256_set1_epi8(5);
     const __m256i ones = _mm256_set1_epi16(1), MADDUBSW, FOLD256I, 32)

/* AVX-512 VNNI */
#define VNNI "avx512f,avx512bw,avx512vl,avx512vnni"
#define FMA512(i) acc##i = _mm512_fmadd_ps(acc##i, p, q);
#define FOLD512F(i) total = _mm512_add_ps(total, acc##i);
RATE(fma512, VNNI, __m512, DECLARE(__m512, _mm512_set1_ps(1e-3f)); const __m512 p = _mm512_set1_ps(0.5f);
     const __m512 q = _mm512_set1_ps(0.25f), FMA512, FOLD512F, 16)
#define DPWSSD(i) acc##i = _mm512_dpwssd_epi32(acc##i, acc##i, y);
#define FOLD512I(i) total = _mm512_add_epi32(total, acc##i);
RATE(dpwssd512, VNNI, __m512i, DECLARE(__m512i, _mm512_set1_epi32(1)); const __m512i y = _mm512_set1_epi16(5),
     DPWSSD, FOLD512I, 32)
#define DPBUSD(i) acc##i = _mm512_dpbusd_epi32(acc##i, acc##i, y);
RATE(dpbusd512, VNNI, __m512i, DECLARE(__m512i, _mm512_set1_epi32(1)); const __m512i y = _mm512_set1_epi8(5),
     DPBUSD, FOLD512I, 64)

int main(void) {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
        double f = fma256(), w = maddwd256(), b = maddubsw256();
        printf("AVX2 (one core)\n");
        printf("  fp32 FMA                     %6.1f GMAC/s\n", f);
        printf("  vpmaddwd, int16 pairs        %6.1f GMAC/s  %.2fx fp32\n", w, w / f);
        printf("  vpmaddubsw+vpmaddwd, u8 x s8 %6.1f GMAC/s  %.2fx fp32\n", b, b / f);
    } else {
        printf("AVX2: not on this CPU (not run)\n");
    }
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni")) {
        double f = fma512(), w = dpwssd512(), b = dpbusd512();
        printf("AVX-512 VNNI (one core)\n");
        printf("  fp32 FMA                     %6.1f GMAC/s\n", f);
        printf("  vpdpwssd, int16 pairs        %6.1f GMAC/s  %.2fx fp32\n", w, w / f);
        printf("  vpdpbusd, u8 x s8            %6.1f GMAC/s  %.2fx fp32\n", b, b / f);
    } else {
        printf("AVX-512 VNNI: not on this CPU (not run)\n");
    }
    return 0;
}
