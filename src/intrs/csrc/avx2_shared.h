/* The AVX2 kernels' shared parts: the fused and int32-lane requantizations, the int16-pair convolution (vpmaddwd)
 * and ADD. Included by avx2.c and avxvnni.c, each compiling its own static copy with its own target flags (kernels.h:
 * no code built for one instruction set is linked into another's table). */
#ifndef INTRS_AVX2_SHARED_H
#define INTRS_AVX2_SHARED_H

#include "kernels.h"

#if defined(__x86_64__)
#include <immintrin.h>

/* MultiplyByQuantizedMultiplier on 8 int32 lanes, |acc| <= 2^30: AVX2 has no 64-bit arithmetic shift,
 * but bits 31..62 of a M0 + 2^30 (the int32 result) come out of logical shifts just the same. */
INLINE __m256i requant8_avx2(__m256i acc, __m256i mult, __m256i right, __m256i half, __m256i rounds) {
    const __m256i nudge = _mm256_set1_epi64x((int64_t)1 << 30);
    __m256i even = _mm256_srli_epi64(_mm256_add_epi64(_mm256_mul_epi32(acc, mult), nudge), 31);
    __m256i odd = _mm256_mul_epi32(_mm256_srli_epi64(acc, 32), _mm256_srli_epi64(mult, 32));
    odd = _mm256_slli_epi64(_mm256_add_epi64(odd, nudge), 1);
    __m256i p = _mm256_blend_epi32(even, odd, 0xAA);
    __m256i negative = _mm256_and_si256(_mm256_cmpgt_epi32(_mm256_setzero_si256(), p), rounds); /* -1 or 0 */
    p = _mm256_add_epi32(_mm256_add_epi32(p, half), negative);
    return _mm256_srav_epi32(p, right);
}

INLINE __m256i clamp8_avx2(__m256i v, const requant_t *q) {
    v = _mm256_add_epi32(v, _mm256_set1_epi32((int32_t)q->zero_point));
    v = _mm256_max_epi32(v, _mm256_set1_epi32((int32_t)q->act_min));
    return _mm256_min_epi32(v, _mm256_set1_epi32((int32_t)q->act_max));
}

/* 16 int32 lanes in [-128, 127] (two vectors, in order) -> 16 int8. */
INLINE __m128i pack16_avx2(__m256i a, __m256i b) {
    __m256i words = _mm256_permute4x64_epi64(_mm256_packs_epi32(a, b), 0xD8);
    return _mm_packs_epi16(_mm256_castsi256_si128(words), _mm256_extracti128_si256(words, 1));
}

INLINE void store16(int8_t *out, __m128i bytes, int count) {
    if (count >= 16) {
        _mm_storeu_si128((__m128i *)out, bytes);
    } else {
        int8_t tmp[16];
        _mm_storeu_si128((__m128i *)tmp, bytes);
        memcpy(out, tmp, (size_t)count);
    }
}

/* One output pixel's 16 channels from o: int32 sums (two vectors) -> int8, in int32 lanes when q->fast32
 * (offset32 = the bias), otherwise with the scalar int64 definition and its overflow checks. */
INLINE void epilogue_avx2(__m256i a, __m256i b, const requant_t *q, int o, int8_t *out, int count,
                                     int *err) {
    if (q->fast32) {
        __m256i r[2];
        for (int h = 0; h < 2; h++) {
            int c = o + 8 * h;
            __m256i right = _mm256_loadu_si256((const __m256i *)(q->right32 + c));
            __m256i acc = _mm256_add_epi32(h ? b : a, _mm256_loadu_si256((const __m256i *)(q->offset32 + c)));
            r[h] = clamp8_avx2(requant8_avx2(acc, _mm256_loadu_si256((const __m256i *)(q->mult32 + c)), right,
                                             _mm256_loadu_si256((const __m256i *)(q->half32 + c)),
                                             _mm256_cmpgt_epi32(right, _mm256_setzero_si256())), q);
        }
        store16(out, pack16_avx2(r[0], r[1]), count);
        return;
    }
    int32_t sums[16];
    _mm256_storeu_si256((__m256i *)sums, a);
    _mm256_storeu_si256((__m256i *)(sums + 8), b);
    for (int k = 0; k < count && k < 16; k++)
        out[k] = finish_scalar(requant_scalar((int64_t)sums[k] + q->offset[o + k], q->mult[o + k], q->left[o + k],
                                              q->right[o + k], q->half[o + k], err), q);
}

/* vnni.c's requant_fused on 8 int32 lanes, without AVX-512's 64-bit arithmetic shift: z_out + the requantized
 * value is floor(v / 2^(31 + r)), v = acc M0 + add - fix [acc M0 < below] (the constants fold in the offset, the
 * rounding and z_out), and that is floor(floor(v / 2^31) / 2^r). The inner floor's low 32 bits are those of a
 * logical shift, for v < 0 as well (the 2^64 a negative v is read with adds 2^33, which vanishes mod 2^32), and
 * they are the whole value because kernels.Plan makes these constants only where |v| < 2^62; the outer floor is
 * vpsravd. Even lanes' products sit in the low halves of the 64-bit lanes, the odd lanes' are moved there;
 * each half is reassembled from bits 31..62. relu: the sign test is left out (vnni.c says why). */
typedef struct {
    __m256i mult[2], mult_odd[2], right[2], add[2][2], below[2][2], fix[2][2], act_min, act_max;
} fused_avx2_t; /* [h]: channels o + 8h .. o + 8h + 7; [h][0]: their even lanes, [h][1]: the odd */

/* The fused constants of channels o..o+15: VNNI's table, whose rows list the block's even channels then its odd
 * ones, so the even (odd) lanes of half h are the four entries from 4h (8 + 4h) of a row. */
INLINE void fused_avx2(const requant_t *q, int o, fused_avx2_t *f) {
    if (!q->fused) { /* not read: zeros keep the copy defined */
        memset(f, 0, sizeof *f);
        return;
    }
    const int64_t *c = q->fused_constants + (int64_t)(o / 16) * 80;
    for (int h = 0; h < 2; h++) {
        f->mult[h] = _mm256_loadu_si256((const __m256i *)(q->mult32 + o + 8 * h));
        f->mult_odd[h] = _mm256_srli_epi64(f->mult[h], 32);
        f->right[h] = _mm256_loadu_si256((const __m256i *)(q->right32 + o + 8 * h));
        for (int e = 0; e < 2; e++) {
            f->add[h][e] = _mm256_loadu_si256((const __m256i *)(c + 8 * e + 4 * h));
            f->below[h][e] = _mm256_loadu_si256((const __m256i *)(c + 32 + 8 * e + 4 * h));
            f->fix[h][e] = _mm256_loadu_si256((const __m256i *)(c + 48 + 8 * e + 4 * h));
        }
    }
    f->act_min = _mm256_set1_epi32((int32_t)q->act_min), f->act_max = _mm256_set1_epi32((int32_t)q->act_max);
}

INLINE __m256i requant_fused_avx2(__m256i acc, const fused_avx2_t *f, int h, int relu) {
    const __m256i even = _mm256_mul_epi32(acc, f->mult[h]);
    const __m256i odd = _mm256_mul_epi32(_mm256_srli_epi64(acc, 32), f->mult_odd[h]);
    __m256i ve = _mm256_add_epi64(even, f->add[h][0]), vo = _mm256_add_epi64(odd, f->add[h][1]);
    if (!relu) {
        ve = _mm256_sub_epi64(ve, _mm256_and_si256(_mm256_cmpgt_epi64(f->below[h][0], even), f->fix[h][0]));
        vo = _mm256_sub_epi64(vo, _mm256_and_si256(_mm256_cmpgt_epi64(f->below[h][1], odd), f->fix[h][1]));
    }
    const __m256i inner = _mm256_blend_epi32(_mm256_srli_epi64(ve, 31), _mm256_slli_epi64(vo, 1), 0xAA);
    const __m256i v = _mm256_srav_epi32(inner, f->right[h]);
    return _mm256_min_epi32(_mm256_max_epi32(v, f->act_min), f->act_max);
}

/* T pixels' epilogues, the form chosen once for the tile (f: fused_avx2 of the block where q->fused; a local
 * copy, which the int8 stores cannot alias, so its constants are not reloaded after each pixel). */
#define EPILOGUE_TILE_AVX2(T, acc, q, fp, o, first, step, count, err)                                           \
    do {                                                                                                        \
        if ((q)->fused) {                                                                                       \
            const fused_avx2_t f_ = *(fp);                                                                      \
            if ((q)->relu)                                                                                      \
                for (int t_ = 0; t_ < (T); t_++)                                                                \
                    store16((first) + t_ * (step), pack16_avx2(requant_fused_avx2(acc[0][t_], &f_, 0, 1),      \
                                                               requant_fused_avx2(acc[1][t_], &f_, 1, 1)), count); \
            else                                                                                                \
                for (int t_ = 0; t_ < (T); t_++)                                                                \
                    store16((first) + t_ * (step), pack16_avx2(requant_fused_avx2(acc[0][t_], &f_, 0, 0),      \
                                                               requant_fused_avx2(acc[1][t_], &f_, 1, 0)), count); \
        } else {                                                                                                \
            for (int t_ = 0; t_ < (T); t_++)                                                                    \
                epilogue_avx2(acc[0][t_], acc[1][t_], q, o, (first) + t_ * (step), count, err);                 \
        }                                                                                                       \
    } while (0)

/* T output pixels x 16 channels: vpmaddwd on int16 pairs (x - z_in, w), exact: each pair sum is below 2^31
 * and the caller bounds |x - z_in| sum|w| < 2^31. 16 ymm registers: 2T accumulators, T <= 6. */
#define AVX2_TILE 6
INLINE void tile_avx2(int T, const int16_t *u, int wp, int cin2, const conv_shape_t *s, int oy, int ox0,
                      const int16_t *w, const requant_t *q, const fused_avx2_t *f, int o, int8_t *yrow, int *err) {
    __m256i acc[2][AVX2_TILE];
    for (int t = 0; t < T; t++) acc[0][t] = acc[1][t] = _mm256_setzero_si256();
    const int step = s->sw * cin2;
    for (int ky = 0; ky < s->kh; ky++)
        for (int kx = 0; kx < s->kw; kx++) {
            const int16_t *base = u + ((int64_t)(oy * s->sh + ky) * wp + ox0 * s->sw + kx) * cin2;
            for (int c = 0; c < cin2; c += 2, w += 32) {
                __m256i w0 = _mm256_loadu_si256((const __m256i *)w), w1 = _mm256_loadu_si256((const __m256i *)(w + 16));
                for (int t = 0; t < T; t++) {
                    int32_t pair;
                    memcpy(&pair, base + t * step + c, 4);
                    __m256i x = _mm256_set1_epi32(pair);
                    acc[0][t] = _mm256_add_epi32(acc[0][t], _mm256_madd_epi16(x, w0));
                    acc[1][t] = _mm256_add_epi32(acc[1][t], _mm256_madd_epi16(x, w1));
                }
            }
        }
    int count = s->cout - o < 16 ? s->cout - o : 16;
    EPILOGUE_TILE_AVX2(T, acc, q, f, o, yrow + (int64_t)ox0 * s->cout + o, s->cout, count, err);
}

/* Any convolution through int16 pairs: x int8 (x_is_int8) or int32 (the first layer, |x - z_in| < 2^15).
 * w: [cout_pad/16][kh*kw][cin2/2][16][2] int16, the layout of the VNNI first layer. */
static int conv_pairs_avx2(const void *x, int x_is_int8, const conv_shape_t *s, const int16_t *w,
                                      const requant_t *q, int8_t *y, int16_t *u) {
    const int cin2 = (s->cin + 1) & ~1, hp = s->h + 2 * s->ph, wp = s->w + 2 * s->pw;
    const int64_t block = (int64_t)s->kh * s->kw * cin2 * 16;
    int err = 0;
    const int32_t zp = (int32_t)s->input_zero_point;
    for (int b = 0; b < s->n; b++) {
        memset(u, 0, (size_t)hp * wp * cin2 * 2);
        const int64_t image = (int64_t)b * s->h * s->w * s->cin;
        for (int iy = 0; iy < s->h; iy++)
            for (int ix = 0; ix < s->w; ix++) {
                int16_t *dst = u + ((int64_t)(iy + s->ph) * wp + ix + s->pw) * cin2;
                int64_t at = image + ((int64_t)iy * s->w + ix) * s->cin;
                if (x_is_int8)
                    for (int c = 0; c < s->cin; c++) dst[c] = (int16_t)(((const int8_t *)x)[at + c] - zp);
                else
                    for (int c = 0; c < s->cin; c++) dst[c] = (int16_t)(((const int32_t *)x)[at + c] - zp);
            }
        for (int oy = 0; oy < s->oh; oy++) {
            int8_t *yrow = y + ((int64_t)b * s->oh + oy) * s->ow * s->cout;
            for (int o = 0; o < s->cout; o += 16) {
                const int16_t *wb = w + (o / 16) * block;
                fused_avx2_t f;
                fused_avx2(q, o, &f);
                for (int ox0 = 0; ox0 < s->ow; ox0 += AVX2_TILE) {
                    int T = s->ow - ox0 < AVX2_TILE ? s->ow - ox0 : AVX2_TILE;
                    switch (T) {
                        case 1: tile_avx2(1, u, wp, cin2, s, oy, ox0, wb, q, &f, o, yrow, &err); break;
                        case 2: tile_avx2(2, u, wp, cin2, s, oy, ox0, wb, q, &f, o, yrow, &err); break;
                        case 3: tile_avx2(3, u, wp, cin2, s, oy, ox0, wb, q, &f, o, yrow, &err); break;
                        case 4: tile_avx2(4, u, wp, cin2, s, oy, ox0, wb, q, &f, o, yrow, &err); break;
                        case 5: tile_avx2(5, u, wp, cin2, s, oy, ox0, wb, q, &f, o, yrow, &err); break;
                        default: tile_avx2(6, u, wp, cin2, s, oy, ox0, wb, q, &f, o, yrow, &err); break;
                    }
                }
            }
        }
    }
    return err;
}

/* vnni.c's add_input_fused on 8 lanes: one ADD input's rescaling MultiplyByQuantizedMultiplier((x - z) 2^20,
 * M0, -r) plus z A, for the raw int8 x, in int32 lanes (kernels.h's add_input_scalars). */
typedef struct {
    __m256i a, b, k, z, fix;
    __m128i q;
} add_input_avx2_t;

INLINE add_input_avx2_t add_input_avx2_of(const add_input_scalars_t *c) {
    add_input_avx2_t in = {_mm256_set1_epi32((int32_t)c->a), _mm256_set1_epi32((int32_t)c->b),
                           _mm256_set1_epi32((int32_t)c->k), _mm256_set1_epi32((int32_t)c->z),
                           _mm256_set1_epi32((int32_t)c->fix), _mm_cvtsi64_si128(c->q)};
    return in;
}

INLINE __m256i add_input_fused_avx2(__m256i x, const add_input_avx2_t *in) {
    __m256i low = _mm256_add_epi32(_mm256_mullo_epi32(x, in->b), in->k);
    low = _mm256_sub_epi32(low, _mm256_and_si256(_mm256_cmpgt_epi32(in->z, x), in->fix));
    return _mm256_add_epi32(_mm256_mullo_epi32(x, in->a), _mm256_sra_epi32(low, in->q));
}

/* The fused ADD (vnni.c's add_plan, lifts 0): both inputs by add_input_fused_avx2, their sum less zA = z1 A1 +
 * z2 A2 requantized by requant_fused_avx2 with one multiplier for every lane. Its two-step rounding needs
 * |sum M0 + add| < 2^62: the lanes hold s + zA with |s| < 2^29 (TFLite's ADD bounds, vnni.c) and |zA| < 2^28,
 * so |sum M0| < 2^61, and |add| <= |zA| M0 + 2^30 + 2^51 + 128 2^52 < 2^60.1 for an output shift >= -21. */
typedef struct {
    add_input_avx2_t in1, in2;
    fused_avx2_t out;
    int relu;
} add_fused_avx2_t;

INLINE int add_fused_avx2_of(const int64_t *p, add_fused_avx2_t *plan) {
    add_fused_scalars_t c;
    if (!add_fused_scalars(p, 0, 0, 0, &c)) return 0;
    plan->in1 = add_input_avx2_of(&c.in1), plan->in2 = add_input_avx2_of(&c.in2);
    fused_avx2_t *f = &plan->out;
    for (int h = 0; h < 2; h++) {
        f->mult[h] = f->mult_odd[h] = _mm256_set1_epi32((int32_t)c.mult);
        f->right[h] = _mm256_set1_epi32((int32_t)c.right);
        for (int e = 0; e < 2; e++) {
            f->add[h][e] = _mm256_set1_epi64x(c.add);
            f->below[h][e] = _mm256_set1_epi64x(c.below);
            f->fix[h][e] = _mm256_set1_epi64x(c.fix);
        }
    }
    f->act_min = _mm256_set1_epi32((int32_t)c.lo), f->act_max = _mm256_set1_epi32((int32_t)c.hi);
    plan->relu = c.relu;
    return 1;
}

INLINE __m128i add_fused16_avx2(const add_fused_avx2_t *plan, const int8_t *a, const int8_t *b, int relu) {
    __m256i v[2];
    for (int h = 0; h < 2; h++) {
        __m256i xa = _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(a + 8 * h)));
        __m256i xb = _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(b + 8 * h)));
        __m256i sum = _mm256_add_epi32(add_input_fused_avx2(xa, &plan->in1), add_input_fused_avx2(xb, &plan->in2));
        v[h] = requant_fused_avx2(sum, &plan->out, 0, relu);
    }
    return pack16_avx2(v[0], v[1]);
}

/* One ADD input's rescaling alone, MultiplyByQuantizedMultiplier((x - z) 2^20, M0, shift), in the form add_avx2
 * uses for this input shift (for the tests; the scalar definition for the tail and for left shifts). */
static int add_rescale_avx2(const int8_t *x, int64_t count, int64_t z, int64_t mult, int64_t shift, int32_t *out) {
    if (shift > 0) return intrs_add_rescale_portable(x, count, z, mult, shift, out);
    const int64_t right = -shift;
    const add_input_scalars_t c = add_input_scalars(z, mult, shift);
    const add_input_avx2_t in = add_input_avx2_of(&c);
    const __m256i za = _mm256_set1_epi32((int32_t)(z * c.a));
    const __m256i m = _mm256_set1_epi32((int32_t)mult), r = _mm256_set1_epi32((int32_t)right);
    const __m256i h = _mm256_set1_epi32((int32_t)(((int64_t)1 << right) >> 1)), zv = _mm256_set1_epi32((int32_t)z);
    const __m256i g = _mm256_cmpgt_epi32(r, _mm256_setzero_si256());
    int64_t i = 0;
    for (; i + 8 <= count; i += 8) {
        __m256i v = _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(x + i)));
        v = right <= 10 ? _mm256_sub_epi32(add_input_fused_avx2(v, &in), za)
                        : requant8_avx2(_mm256_slli_epi32(_mm256_sub_epi32(v, zv), ADD_LEFT_SHIFT), m, r, h, g);
        _mm256_storeu_si256((__m256i *)(out + i), v);
    }
    return intrs_add_rescale_portable(x + i, count - i, z, mult, shift, out + i);
}

/* ADD in 8 int32 lanes (shifts <= 0, as TFLite validates: see vnni.c's add_vnni), on int8 runs only: the fused
 * form where its bounds hold, otherwise three int32-lane rescalings. */
static int add_avx2(const op_t *op, const void *in0, const void *in1, void *out) {
    if (!plain(&op->from0) || !plain(&op->from1) || !plain(&op->to)) return ERR_UNSUPPORTED;
    const int64_t *p = op->add_params, count = (int64_t)op->to.h * op->to.w * op->to.c;
    if (p[4] > 0 || p[6] > 0 || p[8] > 0) return intrs_add_portable(op, in0, in1, out);
    const int8_t *a = in0, *b = in1;
    int8_t *y = out;
    add_fused_avx2_t fused;
    if (add_fused_avx2_of(p, &fused)) {
        int64_t i = 0;
        if (fused.relu) /* one loop per form: the branch stays out of the loop */
            for (; i + 16 <= count; i += 16) _mm_storeu_si128((__m128i *)(y + i), add_fused16_avx2(&fused, a + i, b + i, 1));
        else
            for (; i + 16 <= count; i += 16) _mm_storeu_si128((__m128i *)(y + i), add_fused16_avx2(&fused, a + i, b + i, 0));
        op_t tail = *op;
        tail.from0 = tail.from1 = tail.to = (layout_t){1, (int)(count - i), 1, 0, 1, 0, 0};
        return intrs_add_portable(&tail, a + i, b + i, y + i);
    }
    requant_t q = {0};
    q.zero_point = p[2], q.act_min = p[9], q.act_max = p[10];
    const __m256i zero = _mm256_setzero_si256();
    __m256i m[3], r[3], h[3], g[3];
    for (int k = 0; k < 3; k++) {
        int64_t right = -p[4 + 2 * k];
        m[k] = _mm256_set1_epi32((int32_t)p[3 + 2 * k]), r[k] = _mm256_set1_epi32((int32_t)right);
        h[k] = _mm256_set1_epi32((int32_t)(((int64_t)1 << right) >> 1));
        g[k] = _mm256_cmpgt_epi32(r[k], zero);
    }
    const __m256i z1 = _mm256_set1_epi32((int32_t)p[0]), z2 = _mm256_set1_epi32((int32_t)p[1]);
    int64_t i = 0;
    for (; i + 16 <= count; i += 16) {
        __m256i out[2];
        for (int half = 0; half < 2; half++) {
            __m256i xa = _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(a + i + 8 * half)));
            __m256i xb = _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(b + i + 8 * half)));
            xa = _mm256_slli_epi32(_mm256_sub_epi32(xa, z1), ADD_LEFT_SHIFT);
            xb = _mm256_slli_epi32(_mm256_sub_epi32(xb, z2), ADD_LEFT_SHIFT);
            __m256i sum = _mm256_add_epi32(requant8_avx2(xa, m[0], r[0], h[0], g[0]),
                                           requant8_avx2(xb, m[1], r[1], h[1], g[1]));
            out[half] = clamp8_avx2(requant8_avx2(sum, m[2], r[2], h[2], g[2]), &q);
        }
        _mm_storeu_si128((__m128i *)(y + i), pack16_avx2(out[0], out[1]));
    }
    /* the tail: the portable loop on the last count - i values */
    op_t tail = *op;
    tail.from0 = tail.from1 = tail.to = (layout_t){1, (int)(count - i), 1, 0, 1, 0, 0};
    return intrs_add_portable(&tail, a + i, b + i, y + i);
}

#endif
#endif
