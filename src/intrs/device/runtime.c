/* The device runtime: draw integer noise, run the integer network, count votes, decide by table.
 *
 * Each piece is the Python API's, step for step, so that a device's answer is the one the host certified:
 *   the generator     numpy's PCG64 seeded by numpy's SeedSequence of stream_seed(seed, idx, stage) (intrs.rng,
 *                     intrs.noise.LatticeNoise.generator): two SeedSequence hashes, then PCG64's XSL-RR output
 *   the noise         intrs.noise.TableSampler.sample: one 64-bit word per coordinate looked up in the 128-bit
 *                     thresholds by table_draw.c (the package's file); a word equal to a threshold's high word
 *                     (probability < 2^-40 per image) takes its low word from after the batch's words, in index
 *                     order, as _settle_tie does
 *   the network       the package's kernels (program.c and the instruction sets' files) on the ops of model.c
 *   the counting      intrs.smoothing.SmoothedClassifier: batches of `batch` samples, steps of the schedule,
 *                     argmax with ties to the lowest class
 *   the decisions     the integer tables of model.c, made by intrs.confidence and intrs.certificate
 * Integer arithmetic only: 128-bit products are built from 64-bit halves (32-bit targets have no __int128).
 * Not reentrant: one image at a time, in the static buffers below (sized at export; nothing is allocated). */
#include "intrs_device.h"

#include "model.h"

/* ------------------------------------------------------------------ 128-bit integers, PCG64 */

typedef struct {
    uint64_t hi, lo;
} u128_t;

static u128_t mul_64(uint64_t a, uint64_t b) {
    const uint64_t a0 = (uint32_t)a, a1 = a >> 32, b0 = (uint32_t)b, b1 = b >> 32;
    const uint64_t p00 = a0 * b0, p01 = a0 * b1, p10 = a1 * b0, p11 = a1 * b1;
    const uint64_t mid = (p00 >> 32) + (uint32_t)p01 + (uint32_t)p10;
    const u128_t r = {p11 + (p01 >> 32) + (p10 >> 32) + (mid >> 32), (mid << 32) | (uint32_t)p00};
    return r;
}

static u128_t mul_128(u128_t a, u128_t b) {
    u128_t r = mul_64(a.lo, b.lo);
    r.hi += a.hi * b.lo + a.lo * b.hi;
    return r;
}

static u128_t add_128(u128_t a, u128_t b) {
    u128_t r = {a.hi + b.hi, a.lo + b.lo};
    r.hi += r.lo < a.lo;
    return r;
}

/* O'Neill's PCG64 (pcg_setseq_128_xsl_rr_64), as numpy.random.PCG64: step the 128-bit LCG, then output. */
typedef struct {
    u128_t state, inc;
} pcg64_t;

static const u128_t PCG_MULT = {0x2360ED051FC65DA4ull, 0x4385DF649FCCF645ull};

static void pcg_step(pcg64_t *g) { g->state = add_128(mul_128(g->state, PCG_MULT), g->inc); }

static uint64_t pcg_next(pcg64_t *g) {
    pcg_step(g);
    const uint64_t x = g->state.hi ^ g->state.lo;
    const unsigned r = (unsigned)(g->state.hi >> 58);
    return (x >> r) | (x << ((64 - r) & 63));
}

/* Jumps `delta` steps ahead in O(log delta) (Brown 1994, "Random number generation with arbitrary strides";
 * numpy's pcg_advance_lcg_128). */
static void pcg_advance(pcg64_t *g, uint64_t delta) {
    u128_t mult = PCG_MULT, plus = g->inc, acc_mult = {0, 1}, acc_plus = {0, 0};
    for (; delta; delta >>= 1) {
        if (delta & 1) {
            acc_mult = mul_128(acc_mult, mult);
            acc_plus = add_128(mul_128(acc_plus, mult), plus);
        }
        plus = mul_128(add_128(mult, (u128_t){0, 1}), plus);
        mult = mul_128(mult, mult);
    }
    g->state = add_128(mul_128(acc_mult, g->state), acc_plus);
}

/* ------------------------------------------------------------------ numpy's SeedSequence */

#define SS_POOL 4
#define SS_INIT_A 0x43b0d7e5u
#define SS_MULT_A 0x931e8875u
#define SS_INIT_B 0x8b51f9ddu
#define SS_MULT_B 0x58f38dedu
#define SS_MIX_L 0xca01f9ddu
#define SS_MIX_R 0x4973f715u

static uint32_t hashmix(uint32_t value, uint32_t *hash) {
    value ^= *hash;
    *hash *= SS_MULT_A;
    value *= *hash;
    return value ^ (value >> 16);
}

static uint32_t mix(uint32_t x, uint32_t y) {
    const uint32_t r = SS_MIX_L * x - SS_MIX_R * y;
    return r ^ (r >> 16);
}

/* A non-negative integer as numpy coerces it: its 32-bit words, least significant first (0 is one word). */
static int words_of(uint64_t v, uint32_t *out) {
    out[0] = (uint32_t)v;
    if (v >> 32) return out[1] = (uint32_t)(v >> 32), 2;
    return 1;
}

/* SeedSequence(entropy).generate_state(n, uint32), entropy already assembled (run entropy, padded to the
 * pool size when a spawn key follows, then the spawn key's words). */
static void seed_sequence(const uint32_t *entropy, int count, uint32_t *state, int n) {
    uint32_t pool[SS_POOL], hash = SS_INIT_A;
    for (int i = 0; i < SS_POOL; i++) pool[i] = hashmix(i < count ? entropy[i] : 0, &hash);
    for (int src = 0; src < SS_POOL; src++)
        for (int dst = 0; dst < SS_POOL; dst++)
            if (src != dst) pool[dst] = mix(pool[dst], hashmix(pool[src], &hash));
    for (int src = SS_POOL; src < count; src++)
        for (int dst = 0; dst < SS_POOL; dst++) pool[dst] = mix(pool[dst], hashmix(entropy[src], &hash));
    uint32_t hash_b = SS_INIT_B;
    for (int i = 0; i < n; i++) {
        uint32_t v = pool[i % SS_POOL] ^ hash_b;
        hash_b *= SS_MULT_B;
        v *= hash_b;
        state[i] = v ^ (v >> 16);
    }
}

/* The generator of the stream (seed, idx, stage): PCG64(stream_seed(seed, idx, stage)) (intrs.rng). */
static void stream(pcg64_t *g, uint64_t seed, uint64_t idx, uint64_t stage) {
    uint32_t entropy[SS_POOL + 4] = {0}, state[8];
    words_of(seed, entropy);
    int count = SS_POOL; /* a spawn key follows, so the run entropy is padded with zeros to the pool's size */
    count += words_of(idx, entropy + count);
    count += words_of(stage, entropy + count);
    seed_sequence(entropy, count, state, 2);
    const uint64_t mixed = (uint64_t)state[0] << 32 | state[1];
    count = words_of(mixed, entropy);
    seed_sequence(entropy, count, state, 8); /* generate_state(4, uint64): little-endian pairs */
    const u128_t initstate = {state[0] | (uint64_t)state[1] << 32, state[2] | (uint64_t)state[3] << 32};
    const u128_t initseq = {state[4] | (uint64_t)state[5] << 32, state[6] | (uint64_t)state[7] << 32};
    g->state = (u128_t){0, 0};
    g->inc = (u128_t){initseq.hi << 1 | initseq.lo >> 63, initseq.lo << 1 | 1};
    pcg_step(g);
    g->state = add_128(g->state, initstate);
    pcg_step(g);
}

void intrs_stream_words(uint64_t seed, uint64_t idx, uint64_t stage, uint64_t *words, int64_t count) {
    pcg64_t g;
    stream(&g, seed, idx, stage);
    for (int64_t i = 0; i < count; i++) words[i] = pcg_next(&g);
}

/* ------------------------------------------------------------------ one image's buffers */

#define STAGE_SELECT 0 /* intrs.rng's stages */
#define STAGE_ESTIMATE 1
#define STAGE_PREDICT 2

static uint64_t words[INTRS_IMAGE_VALUES];
static int32_t offsets[INTRS_IMAGE_VALUES], noisy[INTRS_IMAGE_VALUES], input[INTRS_IMAGE_VALUES];
static uint8_t tie[INTRS_IMAGE_VALUES];
static int8_t logits[INTRS_OUTPUT_BYTES];
static _Alignas(64) unsigned char arena[INTRS_ARENA_BYTES];

extern int64_t intrs_table_draw(const uint64_t *high, int64_t size, const int32_t *guide, int guide_bits,
                                const int32_t *values, const uint64_t *words, int64_t count, int32_t *out,
                                uint8_t *tie, const int32_t *offsets, int64_t period);

static program_t program;
static int ready;

/* The program on the best instruction set this CPU was granted and this build has data for. */
static int prepare(void) {
    if (ready) return 0;
    const isa_t *best = intrs_isa(ISA_PORTABLE);
    for (int level = 1; level < ISA_COUNT; level++)
        if (intrs_isa(level) && INTRS_MODEL_RUNS_ON(level)) best = intrs_isa(level);
    program = (program_t){best, intrs_ops, INTRS_OPS, intrs_slot_bytes, INTRS_SLOTS, INTRS_OUTPUT_SLOT,
                          INTRS_OUTPUT_BYTES, INTRS_IMAGE_VALUES};
    if (intrs_arena_bytes(&program, best->level) > INTRS_ARENA_BYTES) return INTRS_EMEMORY;
    ready = 1;
    return 0;
}

const char *intrs_instruction_set(void) { return prepare() ? "none" : intrs_isa_name(program.isa->level); }

const intrs_settings_t *intrs_settings(void) { return &intrs_exported_settings; }

/* TableSampler._settle_tie: U = high * 2^64 + low lies below threshold j when high < H_j, or high == H_j and
 * low < L_j; the draw is the first value whose threshold U lies below. */
static int32_t settle_tie(uint64_t high, uint64_t low) {
    int64_t left = 0, right = INTRS_NOISE_SIZE;
    while (left < right) { /* the first high word >= high */
        const int64_t mid = left + (right - left) / 2;
        if (intrs_noise_high[mid] < high) left = mid + 1;
        else right = mid;
    }
    int64_t index = left;
    for (int64_t j = left; j < INTRS_NOISE_SIZE && intrs_noise_high[j] == high; j++) index += intrs_noise_low[j] <= low;
    return intrs_noise_values[index < INTRS_NOISE_SIZE ? index : INTRS_NOISE_SIZE - 1];
}

/* One noisy copy into `noisy` (CHW), its words the generator's next; `start` is the generator at the start of
 * the batch, whose ties so far `ties` counts. */
static void draw_copy(pcg64_t *g, const pcg64_t *start, uint64_t batch_words, uint64_t *ties) {
    for (int64_t i = 0; i < INTRS_IMAGE_VALUES; i++) words[i] = pcg_next(g);
    if (intrs_table_draw(intrs_noise_high, INTRS_NOISE_SIZE, intrs_noise_guide, INTRS_NOISE_GUIDE_BITS,
                         intrs_noise_values, words, INTRS_IMAGE_VALUES, noisy, tie, offsets, INTRS_IMAGE_VALUES))
        for (int64_t i = 0; i < INTRS_IMAGE_VALUES; i++)
            if (tie[i]) { /* its low word: the batch's next unused word, in index order */
                pcg64_t later = *start;
                pcg_advance(&later, batch_words + (*ties)++);
                noisy[i] = settle_tie(words[i], pcg_next(&later)) + offsets[i];
            }
}

/* Votes of `size` noisy copies (one batch of the Python API's loop) added to counts. */
static int vote_batch(pcg64_t *g, int64_t size, int64_t *counts) {
    const pcg64_t start = *g;
    const uint64_t batch_words = (uint64_t)size * INTRS_IMAGE_VALUES;
    uint64_t ties = 0;
    for (int64_t s = 0; s < size; s++) {
        draw_copy(g, &start, batch_words, &ties);
        /* CHW (the noise's order) to HWC (the kernels'), saturated first where the model says so (engine.check_input) */
        for (int c = 0, i = 0; c < INTRS_CHANNELS; c++)
            for (int p = 0; p < INTRS_HEIGHT * INTRS_WIDTH; p++, i++) {
                int32_t v = noisy[i];
                if (INTRS_INPUT_SATURATES) v = v < INTRS_INPUT_MIN ? INTRS_INPUT_MIN : v > INTRS_INPUT_MAX ? INTRS_INPUT_MAX : v;
                input[p * INTRS_CHANNELS + c] = v;
            }
        const int err = intrs_run_in(&program, input, 1, logits, arena);
        if (err) return err;
        int best = 0; /* engine.argmax_lowest: ties to the lowest class */
        for (int k = 1; k < INTRS_CLASSES; k++) best = logits[k] > logits[best] ? k : best;
        counts[best]++;
    }
    pcg_advance(g, ties); /* past the words the ties took */
    return 0;
}

void intrs_noise_draws(const uint8_t *image, uint64_t seed, uint64_t idx, uint64_t stage, int64_t copies,
                       int64_t batch, int32_t *out) {
    pcg64_t g;
    stream(&g, seed, idx, stage);
    for (int64_t i = 0; i < INTRS_IMAGE_VALUES; i++) offsets[i] = image[i];
    for (int64_t done = 0; done < copies;) {
        const int64_t size = copies - done < batch ? copies - done : batch;
        const pcg64_t start = g;
        uint64_t ties = 0;
        for (int64_t s = 0; s < size; s++, done++) {
            draw_copy(&g, &start, (uint64_t)size * INTRS_IMAGE_VALUES, &ties);
            for (int64_t i = 0; i < INTRS_IMAGE_VALUES; i++) out[done * INTRS_IMAGE_VALUES + i] = noisy[i];
        }
        pcg_advance(&g, ties);
    }
}

/* Votes of the copies up to `until` in all (drawn so far: *drawn), in batches of at most `batch`. */
static int vote_until(pcg64_t *g, int64_t *drawn, int64_t until, int64_t *counts) {
    while (*drawn < until) {
        const int64_t size = until - *drawn < INTRS_BATCH ? until - *drawn : INTRS_BATCH;
        const int err = vote_batch(g, size, counts);
        if (err) return err;
        *drawn += size;
    }
    return 0;
}

static int start(const uint8_t *image, int64_t *counts) {
    const int err = prepare();
    if (err) return err;
    for (int64_t i = 0; i < INTRS_IMAGE_VALUES; i++) offsets[i] = image[i];
    for (int k = 0; k < INTRS_CLASSES; k++) counts[k] = 0;
    return 0;
}

static int argmax(const int64_t *counts, int skip) {
    int best = skip == 0 ? 1 : 0;
    for (int k = 0; k < INTRS_CLASSES; k++)
        if (k != skip && counts[k] > counts[best]) best = k;
    return best;
}

/* A stage of one image: its offsets, zero counts, and the generator of the stream (seed, idx, stage). */
static int begin(const uint8_t *image, uint64_t seed, uint64_t idx, uint64_t stage, pcg64_t *g, int64_t *counts) {
    const int err = start(image, counts);
    if (!err) stream(g, seed, idx, stage);
    return err;
}

/* The selection stage: n0 samples of (seed, idx, STAGE_SELECT), their most frequent class. */
static int select_class(const uint8_t *image, uint64_t seed, uint64_t idx, int *top) {
    int64_t counts[INTRS_CLASSES], drawn = 0;
    pcg64_t g;
    int err = begin(image, seed, idx, STAGE_SELECT, &g, counts);
    if (err || (err = vote_until(&g, &drawn, INTRS_N0, counts))) return err;
    *top = argmax(counts, -1);
    return 0;
}

int intrs_certify(const uint8_t *image, uint64_t seed, uint64_t idx, intrs_certificate_t *out) {
    int top, err = select_class(image, seed, idx, &top);
    if (err) return err;
    int64_t counts[INTRS_CLASSES], drawn = 0;
    pcg64_t g;
    if ((err = begin(image, seed, idx, STAGE_ESTIMATE, &g, counts)) || (err = vote_until(&g, &drawn, INTRS_N, counts)))
        return err;
    *out = (intrs_certificate_t){INTRS_ABSTAIN, 0, counts[top], INTRS_N, INTRS_STOP_FIXED, {0}};
    if (counts[top] >= INTRS_CERTIFY_FROM) /* the Clopper-Pearson bound exceeds 1/2 from here on */
        out->prediction = top, out->radius = intrs_radius_table[counts[top] - INTRS_CERTIFY_FROM];
    return 0;
}

int intrs_certify_sequential(const uint8_t *image, uint64_t seed, uint64_t idx, intrs_certificate_t *out) {
    int top, err = select_class(image, seed, idx, &top);
    if (err) return err;
    int64_t counts[INTRS_CLASSES], drawn = 0;
    pcg64_t g;
    if ((err = begin(image, seed, idx, STAGE_ESTIMATE, &g, counts))) return err;
    *out = (intrs_certificate_t){INTRS_ABSTAIN, 0, 0, 0, INTRS_STOP_DECIDED, {0}};
    for (int k = 0; k < INTRS_SEQ_STEPS; k++) {
        if ((err = vote_until(&g, &drawn, intrs_seq_steps[k], counts))) return err;
        const int64_t count = counts[top];
        int open = 0;
        for (int j = 0; j < INTRS_SEQ_RADII; j++) { /* a decided radius stays decided */
            int32_t *how = &out->decisions[j];
            if (*how == INTRS_UNDECIDED) {
                if (count >= intrs_seq_certify_at[k][j]) *how = INTRS_CERTIFIED;
                else if (count < intrs_seq_refuted_below[k][j]) *how = INTRS_REFUTED;
                else if (count < intrs_seq_budget_below[k][j]) *how = INTRS_OUT_OF_BUDGET;
            }
            open |= *how == INTRS_UNDECIDED;
        }
        out->counts_top = count, out->n = intrs_seq_steps[k];
        if (k == INTRS_SEQ_STEPS - 1) out->stop = INTRS_STOP_BUDGET;
        if (!open || k == INTRS_SEQ_STEPS - 1) break;
    }
    for (int j = 0; j < INTRS_SEQ_RADII; j++)
        if (out->decisions[j] == INTRS_CERTIFIED) out->prediction = top, out->radius = intrs_seq_radii[j];
    return 0;
}

/* The two largest counts, ties to the lower class (a stable sort, as the Python API's). */
static void top_two(const int64_t *counts, intrs_prediction_t *out) {
    const int top = argmax(counts, -1);
    out->prediction = top;
    out->counts_top = counts[top];
    out->counts_second = INTRS_CLASSES > 1 ? counts[argmax(counts, top)] : 0;
}

int intrs_predict(const uint8_t *image, uint64_t seed, uint64_t idx, intrs_prediction_t *out) {
    int64_t counts[INTRS_CLASSES], drawn = 0;
    pcg64_t g;
    int err = begin(image, seed, idx, STAGE_PREDICT, &g, counts);
    if (err) return err;
    if ((err = vote_until(&g, &drawn, INTRS_PREDICT_N, counts))) return err;
    top_two(counts, out);
    out->n = INTRS_PREDICT_N, out->stop = INTRS_STOP_FIXED;
    /* the two-sided binomial test of nA of nA + nB against 1/2 at alpha, as a threshold on nA */
    if (out->counts_top < intrs_predict_at[out->counts_top + out->counts_second]) out->prediction = INTRS_ABSTAIN;
    return 0;
}

int intrs_predict_sequential(const uint8_t *image, uint64_t seed, uint64_t idx, intrs_prediction_t *out) {
    int64_t counts[INTRS_CLASSES], drawn = 0;
    pcg64_t g;
    int err = begin(image, seed, idx, STAGE_PREDICT, &g, counts);
    if (err) return err;
    for (int k = 0; k < INTRS_PREDICT_STEPS; k++) {
        if ((err = vote_until(&g, &drawn, intrs_predict_steps[k], counts))) return err;
        top_two(counts, out);
        out->n = intrs_predict_steps[k];
        const int64_t m = out->counts_top + out->counts_second;
        const int last = k == INTRS_PREDICT_STEPS - 1;
        if (out->counts_top >= (last ? intrs_predict_decide_final_at[m] : intrs_predict_decide_at[m])) {
            out->stop = INTRS_STOP_DECIDED;
            return 0;
        }
    }
    out->prediction = INTRS_ABSTAIN, out->stop = INTRS_STOP_BUDGET;
    return 0;
}
