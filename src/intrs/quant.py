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

import math
import operator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn

from .errors import CheckpointError, ConfigError
from .files import write_atomically
from .intmodel import (ADD_LEFT_SHIFT, AddLayer, ConvLayer, IntegerModel, PoolLayer, quantize_multiplier,
                       quantize_multiplier_smaller_than_one, validate)
from .data import PIXEL_MAX
from .models import Normalize, read_torch_file

INT8_MIN, INT8_MAX, WEIGHT_MAX = -128, 127, 127
INT16_RANGE = (-(2 ** 15), 2 ** 15 - 1)
INPUT_SCALE = float(np.float32(1.0 / PIXEL_MAX))  # x_q is the pixel itself: s = 1/255, zero point 0 (SPEC 2)
SUPPORTED = "convolution, batch norm, ReLU, residual add, average/max pooling, flatten, linear"
# TFLite's int8 ADD (kernels/add.cc) lifts both inputs by 2^20 at twice the larger input scale, so its
# output multiplier 2 max(s1, s2) / (2^20 s_out) must be below 1: s_out > max(s1, s2) / 2^19 (ADD_LEFT_SHIFT = 20).
# The floor kept on an ADD's output scale, max(s1, s2) / 2^16: 8x inside that bound (float32 rounding
# of the scales cannot cross it), and it binds only on an output whose whole range is below 1/257 of
# one input step, a grid that holds nothing but the inputs' rounding noise.
ADD_OUTPUT_SCALE_FLOOR = 2.0 ** -16
TFLITE_OPS = {"conv2d": "CONV_2D", "fully_connected": "FULLY_CONNECTED", "add": "ADD"}


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


def activation_qparams(low: float, high: float, min_scale: float = 0.0) -> tuple[float, int]:
    """Asymmetric int8 (scale, zero point) for the range [low, high], which is widened to hold 0.

    ``min_scale`` widens the range further where a consumer needs a scale that large.
    """
    low, high = min(low, 0.0), max(high, 0.0)
    scale = float(np.float32(max(high - low, 1e-8, min_scale * (INT8_MAX - INT8_MIN)) / (INT8_MAX - INT8_MIN)))
    zero_point = int(np.clip(round(INT8_MIN - low / scale), INT8_MIN, INT8_MAX))
    return scale, zero_point


def weight_scales(weight: torch.Tensor) -> torch.Tensor:
    """Per-output-channel symmetric scales max|W| / 127 (float32; 1 for an all-zero channel)."""
    largest = weight.detach().abs().flatten(1).max(dim=1).values
    return torch.where(largest > 0, largest / WEIGHT_MAX, torch.ones_like(largest)).to(torch.float32)


def _discarded_below(layers: list[FloatLayer], output_name: str) -> dict[str, str]:
    """value x1 -> x2, where relu(x1 + x2) alone reads x1: x1's range is tracked from about -max(x2) up.

    Why (issue 15): fine-tuning drives a residual branch x1 far negative, where
    relu(x1 + x2) is 0 and no gradient pulls it back (QAT at lr 0.01 doubled layer1.0's
    negative range in one Fashion-MNIST epoch while its positive range held; at 0.1 it
    reached -5e16 in 7 batches). The per-tensor observer then stretches x1's int8 grid
    over values the ReLU throws away, and the add's output scale, which tracks what
    survives the ReLU, falls ever further below x1's: past 2^-19 of it TFLite's ADD
    cannot be built (the reported multiplier 4650 is s_out / s_in = 4.1e-10, from a
    range of about 1e-8 against about 30, or both 2^k larger). Below -max(x2),
    x1 + x2 <= 0 whatever x2 is, so saturating x1 there changes no output: the observer
    stops there (two of x1's steps lower, for the grids' rounding), and that side of the
    range cannot run away. Only where the add is x1's only reader, and for values a
    convolution writes (a pooled value shares its input's grid). The ADD's output-scale
    floor (``ADD_OUTPUT_SCALE_FLOOR``) covers the other way the bound breaks: a block
    whose output stays 0, whose moving-average range decays by 0.99 a batch with no end.
    """
    readers: dict[str, int] = {output_name: 1}
    for layer in layers:
        for name in layer.inputs:
            readers[name] = readers.get(name, 0) + 1
    convolved = {layer.output for layer in layers if layer.op in ("conv2d", "fully_connected")}
    clip = {}
    for layer in layers:
        if layer.op == "add" and layer.relu and layer.inputs[0] != layer.inputs[1]:
            for name, other in (layer.inputs, layer.inputs[::-1]):
                if name in convolved and readers[name] == 1:
                    clip[name] = other
    return clip


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
        self.clip_below = _discarded_below(layers, output_name)
        self.qparams: dict[str, tuple[float, int]] = {input_name: (INPUT_SCALE, 0)}
        self.frozen_weight_scales: dict[str, torch.Tensor] = {}
        self.observe = True
        self.ema = None  # None: running min/max (PTQ); a float in (0, 1): exponential moving average (QAT)
        self.input_range = INT16_RANGE
        self.input_saturation: tuple[int, int] | None = None

    # -- ranges

    def _observe(self, name: str, y: torch.Tensor, min_scale: float = 0.0) -> None:
        low, high = float(y.detach().min()), float(y.detach().max())
        if not (math.isfinite(low) and math.isfinite(high)):
            raise ConfigError(f"the values of '{name}' reached [{low}, {high}]: the model diverged")
        if name not in self.ranges:
            self.ranges[name] = [low, high]
        elif self.ema is None:
            self.ranges[name] = [min(self.ranges[name][0], low), max(self.ranges[name][1], high)]
        else:
            old = self.ranges[name]
            self.ranges[name] = [old[0] + self.ema * (low - old[0]), old[1] + self.ema * (high - old[1])]
        other = self.clip_below.get(name)
        if other in self.ranges:  # what the ReLU after an add discards is not tracked: see _discarded_below
            # The range, not the batch, is clipped: values far below still pull it down at once, so x1 saturates
            # below -max(x2) even in a batch where the other input's grid has just grown.
            other_scale, other_zero = self.qparams[other]
            reach = (INT8_MAX - other_zero) * other_scale  # the largest x2 its grid holds
            step = (max(self.ranges[name][1], 0.0) + reach) / (INT8_MAX - INT8_MIN)  # about x1's step once clipped
            self.ranges[name][0] = max(self.ranges[name][0], -(reach + 2 * step))
        self.qparams[name] = activation_qparams(*self.ranges[name], min_scale)

    def _min_scale(self, layer: FloatLayer) -> float:
        """The smallest output scale ``layer`` converts with: TFLite's ADD bound, with margin; else none."""
        if layer.op != "add":
            return 0.0
        return ADD_OUTPUT_SCALE_FLOOR * max(float(np.float32(self.qparams[name][0])) for name in layer.inputs)

    def settle_qparams(self) -> "QuantModel":
        """(Scale, zero point) of every value from the tracked ranges, in graph order (for a reloaded state)."""
        for layer in self.specs:
            if layer.op in ("conv2d", "fully_connected", "add"):
                self.qparams[layer.output] = activation_qparams(*self.ranges[layer.output], self._min_scale(layer))
            else:
                self.qparams[layer.output] = self.qparams[layer.inputs[0]]
        return self

    def freeze(self) -> "QuantModel":
        """Stop tracking ranges and weight scales: the quantization grid is fixed from now on."""
        self.observe = False
        for layer in self.specs:
            if layer.weight is not None:
                self.frozen_weight_scales[layer.name] = weight_scales(self.weights[layer.name])
        return self

    # -- forward

    def _fake_activation(self, name: str, y: torch.Tensor, act_min: int | None = None,
                         min_scale: float = 0.0) -> torch.Tensor:
        if self.observe:
            self._observe(name, y, min_scale)
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
                values[layer.output] = self._fake_activation(layer.output, F.relu(y) if layer.relu else y,
                                                             min_scale=self._min_scale(layer))
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

    # -- calibration (PTQ)

    @torch.no_grad()
    def calibrate(self, images, noise=None, seed: int = 0, batch_size: int = 256) -> "QuantModel":
        """Track every activation's range over ``images`` (N, C, H, W): uint8 pixels or floats in [0, 1].

        The model computes on pixel steps (x_q = p in 0..255, what the integer engine takes), so floats are
        rounded to the 8-bit grid as ``intrs.to_pixels`` does. Data whose range cannot be pixels (floats
        outside [0, 1]: pixel steps stored as floats, normalized images) is a ``ConfigError``: ranges
        calibrated on it would be silently wrong. With ``noise`` (a lattice law such as
        ``DiscreteGaussianNoise``) each batch is x_q + k, as under certification, drawn from ``seed``'s
        stream. Calibrate before ``to_integer_model``, which freezes the ranges; returns the model.
        """
        from .data import to_pixel_batch
        from .errors import DataError
        from .noise import numpy_generator
        from .rng import STAGE_TRAIN, stream_seed

        if not self.observe:
            raise ConfigError("this model's ranges are frozen (to_integer_model froze them): calibrate before it")
        try:
            pixels = to_pixel_batch(images)
        except DataError as exc:
            raise ConfigError(f"calibrate: {exc}; pass uint8 pixels (0..255) or floats in [0, 1] "
                              "(e.g. pixel steps / 255)") from None
        if tuple(pixels.shape[1:]) != self.input_shape:
            raise ConfigError(f"calibrate: images of shape {tuple(pixels.shape[1:])}, the model takes "
                              f"{self.input_shape}")
        if len(pixels) == 0:
            raise ConfigError("calibrate: no images")
        generator = numpy_generator(stream_seed(seed, STAGE_TRAIN, 0))
        for start in range(0, len(pixels), batch_size):
            batch = pixels[start:start + batch_size]
            self(discrete_noisy_input(batch, noise, generator) if noise is not None else batch.to(torch.float32))
        return self

    # -- conversion

    def to_integer_model(self) -> IntegerModel:
        """Convert the frozen fake-quantized model to integers (QuantizeMultiplier per channel).

        A layer whose scales TFLite's kernels cannot represent is a ``ConfigError`` that names it.
        """
        if self.observe:
            self.freeze()
        return self._integer_model(self.frozen_weight_scales)

    def check_convertible(self) -> None:
        """Raise now what ``to_integer_model`` would raise, without freezing anything (QAT checks as it goes)."""
        scales = self.frozen_weight_scales if not self.observe else {
            layer.name: weight_scales(self.weights[layer.name]) for layer in self.specs if layer.weight is not None}
        self._integer_model(scales)

    def _integer_model(self, channel_scales: dict[str, torch.Tensor]) -> IntegerModel:
        missing = [l.output for l in self.specs if l.output not in self.qparams]
        if missing:
            raise ConfigError(f"no activation ranges for {missing[:3]}: calibrate (run data through) before converting")
        layers = [self._convert_layer(spec, channel_scales.get(spec.name)) for spec in self.specs]
        model = IntegerModel(self.input_name, self.input_shape, self.input_range, INPUT_SCALE, layers,
                             self.output_name, dict(self.qparams), "double-rounding", self.meta, self.input_saturation)
        try:  # what loading the file would check; _convert_layer has named every known way to fail first
            validate(model, "converted from the fake-quantized model")
        except CheckpointError as exc:
            raise ConfigError(str(exc)) from None
        return model

    def _unconvertible(self, spec: FloatLayer, why: str) -> ConfigError:
        reading = " and ".join(f"'{name}'" for name in spec.inputs)
        return ConfigError(f"cannot convert layer '{spec.name}' ({TFLITE_OPS[spec.op]} of {reading}) to TFLite "
                           f"int8: {why}")

    def _convert_layer(self, spec: FloatLayer, scales: torch.Tensor | None):
        qp = self.qparams
        out_scale, out_zero = qp[spec.output]
        act_min = out_zero if spec.relu else INT8_MIN
        if spec.op in ("conv2d", "fully_connected"):
            in_scale, in_zero = qp[spec.inputs[0]]
            weight = self.weights[spec.name].detach()
            # SPEC 6: M = double(s_in) * double(s_w[c]) / double(s_out), the scales as float32.
            reals = [float(np.float32(in_scale)) * float(s) / float(np.float32(out_scale)) for s in scales.tolist()]
            if not all(math.isfinite(r) and r > 0 for r in reals) or not torch.isfinite(weight).all() \
                    or not torch.isfinite(self.biases[spec.name].detach()).all():
                raise self._unconvertible(spec, f"its weights or scales are not finite (input scale {in_scale:.3g}, "
                                                f"output scale {out_scale:.3g}): the model diverged")
            pairs = [quantize_multiplier(r) for r in reals]
            if max(p[1] for p in pairs) > 30:
                raise self._unconvertible(spec, f"its multiplier s_in s_w / s_out reaches {max(reals):.4g}, beyond "
                                                f"TFLite's 2^30 (input scale {in_scale:.3g}, weight scales up to "
                                                f"{float(scales.max()):.3g}, output scale {out_scale:.3g}): its output "
                                                "range has collapsed or its weights have run away")
            q_weight = torch.clamp(torch.round(weight / scales.view(-1, 1, 1, 1)), -WEIGHT_MAX, WEIGHT_MAX)
            bias_scale = scales.to(torch.float64) * in_scale
            q_bias = torch.round(self.biases[spec.name].detach().to(torch.float64) / bias_scale)
            q_bias = self._saturating_bias(spec, q_bias, q_weight, reals, [p[1] for p in pairs], bias_scale)
            return ConvLayer(spec.name, spec.op, list(spec.inputs), spec.output,
                             q_weight.to(torch.int8).numpy(), q_bias.to(torch.int32).numpy(),
                             np.array([p[0] for p in pairs], dtype=np.int32),
                             np.array([p[1] for p in pairs], dtype=np.int32),
                             spec.stride, spec.padding, in_zero, out_zero, act_min, INT8_MAX, in_scale, out_scale,
                             scales.numpy().astype(np.float32), spec.relu)
        if spec.op == "add":
            (s1, z1), (s2, z2) = qp[spec.inputs[0]], qp[spec.inputs[1]]
            f1, f2, fo = (float(np.float32(s)) for s in (s1, s2, out_scale))
            # TFLite's int8 ADD preparation (kernels/add.cc): both inputs to twice the larger scale.
            twice_max = 2 * max(f1, f2)
            reals = (f1 / twice_max, f2 / twice_max, twice_max / ((1 << ADD_LEFT_SHIFT) * fo))
            scales_note = f"input scales {f1:.3g} ('{spec.inputs[0]}') and {f2:.3g} ('{spec.inputs[1]}')"
            if not all(math.isfinite(r) and r > 0 for r in reals):
                raise self._unconvertible(spec, f"its scales are not finite ({scales_note}, output scale {fo:.3g}): "
                                                "the model diverged")
            if reals[2] >= 1:
                raise self._unconvertible(spec, f"its output multiplier 2 max(s1, s2) / (2^20 s_out) is "
                                                f"{reals[2]:.6g}, and TFLite's ADD needs it below 1: the output scale "
                                                f"{fo:.3g} has collapsed against the {scales_note}")
            m1, m2, mo = (quantize_multiplier_smaller_than_one(r) for r in reals)
            if m1[0] == 0 or m2[0] == 0:
                raise self._unconvertible(spec, f"its {scales_note} differ by more than 2^31, beyond what TFLite's "
                                                "ADD multipliers hold")
            return AddLayer(spec.name, "add", list(spec.inputs), spec.output, z1, z2, out_zero, m1[0], m1[1],
                            m2[0], m2[1], mo[0], mo[1], act_min, INT8_MAX, s1, s2, out_scale, spec.relu)
        return PoolLayer(spec.name, spec.op, list(spec.inputs), spec.output, spec.kernel, spec.stride, spec.padding,
                         spec.is_global)

    def _saturating_bias(self, spec: FloatLayer, q_bias: torch.Tensor, q_weight: torch.Tensor, reals: list[float],
                         shifts: list[int], bias_scale: torch.Tensor) -> torch.Tensor:
        """The int32 biases; one that could overflow the accumulator replaced by one that saturates just the same.

        A channel that fine-tuning ran off far below its ReLU (see _discarded_below) can
        have a bias no int32 accumulator holds. Such a bias outweighs all that its inputs
        can add ("reach"), so the output is act_min (or act_max) for every input; the
        largest bias whose accumulator still fits int32 after the multiplier's left shift
        ("room") gives that same output wherever M (room - reach) >= 257 pushes it past any
        clamp. (Before, the bias was clamped to int32 and the engine found the overflow.)
        """
        if spec.inputs[0] == self.input_name:
            low, high = self.input_saturation or self.input_range  # the input's zero point is 0
            input_reach = max(abs(low), abs(high))
        else:
            input_reach = INT8_MAX - INT8_MIN
        reach = q_weight.abs().flatten(1).sum(dim=1).to(torch.float64) * input_reach
        limit = torch.floor((2 ** 31 - 1) / 2.0 ** torch.tensor(shifts, dtype=torch.float64).clamp(min=0))
        over = (q_bias.abs() + reach > limit) & (q_bias.abs() > reach)  # a bias that overflows it by itself
        if not bool(over.any()):
            return q_bias
        room = limit - reach
        multiplier = torch.tensor(reals, dtype=torch.float64)
        unsure = over & ((room <= reach) | (multiplier * (room - reach) < 257))
        if bool(unsure.any()):
            c = int(torch.nonzero(unsure)[0])
            if room[c] <= reach[c]:
                why = (f"channel {c}'s multiplier {reals[c]:.4g} shifts its int32 accumulator left by {shifts[c]} "
                       f"bits, too far for what its inputs add: the output scale {self.qparams[spec.output][0]:.3g} "
                       "has collapsed against the input and weight scales")
            else:
                why = (f"the bias of channel {c}, {float(q_bias[c] * bias_scale[c]):.4g}, is {float(q_bias[c]):.4g} "
                       f"steps of its scale {float(bias_scale[c]):.3g}, more than its int32 accumulator holds: the "
                       "model diverged")
            raise self._unconvertible(spec, why)
        return torch.where(over, torch.sign(q_bias) * room, q_bias)

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
        wrong = [f"--epochs must be >= 0, got {self.epochs}"] if self.epochs < 0 else []
        if not (math.isfinite(self.lr) and self.lr > 0):
            wrong.append(f"--lr must be a number > 0, got {self.lr}")
        for flag, value in (("--batch-size", self.batch_size), ("--calibration-images", self.calibration_images),
                            ("--eval-images", self.eval_images), ("--train-subset", self.train_subset)):
            if value is not None and value < 1:
                wrong.append(f"{flag} must be at least 1, got {value}")
        if wrong:
            raise ConfigError("; ".join(wrong))
        from .rng import check_seed

        check_seed(self.seed)
        return self


def discrete_noisy_input(images: torch.Tensor, noise, generator) -> torch.Tensor:
    """x_q + k for a uint8 batch: the integer input of IntRS, as a float tensor of integers (for the twin)."""
    k = noise.draw(tuple(images.shape), generator)
    return (torch.from_numpy(k) + images.to(torch.int32)).to(torch.float32)


CHECK_EVERY = 25  # QAT batches between conversion checks; a check costs about what rounding the weights does


def _calibrated(checkpoint, config: QuantizeConfig, train_set, noise) -> QuantModel:
    """Lower the checkpoint and calibrate its ranges; refuses a calibration that would not convert."""
    from .rng import STAGE_TRAIN, stream_seed

    meta = {"arch": checkpoint.config.arch, "dataset": checkpoint.dataset, "sigma": checkpoint.sigma,
            "method": config.method, "checkpoint": str(checkpoint.path), "seed": config.seed,
            "epochs": config.epochs if config.method == "qat" else 0}
    torch.manual_seed(stream_seed(config.seed, STAGE_TRAIN))
    qmodel = prepare(checkpoint.model, train_set.info.shape, meta)
    if config.saturate_input:
        qmodel.input_saturation = (0, PIXEL_MAX)
        qmodel.meta["input_saturation"] = [0, PIXEL_MAX]

    noisy_calibration = config.calibration_noise if config.calibration_noise is not None else config.method == "qat"
    qmodel.calibrate(train_set.images[: config.calibration_images], noise if noisy_calibration else None,
                     config.seed, config.batch_size)
    try:
        qmodel.check_convertible()
    except ConfigError as exc:
        raise ConfigError(f"{exc} (found after calibration, before any fine-tuning: the float model or its "
                          f"calibration data is at fault; check the checkpoint {checkpoint.path}, or calibrate on "
                          "other images with --calibration-images / --calibration-noise)") from None
    return qmodel


def _fine_tune(qmodel: QuantModel, config: QuantizeConfig, train_set, noise, progress, state_path) -> str:
    """QAT in place; returns where the fine-tuned state was saved, for the message of a failed conversion."""
    from .data import augment
    from .noise import numpy_generator
    from .rng import STAGE_TRAIN, stream_seed

    qmodel.ema = 0.01
    optimizer = torch.optim.SGD(qmodel.parameters(), lr=config.lr, momentum=0.9)
    per_epoch = math.ceil(len(train_set) / config.batch_size)
    plan = [(epoch, batch) for epoch in range(1, config.epochs + 1) for batch in range(per_epoch)]
    saved = None  # the last epoch whose state is in state_path
    # One bar over every epoch, so that the time it shows left is that of the whole fine-tuning.
    desc = f"QAT fine-tuning ({config.epochs} epoch{'s' if config.epochs > 1 else ''} of {per_epoch} batches)"
    for epoch, batch in progress(plan, total=len(plan), desc=desc, unit="batch"):
        if batch == 0:
            for group in optimizer.param_groups:  # the last epoch at a tenth of the rate
                group["lr"] = config.lr * (0.1 if epoch == config.epochs and config.epochs > 1 else 1.0)
            torch_generator = torch.Generator().manual_seed(stream_seed(config.seed, STAGE_TRAIN, epoch, 1))
            generator = numpy_generator(stream_seed(config.seed, STAGE_TRAIN, epoch))
            order = torch.randperm(len(train_set), generator=torch_generator)
            qmodel.train()
        idx = order[batch * config.batch_size:(batch + 1) * config.batch_size]
        images = augment(train_set.images[idx], train_set.info, torch_generator)
        last = batch == per_epoch - 1
        try:
            loss = F.cross_entropy(qmodel(discrete_noisy_input(images, noise, generator)), train_set.labels[idx])
            if not math.isfinite(loss.item()):
                raise ConfigError(f"the loss reached {loss.item()}: the model diverged")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if last or (batch + 1) % CHECK_EVERY == 0:
                qmodel.check_convertible()
        except ConfigError as exc:
            if saved is None:
                kept = "nothing was saved (no epoch had finished)" if state_path is not None else "nothing was saved"
            else:
                kept = (f"the state after epoch {saved} passed this check and is saved in {state_path} "
                        f"('intrs quantize --qat --from-state {state_path}' converts it)")
            fewer = f" or with --epochs {epoch - 1}" if epoch > 1 else ""
            raise ConfigError(f"{exc} (found in QAT epoch {epoch}/{config.epochs}, batch {batch + 1}/{per_epoch}); "
                              f"fine-tune at a lower --lr than {config.lr:g}{fewer}; {kept}") from None
        if last and state_path is not None:
            saved = epoch
            save_qat_state(qmodel, state_path, epoch, config)
    if state_path is None:
        return "the fine-tuned state was not saved"
    return (f"the fine-tuned state is saved in {state_path} "
            f"('intrs quantize --qat --from-state {state_path}' converts it)")


# ---------------------------------------------------------------- the fine-tuned state, kept across a failure


QAT_STATE_FORMAT = "intrs-qat-state"
QAT_STATE_VERSION = 1


def save_qat_state(qmodel: QuantModel, path, epoch: int, config: QuantizeConfig) -> Path:
    """Write the fine-tuned float state (weights, biases, tracked ranges) atomically, for ``load_qat_state``."""
    path = Path(path)
    payload = {
        "format": QAT_STATE_FORMAT, "version": QAT_STATE_VERSION, "epoch": int(epoch), "config": asdict(config),
        "meta": dict(qmodel.meta), "input_shape": list(qmodel.input_shape),
        "layers": [_layer_signature(layer) for layer in qmodel.specs],
        "weights": {name: p.detach().clone() for name, p in qmodel.weights.items()},
        "biases": {name: p.detach().clone() for name, p in qmodel.biases.items()},
        "ranges": {name: [float(low), float(high)] for name, (low, high) in qmodel.ranges.items()},
        "input_saturation": None if qmodel.input_saturation is None else list(qmodel.input_saturation),
    }
    return write_atomically(path, lambda handle: torch.save(payload, handle))


def load_qat_state(path, checkpoint) -> tuple[QuantModel, dict]:
    """The state ``save_qat_state`` wrote for the model lowered from ``checkpoint``, ranges settled: convert it next."""
    path = Path(path)
    payload = read_torch_file(path, "QAT state", "'intrs quantize --qat' writes one beside its --out")
    if not isinstance(payload, dict) or payload.get("format") != QAT_STATE_FORMAT:
        raise CheckpointError(f"{path} is not an intrs QAT state (no '{QAT_STATE_FORMAT}' header)")
    if payload.get("version") != QAT_STATE_VERSION:
        raise CheckpointError(f"QAT state {path} has version {payload.get('version')}, this intrs reads "
                              f"{QAT_STATE_VERSION}")
    try:
        meta = dict(payload["meta"])
        made_from = (meta["arch"], meta["dataset"], float(meta["sigma"]))
        if made_from != (checkpoint.config.arch, checkpoint.dataset, checkpoint.sigma):
            raise CheckpointError(f"QAT state {path} was fine-tuned from a {made_from[0]} on {made_from[1]} at "
                                  f"sigma {made_from[2]:g} ({meta.get('checkpoint')}), not from checkpoint "
                                  f"{checkpoint.path}: pass the checkpoint it was made from")
        qmodel = prepare(checkpoint.model, tuple(payload["input_shape"]), meta)
        if [_layer_signature(layer) for layer in qmodel.specs] != payload["layers"]:
            raise CheckpointError(f"QAT state {path} has other layers than checkpoint {checkpoint.path} "
                                  f"({meta.get('checkpoint')} made it): pass the checkpoint it was made from")
        with torch.no_grad():
            for name, parameter in qmodel.weights.items():
                parameter.copy_(payload["weights"][name].to(parameter.dtype))
            for name, parameter in qmodel.biases.items():
                parameter.copy_(payload["biases"][name].to(parameter.dtype))
        qmodel.ranges = {name: [float(low), float(high)] for name, (low, high) in payload["ranges"].items()}
        saturation = payload["input_saturation"]
        qmodel.input_saturation = None if saturation is None else tuple(int(v) for v in saturation)
        qmodel.settle_qparams()
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"QAT state {path} is damaged ({type(exc).__name__}: {str(exc)[:200]})") from None
    return qmodel, payload


def _layer_signature(layer: FloatLayer) -> list:
    return [layer.name, layer.op, None if layer.weight is None else list(layer.weight.shape)]


def quantize(checkpoint, config: QuantizeConfig, data_dir=None, progress=None, state_path=None,
             from_state=None) -> tuple[IntegerModel, dict]:
    """Quantize a float checkpoint: QAT with discrete Gaussian noise at its training sigma, or PTQ.

    QAT (the paper's IntRS model): lower, calibrate ranges on noisy training images,
    then fine-tune with fake quantization (straight-through estimator) on
    x_q + k, k ~ N_Z(0, (255 sigma)^2), tracking activation ranges by moving
    average. PTQ (FloatRS-quant): lower and calibrate on clean training images,
    no training. Returns the integer model and its metrics (twin and engine
    accuracy under discrete noise, and their agreement).

    Whether every layer converts to TFLite int8 is checked after calibration,
    every ``CHECK_EVERY`` batches and at the end of every epoch, so a failure
    comes early and names its layer. With ``state_path`` the fine-tuned float
    state is written there (atomically) after every epoch that passed the
    check; ``from_state`` converts such a state instead of calibrating and
    fine-tuning again.
    """
    from . import engine
    from .data import load_dataset
    from .noise import DiscreteGaussianNoise, numpy_generator
    from .progress import no_progress
    from .rng import STAGE_EVAL, stream_seed

    progress = progress or no_progress
    config.check()
    noise = DiscreteGaussianNoise(checkpoint.sigma)
    if from_state is not None:
        if config.method != "qat":
            raise ConfigError(f"{from_state} holds a QAT fine-tuning: convert it with method 'qat' (--qat)")
        qmodel = load_qat_state(from_state, checkpoint)[0]
        saved = f"the fine-tuned state converted is {from_state}"
    else:
        train_set = load_dataset(checkpoint.dataset, "train", data_dir).subset(config.train_subset)
        checkpoint.check_fits(train_set.info)
        qmodel = _calibrated(checkpoint, config, train_set, noise)
        saved = None
        if config.method == "qat" and config.epochs > 0:
            saved = _fine_tune(qmodel, config, train_set, noise, progress, state_path)
    qmodel.eval()
    try:
        integer_model = qmodel.to_integer_model()
    except ConfigError as exc:
        raise ConfigError(f"{exc}; {saved or 'nothing was fine-tuned'}") from None

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
