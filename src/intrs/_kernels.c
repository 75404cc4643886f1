/* intrs compiled integer kernels: TFLite's int8 reference semantics, fast.
 *
 * The same integers as intrs/engine.py (the reference engine, which a test holds
 * this file equal to on random models and inputs), computed on NHWC int8 arrays:
 *
 *   CONV_2D     acc = sum (x - z_in) w + b;  y = clamp(z_out + MultiplyByQuantizedMultiplier(acc))
 *   ADD         TFLite's int8 AddFunc (inputs lifted by 2^20, three requantizations)
 *   POOL        average (rounding half away from zero over the real points) and max
 *
 * Three instruction sets, the best the CPU has chosen at run time: AVX-512 VNNI (vpdpbusd: u8 x s8 ->
 * int32, 64 products per instruction; the int8 activations are lifted to u8 by + 128 and the lift
 * removed with the weights' column sums, exactly), AVX2 (vpmaddwd on int16 pairs) and portable C.
 * MultiplyByQuantizedMultiplier is gemmlowp's double rounding in the fused form that
 * engine.requantize documents: floor((a M0 + 2^30) / 2^31), then division by 2^right
 * rounding half away from zero; on VNNI both roundings merge into one 64-bit floor
 * (requant_fused), elsewhere each step runs in int32 or int64 lanes.
 *
 * A whole network runs as a program (intrs_run): its ops over per-image slots, one image
 * through every layer at a time.
 *
 * Called through ctypes (no Python API): each function returns 0, or a nonzero error
 * code when a value leaves int32 where TFLite's int32 arithmetic would overflow (the
 * caller then raises the reference engine's error).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define INTRS_X86 1
#define INTRS_AVX512 __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx512vnni")))
#define INTRS_AVX2 __attribute__((target("avx2")))
#else
#define INTRS_X86 0
#endif

#define INLINE static inline __attribute__((always_inline))
#define ERR_OVERFLOW 1
#define ERR_MEMORY 2
#define ERR_UNSUPPORTED 3 /* a program this build or CPU can't run: the reference engine decides */
#define ADD_LEFT_SHIFT 20
/* Output pixels per register tile: with two blocks of 16 channels 2 x 14 accumulators + 2 weight vectors
 * + a broadcast fill the 32 zmm registers; with one block up to 16. */
#define MAX_TILE 16
#define MAX_TILE_TWO_BLOCKS 14

int intrs_kernels_abi(void) { return 2; }

/* The instruction sets, best last; -1: not chosen yet. */
#define ISA_PORTABLE 0
#define ISA_AVX2 1
#define ISA_VNNI 2
static int isa_level = -1;

static int cpu_supports(int level) {
#if INTRS_X86
    __builtin_cpu_init();
    if (level == ISA_AVX2) return __builtin_cpu_supports("avx2");
    if (level == ISA_VNNI)
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
               __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") &&
               __builtin_cpu_supports("avx512vnni");
#endif
    return level == ISA_PORTABLE;
}

/* Asks for an instruction set (2 AVX-512 VNNI, 1 AVX2, 0 portable C); granted the best one at or below it
 * that this CPU has. Returns the one in use. */
int intrs_set_isa(int level) {
    for (isa_level = level > ISA_VNNI ? ISA_VNNI : level; isa_level > 0 && !cpu_supports(isa_level);) isa_level--;
    if (isa_level < 0) isa_level = ISA_PORTABLE;
    return isa_level;
}

INLINE int isa(void) {
    if (isa_level < 0) intrs_set_isa(ISA_VNNI);
    return isa_level;
}

/* One layer's requantization, per output channel (arrays of cout_pad int64). */
typedef struct {
    const int64_t *offset;   /* the bias (direct kernel, which sums (x - z_in) w) or bias - (z_in + 128) sum(w) (VNNI) */
    const int64_t *mult;     /* M0 */
    const int64_t *left;     /* max(shift, 0) */
    const int64_t *right;    /* max(-shift, 0) */
    const int64_t *half;     /* 2^right / 2 (0 when right == 0) */
    int64_t zero_point, act_min, act_max;
    int any_left;
    /* fast32 (AVX2): every accumulator provably within +-2^30 and no left shift, so the whole requantization
     * runs in int32 lanes (the int32 copies below; mult32 serves the fused form too); otherwise the int64
     * lanes above with checks */
    int fast32;
    const int32_t *offset32, *mult32, *right32, *half32;
    /* fused (VNNI): every accumulator provably within int32, no left shift, and requant_fused's bounds hold;
     * per block of 16 channels, 80 int64 in even-then-odd lane order: add (lift 0), add (lift 128), below,
     * fix, shift (see requant_fused). relu: act_min >= zero_point. */
    int fused, relu;
    const int64_t *fused_constants;
} requant_t;

typedef struct {
    int n, h, w, cin, cout, cout_pad, kh, kw, sh, sw, ph, pw, oh, ow;
    int64_t input_zero_point;
} conv_shape_t;

/* ------------------------------------------------------------------ scalar (the definition) */

INLINE int out_of_int32(int64_t v) { return v < INT32_MIN || v > INT32_MAX; }

INLINE int64_t requant_scalar(int64_t acc, int64_t mult, int64_t left, int64_t right, int64_t half, int *err) {
    if (out_of_int32(acc)) {
        *err = ERR_OVERFLOW;
        return 0;
    }
    int64_t lifted = acc * ((int64_t)1 << left);
    if (left && out_of_int32(lifted)) *err = ERR_OVERFLOW;
    int64_t p = (lifted * mult + ((int64_t)1 << 30)) >> 31;
    p = p + half - (int64_t)(p < 0 && right > 0);
    return p >> right;
}

INLINE int8_t finish_scalar(int64_t v, const requant_t *q) {
    v += q->zero_point;
    v = v < q->act_min ? q->act_min : v;
    v = v > q->act_max ? q->act_max : v;
    return (int8_t)v;
}

/* Direct convolution with int32 accumulators over any integer input type: the portable path for
 * every layer, and the first layer's path on every CPU (its noisy input is wider than int8). The
 * caller guarantees |x - z_in| * sum|w| < 2^31, so the int32 sums are the exact ones. */
#define DEFINE_CONV_WIDE(NAME, XTYPE, ATTR)                                                              \
    ATTR static int NAME(const XTYPE *x, const conv_shape_t *s, const int32_t *w, const requant_t *q,  \
                         int8_t *y) {                                                                  \
        int err = 0;                                                                                   \
        int32_t *acc = (int32_t *)aligned_alloc(64, sizeof(int32_t) * s->cout_pad);                    \
        if (!acc) return ERR_MEMORY;                                                                   \
        for (int b = 0; b < s->n; b++)                                                                 \
            for (int oy = 0; oy < s->oh; oy++)                                                         \
                for (int ox = 0; ox < s->ow; ox++) {                                                   \
                    memset(acc, 0, sizeof(int32_t) * s->cout_pad);                                     \
                    for (int ky = 0; ky < s->kh; ky++) {                                               \
                        int iy = oy * s->sh - s->ph + ky;                                              \
                        if (iy < 0 || iy >= s->h) continue; /* padding: (z_in - z_in) w = 0 */         \
                        for (int kx = 0; kx < s->kw; kx++) {                                           \
                            int ix = ox * s->sw - s->pw + kx;                                          \
                            if (ix < 0 || ix >= s->w) continue;                                        \
                            const XTYPE *px = x + (((int64_t)b * s->h + iy) * s->w + ix) * s->cin;     \
                            const int32_t *row = w + (int64_t)((ky * s->kw + kx) * s->cin) * s->cout_pad; \
                            for (int c = 0; c < s->cin; c++, row += s->cout_pad) {                     \
                                int32_t v = (int32_t)px[c] - (int32_t)s->input_zero_point;             \
                                for (int o = 0; o < s->cout_pad; o++) acc[o] += v * row[o];            \
                            }                                                                          \
                        }                                                                              \
                    }                                                                                  \
                    int8_t *out = y + (((int64_t)b * s->oh + oy) * s->ow + ox) * s->cout;              \
                    for (int o = 0; o < s->cout; o++)                                                  \
                        out[o] = finish_scalar(requant_scalar((int64_t)acc[o] + q->offset[o], q->mult[o], \
                                                              q->left[o], q->right[o], q->half[o], &err), q); \
                }                                                                                      \
        free(acc);                                                                                     \
        return err;                                                                                    \
    }

DEFINE_CONV_WIDE(conv_wide_s8_portable, int8_t, )
DEFINE_CONV_WIDE(conv_wide_s32_portable, int32_t, )

static int add_portable(const int8_t *a, const int8_t *b, int64_t count, const int64_t *p, int8_t *y) {
    /* p: z1, z2, z_out, M1, s1, M2, s2, Mo, so, act_min, act_max (shifts as TFLite stores them) */
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

/* ------------------------------------------------------------------ AVX-512 VNNI */
#if INTRS_X86

/* MultiplyByQuantizedMultiplier on 8 int64 lanes; *bad collects lanes that left int32. */
INTRS_AVX512 INLINE __m512i requant8(__m512i acc, __m512i mult, __m512i left, __m512i right, __m512i half,
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
INTRS_AVX512 INLINE __m128i finish16(__m512i a, __m512i b, const requant_t *q, int lift) {
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

INTRS_AVX512 INLINE lanes_t lanes_of(int64_t mult, int64_t shift, int64_t zero_point, int64_t act_min,
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
 * the multiplication folds in too (add += o M0, below -= o M0). The caller keeps |numerator| < 2^63.
 * With relu (act_min >= z, the output clamped there), the sign test is skipped: for p < 0 both roundings
 * give a value <= z, which the clamp turns into act_min all the same. */
typedef struct {
    __m512i mult, mult_odd, add[2], below[2], fix[2], shift[2]; /* [0]: the even lanes, [1]: the odd lanes */
} fused_t;

INTRS_AVX512 INLINE __m512i requant_fused(__m512i x, const fused_t *f, int relu) {
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
INTRS_AVX512 INLINE fused_t fused_at(const requant_t *q, int o, int lift) {
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
INTRS_AVX512 INLINE __m512i requant16(__m512i acc, const lanes_t *c) {
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

INTRS_AVX512 INLINE __m128i finish16_32(__m512i v, const lanes_t *c) {
    v = _mm512_add_epi32(v, c->zero_point);
    return _mm512_cvtepi32_epi8(_mm512_min_epi32(_mm512_max_epi32(v, c->act_min), c->act_max));
}

/* 16 output channels starting at o of one output pixel, where the fused epilogue doesn't apply (a left
 * shift, or accumulators that could leave int32): int32 dot products -> int8 (or, lift = 128, the u8 y + 128
 * that the next VNNI layer reads) in int64 lanes, with TFLite's int32 overflow checks. */
INTRS_AVX512 INLINE __m128i epilogue16(__m512i dot, const requant_t *q, int o, int lift, __mmask8 *bad) {
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
INTRS_AVX512 INLINE void tile(int WIDE, int NB, int T, int PIXEL, int STEP, const uint8_t *u, int wp, int pixel,
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

INTRS_AVX512 static void tile_dispatch(int WIDE, int NB, int T, const uint8_t *u, int wp, int pixel,
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
INTRS_AVX512 static void conv_image_s8_vnni(const uint8_t *u, int wp, int pixel, const conv_shape_t *s,
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
INTRS_AVX512 static int conv_s8_vnni(const int8_t *x, const conv_shape_t *s, const int8_t *w, const requant_t *q,
                                     out_t out) {
    const int cin4 = (s->cin + 3) & ~3, hp = s->h + 2 * s->ph, wp = s->w + 2 * s->pw;
    uint8_t *u = (uint8_t *)aligned_alloc(64, ((size_t)hp * wp * cin4 + 63) & ~(size_t)63);
    if (!u) return ERR_MEMORY;
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
    free(u);
    return bad ? ERR_OVERFLOW : 0;
}

/* The first layer: int32 inputs with |x - z_in| < 2^15 as int16 pairs through vpdpwssd (the caller checks
 * that range, and |x - z_in| sum|w| < 2^31 so the int32 sums are exact). The padded image holds x - z_in
 * (0 on the frame); w: [cout_pad/16][kh*kw][cin2/2][16][2] int16. Images follow each other in out as
 * in conv_s8_vnni. */
INTRS_AVX512 static int conv_s16_vnni(const int32_t *x, const conv_shape_t *s, const int16_t *w, const requant_t *q,
                                      out_t out) {
    const int cin2 = (s->cin + 1) & ~1, hp = s->h + 2 * s->ph, wp = s->w + 2 * s->pw, pixel = 2 * cin2;
    const int64_t block = (int64_t)s->kh * s->kw * pixel * 16;
    int16_t *u = (int16_t *)aligned_alloc(64, ((size_t)hp * wp * pixel + 63) & ~(size_t)63);
    if (!u) return ERR_MEMORY;
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
    free(u);
    return bad ? ERR_OVERFLOW : 0;
}

/* An ADD input's rescaling, MultiplyByQuantizedMultiplier((x - z) 2^20, M0, shift <= 0), without 64-bit
 * products: with d = x - z (|d| <= 255) and M0 = Mh 2^11 + Ml (Ml < 2^11),
 *   floor((d 2^20 M0 + 2^30) / 2^31) = floor((d M0 + 2^10) / 2^11) = d Mh + floor((d Ml + 2^10) / 2^11),
 * every term within int32; then the rounding division as in requant16. */
INTRS_AVX512 INLINE __m512i add_input16(__m512i d, const lanes_t *c) {
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
 * within int32 (|x B| < 2^(q+9)). */
typedef struct {
    __m512i a, b, k, z, fix;
    __m128i q;
} add_input_t;

INTRS_AVX512 INLINE add_input_t add_input_of(int64_t z, int64_t mult, int64_t shift) {
    const int64_t r = -shift, q = 11 + r, c = r ? (int64_t)1 << (r - 1) : 0;
    const int64_t b = mult & (((int64_t)1 << q) - 1);
    add_input_t in = {_mm512_set1_epi32((int32_t)(mult >> q)), _mm512_set1_epi32((int32_t)b),
                      _mm512_set1_epi32((int32_t)(((int64_t)1 << 10) + c * 2048 - z * b)), _mm512_set1_epi32((int32_t)z),
                      _mm512_set1_epi32(r ? 2048 : 0), _mm_cvtsi64_si128(q)};
    return in;
}

INTRS_AVX512 INLINE __m512i add_input_fused(__m512i x, const add_input_t *in) {
    __m512i low = _mm512_add_epi32(_mm512_mullo_epi32(x, in->b), in->k);
    low = _mm512_mask_sub_epi32(low, _mm512_cmplt_epi32_mask(x, in->z), low, in->fix);
    return _mm512_add_epi32(_mm512_mullo_epi32(x, in->a), _mm512_sra_epi32(low, in->q));
}

/* ADD through requant_fused and add_input_fused where their bounds hold (input shifts >= -10, output shift
 * in [-21, 0]); returns 1 if it ran. */
INTRS_AVX512 static int add_avx512_fused(const int8_t *a, const int8_t *b, int64_t count, const int64_t *p,
                                         int8_t *y, int lift_a, int lift_b, int lift_y) {
    if (p[4] < -10 || p[6] < -10 || p[8] < -21 || p[4] > 0 || p[6] > 0 || p[8] > 0) return 0;
    const int64_t z1 = p[0] + lift_a, z2 = p[1] + lift_b, r = -p[8], m = p[7];
    const add_input_t in1 = add_input_of(z1, p[3], p[4]), in2 = add_input_of(z2, p[5], p[6]);
    /* the sum of the two rescaled inputs is s + zA, zA = z1 A1 + z2 A2, folded into the output's constants */
    const int64_t za = z1 * (p[3] >> (11 - p[4])) + z2 * (p[5] >> (11 - p[6]));
    const int64_t add = -za * m + ((int64_t)1 << 30) + (r ? ((int64_t)1 << (r - 1)) << 31 : 0) +
                        (p[2] + lift_y) * ((int64_t)1 << (31 + r));
    fused_t f;
    f.mult = _mm512_set1_epi32((int32_t)m), f.mult_odd = _mm512_set1_epi64(m);
    f.add[0] = f.add[1] = _mm512_set1_epi64(add);
    f.below[0] = f.below[1] = _mm512_set1_epi64(za * m - ((int64_t)1 << 30));
    f.fix[0] = f.fix[1] = _mm512_set1_epi64(r ? (int64_t)1 << 31 : 0);
    f.shift[0] = f.shift[1] = _mm512_set1_epi64(31 + r);
    const __m512i lo = _mm512_set1_epi32((int32_t)(p[9] + lift_y)), hi = _mm512_set1_epi32((int32_t)(p[10] + lift_y));
    const int relu = p[9] >= p[2];
    for (int64_t i = 0; i < count; i += 16) {
        __mmask16 k = count - i >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (count - i)) - 1);
        __m128i ra = _mm_maskz_loadu_epi8(k, a + i), rb = _mm_maskz_loadu_epi8(k, b + i);
        __m512i xa = lift_a ? _mm512_cvtepu8_epi32(ra) : _mm512_cvtepi8_epi32(ra);
        __m512i xb = lift_b ? _mm512_cvtepu8_epi32(rb) : _mm512_cvtepi8_epi32(rb);
        __m512i sum = _mm512_add_epi32(add_input_fused(xa, &in1), add_input_fused(xb, &in2));
        __m512i v = _mm512_min_epi32(_mm512_max_epi32(requant_fused(sum, &f, relu), lo), hi);
        _mm_mask_storeu_epi8(y + i, k, _mm512_cvtepi32_epi8(v));
    }
    return 1;
}

/* TFLite validates ADD's shifts <= 0: then |(x - z) 2^20| < 2^28 and the sum of the two rescaled inputs
 * stays below 2^30, so int32 lanes suffice (any other model takes the portable loop). lift_a, lift_b and
 * lift_y (0 or 128) say which of a, b and y hold u8 values x + 128 (a network program's layout) instead of
 * int8: the zero points and bounds move by the lift. */
INTRS_AVX512 static int add_avx512(const int8_t *a, const int8_t *b, int64_t count, const int64_t *p, int8_t *y,
                                   int lift_a, int lift_b, int lift_y) {
    if (add_avx512_fused(a, b, count, p, y, lift_a, lift_b, lift_y)) return 0;
    if (p[4] > 0 || p[6] > 0 || p[8] > 0) {
        if (lift_a || lift_b || lift_y) return ERR_OVERFLOW; /* the reference engine decides */
        return add_portable(a, b, count, p, y);
    }
    const lanes_t c1 = lanes_of(p[3], p[4], 0, 0, 0), c2 = lanes_of(p[5], p[6], 0, 0, 0);
    const lanes_t co = lanes_of(p[7], p[8], p[2] + lift_y, p[9] + lift_y, p[10] + lift_y);
    const __m512i z1 = _mm512_set1_epi32((int32_t)(p[0] + lift_a)), z2 = _mm512_set1_epi32((int32_t)(p[1] + lift_b));
    for (int64_t i = 0; i < count; i += 16) {
        __mmask16 m = count - i >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (count - i)) - 1);
        __m128i ra = _mm_maskz_loadu_epi8(m, a + i), rb = _mm_maskz_loadu_epi8(m, b + i);
        __m512i xa = lift_a ? _mm512_cvtepu8_epi32(ra) : _mm512_cvtepi8_epi32(ra);
        __m512i xb = lift_b ? _mm512_cvtepu8_epi32(rb) : _mm512_cvtepi8_epi32(rb);
        __m512i sum = _mm512_add_epi32(add_input16(_mm512_sub_epi32(xa, z1), &c1),
                                       add_input16(_mm512_sub_epi32(xb, z2), &c2));
        _mm_mask_storeu_epi8(y + i, m, finish16_32(requant16(sum, &co), &co));
    }
    return 0;
}

/* ------------------------------------------------------------------ AVX2 (no VNNI) */

/* MultiplyByQuantizedMultiplier on 8 int32 lanes, |acc| <= 2^30: AVX2 has no 64-bit arithmetic shift,
 * but bits 31..62 of a M0 + 2^30 (the int32 result) come out of logical shifts just the same. */
INTRS_AVX2 INLINE __m256i requant8_avx2(__m256i acc, __m256i mult, __m256i right, __m256i half, __m256i rounds) {
    const __m256i nudge = _mm256_set1_epi64x((int64_t)1 << 30);
    __m256i even = _mm256_srli_epi64(_mm256_add_epi64(_mm256_mul_epi32(acc, mult), nudge), 31);
    __m256i odd = _mm256_mul_epi32(_mm256_srli_epi64(acc, 32), _mm256_srli_epi64(mult, 32));
    odd = _mm256_slli_epi64(_mm256_add_epi64(odd, nudge), 1);
    __m256i p = _mm256_blend_epi32(even, odd, 0xAA);
    __m256i negative = _mm256_and_si256(_mm256_cmpgt_epi32(_mm256_setzero_si256(), p), rounds); /* -1 or 0 */
    p = _mm256_add_epi32(_mm256_add_epi32(p, half), negative);
    return _mm256_srav_epi32(p, right);
}

INTRS_AVX2 INLINE __m256i clamp8_avx2(__m256i v, const requant_t *q) {
    v = _mm256_add_epi32(v, _mm256_set1_epi32((int32_t)q->zero_point));
    v = _mm256_max_epi32(v, _mm256_set1_epi32((int32_t)q->act_min));
    return _mm256_min_epi32(v, _mm256_set1_epi32((int32_t)q->act_max));
}

/* 16 int32 lanes in [-128, 127] (two vectors, in order) -> 16 int8. */
INTRS_AVX2 INLINE __m128i pack16_avx2(__m256i a, __m256i b) {
    __m256i words = _mm256_permute4x64_epi64(_mm256_packs_epi32(a, b), 0xD8);
    return _mm_packs_epi16(_mm256_castsi256_si128(words), _mm256_extracti128_si256(words, 1));
}

INTRS_AVX2 INLINE void store16(int8_t *out, __m128i bytes, int count) {
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
INTRS_AVX2 INLINE void epilogue_avx2(__m256i a, __m256i b, const requant_t *q, int o, int8_t *out, int count,
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

/* T output pixels x 16 channels: vpmaddwd on int16 pairs (x - z_in, w), exact: each pair sum is below 2^31
 * and the caller bounds |x - z_in| sum|w| < 2^31. 16 ymm registers: 2T accumulators, T <= 6. */
#define AVX2_TILE 6
INTRS_AVX2 INLINE void tile_avx2(int T, const int16_t *u, int wp, int cin2, const conv_shape_t *s, int oy, int ox0,
                                 const int16_t *w, const requant_t *q, int o, int8_t *yrow, int *err) {
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
    for (int t = 0; t < T; t++)
        epilogue_avx2(acc[0][t], acc[1][t], q, o, yrow + (int64_t)(ox0 + t) * s->cout + o, count, err);
}

/* Any convolution through int16 pairs: x int8 (x_is_int8) or int32 (the first layer, |x - z_in| < 2^15).
 * w: [cout_pad/16][kh*kw][cin2/2][16][2] int16, the layout of the VNNI first layer. */
INTRS_AVX2 static int conv_pairs_avx2(const void *x, int x_is_int8, const conv_shape_t *s, const int16_t *w,
                                      const requant_t *q, int8_t *y) {
    const int cin2 = (s->cin + 1) & ~1, hp = s->h + 2 * s->ph, wp = s->w + 2 * s->pw;
    const int64_t block = (int64_t)s->kh * s->kw * cin2 * 16;
    int16_t *u = (int16_t *)aligned_alloc(64, ((size_t)hp * wp * cin2 * 2 + 63) & ~(size_t)63);
    if (!u) return ERR_MEMORY;
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
                for (int ox0 = 0; ox0 < s->ow; ox0 += AVX2_TILE) {
                    int T = s->ow - ox0 < AVX2_TILE ? s->ow - ox0 : AVX2_TILE;
                    switch (T) {
                        case 1: tile_avx2(1, u, wp, cin2, s, oy, ox0, wb, q, o, yrow, &err); break;
                        case 2: tile_avx2(2, u, wp, cin2, s, oy, ox0, wb, q, o, yrow, &err); break;
                        case 3: tile_avx2(3, u, wp, cin2, s, oy, ox0, wb, q, o, yrow, &err); break;
                        case 4: tile_avx2(4, u, wp, cin2, s, oy, ox0, wb, q, o, yrow, &err); break;
                        case 5: tile_avx2(5, u, wp, cin2, s, oy, ox0, wb, q, o, yrow, &err); break;
                        default: tile_avx2(6, u, wp, cin2, s, oy, ox0, wb, q, o, yrow, &err); break;
                    }
                }
            }
        }
    }
    free(u);
    return err;
}

/* ADD in 8 int32 lanes (shifts <= 0, as TFLite validates; see add_avx512). */
INTRS_AVX2 static int add_avx2(const int8_t *a, const int8_t *b, int64_t count, const int64_t *p, int8_t *y) {
    if (p[4] > 0 || p[6] > 0 || p[8] > 0) return add_portable(a, b, count, p, y);
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
    return add_portable(a + i, b + i, count - i, p, y + i);
}

#endif /* INTRS_X86 */

/* ------------------------------------------------------------------ entry points */

#if INTRS_X86
/* The int8 NHWC output of a layer called on its own. */
static out_t plain_out(int8_t *y, const conv_shape_t *s) {
    out_t out = {y, (int64_t)s->ow * s->cout, s->cout, 0};
    return out;
}
#endif

/* x: int8 NHWC. Each instruction set has its weights: vpdpbusd blocks (VNNI), int16 pairs (AVX2), rows
 * of output channels (portable); q_* the matching requantization constants. */
int intrs_conv_s8(const int8_t *x, const conv_shape_t *s, const int8_t *w_vnni, const requant_t *q_vnni,
                  const int16_t *w_pairs, const requant_t *q_pairs, const int32_t *w_wide, const requant_t *q_wide,
                  int8_t *y) {
#if INTRS_X86
    if (isa() == ISA_VNNI) return conv_s8_vnni(x, s, w_vnni, q_vnni, plain_out(y, s));
    if (isa() == ISA_AVX2) return conv_pairs_avx2(x, 1, s, w_pairs, q_pairs, y);
#endif
    (void)w_vnni, (void)q_vnni, (void)w_pairs, (void)q_pairs;
    return conv_wide_s8_portable(x, s, w_wide, q_wide, y);
}

/* x: int32 NHWC (the first layer); the int16-pair paths are offered (w_pairs non-null) only where
 * |x - z_in| < 2^15. */
int intrs_conv_s32(const int32_t *x, const conv_shape_t *s, const int16_t *w_pairs, const requant_t *q_pairs,
                   const int32_t *w_wide, const requant_t *q_wide, int8_t *y) {
#if INTRS_X86
    if (isa() == ISA_VNNI && w_pairs)
        return conv_s16_vnni(x, s, w_pairs, q_pairs, plain_out(y, s));
    if (isa() == ISA_AVX2 && w_pairs) return conv_pairs_avx2(x, 0, s, w_pairs, q_pairs, y);
#endif
    (void)w_pairs, (void)q_pairs;
    return conv_wide_s32_portable(x, s, w_wide, q_wide, y);
}

int intrs_add(const int8_t *a, const int8_t *b, int64_t count, const int64_t *params, int8_t *y) {
#if INTRS_X86
    if (isa() == ISA_VNNI) return add_avx512(a, b, count, params, y, 0, 0, 0);
    if (isa() == ISA_AVX2) return add_avx2(a, b, count, params, y);
#endif
    return add_portable(a, b, count, params, y);
}

#if INTRS_X86
/* The vector part of intrs_add_rescale: returns how many it did (a multiple of 16). */
INTRS_AVX512 static int64_t add_rescale_avx512(const int8_t *x, int64_t count, int64_t z, int64_t mult,
                                               int64_t right, int32_t *out) {
    const lanes_t c = lanes_of(mult, -right, 0, 0, 0);
    const add_input_t in = add_input_of(z, mult, -right);
    const __m512i za = _mm512_set1_epi32((int32_t)(z * (mult >> (11 + right))));
    int64_t i = 0;
    for (; i + 16 <= count; i += 16) {
        __m512i v = _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(x + i)));
        /* the form add_avx512 uses for this input shift (when the output's shift admits the fused form) */
        v = right <= 10 ? _mm512_sub_epi32(add_input_fused(v, &in), za)
                        : add_input16(_mm512_sub_epi32(v, _mm512_set1_epi32((int32_t)z)), &c);
        _mm512_storeu_si512(out + i, v);
    }
    return i;
}
#endif

/* One ADD input's rescaling alone, MultiplyByQuantizedMultiplier((x - z) 2^20, M0, shift <= 0), as the
 * instruction set in use computes it: the intermediate that the ADD's output rescaling mostly hides,
 * exposed for the tests. */
int intrs_add_rescale(const int8_t *x, int64_t count, int64_t z, int64_t mult, int64_t shift, int32_t *out) {
    int err = 0;
    int64_t i = 0, right = shift < 0 ? -shift : 0;
#if INTRS_X86
    if (isa() == ISA_VNNI && shift <= 0) i = add_rescale_avx512(x, count, z, mult, right, out);
#endif
    for (; i < count; i++)
        out[i] = (int32_t)requant_scalar(((int64_t)x[i] - z) * (1 << ADD_LEFT_SHIFT), mult, shift > 0 ? shift : 0,
                                         right, right ? ((int64_t)1 << right) >> 1 : 0, &err);
    return err;
}

/* AVERAGE_POOL_2D (average != 0) or MAX_POOL_2D on NHWC int8, over the real points of each window. */
int intrs_pool(const int8_t *x, int n, int h, int w, int c, int kh, int kw, int sh, int sw, int ph, int pw, int oh,
               int ow, int average, int act_min, int act_max, int8_t *y) {
    int32_t *sum = (int32_t *)malloc(sizeof(int32_t) * c);
    if (!sum) return ERR_MEMORY;
    for (int b = 0; b < n; b++)
        for (int oy = 0; oy < oh; oy++)
            for (int ox = 0; ox < ow; ox++) {
                int count = 0;
                for (int k = 0; k < c; k++) sum[k] = average ? 0 : -129;
                for (int ky = 0; ky < kh; ky++) {
                    int iy = oy * sh - ph + ky;
                    if (iy < 0 || iy >= h) continue;
                    for (int kx = 0; kx < kw; kx++) {
                        int ix = ox * sw - pw + kx;
                        if (ix < 0 || ix >= w) continue;
                        const int8_t *p = x + (((int64_t)b * h + iy) * w + ix) * c;
                        count++;
                        if (average)
                            for (int k = 0; k < c; k++) sum[k] += p[k];
                        else
                            for (int k = 0; k < c; k++) sum[k] = p[k] > sum[k] ? p[k] : sum[k];
                    }
                }
                int8_t *out = y + (((int64_t)b * oh + oy) * ow + ox) * c;
                for (int k = 0; k < c; k++) {
                    int32_t v = sum[k];
                    if (average) /* C's truncating division after adding half the count: half away from zero */
                        v = count == 0 ? 0 : v > 0 ? (v + count / 2) / count : (v - count / 2) / count;
                    v = v < act_min ? act_min : (v > act_max ? act_max : v);
                    out[k] = (int8_t)v;
                }
            }
    free(sum);
    return 0;
}

/* Inverse-CDF draws from a table of 128-bit thresholds, by their high 64-bit words (intrs.noise.TableSampler).
 * out[i] = values[min(j, size - 1)] + offsets[i % period] (no offset when offsets is null), j the number of
 * high words <= words[i] (numpy's searchsorted, side "right"); guide[b] is the number of high words below
 * b * 2^(64 - guide_bits), where the scan starts, so a draw costs one or two comparisons. tie[i] marks a
 * word equal to a high word: the caller settles those with a second random word, as the sampler defines.
 * count is a multiple of period. Returns the number of ties. */
int64_t intrs_table_draw(const uint64_t *high, int64_t size, const int32_t *guide, int guide_bits,
                         const int32_t *values, const uint64_t *words, int64_t count, int32_t *out, uint8_t *tie,
                         const int32_t *offsets, int64_t period) {
    int64_t ties = 0;
    for (int64_t start = 0; start < count; start += period)
        for (int64_t k = 0; k < period && start + k < count; k++) {
            const int64_t i = start + k;
            uint64_t word = words[i];
            int64_t j = guide[word >> (64 - guide_bits)];
            uint8_t equal = 0;
            while (j < size && high[j] <= word) equal |= high[j++] == word;
            out[i] = values[j < size ? j : size - 1] + (offsets ? offsets[k] : 0);
            tie[i] = equal;
            ties += equal;
        }
    return ties;
}

/* ------------------------------------------------------------------ whole networks */

/* One layer of a network program: what it reads and writes are slots, buffers of one image each. */
#define OP_CONV_S8 0  /* int8 input */
#define OP_CONV_S32 1 /* the network's int32 input (the first layer) */
#define OP_ADD 2
#define OP_POOL 3
#define OP_FLATTEN 4 /* NHWC -> NCHW order of one image (the reference flattens NCHW) */

/* How a tensor lies in its slot: NHWC rows framed by `pad` pixels on every side, `pixel` bytes per pixel, as
 * int8 (lift 0) or as u8 x + 128 (lift 128). The lifted, framed layout is what vpdpbusd reads, so a VNNI
 * convolution takes its input as it lies, without the lifting copy; the frame holds the tensor's lifted zero
 * point, which TFLite's padding contributes. */
typedef struct {
    int h, w, c, pad, pixel, lift;
} layout_t;

typedef struct {
    int kind, in0, in1, out;
    layout_t from0, from1, to; /* the layouts of in0, in1 and out */
    conv_shape_t shape;        /* convolutions, with n = 1 */
    const int8_t *w_vnni;
    const requant_t *q_vnni;
    const int16_t *w_pairs; /* OP_CONV_S32: null where the input is too wide for int16 pairs */
    const requant_t *q_pairs;
    const int32_t *w_wide;
    const requant_t *q_wide;
    const int64_t *add_params;
    int pool[14]; /* h, w, c, kh, kw, sh, sw, ph, pw, oh, ow, average, act_min, act_max */
} op_t;

INLINE int64_t layout_row(const layout_t *l) { return (int64_t)(l->w + 2 * l->pad) * l->pixel; }

/* The first interior pixel of a tensor in its slot. */
INLINE char *interior(void *slot, const layout_t *l) { return (char *)slot + l->pad * layout_row(l) + l->pad * l->pixel; }

/* Fills the frame of a tensor just written with its (lifted) zero point. */
static void fill_frame(void *slot, const layout_t *l, int64_t zero_point) {
    if (!l->pad) return;
    const uint8_t value = (uint8_t)(zero_point + l->lift);
    const int64_t row = layout_row(l), side = (int64_t)l->pad * l->pixel;
    char *base = (char *)slot;
    memset(base, value, (size_t)(row * l->pad));
    memset(base + row * (l->pad + l->h), value, (size_t)(row * l->pad));
    for (int y = l->pad; y < l->pad + l->h; y++) {
        memset(base + y * row, value, (size_t)side);
        memset(base + y * row + row - side, value, (size_t)side);
    }
}

INLINE int plain(const layout_t *l) { return !l->pad && !l->lift && l->pixel == l->c; }

static int run_conv(const op_t *op, void *const *slot) {
    const layout_t *from = &op->from0, *to = &op->to;
    const conv_shape_t *s = &op->shape;
#if INTRS_X86
    if (from->lift || !plain(to)) { /* a VNNI program's layouts */
        if (isa() != ISA_VNNI || (op->kind == OP_CONV_S32 && !op->w_pairs)) return ERR_UNSUPPORTED;
        const requant_t *q = op->kind == OP_CONV_S8 ? op->q_vnni : op->q_pairs;
        out_t out = {(int8_t *)interior(slot[op->out], to), layout_row(to), to->pixel, to->lift};
        int err;
        if (from->lift) { /* the input lies ready for vpdpbusd (only int8 tensors are lifted) */
            const uint8_t *u = (const uint8_t *)interior(slot[op->in0], from) - s->ph * layout_row(from) -
                               s->pw * from->pixel;
            __mmask8 bad = 0;
            conv_image_s8_vnni(u, from->w + 2 * from->pad, from->pixel, s, op->w_vnni, q, &out, &bad);
            err = bad ? ERR_OVERFLOW : 0;
        } else if (op->kind == OP_CONV_S8) { /* a plain input, lifted by a copy */
            err = conv_s8_vnni((const int8_t *)slot[op->in0], s, op->w_vnni, q, out);
        } else { /* the first layer */
            err = conv_s16_vnni((const int32_t *)slot[op->in0], s, op->w_pairs, q, out);
        }
        fill_frame(slot[op->out], to, q->zero_point);
        return err;
    }
#endif
    if (!plain(from) || !plain(to)) return ERR_UNSUPPORTED; /* the program compiler never asks for this */
    if (op->kind == OP_CONV_S8)
        return intrs_conv_s8((const int8_t *)slot[op->in0], s, op->w_vnni, op->q_vnni, op->w_pairs, op->q_pairs,
                             op->w_wide, op->q_wide, (int8_t *)slot[op->out]);
    return intrs_conv_s32((const int32_t *)slot[op->in0], s, op->w_pairs, op->q_pairs, op->w_wide, op->q_wide,
                          (int8_t *)slot[op->out]);
}

static int run_add(const op_t *op, void *const *slot) {
    const layout_t *la = &op->from0, *lb = &op->from1, *ly = &op->to;
    if (plain(la) && plain(lb) && plain(ly))
        return intrs_add((const int8_t *)slot[op->in0], (const int8_t *)slot[op->in1],
                         (int64_t)ly->h * ly->w * ly->c, op->add_params, (int8_t *)slot[op->out]);
#if INTRS_X86
    if (isa() != ISA_VNNI) return ERR_UNSUPPORTED;
    /* row by row (the frames differ), every byte of a pixel (the three share their pixel size) */
    const char *a = interior(slot[op->in0], la), *b = interior(slot[op->in1], lb);
    char *y = interior(slot[op->out], ly);
    for (int r = 0; r < ly->h; r++) {
        int err = add_avx512((const int8_t *)a + r * layout_row(la), (const int8_t *)b + r * layout_row(lb),
                             (int64_t)ly->w * ly->pixel, op->add_params, (int8_t *)y + r * layout_row(ly), la->lift,
                             lb->lift, ly->lift);
        if (err) return err;
    }
    fill_frame(slot[op->out], ly, op->add_params[2]);
    return 0;
#else
    return ERR_UNSUPPORTED;
#endif
}

/* A pool or the flatten, on plain int8 tensors (the program compiler lifts only tensors that convolutions
 * and ADDs alone read). */
static int run_plain(const op_t *op, void *const *slot) {
    const layout_t *from = &op->from0;
    const int8_t *x = (const int8_t *)slot[op->in0];
    int8_t *y = (int8_t *)slot[op->out];
    const int *p = op->pool;
    if (!plain(from) || !plain(&op->to)) return ERR_UNSUPPORTED; /* the program compiler never asks for this */
    if (op->kind == OP_POOL)
        return intrs_pool(x, 1, p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7], p[8], p[9], p[10], p[11], p[12],
                          p[13], y);
    for (int c = 0; c < from->c; c++)
        for (int i = 0; i < from->h * from->w; i++) y[c * from->h * from->w + i] = x[i * from->c + c];
    return 0;
}

static int run_op(const op_t *op, void *const *slot) {
    switch (op->kind) {
        case OP_CONV_S8:
        case OP_CONV_S32: return run_conv(op, slot);
        case OP_ADD: return run_add(op, slot);
        case OP_POOL:
        case OP_FLATTEN: return run_plain(op, slot);
    }
    return ERR_UNSUPPORTED;
}

/* Runs a network program on n images, one image through every layer before the next, so that its
 * activations stay in the core's caches: x holds n int32 images of image_values each (slot 0), y gets
 * output_bytes of slot `output` (a plain int8 tensor) per image. slot_bytes[k] is the size of slot k
 * (k >= 1). */
int intrs_run(const op_t *ops, int count, const int64_t *slot_bytes, int slots, const int32_t *x, int n,
              int64_t image_values, int output, int64_t output_bytes, int8_t *y) {
    void *slot[64];
    if (slots > 64 || output < 1 || output >= slots) return ERR_UNSUPPORTED;
    int64_t total = 0;
    for (int k = 1; k < slots; k++) total += (slot_bytes[k] + 63) & ~(int64_t)63;
    char *arena = (char *)aligned_alloc(64, (size_t)(total > 0 ? total : 64));
    if (!arena) return ERR_MEMORY;
    for (int64_t k = 1, at = 0; k < slots; at += (slot_bytes[k] + 63) & ~(int64_t)63, k++) slot[k] = arena + at;
    int err = 0;
    for (int b = 0; b < n && !err; b++) {
        slot[0] = (void *)(x + (int64_t)b * image_values);
        for (int i = 0; i < count && !err; i++) err = run_op(ops + i, slot);
        if (!err) memcpy(y + (int64_t)b * output_bytes, slot[output], (size_t)output_bytes);
    }
    free(arena);
    return err;
}
