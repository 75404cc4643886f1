/* The network-program interpreter: a model's layers as ops over slots, one image through every layer at a
 * time, so that its activations stay in the core's caches. It knows slots, not instructions: every convolution
 * and ADD runs through the instruction-set table the program carries (pools and the flatten are plain C). */
#include "kernels.h"

/* Fills the frame of a tensor just written with its zero point, lifted as the tensor is. */
static void fill_frame(void *slot, const layout_t *l) {
    if (!l->pad) return;
    const uint8_t value = (uint8_t)(l->zero_point + l->lift);
    const int64_t row = layout_row(l), side = (int64_t)l->pad * l->pixel;
    char *base = (char *)slot;
    memset(base, value, (size_t)(row * l->pad));
    memset(base + row * (l->pad + l->h), value, (size_t)(row * l->pad));
    for (int y = l->pad; y < l->pad + l->h; y++) {
        memset(base + y * row, value, (size_t)side);
        memset(base + y * row + row - side, value, (size_t)side);
    }
}

static int lifted_or_framed(const op_t *op) {
    return !plain(&op->from0) || !plain(&op->from1) || !plain(&op->to);
}

static int run_op(const isa_t *isa, const op_t *op, void *const *slot, void *scratch) {
    int err = ERR_UNSUPPORTED;
    switch (op->kind) {
        case OP_CONV_S8:
        case OP_CONV_S32: err = isa->conv(op, slot[op->in0], slot[op->out], scratch); break;
        case OP_ADD: err = isa->add(op, slot[op->in0], slot[op->in1], slot[op->out]); break;
        case OP_POOL:
            /* the program compiler lifts only tensors that convolutions and ADDs alone read */
            if (lifted_or_framed(op)) return ERR_UNSUPPORTED;
            return intrs_pool((const int8_t *)slot[op->in0], &op->pool, (int8_t *)slot[op->out], (int32_t *)scratch);
        case OP_FLATTEN: {
            if (lifted_or_framed(op)) return ERR_UNSUPPORTED;
            const layout_t *from = &op->from0;
            const int8_t *x = (const int8_t *)slot[op->in0];
            int8_t *y = (int8_t *)slot[op->out];
            for (int c = 0; c < from->c; c++)
                for (int i = 0; i < from->h * from->w; i++) y[c * from->h * from->w + i] = x[i * from->c + c];
            return 0;
        }
    }
    if (!err) fill_frame(slot[op->out], &op->to);
    return err;
}

#define MAX_SLOTS 64

static int64_t rounded(int64_t bytes) { return (bytes + 63) & ~(int64_t)63; }

/* The arena: every slot from 1 up, then the scratch of the op that needs most (pools: c int32). */
int64_t intrs_arena_bytes(const program_t *p, int level) {
    int64_t total = 0, scratch = 64;
    for (int k = 1; k < p->slots; k++) total += rounded(p->slot_bytes[k]);
    for (int i = 0; i < p->count; i++) {
        const op_t *op = p->ops + i;
        int64_t need = 0;
        if (op->kind == OP_CONV_S8 || op->kind == OP_CONV_S32) need = conv_scratch_bytes(op, level);
        if (op->kind == OP_POOL) need = rounded(4 * (int64_t)op->pool.c);
        scratch = need > scratch ? need : scratch;
    }
    return total + scratch;
}

/* Runs a program on n images: x holds n int32 images of image_values each (slot 0), y gets output_bytes of
 * the output slot per image; arena (64-byte aligned, intrs_arena_bytes(p, p->isa->level) long) holds the other
 * slots and the kernels' scratch, so nothing is allocated. A program whose table this CPU was not granted is
 * refused (ERR_ISA). */
int intrs_run_in(const program_t *p, const int32_t *x, int n, int8_t *y, void *arena) {
    if (!intrs_isa_granted(p->isa)) return ERR_ISA;
    void *slot[MAX_SLOTS];
    if (p->slots > MAX_SLOTS || p->output < 1 || p->output >= p->slots) return ERR_UNSUPPORTED;
    char *at = (char *)arena;
    for (int k = 1; k < p->slots; at += rounded(p->slot_bytes[k]), k++) slot[k] = at;
    void *scratch = at;
    int err = 0;
    for (int b = 0; b < n && !err; b++) {
        slot[0] = (void *)(x + (int64_t)b * p->image_values);
        for (int i = 0; i < p->count && !err; i++) err = run_op(p->isa, p->ops + i, slot, scratch);
        if (!err) memcpy(y + (int64_t)b * p->output_bytes, slot[p->output], (size_t)p->output_bytes);
    }
    return err;
}

/* intrs_run_in with an arena of its own. */
int intrs_run(const program_t *p, const int32_t *x, int n, int8_t *y) {
    if (!intrs_isa_granted(p->isa)) return ERR_ISA;
    char *arena = (char *)aligned_alloc(64, (size_t)intrs_arena_bytes(p, p->isa->level));
    if (!arena) return ERR_MEMORY;
    const int err = intrs_run_in(p, x, n, y, arena);
    free(arena);
    return err;
}

/* One ADD on int8 runs through an instruction set's table (for the tests). */
int intrs_add(const isa_t *isa, const int8_t *a, const int8_t *b, int64_t count, const int64_t *params, int8_t *y) {
    if (!intrs_isa_granted(isa)) return ERR_ISA;
    if (count > INT32_MAX) return ERR_UNSUPPORTED;
    op_t op = {0};
    op.kind = OP_ADD, op.add_params = params;
    op.from0 = op.from1 = op.to = (layout_t){1, (int)count, 1, 0, 1, 0, 0};
    return isa->add(&op, a, b, y);
}

/* One ADD input's rescaling through an instruction set's table (for the tests). */
int intrs_add_rescale(const isa_t *isa, const int8_t *x, int64_t count, int64_t z, int64_t mult, int64_t shift,
                      int32_t *out) {
    if (!intrs_isa_granted(isa)) return ERR_ISA;
    return isa->add_rescale(x, count, z, mult, shift, out);
}
