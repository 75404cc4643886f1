"""Graph capture, folding, conversion, the integer model file, and the engine against its fake-quantized twin."""

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


def calibrated_tiny_model(seed=0):
    torch.manual_seed(seed)
    model = randomize_batchnorm(build_model(ModelConfig("resnet8", 1, 10, (0.3,), (0.35,), width=4)))
    qmodel = prepare(model, (1, 8, 8))
    with torch.no_grad():
        qmodel(torch.randint(0, 256, (64, 1, 8, 8)).float())
    return qmodel.to_integer_model()


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
