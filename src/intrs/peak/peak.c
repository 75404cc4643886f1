/* The CPU's peak multiply-accumulate rates on one core: the ceiling every integer-vs-float speed ratio is read
 * against (intrs bench prints it beside its ratios; benchmarks/peak.sh prints the table). Measurement only:
 * none of this runs in a certification, and no kernel's choice depends on it.
 *
 * Twelve independent accumulators per loop hide the instructions' latency; registers only, no memory. Each
 * step's product reads its own accumulator, so the compiler can neither share one product among the twelve nor
 * hoist it out of the loop. Each loop is compiled for its own target (a function attribute) and run only after
 * the CPU says it has that target; elsewhere the rate is -1. It lives outside csrc/ because it computes in
 * float: the kernels' sources hold no floating-point type (tests/test_kernels.py), and no exported device tree
 * copies this file.
 *
 *   AVX2:         fp32 FMA (8 MAC); vpmaddwd + vpaddd on int16 pairs (16 MAC: what csrc/avx2.c runs);
 *                 vpmaddubsw + vpmaddwd + vpaddd on u8 x s8 (32 MAC: its int16 pair sums saturate for general
 *                 operands); the same behind vpsignb (the sign trick: |x| times sign(x) w, exact for |w| <= 127);
 *                 AVX-VNNI vpdpbusd on ymm (32 MAC, CPUs with AVX-VNNI).
 *   AVX-512 VNNI: fp32 FMA (16 MAC), vpdpwssd on int16 pairs (32 MAC), vpdpbusd on u8 x s8 (64 MAC: csrc/vnni.c).
 *   aarch64 NEON: fp32 FMLA (4 MAC), sdot on s8 x s8 (16 MAC: csrc/neon.c, DotProd), smmla on s8 x s8 (32 MAC:
 *                 csrc/neon_i8mm.c, I8MM), the last two where the kernel reports them (HWCAP, HWCAP2).
 */
#define _POSIX_C_SOURCE 199309L /* clock_gettime under -std=c11 */

#include <string.h>
#include <time.h>

enum {
    PEAK_FP32_AVX2, PEAK_PAIRS_AVX2, PEAK_U8S8_AVX2, PEAK_SIGN_AVX2, PEAK_AVX_VNNI, PEAK_FP32_AVX512,
    PEAK_PAIRS_VNNI, PEAK_U8S8_VNNI, PEAK_FP32_NEON, PEAK_SDOT_NEON, PEAK_SMMLA_NEON, PEAK_KINDS
};

static const char *const peak_names[PEAK_KINDS] = {
    "fp32 FMA (AVX2)", "vpmaddwd int16 pairs (AVX2)", "vpmaddubsw+vpmaddwd u8 x s8 (AVX2, saturating)",
    "vpsignb+vpmaddubsw+vpmaddwd (AVX2, exact sign trick)", "vpdpbusd u8 x s8 (AVX-VNNI, ymm)",
    "fp32 FMA (AVX-512)", "vpdpwssd int16 pairs (AVX-512 VNNI)", "vpdpbusd u8 x s8 (AVX-512 VNNI)",
    "fp32 FMLA (NEON)", "sdot s8 x s8 (NEON DotProd)", "smmla s8 x s8 (NEON I8MM)",
};

/* The name of peak kind k (null past the last). */
const char *intrs_peak_name(int kind) { return kind >= 0 && kind < PEAK_KINDS ? peak_names[kind] : NULL; }

#if (defined(__x86_64__) || defined(__aarch64__)) && defined(__GNUC__)
static double peak_seconds(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static volatile int peak_sink; /* keeps every accumulator alive */

#define TWELVE(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8) X(9) X(10) X(11)

/* GMAC/s of the best of `pieces` pieces of `rounds` x 12 steps of STEP on accumulators of TYPE, each step MACS
 * multiply-accumulates. */
#define RATE(NAME, TARGET, TYPE, INIT, STEP, FOLD, MACS)                                                       \
    __attribute__((target(TARGET))) static double NAME(long rounds, int pieces) {                              \
        _Pragma("GCC diagnostic push") _Pragma("GCC diagnostic ignored \"-Wunused-variable\"")                 \
        INIT;                                                                                                  \
        _Pragma("GCC diagnostic pop")                                                                          \
        double t = 1e9;                                                                                        \
        for (int piece = 0; piece < pieces; piece++) {                                                         \
            double start = peak_seconds();                                                                     \
            for (long n = 0; n < rounds; n++) { TWELVE(STEP) }                                                 \
            double took = peak_seconds() - start;                                                              \
            t = took < t ? took : t;                                                                           \
        }                                                                                                      \
        TYPE total = acc0;                                                                                     \
        TWELVE(FOLD)                                                                                           \
        int first;                                                                                             \
        memcpy(&first, &total, sizeof first);                                                                  \
        peak_sink = first;                                                                                     \
        return rounds * 12.0 * (MACS) / t / 1e9;                                                               \
    }

#define DECLARE(T, V) T acc0 = V, acc1 = V, acc2 = V, acc3 = V, acc4 = V, acc5 = V, acc6 = V, acc7 = V, acc8 = V, \
                      acc9 = V, acc10 = V, acc11 = V
#endif

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>

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
#define SIGNED(i) acc##i = _mm256_add_epi32(acc##i, _mm256_madd_epi16(                                          \
                      _mm256_maddubs_epi16(magnitude, _mm256_sign_epi8(acc##i, y)), ones));
RATE(sign256, "avx2", __m256i, DECLARE(__m256i, _mm256_set1_epi32(1)); const __m256i y = _mm256_set1_epi8(5);
     const __m256i magnitude = _mm256_set1_epi8(7); const __m256i ones = _mm256_set1_epi16(1), SIGNED, FOLD256I, 32)
#define AVXVNNI(i) acc##i = _mm256_dpbusd_avx_epi32(acc##i, acc##i, y);
RATE(avxvnni256, "avx2,avxvnni", __m256i, DECLARE(__m256i, _mm256_set1_epi32(1)); const __m256i y = _mm256_set1_epi8(5),
     AVXVNNI, FOLD256I, 32)

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

/* GMAC/s of peak kind `kind` on this core (the best of `pieces` runs of `rounds` x 12 steps), -1 where the CPU
 * lacks its instructions or the kind is unknown. */
double intrs_peak_rate(int kind, long rounds, int pieces) {
    __builtin_cpu_init();
    int avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    int vnni = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
               __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
    int avx_vnni = avx2 && __builtin_cpu_supports("avxvnni");
    if (rounds < 1 || pieces < 1) return -1;
    switch (kind) {
        case PEAK_FP32_AVX2: return avx2 ? fma256(rounds, pieces) : -1;
        case PEAK_PAIRS_AVX2: return avx2 ? maddwd256(rounds, pieces) : -1;
        case PEAK_U8S8_AVX2: return avx2 ? maddubsw256(rounds, pieces) : -1;
        case PEAK_SIGN_AVX2: return avx2 ? sign256(rounds, pieces) : -1;
        case PEAK_AVX_VNNI: return avx_vnni ? avxvnni256(rounds, pieces) : -1;
        case PEAK_FP32_AVX512: return vnni ? fma512(rounds, pieces) : -1;
        case PEAK_PAIRS_VNNI: return vnni ? dpwssd512(rounds, pieces) : -1;
        case PEAK_U8S8_VNNI: return vnni ? dpbusd512(rounds, pieces) : -1;
    }
    return -1;
}

#elif defined(__aarch64__) && defined(__GNUC__)
#include <arm_neon.h>
#if defined(__linux__)
#include <sys/auxv.h>
#endif

#define FMLA(i) acc##i = vfmaq_f32(q, acc##i, p);
#define FOLDF(i) total = vaddq_f32(total, acc##i);
RATE(fmla128, "arch=armv8-a+simd", float32x4_t, DECLARE(float32x4_t, vdupq_n_f32(1e-3f)); const float32x4_t p = vdupq_n_f32(0.5f);
     const float32x4_t q = vdupq_n_f32(0.25f), FMLA, FOLDF, 4)
#define SDOT(i) acc##i = vdotq_s32(acc##i, vreinterpretq_s8_s32(acc##i), y);
#define FOLDI(i) total = vaddq_s32(total, acc##i);
RATE(sdot128, "arch=armv8.2-a+dotprod", int32x4_t, DECLARE(int32x4_t, vdupq_n_s32(1)); const int8x16_t y = vdupq_n_s8(5), SDOT,
     FOLDI, 16)
#define SMMLA(i) acc##i = vmmlaq_s32(acc##i, vreinterpretq_s8_s32(acc##i), y);
RATE(smmla128, "arch=armv8.2-a+dotprod+i8mm", int32x4_t, DECLARE(int32x4_t, vdupq_n_s32(1)); const int8x16_t y = vdupq_n_s8(5), SMMLA,
     FOLDI, 32)

double intrs_peak_rate(int kind, long rounds, int pieces) {
    int dotprod = 0, i8mm = 0;
#if defined(__linux__)
    dotprod = (getauxval(AT_HWCAP) & (1 << 20)) != 0; /* HWCAP_ASIMDDP, as csrc/dispatch.c reads it */
    i8mm = dotprod && (getauxval(AT_HWCAP2) & (1 << 13)) != 0; /* HWCAP2_I8MM */
#endif
    if (rounds < 1 || pieces < 1) return -1;
    switch (kind) {
        case PEAK_FP32_NEON: return fmla128(rounds, pieces);
        case PEAK_SDOT_NEON: return dotprod ? sdot128(rounds, pieces) : -1;
        case PEAK_SMMLA_NEON: return i8mm ? smmla128(rounds, pieces) : -1;
    }
    return -1;
}

#else
double intrs_peak_rate(int kind, long rounds, int pieces) {
    (void)kind, (void)rounds, (void)pieces;
    return -1; /* no peak loops for this machine */
}
#endif

#ifdef INTRS_PEAK_MAIN
#include <stdio.h>
#include <stdlib.h>
/* benchmarks/peak.sh: every kind this CPU has, long runs (the best of 20 pieces of ROUNDS rounds, default 5
 * million; the tests pass a few under emulation, where only which loops run means anything). */
int main(int argc, char **argv) {
    const long rounds = argc > 1 ? atol(argv[1]) : 5000000L;
    double fp32[3] = {intrs_peak_rate(PEAK_FP32_AVX2, rounds, 20), intrs_peak_rate(PEAK_FP32_AVX512, rounds, 20),
                      intrs_peak_rate(PEAK_FP32_NEON, rounds, 20)};
    for (int kind = 0; kind < PEAK_KINDS; kind++) {
        const int width = kind < PEAK_FP32_AVX512 ? 0 : kind < PEAK_FP32_NEON ? 1 : 2; /* the fp32 FMA of its width */
        double rate = kind == PEAK_FP32_AVX2 || kind == PEAK_FP32_AVX512 || kind == PEAK_FP32_NEON
                          ? fp32[width] : intrs_peak_rate(kind, rounds, 20);
        double against = fp32[width];
        if (rate < 0)
            printf("  %-52s not on this CPU (not run)\n", peak_names[kind]);
        else
            printf("  %-52s %6.1f GMAC/s  %.2fx fp32 FMA of its width\n", peak_names[kind], rate, rate / against);
    }
    return 0;
}
#endif
