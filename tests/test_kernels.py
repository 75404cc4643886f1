"""The compiled kernels return exactly the reference engine's integers, on every instruction set."""

import ctypes
import re
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from intrs import engine, kernels
from intrs.errors import ConfigError
from intrs.intmodel import AddLayer, ConvLayer, IntegerModel, PoolLayer, validate

# every instruction set the kernels know: those this CPU lacks are reported as skipped, with the reason
@pytest.fixture(params=kernels.INSTRUCTION_SETS)
def isa(request):
    if kernels.library() is None:
        pytest.skip("no compiled kernels here (no C compiler when intrs was installed)")
    if request.param not in kernels.instruction_sets():
        pytest.skip(f"this CPU has no {request.param} (it has {', '.join(kernels.instruction_sets())})")
    return request.param


def test_the_build_made_the_kernels_where_a_compiler_exists():
    if shutil.which("cc") or shutil.which("gcc"):
        assert kernels.library() is not None, "setup.py's optional extension did not build: see .venv/pip.log"


def test_kernel_source_has_no_floating_point_type():
    sources = sorted((Path(kernels.__file__).parent / "csrc").glob("*.[ch]"))
    assert {path.name for path in sources} >= {"kernels.h", "portable.c", "avx2.c", "vnni.c", "dispatch.c",
                                               "program.c"}
    for path in sources:
        code = re.sub(r"/\*.*?\*/", "", path.read_text(), flags=re.S)
        assert not re.search(r"\b(float|double|_Float\d+|__m512[dh]?\b|__m256[dh]|_pd|_ps)\b", code), path.name


def _conv(rng, name, inputs, cin, cout, k, stride, in_zero, shifts=(-14, 1)):
    pad = k // 2
    out_zero = int(rng.integers(-128, 128))
    relu = bool(rng.integers(2))
    act_min = out_zero if relu else -128
    # a third of the layers clamp below 127 (as ReLU6 does): the kernels' packs saturate at 127 themselves
    act_max = int(rng.integers(act_min, 128)) if rng.integers(3) == 0 else 127
    return ConvLayer(name, "conv2d", inputs, name, rng.integers(-127, 128, size=(cout, cin, k, k)).astype(np.int8),
                     rng.integers(-20000, 20000, size=cout).astype(np.int32),
                     rng.integers(1 << 30, 1 << 31, size=cout, dtype=np.int64).astype(np.int32),
                     rng.integers(*shifts, size=cout, endpoint=True).astype(np.int32), (stride, stride), (pad, pad),
                     in_zero, out_zero, act_min, act_max, 1.0, 1.0, np.ones(cout, np.float32), relu)


def _add(rng, name, a: ConvLayer, b: ConvLayer):
    m = lambda: int(rng.integers(1 << 30, 1 << 31))
    out_zero = int(rng.integers(-128, 128))
    return AddLayer(name, "add", [a.output, b.output], name, a.output_zero_point, b.output_zero_point, out_zero,
                    m(), int(rng.integers(-2, 1)), m(), int(rng.integers(-2, 1)), m(), int(rng.integers(-21, -17)),
                    -128, 127, 1.0, 1.0, 1.0)


def random_model(seed: int, cin: int, width: int, size: int, pool: str, saturate: bool) -> IntegerModel:
    """A small residual network of every layer the kernels cover, with odd channel counts and shapes."""
    rng = np.random.default_rng(seed)
    first = _conv(rng, "first", ["input"], cin, width, 3, 1, int(rng.integers(-3, 4)), shifts=(-18, -8))
    body = _conv(rng, "body", ["first"], width, width, 3, 1, first.output_zero_point)
    skip = _conv(rng, "skip", ["first"], width, width, 1, 1, first.output_zero_point, shifts=(-10, 2))
    add = _add(rng, "add", body, skip)
    down = _conv(rng, "down", ["add"], width, width + 5, 3, 2, add.output_zero_point)
    layers = [first, body, skip, add, down]
    if pool == "max":
        layers.append(PoolLayer("pool", "max_pool", ["down"], "pool", (3, 3), (2, 2), (1, 1)))
        layers.append(PoolLayer("flat", "flatten", ["pool"], "flat"))  # a map wider than 1x1: NCHW order
    else:
        layers.append(PoolLayer("pool", "average_pool", ["down"], "pool", is_global=pool == "global",
                                kernel=(2, 2), stride=(2, 2)))
        layers.append(PoolLayer("flat", "flatten", ["pool"], "flat"))
    down_size = (size + 1) // 2
    spatial = 1 if pool == "global" else ((down_size + 1) // 2) ** 2 if pool == "max" else (down_size // 2) ** 2
    head = _conv(rng, "fc", ["flat"], (width + 5) * spatial, 7, 1, 1, down.output_zero_point)
    head.op, head.padding = "fully_connected", (0, 0)
    layers.append(head)
    model = IntegerModel("input", (cin, size, size), (-32768, 32767), 1.0, layers, "fc", {},
                         input_saturation=(0, 255) if saturate else None)
    validate(model)
    return model


# the fixture only fixes the instruction set, the same for every example
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.integers(0, 2 ** 32 - 1), st.sampled_from([1, 3, 5, 7]), st.sampled_from([4, 16, 19, 32]),
       st.sampled_from([5, 7, 8, 14, 15, 16]), st.sampled_from(["global", "window", "max"]), st.booleans(),
       st.sampled_from([1, 7, 40]))
def test_compiled_forward_equals_the_reference(isa, seed, cin, width, size, pool, saturate, batch):
    model = random_model(seed, cin, width, size, pool, saturate)
    rng = np.random.default_rng(seed + 1)
    z = torch.from_numpy(rng.integers(-400, 700, size=(batch, cin, size, size)).astype(np.int32))
    want = engine.reference_forward(model, z)
    got = kernels.forward(model, engine.check_input(model, z), isa)
    assert got is not None, "the kernels declined a model they cover"
    assert got.dtype == torch.int8 and torch.equal(got, want)


def _pin_activations(first: ConvLayer, activation: int) -> int:
    """Every output of ``first`` saturated at ``activation`` (-128 or 127), with its zero point at the other end of
    the int8 range, so each reader sees |x - z_in| = 255; returns that zero point (the readers' z_in)."""
    zero = 127 if activation == -128 else -128
    first.weight[:] = 0
    first.bias[:] = -(2 ** 30) if activation == -128 else 2 ** 30
    first.output_zero_point, first.act_min, first.act_max, first.relu = zero, -128, 127, False
    return zero


@pytest.mark.parametrize("activation", [-128, 127])
@pytest.mark.parametrize("pattern", ["all +127", "all -127", "random signs"])
def test_worst_case_operands_equal_the_reference(isa, activation, pattern):
    """The operands that break inexact int8 schemes: every activation at -128 (x - z_in = -255: the lifted u8
    value 0) or 127 (x - z_in = 255, u8 255) against weights all +-127, the accumulators as large as an int8
    layer's can be (255 * 127 * 9 * 32, within int32 as TFLite requires), scaled back into range by the shift."""
    model = random_model(21, 1, 32, 8, "global", False)
    first, body, skip = model.layers[0], model.layers[1], model.layers[2]
    body.input_zero_point = skip.input_zero_point = _pin_activations(first, activation)
    rng = np.random.default_rng(abs(activation))
    signs = {"all +127": 1, "all -127": -1, "random signs": rng.choice([-1, 1], size=body.weight.shape)}[pattern]
    body.weight[:] = (127 * np.ones(body.weight.shape, dtype=np.int64) * signs).astype(np.int8)
    body.bias[:] = 0
    body.shift[:] = -16  # 255 * 127 * 288 * M0 / 2^31 / 2^16: around 100, inside the int8 range
    validate(model)
    z = torch.randint(0, 256, (3, 1, 8, 8), dtype=torch.int32)
    trace = []
    want = engine.reference_forward(model, z, trace)
    assert bool((trace[0] == activation).all())  # the layer under test sees only the extreme activation
    assert not bool(((trace[1] == -128) | (trace[1] == 127)).all())  # its outputs are not all clamped away
    assert torch.equal(kernels.forward(model, engine.check_input(model, z), isa), want)


# z_out against the bias's sign keeps the numerator inside (the constants of both lifts must fit); with it past
@pytest.mark.parametrize("sign, zero, past_the_bound", [(1, -128, False), (-1, 127, False), (1, 127, True)])
def test_requantization_numerators_near_2_to_62_are_exact_and_past_it_leave_the_fused_form(isa, sign, zero,
                                                                                         past_the_bound):
    """The fused epilogue's numerator acc M0 + add (add holding the bias times M0 and z_out 2^(31 + r)) nears
    2^62 with a bias near 2^31, M0 near 2^31 and a right shift of 23, and passes it when z_out = 127 is added
    on top: the AVX2 kernels' two-step rounding needs floor(numerator / 2^31) within int32, so up to the bound
    they must be exact, and past it the plan must refuse the fused constants (the kernels then take their other
    exact forms; with the fused form there, the inner floor would wrap and the outputs flip sign)."""
    model = random_model(5, 1, 32, 8, "global", False)
    body = model.layers[1]
    steps = 255 * int(np.abs(body.weight.astype(np.int64)).sum(axis=(1, 2, 3)).max())  # |sum (x - z_in) w|
    body.bias[:] = sign * ((2 ** 31 - 1 - steps) if past_the_bound else (2 ** 31 - 2 ** 26))
    body.multiplier[:], body.shift[:] = 2 ** 31 - 1, -23
    body.output_zero_point, body.act_min, body.act_max, body.relu = zero, -128, 127, False
    validate(model)
    plan = kernels._plan(model)
    assert bool(plan.steps[1].q_pairs8.fused) is not past_the_bound
    z = torch.randint(0, 256, (3, 1, 8, 8), dtype=torch.int32)
    trace = []
    want = engine.reference_forward(model, z, trace)
    clamped = (trace[1] == -128) | (trace[1] == 127)
    if past_the_bound:  # 2^31 M0 / 2^54 + 127: saturated, where a wrapped inner floor would turn them negative
        assert bool((trace[1] == 127).all())
    else:  # about 2^31 M0 / 2^54 = 256 against z_out: values inside the range, not the clamp
        assert not bool(clamped.all())
    assert torch.equal(kernels.forward(model, engine.check_input(model, z), isa), want)


def _winograd_model(seed: int, cin: int, cout: int, size: tuple[int, int], padding: tuple[int, int]) -> IntegerModel:
    """A first layer, then the 3x3 stride-1 layer under test (AVX2 runs it as integer Winograd), flattened into
    a head that weighs every output pixel on its own (so a pixel in the wrong place changes the logits)."""
    rng = np.random.default_rng(seed)
    (h, w), (ph, pw) = size, padding
    # shifts that keep each layer's outputs spread over the int8 range for inputs in [-300, 560]
    first = _conv(rng, "first", ["input"], 1, cin, 3, 1, 0, shifts=(-11, -9))
    body = _conv(rng, "body", ["first"], cin, cout, 3, 1, first.output_zero_point, shifts=(-11, -9))
    body.padding, body.relu, body.act_min, body.act_max = (ph, pw), False, -128, 127  # no clamp hides a pixel
    head = _conv(rng, "fc", ["flat"], cout * (h + 2 * ph - 2) * (w + 2 * pw - 2), 7, 1, 1, body.output_zero_point,
                 shifts=(-11, -8))
    head.op, head.padding = "fully_connected", (0, 0)
    model = IntegerModel("input", (1, h, w), (-32768, 32767), 1.0,
                         [first, body, PoolLayer("flat", "flatten", ["body"], "flat"), head], "fc", {})
    validate(model)
    return model


@pytest.mark.parametrize("cin, cout, size, padding", [
    *[(cin, cout, (side, side), (pad, pad)) for cin, cout, side in [(3, 5, 5), (16, 16, 8), (19, 33, 7), (40, 17, 6)]
      for pad in (0, 1, 2)],
    (17, 16, (5, 15), (0, 2)),  # 3 x 17 outputs: 9 tiles a row, two passes, a half tile in the second
    (16, 20, (15, 5), (2, 1)),  # 17 x 5: a half tile at the bottom and at the right
    (5, 16, (1, 13), (1, 0))])  # 1 x 11: one half-height tile row
def test_3x3_stride_1_layers_equal_the_reference_at_every_padding_and_tile_edge(isa, cin, cout, size, padding):
    """Odd output sizes leave half tiles at the right and bottom edges of Winograd's 2x2 blocks, paddings 0 and 2
    (and different ones per axis) move the frame, channel counts off 16 leave padded lanes; every instruction
    set must give the reference's integers. The AVX2 kernels must take the Winograd path for the layer: with
    its transformed weights zeroed in place, the logits must change."""
    seed = cin * 31 + cout + sum(padding) + size[1]
    model = _winograd_model(seed, cin, cout, size, padding)
    z = torch.randint(-300, 560, (5, 1, *size), dtype=torch.int32, generator=torch.Generator().manual_seed(seed))
    trace = []
    want = engine.reference_forward(model, z, trace)
    assert len({tuple(row) for row in want.tolist()}) > 1  # the logits depend on the input
    assert not bool(((trace[1] == -128) | (trace[1] == 127)).all())
    assert torch.equal(kernels.forward(model, engine.check_input(model, z), isa), want)
    winograd = kernels._plan(model).steps[1].w_wino
    assert winograd is not None
    if isa == "avx2":
        saved = winograd.copy()
        winograd[:] = 0
        try:
            assert not torch.equal(kernels.forward(model, engine.check_input(model, z), isa), want)
        finally:
            winograd[:] = saved


@pytest.mark.parametrize("cin, winograd", [(1800, True), (1850, False)])
def test_winograd_lanes_at_their_int32_bound_are_exact_and_past_it_the_direct_kernel_runs(isa, cin, winograd):
    """AVX2's Winograd lanes hold 4 sum (x - z_in) w in wrapping int32: offered only while 4 * 255 sum|w| < 2^31.
    At 1,800 channels of weights +127 against activations all at x - z_in = -255 the lanes hold -2.098e9, 2.3%
    inside the bound, and must come out exact; at 1,850 (past it) the plan must not offer them and the direct
    kernel decides."""
    model = _winograd_model(7, cin, 16, (3, 3), (1, 1))
    first, body = model.layers[0], model.layers[1]
    body.input_zero_point = _pin_activations(first, -128)  # 127: x - z_in = -255
    body.weight[:], body.bias[:] = 127, 0
    body.multiplier[:], body.shift[:] = 2 ** 30, -22  # Y = -5.2e8 (4Y = -2.1e9) / 2^23: about -63, in range
    body.output_zero_point, body.act_min, body.act_max, body.relu = 0, -128, 127, False
    validate(model)
    assert (kernels._plan(model).steps[1].w_wino is not None) is winograd
    z = torch.randint(0, 256, (2, 1, 3, 3), dtype=torch.int32)
    trace = []
    want = engine.reference_forward(model, z, trace)
    assert bool((trace[0] == -128).all()) and not bool(((trace[1] == -128) | (trace[1] == 127)).all())
    assert torch.equal(kernels.forward(model, engine.check_input(model, z), isa), want)


def test_a_layer_whose_lifted_sums_could_wrap_goes_to_the_reference(isa):
    """vpdpbusd's lifted sums sum (x + 128) w stay exact in int32 while kh kw cin4 255 127 < 2^31: at 7,400 input
    channels of a 3x3 layer they could wrap, so the plan must leave the layer to the reference engine (7,000:
    within the bound, the kernels run it)."""
    for cin, kernels_run in [(7000, True), (7400, False)]:
        model = _winograd_model(3, cin, 16, (3, 3), (1, 1))
        z = torch.randint(-300, 560, (2, 1, 3, 3), dtype=torch.int32)
        assert kernels._plan(model).steps[1].vnni_exact is kernels_run
        got = kernels.forward(model, engine.check_input(model, z), isa)
        assert (got is not None) is kernels_run
        assert torch.equal(engine.forward(model, z, instruction_set=isa) if got is None else got,
                           engine.reference_forward(model, z))


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)])
def test_resnet20_through_the_kernels_equals_the_reference(isa, shape, calibrated_resnet20):
    """The real network's shapes: every specialized tile (16, 14, 8, 7 pixels; strides 1 and 2)."""
    _, integer = calibrated_resnet20(shape)
    z = torch.randint(-300, 560, (6, *shape), dtype=torch.int32)
    assert torch.equal(kernels.forward(integer, engine.check_input(integer, z), isa),
                       engine.reference_forward(integer, z))


def test_small_batch_certification_votes_on_every_instruction_set_equal_the_reference_engine(isa, monkeypatch):
    """The issue's reproduction of the crash on CPUs without AVX-512 (the counting loop in batches of 16 on the
    kernels' threads), on each instruction set: the same votes as the reference engine, image by image."""
    from intrs.noise import DiscreteGaussianNoise
    from intrs.smoothing import SmoothedClassifier
    from intrs.systems import IntegerClassifier

    model = random_model(14, 1, 16, 12, "global", False)
    pixels = [torch.randint(0, 256, (1, 12, 12), dtype=torch.uint8, generator=torch.Generator().manual_seed(k))
              for k in range(4)]
    noise = DiscreteGaussianNoise(0.25)
    votes = [SmoothedClassifier(IntegerClassifier(model, isa), noise, 7, batch_size=16).sample_counts(p, 160, k)
             for k, p in enumerate(pixels)]
    monkeypatch.setenv(kernels.ENGINE_ENV, "reference")
    want = [SmoothedClassifier(IntegerClassifier(model), noise, 7, batch_size=16).sample_counts(p, 160, k)
            for k, p in enumerate(pixels)]
    assert all(np.array_equal(a, b) for a, b in zip(votes, want))


def test_engine_forward_uses_the_kernels_and_agrees(isa):
    model = random_model(3, 1, 16, 12, "global", False)
    z = torch.randint(-300, 600, (64, 1, 12, 12), dtype=torch.int32)
    assert torch.equal(engine.forward(model, z, instruction_set=isa), engine.reference_forward(model, z))


def test_an_overflowing_layer_raises_the_reference_error(isa):
    model = random_model(4, 1, 16, 8, "global", False)
    model.layers[1].shift[:] = 30  # acc << 30 leaves int32
    z = torch.randint(0, 255, (4, 1, 8, 8), dtype=torch.int32)
    with pytest.raises(ConfigError, match="left-shifted accumulator"):
        engine.forward(model, z, instruction_set=isa)


def test_first_layer_inputs_whose_int32_sums_could_wrap_go_to_the_reference(isa):
    model = random_model(5, 3, 16, 6, "global", False)
    model.layers[0].weight[:] = 127
    z = torch.full((2, 6, 6, 3), 1 << 23, dtype=torch.int32)  # 27 * 127 * 2^23 > 2^31
    assert kernels.Plan(model).run(kernels.library(), z.permute(0, 3, 1, 2), isa) is None
    assert kernels.Plan(model).run(kernels.library(), (z >> 8).permute(0, 3, 1, 2), isa) is not None


def test_reference_env_turns_the_kernels_off(monkeypatch):
    monkeypatch.setenv(kernels.ENGINE_ENV, "reference")
    assert kernels.instruction_set() == "reference"
    assert kernels.forward(random_model(6, 1, 4, 5, "global", False), torch.zeros(1, 1, 5, 5, dtype=torch.int32)) \
        is None


class _CraftedWords:
    """A generator stand-in whose raw words are given: hits every threshold exactly (the rare tie case)."""

    def __init__(self, words, lows):
        self.words, self.lows = np.array(words, dtype=np.uint64), list(lows)
        self.bit_generator = self

    def random_raw(self, size=None):
        return self.lows.pop(0) if size is None else self.words[:size].copy()


@pytest.mark.parametrize("sigma", [0.12, 1.0])
def test_compiled_table_draws_equal_numpy_search_including_ties(monkeypatch, sigma):
    from intrs.noise import DiscreteGaussianNoise

    table = DiscreteGaussianNoise(sigma).table
    rng = np.random.default_rng(0)
    words = np.concatenate([table.high, table.high - np.uint64(1), table.high[:-1] + np.uint64(1),
                            rng.integers(0, 2 ** 64, size=5000, dtype=np.uint64),
                            np.array([0, 2 ** 64 - 1], dtype=np.uint64)])
    lows = [int(v) for v in rng.integers(0, 2 ** 64, size=4 * len(words), dtype=np.uint64)]
    compiled = table.sample((len(words),), _CraftedWords(words, lows))
    monkeypatch.setenv(kernels.ENGINE_ENV, "reference")
    assert np.array_equal(compiled, table.sample((len(words),), _CraftedWords(words, lows)))


@pytest.mark.skipif(not kernels.available(), reason="no compiled kernels here (or INTRS_ENGINE=reference)")
def test_prepared_plans_leave_with_their_model():
    import gc
    import pickle

    model = random_model(7, 1, 4, 5, "global", False)
    engine.forward(model, torch.zeros(2, 1, 5, 5, dtype=torch.int32))
    assert id(model) in kernels._plans
    pickle.dumps(model)  # Ray ships models to its workers: the prepared kernels must not ride along
    key = id(model)
    del model
    gc.collect()
    assert key not in kernels._plans


def _add_case(seed: int, relu: bool) -> tuple[AddLayer, torch.Tensor, torch.Tensor, torch.Tensor]:
    """An ADD on every int8 input pair (NHWC 1 x 256 x 256 x 1) and the reference's outputs, with and without
    the ReLU that ResNet's ADDs carry (act_min = z_out: the fused forms then skip their sign test). Seeds 0-3:
    output shifts inside and outside the fused forms' range (>= -21); seeds 4-5: the input shifts at the fused
    forms' limit (-10) and small output shifts, where the rescaled sums are small enough that TFLite's rounding
    ties (which the sign test decides) occur."""
    rng = np.random.default_rng(seed)
    first, second = _conv(rng, "a", ["x"], 1, 1, 1, 1, 0), _conv(rng, "b", ["x"], 1, 1, 1, 1, 0)
    layer = _add(rng, "add", first, second)
    layer.input1_shift, layer.output_shift = int(rng.integers(-3, 1)), int(rng.integers(-24, -15))
    if seed >= 4:
        layer.input1_shift = layer.input2_shift = -10
        layer.output_shift = int(rng.integers(-12, -8))
    if relu:
        layer.act_min = layer.output_zero_point
    grid = torch.arange(-128, 128, dtype=torch.int8)
    a, b = grid.repeat_interleave(256).reshape(1, 256, 256, 1), grid.repeat(256).reshape(1, 256, 256, 1)
    want = engine.add(a.permute(0, 3, 1, 2), b.permute(0, 3, 1, 2), layer).permute(0, 2, 3, 1)
    return layer, a.contiguous(), b.contiguous(), want.contiguous()


ADD_CASES = [(seed, relu) for seed in range(6) for relu in (False, True)]


@pytest.mark.parametrize("seed,relu", ADD_CASES)
def test_compiled_add_equals_the_reference_on_every_input_pair(isa, seed, relu):
    layer, a, b, want = _add_case(seed, relu)
    got = torch.empty_like(a)
    assert kernels.library().intrs_add(kernels._table(isa), a.data_ptr(), b.data_ptr(), a.numel(),
                                       kernels._Add(layer).params_address, got.data_ptr()) == 0
    assert torch.equal(got, want)


def _rescale_cases(seed: int) -> list[tuple[int, int, int, torch.Tensor]]:
    """The ADD's first step, which its output rescaling mostly hides, on every int8 value: (M0, shift, zero
    point, the reference's int32 outputs) at every shift (the kernels take different forms for shifts down to
    -10 and below) and extreme multipliers."""
    rng = np.random.default_rng(seed)
    x = torch.arange(-128, 128, dtype=torch.int64)
    cases = []
    for m, shift in [(1 << 30, 0), (2 ** 31 - 1, -31), (2 ** 31 - 1, 0), (1 << 30, -1)] + \
            [(int(rng.integers(1 << 30, 1 << 31)), shift) for shift in range(-31, 1) for _ in range(3)]:
        zero = int(rng.integers(-128, 128))
        cases.append((m, shift, zero, engine.requantize((x - zero) << engine.ADD_LEFT_SHIFT, m, shift)))
    return cases


@pytest.mark.parametrize("seed", range(6))
def test_compiled_add_input_rescaling_equals_the_reference(isa, seed):
    x = torch.arange(-128, 128, dtype=torch.int8)
    for m, shift, zero, want in _rescale_cases(seed):
        out = torch.empty(256, dtype=torch.int32)
        assert kernels.library().intrs_add_rescale(kernels._table(isa), x.data_ptr(), 256, zero, m, shift,
                                                   out.data_ptr()) == 0
        assert torch.equal(out.to(torch.int64), want), (m, shift, zero)


def test_a_program_keeps_alive_what_its_ops_point_at(isa):
    """The C ops hold raw addresses of packed weights and constants: a program must outlive its plan."""
    import gc

    model = random_model(8, 3, 16, 8, "global", False)
    z = torch.from_numpy(np.random.default_rng(8).integers(-300, 600, size=(5, 3, 8, 8)).astype(np.int32))
    x = z.permute(0, 2, 3, 1).contiguous()
    program = kernels.Plan(model).program(tuple(x.shape[1:]), int(z.min()), int(z.max()), isa)
    gc.collect()
    got = program(kernels.library(), x)
    assert got is not None and torch.equal(got.reshape(5, -1), engine.reference_forward(model, z).reshape(5, -1))


def test_threads_running_programs_of_different_instruction_sets_at_once_each_equal_the_reference():
    """The crash this structure rules out: one thread's choice of instruction set leaking into another's
    program (a shared setting read mid-batch ran AVX-512 code on CPUs without it). Programs of every
    instruction set the CPU has run on several threads at once, many small batches each; every output must
    be the reference's, and every program keeps the table it was built for."""
    if kernels.library() is None or not kernels.available():
        pytest.skip("no compiled kernels here (or INTRS_ENGINE=reference)")
    model = random_model(11, 3, 16, 8, "global", False)
    rng = np.random.default_rng(11)
    batches = [torch.from_numpy(rng.integers(-300, 600, size=(int(rng.integers(1, 9)), 3, 8, 8)).astype(np.int32))
               for _ in range(12)]
    wants = [engine.reference_forward(model, z) for z in batches]
    failures, names = [], kernels.instruction_sets()

    def worker(name: str, offset: int):
        try:
            for round in range(40):
                k = (round + offset) % len(batches)
                got = kernels.forward(model, engine.check_input(model, batches[k]), name)
                if got is None or not torch.equal(got, wants[k]):
                    failures.append((name, round))
        except Exception as error:  # surfaced in the main thread
            failures.append((name, repr(error)))

    threads = [threading.Thread(target=worker, args=(name, k)) for k, name in enumerate(names * 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures
    plan = kernels._plan(model)
    for (_, _, name), program in plan.programs.items():
        assert program.header.isa == kernels._table(name)
        assert kernels.Isa.from_address(program.header.isa).level == kernels.INSTRUCTION_SETS.index(name)


@pytest.mark.parametrize("name", kernels.INSTRUCTION_SETS)
def test_an_instruction_set_the_cpu_lacks_is_refused_never_run(name):
    if kernels.library() is None:
        pytest.skip("no compiled kernels here (no C compiler when intrs was installed)")
    model = random_model(12, 1, 4, 5, "global", False)
    z = torch.zeros(2, 1, 5, 5, dtype=torch.int32)
    if name in kernels.instruction_sets():
        assert kernels.library().intrs_isa(kernels.INSTRUCTION_SETS.index(name))
        if kernels.available():
            assert torch.equal(kernels.forward(model, z, name), engine.reference_forward(model, z))
        return
    assert not kernels.library().intrs_isa(kernels.INSTRUCTION_SETS.index(name))
    with pytest.raises(ConfigError, match=f"this CPU has no {name}"):
        kernels.forward(model, z, name)
    with pytest.raises(ConfigError, match=f"this CPU has no {name}"):
        kernels.Plan(model).program((5, 5, 1), 0, 0, name)


def test_a_program_with_a_table_dispatch_did_not_grant_is_refused():
    """A forged table (a copy of a granted one, at another address) never runs: the C side checks each
    program's table against those it handed out."""
    if kernels.library() is None:
        pytest.skip("no compiled kernels here (no C compiler when intrs was installed)")
    model = random_model(13, 1, 4, 5, "global", False)
    program = kernels.Plan(model).program((5, 5, 1), 0, 10, "portable")
    forged = kernels.Isa.from_buffer_copy(kernels.Isa.from_address(program.header.isa))
    program.header.isa = ctypes.addressof(forged)
    with pytest.raises(RuntimeError, match="refused a program built for portable"):
        program(kernels.library(), torch.zeros(1, 5, 5, 1, dtype=torch.int32))


def test_a_build_whose_structs_differ_from_the_ctypes_side_fails_loudly(monkeypatch):
    if kernels.library() is None:
        pytest.skip("no compiled kernels here (no C compiler when intrs was installed)")
    kernels.check_interface(kernels.library(), "here")  # the installed build agrees

    class Shorter(ctypes.Structure):  # layout_t without its last field
        _fields_ = kernels.Layout._fields_[:-1]

    monkeypatch.setitem(kernels._STRUCTS, "layout_t", Shorter)
    with pytest.raises(kernels.KernelsBuildError, match=r"layout_t.*rebuild them"):
        kernels.check_interface(kernels.library(), "here")
    monkeypatch.undo()
    monkeypatch.setattr(kernels, "OP_ADD", 7)
    with pytest.raises(kernels.KernelsBuildError, match="constants"):
        kernels.check_interface(kernels.library(), "here")


def test_intrs_engine_names_the_default_instruction_set(monkeypatch):
    if not kernels.instruction_sets():
        pytest.skip("no compiled kernels here (no C compiler when intrs was installed)")
    monkeypatch.setenv(kernels.ENGINE_ENV, "portable")
    assert kernels.instruction_set() == "portable"
    monkeypatch.setenv(kernels.ENGINE_ENV, "auto")
    assert kernels.instruction_set() == kernels.instruction_sets()[-1]
    monkeypatch.setenv(kernels.ENGINE_ENV, "sse9")
    with pytest.raises(ConfigError, match="unknown INTRS_ENGINE 'sse9'"):
        kernels.instruction_set()
    missing = [name for name in kernels.INSTRUCTION_SETS if name not in kernels.instruction_sets()]
    if missing:
        monkeypatch.setenv(kernels.ENGINE_ENV, missing[0])
        with pytest.raises(ConfigError, match=f"this CPU has no {missing[0]}"):
            kernels.instruction_set()


# CPUs qemu-x86_64 emulates without the instructions of the levels above them (TCG runs no AVX-512 at all, so an
# AVX-512 instruction there is SIGILL), and the instruction sets the kernels must grant on each
EMULATED_CPUS = {"Haswell": ("portable", "avx2"), "Nehalem": ("portable",)}


def _objects(out: Path, compiler: str, machine: str) -> list[str]:
    """The kernels' objects for ``machine``, each file built with its own flags (csrc/build.sh)."""
    import os
    import subprocess

    csrc = Path(kernels.__file__).parent / "csrc"
    env = {**os.environ, "CC": compiler, "MACHINE": machine}
    return subprocess.run(["bash", str(csrc / "build.sh"), str(out)], check=True, capture_output=True, text=True,
                          env=env).stdout.split()


def _link(out: Path, compiler: str, objects: list[str], source: str, *flags: str) -> Path:
    import subprocess

    csrc = Path(kernels.__file__).parent / "csrc"
    binary = out / Path(source).stem
    subprocess.run([compiler, "-O2", "-std=c11", "-I", str(csrc), str(Path(__file__).parent / source), *objects,
                    "-pthread", *flags, "-o", str(binary)], check=True)
    return binary


@pytest.fixture(scope="module")
def native_build(tmp_path_factory):
    """This machine's compiler and the kernels' objects built with it (once: vnni.c takes a while)."""
    import platform

    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.skip("no C compiler here")
    out = tmp_path_factory.mktemp("native")
    return out, compiler, _objects(out, compiler, platform.machine())


@pytest.fixture(scope="module")
def isa_probe(native_build):
    """tests/isa_probe.c linked with the kernels' objects."""
    return _link(*native_build, "isa_probe.c")


def test_benchmarks_layer_rate_builds_with_the_kernels_objects_and_runs(native_build):
    """benchmarks/layer_rate.c calls an instruction set's convolution as a program does: it must follow the
    kernels' entry points (it went stale once, unbuilt by anything)."""
    import subprocess

    best = kernels.instruction_set()
    if best not in ("avx2", "avx-vnni", "avx512-vnni"):
        pytest.skip(f"the best kernels here are {best}: layer_rate measures the x86 SIMD ones")
    binary = _link(*native_build, "../benchmarks/layer_rate.c", "-D_POSIX_C_SOURCE=200809L")
    run = subprocess.run([str(binary), best, "16", "28"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.startswith(f"{best}: 3x3 convolution 16 -> 16 channels, 28x28:") and "GMAC/s" in run.stdout


def _granted(output: str) -> tuple[str, ...]:
    return tuple(line.split()[1].rstrip(":") for line in output.splitlines() if line.startswith("granted "))


def test_isa_probe_grants_what_this_cpu_has_and_every_grant_agrees(isa_probe):
    import subprocess

    run = subprocess.run([str(isa_probe)], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    if kernels.library() is not None:
        assert _granted(run.stdout) == kernels.instruction_sets()


@pytest.mark.parametrize("cpu", EMULATED_CPUS)
def test_isa_probe_on_emulated_cpus_without_avx512_or_avx2_refuses_what_they_lack(isa_probe, cpu):
    """What the crash needed: a CPU without AVX-512. Under qemu's emulation of one, every instruction set it
    lacks is refused (its table too), and those it has run and agree; any AVX-512 instruction reached would be
    SIGILL (exit -4 here)."""
    import platform
    import subprocess

    qemu = shutil.which("qemu-x86_64")
    if platform.machine() != "x86_64" or qemu is None:
        pytest.skip("needs qemu-x86_64 on an x86_64 machine (Debian's qemu-user; scripts/setup.sh installs it)")
    run = subprocess.run([qemu, "-cpu", cpu, str(isa_probe)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, f"exit {run.returncode}\n{run.stdout}"
    assert _granted(run.stdout) == EMULATED_CPUS[cpu]
    for name in kernels.INSTRUCTION_SETS:
        if name not in EMULATED_CPUS[cpu]:
            assert f"refused {name}" in run.stdout


def _program_images(tmp_path, models: list[IntegerModel]) -> list[Path]:
    """Programs of models (plain layouts: what every instruction set runs) with inputs and the reference
    engine's outputs, as files tests/program_image.c runs."""
    paths = []
    for seed, model in enumerate(models):
        cin, size = model.input_shape[0], model.input_shape[1]
        z = torch.from_numpy(np.random.default_rng(seed).integers(-300, 600, size=(5, cin, size, size))
                             .astype(np.int32))
        x = z.permute(0, 2, 3, 1).contiguous()
        program = kernels.Plan(model).program(tuple(x.shape[1:]), int(z.min()), int(z.max()), "portable")
        path = tmp_path / f"program-{seed}.bin"
        path.write_bytes(program.image(x, engine.reference_forward(model, z).reshape(len(z), -1)))
        paths.append(path)
    return paths


def _tied_requantization_model(seed: int) -> IntegerModel:
    """A random model whose int8 convolutions requantize by small right shifts (1-4) with weights in {-1, 0, 1},
    so most outputs stay inside the int8 range and many land on the exact halves that TFLite's rounding sends
    away from zero: where a requantization's sign fix matters. No left shift: the int32-lane epilogues run."""
    model = random_model(seed, 3, 16, 8, "global", False)
    rng = np.random.default_rng(seed)
    for layer in model.layers[1:3] + model.layers[4:5]:
        layer.weight[:] = rng.choice([-1, 0, 0, 0, 1], size=layer.weight.shape).astype(np.int8)
        layer.bias[:] = rng.integers(-50, 50, size=layer.bias.shape)
        layer.shift[:] = rng.integers(-4, 0, size=layer.shift.shape)
        layer.act_max = 127
    validate(model)
    return model


PROGRAM_CASES = [(21, 1, 16, 8, "global"), (22, 3, 19, 7, "window"), (23, 5, 32, 9, "max"), (24, 7, 4, 6, "global")]


def _program_case_images(tmp_path) -> list[Path]:
    models = [random_model(seed, cin, width, size, pool, False) for seed, cin, width, size, pool in PROGRAM_CASES]
    return _program_images(tmp_path, models + [_tied_requantization_model(seed) for seed in (31, 32)])


def _add_image(tmp_path) -> Path:
    """Every ADD case and input rescaling case of the native tests above as one file of ADD cases, with the
    reference's outputs (tests/program_image.c's add_cases)."""
    parts, count = [], 0
    for seed, relu in ADD_CASES:
        layer, a, b, want = _add_case(seed, relu)
        parts += [np.array([0, *kernels._Add(layer).params, a.numel()], dtype="<i8").tobytes(), a.numpy().tobytes(),
                  b.numpy().tobytes(), want.numpy().tobytes()]
        count += 1
    x = np.arange(-128, 128, dtype=np.int8).tobytes()
    for seed in range(6):
        for m, shift, zero, want in _rescale_cases(seed):
            parts += [np.array([1, zero, m, shift, 256], dtype="<i8").tobytes(), x,
                      want.numpy().astype("<i4").tobytes()]
            count += 1
    path = tmp_path / "add-cases.bin"
    path.write_bytes(b"INTRSAD1" + np.array([count], dtype="<i8").tobytes() + b"".join(parts))
    return path


def _assert_each_convolution_alone_matched(stdout: str, path: Path, granted: int) -> None:
    """program_image.c's per-op check: each convolution alone on every granted instruction set but portable
    gives the portable kernel's outputs and writes no byte past its output or scratch (a row written past the
    edge, which the network's logits never see)."""
    lines = [line for line in stdout.splitlines() if line.startswith("ops on ")]
    if path.name.startswith("add-"):
        assert not lines
        return
    assert len(lines) == granted - 1, stdout
    assert all(line.endswith(" convolutions, rc 0, 0 outputs differ from portable, 0 guard bytes written")
               for line in lines), stdout


def test_program_images_run_natively_on_every_instruction_set(tmp_path, native_build):
    import subprocess

    if kernels.library() is None:
        pytest.skip("no compiled kernels here")
    binary = _link(*native_build, "program_image.c")
    for path in _program_case_images(tmp_path) + [_add_image(tmp_path)]:
        run = subprocess.run([str(binary), str(path)], capture_output=True, text=True)
        assert run.returncode == 0, run.stdout + run.stderr
        assert run.stdout.count(" 0 of ") == len(kernels.instruction_sets())
        _assert_each_convolution_alone_matched(run.stdout, path, len(kernels.instruction_sets()))


# qemu-aarch64 CPUs: "max" has the dot-product instructions and the int8 matrix multiply, a Cortex-A76
# (Armv8.2) the first only, a Cortex-A53 (Armv8.0) neither
AARCH64_CPUS = {"max": ("portable", "neon-dotprod", "neon-i8mm"), "cortex-a76": ("portable", "neon-dotprod"),
                "cortex-a53": ("portable",)}


@pytest.mark.parametrize("cpu", AARCH64_CPUS)
def test_aarch64_neon_kernels_under_qemu_equal_the_reference_engine(tmp_path, cpu):
    """The NEON kernels, cross-compiled for aarch64 and run under qemu-aarch64: every logit of random models
    (odd channels, strides, pools, a residual ADD) equals the reference engine's, and the dot-product kernels
    are granted only on a CPU that has them. (Speed under emulation means nothing.)"""
    import subprocess

    compiler, qemu = shutil.which("aarch64-linux-gnu-gcc"), shutil.which("qemu-aarch64")
    if compiler is None or qemu is None:
        pytest.skip("MISSING aarch64 toolchain: needs aarch64-linux-gnu-gcc and qemu-aarch64 (Debian's "
                    "gcc-aarch64-linux-gnu and qemu-user; bash scripts/setup.sh installs them where apt exists)")
    binary = _link(tmp_path, compiler, _objects(tmp_path, compiler, "aarch64"), "program_image.c", "-static")
    for path in _program_case_images(tmp_path) + [_add_image(tmp_path)]:
        run = subprocess.run([qemu, "-cpu", cpu, str(binary), str(path)], capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stdout + run.stderr
        assert _granted(run.stdout) == AARCH64_CPUS[cpu]
        assert run.stdout.count(" 0 of ") == len(AARCH64_CPUS[cpu])
        _assert_each_convolution_alone_matched(run.stdout, path, len(AARCH64_CPUS[cpu]))


@pytest.mark.parametrize("cpu", AARCH64_CPUS)
def test_aarch64_peak_loops_run_exactly_where_the_cpu_has_their_instructions_under_qemu(tmp_path, cpu):
    """intrs bench's ceiling on aarch64 (src/intrs/peak/peak.c): the fp32 FMLA loop everywhere, sdot's and
    smmla's only where the kernel reports DotProd and I8MM (an instruction the CPU lacks would be a SIGILL).
    Which loops run is all this says: emulated rates mean nothing."""
    import subprocess

    compiler, qemu = shutil.which("aarch64-linux-gnu-gcc"), shutil.which("qemu-aarch64")
    if compiler is None or qemu is None:
        pytest.skip("MISSING aarch64 toolchain: needs aarch64-linux-gnu-gcc and qemu-aarch64 (Debian's "
                    "gcc-aarch64-linux-gnu and qemu-user; bash scripts/setup.sh installs them where apt exists)")
    binary = tmp_path / "peak"
    subprocess.run([compiler, "-O2", "-std=c11", "-DINTRS_PEAK_MAIN", "-static",
                    str(Path(kernels.__file__).parent / "peak" / "peak.c"), "-o", str(binary)], check=True)
    run = subprocess.run([qemu, "-cpu", cpu, str(binary), "200"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    ran = {line.split("  ")[1].strip() for line in run.stdout.splitlines() if "GMAC/s" in line}
    from intrs.bench import FP32_NEON, KERNEL_PEAKS
    assert ran == {FP32_NEON} | {KERNEL_PEAKS[isa] for isa in AARCH64_CPUS[cpu] if isa != "portable"}, run.stdout


@pytest.mark.slow
def test_a_compiler_that_cannot_build_an_instruction_set_leaves_it_out(tmp_path):
    """setup.py with a compiler that rejects avxvnni.c's flags (an unknown flag stands in for an old gcc's
    missing -mavxvnni): the build succeeds without those kernels, and dispatch never grants them."""
    import subprocess
    import sys

    root = Path(kernels.__file__).parents[2]
    tree = tmp_path / "tree"
    shutil.copytree(root / "src", tree / "src", ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    for name in ("setup.py", "pyproject.toml", "README.md"):
        shutil.copy(root / name, tree / name)
    targets = tree / "src" / "intrs" / "csrc" / "targets.txt"
    targets.write_text(targets.read_text().replace("avxvnni.c -mavx2 -mavxvnni", "avxvnni.c -mavx2 -mno-such-flag"))
    build = subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"], cwd=tree, capture_output=True,
                           text=True)
    assert build.returncode == 0, build.stderr[-2000:]
    assert "those kernels are left out" in build.stdout + build.stderr
    probe = subprocess.run([sys.executable, "-c", "from intrs import kernels; print(','.join(kernels.instruction_sets()))"],
                           cwd=tree, env={"PYTHONPATH": str(tree / "src"), "PATH": "/usr/bin:/bin"},
                           capture_output=True, text=True)
    assert probe.returncode == 0, probe.stderr[-2000:]
    assert "avx-vnni" not in probe.stdout.split(",") and "portable" in probe.stdout
