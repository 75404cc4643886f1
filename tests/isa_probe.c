/* Which instruction sets the kernels grant on this CPU, and that each granted one computes what the portable
 * kernels compute, run through the same tables and interpreter the Python package uses. Built from the
 * kernels' objects (csrc/build.sh) by tests/test_kernels.py and run natively, under qemu-x86_64 with CPUs that
 * lack AVX-512 or AVX2, and cross-compiled under qemu-aarch64 with and without the dot-product instructions:
 * code for instructions a CPU lacks must be refused, never run (SIGILL).
 * Prints one line per check; exits 1 on a disagreement. */
#include <stdio.h>

#include "kernels.h"

#define CIN 16
#define COUT 16
#define H 6
#define K 3

static uint64_t state = 0x9E3779B97F4A7C15u;
static int64_t uniform(int64_t low, int64_t high) { /* splitmix64, [low, high] */
    uint64_t z = (state += 0x9E3779B97F4A7C15u);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9u;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBu;
    z ^= z >> 31;
    return low + (int64_t)(z % (uint64_t)(high - low + 1));
}

static int8_t weight[COUT][CIN][K][K];
static int32_t w_wide[K * K * CIN][COUT];
static int16_t w_pairs[K * K][CIN / 2][16][2];
static int8_t w_vnni[K * K][CIN / 4][16][4];
static int64_t bias[COUT], offset_vnni[COUT], offset_sdot[COUT], mult[COUT], left[COUT], right[COUT], half[COUT];
static int32_t bias32[COUT], mult32[COUT], right32[COUT], half32[COUT];

static requant_t requant(const int64_t *offset, int fast32, int64_t zero_point) {
    requant_t q = {0};
    q.offset = offset, q.mult = mult, q.left = left, q.right = right, q.half = half;
    q.zero_point = zero_point, q.act_min = -128, q.act_max = 127;
    q.fast32 = fast32, q.offset32 = bias32, q.mult32 = mult32, q.right32 = right32, q.half32 = half32;
    return q;
}

static const char *name(int level) { return intrs_isa_name(level); }

int main(void) {
    const int64_t z_in = uniform(-5, 5), z_out = uniform(-20, 20);
    for (int o = 0; o < COUT; o++) {
        int64_t sum = 0;
        for (int c = 0; c < CIN; c++)
            for (int ky = 0; ky < K; ky++)
                for (int kx = 0; kx < K; kx++) {
                    int8_t v = (int8_t)uniform(-127, 127);
                    int kk = ky * K + kx;
                    weight[o][c][ky][kx] = v, sum += v;
                    w_wide[kk * CIN + c][o] = v;
                    w_pairs[kk][c / 2][o][c % 2] = v;
                    w_vnni[kk][c / 4][o][c % 4] = v;
                }
        bias[o] = uniform(-20000, 20000), offset_vnni[o] = bias[o] - (z_in + 128) * sum;
        offset_sdot[o] = bias[o] - z_in * sum;
        mult[o] = uniform((int64_t)1 << 30, ((int64_t)1 << 31) - 1), right[o] = uniform(6, 12), left[o] = 0;
        half[o] = ((int64_t)1 << right[o]) >> 1;
        bias32[o] = (int32_t)bias[o], mult32[o] = (int32_t)mult[o], right32[o] = (int32_t)right[o];
        half32[o] = (int32_t)half[o];
    }
    /* |acc| <= 255 * 144 * 127 + 20000 < 2^30: the int32-lane epilogue (AVX2's fast32) holds */
    const requant_t q_wide = requant(bias, 0, z_out), q_pairs = requant(bias, 1, z_out);
    const requant_t q_vnni = requant(offset_vnni, 0, z_out), q_sdot = requant(offset_sdot, 0, z_out);
    op_t op = {0};
    op.in0 = op.in1 = 0, op.out = 1; /* slot 0: the program's input */
    op.from0 = op.from1 = (layout_t){H, H, CIN, 0, CIN, 0, 0};
    op.to = (layout_t){H, H, COUT, 0, COUT, 0, 0};
    op.shape = (conv_shape_t){1, H, H, CIN, COUT, COUT, K, K, 1, 1, 1, 1, H, H, z_in};
    op.w_wide = &w_wide[0][0], op.q_wide = &q_wide, op.w_pairs = &w_pairs[0][0][0][0], op.q_pairs = &q_pairs;
    op.w_vnni = &w_vnni[0][0][0][0], op.q_vnni = &q_vnni, op.q_sdot = &q_sdot;

    int8_t x8[H * H * CIN];
    int32_t x32[H * H * CIN];
    for (int i = 0; i < H * H * CIN; i++) x8[i] = (int8_t)uniform(-128, 127), x32[i] = (int32_t)uniform(-300, 560);
    static int8_t a[65536], b[65536];
    for (int i = 0; i < 65536; i++) a[i] = (int8_t)(i >> 8), b[i] = (int8_t)i;
    const int64_t add_params[11] = {3, -7, 5, 1518500250, -1, 1288490189, 0, 1100000000, -19, -128, 127};

    int8_t want_s8[H * H * COUT], want_s32[H * H * COUT], want_add[65536];
    int bad = 0, granted = 0;
    for (int level = 0; level < ISA_COUNT; level++) {
        const isa_t *isa = intrs_isa(level);
        if (!isa) {
            printf("refused %s\n", name(level));
            continue;
        }
        granted++;
        if (isa->level != level) bad = printf("table of %s says level %d\n", name(level), isa->level);
        int8_t got_s8[H * H * COUT], got_s32[H * H * COUT], got_add[65536];
        op.kind = OP_CONV_S8;
        /* the scratch the interpreter would give this op on this instruction set */
        static _Alignas(64) char scratch[1 << 16];
        if (conv_scratch_bytes(&op, level) > (int64_t)sizeof scratch) bad = printf("scratch too small\n");
        int rc = isa->conv(&op, x8, got_s8, scratch);
        /* the first layer as a one-op program through the interpreter */
        op.kind = OP_CONV_S32;
        int64_t slot_bytes[2] = {0, H * H * COUT};
        program_t program = {isa, &op, 1, slot_bytes, 2, 1, H * H * COUT, H * H * CIN};
        rc |= intrs_run(&program, x32, 1, got_s32);
        rc |= intrs_add(isa, a, b, 65536, add_params, got_add);
        if (rc) bad = printf("%s returned %d\n", name(level), rc);
        if (level == ISA_PORTABLE) {
            memcpy(want_s8, got_s8, sizeof got_s8), memcpy(want_s32, got_s32, sizeof got_s32);
            memcpy(want_add, got_add, sizeof got_add);
        }
        const int same[3] = {!memcmp(want_s8, got_s8, sizeof got_s8), !memcmp(want_s32, got_s32, sizeof got_s32),
                             !memcmp(want_add, got_add, sizeof got_add)};
        if (same[0] && same[1] && same[2])
            printf("granted %s: equal to portable\n", name(level));
        else
            bad = printf("granted %s: DIFFERS from portable in%s%s%s\n", name(level), same[0] ? "" : " conv_s8",
                         same[1] ? "" : " conv_s32", same[2] ? "" : " add");
    }
    /* a table that dispatch did not hand out (a copy, or one of a level this CPU lacks) is refused */
    isa_t forged = intrs_isa_portable;
    program_t program = {&forged, &op, 1, NULL, 0, 0, 0, 0};
    int rc = intrs_run(&program, x32, 1, NULL);
    printf("forged table: %s\n", rc == ERR_ISA ? "refused" : "RUN");
    bad |= rc != ERR_ISA;
#if defined(__x86_64__)
    const isa_t *tables[] = {&intrs_isa_avx2, &intrs_isa_vnni};
#elif defined(__aarch64__)
    const isa_t *tables[] = {&intrs_isa_neon, &intrs_isa_neon_i8mm};
#endif
#if defined(__x86_64__) || defined(__aarch64__)
    for (int k = 0; k < (int)(sizeof tables / sizeof tables[0]); k++)
        if (!intrs_isa(tables[k]->level)) {
            program.isa = tables[k];
            rc = intrs_run(&program, x32, 1, NULL);
            printf("%s's own table: %s\n", name(tables[k]->level), rc == ERR_ISA ? "refused" : "RUN");
            bad |= rc != ERR_ISA;
        }
#endif
    printf("%s (%d granted)\n", bad ? "FAIL" : "ok", granted);
    return bad ? 1 : 0;
}
