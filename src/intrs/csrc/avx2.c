/* AVX2 kernels (no AVX-512): vpmaddwd on int16 pairs, requantization in the fused two-step form or int32 lanes.
 * Compiled with -mavx2 (setup.py): its code runs only through intrs_isa_avx2, which dispatch.c hands out
 * only on a CPU with AVX2. */
#include "kernels.h"

#if defined(__x86_64__)
#include "avx2_shared.h"

/* ------------------------------------------------------------------ 3x3 stride-1 convolutions: Winograd F(2x2, 3x3)
 *
 * Lavin & Gray 2016 ("Fast Algorithms for Convolutional Neural Networks"), in integers: each 2x2 block of outputs
 * is Y = A^T [U (.) V] A with V = B^T d B (d: the 4x4 input tile of x - z_in) and U = G g G^T (g: a 3x3 filter),
 * so 16 multiplications per input channel instead of 36: the int16-pair rate of the direct kernel, 2.25x fewer
 * pairs. G has halves; kernels.py builds U' = G' g G'^T with the integer G' = 2G, so U' = 4U and
 * A^T [U' (.) V] A = 4Y, an identity between integer polynomials (add, subtract, multiply only).
 * Why every integer is exact: |x - z_in| <= 255, so |V| <= 4 * 255 = 1020 (B's rows have two entries of +-1);
 * |U'| <= 9 * 127 = 1143 (G' rows sum to at most 3 in magnitude); each vpmaddwd pair sum is below
 * 2 * 1020 * 1143 < 2^22, exact. The channel sums and the output transform run in int32 lanes, which wrap:
 * they compute 4Y mod 2^32, and kernels.py offers the transformed weights (op->w_wino) only where
 * 4 * 255 * sum|w| < 2^31 for every output channel, so |4Y| < 2^31 and the lane holds 4Y itself; 4Y >> 2 is Y,
 * the direct kernel's sum (x - z_in) w, and the same epilogue finishes it. The tests hold it to the reference
 * engine (tests/test_kernels.py: random models, the worst-case operands, every padding). */

/* V = B^T d B of 16 channels of one tile; d: its top-left staged pixel (pixels of c16 int16, rows of `row`), v:
 * V[xi] at v + xi * vstride. */
INLINE void wino_input16(const int16_t *d, int c16, int64_t row, int16_t *v, int64_t vstride) {
    __m256i t[4][4];
    for (int j = 0; j < 4; j++) {
        const int16_t *dj = d + j * c16;
        const __m256i d0 = _mm256_loadu_si256((const __m256i *)dj),
                      d1 = _mm256_loadu_si256((const __m256i *)(dj + row)),
                      d2 = _mm256_loadu_si256((const __m256i *)(dj + 2 * row)),
                      d3 = _mm256_loadu_si256((const __m256i *)(dj + 3 * row));
        t[0][j] = _mm256_sub_epi16(d0, d2), t[1][j] = _mm256_add_epi16(d1, d2);
        t[2][j] = _mm256_sub_epi16(d2, d1), t[3][j] = _mm256_sub_epi16(d1, d3);
    }
    for (int i = 0; i < 4; i++) {
        int16_t *out = v + 4 * i * vstride;
        _mm256_storeu_si256((__m256i *)out, _mm256_sub_epi16(t[i][0], t[i][2]));
        _mm256_storeu_si256((__m256i *)(out + vstride), _mm256_add_epi16(t[i][1], t[i][2]));
        _mm256_storeu_si256((__m256i *)(out + 2 * vstride), _mm256_sub_epi16(t[i][2], t[i][1]));
        _mm256_storeu_si256((__m256i *)(out + 3 * vstride), _mm256_sub_epi16(t[i][1], t[i][3]));
    }
}

/* T tiles x 16 channels: m[t][xi][16] = sum over channel pairs of U'[xi] V[xi] (vpmaddwd, wrapping int32 adds). */
INLINE void wino_sums(int T, const int16_t *v, int64_t vstride, int c16, int cin2, const int16_t *u, int32_t *m) {
    for (int xi = 0; xi < 16; xi++) {
        __m256i acc[2][WINO_TILE];
        for (int t = 0; t < T; t++) acc[0][t] = acc[1][t] = _mm256_setzero_si256();
        const int16_t *vx = v + xi * vstride, *w = u + (int64_t)xi * cin2 * 16;
        for (int c = 0; c < cin2; c += 2, w += 32) {
            const __m256i w0 = _mm256_loadu_si256((const __m256i *)w), w1 = _mm256_loadu_si256((const __m256i *)(w + 16));
            for (int t = 0; t < T; t++) {
                int32_t pair;
                memcpy(&pair, vx + t * c16 + c, 4);
                const __m256i x = _mm256_set1_epi32(pair);
                acc[0][t] = _mm256_add_epi32(acc[0][t], _mm256_madd_epi16(x, w0));
                acc[1][t] = _mm256_add_epi32(acc[1][t], _mm256_madd_epi16(x, w1));
            }
        }
        for (int t = 0; t < T; t++) {
            _mm256_storeu_si256((__m256i *)(m + (t * 16 + xi) * 16), acc[0][t]);
            _mm256_storeu_si256((__m256i *)(m + (t * 16 + xi) * 16 + 8), acc[1][t]);
        }
    }
}

/* Y = (A^T M A) >> 2 of 8 channels of one tile: y[p][q], A^T = [[1, 1, 1, 0], [0, 1, -1, -1]]. */
INLINE void wino_output8(const int32_t *m, __m256i y[2][2]) {
    __m256i s[2][4];
    for (int j = 0; j < 4; j++) {
        const __m256i m0 = _mm256_loadu_si256((const __m256i *)(m + j * 16)),
                      m1 = _mm256_loadu_si256((const __m256i *)(m + (4 + j) * 16)),
                      m2 = _mm256_loadu_si256((const __m256i *)(m + (8 + j) * 16)),
                      m3 = _mm256_loadu_si256((const __m256i *)(m + (12 + j) * 16));
        s[0][j] = _mm256_add_epi32(_mm256_add_epi32(m0, m1), m2);
        s[1][j] = _mm256_sub_epi32(_mm256_sub_epi32(m1, m2), m3);
    }
    for (int p = 0; p < 2; p++) {
        y[p][0] = _mm256_srai_epi32(_mm256_add_epi32(_mm256_add_epi32(s[p][0], s[p][1]), s[p][2]), 2);
        y[p][1] = _mm256_srai_epi32(_mm256_sub_epi32(_mm256_sub_epi32(s[p][1], s[p][2]), s[p][3]), 2);
    }
}

/* u: [cout_pad/16][16 xi][cin2/2][16][2] int16 (U', kernels.py's _winograd_blocks). */
static int conv_wino_avx2(const int8_t *x, const conv_shape_t *s, const int16_t *u, const requant_t *q, int8_t *y,
                          int16_t *scratch) {
    const wino_layout_t l = wino_layout(s); /* the scratch's three parts (kernels.h) */
    const int c16 = l.c16, cin2 = (s->cin + 1) & ~1, tiles_y = l.tiles_y, tiles_x = l.tiles_x;
    const int64_t row = (int64_t)l.ws * c16, vstride = (int64_t)tiles_x * c16, block = 16 * (int64_t)cin2 * 16;
    int16_t *d = scratch, *v = d + l.staged;
    int32_t *m = (int32_t *)(v + l.v);
    const int16_t zp = (int16_t)s->input_zero_point;
    int err = 0;
    /* the staged input: x - z_in framed by zeros (TFLite pads with z_in) and by the last tiles' overhang */
    memset(d, 0, (size_t)l.staged * 2);
    for (int iy = 0; iy < s->h; iy++)
        for (int ix = 0; ix < s->w; ix++) {
            int16_t *dst = d + (iy + s->ph) * row + (int64_t)(ix + s->pw) * c16;
            const int8_t *src = x + ((int64_t)iy * s->w + ix) * s->cin;
            for (int c = 0; c < s->cin; c++) dst[c] = (int16_t)(src[c] - zp);
        }
    for (int ty = 0; ty < tiles_y; ty++) {
        for (int tx = 0; tx < tiles_x; tx++)
            for (int c = 0; c < c16; c += 16)
                wino_input16(d + 2 * ty * row + (int64_t)2 * tx * c16 + c, c16, row, v + (int64_t)tx * c16 + c, vstride);
        const int rows = s->oh - 2 * ty < 2 ? 1 : 2;
        for (int o = 0; o < s->cout; o += 16) {
            const int16_t *ub = u + (o / 16) * block;
            const int count = s->cout - o < 16 ? s->cout - o : 16;
            fused_avx2_t f;
            fused_avx2(q, o, &f);
            for (int t0 = 0; t0 < tiles_x; t0 += WINO_TILE) {
                const int T = tiles_x - t0 < WINO_TILE ? tiles_x - t0 : WINO_TILE;
                const int16_t *vt = v + (int64_t)t0 * c16;
                switch (T) {
                    case 1: wino_sums(1, vt, vstride, c16, cin2, ub, m); break;
                    case 2: wino_sums(2, vt, vstride, c16, cin2, ub, m); break;
                    case 3: wino_sums(3, vt, vstride, c16, cin2, ub, m); break;
                    case 4: wino_sums(4, vt, vstride, c16, cin2, ub, m); break;
                    case 5: wino_sums(5, vt, vstride, c16, cin2, ub, m); break;
                    default: wino_sums(WINO_TILE, vt, vstride, c16, cin2, ub, m); break;
                }
                for (int t = 0; t < T; t++) {
                    const int ox = 2 * (t0 + t), cols = s->ow - ox < 2 ? 1 : 2;
                    __m256i lo[2][2], hi[2][2], acc[2][2];
                    wino_output8(m + t * 256, lo);
                    wino_output8(m + t * 256 + 8, hi);
                    for (int p = 0; p < rows; p++) {
                        acc[0][0] = lo[p][0], acc[0][1] = lo[p][1], acc[1][0] = hi[p][0], acc[1][1] = hi[p][1];
                        int8_t *first = y + ((int64_t)(2 * ty + p) * s->ow + ox) * s->cout + o;
                        EPILOGUE_TILE_AVX2(cols, acc, q, &f, o, first, s->cout, count, &err);
                    }
                }
            }
        }
    }
    return err;
}

/* Plain layouts only: int8 layers and the first layer through int16 pairs (where the program offers them). */
static int conv_avx2(const op_t *op, const void *in, void *out, void *scratch) {
    if (!plain(&op->from0) || !plain(&op->to)) return ERR_UNSUPPORTED;
    const conv_shape_t *s = &op->shape;
    if (op->kind == OP_CONV_S8 && op->w_wino) {
        int err = 0;
        for (int b = 0; b < s->n && !err; b++)
            err = conv_wino_avx2((const int8_t *)in + (int64_t)b * s->h * s->w * s->cin, s, op->w_wino, op->q_pairs,
                                 (int8_t *)out + (int64_t)b * s->oh * s->ow * s->cout, scratch);
        return err;
    }
    if (op->kind == OP_CONV_S8) return conv_pairs_avx2(in, 1, s, op->w_pairs, op->q_pairs, out, scratch);
    if (op->w_pairs) return conv_pairs_avx2(in, 0, s, op->w_pairs, op->q_pairs, out, scratch);
    return intrs_conv_portable(op, in, out, scratch);
}

const isa_t intrs_isa_avx2 = {ISA_AVX2, 0, conv_avx2, add_avx2, add_rescale_avx2};

#endif
