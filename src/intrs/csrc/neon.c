/* ARM NEON kernels on the dot-product instructions (Armv8.2 DotProd: sdot, s8 x s8 -> int32, 16 products per
 * instruction into 4 lanes). Compiled with -march=armv8.2-a+dotprod (setup.py, targets.txt): its code runs only
 * through intrs_isa_neon, which dispatch.c hands out only where the kernel reports the feature (HWCAP_ASIMDDP).
 *
 * sdot multiplies signed by signed bytes, so the int8 activations need no lift: acc = sum x w, and the zero
 * point comes out with the weights' column sums, acc + (b - z_in sum w) = sum (x - z_in) w + b, the same int64
 * value the portable kernel requantizes (so the same int32 overflow decisions). The int32 lanes can't wrap:
 * |sum x w| <= K 128 128 < 2^31 for the K = kh kw cin4 the program compiler admits (it checks K 255 127).
 * The weights are the VNNI packing, [cout_pad/16][kh*kw][cin4/4][16 outputs][4 channels]: one 16-byte vector
 * holds 4 outputs x 4 channels, the layout sdot reads against a broadcast quad of one pixel's 4 channels.
 *
 * The requantization (the convolutions' epilogue where the plan proves every accumulator within 2^30 and no
 * left shift, and the residual ADD with its three rescalings) runs in int32 lanes on NEON's own form of
 * gemmlowp's MultiplyByQuantizedMultiplier (neon_shared.h's mbqm_neon, no 64-bit arithmetic); elsewhere the
 * scalar definition (requant_scalar) and the portable kernels run; the first layer (int32 input) runs in int32
 * lanes where the plan's choice for the batch allows (neon_shared.h's conv_s32_neon). neon_i8mm.c is the same on
 * smmla where the CPU has it. */
#include "kernels.h"

#if defined(__aarch64__)
#include "neon_shared.h"

#define NEON_TILE 4 /* output pixels per register tile: 4 x 4 accumulators, 4 input and 4 weight vectors */

/* One quad step: the 16 outputs' weights for 4 channels against 4 bytes of each pixel, lane l of its 16-channel
 * vector a[t] (sdot's indexed form reads the lane itself: no broadcast op per pixel and step). */
#define SDOT_STEP(l)                                                                                            \
    do {                                                                                                        \
        const int8x16_t w0 = vld1q_s8(w), w1 = vld1q_s8(w + 16), w2 = vld1q_s8(w + 32), w3 = vld1q_s8(w + 48);  \
        for (int t = 0; t < T; t++) {                                                                           \
            acc[t][0] = vdotq_laneq_s32(acc[t][0], w0, a[t], l), acc[t][1] = vdotq_laneq_s32(acc[t][1], w1, a[t], l); \
            acc[t][2] = vdotq_laneq_s32(acc[t][2], w2, a[t], l), acc[t][3] = vdotq_laneq_s32(acc[t][3], w3, a[t], l); \
        }                                                                                                       \
        w += 64;                                                                                                \
    } while (0)

INLINE void tile_neon(int T, const int8_t *u, int wp, int cin4, const conv_shape_t *s, int oy, int ox0,
                      const int8_t *w, const requant_t *q, int o, int8_t *yrow, int *err) {
    int32x4_t acc[NEON_TILE][4];
    for (int t = 0; t < T; t++)
        for (int j = 0; j < 4; j++) acc[t][j] = vdupq_n_s32(0);
    const int step = s->sw * cin4, whole = cin4 & ~15;
    for (int ky = 0; ky < s->kh; ky++)
        for (int kx = 0; kx < s->kw; kx++) {
            const int8_t *base = u + ((int64_t)(oy * s->sh + ky) * wp + ox0 * s->sw + kx) * cin4;
            for (int c = 0; c < whole; c += 16) { /* 16 channels of each pixel in one load, four steps */
                int8x16_t a[NEON_TILE];
                for (int t = 0; t < T; t++) a[t] = vld1q_s8(base + t * step + c);
                SDOT_STEP(0);
                SDOT_STEP(1);
                SDOT_STEP(2);
                SDOT_STEP(3);
            }
            for (int c = whole; c < cin4; c += 4, w += 64) { /* the last 4, 8 or 12: one broadcast quad each */
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
    if (q->fast32) { /* the int32-lane requantization */
        requant_neon_t r[4];
        for (int j = 0; j < 4; j++) r[j] = requant_neon_of(q, o + 4 * j);
        const clamp_neon_t clamp = clamp_neon_of(q->zero_point, q->act_min, q->act_max);
        for (int t = 0; t < T; t++) {
            int32x4_t v[4];
            for (int j = 0; j < 4; j++) v[j] = requant_neon(acc[t][j], &r[j]);
            store_count(yrow + (int64_t)(ox0 + t) * s->cout + o, finish_neon(v, &clamp), count);
        }
        return;
    }
    for (int t = 0; t < T; t++) {
        int32_t sums[16];
        for (int j = 0; j < 4; j++) vst1q_s32(sums + 4 * j, acc[t][j]);
        requant_scalar_neon(sums, count, q, o, yrow + (int64_t)(ox0 + t) * s->cout + o, err);
    }
}

/* One image of an int8 convolution (plain layouts), on the input staged with its channels padded to 4. */
static int conv_s8_neon(const int8_t *x, const conv_shape_t *s, const int8_t *w, const requant_t *q, int8_t *y,
                        int8_t *u) {
    const int cin4 = (s->cin + 3) & ~3, wp = s->w + 2 * s->pw;
    const int64_t block = (int64_t)s->kh * s->kw * cin4 * 16;
    int err = 0;
    for (int b = 0; b < s->n; b++) {
        stage_neon(x + (int64_t)b * s->h * s->w * s->cin, s, cin4, u);
        for (int oy = 0; oy < s->oh; oy++) {
            int8_t *yrow = y + ((int64_t)b * s->oh + oy) * s->ow * s->cout;
            for (int o = 0; o < s->cout; o += 16)
                for (int ox0 = 0; ox0 < s->ow; ox0 += NEON_TILE) {
                    const int8_t *wb = w + (o / 16) * block;
                    switch (s->ow - ox0 < NEON_TILE ? s->ow - ox0 : NEON_TILE) {
                        case 1: tile_neon(1, u, wp, cin4, s, oy, ox0, wb, q, o, yrow, &err); break;
                        case 2: tile_neon(2, u, wp, cin4, s, oy, ox0, wb, q, o, yrow, &err); break;
                        case 3: tile_neon(3, u, wp, cin4, s, oy, ox0, wb, q, o, yrow, &err); break;
                        default: tile_neon(4, u, wp, cin4, s, oy, ox0, wb, q, o, yrow, &err); break;
                    }
                }
        }
    }
    return err;
}

static int conv_neon(const op_t *op, const void *in, void *out, void *scratch) {
    if (!plain(&op->from0) || !plain(&op->to)) return ERR_UNSUPPORTED;
    if (op->kind == OP_CONV_S8) return conv_s8_neon(in, &op->shape, op->w_vnni, op->q_sdot, out, scratch);
    if (op->q_pairs && op->q_pairs->fast32) return conv_s32_neon(op, in, out);
    return intrs_conv_portable(op, in, out, scratch);
}

const isa_t intrs_isa_neon = {ISA_NEON, 0, conv_neon, add_neon, add_rescale_neon};

#endif
