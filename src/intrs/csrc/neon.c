/* ARM NEON kernels on the dot-product instructions (Armv8.2 DotProd: sdot, s8 x s8 -> int32, 16 products per
 * instruction into 4 lanes). Compiled with -march=armv8.2-a+dotprod (setup.py, targets.txt): its code runs only
 * through intrs_isa_neon, which dispatch.c hands out only where the kernel reports the feature (HWCAP_ASIMDDP).
 *
 * sdot multiplies signed by signed bytes, so the int8 activations need no lift: acc = sum x w, and the zero
 * point comes out with the weights' column sums, acc + (b - z_in sum w) = sum (x - z_in) w + b, the same int64
 * value the portable kernel requantizes (so the same int32 overflow decisions). The int32 lanes can't wrap:
 * |sum x w| <= K 128 127 < 2^31 for the K = kh kw cin4 the program compiler admits (it checks K 255 127).
 * The weights are the VNNI packing, [cout_pad/16][kh*kw][cin4/4][16 outputs][4 channels]: one 16-byte vector
 * holds 4 outputs x 4 channels, the layout sdot reads against a broadcast quad of one pixel's 4 channels. The
 * epilogue is the scalar definition (requant_scalar) and the first layer and ADD take the portable kernels;
 * both have room for NEON forms (vqrdmulhq_s32 is gemmlowp's SaturatingRoundingDoublingHighMul). */
#include "kernels.h"

#if defined(__aarch64__)
#include <arm_neon.h>

#define NEON_TILE 5 /* output pixels per register tile: 5 x 4 accumulators + 4 weight vectors + a broadcast */

INLINE void tile_neon(int T, const int8_t *u, int wp, int cin4, const conv_shape_t *s, int oy, int ox0,
                      const int8_t *w, const requant_t *q, int o, int8_t *yrow, int *err) {
    int32x4_t acc[NEON_TILE][4];
    for (int t = 0; t < T; t++)
        for (int j = 0; j < 4; j++) acc[t][j] = vdupq_n_s32(0);
    const int step = s->sw * cin4;
    for (int ky = 0; ky < s->kh; ky++)
        for (int kx = 0; kx < s->kw; kx++) {
            const int8_t *base = u + ((int64_t)(oy * s->sh + ky) * wp + ox0 * s->sw + kx) * cin4;
            for (int c = 0; c < cin4; c += 4, w += 64) {
                const int8x16_t w0 = vld1q_s8(w), w1 = vld1q_s8(w + 16), w2 = vld1q_s8(w + 32), w3 = vld1q_s8(w + 48);
                for (int t = 0; t < T; t++) {
                    int32_t quad;
                    memcpy(&quad, base + t * step + c, 4);
                    const int8x16_t a = vreinterpretq_s8_s32(vdupq_n_s32(quad));
                    acc[t][0] = vdotq_s32(acc[t][0], w0, a), acc[t][1] = vdotq_s32(acc[t][1], w1, a);
                    acc[t][2] = vdotq_s32(acc[t][2], w2, a), acc[t][3] = vdotq_s32(acc[t][3], w3, a);
                }
            }
        }
    const int count = s->cout - o < 16 ? s->cout - o : 16;
    for (int t = 0; t < T; t++) {
        int32_t sums[16];
        for (int j = 0; j < 4; j++) vst1q_s32(sums + 4 * j, acc[t][j]);
        int8_t *out = yrow + (int64_t)(ox0 + t) * s->cout + o;
        for (int k = 0; k < count; k++)
            out[k] = finish_scalar(requant_scalar((int64_t)sums[k] + q->offset[o + k], q->mult[o + k],
                                                  q->left[o + k], q->right[o + k], q->half[o + k], err), q);
    }
}

/* One image of an int8 convolution (plain layouts): the input copied into a frame of z_in (TFLite's padding,
 * which contributes (z_in - z_in) w = 0) with its channels padded to 4 (they meet zero weights). */
static int conv_s8_neon(const int8_t *x, const conv_shape_t *s, const int8_t *w, const requant_t *q, int8_t *y,
                        int8_t *u) {
    const int cin4 = (s->cin + 3) & ~3, hp = s->h + 2 * s->ph, wp = s->w + 2 * s->pw;
    const int64_t block = (int64_t)s->kh * s->kw * cin4 * 16;
    int err = 0;
    for (int b = 0; b < s->n; b++) {
        for (int64_t i = 0; i < (int64_t)hp * wp; i++) {
            memset(u + i * cin4, (int8_t)s->input_zero_point, (size_t)s->cin);
            memset(u + i * cin4 + s->cin, 0, (size_t)(cin4 - s->cin));
        }
        const int8_t *xb = x + (int64_t)b * s->h * s->w * s->cin;
        for (int iy = 0; iy < s->h; iy++)
            for (int ix = 0; ix < s->w; ix++)
                memcpy(u + ((int64_t)(iy + s->ph) * wp + ix + s->pw) * cin4, xb + ((int64_t)iy * s->w + ix) * s->cin,
                       (size_t)s->cin);
        for (int oy = 0; oy < s->oh; oy++) {
            int8_t *yrow = y + ((int64_t)b * s->oh + oy) * s->ow * s->cout;
            for (int o = 0; o < s->cout; o += 16)
                for (int ox0 = 0; ox0 < s->ow; ox0 += NEON_TILE) {
                    const int8_t *wb = w + (o / 16) * block;
                    switch (s->ow - ox0 < NEON_TILE ? s->ow - ox0 : NEON_TILE) {
                        case 1: tile_neon(1, u, wp, cin4, s, oy, ox0, wb, q, o, yrow, &err); break;
                        case 2: tile_neon(2, u, wp, cin4, s, oy, ox0, wb, q, o, yrow, &err); break;
                        case 3: tile_neon(3, u, wp, cin4, s, oy, ox0, wb, q, o, yrow, &err); break;
                        case 4: tile_neon(4, u, wp, cin4, s, oy, ox0, wb, q, o, yrow, &err); break;
                        default: tile_neon(5, u, wp, cin4, s, oy, ox0, wb, q, o, yrow, &err); break;
                    }
                }
        }
    }
    return err;
}

static int conv_neon(const op_t *op, const void *in, void *out, void *scratch) {
    if (!plain(&op->from0) || !plain(&op->to)) return ERR_UNSUPPORTED;
    if (op->kind == OP_CONV_S8) return conv_s8_neon(in, &op->shape, op->w_vnni, op->q_sdot, out, scratch);
    return intrs_conv_portable(op, in, out, scratch);
}

const isa_t intrs_isa_neon = {ISA_NEON, 0, conv_neon, intrs_add_portable, intrs_add_rescale_portable};

#endif
