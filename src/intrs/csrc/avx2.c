/* AVX2 kernels (no AVX-512): vpmaddwd on int16 pairs, requantization in the fused two-step form or int32 lanes.
 * Compiled with -mavx2 (setup.py): its code runs only through intrs_isa_avx2, which dispatch.c hands out
 * only on a CPU with AVX2. */
#include "kernels.h"

#if defined(__x86_64__)
#include "avx2_shared.h"

/* Plain layouts only: int8 layers and the first layer through int16 pairs (where the program offers them). */
static int conv_avx2(const op_t *op, const void *in, void *out, void *scratch) {
    if (!plain(&op->from0) || !plain(&op->to)) return ERR_UNSUPPORTED;
    if (op->kind == OP_CONV_S8) return conv_pairs_avx2(in, 1, &op->shape, op->w_pairs, op->q_pairs, out, scratch);
    if (op->w_pairs) return conv_pairs_avx2(in, 0, &op->shape, op->w_pairs, op->q_pairs, out, scratch);
    return intrs_conv_portable(op, in, out, scratch);
}

const isa_t intrs_isa_avx2 = {ISA_AVX2, 0, conv_avx2, add_avx2, add_rescale_avx2};

#endif

