/* The NEON kernels' shared parts: the int32-lane requantization (mbqm_neon), the clamp and narrowing, the input
 * staging and the residual ADD. Included by neon.c and neon_i8mm.c, each compiling its own static copy with its
 * own target flags (kernels.h: no code built for one instruction set is linked into another's table). */
#ifndef INTRS_NEON_SHARED_H
#define INTRS_NEON_SHARED_H

#include "kernels.h"

#if defined(__aarch64__)
#include <arm_neon.h>

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

/* One layer's requantization constants for 4 output channels c..c+3, in lanes: held in registers across a tile's
 * pixels (the int8 output stores may alias the requant_t arrays, so the compiler would reload them each pixel). */
typedef struct {
    int32x4_t offset, mult, neg_right;
} requant_neon_t;

/* q's int32 copies (fast32: |acc| <= 2^30 and no left shift, kernels.py) for channels c..c+3. */
INLINE requant_neon_t requant_neon_of(const requant_t *q, int c) {
    requant_neon_t r = {vld1q_s32(q->offset32 + c), vld1q_s32(q->mult32 + c), vnegq_s32(vld1q_s32(q->right32 + c))};
    return r;
}

/* acc + offset, requantized: the sum wraps in the lane to the exact value, which fast32 puts within 2^30. */
INLINE int32x4_t requant_neon(int32x4_t acc, const requant_neon_t *r) {
    return mbqm_neon(vaddq_s32(acc, r->offset), r->mult, r->neg_right);
}

/* The output's zero point and clamp bounds (within int8), in lanes. */
typedef struct {
    int32x4_t zero, lo, hi;
} clamp_neon_t;

INLINE clamp_neon_t clamp_neon_of(int64_t zero, int64_t lo, int64_t hi) {
    clamp_neon_t c = {vdupq_n_s32((int32_t)zero), vdupq_n_s32((int32_t)lo), vdupq_n_s32((int32_t)hi)};
    return c;
}

/* 8 int32 values (2 vectors) plus the zero point, clamped and narrowed to int8. */
INLINE int8x8_t finish8_neon(int32x4_t a, int32x4_t b, const clamp_neon_t *c) {
    const int16x4_t ha = vmovn_s32(vminq_s32(vmaxq_s32(vaddq_s32(a, c->zero), c->lo), c->hi));
    const int16x4_t hb = vmovn_s32(vminq_s32(vmaxq_s32(vaddq_s32(b, c->zero), c->lo), c->hi));
    return vmovn_s16(vcombine_s16(ha, hb));
}

INLINE int8x16_t finish_neon(const int32x4_t v[4], const clamp_neon_t *c) {
    return vcombine_s8(finish8_neon(v[0], v[1], c), finish8_neon(v[2], v[3], c));
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

/* The scalar definition for `count` channels from o (a layer without fast32: int64 with the overflow checks). */
INLINE void requant_scalar_neon(const int32_t *sums, int count, const requant_t *q, int o, int8_t *out, int *err) {
    for (int k = 0; k < count; k++)
        out[k] = finish_scalar(requant_scalar((int64_t)sums[k] + q->offset[o + k], q->mult[o + k], q->left[o + k],
                                              q->right[o + k], q->half[o + k], err), q);
}

/* The first layer (the network's int32 input, plain NHWC) where the plan chose int16 pairs with the int32-lane
 * epilogue for this batch (op->q_pairs with fast32: |x - z_in| < 2^15 and |sum (x - z_in) w + b| <= 2^30, so
 * the int32 products and sums below are exact): 16 outputs a step, x - z_in broadcast against rows of the
 * weights as int32 (op->w_wide), then mbqm_neon. Elsewhere the portable kernel. */
static int conv_s32_neon(const op_t *op, const int32_t *x, int8_t *y) {
    const conv_shape_t *s = &op->shape;
    const requant_t *q = op->q_pairs;
    const clamp_neon_t clamp = clamp_neon_of(q->zero_point, q->act_min, q->act_max);
    for (int b = 0; b < s->n; b++)
        for (int oy = 0; oy < s->oh; oy++)
            for (int ox = 0; ox < s->ow; ox++)
                for (int o = 0; o < s->cout; o += 16) {
                    int32x4_t acc[4] = {vdupq_n_s32(0), vdupq_n_s32(0), vdupq_n_s32(0), vdupq_n_s32(0)};
                    for (int ky = 0; ky < s->kh; ky++) {
                        const int iy = oy * s->sh - s->ph + ky;
                        if (iy < 0 || iy >= s->h) continue; /* padding: (z_in - z_in) w = 0 */
                        for (int kx = 0; kx < s->kw; kx++) {
                            const int ix = ox * s->sw - s->pw + kx;
                            if (ix < 0 || ix >= s->w) continue;
                            const int32_t *px = x + (((int64_t)b * s->h + iy) * s->w + ix) * s->cin;
                            const int32_t *row = op->w_wide + (int64_t)((ky * s->kw + kx) * s->cin) * s->cout_pad + o;
                            for (int c = 0; c < s->cin; c++, row += s->cout_pad) {
                                const int32x4_t v = vdupq_n_s32(px[c] - (int32_t)s->input_zero_point);
                                for (int j = 0; j < 4; j++) acc[j] = vmlaq_s32(acc[j], v, vld1q_s32(row + 4 * j));
                            }
                        }
                    }
                    for (int j = 0; j < 4; j++) {
                        const requant_neon_t r = requant_neon_of(q, o + 4 * j);
                        acc[j] = requant_neon(acc[j], &r);
                    }
                    const int count = s->cout - o < 16 ? s->cout - o : 16;
                    store_count(y + (((int64_t)b * s->oh + oy) * s->ow + ox) * s->cout + o, finish_neon(acc, &clamp),
                                count);
                }
    return 0;
}

/* One image's int8 input copied into a frame of z_in (TFLite's padding, which contributes (z_in - z_in) w = 0),
 * each pixel's channels padded with zeros to `pixel` bytes (they meet zero weights). */
INLINE void stage_neon(const int8_t *x, const conv_shape_t *s, int pixel, int8_t *u) {
    const int hp = s->h + 2 * s->ph, wp = s->w + 2 * s->pw;
    for (int64_t i = 0; i < (int64_t)hp * wp; i++) {
        memset(u + i * pixel, (int8_t)s->input_zero_point, (size_t)s->cin);
        memset(u + i * pixel + s->cin, 0, (size_t)(pixel - s->cin));
    }
    for (int iy = 0; iy < s->h; iy++)
        for (int ix = 0; ix < s->w; ix++)
            memcpy(u + ((int64_t)(iy + s->ph) * wp + ix + s->pw) * pixel, x + ((int64_t)iy * s->w + ix) * s->cin,
                   (size_t)s->cin);
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
    int32x4_t z1, m1, s1, z2, m2, s2, mo, so;
    clamp_neon_t out;
} add_neon_t;

/* TFLite's int8 AddFunc on 16 elements: both inputs rescaled, their sum (|u + v| < 2^29: no int32 overflow)
 * rescaled to the output, the zero point added and clamped. */
INLINE int8x16_t add16_neon(int8x16_t a, int8x16_t b, const add_neon_t *k) {
    int32x4_t u[4], v[4];
    rescale_neon(a, k->z1, k->m1, k->s1, u), rescale_neon(b, k->z2, k->m2, k->s2, v);
    for (int j = 0; j < 4; j++) u[j] = mbqm_neon(vaddq_s32(u[j], v[j]), k->mo, k->so);
    return finish_neon(u, &k->out);
}

/* mbqm_neon's domain: 0 <= M0 < 2^31 and a shift in [-31, 0] (vrshlq_s32 reads the count's low byte). */
INLINE int mbqm_domain(int64_t mult, int64_t shift) { return mult >= 0 && mult <= INT32_MAX && shift >= -31 && shift <= 0; }

/* Parameters outside what intmodel validates (TFLite's ADD shifts lie in [-31, 0]) go to the reference
 * engine (ERR_UNSUPPORTED), as they would from the portable kernel's definition. */
static int add_neon(const op_t *op, const void *in0, const void *in1, void *out) {
    if (!plain(&op->from0) || !plain(&op->from1) || !plain(&op->to)) return ERR_UNSUPPORTED;
    const int64_t *p = op->add_params, count = (int64_t)op->to.h * op->to.w * op->to.c;
    if (!mbqm_domain(p[3], p[4]) || !mbqm_domain(p[5], p[6]) || !mbqm_domain(p[7], p[8])) return ERR_UNSUPPORTED;
    add_neon_t k;
    k.z1 = vdupq_n_s32((int32_t)p[0]), k.m1 = vdupq_n_s32((int32_t)p[3]), k.s1 = vdupq_n_s32((int32_t)p[4]);
    k.z2 = vdupq_n_s32((int32_t)p[1]), k.m2 = vdupq_n_s32((int32_t)p[5]), k.s2 = vdupq_n_s32((int32_t)p[6]);
    k.mo = vdupq_n_s32((int32_t)p[7]), k.so = vdupq_n_s32((int32_t)p[8]), k.out = clamp_neon_of(p[2], p[9], p[10]);
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
    if (shift > 0) return intrs_add_rescale_portable(x, count, z, mult, shift, out); /* a left shift */
    if (!mbqm_domain(mult, shift)) return ERR_UNSUPPORTED;
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

#endif
#endif
