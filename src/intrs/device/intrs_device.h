/* intrs on the device: randomized-smoothing PREDICT and CERTIFY for one exported integer model, in integer
 * arithmetic only (no floating point, no libm, no allocation).
 *
 * Written by `intrs export MODEL --format c`; the model, its noise table and its decision tables are constant
 * arrays in model.c, generated for this model and these settings (intrs_settings below). Every answer equals
 * the Python API's for the same (seed, idx): the same noise words (numpy's PCG64 seeded by SeedSequence of
 * (seed, idx, stage), intrs.rng), the same table draws (intrs.noise.TableSampler), the same integer network
 * (intrs.engine, through the package's own kernels), the same votes and the same tables (intrs.confidence,
 * intrs.certificate). `intrs verify-export DIR MODEL` builds this tree and checks that, image by image.
 *
 * Radii are fixed point: the certified L2 radius (in [0, 1] pixel units) times 2^INTRS_RADIUS_FRACTION_BITS,
 * rounded down. Functions return 0, or an INTRS_E* error code.
 */
#ifndef INTRS_DEVICE_H
#define INTRS_DEVICE_H

#include <stdint.h>

#include "intrs_model_sizes.h" /* this model's INTRS_CHANNELS, INTRS_HEIGHT, INTRS_WIDTH, INTRS_CLASSES */

#define INTRS_ABSTAIN (-1)
#define INTRS_RADIUS_FRACTION_BITS 16

#define INTRS_EOVERFLOW 1 /* a layer left int32 where TFLite's arithmetic would overflow */
#define INTRS_EMEMORY 2   /* the arena reserved at export is too small for this build's kernels */
#define INTRS_EUNSUPPORTED 3

/* How a sequential run stopped, and how it decided each listed radius. */
#define INTRS_STOP_FIXED 0   /* fixed n: no stopping rule */
#define INTRS_STOP_DECIDED 1 /* every listed radius decided (CERTIFY) or the class decided (PREDICT) */
#define INTRS_STOP_BUDGET 2  /* the budget max_n spent */
#define INTRS_UNDECIDED 0
#define INTRS_CERTIFIED 1
#define INTRS_REFUTED 2
#define INTRS_OUT_OF_BUDGET 3
#define INTRS_MAX_RADII 16

typedef struct {
    int32_t prediction; /* the class, or INTRS_ABSTAIN */
    int32_t radius;     /* fixed point (see above); 0 when abstaining */
    int64_t counts_top; /* nA: estimation votes for the class the selection chose */
    int64_t n;          /* estimation samples drawn */
    int32_t stop;       /* INTRS_STOP_* */
    int32_t decisions[INTRS_MAX_RADII]; /* sequential: INTRS_CERTIFIED ... for each listed radius */
} intrs_certificate_t;

typedef struct {
    int32_t prediction; /* the class, or INTRS_ABSTAIN */
    int64_t counts_top, counts_second, n;
    int32_t stop;
} intrs_prediction_t;

/* What this tree was exported with (model.c). */
typedef struct {
    int32_t channels, height, width, classes;
    int64_t n0, n, max_n, predict_n, predict_max_n, batch; /* max_n: sequential CERTIFY's budget */
    const char *alpha, *sigma, *noise, *system; /* as the user gave them, for output only */
    int32_t radii_count;
    const int32_t *radii; /* the listed radii of sequential CERTIFY, fixed point */
} intrs_settings_t;

const intrs_settings_t *intrs_settings(void);

/* The instruction set the kernels run on here ("portable", "avx2", "avx-vnni", "avx512-vnni", "neon-dotprod",
 * "neon-i8mm"). */
const char *intrs_instruction_set(void);

/* image: channels x height x width uint8 pixels (CHW, as the Python API's tensors); seed: the run's 64-bit
 * seed; idx: the image's index (its noise streams are (seed, idx, stage), as in `intrs certify`). */

/* Cohen et al. 2019, Alg. CERTIFY with the exported n0, n and alpha. */
int intrs_certify(const uint8_t *image, uint64_t seed, uint64_t idx, intrs_certificate_t *out);

/* Sequential CERTIFY at the exported radii (intrs.smoothing.SmoothedClassifier.certify_sequential with radii):
 * radius = the largest certified listed radius; prediction = the selected class when one is certified. */
int intrs_certify_sequential(const uint8_t *image, uint64_t seed, uint64_t idx, intrs_certificate_t *out);

/* Cohen et al. 2019, Alg. PREDICT with the exported predict_n and alpha. */
int intrs_predict(const uint8_t *image, uint64_t seed, uint64_t idx, intrs_prediction_t *out);

/* Sequential PREDICT with budget predict_max_n (intrs.smoothing.SmoothedClassifier.predict_sequential). */
int intrs_predict_sequential(const uint8_t *image, uint64_t seed, uint64_t idx, intrs_prediction_t *out);

/* For the tests of the generator and the sampler: the noise stream (seed, idx, stage)'s first `count` raw 64-bit
 * words; `copies` noisy copies of image (CHW int32 each, into out) from that stream in batches of `batch`. */
void intrs_stream_words(uint64_t seed, uint64_t idx, uint64_t stage, uint64_t *words, int64_t count);
void intrs_noise_draws(const uint8_t *image, uint64_t seed, uint64_t idx, uint64_t stage, int64_t copies,
                       int64_t batch, int32_t *out);

#endif
