"""Float model -> integer model: graph capture, folding, fake quantization, QAT, PTQ, conversion.

The model's traced graph (torch.fx), not knowledge of our ResNets, decides what
is converted: any model made of the supported operations converts, and anything
else is refused with its name and place. Lowering folds the input normalization
and every batch norm into the convolution before it and fuses ReLUs into the
convolution or add they follow, giving the layers of the integer model.

``QuantModel`` runs those layers in float with fake quantization (straight-through
gradients): per-output-channel symmetric int8 weights, asymmetric int8
activations with tracked ranges, int32 biases at scale s_in * s_w. It is trained
(QAT, with discrete Gaussian noise on the integer input grid) or calibrated (PTQ),
then converted: every scale becomes TFLite's (M0, shift) pair. Built back from an
integer model (``QuantModel.from_integer_model``), it is the fake-quantized twin
that the engine's integers are compared with and that attacks differentiate.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn

from .errors import ConfigError
from .intmodel import (AddLayer, ConvLayer, IntegerModel, PoolLayer, quantize_multiplier,
                       quantize_multiplier_smaller_than_one)
from .models import Normalize
from .noise import PIXEL_MAX

INT8_MIN, INT8_MAX, WEIGHT_MAX = -128, 127, 127
INT16_RANGE = (-(2 ** 15), 2 ** 15 - 1)
INPUT_SCALE = float(np.float32(1.0 / PIXEL_MAX))  # x_q is the pixel itself: s = 1/255, zero point 0 (SPEC 2)
SUPPORTED = "convolution, batch norm, ReLU, residual add, average/max pooling, flatten, linear"


# ---------------------------------------------------------------- lowering a traced graph


@dataclass
class FloatLayer:
    """A layer of the integer model before quantization: float weights (BN and normalization folded)."""

    name: str
    op: str
    inputs: list[str]
    output: str
    weight: torch.Tensor | None = None  # (O, C, kh, kw); linear as (O, C, 1, 1)
    bias: torch.Tensor | None = None
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    kernel: tuple[int, int] = (1, 1)
    is_global: bool = False
    relu: bool = False
    extra: dict = field(default_factory=dict)


def _pair(value) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else tuple(value)


def _where(node: fx.Node) -> str:
    target = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", str(node.target))
    return f"'{node.name}' ({node.op} {target})"


class _Tracer(fx.Tracer):
    """torch.fx tracing that keeps the input normalization as one node (it is folded, not traced into)."""

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return isinstance(module, Normalize) or super().is_leaf_module(module, qualified_name)


def lower(model: nn.Module) -> tuple[list[FloatLayer], str, str]:
    """Trace ``model`` and lower it to integer-model layers; returns (layers, input name, output name)."""
    try:
        graph = fx.GraphModule(model, _Tracer().trace(model.eval()))
    except Exception as exc:
        raise ConfigError(f"cannot trace the model with torch.fx ({type(exc).__name__}: {str(exc)[:200]}); "
                          f"intrs converts models made of {SUPPORTED}") from None
    modules = dict(graph.named_modules())
    users = {node: len(node.users) for node in graph.graph.nodes}
    layers: list[FloatLayer] = []
    produced: dict[str, FloatLayer] = {}  # value -> the layer that writes it (for folding)
    alias: dict[str, str] = {}  # fx node -> value name
    normalized: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # value -> (mean, std) still to fold
    input_name = output_name = None

    def value(node) -> str:
        if not isinstance(node, fx.Node):
            raise ConfigError(f"constant operand {node!r} is not supported; intrs converts models made of {SUPPORTED}")
        return alias[node.name]

    def foldable(node: fx.Node, kinds: tuple[str, ...]) -> FloatLayer:
        source = node.args[0]
        layer = produced.get(value(source))
        if layer is None or layer.op not in kinds or users[source] != 1:
            raise ConfigError(f"{_where(node)} must directly follow a {' or '.join(kinds)} whose output "
                              "nothing else reads, to be folded into it")
        return layer

    for node in graph.graph.nodes:
        if node.op == "placeholder":
            if input_name is not None:
                raise ConfigError("the model takes several inputs; intrs converts single-input classifiers")
            input_name = alias[node.name] = "input"
            continue
        if node.op == "output":
            output_name = value(node.args[0])
            continue
        module = modules.get(node.target) if node.op == "call_module" else None
        kind = _classify(node, module)
        if kind == "normalize":
            normalized[alias.setdefault(node.name, value(node.args[0]))] = (module.mean.flatten(), module.std.flatten())
            continue
        if kind in ("conv", "linear"):
            source = value(node.args[0])
            if kind == "linear" and source in normalized:
                raise ConfigError(f"{_where(node)} reads the normalized input: the normalization folds only "
                                  "into a convolution")
            layer = _conv_layer(node.name, module, source, normalized.pop(source, None), kind)
        elif kind == "batchnorm":
            layer = foldable(node, ("conv2d",))
            _fold_batchnorm(layer, module)
            alias[node.name] = layer.output
            continue
        elif kind == "relu":
            layer = foldable(node, ("conv2d", "fully_connected", "add"))
            layer.relu = True
            alias[node.name] = layer.output
            continue
        elif kind == "add":
            layer = FloatLayer(node.name, "add", [value(node.args[0]), value(node.args[1])], node.name)
        elif kind in ("average_pool", "max_pool"):
            layer = _pool_layer(node, module, kind, value(node.args[0]))
        elif kind == "flatten":
            layer = FloatLayer(node.name, "flatten", [value(node.args[0])], node.name)
        else:
            location = f" in module '{node.target}'" if node.op == "call_module" else ""
            raise ConfigError(f"unsupported operation {_where(node)}{location}: intrs converts models made of "
                              f"{SUPPORTED}")
        for name in layer.inputs:
            if name in normalized:
                raise ConfigError(f"{_where(node)} reads the normalized input; the normalization can only be "
                                  "folded into a convolution that reads it")
        layers.append(layer)
        produced[layer.output] = layer
        alias[node.name] = layer.output
    return layers, input_name, output_name


def _classify(node: fx.Node, module: nn.Module | None) -> str:
    if module is not None:
        if isinstance(module, Normalize):
            return "normalize"
        if isinstance(module, nn.Conv2d):
            if module.groups != 1 or _pair(module.dilation) != (1, 1) or module.padding_mode != "zeros" \
                    or isinstance(module.padding, str):
                raise ConfigError(f"convolution {_where(node)} uses groups, dilation or non-zero padding: "
                                  "not supported")
            return "conv"
        if isinstance(module, nn.Linear):
            return "linear"
        if isinstance(module, nn.BatchNorm2d):
            return "batchnorm"
        if isinstance(module, nn.ReLU):
            return "relu"
        if isinstance(module, nn.AdaptiveAvgPool2d):
            return "average_pool" if _pair(module.output_size) == (1, 1) else "unsupported"
        if isinstance(module, (nn.AvgPool2d, nn.MaxPool2d)):
            return "average_pool" if isinstance(module, nn.AvgPool2d) else "max_pool"
        if isinstance(module, nn.Flatten):
            return "flatten"
        return "unsupported"
    if node.op == "call_function":
        if node.target in (operator.add, torch.add) and len(node.args) == 2 and not node.kwargs:
            return "add"
        if node.target in (F.relu, torch.relu):
            return "relu"
        if node.target is torch.flatten and (node.args[1:] == (1,) or node.kwargs == {"start_dim": 1}):
            return "flatten"
    if node.op == "call_method" and node.target == "flatten" and node.args[1:] == (1,):
        return "flatten"
    return "unsupported"


def _conv_layer(name: str, module: nn.Module, source: str, normalization, kind: str) -> FloatLayer:
    weight = module.weight.detach().clone().to(torch.float64)
    if kind == "linear":
        weight = weight[:, :, None, None]
    bias = (module.bias.detach().clone().to(torch.float64) if module.bias is not None
            else torch.zeros(weight.shape[0], dtype=torch.float64))
    if normalization is not None:
        # conv(W, (x - m) / s) = conv(W / s, x) - sum W m / s. Padding then holds raw zeros
        # (the input zero point) instead of normalized zeros, a small change at the border
        # that QAT trains with and PTQ calibrates on.
        mean, std = (t.to(torch.float64).view(1, -1, 1, 1) for t in normalization)
        bias = bias - (weight * (mean / std)).sum(dim=(1, 2, 3))
        weight = weight / std
    if kind == "linear":
        return FloatLayer(name, "fully_connected", [source], name, weight, bias)
    return FloatLayer(name, "conv2d", [source], name, weight, bias, _pair(module.stride), _pair(module.padding),
                      _pair(module.kernel_size))


def _fold_batchnorm(layer: FloatLayer, bn: nn.BatchNorm2d) -> None:
    """conv followed by batch norm (eval statistics) = one conv with scaled weights and a new bias."""
    scale = bn.weight.detach().to(torch.float64) / torch.sqrt(bn.running_var.to(torch.float64) + bn.eps)
    layer.weight = layer.weight * scale.view(-1, 1, 1, 1)
    layer.bias = (layer.bias - bn.running_mean.to(torch.float64)) * scale + bn.bias.detach().to(torch.float64)


def _pool_layer(node: fx.Node, module: nn.Module, kind: str, source: str) -> FloatLayer:
    if isinstance(module, nn.AdaptiveAvgPool2d):
        return FloatLayer(node.name, "average_pool", [source], node.name, is_global=True)
    if getattr(module, "ceil_mode", False) or _pair(getattr(module, "dilation", 1)) != (1, 1):
        raise ConfigError(f"pooling {_where(node)} uses ceil_mode or dilation: not supported")
    if kind == "average_pool" and _pair(module.padding) != (0, 0) and module.count_include_pad:
        raise ConfigError(f"average pooling {_where(node)} counts padding; use count_include_pad=False "
                          "(TFLite divides by the real points)")
    return FloatLayer(node.name, kind, [source], node.name, kernel=_pair(module.kernel_size),
                      stride=_pair(module.stride or module.kernel_size), padding=_pair(module.padding))


# ---------------------------------------------------------------- fake quantization


def round_half_away(x: torch.Tensor) -> torch.Tensor:
    """Round to nearest, ties away from zero (C's std::round), as TFLite's kernels round."""
    return torch.sign(x) * torch.floor(torch.abs(x) + 0.5)


def _straight_through(real: torch.Tensor, quantized: torch.Tensor) -> torch.Tensor:
    """quantized in the forward pass, the identity's gradient in the backward pass (STE)."""
    return real + (quantized - real).detach()


def activation_qparams(low: float, high: float) -> tuple[float, int]:
    """Asymmetric int8 (scale, zero point) for the range [low, high], which is widened to hold 0."""
    low, high = min(low, 0.0), max(high, 0.0)
    scale = float(np.float32(max(high - low, 1e-8) / (INT8_MAX - INT8_MIN)))
    zero_point = int(np.clip(round(INT8_MIN - low / scale), INT8_MIN, INT8_MAX))
    return scale, zero_point


def weight_scales(weight: torch.Tensor) -> torch.Tensor:
    """Per-output-channel symmetric scales max|W| / 127 (float32; 1 for an all-zero channel)."""
    largest = weight.detach().abs().flatten(1).max(dim=1).values
    return torch.where(largest > 0, largest / WEIGHT_MAX, torch.ones_like(largest)).to(torch.float32)


class QuantModel(nn.Module):
    """The lowered layers run in float with fake quantization; trainable (QAT) and calibratable (PTQ)."""

    def __init__(self, layers: list[FloatLayer], input_name: str, output_name: str, input_shape, meta: dict):
        super().__init__()
        self.specs, self.input_name, self.output_name = layers, input_name, output_name
        self.input_shape, self.meta = tuple(input_shape), dict(meta)
        self.weights, self.biases = nn.ParameterDict(), nn.ParameterDict()
        for layer in layers:
            if layer.weight is not None:
                self.weights[layer.name] = nn.Parameter(layer.weight.to(torch.float32))
                # float64: a first-layer int32 bias can exceed float32's 24-bit mantissa
                self.biases[layer.name] = nn.Parameter(layer.bias.to(torch.float64))
        # value -> observed [low, high] and frozen (scale, zero point)
        self.ranges: dict[str, list[float]] = {}
        self.qparams: dict[str, tuple[float, int]] = {input_name: (INPUT_SCALE, 0)}
        self.frozen_weight_scales: dict[str, torch.Tensor] = {}
        self.observe = True
        self.ema = None  # None: running min/max (PTQ); a float in (0, 1): exponential moving average (QAT)
        self.input_range = INT16_RANGE
        self.input_saturation: tuple[int, int] | None = None

    # -- ranges

    def _observe(self, name: str, y: torch.Tensor) -> None:
        low, high = float(y.detach().min()), float(y.detach().max())
        if name not in self.ranges:
            self.ranges[name] = [low, high]
        elif self.ema is None:
            self.ranges[name] = [min(self.ranges[name][0], low), max(self.ranges[name][1], high)]
        else:
            old = self.ranges[name]
            self.ranges[name] = [old[0] + self.ema * (low - old[0]), old[1] + self.ema * (high - old[1])]
        self.qparams[name] = activation_qparams(*self.ranges[name])

    def freeze(self) -> "QuantModel":
        """Stop tracking ranges and weight scales: the quantization grid is fixed from now on."""
        self.observe = False
        for layer in self.specs:
            if layer.weight is not None:
                self.frozen_weight_scales[layer.name] = weight_scales(self.weights[layer.name])
        return self

    # -- forward

    def _fake_activation(self, name: str, y: torch.Tensor, act_min: int | None = None) -> torch.Tensor:
        if self.observe:
            self._observe(name, y)
        scale, zero_point = self.qparams[name]
        q = torch.clamp(torch.round(y / scale) + zero_point, INT8_MIN if act_min is None else act_min, INT8_MAX)
        return _straight_through(y, (q - zero_point) * scale)

    def _weight_and_bias(self, name: str, input_scale: float) -> tuple[torch.Tensor, torch.Tensor]:
        weight, bias = self.weights[name], self.biases[name]
        scales = self.frozen_weight_scales.get(name)
        if scales is None:
            scales = weight_scales(weight)
        shape = (-1,) + (1,) * (weight.dim() - 1)
        q_weight = torch.clamp(torch.round(weight / scales.view(shape)), -WEIGHT_MAX, WEIGHT_MAX)
        bias_scale = scales.to(torch.float64) * input_scale
        q_bias = torch.round(bias.to(torch.float64) / bias_scale)
        return (_straight_through(weight, q_weight * scales.view(shape)),
                _straight_through(bias, q_bias * bias_scale).to(weight.dtype))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Fake-quantized logits for integer inputs z (pixel steps, x_q = p + k) given as a float tensor."""
        if self.input_saturation is not None:
            z = torch.clamp(z, *self.input_saturation)
        values = {self.input_name: z * INPUT_SCALE}
        for layer in self.specs:
            x = values[layer.inputs[0]]
            if layer.op in ("conv2d", "fully_connected"):
                input_scale = self.qparams[layer.inputs[0]][0]
                weight, bias = self._weight_and_bias(layer.name, input_scale)
                if layer.op == "conv2d":
                    y = F.conv2d(x, weight, bias, layer.stride, layer.padding)
                else:
                    y = F.linear(x, weight[:, :, 0, 0], bias)
                y = F.relu(y) if layer.relu else y
                values[layer.output] = self._fake_activation(layer.output, y)
            elif layer.op == "add":
                y = x + values[layer.inputs[1]]
                values[layer.output] = self._fake_activation(layer.output, F.relu(y) if layer.relu else y)
            else:
                self.qparams[layer.output] = self.qparams[layer.inputs[0]]
                values[layer.output] = self._pool(layer, x)
        return values[self.output_name]

    def _pool(self, layer: FloatLayer, x: torch.Tensor) -> torch.Tensor:
        if layer.op == "flatten":
            return torch.flatten(x, 1)
        if layer.op == "max_pool":
            return F.max_pool2d(x, layer.kernel, layer.stride, layer.padding)
        # Average pooling rounds in the integer domain: round half away (sum q / count).
        scale, zero_point = self.qparams[layer.inputs[0]]
        if layer.is_global:
            real = x.mean(dim=(2, 3), keepdim=True)
        else:
            real = F.avg_pool2d(x, layer.kernel, layer.stride, layer.padding, count_include_pad=False)
        q = torch.round(x.detach() / scale) + zero_point
        if layer.is_global:
            mean_q = q.mean(dim=(2, 3), keepdim=True)
        else:
            mean_q = F.avg_pool2d(q, layer.kernel, layer.stride, layer.padding, count_include_pad=False)
        return _straight_through(real, (round_half_away(mean_q) - zero_point) * scale)

    # -- conversion

    def to_integer_model(self) -> IntegerModel:
        """Convert the frozen fake-quantized model to integers (QuantizeMultiplier per channel)."""
        if self.observe:
            self.freeze()
        missing = [l.output for l in self.specs if l.output not in self.qparams]
        if missing:
            raise ConfigError(f"no activation ranges for {missing[:3]}: calibrate (run data through) before converting")
        layers = []
        for spec in self.specs:
            layers.append(self._convert_layer(spec))
        return IntegerModel(self.input_name, self.input_shape, self.input_range, INPUT_SCALE, layers,
                            self.output_name, dict(self.qparams), "double-rounding", self.meta, self.input_saturation)

    def _convert_layer(self, spec: FloatLayer):
        qp = self.qparams
        out_scale, out_zero = qp[spec.output]
        act_min = out_zero if spec.relu else INT8_MIN
        if spec.op in ("conv2d", "fully_connected"):
            in_scale, in_zero = qp[spec.inputs[0]]
            weight = self.weights[spec.name].detach()
            scales = self.frozen_weight_scales[spec.name]
            q_weight = torch.clamp(torch.round(weight / scales.view(-1, 1, 1, 1)), -WEIGHT_MAX, WEIGHT_MAX)
            bias_scale = scales.to(torch.float64) * in_scale
            q_bias = torch.round(self.biases[spec.name].detach().to(torch.float64) / bias_scale)
            q_bias = torch.clamp(q_bias, -(2 ** 31), 2 ** 31 - 1)
            # SPEC 6: M = double(s_in) * double(s_w[c]) / double(s_out), the scales as float32.
            pairs = [quantize_multiplier(float(np.float32(in_scale)) * float(s) / float(np.float32(out_scale)))
                     for s in scales.tolist()]
            return ConvLayer(spec.name, spec.op, list(spec.inputs), spec.output,
                             q_weight.to(torch.int8).numpy(), q_bias.to(torch.int32).numpy(),
                             np.array([p[0] for p in pairs], dtype=np.int32),
                             np.array([p[1] for p in pairs], dtype=np.int32),
                             spec.stride, spec.padding, in_zero, out_zero, act_min, INT8_MAX, in_scale, out_scale,
                             scales.numpy().astype(np.float32), spec.relu)
        if spec.op == "add":
            (s1, z1), (s2, z2) = qp[spec.inputs[0]], qp[spec.inputs[1]]
            # TFLite's int8 ADD preparation (kernels/add.cc): both inputs to twice the larger scale.
            twice_max = 2 * max(float(np.float32(s1)), float(np.float32(s2)))
            m1 = quantize_multiplier_smaller_than_one(float(np.float32(s1)) / twice_max)
            m2 = quantize_multiplier_smaller_than_one(float(np.float32(s2)) / twice_max)
            mo = quantize_multiplier_smaller_than_one(twice_max / ((1 << 20) * float(np.float32(out_scale))))
            return AddLayer(spec.name, "add", list(spec.inputs), spec.output, z1, z2, out_zero, m1[0], m1[1],
                            m2[0], m2[1], mo[0], mo[1], act_min, INT8_MAX, s1, s2, out_scale, spec.relu)
        return PoolLayer(spec.name, spec.op, list(spec.inputs), spec.output, spec.kernel, spec.stride, spec.padding,
                         spec.is_global)

    @classmethod
    def from_integer_model(cls, model: IntegerModel) -> "QuantModel":
        """The fake-quantized twin of an integer model: the same grid, in float, differentiable."""
        specs = []
        for layer in model.layers:
            if isinstance(layer, ConvLayer):
                in_scale = model.value_qparams[layer.inputs[0]][0]
                scales = torch.from_numpy(layer.weight_scale.astype(np.float32))
                weight = torch.from_numpy(layer.weight.astype(np.float32)) * scales.view(-1, 1, 1, 1)
                bias = torch.from_numpy(layer.bias.astype(np.float64)) * scales.to(torch.float64) * in_scale
                specs.append(FloatLayer(layer.name, layer.op, list(layer.inputs), layer.output, weight, bias,
                                        tuple(layer.stride), tuple(layer.padding), relu=layer.relu))
            elif isinstance(layer, AddLayer):
                specs.append(FloatLayer(layer.name, "add", list(layer.inputs), layer.output, relu=layer.relu))
            else:
                specs.append(FloatLayer(layer.name, layer.op, list(layer.inputs), layer.output,
                                        kernel=tuple(layer.kernel), stride=tuple(layer.stride),
                                        padding=tuple(layer.padding), is_global=layer.is_global))
        twin = cls(specs, model.input_name, model.output_name, model.input_shape, model.meta)
        twin.qparams = dict(model.value_qparams)
        twin.observe = False
        twin.input_range = tuple(model.input_range)
        twin.input_saturation = model.input_saturation
        for layer in model.layers:
            if isinstance(layer, ConvLayer):
                twin.frozen_weight_scales[layer.name] = torch.from_numpy(layer.weight_scale.astype(np.float32))
        return twin.eval()


def prepare(model: nn.Module, input_shape: tuple[int, int, int], meta: dict | None = None) -> QuantModel:
    """Lower a float model to a ``QuantModel`` (no ranges yet: calibrate or train it next)."""
    layers, input_name, output_name = lower(model)
    return QuantModel(layers, input_name, output_name, input_shape, meta or {})


# ---------------------------------------------------------------- QAT and PTQ


@dataclass(frozen=True)
class QuantizeConfig:
    """How to make the integer model: QAT (IntRS) or PTQ (the FloatRS-quant baseline)."""

    method: str  # "qat" or "ptq"
    epochs: int = 1  # QAT fine-tuning epochs
    lr: float = 0.01
    batch_size: int = 128
    train_subset: int | None = None
    calibration_images: int = 1000
    calibration_noise: bool | None = None  # default: QAT calibrates on noisy inputs, PTQ on clean ones
    seed: int = 0
    eval_images: int = 500
    saturate_input: bool = False  # saturate the noisy input to [0, 255] first (for TFLite int8 export)

    def check(self) -> "QuantizeConfig":
        if self.method not in ("qat", "ptq"):
            raise ConfigError(f"quantization method must be 'qat' or 'ptq', got {self.method!r}")
        if self.epochs < 0 or self.lr <= 0 or self.batch_size < 1 or self.calibration_images < 1:
            raise ConfigError(f"epochs >= 0, lr > 0, batch size >= 1 and calibration images >= 1 needed, got {self}")
        return self


def discrete_noisy_input(images: torch.Tensor, noise, generator) -> torch.Tensor:
    """x_q + k for a uint8 batch: the integer input of IntRS, as a float tensor of integers (for the twin)."""
    k = noise.table.sample(tuple(images.shape), generator)
    return (torch.from_numpy(k) + images.to(torch.int32)).to(torch.float32)


def quantize(checkpoint, config: QuantizeConfig, data_dir=None, progress=None) -> tuple[IntegerModel, dict]:
    """Quantize a float checkpoint: QAT with discrete Gaussian noise at its training sigma, or PTQ.

    QAT (the paper's IntRS model): lower, calibrate ranges on noisy training images,
    then fine-tune with fake quantization (straight-through estimator) on
    x_q + k, k ~ N_Z(0, (255 sigma)^2), tracking activation ranges by moving
    average. PTQ (FloatRS-quant): lower and calibrate on clean training images,
    no training. Returns the integer model and its metrics (twin and engine
    accuracy under discrete noise, and their agreement).
    """
    from . import engine
    from .data import augment, load_dataset
    from .noise import DiscreteGaussianNoise, numpy_generator
    from .progress import no_progress
    from .rng import STAGE_EVAL, STAGE_TRAIN, stream_seed

    progress = progress or no_progress
    config.check()
    train_set = load_dataset(checkpoint.dataset, "train", data_dir).subset(config.train_subset)
    checkpoint.check_fits(train_set.info)
    noise = DiscreteGaussianNoise(checkpoint.sigma)
    meta = {"arch": checkpoint.config.arch, "dataset": checkpoint.dataset, "sigma": checkpoint.sigma,
            "method": config.method, "checkpoint": str(checkpoint.path), "seed": config.seed,
            "epochs": config.epochs if config.method == "qat" else 0}
    torch.manual_seed(stream_seed(config.seed, STAGE_TRAIN))
    qmodel = prepare(checkpoint.model, train_set.info.shape, meta)
    if config.saturate_input:
        qmodel.input_saturation = (0, 255)
        qmodel.meta["input_saturation"] = [0, 255]

    noisy_calibration = config.calibration_noise if config.calibration_noise is not None else config.method == "qat"
    generator = numpy_generator(stream_seed(config.seed, STAGE_TRAIN, 0))
    calibration = train_set.images[: config.calibration_images]
    with torch.no_grad():
        for start in range(0, len(calibration), config.batch_size):
            images = calibration[start:start + config.batch_size]
            qmodel(discrete_noisy_input(images, noise, generator) if noisy_calibration else images.to(torch.float32))

    if config.method == "qat" and config.epochs > 0:
        qmodel.ema = 0.01
        optimizer = torch.optim.SGD(qmodel.parameters(), lr=config.lr, momentum=0.9)
        for epoch in range(1, config.epochs + 1):
            for group in optimizer.param_groups:  # the last epoch at a tenth of the rate
                group["lr"] = config.lr * (0.1 if epoch == config.epochs and config.epochs > 1 else 1.0)
            torch_generator = torch.Generator().manual_seed(stream_seed(config.seed, STAGE_TRAIN, epoch, 1))
            generator = numpy_generator(stream_seed(config.seed, STAGE_TRAIN, epoch))
            order = torch.randperm(len(train_set), generator=torch_generator)
            qmodel.train()
            batches = range(0, len(train_set), config.batch_size)
            for start in progress(batches, total=len(batches), desc=f"QAT epoch {epoch}/{config.epochs}",
                                  unit="batch"):
                idx = order[start:start + config.batch_size]
                images = augment(train_set.images[idx], train_set.info, torch_generator)
                loss = F.cross_entropy(qmodel(discrete_noisy_input(images, noise, generator)), train_set.labels[idx])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
    qmodel.eval()
    integer_model = qmodel.to_integer_model()

    test_set = load_dataset(checkpoint.dataset, "test", data_dir).subset(config.eval_images)
    twin = QuantModel.from_integer_model(integer_model)
    z = discrete_noisy_input(test_set.images, noise, numpy_generator(stream_seed(config.seed, STAGE_EVAL)))
    with torch.no_grad():
        twin_labels = torch.cat([twin(z[i:i + 500]).argmax(1) for i in range(0, len(z), 500)])
    engine_labels = torch.cat([engine.predict(integer_model, z[i:i + 500].to(torch.int32))
                               for i in range(0, len(z), 500)])
    metrics = {"eval_images": len(test_set),
               "engine_accuracy_noisy": float((engine_labels == test_set.labels).float().mean()),
               "twin_accuracy_noisy": float((twin_labels == test_set.labels).float().mean()),
               "engine_twin_agreement": float((engine_labels == twin_labels).float().mean())}
    integer_model.meta["metrics"] = metrics
    return integer_model, metrics
