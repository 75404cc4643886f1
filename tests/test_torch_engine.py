"""The integer engine on torch devices returns exactly the reference engine's integers, and --device is wired.

Every device test runs on the CPU (the same code path the GPU runs) and, where CUDA is present, on
``cuda`` too; without CUDA the CUDA cases are reported as skipped with the reason.
"""

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from intrs import engine
from intrs.devices import resolve_device
from intrs.errors import ConfigError
from intrs.intmodel import IntegerModel, validate
from intrs.noise import DiscreteGaussianNoise, GaussianNoise, RoundedGaussianNoise
from intrs.rng import device_stream, philox_seed_offset, random_stream
from intrs.smoothing import SmoothedClassifier, votes
from intrs.systems import IntegerClassifier, make_system
from intrs.torch_engine import TorchEngine, TorchIntegerClassifier, digit_count, integer_matmul
from test_cli import assert_one_line_error, certify_args, run_cli
from test_kernels import random_model

NO_CUDA = "no CUDA device here: the CUDA case of this test has not run"


@pytest.fixture(params=["cpu", "cuda"])
def device(request):
    if request.param == "cuda" and not torch.cuda.is_available():
        pytest.skip(NO_CUDA)
    return torch.device(request.param)


# ---------------------------------------------------------------- exactness against the reference engine


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.integers(0, 2 ** 32 - 1), st.sampled_from([1, 3, 5]), st.sampled_from([4, 16, 19]),
       st.sampled_from([5, 8, 15]), st.sampled_from(["global", "window", "max"]), st.booleans(),
       st.sampled_from([1, 7, 40]))
def test_torch_engine_equals_the_reference_on_the_kernel_tests_random_models(device, seed, cin, width, size, pool,
                                                                             saturate, batch):
    model = random_model(seed, cin, width, size, pool, saturate)
    z = torch.from_numpy(np.random.default_rng(seed + 1).integers(-400, 700, size=(batch, cin, size, size))
                         .astype(np.int32))
    got = TorchEngine(model, device).forward(z.to(device))
    assert got.device.type == device.type and got.dtype == torch.int8
    assert torch.equal(got.cpu(), engine.reference_forward(model, z))


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)])
def test_torch_engine_equals_the_reference_on_a_resnet20(device, shape, calibrated_resnet20):
    _, integer = calibrated_resnet20(shape)
    z = torch.randint(-300, 560, (6, *shape), dtype=torch.int32, generator=torch.Generator().manual_seed(1))
    logits = TorchEngine(integer, device).forward(z)
    assert torch.equal(logits.cpu(), engine.reference_forward(integer, z))
    assert torch.equal(TorchIntegerClassifier(integer, device)(z).cpu(), engine.argmax_lowest(logits.cpu()))


def test_a_first_layer_input_far_beyond_int16_is_exact(device):
    """The unbounded lattice: first-layer inputs of about +-2^20 take three int8 digits, still the same integers."""
    small = random_model(5, 2, 8, 6, "global", False)
    first = small.layers[0]
    first.multiplier[:] = 1 << 30
    first.shift[:] = -24  # keep the accumulators of the wide input inside int32
    model = IntegerModel("input", small.input_shape, (-(2 ** 20), 2 ** 20), 1.0, small.layers, "fc", {})
    validate(model)
    z = torch.randint(-(2 ** 20), 2 ** 20, (3, *model.input_shape), dtype=torch.int32,
                      generator=torch.Generator().manual_seed(2))
    assert digit_count(int(z.min()), int(z.max())) == 3
    assert torch.equal(TorchEngine(model, device).forward(z).cpu(), engine.reference_forward(model, z))


def test_torch_engine_makes_no_floating_point_value(device):
    """Every torch operation of a forward pass (and the table draw) has an integer result, and the module's
    syntax holds no float literal, true division or float dtype (the reference engine's own checks)."""
    import ast
    import inspect

    from intrs import torch_engine
    from test_quant import NoFloats

    model = random_model(2, 3, 16, 8, "max", False)
    z = torch.randint(-300, 600, (5, 3, 8, 8), dtype=torch.int32)
    noise = DiscreteGaussianNoise(0.25, device)
    pixels = torch.zeros((3, 8, 8), dtype=torch.uint8)
    engine_on_device, generator = TorchEngine(model, device), noise.generator(0)
    with NoFloats() as mode:
        logits = engine_on_device.forward(z)
        drawn = noise.perturb(pixels, 4, generator)
    assert mode.calls > 50 and logits.dtype == torch.int8 and drawn.dtype == torch.int32
    for node in ast.walk(ast.parse(inspect.getsource(torch_engine))):
        assert not (isinstance(node, ast.Constant) and isinstance(node.value, float)), ast.dump(node)
        assert not (isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div)), "true division"
        if isinstance(node, ast.Attribute):
            assert node.attr not in ("float", "float32", "float64", "double", "half", "bfloat16"), node.attr


def test_integer_matmul_is_the_exact_product_for_every_digit_count(device):
    rng = np.random.default_rng(3)
    for rows, k, n, low, high in [(1, 3, 5, -128, 127), (16, 9, 7, 0, 255), (17, 16, 8, -16384, 16383),
                                  (40, 27, 19, -(2 ** 31), 2 ** 31 - 1), (5, 1, 1, -1, 0)]:
        columns = rng.integers(low, high, size=(rows, k), endpoint=True)
        columns[0, 0], columns[-1, -1] = low, high
        weight = rng.integers(-127, 128, size=(n, k))
        padded = torch.zeros((-(-n // 8) * 8, -(-k // 8) * 8), dtype=torch.int8)
        padded[:n, :k] = torch.from_numpy(weight)
        dtype = torch.int8 if high <= 127 and low >= -128 else torch.int32
        got = integer_matmul(torch.from_numpy(columns).to(device=device, dtype=dtype), padded.t().to(device))
        want = torch.from_numpy(columns) @ torch.from_numpy(weight).t()
        assert got.dtype == torch.int64 and torch.equal(got[:, :n].cpu(), want), (rows, k, n, low, high)
        assert not got[:, n:].any()  # the zero padding adds nothing


def test_digit_count_covers_exactly_the_signed_ranges():
    assert digit_count(-128, 127) == 1 and digit_count(-129, 0) == 2 and digit_count(0, 128) == 2
    assert digit_count(-(2 ** 14), 2 ** 14 - 1) == 2 and digit_count(0, 2 ** 14) == 3
    assert digit_count(-(2 ** 31), 2 ** 31 - 1) == 5


# ---------------------------------------------------------------- the table draw on the device


class _Words:
    """A stand-in bit generator that hands out given 64-bit words (no ``advance``: one piece)."""

    def __init__(self, words):
        self.words = [int(w) for w in words]

    def random_raw(self, size=None):
        if size is None:
            return self.words.pop(0)
        taken, self.words = self.words[:size], self.words[size:]
        return np.array(taken, dtype=np.uint64)


class _Generator:
    def __init__(self, words):
        self.bit_generator = _Words(words)


def _inverse_cdf_128(table, high: int, low: int) -> int:
    """The definition: the first k_j with U < T_j, U and T_j compared as whole 128-bit Python integers
    (the last threshold is 2^128: it takes every remaining U)."""
    u = high << 64 | low
    thresholds = [h << 64 | l for h, l in zip(table.high.tolist()[:-1], table.low.tolist()[:-1])] + [2 ** 128]
    return int(table.values[next(j for j, t in enumerate(thresholds) if u < t)])


@pytest.mark.parametrize("law", [DiscreteGaussianNoise, RoundedGaussianNoise])
def test_the_device_table_draw_equals_the_host_draw_ties_included(device, law):
    """Words equal to thresholds' high words (the tie path; the tails hold long runs of equal high words),
    their neighbours, 0 and 2^64 - 1, with low words just below, at and above the thresholds' low words:
    the device's draws are the host's and the 128-bit inverse CDF's."""
    table = law(0.02).table  # sigma_q = 5.1: a short table, every threshold crafted
    pairs = [(0, 0), (2 ** 64 - 1, 0), (2 ** 64 - 1, 2 ** 64 - 1), (2 ** 63, 0), (2 ** 63 - 1, 2 ** 64 - 1)]
    for h, l in zip(table.high.tolist()[:-1], table.low.tolist()[:-1]):
        pairs += [(h, max(l - 1, 0)), (h, l), (h, min(l + 1, 2 ** 64 - 1)), (max(h - 1, 0), 0),
                  (min(h + 1, 2 ** 64 - 1), 7)]
    high_words = set(table.high.tolist())
    ties = [low for high, low in pairs if high in high_words]
    words = [high for high, _ in pairs] + ties  # the host draws a tie's low word after the batch, in index order
    host = table.sample((len(pairs),), _Generator(words))
    got = table.sample_on(device, (len(pairs),), _Generator(words))
    assert got.device.type == device.type and got.dtype == torch.int32
    assert np.array_equal(got.cpu().numpy(), host)
    # a word that equals no threshold's high word decides the draw whatever its low word
    assert host.tolist() == [_inverse_cdf_128(table, high, low) for high, low in pairs]
    assert len(ties) > len(pairs) // 2


@pytest.mark.parametrize("law", [DiscreteGaussianNoise, RoundedGaussianNoise])
def test_lattice_noise_on_a_device_draws_the_host_integers_for_the_same_seed(device, law):
    host, on_device = law(0.25), law(0.25, device)
    pixels = torch.randint(0, 256, (3, 6, 5), dtype=torch.uint8, generator=torch.Generator().manual_seed(4))
    g_host, g_device = host.generator(7, 3, 1), on_device.generator(7, 3, 1)
    for count in (1, 33, 200):
        got = on_device.perturb(pixels, count, g_device)
        assert got.device.type == device.type
        assert torch.equal(got.cpu(), host.perturb(pixels, count, g_host))
    assert on_device.radius(0.9) == host.radius(0.9)


def test_integer_certificates_on_the_torch_engine_equal_the_cpu_systems(device):
    """IntRS-quant through the torch engine and the device table search: the CPU system's certificate, to the bit."""
    model = random_model(14, 1, 16, 12, "global", False)
    pixels = torch.randint(0, 256, (1, 12, 12), dtype=torch.uint8, generator=torch.Generator().manual_seed(5))
    cpu = SmoothedClassifier(IntegerClassifier(model), DiscreteGaussianNoise(0.25), 7, batch_size=64)
    on_device = SmoothedClassifier(TorchIntegerClassifier(model, device), DiscreteGaussianNoise(0.25, device), 7,
                                   batch_size=64)
    assert on_device.certify(pixels, 32, 300, 0.01, seed=3, idx=2) == cpu.certify(pixels, 32, 300, 0.01, seed=3, idx=2)
    assert on_device.predict(pixels, 200, 0.01, seed=3, idx=2) == cpu.predict(pixels, 200, 0.01, seed=3, idx=2)


def test_make_system_keeps_the_compiled_kernels_on_the_cpu_and_the_torch_engine_elsewhere(device):
    model = random_model(1, 1, 4, 8, "global", False)
    system = make_system("intrs-quant", model, 0.25, device=device)
    if device.type == "cpu":
        assert isinstance(system.base, IntegerClassifier) and system.noise.device is None
    else:
        assert isinstance(system.base, TorchIntegerClassifier) and system.noise.device == device


# ---------------------------------------------------------------- FloatRS-fp on a device, streams, votes


def test_floatrs_fp_on_a_device_gives_the_same_votes_for_the_same_seed(device, digits_checkpoint):
    from intrs.checkpoint import load_checkpoint

    pixels = torch.randint(0, 256, (1, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(6))
    first, second = (make_system("floatrs-fp", load_checkpoint(digits_checkpoint), 0.25, device=device)
                     for _ in range(2))
    assert next(first.base.model.parameters()).device.type == device.type
    counts = [s.smoothed(50).sample_counts(pixels, 120, 9, 0, 1) for s in (first, second)]
    assert np.array_equal(*counts) and counts[0].sum() == 120
    if device.type == "cpu":  # the CPU's rows are the ones intrs always wrote
        default = make_system("floatrs-fp", load_checkpoint(digits_checkpoint), 0.25)
        assert np.array_equal(default.smoothed(50).sample_counts(pixels, 120, 9, 0, 1), counts[0])


def test_gaussian_noise_on_the_cpu_device_is_the_cpu_stream():
    pixels = torch.randint(0, 256, (2, 4, 4), dtype=torch.uint8)
    law = GaussianNoise(0.5, "cpu")
    assert torch.equal(law.perturb(pixels, 8, law.generator(11, 4, 2)),
                       GaussianNoise(0.5).perturb(pixels, 8, random_stream(11, 4, 2)))


def test_device_streams_repeat_for_the_same_key_and_differ_for_others(device):
    def draw(*key):
        return torch.randn(64, generator=device_stream(device, *key), device=device).cpu()

    assert torch.equal(draw(5, 1, 2), draw(5, 1, 2))
    assert not torch.equal(draw(5, 1, 2), draw(5, 1, 3)) and not torch.equal(draw(5, 1, 2), draw(5 + 2 ** 40, 1, 2))


def test_philox_seed_and_offset_use_every_bit_of_seed_and_key():
    base = philox_seed_offset(2 ** 63 + 5, 17, 2)
    assert base == philox_seed_offset(2 ** 63 + 5, 17, 2) and base[1] % 4 == 0
    assert all(0 <= part < 2 ** 64 for part in base)
    for bit in (0, 31, 32, 63):
        assert philox_seed_offset((2 ** 63 + 5) ^ (1 << bit), 17, 2) != base
        assert philox_seed_offset(2 ** 63 + 5, 17 ^ (1 << bit), 2) != base
    assert philox_seed_offset(2 ** 63 + 5, 17) != base  # the key's length counts too


def test_votes_are_counted_where_the_labels_are(device):
    labels = torch.tensor([0, 2, 2, 1, 2, 6], device=device)
    assert votes(labels, 3).tolist() == [1, 1, 3]  # labels outside the classes are dropped, as before
    assert votes(labels.cpu().numpy(), 7).tolist() == [1, 1, 3, 0, 0, 0, 1]


# ---------------------------------------------------------------- --device


def test_resolve_device_knows_cpu_auto_and_refuses_unknown_devices():
    assert resolve_device(None) == resolve_device("cpu") == resolve_device(" CPU ") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    for bad in ("tpu", "gpu", "cuda:x"):
        with pytest.raises(ConfigError, match="device"):
            resolve_device(bad)
    with pytest.raises(ConfigError, match="cuda:99"):
        resolve_device("cuda:99")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: the refusal cannot be seen here")
def test_device_cuda_without_cuda_is_one_error_line(capsys, tmp_path, digits_checkpoint):
    with pytest.raises(ConfigError, match="no CUDA device"):
        resolve_device("cuda")
    commands = [certify_args(digits_checkpoint, tmp_path / "c.tsv", "--device", "cuda"),
                ["predict", "--checkpoint", digits_checkpoint, "--n", 10, "--out", tmp_path / "p.tsv", "--device",
                 "cuda:1"],
                ["train", "--dataset", "digits", "--sigma", 0.25, "--out", tmp_path / "t", "--device", "cuda"],
                ["bench", "--inputs", "1x8x8", "--device", "cuda", "--out", tmp_path / "b.json"],
                ["reproduce", "table1", "--out", tmp_path / "r", "--device", "cuda"]]
    for args in commands:
        code, _, err = run_cli(capsys, *args)
        assert_one_line_error(code, err, "no CUDA device")
    assert not (tmp_path / "c.tsv").exists() and not (tmp_path / "t").exists()


def test_certify_on_device_cpu_writes_the_default_rows(capsys, tmp_path, digits_checkpoint):
    default, explicit = tmp_path / "a.tsv", tmp_path / "b.tsv"
    assert run_cli(capsys, *certify_args(digits_checkpoint, default))[0] == 0
    assert run_cli(capsys, *certify_args(digits_checkpoint, explicit, "--device", "cpu"))[0] == 0
    strip = lambda path: [line.split("\t")[:5] for line in path.read_text().splitlines()]
    assert strip(default) == strip(explicit)


@pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_CUDA)
def test_bench_times_floatrs_fp_and_intrs_on_the_gpu():
    from intrs import bench

    cuda = torch.device("cuda")
    results = bench.bench_certification(shapes=((1, 8, 8),), batches=(50,), samples=100, repeats=1, device=cuda)
    on_gpu = {r.contender: r for r in results if r.device == "cuda"}
    assert set(on_gpu) == {bench.float_on(cuda), bench.intrs_on(cuda)}
    assert on_gpu[bench.float_on(cuda)].ratio_to_float == 1.0 and all(r.samples_per_second > 0 for r in results)
    assert bench.FLOAT_PYTORCH in {r.contender for r in results if r.device == "cpu"}


@pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_CUDA)
def test_training_on_the_gpu_writes_a_checkpoint_that_loads_on_the_cpu(tmp_path):
    from intrs.checkpoint import load_checkpoint
    from intrs.training import TrainConfig, train

    config = TrainConfig("digits", 0.25, arch="resnet8", width=4, schedule="ci", epochs=1, eval_images=50)
    trained = train(config, tmp_path, device=torch.device("cuda"))
    assert next(trained.model.parameters()).device.type == "cpu"
    assert next(load_checkpoint(trained.path).model.parameters()).device.type == "cpu"
    assert trained.training["device"] == "cuda"


def test_a_gpu_float_run_records_its_device_and_a_cpu_run_keeps_its_settings(tmp_path, digits_checkpoint):
    """Float rows are the device's own, so a non-CPU FloatRS-fp run says where it ran (and cannot resume
    elsewhere); a CPU run's settings are what they always were. ('meta' stands in for a GPU: no rows are drawn.)"""
    import json

    from intrs.certification import CertifySettings, run
    from intrs.checkpoint import load_checkpoint
    from intrs.data import load_dataset
    from intrs.results import metadata_path

    data, settings = load_dataset("digits", "test"), CertifySettings(max_images=0)
    recorded = {}
    for where in ("cpu", "meta"):
        system = make_system("floatrs-fp", load_checkpoint(digits_checkpoint), 0.25, device=torch.device(where))
        out = run("certify", system, data, settings, tmp_path / f"{where}.tsv")
        recorded[where] = json.loads(metadata_path(out).read_text())
    assert "device" not in recorded["cpu"] and recorded["meta"]["device"] == "meta"
