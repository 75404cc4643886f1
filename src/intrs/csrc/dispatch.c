/* Which instruction sets this CPU has, detected once (pthread_once: every thread sees the finished answer),
 * and the only way to their tables. Nothing here changes after detection, and no caller can change it: a
 * program carries the table it was granted, so the code that runs is fixed when the program is built. */
#include "kernels.h"

/* Hosted x86-64 and aarch64 Linux detect features, once for all threads. Elsewhere (a microcontroller, bare
 * metal) only the portable kernels exist, there is nothing to detect, and no thread library is needed. */
#if defined(__x86_64__) || (defined(__aarch64__) && defined(__linux__))
#define DETECTS 1
#include <pthread.h>
#endif

#if defined(__aarch64__) && defined(__linux__)
#include <sys/auxv.h>
#ifndef HWCAP_ASIMDDP
#define HWCAP_ASIMDDP (1 << 20) /* the kernel's bit for the dot-product instructions (asm/hwcap.h) */
#endif
#ifndef HWCAP2_I8MM
#define HWCAP2_I8MM (1 << 13) /* the kernel's bit for the int8 matrix multiply (asm/hwcap.h, AT_HWCAP2) */
#endif
#endif

static int has[ISA_COUNT];
#if DETECTS
static pthread_once_t detected = PTHREAD_ONCE_INIT;
#endif

static void detect(void) {
    has[ISA_PORTABLE] = 1;
#if defined(__x86_64__) && defined(__GNUC__)
    /* __builtin_cpu_supports also checks that the OS saves the vector state (XCR0) */
    __builtin_cpu_init();
    has[ISA_AVX2] = __builtin_cpu_supports("avx2");
    has[ISA_AVX_VNNI] = has[ISA_AVX2] && __builtin_cpu_supports("avxvnni");
    has[ISA_VNNI] = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                    __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") &&
                    __builtin_cpu_supports("avx512vnni");
#endif
#if defined(__aarch64__) && defined(__linux__)
    has[ISA_NEON] = (getauxval(AT_HWCAP) & HWCAP_ASIMDDP) != 0;
    has[ISA_NEON_I8MM] = has[ISA_NEON] && (getauxval(AT_HWCAP2) & HWCAP2_I8MM) != 0;
#endif
}

/* An instruction set's file that the compiler could not build is left out of the library (setup.py defines
 * INTRS_WITHOUT_<FILE>): its table is then never handed out, as if the CPU lacked it. */
static const isa_t *table_of(int level) {
    switch (level) {
        case ISA_PORTABLE: return &intrs_isa_portable;
#if defined(__x86_64__)
#ifndef INTRS_WITHOUT_AVX2
        case ISA_AVX2: return &intrs_isa_avx2;
#endif
#ifndef INTRS_WITHOUT_AVXVNNI
        case ISA_AVX_VNNI: return &intrs_isa_avxvnni;
#endif
#ifndef INTRS_WITHOUT_VNNI
        case ISA_VNNI: return &intrs_isa_vnni;
#endif
#endif
#if defined(__aarch64__) && !defined(INTRS_WITHOUT_NEON)
        case ISA_NEON: return &intrs_isa_neon;
#endif
#if defined(__aarch64__) && !defined(INTRS_WITHOUT_NEON_I8MM)
        case ISA_NEON_I8MM: return &intrs_isa_neon_i8mm;
#endif
    }
    return NULL;
}

const isa_t *intrs_isa(int level) {
    if (level < 0 || level >= ISA_COUNT) return NULL;
#if DETECTS
    pthread_once(&detected, detect);
#else
    if (!has[ISA_PORTABLE]) detect();
#endif
    return has[level] ? table_of(level) : NULL; /* null too for a table left out of this build */
}

int intrs_isa_granted(const isa_t *isa) {
    for (int level = 0; level < ISA_COUNT; level++)
        if (isa && isa == intrs_isa(level)) return 1;
    return 0;
}

/* The name of every level this build knows, whether or not the CPU has it (null past the last). */
const char *intrs_isa_name(int level) {
    static const char *const names[ISA_COUNT] = {"portable", "avx2", "avx-vnni", "avx512-vnni", "neon-dotprod",
                                                 "neon-i8mm"};
    return level >= 0 && level < ISA_COUNT ? names[level] : NULL;
}
