/* The portable kernels: plain C, compiled with no target flags, correct on every CPU. The other instruction
 * sets call these for what they don't vectorize. */
#include "kernels.h"

/* Direct convolution with int32 accumulators (acc: cout_pad of them) over any integer input type: the portable
 * path for every layer. The caller guarantees |x - z_in| * sum|w| < 2^31, so the int32 sums are the exact ones. */
#define DEFINE_CONV_WIDE(NAME, XTYPE)                                                                           \
    static int NAME(const XTYPE *x, const conv_shape_t *s, const int32_t *w, const requant_t *q, int8_t *y,    \
                    int32_t *acc) {                                                                            \
        int err = 0;                                                                                           \
        for (int b = 0; b < s->n; b++)                                                                         \
            for (int oy = 0; oy < s->oh; oy++)                                                                 \
                for (int ox = 0; ox < s->ow; ox++) {                                                           \
                    memset(acc, 0, sizeof(int32_t) * s->cout_pad);                                             \
                    for (int ky = 0; ky < s->kh; ky++) {                                                       \
                        int iy = oy * s->sh - s->ph + ky;                                                      \
                        if (iy < 0 || iy >= s->h) continue; /* padding: (z_in - z_in) w = 0 */                 \
                        for (int kx = 0; kx < s->kw; kx++) {                                                   \
                            int ix = ox * s->sw - s->pw + kx;                                                  \
                            if (ix < 0 || ix >= s->w) continue;                                                \
                            const XTYPE *px = x + (((int64_t)b * s->h + iy) * s->w + ix) * s->cin;             \
                            const int32_t *row = w + (int64_t)((ky * s->kw + kx) * s->cin) * s->cout_pad;      \
                            for (int c = 0; c < s->cin; c++, row += s->cout_pad) {                             \
                                int32_t v = (int32_t)px[c] - (int32_t)s->input_zero_point;                     \
                                for (int o = 0; o < s->cout_pad; o++) acc[o] += v * row[o];                    \
                            }                                                                                  \
                        }                                                                                      \
                    }                                                                                          \
                    int8_t *out = y + (((int64_t)b * s->oh + oy) * s->ow + ox) * s->cout;                      \
                    for (int o = 0; o < s->cout; o++)                                                          \
                        out[o] = finish_scalar(requant_scalar((int64_t)acc[o] + q->offset[o], q->mult[o],      \
                                                              q->left[o], q->right[o], q->half[o], &err), q);  \
                }                                                                                              \
        return err;                                                                                            \
                                                                                            \
    }

DEFINE_CONV_WIDE(conv_wide_s8, int8_t)
DEFINE_CONV_WIDE(conv_wide_s32, int32_t)

int intrs_conv_portable(const op_t *op, const void *in, void *out, void *scratch) {
    if (!plain(&op->from0) || !plain(&op->to)) return ERR_UNSUPPORTED;
    if (op->kind == OP_CONV_S8)
        return conv_wide_s8((const int8_t *)in, &op->shape, op->w_wide, op->q_wide, out, (int32_t *)scratch);
    return conv_wide_s32((const int32_t *)in, &op->shape, op->w_wide, op->q_wide, out, (int32_t *)scratch);
}

/* TFLite's int8 AddFunc on plain tensors. */
int intrs_add_portable(const op_t *op, const void *in0, const void *in1, void *out) {
    if (!plain(&op->from0) || !plain(&op->from1) || !plain(&op->to)) return ERR_UNSUPPORTED;
    const int8_t *a = in0, *b = in1;
    int8_t *y = out;
    const int64_t *p = op->add_params, count = (int64_t)op->to.h * op->to.w * op->to.c;
    int err = 0;
    requant_t q = {0};
    q.zero_point = p[2], q.act_min = p[9], q.act_max = p[10];
    int64_t r1 = -p[4], r2 = -p[6], lo = p[8] > 0 ? p[8] : 0, ro = p[8] < 0 ? -p[8] : 0;
    for (int64_t i = 0; i < count; i++) {
        int64_t u = requant_scalar(((int64_t)a[i] - p[0]) * (1 << ADD_LEFT_SHIFT), p[3], 0, r1,
                                   r1 ? ((int64_t)1 << r1) >> 1 : 0, &err);
        int64_t v = requant_scalar(((int64_t)b[i] - p[1]) * (1 << ADD_LEFT_SHIFT), p[5], 0, r2,
                                   r2 ? ((int64_t)1 << r2) >> 1 : 0, &err);
        y[i] = finish_scalar(requant_scalar(u + v, p[7], lo, ro, ro ? ((int64_t)1 << ro) >> 1 : 0, &err), &q);
    }
    return err;
}

int intrs_add_rescale_portable(const int8_t *x, int64_t count, int64_t z, int64_t mult, int64_t shift,
                               int32_t *out) {
    int err = 0;
    int64_t right = shift < 0 ? -shift : 0;
    for (int64_t i = 0; i < count; i++)
        out[i] = (int32_t)requant_scalar(((int64_t)x[i] - z) * (1 << ADD_LEFT_SHIFT), mult, shift > 0 ? shift : 0,
                                         right, right ? ((int64_t)1 << right) >> 1 : 0, &err);
    return err;
}

/* AVERAGE_POOL_2D (average != 0) or MAX_POOL_2D on one NHWC int8 image, over the real points of each window
 * (sum: c int32 of scratch). */
int intrs_pool(const int8_t *x, const pool_shape_t *p, int8_t *y, int32_t *sum) {
    for (int oy = 0; oy < p->oh; oy++)
        for (int ox = 0; ox < p->ow; ox++) {
            int count = 0;
            for (int k = 0; k < p->c; k++) sum[k] = p->average ? 0 : -129;
            for (int ky = 0; ky < p->kh; ky++) {
                int iy = oy * p->sh - p->ph + ky;
                if (iy < 0 || iy >= p->h) continue;
                for (int kx = 0; kx < p->kw; kx++) {
                    int ix = ox * p->sw - p->pw + kx;
                    if (ix < 0 || ix >= p->w) continue;
                    const int8_t *px = x + ((int64_t)iy * p->w + ix) * p->c;
                    count++;
                    if (p->average)
                        for (int k = 0; k < p->c; k++) sum[k] += px[k];
                    else
                        for (int k = 0; k < p->c; k++) sum[k] = px[k] > sum[k] ? px[k] : sum[k];
                }
            }
            int8_t *out = y + ((int64_t)oy * p->ow + ox) * p->c;
            for (int k = 0; k < p->c; k++) {
                int32_t v = sum[k];
                if (p->average) /* C's truncating division after adding half the count: half away from zero */
                    v = count == 0 ? 0 : v > 0 ? (v + count / 2) / count : (v - count / 2) / count;
                v = v < p->act_min ? p->act_min : (v > p->act_max ? p->act_max : v);
                out[k] = (int8_t)v;
            }
        }
    return 0;
}

const isa_t intrs_isa_portable = {ISA_PORTABLE, 0, intrs_conv_portable, intrs_add_portable,
                                  intrs_add_rescale_portable};
