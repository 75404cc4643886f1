/* One 3x3 convolution of the compiled kernels (C -> C channels, H x H, stride 1, padding 1) on one core, in
 * the layout a network program gives it (lifted u8 input framed in place; the merged, ReLU epilogue): its
 * multiply-accumulate rate, to hold against benchmarks/peak.sh. Best of 60 rounds of 200 images: the
 * machines are shared. Usage: layer_rate C H (C a multiple of 16). */
#include "../src/intrs/_kernels.c"

#include <stdio.h>
#include <time.h>

static double seconds(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

int main(int argc, char **argv) {
    const int C = argc > 1 ? atoi(argv[1]) : 16, H = argc > 2 ? atoi(argv[2]) : 28, wp = H + 2, images = 200;
    if (C % 16 || H < 1) return 2;
    uint8_t *u = aligned_alloc(64, (size_t)wp * wp * C + 64);
    int8_t *w = aligned_alloc(64, (size_t)9 * C * C + 64), *y = aligned_alloc(64, (size_t)H * H * C + 64);
    for (int i = 0; i < wp * wp * C; i++) u[i] = (uint8_t)(i * 37);
    for (int i = 0; i < 9 * C * C; i++) w[i] = (int8_t)((i * 13) % 7 - 3);
    /* every channel: M0 = 1.5e9, right shift 9, offset -1000, zero point 3, clamped at it (ReLU) */
    int32_t *mult = calloc(C, sizeof *mult);
    int64_t *constants = aligned_alloc(64, sizeof(int64_t) * 80 * (C / 16));
    const int64_t m = 1500000000, r = 9, offset = -1000, zero = 3;
    for (int k = 0; k < C; k++) mult[k] = (int32_t)m;
    for (int b = 0; b < C / 16; b++)
        for (int j = 0; j < 16; j++) {
            int64_t *block = constants + b * 80;
            block[j] = offset * m + ((int64_t)1 << 30) + (((int64_t)1 << (r - 1)) << 31) + zero * ((int64_t)1 << (31 + r));
            block[16 + j] = block[j] + 128 * ((int64_t)1 << (31 + r));
            block[32 + j] = -(offset * m + ((int64_t)1 << 30)), block[48 + j] = (int64_t)1 << 31, block[64 + j] = 31 + r;
        }
    requant_t q = {0};
    q.zero_point = zero, q.act_min = zero, q.act_max = 127, q.mult32 = mult;
    q.fused = 1, q.relu = 1, q.fused_constants = constants;
    conv_shape_t s = {1, H, H, C, C, C, 3, 3, 1, 1, 1, 1, H, H, 0};
    out_t out = {y, (int64_t)H * C, C, 0};
    __mmask8 bad = 0;
    if (intrs_set_isa(ISA_VNNI) != ISA_VNNI) {
        printf("this CPU has no AVX-512 VNNI\n");
        return 0;
    }
    double best = 1e9;
    for (int round = 0; round < 60; round++) {
        double t = seconds();
        for (int i = 0; i < images; i++) conv_image_s8_vnni(u, wp, C, &s, w, &q, &out, &bad);
        t = seconds() - t;
        best = t < best ? t : best;
    }
    printf("3x3 convolution %d -> %d channels, %dx%d: %.1f GMAC/s (%.2f us per image)\n", C, C, H, H,
           (double)H * H * C * C * 9 * images / best / 1e9, best / images * 1e6);
    return y[0] == 1 && bad; /* keeps the output alive */
}
