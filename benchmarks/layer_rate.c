/* One 3x3 convolution of the compiled kernels (C -> C channels, H x H, stride 1, padding 1) on one core, through
 * an instruction set's table as a network program calls it: its multiply-accumulate rate, to hold against
 * benchmarks/peak.sh. VNNI runs the layout a program gives it (the lifted u8 input framed in place; the merged
 * ReLU epilogue); AVX2 and portable run plain int8 (int16 pairs, the int32-lane epilogue). Best of 60 rounds
 * of 200 images: the machines are shared. Usage: layer_rate ISA C H (ISA: portable, avx2, avx-vnni, avx512-vnni; C a
 * multiple of 16). Built by layer_rate.sh from the kernels' objects (src/intrs/csrc/build.sh). */
#include <stdio.h>
#include <time.h>

#include "kernels.h"

static double seconds(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

int main(int argc, char **argv) {
    const char *name = argc > 1 ? argv[1] : "avx512-vnni";
    const int C = argc > 2 ? atoi(argv[2]) : 16, H = argc > 3 ? atoi(argv[3]) : 28, wp = H + 2, images = 200;
    if (C % 16 || H < 1) return 2;
    int level = 0;
    while (intrs_isa_name(level) && strcmp(intrs_isa_name(level), name)) level++;
    const isa_t *isa = intrs_isa(level);
    if (!isa) {
        printf("%s: not on this CPU (or unknown), not run\n", name);
        return 0;
    }
    uint8_t *u = aligned_alloc(64, (size_t)wp * wp * C + 64);
    int8_t *w = aligned_alloc(64, (size_t)9 * C * C + 64), *y = aligned_alloc(64, (size_t)H * H * C + 64);
    int16_t *pairs = aligned_alloc(64, sizeof(int16_t) * 9 * C * C + 64);
    int32_t *wide = aligned_alloc(64, sizeof(int32_t) * 9 * C * C + 64);
    for (int i = 0; i < wp * wp * C; i++) u[i] = (uint8_t)(i * 37);
    for (int i = 0; i < 9 * C * C; i++) w[i] = (int8_t)((i * 13) % 7 - 3), pairs[i] = w[i], wide[i] = w[i];
    /* every channel: M0 = 1.5e9, right shift 9, offset -1000, zero point 3, clamped at it (ReLU) */
    int32_t *mult32 = calloc(C, sizeof *mult32), *right32 = calloc(C, sizeof *right32), *half32 = calloc(C, 4);
    int32_t *offset32 = calloc(C, sizeof *offset32);
    int64_t *offset = calloc(C, 8), *mult = calloc(C, 8), *left = calloc(C, 8), *right = calloc(C, 8);
    int64_t *half = calloc(C, 8), *constants = aligned_alloc(64, sizeof(int64_t) * 80 * (C / 16));
    const int64_t m = 1500000000, r = 9, bias = -1000, zero = 3;
    for (int k = 0; k < C; k++) {
        mult32[k] = (int32_t)m, right32[k] = (int32_t)r, half32[k] = 1 << (r - 1), offset32[k] = (int32_t)bias;
        offset[k] = bias, mult[k] = m, right[k] = r, half[k] = 1 << (r - 1);
    }
    for (int b = 0; b < C / 16; b++)
        for (int j = 0; j < 16; j++) {
            int64_t *block = constants + b * 80;
            block[j] = bias * m + ((int64_t)1 << 30) + (((int64_t)1 << (r - 1)) << 31) + zero * ((int64_t)1 << (31 + r));
            block[16 + j] = block[j] + 128 * ((int64_t)1 << (31 + r));
            block[32 + j] = -(bias * m + ((int64_t)1 << 30)), block[48 + j] = (int64_t)1 << 31, block[64 + j] = 31 + r;
        }
    requant_t q = {offset, mult, left, right, half, zero, zero, 127, 0, 1, offset32, mult32, right32, half32,
                   1, 1, constants};
    op_t op = {0};
    op.kind = OP_CONV_S8, op.out = 1;
    op.shape = (conv_shape_t){1, H, H, C, C, C, 3, 3, 1, 1, 1, 1, H, H, 0};
    op.to = (layout_t){H, H, C, 0, C, 0, zero};
    op.w_vnni = w, op.q_vnni = &q, op.q_sdot = &q, op.w_pairs = pairs, op.q_pairs = &q, op.w_wide = wide, op.q_wide = &q;
    /* the input: framed and lifted where the instruction set runs that layout, plain int8 elsewhere */
    op.from0 = op.from1 = isa->lifted ? (layout_t){H, H, C, 1, C, 128, 0} : (layout_t){H, H, C, 0, C, 0, 0};
    void *scratch = aligned_alloc(64, (size_t)conv_scratch_bytes(&op, level));
    double best = 1e9;
    int err = 0;
    for (int round = 0; round < 60; round++) {
        double t = seconds();
        for (int i = 0; i < images; i++) err |= isa->conv(&op, u, y, scratch);
        t = seconds() - t;
        best = t < best ? t : best;
    }
    printf("%s: 3x3 convolution %d -> %d channels, %dx%d: %.1f GMAC/s (%.2f us per image)\n", name, C, C, H, H,
           (double)H * H * C * C * 9 * images / best / 1e9, best / images * 1e6);
    return err ? 1 : 0;
}
