/* AVX2 kernels (no AVX-512): int8 convolutions through the sign trick (vpsignb, vpmaddubsw, vpmaddwd: u8 x s8
 * rate, exact), the first layer through vpmaddwd on int16 pairs, requantization in int32 lanes where its bounds hold.
 * Compiled with -mavx2 (setup.py): its code runs only through intrs_isa_avx2, which dispatch.c hands out
 * only on a CPU with AVX2. */
#include "kernels.h"

#if defined(__x86_64__)
#include "avx2_shared.h"

/* The int8 convolutions at u8 x s8 rate without VNNI: vpmaddubsw multiplies unsigned by signed bytes and sums
 * pairs into int16 with saturation, which general int8 operands overflow (2 255 127 > 32,767). The sign trick
 * (as in llama.cpp) multiplies |x| (u8, at most 128: |-128| = 128 read as unsigned) by sign(x) w (vpsignb;
 * TFLite's int8 weights lie in [-127, 127], so the negation cannot wrap): each pair sum is at most
 * 2 128 127 = 32,512 < 32,767, exact, and vpmaddwd against 1s sums the pairs into int32 lanes. So each lane
 * accumulates sum x w exactly; it starts at -z_in sum w (the column sums through the same instructions), so
 * after the last step it holds sum (x - z_in) w, within int32 (kernels.Plan), exact by int32 modular addition
 * whatever the partial sums pass through. The padding frame holds z_in, whose products cancel against the
 * start. The epilogue reads the lanes as it reads the int16-pair sums (q: the bias as offset). */
#define SIGN_TILE 6

/* sum of x w over 4 bytes per int32 lane: |x| times sign(x) w, pairs in int16 (exact), then pairs of pairs */
INLINE __m256i dot4_sign(__m256i magnitude, __m256i x, __m256i w, __m256i ones) {
    return _mm256_madd_epi16(_mm256_maddubs_epi16(magnitude, _mm256_sign_epi8(w, x)), ones);
}

/* T output pixels x 16 channels o..o+15 of row oy: u the framed int8 image (pixel = cin rounded up to 4 bytes),
 * w the block's weights [kh*kw][pixel/4][16][4] (the VNNI layout), start the lanes' start values. */
INLINE void tile_sign_avx2(int T, const int8_t *u, int wp, int pixel, const conv_shape_t *s, int oy, int ox0,
                           const int8_t *w, const __m256i start[2], const requant_t *q, int o, int8_t *yrow,
                           int *err) {
    const __m256i ones = _mm256_set1_epi16(1);
    __m256i acc[2][SIGN_TILE];
    for (int t = 0; t < T; t++) acc[0][t] = start[0], acc[1][t] = start[1];
    const int step = s->sw * pixel;
    for (int ky = 0; ky < s->kh; ky++)
        for (int kx = 0; kx < s->kw; kx++) {
            const int8_t *base = u + ((int64_t)(oy * s->sh + ky) * wp + ox0 * s->sw + kx) * pixel;
            for (int c = 0; c < pixel; c += 4, w += 64) {
                __m256i w0 = _mm256_loadu_si256((const __m256i *)w), w1 = _mm256_loadu_si256((const __m256i *)(w + 32));
                for (int t = 0; t < T; t++) {
                    int32_t quad;
                    memcpy(&quad, base + t * step + c, 4);
                    __m256i x = _mm256_set1_epi32(quad), magnitude = _mm256_abs_epi8(x);
                    acc[0][t] = _mm256_add_epi32(acc[0][t], dot4_sign(magnitude, x, w0, ones));
                    acc[1][t] = _mm256_add_epi32(acc[1][t], dot4_sign(magnitude, x, w1, ones));
                }
            }
        }
    int count = s->cout - o < 16 ? s->cout - o : 16;
    for (int t = 0; t < T; t++)
        epilogue_avx2(acc[0][t], acc[1][t], q, o, yrow + (int64_t)(ox0 + t) * s->cout + o, count, err);
}

/* -z_in sum(w) of the block's 16 channels in two vectors (|sum w| <= kh kw cin 127, and z_in in [-128, 127]). */
INLINE void sign_start(const int8_t *w, int64_t steps, int32_t z_in, __m256i start[2]) {
    const __m256i ones = _mm256_set1_epi16(1), unit = _mm256_set1_epi8(1);
    __m256i sum0 = _mm256_setzero_si256(), sum1 = _mm256_setzero_si256();
    for (int64_t k = 0; k < steps; k++, w += 64) {
        sum0 = _mm256_add_epi32(sum0, _mm256_madd_epi16(_mm256_maddubs_epi16(unit, _mm256_loadu_si256((const __m256i *)w)), ones));
        sum1 = _mm256_add_epi32(sum1, _mm256_madd_epi16(_mm256_maddubs_epi16(unit, _mm256_loadu_si256((const __m256i *)(w + 32))), ones));
    }
    const __m256i minus_z = _mm256_set1_epi32(-z_in);
    start[0] = _mm256_mullo_epi32(sum0, minus_z), start[1] = _mm256_mullo_epi32(sum1, minus_z);
}

/* An int8 NHWC convolution of s->n images, plain layouts, through the sign trick: each image framed into u
 * (int8, frame z_in, pixel = cin rounded up to 4 with zero channels), then tiles of up to 6 pixels x 16 channels. */
static int conv_s8_sign_avx2(const int8_t *x, const conv_shape_t *s, const int8_t *w, const requant_t *q, int8_t *y,
                             int8_t *u) {
    const int pixel = (s->cin + 3) & ~3, hp = s->h + 2 * s->ph, wp = s->w + 2 * s->pw;
    const int64_t steps = (int64_t)s->kh * s->kw * pixel / 4, block = steps * 64;
    int err = 0;
    for (int b = 0; b < s->n; b++) {
        const int8_t *xb = x + (int64_t)b * s->h * s->w * s->cin;
        if (s->cin == pixel) {
            memset(u, (int8_t)s->input_zero_point, (size_t)hp * wp * pixel);
            for (int iy = 0; iy < s->h; iy++)
                memcpy(u + ((int64_t)(iy + s->ph) * wp + s->pw) * pixel, xb + (int64_t)iy * s->w * s->cin,
                       (size_t)s->w * pixel);
        } else { /* the channels beyond cin meet zero weights: any value serves, the frame's keeps it simple */
            memset(u, (int8_t)s->input_zero_point, (size_t)hp * wp * pixel);
            for (int iy = 0; iy < s->h; iy++)
                for (int ix = 0; ix < s->w; ix++)
                    memcpy(u + ((int64_t)(iy + s->ph) * wp + s->pw + ix) * pixel,
                           xb + ((int64_t)iy * s->w + ix) * s->cin, (size_t)s->cin);
        }
        for (int o = 0; o < s->cout; o += 16) {
            const int8_t *wb = w + (o / 16) * block;
            __m256i start[2];
            sign_start(wb, steps, (int32_t)s->input_zero_point, start);
            for (int oy = 0; oy < s->oh; oy++) {
                int8_t *yrow = y + ((int64_t)b * s->oh + oy) * s->ow * s->cout;
                for (int ox0 = 0; ox0 < s->ow; ox0 += SIGN_TILE) {
                    int T = s->ow - ox0 < SIGN_TILE ? s->ow - ox0 : SIGN_TILE;
                    switch (T) { /* constant tile widths: the accumulators stay in registers */
                        case 1: tile_sign_avx2(1, u, wp, pixel, s, oy, ox0, wb, start, q, o, yrow, &err); break;
                        case 2: tile_sign_avx2(2, u, wp, pixel, s, oy, ox0, wb, start, q, o, yrow, &err); break;
                        case 3: tile_sign_avx2(3, u, wp, pixel, s, oy, ox0, wb, start, q, o, yrow, &err); break;
                        case 4: tile_sign_avx2(4, u, wp, pixel, s, oy, ox0, wb, start, q, o, yrow, &err); break;
                        case 5: tile_sign_avx2(5, u, wp, pixel, s, oy, ox0, wb, start, q, o, yrow, &err); break;
                        default: tile_sign_avx2(6, u, wp, pixel, s, oy, ox0, wb, start, q, o, yrow, &err); break;
                    }
                }
            }
        }
    }
    return err;
}

/* Plain layouts only: int8 layers through the sign trick, the first layer through int16 pairs (where the
 * program offers them). */
static int conv_avx2(const op_t *op, const void *in, void *out, void *scratch) {
    if (!plain(&op->from0) || !plain(&op->to)) return ERR_UNSUPPORTED;
    if (op->kind == OP_CONV_S8) return conv_s8_sign_avx2(in, &op->shape, op->w_vnni, op->q_pairs, out, scratch);
    if (op->w_pairs) return conv_pairs_avx2(in, 0, &op->shape, op->w_pairs, op->q_pairs, out, scratch);
    return intrs_conv_portable(op, in, out, scratch);
}

const isa_t intrs_isa_avx2 = {ISA_AVX2, 0, conv_avx2, add_avx2, intrs_add_rescale_portable};

#endif
