/* ARM NEON kernels on the dot-product instructions (Armv8.2 DotProd: sdot, s8 x s8 -> int32, 16 products per
 * instruction into 4 lanes). Compiled with -march=armv8.2-a+dotprod (setup.py, targets.txt): its code runs only
 * through intrs_isa_neon, which dispatch.c hands out only where the kernel reports the feature (HWCAP_ASIMDDP).
 *
 * sdot multiplies signed by signed bytes, so the int8 activations need no lift: acc = sum x w, and the zero
 * point comes out with the weights' column sums, acc + (b - z_in sum w) = sum (x - z_in) w + b, the same int64
 * value the portable kernel requantizes (so the same int32 overflow decisions). The int32 lanes can't wrap:
 * |sum x w| <= K 128 127 < 2^31 for the K = kh kw cin4 the program compiler admits (it checks K 255 127).
 * The weights are the VNNI packing, [cout_pad/16][kh*kw][cin4/4][16 outputs][4 channels]: one 16-byte vector
 * holds 4 outputs x 4 channels, the layout sdot reads against a broadcast quad of one pixel's 4 channels.
 *
 * The requantization (the convolutions' epilogue where the plan proves every accumulator within 2^30 and no
 * left shift, and the residual ADD with its three rescalings) runs in int32 lanes on NEON's own form of
 * gemmlowp's MultiplyByQuantizedMultiplier, mbqm_neon below, with no 64-bit arithmetic; elsewhere the scalar
 * definition (requant_scalar) and the portable kernels run. The first layer (int32 input) takes the portable
 * kernel. */
#include "kernels.h"

#if defined(__aarch64__)
#include <arm_neon.h>

#define NEON_TILE 5 /* output pixels per register tile: 5 x 4 accumulators + 4 weight vectors + a broadcast */

/* MultiplyByQuantizedMultiplier(a, M0, -r) in int32 lanes, equal to requant_scalar(a, M0, 0, r, 2^r / 2) for
 * every int32 a and 0 <= M0 < 2^31, 0 <= r <= 31 (neg_right = -r, TFLite's shift itself where it is <= 0):
 * - vqrdmulhq_s32 is SQRDMULH, (2 a M0 + 2^31) >> 32 = floor((a M0 + 2^30) / 2^31), requant_scalar's first
 *   step exactly; it saturates only for a = M0 = -2^31, which M0 >= 0 rules out. |p| <= 2^31 - 1.
 * - vrshlq_s32 by -r is SRSHL, (v + 2^(r-1)) >> r in unbounded precision (no lane overflow), and r = 0 leaves
 *   v alone; with v = p - [p < 0 and r > 0] that is requant_scalar's (p + half - [p < 0]) >> r: division by
 *   2^r rounding half away from zero (TFLite's RoundingDivideByPOT). p - 1 >= -2^31 stays in the lane. */
INLINE int32x4_t mbqm_neon(int32x4_t a, int32x4_t mult, int32x4_t neg_right) {
    const int32x4_t p = vqrdmulhq_s32(a, mult);
    const int32x4_t fix = vandq_s32(vshrq_n_s32(p, 31), vreinterpretq_s32_u32(vtstq_s32(neg_right, neg_right)));
    return vrshlq_s32(vaddq_s32(p, fix), neg_right);
}

/* 16 int32 values (4 vectors) plus the zero point, clamped to [lo, hi] (within int8) and narrowed to int8. */
INLINE int8x16_t finish_neon(const int32x4_t v[4], int32x4_t zero, int32x4_t lo, int32x4_t hi) {
    int16x4_t h[4];
    for (int j = 0; j < 4; j++) h[j] = vmovn_s32(vminq_s32(vmaxq_s32(vaddq_s32(v[j], zero), lo), hi));
    return vcombine_s8(vmovn_s16(vcombine_s16(h[0], h[1])), vmovn_s16(vcombine_s16(h[2], h[3])));
}

INLINE void store_count(int8_t *out, int8x16_t v, int count) {
    if (count == 16) {
        vst1q_s8(out, v);
    } else {
        int8_t lanes[16];
        vst1q_s8(lanes, v);
        memcpy(out, lanes, (size_t)count);
    }
}

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
    if (q->fast32) { /* |acc| <= 2^30 and no left shift (kernels.py): the int32-lane requantization */
        int32x4_t off[4], mult[4], neg_right[4];
        for (int j = 0; j < 4; j++) {
            off[j] = vld1q_s32(q->offset32 + o + 4 * j), mult[j] = vld1q_s32(q->mult32 + o + 4 * j);
            neg_right[j] = vnegq_s32(vld1q_s32(q->right32 + o + 4 * j));
        }
        const int32x4_t zero = vdupq_n_s32((int32_t)q->zero_point), lo = vdupq_n_s32((int32_t)q->act_min),
                        hi = vdupq_n_s32((int32_t)q->act_max);
        for (int t = 0; t < T; t++) {
            int32x4_t v[4];
            /* acc + offset wraps in the lane to the exact value, which lies within 2^30 */
            for (int j = 0; j < 4; j++) v[j] = mbqm_neon(vaddq_s32(acc[t][j], off[j]), mult[j], neg_right[j]);
            store_count(yrow + (int64_t)(ox0 + t) * s->cout + o, finish_neon(v, zero, lo, hi), count);
        }
        return;
    }
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

/* One ADD input's rescaling, MultiplyByQuantizedMultiplier((x - z) 2^20, M0, shift) for 16 int8 values: as
 * int32, |(x - z) 2^20| <= 255 2^20 < 2^28, and TFLite's ADD input shifts are <= 0 (a multiplier below 1/2). */
INLINE void rescale_neon(int8x16_t x, int32x4_t z, int32x4_t mult, int32x4_t shift, int32x4_t out[4]) {
    const int16x8_t low = vmovl_s8(vget_low_s8(x)), high = vmovl_s8(vget_high_s8(x));
    const int32x4_t w[4] = {vmovl_s16(vget_low_s16(low)), vmovl_s16(vget_high_s16(low)),
                            vmovl_s16(vget_low_s16(high)), vmovl_s16(vget_high_s16(high))};
    for (int j = 0; j < 4; j++) out[j] = mbqm_neon(vshlq_n_s32(vsubq_s32(w[j], z), ADD_LEFT_SHIFT), mult, shift);
}

/* The constants of one ADD (op_t.add_params), broadcast. */
typedef struct {
    int32x4_t z1, m1, s1, z2, m2, s2, mo, so, zo, lo, hi;
} add_neon_t;

/* TFLite's int8 AddFunc on 16 elements: both inputs rescaled, their sum (|u + v| < 2^29: no int32 overflow)
 * rescaled to the output, the zero point added and clamped. */
INLINE int8x16_t add16_neon(int8x16_t a, int8x16_t b, const add_neon_t *k) {
    int32x4_t u[4], v[4];
    rescale_neon(a, k->z1, k->m1, k->s1, u), rescale_neon(b, k->z2, k->m2, k->s2, v);
    for (int j = 0; j < 4; j++) u[j] = mbqm_neon(vaddq_s32(u[j], v[j]), k->mo, k->so);
    return finish_neon(u, k->zo, k->lo, k->hi);
}

/* A positive shift (a left shift, which TFLite's ADD does not produce but the definition allows) takes the
 * portable kernel. */
static int add_neon(const op_t *op, const void *in0, const void *in1, void *out) {
    if (!plain(&op->from0) || !plain(&op->from1) || !plain(&op->to)) return ERR_UNSUPPORTED;
    const int64_t *p = op->add_params, count = (int64_t)op->to.h * op->to.w * op->to.c;
    if (p[4] > 0 || p[6] > 0 || p[8] > 0) return intrs_add_portable(op, in0, in1, out);
    add_neon_t k;
    k.z1 = vdupq_n_s32((int32_t)p[0]), k.m1 = vdupq_n_s32((int32_t)p[3]), k.s1 = vdupq_n_s32((int32_t)p[4]);
    k.z2 = vdupq_n_s32((int32_t)p[1]), k.m2 = vdupq_n_s32((int32_t)p[5]), k.s2 = vdupq_n_s32((int32_t)p[6]);
    k.mo = vdupq_n_s32((int32_t)p[7]), k.so = vdupq_n_s32((int32_t)p[8]), k.zo = vdupq_n_s32((int32_t)p[2]);
    k.lo = vdupq_n_s32((int32_t)p[9]), k.hi = vdupq_n_s32((int32_t)p[10]);
    const int8_t *a = in0, *b = in1;
    int8_t *y = out;
    int64_t i = 0;
    for (; i + 16 <= count; i += 16) vst1q_s8(y + i, add16_neon(vld1q_s8(a + i), vld1q_s8(b + i), &k));
    if (i < count) { /* the tail through a zero-padded copy */
        int8_t ta[16] = {0}, tb[16] = {0};
        memcpy(ta, a + i, (size_t)(count - i)), memcpy(tb, b + i, (size_t)(count - i));
        store_count(y + i, add16_neon(vld1q_s8(ta), vld1q_s8(tb), &k), (int)(count - i));
    }
    return 0;
}

static int add_rescale_neon(const int8_t *x, int64_t count, int64_t z, int64_t mult, int64_t shift, int32_t *out) {
    if (shift > 0) return intrs_add_rescale_portable(x, count, z, mult, shift, out);
    const int32x4_t zv = vdupq_n_s32((int32_t)z), m = vdupq_n_s32((int32_t)mult), s = vdupq_n_s32((int32_t)shift);
    for (int64_t i = 0; i < count; i += 16) {
        const int n = count - i < 16 ? (int)(count - i) : 16;
        int8_t t[16] = {0};
        int32_t lanes[16];
        memcpy(t, x + i, (size_t)n);
        int32x4_t u[4];
        rescale_neon(vld1q_s8(t), zv, m, s, u);
        for (int j = 0; j < 4; j++) vst1q_s32(lanes + 4 * j, u[j]);
        memcpy(out + i, lanes, sizeof(int32_t) * (size_t)n);
    }
    return 0;
}

const isa_t intrs_isa_neon = {ISA_NEON, 0, conv_neon, add_neon, add_rescale_neon};

#endif
