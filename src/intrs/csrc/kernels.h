/* intrs compiled integer kernels: the internal interface between their files.
 *
 * The same integers as intrs/engine.py (the reference engine, which the tests hold every instruction set
 * equal to on random models and inputs), computed on NHWC int8 arrays:
 *
 *   CONV_2D     acc = sum (x - z_in) w + b;  y = clamp(z_out + MultiplyByQuantizedMultiplier(acc))
 *   ADD         TFLite's int8 AddFunc (inputs lifted by 2^20, three requantizations)
 *   POOL        average (rounding half away from zero over the real points) and max
 *
 * The files, one idea each:
 *   portable.c    the definition in plain C: every layer, on every CPU (and the scalar tails of the others)
 *   avx2.c        AVX2 (vpmaddwd on int16 pairs; 3x3 stride-1 layers as integer Winograd), compiled with -mavx2 alone
 *   vnni.c        AVX-512 VNNI (vpdpbusd on u8 x s8), compiled with the AVX-512 flags alone
 *   neon.c        aarch64 NEON with the dot-product instructions (sdot on s8 x s8), compiled with +dotprod alone
 *   neon_i8mm.c   aarch64 NEON with the int8 matrix multiply (smmla: 2x8 by 8x2 s8 blocks), with +dotprod+i8mm
 *   avx2_shared.h, neon_shared.h   the parts of one family's kernels that its files share (each compiles its own
 *                 static copy with its own flags)
 *   dispatch.c    the CPU's features, detected once; hands out an instruction set's table only where the CPU
 *                 has it
 *   program.c     the network-program interpreter: a program carries the table it was built for
 *   table_draw.c  the discrete Gaussian's inverse-CDF lookups (intrs.noise.TableSampler)
 *   abi.c         the ABI version, every struct's field offsets and every shared constant, for the ctypes side
 *                 to check at load
 *
 * Each instruction set's file exports one constant table (isa_t) and nothing else: its code runs only through
 * a table that dispatch.c granted, so no code compiled for instructions the CPU lacks can be reached. Helpers
 * shared by several files are `static inline` here, so each file compiles its own copy with its own flags
 * (an external inline definition could be linked to a copy built for another instruction set).
 *
 * Called through ctypes (no Python API): functions return 0, or an error code when a value leaves int32
 * where TFLite's int32 arithmetic would overflow (the caller then raises the reference engine's error).
 */
#ifndef INTRS_KERNELS_H
#define INTRS_KERNELS_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define INTRS_ABI 8

#define INLINE static inline __attribute__((always_inline))

#define ERR_OVERFLOW 1
#define ERR_MEMORY 2
#define ERR_UNSUPPORTED 3 /* a layer this instruction set can't run as asked: the reference engine decides */
#define ERR_ISA 4         /* a program whose table this CPU was not granted: refused, never run */

#define ADD_LEFT_SHIFT 20 /* TFLite's int8 ADD lifts its inputs by 2^20 */

/* Instruction sets, by level (a CPU has portable and those of its architecture; the best is its last). */
#define ISA_PORTABLE 0
#define ISA_AVX2 1
#define ISA_AVX_VNNI 2 /* AVX2 with AVX-VNNI (vpdpbusd on ymm): the best where a CPU has it but no AVX-512 VNNI */
#define ISA_VNNI 3
#define ISA_NEON 4 /* aarch64 with the dot-product instructions (Armv8.2 DotProd) */
#define ISA_NEON_I8MM 5 /* aarch64 with DotProd and the int8 matrix multiply (I8MM) */
#define ISA_COUNT 6

/* One layer's requantization, per output channel (arrays of cout_pad int64). */
typedef struct {
    const int64_t *offset;   /* the bias (direct kernel, which sums (x - z_in) w) or bias - (z_in + 128) sum(w) (VNNI) */
    const int64_t *mult;     /* M0 */
    const int64_t *left;     /* max(shift, 0) */
    const int64_t *right;    /* max(-shift, 0) */
    const int64_t *half;     /* 2^right / 2 (0 when right == 0) */
    int64_t zero_point, act_min, act_max;
    int any_left;
    /* fast32 (AVX2): every accumulator provably within +-2^30 and no left shift, so the whole requantization
     * runs in int32 lanes (the int32 copies below; mult32 serves the fused form too); otherwise the int64
     * lanes above with checks */
    int fast32;
    const int32_t *offset32, *mult32, *right32, *half32;
    /* fused (VNNI and AVX2): every accumulator provably within int32, no left shift, and requant_fused's bounds
     * hold (|acc M0 + add - fix| < 2^62: the AVX2 kernels round in two steps); per block of 16 channels, 80
     * int64 in even-then-odd lane order: add (lift 0), add (lift 128), below, fix, shift (see vnni.c's
     * requant_fused and avx2_shared.h's requant_fused_avx2). relu: act_min >= zero_point. */
    int fused, relu;
    const int64_t *fused_constants;
} requant_t;

typedef struct {
    int n, h, w, cin, cout, cout_pad, kh, kw, sh, sw, ph, pw, oh, ow;
    int64_t input_zero_point;
} conv_shape_t;

typedef struct {
    int h, w, c, kh, kw, sh, sw, ph, pw, oh, ow, average, act_min, act_max;
} pool_shape_t;

/* How a tensor lies in its slot: NHWC rows framed by `pad` pixels on every side, `pixel` bytes per pixel, as
 * int8 (lift 0) or as u8 x + 128 (lift 128). The lifted, framed layout is what vpdpbusd reads, so a VNNI
 * convolution takes its input as it lies, without a lifting copy; the frame holds the tensor's zero point
 * (lifted), which TFLite's padding contributes. Only an instruction set whose table says `lifted` runs
 * programs with such tensors. */
typedef struct {
    int h, w, c, pad, pixel, lift, zero_point;
} layout_t;

/* One layer of a network program: what it reads and writes are slots, buffers of one image each. */
#define OP_CONV_S8 0  /* int8 input */
#define OP_CONV_S32 1 /* the network's int32 input (the first layer) */
#define OP_ADD 2
#define OP_POOL 3
#define OP_FLATTEN 4 /* NHWC -> NCHW order of one image (the reference flattens NCHW) */

typedef struct {
    int kind, in0, in1, out;
    layout_t from0, from1, to; /* the layouts of in0, in1 and out */
    conv_shape_t shape;        /* convolutions, with n = 1 */
    const int8_t *w_vnni;      /* [cout_pad/16][kh*kw][cin4/4][16][4] int8 (VNNI and NEON) */
    const requant_t *q_vnni;   /* offset bias - (z_in + 128) sum w: vpdpbusd's lifted input */
    const requant_t *q_sdot;   /* offset bias - z_in sum w: sdot's and smmla's signed input */
    const int8_t *w_mmla;      /* [cout_pad/8][kh*kw][cin8/8][4 output pairs][2][8] int8 (neon_i8mm.c's smmla) */
    const int16_t *w_pairs; /* [cout_pad/16][kh*kw][cin2/2][16][2] int16; OP_CONV_S32: null where the input is too
                               wide for int16 pairs */
    const requant_t *q_pairs;
    const int16_t *w_wino; /* 3x3 stride-1 int8 layers: Winograd F(2x2, 3x3)'s U' = G' g G'^T (avx2.c), as
                              [cout_pad/16][16][cin2/2][16][2] int16; null where 4 * 255 sum|w| could reach 2^31 */
    const int32_t *w_wide; /* rows of output channels (kh, kw, cin, cout_pad) */
    const requant_t *q_wide;
    const int64_t *add_params; /* z1, z2, z_out, M1, s1, M2, s2, Mo, so, act_min, act_max (shifts as TFLite's) */
    pool_shape_t pool;
} op_t;

/* An instruction set's entry points. conv and add run one image of a layer op from its input slots (laid out
 * as op->from0 and op->from1) to the slot `out` (op->to; the interpreter fills its frame), returning
 * ERR_UNSUPPORTED for a layout this instruction set doesn't run; conv works in `scratch`, 64-byte aligned and
 * conv_scratch_bytes(op, level) long, so no kernel allocates memory; add_rescale is one ADD input's rescaling
 * alone, as this instruction set computes it (for the tests). */
typedef struct {
    int level;
    int lifted; /* runs the lifted, framed layout */
    int (*conv)(const op_t *op, const void *in, void *out, void *scratch);
    int (*add)(const op_t *op, const void *a, const void *b, void *out);
    int (*add_rescale)(const int8_t *x, int64_t count, int64_t z, int64_t mult, int64_t shift, int32_t *out);
} isa_t;

/* A network program: its ops over slots, and the instruction set it was built for. */
typedef struct {
    const isa_t *isa;
    const op_t *ops;
    int count;
    const int64_t *slot_bytes; /* slot_bytes[k]: the size of slot k (k >= 1; slot 0 is the input image) */
    int slots;
    int output;                /* the slot of the output, a plain int8 tensor */
    int64_t output_bytes, image_values;
} program_t;

extern const isa_t intrs_isa_portable;
#if defined(__x86_64__)
extern const isa_t intrs_isa_avx2;
extern const isa_t intrs_isa_avxvnni;
extern const isa_t intrs_isa_vnni;
#endif
#if defined(__aarch64__)
extern const isa_t intrs_isa_neon;
extern const isa_t intrs_isa_neon_i8mm;
#endif

/* dispatch.c: the table of `level` if this CPU has it, else null; whether `isa` is a table so granted; the
 * name of a level. */
const isa_t *intrs_isa(int level);
int intrs_isa_granted(const isa_t *isa);
const char *intrs_isa_name(int level);

/* program.c: the memory a program needs besides its input and output (its slots and the kernels' scratch, on the
 * program's instruction set or, for an exported model sizing its arena per target, on `level`); a program on n
 * images in an arena of that size (64-byte aligned), or allocating it (ERR_ISA for a table dispatch.c did not
 * grant); one ADD and one ADD input's rescaling through a table (for the tests). */
int64_t intrs_arena_bytes(const program_t *program, int level);
int intrs_run_in(const program_t *program, const int32_t *x, int n, int8_t *y, void *arena);
int intrs_run(const program_t *program, const int32_t *x, int n, int8_t *y);
int intrs_add(const isa_t *isa, const int8_t *a, const int8_t *b, int64_t count, const int64_t *params, int8_t *y);
int intrs_add_rescale(const isa_t *isa, const int8_t *x, int64_t count, int64_t z, int64_t mult, int64_t shift,
                      int32_t *out);

/* portable.c: the plain-C layers, which the other instruction sets call for what they don't vectorize. */
int intrs_conv_portable(const op_t *op, const void *in, void *out, void *scratch);
int intrs_add_portable(const op_t *op, const void *a, const void *b, void *out);
int intrs_add_rescale_portable(const int8_t *x, int64_t count, int64_t z, int64_t mult, int64_t shift,
                               int32_t *out);
int intrs_pool(const int8_t *x, const pool_shape_t *p, int8_t *y, int32_t *scratch);

/* ------------------------------------------------------------------ scalar definitions, shared */

INLINE int out_of_int32(int64_t v) { return v < INT32_MIN || v > INT32_MAX; }

/* gemmlowp's MultiplyByQuantizedMultiplier in the fused form engine.requantize documents:
 * floor((a M0 + 2^30) / 2^31), then division by 2^right rounding half away from zero. */
INLINE int64_t requant_scalar(int64_t acc, int64_t mult, int64_t left, int64_t right, int64_t half, int *err) {
    if (out_of_int32(acc)) {
        *err = ERR_OVERFLOW;
        return 0;
    }
    int64_t lifted = acc * ((int64_t)1 << left);
    if (left && out_of_int32(lifted)) *err = ERR_OVERFLOW;
    int64_t p = (lifted * mult + ((int64_t)1 << 30)) >> 31;
    p = p + half - (int64_t)(p < 0 && right > 0);
    return p >> right;
}

/* The fused ADD's constants (vnni.c derives the forms; every instruction set broadcasts these scalars). One
 * input's rescaling MultiplyByQuantizedMultiplier((x - z) 2^20, M0, -r) plus z a is x a + ((x b + k - fix [x < z])
 * >> q) with q = 11 + r, M0 = a 2^q + b: every term within int32 for r <= 10. */
typedef struct {
    int64_t a, b, k, z, fix, q;
} add_input_scalars_t;

INLINE add_input_scalars_t add_input_scalars(int64_t z, int64_t mult, int64_t shift) {
    const int64_t r = -shift, q = 11 + r, c = r ? (int64_t)1 << (r - 1) : 0, b = mult & (((int64_t)1 << q) - 1);
    add_input_scalars_t in = {mult >> q, b, ((int64_t)1 << 10) + c * 2048 - z * b, z, r ? 2048 : 0, q};
    return in;
}

/* A whole fused ADD: both inputs' constants, and the output's (requant_fused's add, below, fix and shift 31 + r
 * for one multiplier, the sum's zA = z1 a1 + z2 a2 folded in) and clamp bounds, each zero point and bound moved
 * by its tensor's lift (0, or 128 for u8 values x + 128). 0 where the forms' bounds fail (an input shift below
 * -10 or an output shift below -21): the caller takes its other exact form. p: op_t.add_params (shifts <= 0). */
typedef struct {
    add_input_scalars_t in1, in2;
    int64_t mult, add, below, fix, right, lo, hi;
    int relu;
} add_fused_scalars_t;

INLINE int add_fused_scalars(const int64_t *p, int lift_a, int lift_b, int lift_y, add_fused_scalars_t *f) {
    if (p[4] < -10 || p[6] < -10 || p[8] < -21) return 0;
    const int64_t r = -p[8], m = p[7];
    f->in1 = add_input_scalars(p[0] + lift_a, p[3], p[4]), f->in2 = add_input_scalars(p[1] + lift_b, p[5], p[6]);
    const int64_t za = f->in1.z * f->in1.a + f->in2.z * f->in2.a;
    f->mult = m, f->right = r;
    f->add = -za * m + ((int64_t)1 << 30) + (r ? ((int64_t)1 << (r - 1)) << 31 : 0) +
             (p[2] + lift_y) * ((int64_t)1 << (31 + r));
    f->below = za * m - ((int64_t)1 << 30), f->fix = r ? (int64_t)1 << 31 : 0;
    f->lo = p[9] + lift_y, f->hi = p[10] + lift_y, f->relu = p[9] >= p[2];
    return 1;
}

INLINE int8_t finish_scalar(int64_t v, const requant_t *q) {
    v += q->zero_point;
    v = v < q->act_min ? q->act_min : v;
    v = v > q->act_max ? q->act_max : v;
    return (int8_t)v;
}

INLINE int64_t layout_row(const layout_t *l) { return (int64_t)(l->w + 2 * l->pad) * l->pixel; }

/* The first interior pixel of a tensor in its slot. */
INLINE char *interior(const void *slot, const layout_t *l) {
    return (char *)slot + l->pad * layout_row(l) + l->pad * l->pixel;
}

/* avx2.c's Winograd F(2x2, 3x3) scratch for one image, in this order: the staged input x - z_in (hs x ws pixels of
 * c16 int16: the frame and the last tiles' overhang included), one tile row's transformed input V (16 positions x
 * tiles_x tiles x c16 int16), and the channel sums of WINO_TILE tiles (16 positions x 16 channels int32 each). */
#define WINO_TILE 6 /* tiles of one tile row per pass: 2T accumulators of 16 ymm */

typedef struct {
    int c16, tiles_y, tiles_x, hs, ws;
    int64_t staged, v, bytes; /* int16 values of the staged input and of V; the whole scratch in bytes */
} wino_layout_t;

INLINE wino_layout_t wino_layout(const conv_shape_t *s) {
    wino_layout_t l;
    l.c16 = (s->cin + 15) & ~15, l.tiles_y = (s->oh + 1) / 2, l.tiles_x = (s->ow + 1) / 2;
    l.hs = 2 * l.tiles_y + 2, l.ws = 2 * l.tiles_x + 2;
    l.staged = (int64_t)l.hs * l.ws * l.c16, l.v = 16 * (int64_t)l.tiles_x * l.c16;
    l.bytes = (l.staged + l.v) * 2 + WINO_TILE * 16 * 16 * 4;
    return l;
}

/* The scratch one image of a convolution op needs on instruction set `level`, rounded up to 64 bytes: the
 * staging copy of its input as that set's kernel lays it out (framed by the padding, channels padded to 2 as
 * int16, to 4 as int8 or u8, or to 8 for smmla), or the portable kernel's int32 accumulators,
 * which every set falls back on. One definition for the kernels, the interpreter's arena and the memory an
 * exported model reserves per target (intrs export --format c). */
INLINE int64_t conv_scratch_bytes(const op_t *op, int level) {
    const conv_shape_t *s = &op->shape;
    const int64_t framed = (int64_t)(s->h + 2 * s->ph) * (s->w + 2 * s->pw);
    const int64_t pairs = (s->cin + 1) & ~1, quads = (s->cin + 3) & ~3;
    int64_t staged = 0;
    if (level == ISA_AVX2) staged = framed * pairs * 2;
    if (level == ISA_AVX2 && op->w_wino) staged = wino_layout(s).bytes; /* avx2.c's conv_wino_avx2 */
    if (level == ISA_AVX_VNNI || level == ISA_VNNI)
        staged = op->kind == OP_CONV_S8 ? framed * quads : framed * pairs * 2;
    if (level == ISA_NEON && op->kind == OP_CONV_S8) staged = framed * quads;
    if (level == ISA_NEON_I8MM && op->kind == OP_CONV_S8) staged = framed * ((s->cin + 7) & ~7);
    const int64_t acc = 4 * (int64_t)s->cout_pad, bytes = staged > acc ? staged : acc;
    return (bytes + 63) & ~(int64_t)63;
}

/* Plain int8 NHWC: no frame, no lift, pixels of c bytes. */
INLINE int plain(const layout_t *l) { return !l->pad && !l->lift && l->pixel == l->c; }

#endif
