/* The example program of an exported intrs tree: certify or predict raw uint8 images, one TSV row each.
 *
 * Usage: intrs_example MODE IMAGES LABELS SEED FIRST STEP [COUNT]
 *   MODE    certify | certify-sequential | predict | predict-sequential
 *   IMAGES  raw uint8 images, channels x height x width each (CHW), back to back
 *   LABELS  one uint8 label per image
 *   SEED    the run's 64-bit seed; image i has idx FIRST + i * STEP (its noise streams are (SEED, idx, stage),
 *           as `intrs certify --seed SEED --skip STEP` gives the image of that index)
 * Writes Cohen et al.'s columns (idx label predict radius correct time) and the integers behind them to stdout.
 * Integers only, down to the output: no printf (its float formatting would bring floating point into a
 * microcontroller's binary); a radius prints as its fixed-point value and as 7 decimals rounded down. */
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "intrs_device.h"

static char line[512];
static size_t used;

static void put(const char *s) {
    while (*s && used + 1 < sizeof line) line[used++] = *s++;
}

static void put_int(int64_t v) {
    char digits[24];
    int n = 0;
    uint64_t u = v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v;
    do digits[n++] = (char)('0' + u % 10); while (u /= 10);
    if (v < 0) put("-");
    while (n) {
        char one[2] = {digits[--n], 0};
        put(one);
    }
}

/* value / 2^bits with `decimals` digits, rounded down */
static void put_fixed(int64_t value, int bits, int decimals) {
    put_int(value >> bits);
    put(".");
    uint64_t frac = (uint64_t)value & (((uint64_t)1 << bits) - 1);
    for (int d = 0; d < decimals; d++) {
        frac *= 10;
        char one[2] = {(char)('0' + (frac >> bits)), 0};
        put(one);
        frac &= ((uint64_t)1 << bits) - 1;
    }
}

static void tab(void) { put("\t"); }

static void flush(void) {
    put("\n");
    fwrite(line, 1, used, stdout);
    used = 0;
}

static int usage(const char *why) {
    fputs("intrs_example: ", stderr);
    fputs(why, stderr);
    fputs("\nusage: intrs_example certify|certify-sequential|predict|predict-sequential IMAGES LABELS SEED FIRST "
          "STEP [COUNT]\n", stderr);
    return 2;
}

static int parse(const char *text, uint64_t *out) {
    uint64_t v = 0;
    if (!*text) return 0;
    for (; *text; text++) {
        if (*text < '0' || *text > '9' || v > (UINT64_MAX - 9) / 10) return 0;
        v = v * 10 + (uint64_t)(*text - '0');
    }
    return *out = v, 1;
}

static const char *decision_name(int32_t how) {
    return how == INTRS_CERTIFIED ? "certified" : how == INTRS_REFUTED ? "refuted" : how == INTRS_OUT_OF_BUDGET ? "budget" : "-";
}

int main(int argc, char **argv) {
    if (argc < 7 || argc > 8) return usage("wrong number of arguments");
    const char *mode = argv[1];
    const int certify = !strcmp(mode, "certify"), certify_seq = !strcmp(mode, "certify-sequential");
    const int predict = !strcmp(mode, "predict"), predict_seq = !strcmp(mode, "predict-sequential");
    if (!(certify || certify_seq || predict || predict_seq)) return usage("unknown MODE");
    uint64_t seed, first, step, count = UINT64_MAX;
    if (!parse(argv[4], &seed) || !parse(argv[5], &first) || !parse(argv[6], &step) ||
        (argc == 8 && !parse(argv[7], &count)))
        return usage("SEED, FIRST, STEP and COUNT are non-negative integers");
    FILE *images = fopen(argv[2], "rb"), *labels = fopen(argv[3], "rb");
    if (!images || !labels) return usage("cannot open IMAGES or LABELS");
    const intrs_settings_t *s = intrs_settings();
    static uint8_t image[INTRS_IMAGE_BYTES];
    const size_t bytes = (size_t)s->channels * s->height * s->width;
    if (bytes > sizeof image) return usage("the model's image is larger than this build's buffer");

    fputs("intrs_example: kernels ", stderr);
    fputs(intrs_instruction_set(), stderr);
    fputs("\n", stderr);
    put("idx\tlabel\tpredict\tradius\tcorrect\ttime\tradius_fixed\tcounts_top\tn");
    if (predict || predict_seq) put("\tcounts_second");
    if (certify_seq) put("\tstop\tdecisions");
    if (predict_seq) put("\tstop");
    flush();
    for (uint64_t i = 0; i < count; i++) {
        int label = fgetc(labels);
        if (label == EOF || fread(image, 1, bytes, images) != bytes) break;
        const uint64_t idx = first + i * step;
        const clock_t began = clock();
        intrs_certificate_t c = {0};
        intrs_prediction_t p = {0};
        int err = certify ? intrs_certify(image, seed, idx, &c)
                  : certify_seq ? intrs_certify_sequential(image, seed, idx, &c)
                  : predict ? intrs_predict(image, seed, idx, &p)
                            : intrs_predict_sequential(image, seed, idx, &p);
        if (err) {
            fputs("intrs_example: the integer network failed (error code in the exit status)\n", stderr);
            return 10 + err;
        }
        const int64_t ms = (int64_t)(clock() - began) * 1000 / CLOCKS_PER_SEC;
        const int prediction = certify || certify_seq ? c.prediction : p.prediction;
        put_int((int64_t)idx), tab(), put_int(label), tab(), put_int(prediction), tab();
        put_fixed(certify || certify_seq ? c.radius : 0, INTRS_RADIUS_FRACTION_BITS, 7), tab();
        put_int(prediction == label), tab(), put_int(ms / 1000), put("."), put_int(ms / 100 % 10), put_int(ms / 10 % 10);
        put_int(ms % 10), tab();
        if (certify || certify_seq) {
            put_int(c.radius), tab(), put_int(c.counts_top), tab(), put_int(c.n);
        } else {
            put("0"), tab(), put_int(p.counts_top), tab(), put_int(p.n), tab(), put_int(p.counts_second);
        }
        if (certify_seq) {
            tab(), put(c.stop == INTRS_STOP_BUDGET ? "budget" : "decided"), tab();
            for (int j = 0; j < s->radii_count; j++) {
                if (j) put(",");
                put_fixed(s->radii[j], INTRS_RADIUS_FRACTION_BITS, 4), put(":"), put(decision_name(c.decisions[j]));
            }
        }
        if (predict_seq) tab(), put(p.stop == INTRS_STOP_DECIDED ? "decided" : "budget");
        flush();
    }
    fflush(stdout);
    return 0;
}
