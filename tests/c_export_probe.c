/* The tests' window into an exported tree's runtime (tests/test_c_export.py builds it with the tree's Makefile,
 * EXAMPLE=this file): its generator's words and its sampler's draws, printed one per line.
 *   probe words SEED IDX STAGE COUNT
 *   probe draws IMAGE SEED IDX STAGE COPIES BATCH     (IMAGE: one raw uint8 CHW image) */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "intrs_device.h"

int main(int argc, char **argv) {
    if (argc == 6 && !strcmp(argv[1], "words")) {
        const int64_t count = strtoll(argv[5], NULL, 10);
        uint64_t *words = malloc(sizeof(uint64_t) * (size_t)count);
        intrs_stream_words(strtoull(argv[2], NULL, 10), strtoull(argv[3], NULL, 10), strtoull(argv[4], NULL, 10),
                           words, count);
        for (int64_t i = 0; i < count; i++) printf("%" PRIu64 "\n", words[i]);
        return 0;
    }
    if (argc == 8 && !strcmp(argv[1], "draws")) {
        static uint8_t image[INTRS_IMAGE_BYTES];
        FILE *f = fopen(argv[2], "rb");
        if (!f || fread(image, 1, sizeof image, f) != sizeof image) return 2;
        const int64_t copies = strtoll(argv[6], NULL, 10);
        int32_t *out = malloc(sizeof(int32_t) * (size_t)(copies * INTRS_IMAGE_BYTES));
        intrs_noise_draws(image, strtoull(argv[3], NULL, 10), strtoull(argv[4], NULL, 10),
                          strtoull(argv[5], NULL, 10), copies, strtoll(argv[7], NULL, 10), out);
        for (int64_t i = 0; i < copies * INTRS_IMAGE_BYTES; i++) printf("%" PRId32 "\n", out[i]);
        return 0;
    }
    return 2;
}
