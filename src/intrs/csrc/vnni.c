/* AVX-512 VNNI kernels: vpdpbusd (u8 x s8 -> int32, 64 products per instruction; the int8 activations are
 * lifted to u8 by + 128 and the lift removed with the weights' column sums, exactly), the first layer through
 * vpdpwssd on int16 pairs, and requantization in one 64-bit rounding where its bounds hold. Compiled with the
 * AVX-512 flags (setup.py): its code runs only through intrs_isa_vnni, which dispatch.c hands out only on a
 * CPU with AVX-512 F, BW, DQ, VL and VNNI. */
#include "kernels.h"

#if defined(__x86_64__)
#include <immintrin.h>

/* Output pixels per register tile: with two blocks of 16 channels 2 x 14 accumulators + 2 weight vectors
 * + a broadcast fill the 32 zmm registers; with one block up to 16. */
#define MAX_TILE 16
#define MAX_TILE_TWO_BLOCKS 14


/* MultiplyByQuantizedMultiplier on 8 int64 lanes; *bad collects lanes that left int32. */
INLINE __m512i requant8(__m512i acc, __m512i mult, __m512i left, __m512i right, __m512i half,
                                     int any_left, __mmask8 *bad) {
    const __m512i lo = _mm512_set1_epi64(INT32_MIN), hi = _mm512_set1_epi64(INT32_MAX);
    *bad |= _mm512_cmplt_epi64_mask(acc, lo) | _mm512_cmpgt_epi64_mask(acc, hi);
    if (any_left) {
        acc = _mm512_sllv_epi64(acc, left);
        *bad |= _mm512_cmplt_epi64_mask(acc, lo) | _mm512_cmpgt_epi64_mask(acc, hi);
    }
    __m512i p = _mm512_mul_epi32(acc, mult); /* signed low 32 bits x low 32 bits: exact for int32 lanes */
    p = _mm512_srai_epi64(_mm512_add_epi64(p, _mm512_set1_epi64((int64_t)1 << 30)), 31);
    __mmask8 negative = _mm512_cmplt_epi64_mask(p, _mm512_setzero_si512()) &
                        _mm512_cmpgt_epi64_mask(right, _mm512_setzero_si512());
    p = _mm512_add_epi64(p, half);
    p = _mm512_mask_sub_epi64(p, negative, p, _mm512_set1_epi64(1));
    return _mm512_srav_epi64(p, right);
}

/* z_out + value, clamped, for 16 int64 values in two halves -> 16 int8. */
INLINE __m128i finish16(__m512i a, __m512i b, const requant_t *q, int lift) {
    const __m512i zp = _mm512_set1_epi64(q->zero_point + lift);
    const __m512i mn = _mm512_set1_epi64(q->act_min + lift), mx = _mm512_set1_epi64(q->act_max + lift);
    a = _mm512_min_epi64(_mm512_max_epi64(_mm512_add_epi64(a, zp), mn), mx);
    b = _mm512_min_epi64(_mm512_max_epi64(_mm512_add_epi64(b, zp), mn), mx);
    __m512i both = _mm512_inserti64x4(_mm512_castsi256_si512(_mm512_cvtepi64_epi32(a)), _mm512_cvtepi64_epi32(b), 1);
    return _mm512_cvtepi32_epi8(both);
}

/* The int32-lane requantization constants of one multiplier M0 and shift <= 0 on 16 lanes (ADD's
 * rescalings where the fused forms' bounds fail). */
typedef struct {
    __m512i mult, mult_odd, right, half, zero_point, act_min, act_max;
    __mmask16 rounds; /* lanes with a right shift */
} lanes_t;

INLINE lanes_t lanes_of(int64_t mult, int64_t shift, int64_t zero_point, int64_t act_min,
                                     int64_t act_max) {
    lanes_t c;
    c.mult = _mm512_set1_epi32((int32_t)mult), c.mult_odd = _mm512_srli_epi64(c.mult, 32);
    c.right = _mm512_set1_epi32((int32_t)-shift), c.half = _mm512_set1_epi32((int32_t)(((int64_t)1 << -shift) >> 1));
    c.zero_point = _mm512_set1_epi32((int32_t)zero_point);
    c.act_min = _mm512_set1_epi32((int32_t)act_min), c.act_max = _mm512_set1_epi32((int32_t)act_max);
    c.rounds = _mm512_cmpgt_epi32_mask(c.right, _mm512_setzero_si512());
    return c;
}

/* MultiplyByQuantizedMultiplier of 16 int32 lanes x, from 64-bit products in one rounding:
 *   floor((x M0 + add - fix [x M0 < below]) / 2^shift)
 * With add = 2^30 + 2^(r-1) 2^31 + z 2^(31+r), fix = 2^31 and below = -2^30 (r = right shift > 0; add =
 * 2^30 + z 2^(31+r), fix = 0 when r = 0), shift = 31 + r, this is z + TFLite's double rounding:
 * floor((x M0 + 2^30) / 2^31) = p, then p / 2^r rounding half away from zero, which is
 * floor((p + 2^(r-1)) / 2^r) for p >= 0 and floor((p + 2^(r-1) - 1) / 2^r) for p < 0 (p < 0 exactly when
 * x M0 + 2^30 < 0), and floor(floor(v / 2^31) / 2^r) = floor(v / 2^(31+r)). An offset o added to x before
 * the multiplication folds in too (add += o M0, below -= o M0). The caller keeps |numerator| < 2^62 (2^63 would
 * do here; the AVX2 kernels read the same constants in two steps: avx2_shared.h).
 * With relu (act_min >= z, the output clamped there), the sign test is skipped: for p < 0 both roundings
 * give a value <= z, which the clamp turns into act_min all the same. */
typedef struct {
    __m512i mult, mult_odd, add[2], below[2], fix[2], shift[2]; /* [0]: the even lanes, [1]: the odd lanes */
} fused_t;

INLINE __m512i requant_fused(__m512i x, const fused_t *f, int relu) {
    __m512i half[2] = {_mm512_mul_epi32(x, f->mult), _mm512_mul_epi32(_mm512_srli_epi64(x, 32), f->mult_odd)};
    for (int h = 0; h < 2; h++) {
        __m512i v = _mm512_add_epi64(half[h], f->add[h]);
        if (!relu) v = _mm512_mask_sub_epi64(v, _mm512_cmplt_epi64_mask(half[h], f->below[h]), v, f->fix[h]);
        half[h] = _mm512_srav_epi64(v, f->shift[h]);
    }
    const __m512i interleave = _mm512_setr_epi32(0, 16, 2, 18, 4, 20, 6, 22, 8, 24, 10, 26, 12, 28, 14, 30);
    return _mm512_permutex2var_epi32(half[0], interleave, half[1]);
}

/* The fused constants of output channels o..o+15 of a layer (requant_t.fused). */
INLINE fused_t fused_at(const requant_t *q, int o, int lift) {
    const int64_t *c = q->fused_constants + (int64_t)(o / 16) * 80;
    fused_t f;
    f.mult = _mm512_loadu_si512(q->mult32 + o), f.mult_odd = _mm512_srli_epi64(f.mult, 32);
    for (int h = 0; h < 2; h++) {
        f.add[h] = _mm512_loadu_si512(c + (lift ? 16 : 0) + 8 * h);
        f.below[h] = _mm512_loadu_si512(c + 32 + 8 * h);
        f.fix[h] = _mm512_loadu_si512(c + 48 + 8 * h);
        f.shift[h] = _mm512_loadu_si512(c + 64 + 8 * h);
    }
    return f;
}

/* MultiplyByQuantizedMultiplier on 16 int32 lanes, for |acc| <= 2^30 (so every intermediate fits):
 * the 64-bit products of the even and the odd lanes, floor((a M0 + 2^30) / 2^31), interleaved back. */
INLINE __m512i requant16(__m512i acc, const lanes_t *c) {
    const __m512i nudge = _mm512_set1_epi64((int64_t)1 << 30);
    __m512i even = _mm512_srai_epi64(_mm512_add_epi64(_mm512_mul_epi32(acc, c->mult), nudge), 31);
    __m512i odd = _mm512_mul_epi32(_mm512_srli_epi64(acc, 32), c->mult_odd);
    odd = _mm512_srai_epi64(_mm512_add_epi64(odd, nudge), 31);
    __m512i p = _mm512_mask_blend_epi32((__mmask16)0xAAAA, even, _mm512_slli_epi64(odd, 32));
    __mmask16 negative = _mm512_mask_cmplt_epi32_mask(c->rounds, p, _mm512_setzero_si512());
    p = _mm512_add_epi32(p, c->half);
    p = _mm512_mask_sub_epi32(p, negative, p, _mm512_set1_epi32(1));
    return _mm512_srav_epi32(p, c->right);
}

INLINE __m128i finish16_32(__m512i v, const lanes_t *c) {
    v = _mm512_add_epi32(v, c->zero_point);
    return _mm512_cvtepi32_epi8(_mm512_min_epi32(_mm512_max_epi32(v, c->act_min), c->act_max));
}

/* 16 output channels starting at o of one output pixel, where the fused epilogue doesn't apply (a left
 * shift, or accumulators that could leave int32): int32 dot products -> int8 (or, lift = 128, the u8 y + 128
 * that the next VNNI layer reads) in int64 lanes, with TFLite's int32 overflow checks. */
INLINE __m128i epilogue16(__m512i dot, const requant_t *q, int o, int lift, __mmask8 *bad) {
    __m512i r[2];
    for (int h = 0; h < 2; h++) {
        __m512i d = _mm512_cvtepi32_epi64(h ? _mm512_extracti64x4_epi64(dot, 1) : _mm512_castsi512_si256(dot));
        int k = o + 8 * h;
        __m512i acc = _mm512_add_epi64(d, _mm512_loadu_si512(q->offset + k));
        r[h] = requant8(acc, _mm512_loadu_si512(q->mult + k), _mm512_loadu_si512(q->left + k),
                        _mm512_loadu_si512(q->right + k), _mm512_loadu_si512(q->half + k), q->any_left, bad);
    }
    return finish16(r[0], r[1], q, lift);
}

/* Where a convolution writes: pixel (oy, ox) at base + oy row + ox pixel bytes, as int8 (lift 0) or as
 * y + 128 in u8 (lift 128: a network program's layout, which the next VNNI layer reads without a copy). */
typedef struct {
    int8_t *base;
    int64_t row;
    int pixel, lift;
} out_t;

/* One register tile: T output pixels of a row x NB blocks of 16 output channels; each broadcast of
 * 4 input bytes feeds NB instructions: vpdpbusd on 4 u8 channels (int8 layers, lifted by 128) or, WIDE,
 * vpdpwssd on 2 int16 channels (the first layer's noisy input).
 * u: the padded image (hp x wp pixels of ``pixel`` bytes); w: block o/16's packed weights
 * [kh*kw*pixel/4][16][4 bytes], the next block's ``block`` bytes further. */
INLINE void tile(int WIDE, int NB, int T, int PIXEL, int STEP, const uint8_t *u, int wp, int pixel,
                              const conv_shape_t *s, int oy, int ox0, const int8_t *w, int64_t block,
                              const requant_t *q, int o, const out_t *out, __mmask8 *bad) {
    __m512i acc[2][MAX_TILE];
    for (int k = 0; k < NB; k++)
        for (int t = 0; t < T; t++) acc[k][t] = _mm512_setzero_si512();
    /* PIXEL and STEP, when the caller fixes them, make every input address base + a constant */
    const int px = PIXEL ? PIXEL : pixel, step = STEP ? STEP : s->sw * pixel;
    for (int ky = 0; ky < s->kh; ky++)
        for (int kx = 0; kx < s->kw; kx++) {
            const uint8_t *base = u + ((int64_t)(oy * s->sh + ky) * wp + ox0 * s->sw + kx) * px;
            for (int c = 0; c < px; c += 4, w += 64) {
                __m512i w0 = _mm512_loadu_si512(w), w1 = NB > 1 ? _mm512_loadu_si512(w + block) : w0;
                for (int t = 0; t < T; t++) {
                    int32_t quad;
                    memcpy(&quad, base + t * step + c, 4);
                    __m512i a = _mm512_set1_epi32(quad);
                    if (WIDE) {
                        acc[0][t] = _mm512_dpwssd_epi32(acc[0][t], a, w0);
                        if (NB > 1) acc[1][t] = _mm512_dpwssd_epi32(acc[1][t], a, w1);
                    } else {
                        acc[0][t] = _mm512_dpbusd_epi32(acc[0][t], a, w0);
                        if (NB > 1) acc[1][t] = _mm512_dpbusd_epi32(acc[1][t], a, w1);
                    }
                }
            }
        }
    for (int k = 0; k < NB; k++) {
        int rest = s->cout - o - 16 * k;
        __mmask16 keep = rest >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << rest) - 1);
        int8_t *at = out->base + oy * out->row + (int64_t)ox0 * out->pixel + o + 16 * k;
        const int64_t step = out->pixel;
        /* the epilogue's form chosen once per tile, so that each loop below unrolls with its
         * accumulators in registers */
        if (q->fused) {
            const fused_t f = fused_at(q, o + 16 * k, out->lift);
            const __m512i lo = _mm512_set1_epi32((int32_t)(q->act_min + out->lift));
            const __m512i hi = _mm512_set1_epi32((int32_t)(q->act_max + out->lift));
            /* an upper bound of 127 is the pack's own saturation (unsigned to 255 once lifted) */
#define FUSED_STORES(RELU, PACK)                                                                         \
    _Pragma("GCC unroll 16") for (int t = 0; t < T; t++) {                                               \
        __m512i v = _mm512_max_epi32(requant_fused(acc[k][t], &f, RELU), lo);                            \
        _mm_mask_storeu_epi8(at + t * step, keep, PACK);                                                 \
    }
            if (q->act_max == 127 && out->lift) {
                if (q->relu) FUSED_STORES(1, _mm512_cvtusepi32_epi8(v)) else FUSED_STORES(0, _mm512_cvtusepi32_epi8(v))
            } else if (q->act_max == 127) {
                if (q->relu) FUSED_STORES(1, _mm512_cvtsepi32_epi8(v)) else FUSED_STORES(0, _mm512_cvtsepi32_epi8(v))
            } else {
                if (q->relu) FUSED_STORES(1, _mm512_cvtepi32_epi8(_mm512_min_epi32(v, hi)))
                else FUSED_STORES(0, _mm512_cvtepi32_epi8(_mm512_min_epi32(v, hi)))
            }
#undef FUSED_STORES
        } else {
            for (int t = 0; t < T; t++)
                _mm_mask_storeu_epi8(at + t * step, keep, epilogue16(acc[k][t], q, o + 16 * k, out->lift, bad));
        }
    }
}

#define TILE_CASE(T)                                                                              \
    case T:                                                                                       \
        if (WIDE) tile(1, 1, T, 0, 0, u, wp, pixel, s, oy, ox0, w, block, q, o, out, bad);       \
        else if (NB == 2) tile(0, 2, T, 0, 0, u, wp, pixel, s, oy, ox0, w, block, q, o, out, bad); \
        else tile(0, 1, T, 0, 0, u, wp, pixel, s, oy, ox0, w, block, q, o, out, bad);            \
        break;

/* The common int8 shapes (16, 32 or 64 channels, stride 1 or 2, full tiles of 14 or 7 pixels) with
 * their strides known to the compiler. */
#define TILE_FIXED_T(P, ST, T_)                                                                       \
    case T_:                                                                                          \
        if (NB == 2) tile(0, 2, T_, P, ST, u, wp, pixel, s, oy, ox0, w, block, q, o, out, bad);      \
        else tile(0, 1, T_, P, ST, u, wp, pixel, s, oy, ox0, w, block, q, o, out, bad);              \
        return;
#define TILE_FIXED(P, ST)                                                                             \
    if (pixel == P && s->sw * pixel == ST) {                                                          \
        if (T == 16) { tile(0, 1, 16, P, ST, u, wp, pixel, s, oy, ox0, w, block, q, o, out, bad); return; } \
        switch (T) { TILE_FIXED_T(P, ST, 14) TILE_FIXED_T(P, ST, 8) TILE_FIXED_T(P, ST, 7) }          \
    }

static void tile_dispatch(int WIDE, int NB, int T, const uint8_t *u, int wp, int pixel,
                                       const conv_shape_t *s, int oy, int ox0, const int8_t *w, int64_t block,
                                       const requant_t *q, int o, const out_t *out, __mmask8 *bad) {
    if (!WIDE && (T == 16 || T == 14 || T == 8 || T == 7)) {
        TILE_FIXED(16, 16) TILE_FIXED(32, 32) TILE_FIXED(64, 64) TILE_FIXED(16, 32) TILE_FIXED(32, 64)
    }
    /* the first layer of 1- and 3-channel images (int16 pairs: 4 and 8 bytes a pixel), stride 1 */
    if (WIDE && (T == 16 || T == 14) && (pixel == 4 || pixel == 8) && s->sw == 1) {
        if (pixel == 4 && T == 16) tile(1, 1, 16, 4, 4, u, wp, pixel, s, oy, ox0, w, block, q, o, out, bad);
        if (pixel == 4 && T == 14) tile(1, 1, 14, 4, 4, u, wp, pixel, s, oy, ox0, w, block, q, o, out, bad);
        if (pixel == 8 && T == 16) tile(1, 1, 16, 8, 8, u, wp, pixel, s, oy, ox0, w, block, q, o, out, bad);
        if (pixel == 8 && T == 14) tile(1, 1, 14, 8, 8, u, wp, pixel, s, oy, ox0, w, block, q, o, out, bad);
        return;
    }
    switch (T) {
        TILE_CASE(1) TILE_CASE(2) TILE_CASE(3) TILE_CASE(4) TILE_CASE(5) TILE_CASE(6) TILE_CASE(7)
        TILE_CASE(8) TILE_CASE(9) TILE_CASE(10) TILE_CASE(11) TILE_CASE(12) TILE_CASE(13) TILE_CASE(14)
        TILE_CASE(15) TILE_CASE(16)
    }
}

/* Pixels per tile for a row of ow outputs: a width that divides the row and has a specialized tile. */
static int tile_width(int ow, int NB) {
    if (NB == 1 && ow % 16 == 0) return 16;
    if (ow % 14 == 0) return 14;
    if (ow % 8 == 0) return 8;
    if (ow % 7 == 0) return 7;
    return NB == 1 ? MAX_TILE : MAX_TILE_TWO_BLOCKS;
}

/* One image's int8 convolution through vpdpbusd: u is its input lifted to u8 (x + 128) and framed by the
 * lifted zero point (the convolution's padding included), rows of wp pixels of `pixel` (cin rounded up to
 * 4) bytes; the channels beyond cin meet zero weights. w: [cout_pad/16][kh*kw][pixel/4][16][4] int8. */
static void conv_image_s8_vnni(const uint8_t *u, int wp, int pixel, const conv_shape_t *s,
                                            const int8_t *w, const requant_t *q, const out_t *out, __mmask8 *bad) {
    const int64_t block = (int64_t)s->kh * s->kw * pixel * 16;
    for (int oy = 0; oy < s->oh; oy++)
        for (int o = 0; o < s->cout; o += 32) {
            const int8_t *wb = w + (o / 16) * block;
            int NB = s->cout - o > 16 ? 2 : 1;
            int width = tile_width(s->ow, NB);
            for (int ox0 = 0; ox0 < s->ow; ox0 += width) {
                int T = s->ow - ox0 < width ? s->ow - ox0 : width;
                tile_dispatch(0, NB, T, u, wp, pixel, s, oy, ox0, wb, block, q, o, out, bad);
            }
        }
}

/* int8 NHWC convolution of s->n images through vpdpbusd; image b is written to out shifted by b images of
 * out.row * oh bytes (a framed output holds one image). */
static int conv_s8_vnni(const int8_t *x, const conv_shape_t *s, const int8_t *w, const requant_t *q,
                                     out_t out, uint8_t *u) {
    const int cin4 = (s->cin + 3) & ~3, hp = s->h + 2 * s->ph, wp = s->w + 2 * s->pw;
    const uint8_t pad = (uint8_t)(s->input_zero_point + 128);
    const __m512i lift = _mm512_set1_epi8((char)0x80);
    __mmask8 bad = 0;
    int8_t *first = out.base;
    for (int b = 0; b < s->n; b++) {
        memset(u, pad, (size_t)hp * wp * cin4);
        const int8_t *xb = x + (int64_t)b * s->h * s->w * s->cin;
        for (int iy = 0; iy < s->h; iy++) {
            uint8_t *dst = u + ((int64_t)(iy + s->ph) * wp + s->pw) * cin4;
            const int8_t *src = xb + (int64_t)iy * s->w * s->cin;
            if (s->cin == cin4) { /* a row is one contiguous run on both sides */
                int64_t len = (int64_t)s->w * cin4, i = 0;
                for (; i + 64 <= len; i += 64)
                    _mm512_storeu_si512(dst + i, _mm512_xor_si512(_mm512_loadu_si512(src + i), lift));
                __mmask64 tail = (__mmask64)((1ull << (len - i)) - 1);
                _mm512_mask_storeu_epi8(dst + i, tail, _mm512_xor_si512(_mm512_maskz_loadu_epi8(tail, src + i), lift));
            } else {
                for (int ix = 0; ix < s->w; ix++)
                    for (int c = 0; c < s->cin; c++) dst[ix * cin4 + c] = (uint8_t)(src[ix * s->cin + c] ^ 0x80);
            }
        }
        out.base = first + b * out.row * s->oh;
        conv_image_s8_vnni(u, wp, cin4, s, w, q, &out, &bad);
    }
    return bad ? ERR_OVERFLOW : 0;
}

/* The first layer: int32 inputs with |x - z_in| < 2^15 as int16 pairs through vpdpwssd (the caller checks
 * that range, and |x - z_in| sum|w| < 2^31 so the int32 sums are exact). The padded image holds x - z_in
 * (0 on the frame); w: [cout_pad/16][kh*kw][cin2/2][16][2] int16. Images follow each other in out as
 * in conv_s8_vnni. */
static int conv_s16_vnni(const int32_t *x, const conv_shape_t *s, const int16_t *w, const requant_t *q,
                                      out_t out, int16_t *u) {
    const int cin2 = (s->cin + 1) & ~1, hp = s->h + 2 * s->ph, wp = s->w + 2 * s->pw, pixel = 2 * cin2;
    const int64_t block = (int64_t)s->kh * s->kw * pixel * 16;
    __mmask8 bad = 0;
    int8_t *first = out.base;
    const __m512i zero_point = _mm512_set1_epi32((int32_t)s->input_zero_point);
    /* odd cin: lane j of a step takes value (j / cin2) cin + j % cin2 of the source run, or 0 (the pad channel) */
    int32_t lanes[16];
    __mmask16 spread_keep = 0;
    for (int j = 0; j < 16; j++) {
        lanes[j] = (j / cin2) * s->cin + j % cin2;
        if (j % cin2 < s->cin && lanes[j] < 16) spread_keep |= (__mmask16)(1u << j);
        if (lanes[j] > 15) lanes[j] = 0;
    }
    const __m512i spread = _mm512_loadu_si512(lanes);
    for (int b = 0; b < s->n; b++) {
        memset(u, 0, (size_t)hp * wp * pixel);
        const int32_t *xb = x + (int64_t)b * s->h * s->w * s->cin;
        for (int iy = 0; iy < s->h; iy++) {
            int16_t *dst = u + ((int64_t)(iy + s->ph) * wp + s->pw) * cin2;
            const int32_t *src = xb + (int64_t)iy * s->w * s->cin;
            if (s->cin == cin2) { /* contiguous on both sides: 16 values per step */
                int64_t len = (int64_t)s->w * cin2, i = 0;
                for (; i < len; i += 16) {
                    __mmask16 m = len - i >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (len - i)) - 1);
                    __m512i v = _mm512_sub_epi32(_mm512_maskz_loadu_epi32(m, src + i), zero_point);
                    _mm256_mask_storeu_epi16(dst + i, m, _mm512_cvtepi32_epi16(v));
                }
            } else if (16 % cin2 == 0) { /* odd cin (1, 3, 7, 15): 16 / cin2 pixels per step, each a zero last */
                const int per = 16 / cin2;
                for (int x0 = 0; x0 < s->w; x0 += per) {
                    const int n = s->w - x0 < per ? s->w - x0 : per;
                    __m512i v = _mm512_maskz_loadu_epi32((__mmask16)((1u << (n * s->cin)) - 1), src + x0 * s->cin);
                    v = _mm512_maskz_permutexvar_epi32(spread_keep, spread, _mm512_sub_epi32(v, zero_point));
                    _mm256_mask_storeu_epi16(dst + x0 * cin2, (__mmask16)((1u << (n * cin2)) - 1),
                                             _mm512_cvtepi32_epi16(v));
                }
            } else {
                for (int ix = 0; ix < s->w; ix++)
                    for (int c = 0; c < s->cin; c++)
                        dst[ix * cin2 + c] = (int16_t)(src[ix * s->cin + c] - s->input_zero_point);
            }
        }
        out.base = first + b * out.row * s->oh;
        for (int oy = 0; oy < s->oh; oy++)
            for (int o = 0; o < s->cout; o += 16) {
                const int8_t *wb = (const int8_t *)w + (o / 16) * block;
                const int width = tile_width(s->ow, 1);
                for (int ox0 = 0; ox0 < s->ow; ox0 += width) {
                    int T = s->ow - ox0 < width ? s->ow - ox0 : width;
                    tile_dispatch(1, 1, T, (const uint8_t *)u, wp, pixel, s, oy, ox0, wb, block, q, o, &out, &bad);
                }
            }
    }
    return bad ? ERR_OVERFLOW : 0;
}

/* An ADD input's rescaling, MultiplyByQuantizedMultiplier((x - z) 2^20, M0, shift <= 0), without 64-bit
 * products: with d = x - z (|d| <= 255) and M0 = Mh 2^11 + Ml (Ml < 2^11),
 *   floor((d 2^20 M0 + 2^30) / 2^31) = floor((d M0 + 2^10) / 2^11) = d Mh + floor((d Ml + 2^10) / 2^11),
 * every term within int32; then the rounding division as in requant16. */
INLINE __m512i add_input16(__m512i d, const lanes_t *c) {
    __m512i high = _mm512_mullo_epi32(d, _mm512_srli_epi32(c->mult, 11));
    __m512i low = _mm512_mullo_epi32(d, _mm512_and_si512(c->mult, _mm512_set1_epi32(2047)));
    __m512i p = _mm512_add_epi32(high, _mm512_srai_epi32(_mm512_add_epi32(low, _mm512_set1_epi32(1 << 10)), 11));
    __mmask16 negative = _mm512_mask_cmplt_epi32_mask(c->rounds, p, _mm512_setzero_si512());
    p = _mm512_add_epi32(p, c->half);
    p = _mm512_mask_sub_epi32(p, negative, p, _mm512_set1_epi32(1));
    return _mm512_srav_epi32(p, c->right);
}

/* One ADD input's rescaling, MultiplyByQuantizedMultiplier((x - z) 2^20, M0, -r), for x in 16 int32 lanes,
 * less z A: with q = 11 + r and M0 = A 2^q + B, floor((d 2^20 M0 + 2^30) / 2^31) then the rounding
 * division by 2^r is floor((d M0 + 2^10 + c 2^11) / 2^q) (as in requant_fused; c = 2^(r-1) - [d < 0], or 0
 * when r = 0) = d A + floor((d B + 2^10 + c 2^11) / 2^q), and d A = x A - z A. For r <= 10 every term is
 * within int32 (|x B| < 2^(q+9)). The constants: kernels.h's add_input_scalars. */
typedef struct {
    __m512i a, b, k, z, fix;
    __m128i q;
} add_input_t;

INLINE add_input_t add_input_of(const add_input_scalars_t *c) {
    add_input_t in = {_mm512_set1_epi32((int32_t)c->a), _mm512_set1_epi32((int32_t)c->b),
                      _mm512_set1_epi32((int32_t)c->k), _mm512_set1_epi32((int32_t)c->z),
                      _mm512_set1_epi32((int32_t)c->fix), _mm_cvtsi64_si128(c->q)};
    return in;
}

INLINE __m512i add_input_fused(__m512i x, const add_input_t *in) {
    __m512i low = _mm512_add_epi32(_mm512_mullo_epi32(x, in->b), in->k);
    low = _mm512_mask_sub_epi32(low, _mm512_cmplt_epi32_mask(x, in->z), low, in->fix);
    return _mm512_add_epi32(_mm512_mullo_epi32(x, in->a), _mm512_sra_epi32(low, in->q));
}

/* One ADD layer's constants in 16 int32 lanes, computed once for all its rows. TFLite validates ADD's shifts
 * <= 0: then |(x - z) 2^20| < 2^28 and the sum of the two rescaled inputs stays below 2^30, so int32 lanes
 * suffice. Where the input shifts are >= -10 and the output shift in [-21, 0] the fused forms serve
 * (requant_fused and add_input_fused); otherwise add_input16 and requant16. The lifts (0 or 128) say which of
 * the inputs and the output hold u8 values x + 128 (a network program's layout) instead of int8: the zero
 * points and bounds move by the lift. */
typedef struct {
    int fused, relu, lift_a, lift_b;
    add_input_t in1, in2; /* fused */
    fused_t f;
    __m512i lo, hi;
    lanes_t c1, c2, co; /* not fused */
    __m512i z1, z2;
} add_plan_t;

static void add_plan(add_plan_t *plan, const int64_t *p, int lift_a, int lift_b, int lift_y) {
    plan->lift_a = lift_a, plan->lift_b = lift_b;
    add_fused_scalars_t c;
    plan->fused = add_fused_scalars(p, lift_a, lift_b, lift_y, &c);
    if (!plan->fused) {
        plan->c1 = lanes_of(p[3], p[4], 0, 0, 0), plan->c2 = lanes_of(p[5], p[6], 0, 0, 0);
        plan->co = lanes_of(p[7], p[8], p[2] + lift_y, p[9] + lift_y, p[10] + lift_y);
        plan->z1 = _mm512_set1_epi32((int32_t)(p[0] + lift_a)), plan->z2 = _mm512_set1_epi32((int32_t)(p[1] + lift_b));
        return;
    }
    plan->in1 = add_input_of(&c.in1), plan->in2 = add_input_of(&c.in2);
    fused_t *f = &plan->f;
    f->mult = _mm512_set1_epi32((int32_t)c.mult), f->mult_odd = _mm512_set1_epi64(c.mult);
    f->add[0] = f->add[1] = _mm512_set1_epi64(c.add);
    f->below[0] = f->below[1] = _mm512_set1_epi64(c.below);
    f->fix[0] = f->fix[1] = _mm512_set1_epi64(c.fix);
    f->shift[0] = f->shift[1] = _mm512_set1_epi64(31 + c.right);
    plan->lo = _mm512_set1_epi32((int32_t)c.lo), plan->hi = _mm512_set1_epi32((int32_t)c.hi);
    plan->relu = c.relu;
}

/* count bytes of one run of each operand through a plan */
#define ADD_LOOP(BODY)                                                                                          \
    for (int64_t i = 0; i < count; i += 16) {                                                                   \
        __mmask16 k = count - i >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (count - i)) - 1);               \
        __m128i ra = _mm_maskz_loadu_epi8(k, a + i), rb = _mm_maskz_loadu_epi8(k, b + i);                       \
        __m512i xa = plan->lift_a ? _mm512_cvtepu8_epi32(ra) : _mm512_cvtepi8_epi32(ra);                        \
        __m512i xb = plan->lift_b ? _mm512_cvtepu8_epi32(rb) : _mm512_cvtepi8_epi32(rb);                        \
        _mm_mask_storeu_epi8(y + i, k, BODY);                                                                   \
    }

INLINE __m128i add_fused16(const add_plan_t *plan, __m512i xa, __m512i xb) {
    __m512i sum = _mm512_add_epi32(add_input_fused(xa, &plan->in1), add_input_fused(xb, &plan->in2));
    __m512i v = requant_fused(sum, &plan->f, plan->relu);
    return _mm512_cvtepi32_epi8(_mm512_min_epi32(_mm512_max_epi32(v, plan->lo), plan->hi));
}

INLINE __m128i add_lanes16(const add_plan_t *plan, __m512i xa, __m512i xb) {
    __m512i sum = _mm512_add_epi32(add_input16(_mm512_sub_epi32(xa, plan->z1), &plan->c1),
                                   add_input16(_mm512_sub_epi32(xb, plan->z2), &plan->c2));
    return finish16_32(requant16(sum, &plan->co), &plan->co);
}

static void add_run(const add_plan_t *plan, const int8_t *a, const int8_t *b, int64_t count, int8_t *y) {
    if (plan->fused) { /* one loop per form: the branch stays out of the loop */
        ADD_LOOP(add_fused16(plan, xa, xb))
    } else {
        ADD_LOOP(add_lanes16(plan, xa, xb))
    }
}
#undef ADD_LOOP

/* One ADD layer in any layout a VNNI program gives it: plain tensors in one run, framed ones row by row (the
 * frames differ; the three share their pixel size). A positive shift (which TFLite refuses) takes the portable
 * loop on plain tensors, the reference engine otherwise. */
static int add_vnni(const op_t *op, const void *a, const void *b, void *y) {
    const layout_t *la = &op->from0, *lb = &op->from1, *ly = &op->to;
    const int64_t *p = op->add_params;
    const int flat = plain(la) && plain(lb) && plain(ly);
    if (p[4] > 0 || p[6] > 0 || p[8] > 0) return flat ? intrs_add_portable(op, a, b, y) : ERR_OVERFLOW;
    add_plan_t plan;
    add_plan(&plan, p, la->lift, lb->lift, ly->lift);
    if (flat) {
        add_run(&plan, a, b, (int64_t)ly->h * ly->w * ly->c, y);
        return 0;
    }
    const char *ra = interior(a, la), *rb = interior(b, lb);
    char *ry = interior(y, ly);
    for (int r = 0; r < ly->h; r++)
        add_run(&plan, (const int8_t *)ra + r * layout_row(la), (const int8_t *)rb + r * layout_row(lb),
                (int64_t)ly->w * ly->pixel, (int8_t *)ry + r * layout_row(ly));
    return 0;
}

/* One ADD input's rescaling alone, in the form add_vnni uses for this input shift (when the output's shift
 * admits the fused form); the scalar definition for the tail and for left shifts. */
static int add_rescale_vnni(const int8_t *x, int64_t count, int64_t z, int64_t mult, int64_t shift, int32_t *out) {
    if (shift > 0) return intrs_add_rescale_portable(x, count, z, mult, shift, out);
    const int64_t right = -shift;
    const lanes_t c = lanes_of(mult, shift, 0, 0, 0);
    const add_input_scalars_t fused = add_input_scalars(z, mult, shift);
    const add_input_t in = add_input_of(&fused);
    const __m512i za = _mm512_set1_epi32((int32_t)(z * fused.a));
    int64_t i = 0;
    for (; i + 16 <= count; i += 16) {
        __m512i v = _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(x + i)));
        v = right <= 10 ? _mm512_sub_epi32(add_input_fused(v, &in), za)
                        : add_input16(_mm512_sub_epi32(v, _mm512_set1_epi32((int32_t)z)), &c);
        _mm512_storeu_si512(out + i, v);
    }
    return intrs_add_rescale_portable(x + i, count - i, z, mult, shift, out + i);
}

/* One image of a convolution op, in any layout a VNNI program gives it: a lifted input read in place, a plain
 * int8 input lifted by a copy, or the network's int32 input as int16 pairs; the output plain or lifted and
 * framed (the interpreter fills the frame). The first layer without int16 pairs takes the portable kernel. */
static int conv_vnni(const op_t *op, const void *in, void *out, void *scratch) {
    const layout_t *from = &op->from0, *to = &op->to;
    const conv_shape_t *s = &op->shape;
    if (op->kind == OP_CONV_S32 && !op->w_pairs) return intrs_conv_portable(op, in, out, scratch);
    const requant_t *q = op->kind == OP_CONV_S8 ? op->q_vnni : op->q_pairs;
    out_t o = {(int8_t *)interior(out, to), layout_row(to), to->pixel, to->lift};
    if (from->lift) { /* the input lies ready for vpdpbusd (only int8 tensors are lifted) */
        const uint8_t *u = (const uint8_t *)interior(in, from) - s->ph * layout_row(from) - s->pw * from->pixel;
        __mmask8 bad = 0;
        conv_image_s8_vnni(u, from->w + 2 * from->pad, from->pixel, s, op->w_vnni, q, &o, &bad);
        return bad ? ERR_OVERFLOW : 0;
    }
    if (!plain(from)) return ERR_UNSUPPORTED;
    if (op->kind == OP_CONV_S8) return conv_s8_vnni((const int8_t *)in, s, op->w_vnni, q, o, scratch);
    return conv_s16_vnni((const int32_t *)in, s, op->w_pairs, q, o, scratch);
}

const isa_t intrs_isa_vnni = {ISA_VNNI, 1, conv_vnni, add_vnni, add_rescale_vnni};

#endif
