/* ARM NEON kernels on the int8 matrix multiply (Armv8.6 I8MM, optional from Armv8.2: smmla, a 2x8 by 8x2 s8
 * product accumulated into a 2x2 int32 block, 32 products per instruction against sdot's 16; Cortex-A510/A710/X2
 * and later, Neoverse N2/V1/V2 issue it at sdot's rate). Compiled with -march=armv8.2-a+dotprod+i8mm (setup.py,
 * targets.txt): its code runs only through intrs_isa_neon_i8mm, which dispatch.c hands out only where the kernel
 * reports both features (HWCAP_ASIMDDP and HWCAP2_I8MM). The epilogue, staging, first layer and ADD are
 * neon.c's (neon_shared.h).
 *
 * Why exact: as sdot, smmla multiplies signed by signed bytes and sums in int32 lanes, so the accumulators hold
 * sum x w over the same products in another order, |sum x w| <= K 128 127 < 2^31 (the program compiler admits
 * K 255 127 < 2^31), and the same offset b - z_in sum w (op_t.q_sdot) turns them into sum (x - z_in) w + b.
 *
 * The register tile is 4 pairs of output pixels by 4 pairs of output channels (16 accumulators, 8 pixels x 8
 * channels): one smmla takes the 8 channels c..c+7 of two pixels (A: two 8-byte loads, the second pixel at its
 * stride) against 8 channels of two outputs (B), so a step of 8 channels is 16 smmla on 4 + 4 operand vectors.
 * The weights are op_t.w_mmla, [cout_pad/8][kh*kw][cin8/8][4 output pairs][2 outputs][8 channels]
 * (kernels.py's _mmla_blocks), the input is staged with its channels padded to 8. An accumulator's lanes are
 * (pixel 2p, output 2j), (2p, 2j + 1), (2p + 1, 2j), (2p + 1, 2j + 1): the 64-bit zips put each pixel's 8 outputs
 * back in order for the epilogue. */
#include "kernels.h"

#if defined(__aarch64__)
#include "neon_shared.h"

#define MMLA_PAIRS 4 /* pixel pairs per tile: 16 accumulators + 4 input and 4 weight vectors of the 32 */

/* Pixel t's sums for outputs o..o+3 and o+4..o+7: the low (even t) or high (odd t) halves of its pair's blocks. */
INLINE void pixel_sums(const int32x4_t acc[][4], int t, int32x4_t v[2]) {
    for (int h = 0; h < 2; h++) {
        const int64x2_t x = vreinterpretq_s64_s32(acc[t / 2][2 * h]), y = vreinterpretq_s64_s32(acc[t / 2][2 * h + 1]);
        v[h] = vreinterpretq_s32_s64(t % 2 ? vzip2q_s64(x, y) : vzip1q_s64(x, y));
    }
}

/* 2P - odd output pixels (ox0...) x 8 channels o..o+7 of row oy; u: the staged image (rows of wp pixels of cin8
 * bytes); w: the block's weights. With odd, the last pair's second pixel repeats the first (its sums are
 * dropped), so no read leaves the staged rows. */
INLINE void tile_mmla(int P, int odd, const int8_t *u, int wp, int cin8, const conv_shape_t *s, int oy, int ox0,
                      const int8_t *w, const requant_t *q, int o, int8_t *yrow, int *err) {
    int32x4_t acc[MMLA_PAIRS][4];
    for (int p = 0; p < P; p++)
        for (int j = 0; j < 4; j++) acc[p][j] = vdupq_n_s32(0);
    const int T = 2 * P - odd;
    int64_t at[2 * MMLA_PAIRS]; /* each pixel's offset in a tap's window */
    for (int t = 0; t < 2 * P; t++) at[t] = (int64_t)(t < T ? t : T - 1) * s->sw * cin8;
    for (int ky = 0; ky < s->kh; ky++)
        for (int kx = 0; kx < s->kw; kx++) {
            const int8_t *base = u + ((int64_t)(oy * s->sh + ky) * wp + ox0 * s->sw + kx) * cin8;
            for (int c = 0; c < cin8; c += 8, w += 64) {
                const int8x16_t b0 = vld1q_s8(w), b1 = vld1q_s8(w + 16), b2 = vld1q_s8(w + 32), b3 = vld1q_s8(w + 48);
                for (int p = 0; p < P; p++) {
                    const int8x16_t a = vcombine_s8(vld1_s8(base + at[2 * p] + c), vld1_s8(base + at[2 * p + 1] + c));
                    acc[p][0] = vmmlaq_s32(acc[p][0], a, b0), acc[p][1] = vmmlaq_s32(acc[p][1], a, b1);
                    acc[p][2] = vmmlaq_s32(acc[p][2], a, b2), acc[p][3] = vmmlaq_s32(acc[p][3], a, b3);
                }
            }
        }
    const int count = s->cout - o < 8 ? s->cout - o : 8;
    if (q->fast32) { /* the int32-lane requantization, its constants held across the tile's pixels */
        const requant_neon_t r[2] = {requant_neon_of(q, o), requant_neon_of(q, o + 4)};
        const clamp_neon_t clamp = clamp_neon_of(q->zero_point, q->act_min, q->act_max);
        for (int t = 0; t < T; t++) {
            int32x4_t v[2];
            pixel_sums(acc, t, v);
            const int8x8_t bytes = finish8_neon(requant_neon(v[0], &r[0]), requant_neon(v[1], &r[1]), &clamp);
            int8_t *out = yrow + (int64_t)(ox0 + t) * s->cout + o;
            if (count == 8)
                vst1_s8(out, bytes);
            else
                store_count(out, vcombine_s8(bytes, bytes), count);
        }
        return;
    }
    for (int t = 0; t < T; t++) {
        int32x4_t v[2];
        int32_t sums[8];
        pixel_sums(acc, t, v);
        vst1q_s32(sums, v[0]), vst1q_s32(sums + 4, v[1]);
        requant_scalar_neon(sums, count, q, o, yrow + (int64_t)(ox0 + t) * s->cout + o, err);
    }
}

static int conv_s8_mmla(const int8_t *x, const conv_shape_t *s, const int8_t *w, const requant_t *q, int8_t *y,
                        int8_t *u) {
    const int cin8 = (s->cin + 7) & ~7, wp = s->w + 2 * s->pw;
    const int64_t block = (int64_t)s->kh * s->kw * cin8 * 8;
    int err = 0;
    for (int b = 0; b < s->n; b++) {
        stage_neon(x + (int64_t)b * s->h * s->w * s->cin, s, cin8, u);
        for (int oy = 0; oy < s->oh; oy++) {
            int8_t *yrow = y + ((int64_t)b * s->oh + oy) * s->ow * s->cout;
            for (int o = 0; o < s->cout; o += 8)
                for (int ox0 = 0; ox0 < s->ow; ox0 += 2 * MMLA_PAIRS) {
                    const int8_t *wb = w + (o / 8) * block;
                    const int left = s->ow - ox0 < 2 * MMLA_PAIRS ? s->ow - ox0 : 2 * MMLA_PAIRS, odd = left & 1;
                    switch ((left + 1) / 2) {
                        case 1: tile_mmla(1, odd, u, wp, cin8, s, oy, ox0, wb, q, o, yrow, &err); break;
                        case 2: tile_mmla(2, odd, u, wp, cin8, s, oy, ox0, wb, q, o, yrow, &err); break;
                        case 3: tile_mmla(3, odd, u, wp, cin8, s, oy, ox0, wb, q, o, yrow, &err); break;
                        default: tile_mmla(4, odd, u, wp, cin8, s, oy, ox0, wb, q, o, yrow, &err); break;
                    }
                }
        }
    }
    return err;
}

static int conv_neon_i8mm(const op_t *op, const void *in, void *out, void *scratch) {
    if (!plain(&op->from0) || !plain(&op->to)) return ERR_UNSUPPORTED;
    if (op->kind == OP_CONV_S8 && op->w_mmla) return conv_s8_mmla(in, &op->shape, op->w_mmla, op->q_sdot, out, scratch);
    if (op->kind == OP_CONV_S32 && op->q_pairs && op->q_pairs->fast32) return conv_s32_neon(op, in, out);
    return intrs_conv_portable(op, in, out, scratch);
}

const isa_t intrs_isa_neon_i8mm = {ISA_NEON_I8MM, 0, conv_neon_i8mm, add_neon, add_rescale_neon};

#endif
