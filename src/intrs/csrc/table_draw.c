/* The discrete Gaussian's table lookups (intrs.noise.TableSampler), in plain C: the noise of IntRS drawn on
 * the kernels' threads. */
#include "kernels.h"

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
