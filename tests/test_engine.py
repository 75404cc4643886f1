"""Each integer operation against a slow, obviously correct reference on Python integers."""

import ast
import inspect

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from intrs import engine
from intrs.intmodel import AddLayer, ConvLayer, PoolLayer, quantize_multiplier

INT32_MIN, INT32_MAX = -(2 ** 31), 2 ** 31 - 1
int32s = st.integers(INT32_MIN, INT32_MAX)


# ---------------------------------------------------------------- references on Python integers


def c_divide(a: int, b: int) -> int:
    """C's integer division: toward zero."""
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b > 0) else -q


def ref_srdhm(a: int, b: int) -> int:
    if a == b == INT32_MIN:
        return INT32_MAX
    ab = a * b
    return c_divide(ab + (1 << 30 if ab >= 0 else 1 - (1 << 30)), 1 << 31)


def ref_rdbp(x: int, e: int) -> int:
    mask = (1 << e) - 1
    remainder, threshold = x & mask, (mask >> 1) + (1 if x < 0 else 0)
    return (x >> e) + (1 if remainder > threshold else 0)


def ref_mbqm(x: int, m: int, shift: int) -> int:
    return ref_rdbp(ref_srdhm(x * (1 << max(shift, 0)), m), max(-shift, 0))


def ref_conv(x, layer):
    """Loops over every output: acc = sum (x - z_in) w + b, points outside the image skipped."""
    n, c, h, w = x.shape
    o, _, kh, kw = layer.weight.shape
    (sh, sw), (ph, pw) = layer.stride, layer.padding
    oh, ow = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    out = np.zeros((n, o, oh, ow), dtype=np.int64)
    for b in range(n):
        for co in range(o):
            for i in range(oh):
                for j in range(ow):
                    acc = int(layer.bias[co])
                    for ci in range(c):
                        for di in range(kh):
                            for dj in range(kw):
                                y, xx = i * sh - ph + di, j * sw - pw + dj
                                if 0 <= y < h and 0 <= xx < w:
                                    acc += (int(x[b, ci, y, xx]) - layer.input_zero_point) * int(layer.weight[co, ci, di, dj])
                    v = ref_mbqm(acc, int(layer.multiplier[co]), int(layer.shift[co])) + layer.output_zero_point
                    out[b, co, i, j] = min(max(v, layer.act_min), layer.act_max)
    return out


# ---------------------------------------------------------------- fixed point


@given(int32s, int32s)
def test_saturating_rounding_doubling_high_mul(a, b):
    assert int(engine.saturating_rounding_doubling_high_mul(a, b)) == ref_srdhm(a, b)


def test_srdhm_edges():
    assert int(engine.saturating_rounding_doubling_high_mul(INT32_MIN, INT32_MIN)) == INT32_MAX
    assert int(engine.saturating_rounding_doubling_high_mul(INT32_MIN, INT32_MAX)) == -INT32_MAX
    # ties go toward +infinity: -1.5 -> -1, 1.5 -> 2
    assert int(engine.saturating_rounding_doubling_high_mul(-3, 1 << 29)) == -1
    assert int(engine.saturating_rounding_doubling_high_mul(3, 1 << 29)) == 1  # 0.75 -> 1
    assert int(engine.saturating_rounding_doubling_high_mul(-3 << 1, 1 << 29)) == -1  # -1.5 -> -1


@given(int32s, st.integers(0, 31))
def test_rounding_divide_by_pot(x, e):
    assert int(engine.rounding_divide_by_pot(x, e)) == ref_rdbp(x, e)


def test_rounding_divide_by_pot_rounds_ties_away_from_zero():
    assert [int(engine.rounding_divide_by_pot(v, 1)) for v in (-3, -1, 1, 3)] == [-2, -1, 1, 2]
    assert int(engine.rounding_divide_by_pot(INT32_MIN, 31)) == -1
    assert int(engine.rounding_divide_by_pot(INT32_MAX, 31)) == 1


@given(int32s, st.integers(1 << 30, INT32_MAX), st.integers(-31, 0))
def test_multiply_by_quantized_multiplier(x, m, shift):
    assert int(engine.multiply_by_quantized_multiplier(x, m, shift)) == ref_mbqm(x, m, shift)


@given(st.integers(-(2 ** 20), 2 ** 20), st.integers(1 << 30, INT32_MAX), st.integers(0, 10))
def test_multiply_by_quantized_multiplier_with_left_shift(x, m, shift):
    assert int(engine.multiply_by_quantized_multiplier(x, m, shift)) == ref_mbqm(x, m, shift)


def test_left_shift_overflow_is_an_error_not_a_wraparound():
    from intrs.errors import ConfigError
    with pytest.raises(ConfigError, match="int32"):
        engine.multiply_by_quantized_multiplier(2 ** 30, 1 << 30, 4)


@given(st.floats(min_value=2 ** -40, max_value=2 ** 20, allow_nan=False, allow_infinity=False))
def test_quantize_multiplier(real):
    m0, shift = quantize_multiplier(real)
    if real < 2 ** -32:
        assert (m0, shift) in ((0, 0),) or 2 ** 30 <= m0 < 2 ** 31
        return
    assert 2 ** 30 <= m0 < 2 ** 31
    assert abs(m0 * 2.0 ** (shift - 31) - real) <= real * 2 ** -31


def test_quantize_multiplier_rounds_half_away_and_renormalises():
    assert quantize_multiplier(0.5 + 2 ** -32) == (2 ** 30 + 1, 0)  # a tie: std::round goes up, Python's round would not
    assert quantize_multiplier(1 - 2 ** -34) == (2 ** 30, 1)  # rounds to 2^31: renormalised
    assert quantize_multiplier(2 ** -33) == (0, 0)  # shift < -31 flushes to zero
    assert quantize_multiplier(0.0) == (0, 0)


# ---------------------------------------------------------------- operations


def random_conv(rng, c, o, k, stride, pad, in_zero, shift_range=(-12, 0), flat=False):
    shifts = rng.integers(*shift_range, size=o, endpoint=True).astype(np.int32)
    weight = rng.integers(-127, 128, size=(o, c, k, k)).astype(np.int8)
    out_zero = int(rng.integers(-128, 128))
    relu = bool(rng.integers(2))
    return ConvLayer("conv", "fully_connected" if flat else "conv2d", ["x"], "y", weight,
                     rng.integers(-5000, 5000, size=o).astype(np.int32),
                     rng.integers(1 << 30, 1 << 31, size=o, dtype=np.int64).astype(np.int32), shifts,
                     (stride, stride), (pad, pad), in_zero, out_zero, out_zero if relu else -128, 127, 1.0, 1.0,
                     np.ones(o, np.float32), relu)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2 ** 32 - 1), st.integers(1, 4), st.integers(1, 5), st.sampled_from([1, 3]),
       st.integers(1, 2), st.integers(0, 1), st.integers(3, 7))
def test_conv2d_matches_the_loop_reference(seed, c, o, k, stride, pad, size):
    rng = np.random.default_rng(seed)
    layer = random_conv(rng, c, o, k, stride, pad, int(rng.integers(-128, 128)))
    x = rng.integers(-128, 128, size=(2, c, size, size)).astype(np.int8)
    got = engine.conv2d(torch.from_numpy(x), layer)
    assert got.dtype == torch.int8
    assert np.array_equal(got.numpy().astype(np.int64), ref_conv(x, layer))


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2 ** 32 - 1), st.sampled_from([(-300, 600), (-16000, 16000), (-32768, 32767)]))
def test_first_layer_takes_wide_unclipped_inputs(seed, bounds):
    """Noisy inputs beyond int8 (split into int8 halves, or the int64 product) are exact too."""
    rng = np.random.default_rng(seed)
    layer = random_conv(rng, 2, 3, 3, 1, 1, 0, shift_range=(-20, -8))
    x = rng.integers(*bounds, size=(2, 2, 5, 5), endpoint=True).astype(np.int32)
    assert np.array_equal(engine.conv2d(torch.from_numpy(x), layer).numpy().astype(np.int64), ref_conv(x, layer))


def test_fully_connected_is_the_1x1_case():
    rng = np.random.default_rng(0)
    layer = random_conv(rng, 6, 4, 1, 1, 0, 3, flat=True)
    x = rng.integers(-128, 128, size=(5, 6)).astype(np.int8)
    got = engine.conv2d(torch.from_numpy(x), layer)
    assert got.shape == (5, 4)
    assert np.array_equal(got.numpy(), ref_conv(x[:, :, None, None], layer)[:, :, 0, 0])


def add_reference(a: int, b: int, layer: AddLayer) -> int:
    s1 = ref_rdbp(ref_srdhm((a - layer.input1_zero_point) << 20, layer.input1_multiplier), -layer.input1_shift)
    s2 = ref_rdbp(ref_srdhm((b - layer.input2_zero_point) << 20, layer.input2_multiplier), -layer.input2_shift)
    raw = ref_rdbp(ref_srdhm(s1 + s2, layer.output_multiplier), -layer.output_shift) + layer.output_zero_point
    return min(max(raw, layer.act_min), layer.act_max)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2 ** 32 - 1))
def test_add_matches_tflite_reference(seed):
    rng = np.random.default_rng(seed)
    m = lambda: int(rng.integers(1 << 30, 1 << 31))
    zero = lambda: int(rng.integers(-128, 128))
    out_zero, relu = zero(), bool(rng.integers(2))
    layer = AddLayer("add", "add", ["a", "b"], "y", zero(), zero(), out_zero, m(), int(rng.integers(-3, 1)), m(),
                     int(rng.integers(-3, 1)), m(), int(rng.integers(-22, -16)), out_zero if relu else -128, 127,
                     1.0, 1.0, 1.0, relu)
    a = rng.integers(-128, 128, size=(2, 3, 4, 4)).astype(np.int8)
    b = rng.integers(-128, 128, size=(2, 3, 4, 4)).astype(np.int8)
    got = engine.add(torch.from_numpy(a), torch.from_numpy(b), layer).numpy()
    want = np.vectorize(lambda p, q: add_reference(int(p), int(q), layer))(a, b)
    assert np.array_equal(got, want)


def pool_reference(x, layer, average: bool):
    n, c, h, w = x.shape
    (kh, kw), (sh, sw), (ph, pw) = (((h, w), (1, 1), (0, 0)) if layer.is_global
                                    else (layer.kernel, layer.stride, layer.padding))
    oh, ow = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    out = np.zeros((n, c, oh, ow), dtype=np.int64)
    for b in range(n):
        for ch in range(c):
            for i in range(oh):
                for j in range(ow):
                    pts = [int(x[b, ch, i * sh - ph + di, j * sw - pw + dj]) for di in range(kh) for dj in range(kw)
                           if 0 <= i * sh - ph + di < h and 0 <= j * sw - pw + dj < w]
                    if average:
                        total, count = sum(pts), len(pts)
                        out[b, ch, i, j] = c_divide(total + count // 2, count) if total > 0 else c_divide(total - count // 2, count)
                    else:
                        out[b, ch, i, j] = max(pts)
    return out


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2 ** 32 - 1), st.booleans(), st.sampled_from([(2, 2, 0), (3, 2, 1), (2, 1, 0)]),
       st.booleans())
def test_pooling_matches_the_reference(seed, average, geometry, is_global):
    rng = np.random.default_rng(seed)
    k, s, p = geometry
    layer = PoolLayer("pool", "average_pool" if average else "max_pool", ["x"], "y", (k, k), (s, s), (p, p),
                      is_global and average)
    x = rng.integers(-128, 128, size=(2, 2, 6, 5)).astype(np.int8)
    got = (engine.average_pool if average else engine.max_pool)(torch.from_numpy(x), layer)
    assert got.dtype == torch.int8
    assert np.array_equal(got.numpy(), pool_reference(x, layer, average))


def test_average_pool_rounds_half_away_from_zero():
    layer = PoolLayer("pool", "average_pool", ["x"], "y", is_global=True)
    x = torch.tensor([[[[1, 2]], [[-1, -2]], [[3, 4]], [[-3, -4]]]], dtype=torch.int8)  # means 1.5, -1.5, 3.5, -3.5
    assert engine.average_pool(x, layer).flatten().tolist() == [2, -2, 4, -4]


def test_argmax_ties_go_to_the_lowest_class():
    logits = torch.tensor([[5, 7, 7, -1], [-128, -128, -128, -128]], dtype=torch.int8)
    assert engine.argmax_lowest(logits).tolist() == [1, 0]


def test_engine_source_creates_no_floats():
    """The module's syntax: no float literal, no true division, no float dtype or conversion."""
    tree = ast.parse(inspect.getsource(engine))
    for node in ast.walk(tree):
        assert not (isinstance(node, ast.Constant) and isinstance(node.value, float)), ast.dump(node)
        assert not (isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div)), "true division"
        if isinstance(node, ast.Attribute):
            assert node.attr not in ("float", "float32", "float64", "double", "half", "bfloat16"), node.attr
        if isinstance(node, ast.Name):
            assert node.id != "float"


@given(st.lists(int32s, min_size=1, max_size=20), st.integers(1, INT32_MAX), st.integers(-31, 0))
def test_fused_requantize_equals_the_reference_composition(values, m, shift):
    m = max(m, 1 << 30)
    acc = torch.tensor(values, dtype=torch.int64)
    assert torch.equal(engine.requantize(acc, m, shift), engine.multiply_by_quantized_multiplier(acc, m, shift))


def test_fused_requantize_on_ties_and_extremes():
    edge = [INT32_MIN, INT32_MIN + 1, -(1 << 30), -3, -2, -1, 0, 1, 2, 3, 1 << 30, INT32_MAX]
    acc = torch.tensor(edge, dtype=torch.int64)[:, None]
    multipliers = torch.tensor([1 << 30, (1 << 30) + 1, 3 << 29, INT32_MAX])
    for shift in (0, -1, -2, -7, -30, -31):
        shifts = torch.full((4,), shift)
        assert torch.equal(engine.requantize(acc, multipliers, shifts),
                           engine.multiply_by_quantized_multiplier(acc, multipliers, shifts))
    small = torch.tensor([[-1000], [999], [-5]])
    for shift in (1, 4):
        assert torch.equal(engine.requantize(small, multipliers, torch.full((4,), shift)),
                           engine.multiply_by_quantized_multiplier(small, multipliers, torch.full((4,), shift)))
