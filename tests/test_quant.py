"""Graph capture, folding, conversion, the integer model file, and the engine against its fake-quantized twin."""

import re

import numpy as np
import pytest
import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from intrs import engine
from intrs.data import load_dataset
from intrs.errors import CheckpointError, ConfigError
from intrs.intmodel import load_integer_model, save_integer_model
from intrs.models import ModelConfig, build_model
from intrs.noise import DiscreteGaussianNoise, numpy_generator
from intrs.quant import QuantModel, discrete_noisy_input, lower, prepare


def float_forward(layers, x):
    """The lowered layers run in float64 with no quantization at all."""
    values = {"input": x}
    for layer in layers:
        a = values[layer.inputs[0]]
        if layer.op == "conv2d":
            y = torch.nn.functional.conv2d(a, layer.weight, layer.bias, layer.stride, layer.padding)
        elif layer.op == "fully_connected":
            y = torch.nn.functional.linear(a, layer.weight[:, :, 0, 0], layer.bias)
        elif layer.op == "add":
            y = a + values[layer.inputs[1]]
        elif layer.op == "average_pool":
            y = a.mean(dim=(2, 3), keepdim=True)
        elif layer.op == "max_pool":
            y = torch.nn.functional.max_pool2d(a, layer.kernel, layer.stride, layer.padding)
        else:
            y = torch.flatten(a, 1)
        values[layer.output] = torch.relu(y) if layer.relu else y
    return values[layer.output]


def randomize_batchnorm(model):
    generator = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=generator) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=generator) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=generator) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=generator) * 0.1)
    return model.eval()


@pytest.mark.parametrize("arch,shape", [("resnet20", (3, 16, 16)), ("resnet8", (1, 12, 12)), ("resnet50", (3, 64, 64))])
def test_lowering_folds_batchnorm_exactly(arch, shape):
    model = randomize_batchnorm(build_model(ModelConfig(arch, shape[0], 7, (0.0,) * shape[0], (1.0,) * shape[0])))
    layers, _, _ = lower(model)
    assert not any(l.op == "batchnorm" for l in layers)
    x = torch.rand(2, *shape, dtype=torch.float64)
    assert torch.allclose(float_forward(layers, x), model.double()(x), atol=1e-9)


def test_lowering_folds_the_normalization_into_the_first_convolution():
    model = randomize_batchnorm(build_model(ModelConfig("resnet8", 3, 5, (0.4, 0.5, 0.6), (0.2, 0.25, 0.3))))
    layers, _, _ = lower(model)
    x = torch.rand(2, 3, 10, 10, dtype=torch.float64)
    # Away from the border (where padding now holds raw zeros) the function is unchanged.
    inner = float_forward(layers[:1], x)[:, :, 1:-1, 1:-1]
    reference = torch.relu(model.double().bn1(model.conv1(model.normalize(x))))[:, :, 1:-1, 1:-1]
    assert torch.allclose(inner, reference, atol=1e-9)


def test_resnet20_lowers_to_the_expected_integer_ops():
    model = build_model(ModelConfig("resnet20", 1, 10, (0.3,), (0.3,)))
    ops = [layer.op for layer in lower(model)[0]]
    assert ops.count("conv2d") == 19 + 2 and ops.count("add") == 9
    assert ops[-3:] == ["average_pool", "flatten", "fully_connected"]


class WithSigmoid(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.gate = nn.Sigmoid()

    def forward(self, x):
        return self.gate(self.conv(x)).flatten(1)


class WithConcat(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)

    def forward(self, x):
        y = self.conv(x)
        return torch.cat([y, y], dim=1)


class Grouped(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, groups=2)

    def forward(self, x):
        return self.conv(x)


@pytest.mark.parametrize("model,match", [
    (WithSigmoid(), r"unsupported operation 'gate' \(call_module gate\) in module 'gate'"),
    (WithConcat(), r"unsupported operation 'cat' \(call_function cat\)"),
    (Grouped(), r"convolution 'conv' .* groups"),
])
def test_unsupported_operations_are_named_with_their_place(model, match):
    with pytest.raises(ConfigError, match=match):
        lower(model)


def tiny_quant_model(seed=0):
    """A ResNet-8 (width 4) on 8x8 pixels, lowered and calibrated on random pixels."""
    torch.manual_seed(seed)
    model = randomize_batchnorm(build_model(ModelConfig("resnet8", 1, 10, (0.3,), (0.35,), width=4)))
    qmodel = prepare(model, (1, 8, 8))
    with torch.no_grad():
        qmodel(torch.randint(0, 256, (64, 1, 8, 8)).float())
    return qmodel


def calibrated_tiny_model(seed=0):
    return tiny_quant_model(seed).to_integer_model()


def test_integer_model_file_round_trips(tmp_path):
    model = calibrated_tiny_model()
    loaded = load_integer_model(save_integer_model(model, tmp_path / "m.npz"))
    z = torch.randint(-300, 600, (16, 1, 8, 8), dtype=torch.int32)
    assert torch.equal(engine.forward(model, z), engine.forward(loaded, z))
    assert loaded.input_range == (-32768, 32767) and loaded.requantization == "double-rounding"


def test_corrupt_foreign_and_tampered_model_files_are_refused(tmp_path):
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(CheckpointError, match="not an intrs integer model"):
        load_integer_model(tmp_path / "junk.npz")
    np.savez(tmp_path / "foreign.npz", header=np.frombuffer(b'{"format": "other"}', np.uint8))
    with pytest.raises(CheckpointError, match="no 'intrs-integer-model' header"):
        load_integer_model(tmp_path / "foreign.npz")
    path = save_integer_model(calibrated_tiny_model(), tmp_path / "m.npz")
    arrays = dict(np.load(path))
    arrays["layers.0.weight"] = arrays["layers.0.weight"].astype(np.int16)
    np.savez(tmp_path / "tampered.npz", **arrays)
    with pytest.raises(CheckpointError, match="weight has dtype int16, expected int8"):
        load_integer_model(tmp_path / "tampered.npz")
    arrays = dict(np.load(path))
    arrays["layers.0.multiplier"] = np.full_like(arrays["layers.0.multiplier"], 5)
    np.savez(tmp_path / "bad_multiplier.npz", **arrays)
    with pytest.raises(CheckpointError, match="multipliers outside"):
        load_integer_model(tmp_path / "bad_multiplier.npz")
    with pytest.raises(CheckpointError, match="not found"):
        load_integer_model(tmp_path / "missing.npz")


def test_engine_rejects_float_and_out_of_range_inputs():
    model = calibrated_tiny_model()
    with pytest.raises(ConfigError, match="integer inputs"):
        engine.forward(model, torch.zeros(1, 1, 8, 8))
    with pytest.raises(ConfigError, match="range"):
        engine.forward(model, torch.full((1, 1, 8, 8), 40000, dtype=torch.int32))
    with pytest.raises(ConfigError, match="shape"):
        engine.forward(model, torch.zeros(1, 3, 8, 8, dtype=torch.int32))


class NoFloats(TorchFunctionMode):
    """Fails on any torch operation whose result is a floating-point tensor."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        self.calls += 1
        for value in result if isinstance(result, (tuple, list)) else (result,):
            if isinstance(value, torch.Tensor):
                assert not value.dtype.is_floating_point, f"{func} made a {value.dtype} tensor"
        return result


def test_forward_pass_creates_no_floating_point_value():
    model = calibrated_tiny_model()
    z = torch.randint(-300, 600, (8, 1, 8, 8), dtype=torch.int32)
    trace = []
    with NoFloats() as mode:
        logits = engine.forward(model, z, trace)
    assert mode.calls > 100 and logits.dtype == torch.int8
    assert all(not t.dtype.is_floating_point for t in trace)


def test_no_float_guard_catches_a_float():
    with pytest.raises(AssertionError, match="float32"):
        with NoFloats():
            torch.ones(2) * 0.5


def test_twin_rebuilt_from_the_file_keeps_the_quantization_grid():
    model = calibrated_tiny_model()
    twin = QuantModel.from_integer_model(model)
    z = torch.randint(-200, 500, (32, 1, 8, 8), dtype=torch.int32)
    with torch.no_grad():
        logits = twin(z.float())
    scale, zero = model.value_qparams[model.output_name]
    q = torch.round(logits / scale) + zero
    assert torch.allclose(q, torch.round(q))  # on the int8 grid
    assert (q - engine.forward(model, z)).abs().max() <= 2


def test_qat_model_matches_its_fake_quantized_twin_on_noisy_fashion_mnist(fashion_qat):
    path, metrics = fashion_qat
    model = load_integer_model(path)
    assert model.meta["method"] == "qat" and model.meta["dataset"] == "fashion-mnist"
    test = load_dataset("fashion-mnist", "test").subset(1000)
    z = discrete_noisy_input(test.images, DiscreteGaussianNoise(0.25), numpy_generator(7))
    logits = engine.forward(model, z.to(torch.int32))
    with torch.no_grad():
        twin = QuantModel.from_integer_model(model)(z)
    engine_labels, twin_labels = engine.argmax_lowest(logits), twin.argmax(1)
    agreement = float((engine_labels == twin_labels).float().mean())
    assert agreement >= 0.99
    # The rest are near-ties: the twin rounds once where TFLite rounds twice (SRDHM then RDBP).
    scale, zero = model.value_qparams[model.output_name]
    twin_q = torch.round(twin / scale) + zero
    for i in torch.nonzero(engine_labels != twin_labels).flatten():
        top2 = twin_q[i].topk(2).values
        assert top2[0] - top2[1] <= 2
    assert float((engine_labels == test.labels).float().mean()) > 0.5  # it learned something


def test_resnet50_converts_and_runs_on_the_integer_engine():
    """Bottlenecks, the 7x7 stride-2 stem and max pooling: everything ResNet-50 needs."""
    torch.manual_seed(0)
    model = randomize_batchnorm(build_model(ModelConfig("resnet50", 3, 11, (0.485, 0.456, 0.406),
                                                        (0.229, 0.224, 0.225))))
    qmodel = prepare(model, (3, 48, 48))
    with torch.no_grad():
        qmodel(torch.randint(0, 256, (8, 3, 48, 48)).float())
    integer = qmodel.to_integer_model()
    assert sum(layer.op == "max_pool" for layer in integer.layers) == 1
    z = torch.randint(-100, 356, (4, 3, 48, 48), dtype=torch.int32)
    logits = engine.forward(integer, z)
    with torch.no_grad():
        twin = QuantModel.from_integer_model(integer)(z.float())
    scale, zero = integer.value_qparams[integer.output_name]
    assert logits.shape == (4, 11) and logits.dtype == torch.int8
    assert (torch.round(twin / scale) + zero - logits).abs().float().mean() < 2


# ---------------------------------------------------------------- QAT that cannot be converted (issue 15)


def pixels(count, seed):
    return torch.randint(0, 256, (count, 1, 8, 8), generator=torch.Generator().manual_seed(seed)).float()


def engine_matches_twin(model):
    z = torch.randint(-100, 356, (16, 1, 8, 8), dtype=torch.int32)
    with torch.no_grad():
        twin = QuantModel.from_integer_model(model)(z.float())
    scale, zero = model.value_qparams[model.output_name]
    return bool((torch.round(twin / scale) + zero - engine.forward(model, z)).abs().max() <= 2)


def test_a_residual_branch_run_off_below_the_relu_keeps_its_add_convertible():
    """Issue 15: a residual branch driven far negative, where relu(x1 + x2) is 0, under QAT's moving average.

    Fine-tuning leaves such values with no gradient to pull them back (on Fashion-MNIST at
    lr 0.1 layer1.0's branch reached -5e16 in 7 batches); here one channel is put there at
    once. Before the fix its observer stretched x1's grid over them and the conversion failed
    with "an ADD multiplier must lie in (0, 1), got 57.496", naming no layer.
    """
    qmodel = tiny_quant_model()
    calibrated = qmodel.qparams["layer1_0_conv2"][0]
    qmodel.ema = 0.01
    with torch.no_grad():
        qmodel.biases["layer1_0_conv2"][0] = -1e9
        for seed in range(10):
            qmodel(pixels(16, seed))
    model = qmodel.to_integer_model()
    assert qmodel.qparams["layer1_0_conv2"][0] <= 2 * calibrated  # the live channels keep their grid
    assert engine_matches_twin(model)


def test_an_add_whose_output_stays_zero_keeps_a_scale_tflite_can_use():
    """A residual block that died: its output range decays 0.99 a QAT batch, towards no floor at all.

    At QAT's 0.01 it takes about 1,400 batches (three Fashion-MNIST epochs) to fall below
    2^-19 of the inputs' scale, past which TFLite's ADD cannot be built; a 0.1 average
    shows it in 200.
    """
    qmodel = tiny_quant_model()
    qmodel.ema = 0.1
    with torch.no_grad():
        qmodel.biases["layer1_0_conv2"].fill_(-1e3)
        for seed in range(200):
            qmodel(pixels(4, seed))
    assert qmodel.ranges["add"][1] < 1e-8
    model = qmodel.to_integer_model()
    add = next(layer for layer in model.layers if layer.name == "add")
    assert add.output_scale >= max(add.input1_scale, add.input2_scale) * 2 ** -16
    assert engine_matches_twin(model)


def test_a_layer_that_cannot_convert_is_named_with_its_inputs_and_scales():
    qmodel = tiny_quant_model().freeze()
    scale, zero = qmodel.qparams["add_1"]
    qmodel.qparams["add_1"] = (scale * 1e-9, zero)
    with pytest.raises(ConfigError, match=r"cannot convert layer 'add_1' \(ADD of 'layer2_0_conv2' and "
                                          r"'layer2_0_downsample_0'\) to TFLite int8: its output multiplier .* "
                                          r"the output scale .* has collapsed against the input scales"):
        qmodel.check_convertible()
    qmodel.qparams["add_1"] = (scale, zero)
    qmodel.qparams["layer3_0_conv1"] = (1e-16, -128)
    with pytest.raises(ConfigError, match=r"cannot convert layer 'layer3_0_conv1' \(CONV_2D of 'add_1'\) .* "
                                          r"beyond TFLite's 2\^30"):
        qmodel.to_integer_model()


class Recorder:
    """A progress helper that keeps what it was asked to show."""

    def __init__(self):
        self.bars, self.shown = [], 0

    def __call__(self, iterable, **kwargs):
        self.bars.append(kwargs)
        for item in iterable:
            self.shown += 1
            yield item


def dead_stem(checkpoint):
    """The checkpoint with a first layer whose output is always 0 and whose weights are huge."""
    with torch.no_grad():
        checkpoint.model.bn1.weight.mul_(1e5)
        checkpoint.model.bn1.bias.fill_(-1e12)
    return checkpoint


def test_quantize_refuses_a_calibration_that_cannot_convert_before_fine_tuning(digits_checkpoint):
    from intrs.checkpoint import load_checkpoint
    from intrs.quant import QuantizeConfig, quantize

    progress = Recorder()
    with pytest.raises(ConfigError, match=r"cannot convert layer 'conv1' \(CONV_2D of 'input'\).* \(found after "
                                          r"calibration, before any fine-tuning"):
        quantize(dead_stem(load_checkpoint(digits_checkpoint)),
                 QuantizeConfig("qat", train_subset=64, calibration_images=64, eval_images=10), progress=progress)
    assert progress.shown == 0


def test_qat_that_diverges_stops_within_the_epoch_and_says_what_to_do(digits_checkpoint, tmp_path):
    from intrs.checkpoint import load_checkpoint
    from intrs.quant import QuantizeConfig, quantize

    progress = Recorder()
    config = QuantizeConfig("qat", epochs=1, lr=1e4, batch_size=8, train_subset=256, calibration_images=64,
                            eval_images=10)
    with pytest.raises(ConfigError, match=r"(diverged|cannot convert layer '\w+').* \(found in QAT epoch 1/1, batch "
                                          r"\d+/32\); fine-tune at a lower --lr than 10000; nothing was saved"):
        quantize(load_checkpoint(digits_checkpoint), config, progress=progress, state_path=tmp_path / "s.pt")
    # One bar for the whole fine-tuning (its time left is the whole run's), stopped at the first check.
    assert progress.bars == [{"total": 32, "desc": "QAT fine-tuning (1 epoch of 32 batches)", "unit": "batch"}]
    assert progress.shown <= 25 and not (tmp_path / "s.pt").exists()


def test_qat_keeps_its_fine_tuned_state_when_the_conversion_fails(capsys, tmp_path, digits_checkpoint, monkeypatch):
    from intrs.cli import main

    def run(*args):
        code = main(["quantize", "--checkpoint", str(digits_checkpoint), "--qat", "--epochs", "2", "--train-subset",
                     "64", "--batch-size", "32", "--calibration-images", "64", "--eval-images", "20",
                     *map(str, args)])
        return code, ([""] + capsys.readouterr().err.strip().splitlines())[-1]  # the line after any progress bar

    def fails(self):
        raise ConfigError("cannot convert layer 'add' (ADD of 'layer1_0_conv2' and 'conv1') to TFLite int8: test")

    out = tmp_path / "m.npz"
    state = tmp_path / "m.npz.qat-state.pt"
    with monkeypatch.context() as patch:
        patch.setattr(QuantModel, "to_integer_model", fails)
        code, err = run("--out", out)
    assert code == 2 and err.startswith("intrs: error: cannot convert layer 'add'")
    assert f"the fine-tuned state is saved in {state}" in err and f"--from-state {state}" in err
    assert state.exists() and not out.exists() and not list(tmp_path.glob("*.tmp")) + list(tmp_path.glob(".*.tmp"))
    code, err = run("--out", out)
    assert code == 2 and "holds the fine-tuning of an earlier run" in err
    code, err = run("--out", out, "--from-state", state)
    assert code == 0 and out.exists() and state.exists()
    # The same integer model as a run that converts at once, which leaves no state behind.
    code, err = run("--out", tmp_path / "direct.npz")
    assert code == 0 and not (tmp_path / "direct.npz.qat-state.pt").exists()
    kept, direct = load_integer_model(out), load_integer_model(tmp_path / "direct.npz")
    z = torch.randint(-100, 356, (32, 1, 8, 8), dtype=torch.int32)
    assert torch.equal(engine.forward(kept, z), engine.forward(direct, z))
    assert kept.value_qparams == direct.value_qparams


def test_calibrate_takes_pixels_or_unit_floats_and_refuses_other_ranges(digits_checkpoint):
    """Issue 15: there was no calibrate(); the prepared model takes pixel steps, and calibrating it on images / 255
    silently gave ranges 255 times too small. uint8 and [0, 1] floats now calibrate alike; other data is refused."""
    from intrs.checkpoint import load_checkpoint
    from intrs.data import load_dataset
    from intrs.quant import prepare

    checkpoint = load_checkpoint(digits_checkpoint)
    pixels = load_dataset("digits", "train").images[:64]
    from_uint8 = prepare(checkpoint.model, pixels.shape[1:]).calibrate(pixels)
    from_floats = prepare(checkpoint.model, pixels.shape[1:]).calibrate(pixels.float() / 255)
    assert from_uint8.ranges == from_floats.ranges and from_uint8.ranges
    for wrong, fragment in [(pixels.float(), "float pixels must lie in [0, 1], got [0, 255]"),
                            (pixels.float() / 255 - 0.5, "float pixels must lie in [0, 1]"),
                            (pixels[0], "(N, C, H, W)"), (pixels.to(torch.int32), "dtype torch.int32")]:
        with pytest.raises(ConfigError, match=re.escape(fragment)):
            prepare(checkpoint.model, pixels.shape[1:]).calibrate(wrong)
    from_uint8.to_integer_model()
    with pytest.raises(ConfigError, match="frozen"):
        from_uint8.calibrate(pixels)


def test_readme_quantize_your_own_model_runs_as_printed(digits_checkpoint):
    """The README's "prepare, calibrate, .to_integer_model()" example, executed as it is printed."""
    from pathlib import Path

    from intrs.checkpoint import load_checkpoint
    from intrs.data import load_dataset

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, re.S)
    example = next(block for block in blocks if ".calibrate(" in block)
    train = load_dataset("digits", "train")
    namespace = {"model": load_checkpoint(digits_checkpoint).model, "train_images": train.images,
                 "image": load_dataset("digits", "test").images[0].float() / 255}
    exec(compile(example, "README.md", "exec"), namespace)
    cert = namespace["cert"]
    assert cert.prediction in range(-1, 10) and cert.radius >= 0
    assert namespace["int_model"].num_classes == 10
