/* Runs a network program written by intrs.kernels (_Program.image), or a file of ADD cases written by
 * tests/test_kernels.py (_add_image), through every instruction set this CPU has and compares each output with
 * the reference engine's, which the file carries: the test harness for kernels built for another machine
 * (tests/test_kernels.py cross-compiles it for aarch64 and runs it under qemu).
 * Usage: program_image FILE. Prints one line per instruction set; exits 1 on any difference or error. */
#include <stdio.h>

#include "kernels.h"

static int64_t word(const char **at) {
    int64_t v;
    memcpy(&v, *at, 8);
    *at += 8;
    return v;
}

static void *relocated(void *pointer, char *data) {
    return pointer ? data + ((uintptr_t)pointer - 1) : NULL;
}

/* Level's table, or null after a line saying this CPU refused it. */
static const isa_t *granted_or_said(int level) {
    const isa_t *isa = intrs_isa(level);
    if (!isa) printf("refused %s\n", intrs_isa_name(level));
    return isa;
}

/* ADD cases (magic INTRSAD1, then the case count; little-endian int64 words and blocks): kind 0, an ADD:
 * its 11 add_params, count, then int8 a, b and the expected int8 outputs; kind 1, one input's rescaling: z, M0,
 * shift, count, then int8 x and the expected int32 outputs. Every case runs through intrs_add or
 * intrs_add_rescale on each instruction set's table. */
static int add_cases(const char *blob, long size) {
    int bad = 0;
    for (int level = 0; level < ISA_COUNT; level++) {
        const isa_t *isa = granted_or_said(level);
        if (!isa) continue;
        const char *at = blob + 8;
        const int64_t cases = word(&at);
        int64_t differ = 0, total = 0;
        int rc = 0;
        for (int64_t c = 0; c < cases; c++) {
            const int64_t kind = word(&at);
            if (kind == 0) {
                int64_t params[11];
                for (int k = 0; k < 11; k++) params[k] = word(&at);
                const int64_t count = word(&at);
                const int8_t *a = (const int8_t *)at, *b = a + count, *want = b + count;
                int8_t *y = malloc((size_t)count);
                memset(y, 0x55, (size_t)count);
                rc |= intrs_add(isa, a, b, count, params, y);
                for (int64_t k = 0; k < count; k++) differ += y[k] != want[k];
                total += count, at += 3 * count;
                free(y);
            } else {
                const int64_t z = word(&at), mult = word(&at), shift = word(&at), count = word(&at);
                const int8_t *x = (const int8_t *)at;
                int32_t *y = malloc(sizeof(int32_t) * (size_t)count), want;
                rc |= intrs_add_rescale(isa, x, count, z, mult, shift, y);
                for (int64_t k = 0; k < count; k++) differ += (memcpy(&want, at + count + 4 * k, 4), y[k] != want);
                total += count, at += 5 * count;
                free(y);
            }
        }
        if (at != blob + size) return fprintf(stderr, "truncated or oversized ADD cases\n"), 2;
        printf("granted %s: rc %d, %lld of %lld outputs differ from the reference engine\n", intrs_isa_name(level), rc,
               (long long)differ, (long long)total);
        bad |= rc || differ;
    }
    printf("%s\n", bad ? "FAIL" : "ok");
    return bad;
}

/* Each convolution of the program alone, on every granted instruction set against the portable kernel: the
 * same int8 outputs for the same input, and no byte written past the output or the scratch (64 guard bytes
 * after each; a kernel writing a row or pixel beyond its output, which no later op may read, shows here and
 * nowhere else). Inputs: the image's first network input for the first layer, random int8 for the others. */
#define GUARD 64
static int conv_ops(const op_t *ops, int64_t count, const int32_t *x) {
    int bad = 0;
    uint32_t state = 12345;
    for (int level = 1; level < ISA_COUNT; level++) {
        const isa_t *isa = intrs_isa(level);
        if (!isa) continue;
        int64_t convs = 0, differ = 0, guards = 0;
        int rc = 0;
        for (int64_t i = 0; i < count; i++) {
            const op_t *op = ops + i;
            if (op->kind != OP_CONV_S8 && op->kind != OP_CONV_S32) continue;
            const conv_shape_t *s = &op->shape;
            const int64_t in_values = (int64_t)s->h * s->w * s->cin, out_bytes = (int64_t)s->oh * s->ow * s->cout;
            void *in;
            if (op->kind == OP_CONV_S32) {
                in = malloc(sizeof(int32_t) * (size_t)in_values);
                memcpy(in, x, sizeof(int32_t) * (size_t)in_values);
            } else {
                in = malloc((size_t)in_values);
                for (int64_t k = 0; k < in_values; k++) ((int8_t *)in)[k] = (int8_t)((state = state * 1103515245u + 12345u) >> 16);
            }
            int8_t *want = malloc((size_t)out_bytes), *got = malloc((size_t)(out_bytes + GUARD));
            const int64_t own = conv_scratch_bytes(op, level); /* the kernel's own scratch, guarded */
            uint8_t *scratch = aligned_alloc(64, (size_t)(own + GUARD));
            void *portable_scratch = aligned_alloc(64, (size_t)conv_scratch_bytes(op, ISA_PORTABLE));
            memset(got, 0x5a, (size_t)(out_bytes + GUARD));
            memset(scratch + own, 0x5a, GUARD);
            const int ref = intrs_isa_portable.conv(op, in, want, portable_scratch);
            const int r = isa->conv(op, in, got, scratch);
            rc |= r != ref ? (r ? r : ref) : 0;
            if (!ref)
                for (int64_t k = 0; k < out_bytes; k++) differ += got[k] != want[k];
            for (int k = 0; k < GUARD; k++) guards += (got[out_bytes + k] != 0x5a) + (scratch[own + k] != 0x5a);
            free(portable_scratch);
            convs++;
            free(in), free(want), free(got), free(scratch);
        }
        printf("ops on %s: %lld convolutions, rc %d, %lld outputs differ from portable, %lld guard bytes written\n",
               intrs_isa_name(level), (long long)convs, rc, (long long)differ, (long long)guards);
        bad |= rc || differ || guards;
    }
    return bad;
}

int main(int argc, char **argv) {
    if (argc != 2) return 2;
    FILE *file = fopen(argv[1], "rb");
    if (!file) return perror(argv[1]), 2;
    fseek(file, 0, SEEK_END);
    const long size = ftell(file);
    fseek(file, 0, SEEK_SET);
    char *blob = malloc((size_t)size);
    if (!blob || fread(blob, 1, (size_t)size, file) != (size_t)size) return 2;
    fclose(file);
    if (size >= 16 && !memcmp(blob, "INTRSAD1", 8)) return add_cases(blob, size);
    if (size < 88 || memcmp(blob, "INTRSPG1", 8)) return fprintf(stderr, "not a program image\n"), 2;
    const char *at = blob + 8;
    const int64_t op_size = word(&at), requant_size = word(&at), count = word(&at), slots = word(&at);
    const int64_t output = word(&at), output_bytes = word(&at), image_values = word(&at), images = word(&at);
    const int64_t data_bytes = word(&at), requants = word(&at);
    if (op_size != (int64_t)sizeof(op_t) || requant_size != (int64_t)sizeof(requant_t))
        return fprintf(stderr, "struct sizes differ: op_t %lld here %zu, requant_t %lld here %zu\n",
                       (long long)op_size, sizeof(op_t), (long long)requant_size, sizeof(requant_t)), 2;
    int64_t *slot_bytes = malloc(sizeof(int64_t) * (size_t)slots);
    for (int64_t k = 0; k < slots; k++) slot_bytes[k] = word(&at);
    int64_t *requant_at = malloc(sizeof(int64_t) * (size_t)(requants + 1));
    for (int64_t k = 0; k < requants; k++) requant_at[k] = word(&at);
    op_t *ops = malloc(sizeof(op_t) * (size_t)count);
    memcpy(ops, at, sizeof(op_t) * (size_t)count);
    at += sizeof(op_t) * (size_t)count;
    char *data = aligned_alloc(64, ((size_t)data_bytes + 63) & ~(size_t)63);
    memcpy(data, at, (size_t)data_bytes);
    at += data_bytes;
    const int32_t *x = (const int32_t *)at; /* the int32 block starts on a 4-byte boundary: every size is */
    const int8_t *expected = (const int8_t *)(at + 4 * images * image_values);
    if (at + 4 * images * image_values + images * output_bytes != blob + size)
        return fprintf(stderr, "truncated or oversized image\n"), 2;
    /* the pointers: 1 + offsets into the data block (0: null) */
    for (int64_t k = 0; k < requants; k++) {
        requant_t *q = (requant_t *)(data + requant_at[k]);
        q->offset = relocated((void *)q->offset, data), q->mult = relocated((void *)q->mult, data);
        q->left = relocated((void *)q->left, data), q->right = relocated((void *)q->right, data);
        q->half = relocated((void *)q->half, data), q->offset32 = relocated((void *)q->offset32, data);
        q->mult32 = relocated((void *)q->mult32, data), q->right32 = relocated((void *)q->right32, data);
        q->half32 = relocated((void *)q->half32, data);
        q->fused_constants = relocated((void *)q->fused_constants, data);
    }
    for (int64_t i = 0; i < count; i++) {
        op_t *op = ops + i;
        op->w_vnni = relocated((void *)op->w_vnni, data), op->q_vnni = relocated((void *)op->q_vnni, data);
        op->q_sdot = relocated((void *)op->q_sdot, data), op->w_mmla = relocated((void *)op->w_mmla, data);
        op->w_pairs = relocated((void *)op->w_pairs, data);
        op->q_pairs = relocated((void *)op->q_pairs, data), op->w_wino = relocated((void *)op->w_wino, data);
        op->w_wide = relocated((void *)op->w_wide, data);
        op->q_wide = relocated((void *)op->q_wide, data);
        op->add_params = relocated((void *)op->add_params, data);
    }
    int8_t *y = malloc((size_t)(images * output_bytes));
    int bad = 0;
    for (int level = 0; level < ISA_COUNT; level++) {
        const isa_t *isa = granted_or_said(level);
        if (!isa) continue;
        program_t program = {isa, ops, (int)count, slot_bytes, (int)slots, (int)output, output_bytes, image_values};
        memset(y, 0x55, (size_t)(images * output_bytes));
        const int rc = intrs_run(&program, x, (int)images, y);
        int64_t differ = 0;
        for (int64_t k = 0; k < images * output_bytes; k++) differ += y[k] != expected[k];
        printf("granted %s: rc %d, %lld of %lld outputs differ from the reference engine\n", intrs_isa_name(level),
               rc, (long long)differ, (long long)(images * output_bytes));
        bad |= rc || differ;
    }
    bad |= conv_ops(ops, count, x);
    printf("%s\n", bad ? "FAIL" : "ok");
    return bad;
}
