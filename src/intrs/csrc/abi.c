/* What the ctypes side (intrs/kernels.py) checks at load: the ABI version, the size and every field's offset
 * and size of each struct it builds, and the constants both sides name. A build that disagrees with the
 * Python code it is loaded by fails loudly there instead of reading garbage. */
#include <stddef.h>

#include "kernels.h"

typedef struct {
    const char *type, *field; /* field "" is the struct itself */
    int64_t offset, size;
} intrs_field_t;

typedef struct {
    const char *name;
    int64_t value;
} intrs_constant_t;

#define STRUCT(T) {#T, "", 0, sizeof(T)}
#define FIELD(T, F) {#T, #F, offsetof(T, F), sizeof(((T *)0)->F)}

static const intrs_field_t fields[] = {
    STRUCT(requant_t), FIELD(requant_t, offset), FIELD(requant_t, mult), FIELD(requant_t, left),
    FIELD(requant_t, right), FIELD(requant_t, half), FIELD(requant_t, zero_point), FIELD(requant_t, act_min),
    FIELD(requant_t, act_max), FIELD(requant_t, any_left), FIELD(requant_t, fast32), FIELD(requant_t, offset32),
    FIELD(requant_t, mult32), FIELD(requant_t, right32), FIELD(requant_t, half32), FIELD(requant_t, fused),
    FIELD(requant_t, relu), FIELD(requant_t, fused_constants),

    STRUCT(conv_shape_t), FIELD(conv_shape_t, n), FIELD(conv_shape_t, h), FIELD(conv_shape_t, w),
    FIELD(conv_shape_t, cin), FIELD(conv_shape_t, cout), FIELD(conv_shape_t, cout_pad), FIELD(conv_shape_t, kh),
    FIELD(conv_shape_t, kw), FIELD(conv_shape_t, sh), FIELD(conv_shape_t, sw), FIELD(conv_shape_t, ph),
    FIELD(conv_shape_t, pw), FIELD(conv_shape_t, oh), FIELD(conv_shape_t, ow), FIELD(conv_shape_t, input_zero_point),

    STRUCT(pool_shape_t), FIELD(pool_shape_t, h), FIELD(pool_shape_t, w), FIELD(pool_shape_t, c),
    FIELD(pool_shape_t, kh), FIELD(pool_shape_t, kw), FIELD(pool_shape_t, sh), FIELD(pool_shape_t, sw),
    FIELD(pool_shape_t, ph), FIELD(pool_shape_t, pw), FIELD(pool_shape_t, oh), FIELD(pool_shape_t, ow),
    FIELD(pool_shape_t, average), FIELD(pool_shape_t, act_min), FIELD(pool_shape_t, act_max),

    STRUCT(layout_t), FIELD(layout_t, h), FIELD(layout_t, w), FIELD(layout_t, c), FIELD(layout_t, pad),
    FIELD(layout_t, pixel), FIELD(layout_t, lift), FIELD(layout_t, zero_point),

    STRUCT(op_t), FIELD(op_t, kind), FIELD(op_t, in0), FIELD(op_t, in1), FIELD(op_t, out), FIELD(op_t, from0),
    FIELD(op_t, from1), FIELD(op_t, to), FIELD(op_t, shape), FIELD(op_t, w_vnni), FIELD(op_t, q_vnni), FIELD(op_t, q_sdot), FIELD(op_t, w_mmla),
    FIELD(op_t, w_pairs), FIELD(op_t, q_pairs), FIELD(op_t, w_wino), FIELD(op_t, w_wide), FIELD(op_t, q_wide), FIELD(op_t, add_params),
    FIELD(op_t, pool),

    STRUCT(isa_t), FIELD(isa_t, level), FIELD(isa_t, lifted), FIELD(isa_t, conv), FIELD(isa_t, add),
    FIELD(isa_t, add_rescale),

    STRUCT(program_t), FIELD(program_t, isa), FIELD(program_t, ops), FIELD(program_t, count),
    FIELD(program_t, slot_bytes), FIELD(program_t, slots), FIELD(program_t, output), FIELD(program_t, output_bytes),
    FIELD(program_t, image_values),
};

#define CONSTANT(NAME) {#NAME, NAME}

static const intrs_constant_t constants[] = {
    CONSTANT(ERR_OVERFLOW), CONSTANT(ERR_MEMORY), CONSTANT(ERR_UNSUPPORTED), CONSTANT(ERR_ISA),
    CONSTANT(ADD_LEFT_SHIFT), CONSTANT(ISA_COUNT), CONSTANT(OP_CONV_S8), CONSTANT(OP_CONV_S32), CONSTANT(OP_ADD),
    CONSTANT(OP_POOL), CONSTANT(OP_FLATTEN),
};

int intrs_kernels_abi(void) { return INTRS_ABI; }

const intrs_field_t *intrs_fields(int *count) {
    *count = (int)(sizeof fields / sizeof fields[0]);
    return fields;
}

const intrs_constant_t *intrs_constants(int *count) {
    *count = (int)(sizeof constants / sizeof constants[0]);
    return constants;
}
