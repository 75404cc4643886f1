/* AVX-VNNI kernels (vpdpbusd on ymm, without AVX-512: Intel's Alder Lake and later client cores, Sierra Forest):
 * the int8 convolutions as u8 x s8 dot products of four, 32 products per instruction, the activations lifted to
 * u8 by + 128 as the AVX-512 VNNI kernels lift them; the first layer (int16 pairs, vpmaddwd), the epilogue and
 * ADD are the AVX2 kernels' (avx2_shared.h). Compiled with -mavx2 -mavxvnni (setup.py): its code runs only
 * through intrs_isa_avxvnni, which dispatch.c hands out only on a CPU with AVX2 and AVX-VNNI.
 *
 * Why exact: a lane accumulates the products u w of u = x + 128 in [0, 255] and w in [-127, 127] with no
 * saturation (vpdpbusd, unlike vpmaddubsw, sums its four products in 32 bits and adds them to the lane, wrapping
 * as int32 addition does). The lane starts at -(z_in + 128) sum(w), so after the last step it holds
 * sum (x - z_in) w, which the program guarantees is within int32 (kernels.Plan: kh kw cin 255 127 < 2^31); the
 * partial sums may pass 2^31 on the way, but int32 addition is exact modulo 2^32, so the final value is exact.
 * The padding frame holds z_in + 128, whose lifted products cancel against the start value as (x - z_in) = 0.
 */
#include "kernels.h"

#if defined(__x86_64__)
#include "avx2_shared.h"

/* Output pixels per register tile: 2 T accumulators + 2 weight vectors + the broadcast in 16 ymm registers. */
#define AVXVNNI_TILE 6

/* T output pixels x 16 channels o..o+15 of row oy: u is the lifted, framed image (rows of wp pixels of `pixel`
 * bytes, cin rounded up to 4), w the block's weights [kh*kw][pixel/4][16][4]; start: the lanes' start values. */
INLINE void tile_avxvnni(int T, const uint8_t *u, int wp, int pixel, const conv_shape_t *s, int oy, int ox0,
                         const int8_t *w, const __m256i start[2], const requant_t *q, const fused_avx2_t *f, int o,
                         int8_t *yrow, int *err) {
    __m256i acc[2][AVXVNNI_TILE];
    for (int t = 0; t < T; t++) acc[0][t] = start[0], acc[1][t] = start[1];
    const int step = s->sw * pixel;
    for (int ky = 0; ky < s->kh; ky++)
        for (int kx = 0; kx < s->kw; kx++) {
            const uint8_t *base = u + ((int64_t)(oy * s->sh + ky) * wp + ox0 * s->sw + kx) * pixel;
            for (int c = 0; c < pixel; c += 4, w += 64) {
                /* channels 0-7 and 8-15 of the block, four input channels each */
                __m256i w0 = _mm256_loadu_si256((const __m256i *)w), w1 = _mm256_loadu_si256((const __m256i *)(w + 32));
                for (int t = 0; t < T; t++) {
                    int32_t quad;
                    memcpy(&quad, base + t * step + c, 4);
                    __m256i a = _mm256_set1_epi32(quad);
                    acc[0][t] = _mm256_dpbusd_avx_epi32(acc[0][t], a, w0);
                    acc[1][t] = _mm256_dpbusd_avx_epi32(acc[1][t], a, w1);
                }
            }
        }
    int count = s->cout - o < 16 ? s->cout - o : 16;
    EPILOGUE_TILE_AVX2(T, acc, q, f, o, yrow + (int64_t)ox0 * s->cout + o, s->cout, count, err);
}

/* -(z_in + 128) sum(w) of the block's 16 channels, in two vectors (vpdpbusd against bytes of 1 sums the
 * weights four at a time; |sum w| <= kh kw cin 127). */
INLINE void lift_start(const int8_t *w, int64_t steps, int32_t z_in, __m256i start[2]) {
    const __m256i ones = _mm256_set1_epi8(1);
    __m256i sum0 = _mm256_setzero_si256(), sum1 = _mm256_setzero_si256();
    for (int64_t k = 0; k < steps; k++, w += 64) {
        sum0 = _mm256_dpbusd_avx_epi32(sum0, ones, _mm256_loadu_si256((const __m256i *)w));
        sum1 = _mm256_dpbusd_avx_epi32(sum1, ones, _mm256_loadu_si256((const __m256i *)(w + 32)));
    }
    const __m256i lift = _mm256_set1_epi32(-(z_in + 128));
    start[0] = _mm256_mullo_epi32(sum0, lift), start[1] = _mm256_mullo_epi32(sum1, lift);
}

/* An int8 NHWC convolution of s->n images, plain layouts: each image lifted into u (u8 x + 128, framed by
 * z_in + 128, pixel = cin rounded up to 4), then tiles of up to 6 pixels x 16 channels. q: the int16-pair
 * requantization (offset = the bias; the lanes hold sum (x - z_in) w). */
static int conv_s8_avxvnni(const int8_t *x, const conv_shape_t *s, const int8_t *w, const requant_t *q, int8_t *y,
                           uint8_t *u) {
    const int pixel = (s->cin + 3) & ~3, hp = s->h + 2 * s->ph, wp = s->w + 2 * s->pw;
    const int64_t steps = (int64_t)s->kh * s->kw * pixel / 4, block = steps * 64;
    const __m256i flip = _mm256_set1_epi8((char)0x80);
    int err = 0;
    for (int b = 0; b < s->n; b++) {
        memset(u, (uint8_t)(s->input_zero_point + 128), (size_t)hp * wp * pixel);
        const int8_t *xb = x + (int64_t)b * s->h * s->w * s->cin;
        for (int iy = 0; iy < s->h; iy++) {
            uint8_t *dst = u + ((int64_t)(iy + s->ph) * wp + s->pw) * pixel;
            const int8_t *src = xb + (int64_t)iy * s->w * s->cin;
            if (s->cin == pixel) { /* a row is one run on both sides */
                int64_t len = (int64_t)s->w * pixel, i = 0;
                for (; i + 32 <= len; i += 32)
                    _mm256_storeu_si256((__m256i *)(dst + i),
                                        _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)(src + i)), flip));
                for (; i < len; i++) dst[i] = (uint8_t)(src[i] ^ 0x80);
            } else {
                for (int ix = 0; ix < s->w; ix++)
                    for (int c = 0; c < s->cin; c++) dst[ix * pixel + c] = (uint8_t)(src[ix * s->cin + c] ^ 0x80);
            }
        }
        for (int o = 0; o < s->cout; o += 16) {
            const int8_t *wb = w + (o / 16) * block;
            __m256i start[2];
            lift_start(wb, steps, (int32_t)s->input_zero_point, start);
            fused_avx2_t f;
            fused_avx2(q, o, &f);
            for (int oy = 0; oy < s->oh; oy++) {
                int8_t *yrow = y + ((int64_t)b * s->oh + oy) * s->ow * s->cout;
                for (int ox0 = 0; ox0 < s->ow; ox0 += AVXVNNI_TILE) {
                    int T = s->ow - ox0 < AVXVNNI_TILE ? s->ow - ox0 : AVXVNNI_TILE;
                    switch (T) { /* constant tile widths: the accumulators stay in registers */
                        case 1: tile_avxvnni(1, u, wp, pixel, s, oy, ox0, wb, start, q, &f, o, yrow, &err); break;
                        case 2: tile_avxvnni(2, u, wp, pixel, s, oy, ox0, wb, start, q, &f, o, yrow, &err); break;
                        case 3: tile_avxvnni(3, u, wp, pixel, s, oy, ox0, wb, start, q, &f, o, yrow, &err); break;
                        case 4: tile_avxvnni(4, u, wp, pixel, s, oy, ox0, wb, start, q, &f, o, yrow, &err); break;
                        case 5: tile_avxvnni(5, u, wp, pixel, s, oy, ox0, wb, start, q, &f, o, yrow, &err); break;
                        default: tile_avxvnni(6, u, wp, pixel, s, oy, ox0, wb, start, q, &f, o, yrow, &err); break;
                    }
                }
            }
        }
    }
    return err;
}

/* Plain layouts only: int8 layers through vpdpbusd, the first layer through int16 pairs as on AVX2. */
static int conv_avxvnni(const op_t *op, const void *in, void *out, void *scratch) {
    if (!plain(&op->from0) || !plain(&op->to)) return ERR_UNSUPPORTED;
    if (op->kind == OP_CONV_S8) return conv_s8_avxvnni(in, &op->shape, op->w_vnni, op->q_pairs, out, scratch);
    if (op->w_pairs) return conv_pairs_avx2(in, 0, &op->shape, op->w_pairs, op->q_pairs, out, scratch);
    return intrs_conv_portable(op, in, out, scratch);
}

const isa_t intrs_isa_avxvnni = {ISA_AVX_VNNI, 0, conv_avxvnni, add_avx2, add_rescale_avx2};

#endif
