"""The integer-only forward pass: TFLite's int8 reference semantics on integer arrays.

Every value in this module is an integer: int8 activations and weights, int32
biases and accumulators, int64 inside products and the fixed-point multiply
(torch tensors of integer dtype; a test intercepts every torch operation of a
forward pass and refuses any floating-point result, and another reads this
file's syntax tree). The fixed-point helpers are gemmlowp's / TFLite's
(tensorflow/lite/kernels/internal/common.h, SPEC section 6), one function each,
named for the math they do. By default the requantization is TFLite's double
rounding, what LiteRT's BUILTIN_REF resolver, TFLite Micro and CMSIS-NN compute.
``intrs.torch_engine`` runs these same functions on any torch device (a GPU).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import kernels
from .errors import ConfigError
from .intmodel import ADD_LEFT_SHIFT, AddLayer, ConvLayer, IntegerModel, PoolLayer

INT32_MIN, INT32_MAX = -(2 ** 31), 2 ** 31 - 1
INT8_MIN, INT8_MAX = -128, 127
_SPLIT_BITS = 7  # a wide input is split as hi * 2^7 + lo with lo in [0, 127] for int8 x int8 products


# ---------------------------------------------------------------- fixed-point arithmetic (gemmlowp)


def _int64(x) -> torch.Tensor:
    return torch.as_tensor(x, dtype=torch.int64)


def truncating_divide_by_pot(x, exponent: int) -> torch.Tensor:
    """x / 2^exponent rounded toward zero, as C's integer division does (>> floors)."""
    x = _int64(x)
    return torch.where(x >= 0, x >> exponent, -((-x) >> exponent))


def saturating_rounding_doubling_high_mul(a, b) -> torch.Tensor:
    """gemmlowp's SaturatingRoundingDoublingHighMul: round(a * b / 2^31), ties toward +infinity.

    The one overflow, a == b == INT32_MIN, saturates to INT32_MAX. Otherwise
    (a * b + nudge) / 2^31 truncated toward zero, nudge = 2^30 if a * b >= 0
    else 1 - 2^30.
    """
    a, b = _int64(a), _int64(b)
    product = a * b
    nudge = torch.where(product >= 0, _int64(1 << 30), _int64(1 - (1 << 30)))
    result = truncating_divide_by_pot(product + nudge, 31)
    return torch.where((a == INT32_MIN) & (b == INT32_MIN), _int64(INT32_MAX), result)


def rounding_divide_by_pot(x, exponent) -> torch.Tensor:
    """gemmlowp's RoundingDivideByPOT: x / 2^exponent rounded to nearest, ties away from zero."""
    x, exponent = _int64(x), _int64(exponent)
    mask = (_int64(1) << exponent) - 1
    remainder = x & mask
    threshold = (mask >> 1) + (x < 0)
    return (x >> exponent) + (remainder > threshold)


def multiply_by_quantized_multiplier(x, multiplier, shift) -> torch.Tensor:
    """TFLite's MultiplyByQuantizedMultiplier (double rounding): x * M0 * 2^(shift - 31).

    RoundingDivideByPOT(SaturatingRoundingDoublingHighMul(x * 2^max(shift, 0), M0), max(-shift, 0)).
    The obviously correct composition; the forward pass uses :func:`requantize`, which
    a test holds equal to it.
    """
    x, shift = _int64(x), _int64(shift)
    lifted = x << torch.clamp(shift, min=0)
    _check_int32(lifted, "the left-shifted accumulator")
    return rounding_divide_by_pot(saturating_rounding_doubling_high_mul(lifted, multiplier), torch.clamp(-shift, min=0))


def requantize(acc: torch.Tensor, multiplier: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """MultiplyByQuantizedMultiplier for positive multipliers, fused into a few in-place integer ops.

    Equal to ``multiply_by_quantized_multiplier`` (a test checks it on random and edge values):
    for M0 > 0 the saturating case cannot occur, and SaturatingRoundingDoublingHighMul's
    nudged truncating division is exactly floor((a * M0 + 2^30) / 2^31) for both signs of
    a * M0 (truncating toward zero after the nudge 1 - 2^30 equals flooring after 2^30);
    RoundingDivideByPOT (ties away from zero) is floor((x + 2^(e-1) - [x < 0]) / 2^e) for e >= 1.
    """
    shift = _int64(shift)
    left, right = torch.clamp(shift, min=0), torch.clamp(-shift, min=0)
    product = _int64(acc)
    if bool((left > 0).any()):
        product = product << left
        _check_int32(product, "the left-shifted accumulator")
    product = product * _int64(multiplier)
    product.add_(1 << 30).bitwise_right_shift_(31)
    negative = (product < 0) & (right > 0)
    product.add_((_int64(1) << right) >> 1).sub_(negative.to(torch.int64))
    return product.bitwise_right_shift_(right)


def _check_int32(x: torch.Tensor, what: str) -> None:
    if x.numel() and (int(x.min()) < INT32_MIN or int(x.max()) > INT32_MAX):
        raise ConfigError(f"{what} leaves the int32 range: the model's scales overflow int32 arithmetic")


# ---------------------------------------------------------------- operations


def _integer_matmul(columns: torch.Tensor, weight_t: torch.Tensor) -> torch.Tensor:
    """Exact int64 products columns @ weight_t for int8 weights and integer columns.

    int8 columns go through torch._int_mm (int8 x int8 -> int32, VNNI on x86);
    wider ones (the noisy first-layer input) are split into int8 halves
    hi * 2^7 + lo; anything wider still takes the int64 product.
    """
    low, high = int(columns.min()), int(columns.max())
    weight_t = _canonical(weight_t)
    if INT8_MIN <= low and high <= INT8_MAX:
        return torch._int_mm(_canonical(columns.to(torch.int8)), weight_t).to(torch.int64)
    if -(2 ** (2 * _SPLIT_BITS)) <= low and high < 2 ** (2 * _SPLIT_BITS):
        wide = columns.to(torch.int32)
        hi = _canonical((wide >> _SPLIT_BITS).to(torch.int8))
        lo = _canonical((wide & (2 ** _SPLIT_BITS - 1)).to(torch.int8))
        return (torch._int_mm(hi, weight_t).to(torch.int64) << _SPLIT_BITS) + torch._int_mm(lo, weight_t)
    return columns.to(torch.int64) @ weight_t.to(torch.int64)


def _canonical(matrix: torch.Tensor) -> torch.Tensor:
    """A row-major copy with canonical strides: torch._int_mm reads the leading dimension from the
    strides, and returned wrong products for a size-1 dimension with stride 1 (seen in torch 2.13)."""
    if matrix.stride() == (matrix.shape[1], 1):
        return matrix
    out = torch.empty(matrix.shape, dtype=matrix.dtype)
    out.copy_(matrix)
    return out


def conv2d(x: torch.Tensor, layer: ConvLayer) -> torch.Tensor:
    """TFLite's per-channel int8 CONV_2D (reference_integer_ops::ConvPerChannel), NCHW.

    acc = sum (x - z_in) * w + b over the window, padding contributing nothing (the
    reference kernel skips points outside the image; here they hold z_in);
    y = clamp(z_out + MultiplyByQuantizedMultiplier(acc, M0[c], shift[c]), act_min, act_max).
    sum (x - z_in) * w is computed as sum x * w - z_in * sum w, exactly.
    A fully connected layer is the 1x1 case on (N, C) inputs.
    """
    weight = torch.from_numpy(layer.weight)
    out_channels, in_channels, kh, kw = weight.shape
    flat = x.dim() == 2
    if flat:
        x = x[:, :, None, None]
    (sh, sw), (ph, pw) = layer.stride, layer.padding
    if ph or pw:
        x = F.pad(x, (pw, pw, ph, ph), value=layer.input_zero_point)
    # im2col with channels innermost (NHWC memory): each window copies whole channel runs,
    # about 8x faster than gathering NCHW windows.
    windows = x.contiguous(memory_format=torch.channels_last).unfold(2, kh, sh).unfold(3, kw, sw)
    n, _, oh, ow = windows.shape[:4]
    columns = windows.permute(0, 2, 3, 4, 5, 1).reshape(n * oh * ow, kh * kw * in_channels)
    weight_t = weight.permute(0, 2, 3, 1).reshape(out_channels, -1).t().contiguous()
    acc = _integer_matmul(columns, weight_t)
    acc.add_(torch.from_numpy(layer.bias).to(torch.int64) - layer.input_zero_point * weight_t.to(torch.int64).sum(dim=0))
    _check_int32(acc, f"the accumulator of {layer.name}")
    scaled = requantize(acc, torch.from_numpy(layer.multiplier), torch.from_numpy(layer.shift))
    y = scaled.add_(layer.output_zero_point).clamp_(layer.act_min, layer.act_max).to(torch.int8)
    y = y.reshape(n, oh, ow, out_channels).permute(0, 3, 1, 2)
    return y[:, :, 0, 0] if flat else y


def add(x1: torch.Tensor, x2: torch.Tensor, layer: AddLayer) -> torch.Tensor:
    """TFLite's int8 ADD (reference_integer_ops::AddFunc), with its optional fused ReLU."""
    lifted1 = (_int64(x1) - layer.input1_zero_point) << ADD_LEFT_SHIFT
    lifted2 = (_int64(x2) - layer.input2_zero_point) << ADD_LEFT_SHIFT
    # MultiplyByQuantizedMultiplierSmallerThanOneExp is requantize with shift <= 0 (validated on load).
    scaled = requantize(lifted1, layer.input1_multiplier, layer.input1_shift)
    scaled.add_(requantize(lifted2, layer.input2_multiplier, layer.input2_shift))
    raw = requantize(scaled, layer.output_multiplier, layer.output_shift).add_(layer.output_zero_point)
    return raw.clamp_(layer.act_min, layer.act_max).to(torch.int8)


def _pool_windows(x: torch.Tensor, layer: PoolLayer, fill: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Windows (N, C, OH, OW, kh*kw) of x padded with ``fill``, and the real points each covers."""
    if layer.is_global:
        (kh, kw), (sh, sw), (ph, pw) = tuple(x.shape[2:]), (1, 1), (0, 0)
    else:
        (kh, kw), (sh, sw), (ph, pw) = layer.kernel, layer.stride, layer.padding
    padded = F.pad(x.to(torch.int32), (pw, pw, ph, ph), value=fill)
    inside = F.pad(torch.ones(x.shape[2:], dtype=torch.int32, device=x.device), (pw, pw, ph, ph))
    windows = padded.unfold(2, kh, sh).unfold(3, kw, sw).flatten(4)
    counts = inside.unfold(0, kh, sh).unfold(1, kw, sw).sum(dim=(2, 3))
    return windows, counts


def truncating_divide(numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    """C's integer division (toward zero) for positive denominators."""
    return torch.div(numerator, denominator, rounding_mode="trunc")


def average_pool(x: torch.Tensor, layer: PoolLayer) -> torch.Tensor:
    """TFLite's int8 AVERAGE_POOL_2D: int32 sum over the real points, divided by their count,
    rounding half away from zero; same scale and zero point in and out."""
    windows, counts = _pool_windows(x, layer, 0)
    total = windows.sum(dim=4)
    half = counts // 2
    average = torch.where(total > 0, truncating_divide(total + half, counts), truncating_divide(total - half, counts))
    return torch.clamp(average, layer.act_min, layer.act_max).to(torch.int8)


def max_pool(x: torch.Tensor, layer: PoolLayer) -> torch.Tensor:
    """TFLite's int8 MAX_POOL_2D: the largest real point of each window (padding never wins)."""
    windows, _ = _pool_windows(x, layer, INT8_MIN - 1)
    return torch.clamp(windows.amax(dim=4), layer.act_min, layer.act_max).to(torch.int8)


def flatten(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], -1)


# ---------------------------------------------------------------- the model


def check_input(model: IntegerModel, z, device: torch.device | None = None) -> torch.Tensor:
    """The noisy integer input (N, C, H, W) on ``device`` (default: the CPU): saturated when the model records
    it, otherwise checked against the model's input range (no wrap-around)."""
    # this module's ops and the compiled kernels run on the CPU; intrs.torch_engine passes its device
    z = torch.as_tensor(z).to("cpu" if device is None else device)
    if z.dtype.is_floating_point or z.dtype.is_complex or z.dtype == torch.bool:
        raise ConfigError(f"the integer engine takes integer inputs (pixel steps), got dtype {z.dtype}")
    if z.dim() != 4 or tuple(z.shape[1:]) != tuple(model.input_shape):
        raise ConfigError(f"input shape {tuple(z.shape)} does not match the model's (N, *{tuple(model.input_shape)})")
    if model.input_saturation is not None:
        return torch.clamp(z, *model.input_saturation)
    low, high = model.input_range
    # numpy's reductions: torch's parallel ones leave its OpenMP threads spinning on the cores that the
    # compiled kernels' threads are about to use (6 ms of a 47 ms batch in one measurement)
    values = z.numpy() if z.device.type == "cpu" else z
    if z.numel() and (int(values.min()) < low or int(values.max()) > high):
        raise ConfigError(f"noisy input leaves the first layer's range [{low}, {high}]: "
                          "sigma is too large for this model's input type")
    return z


def forward(model: IntegerModel, z, trace: list | None = None, instruction_set: str | None = None) -> torch.Tensor:
    """int8 logits of the integer model on a batch of integer inputs (pixel steps, x_q = p + k).

    The compiled kernels (``intrs.kernels``) compute them where they can, the same
    integers (tests hold the two equal), on ``instruction_set`` (default: the best
    this CPU has; one it lacks is refused); this module's ops otherwise. ``trace``,
    when given, receives every intermediate array of the reference pass (for tests).
    """
    z = check_input(model, z)
    if trace is None:
        logits = kernels.forward(model, z, instruction_set)
        if logits is not None:
            return logits
    return _forward_checked(model, z, trace)


def reference_forward(model: IntegerModel, z, trace: list | None = None) -> torch.Tensor:
    """The forward pass through this module's ops: the definition the compiled kernels are held to."""
    return _forward_checked(model, check_input(model, z), trace)


def _forward_checked(model: IntegerModel, z: torch.Tensor, trace: list | None) -> torch.Tensor:
    values = {model.input_name: z}
    for layer in model.layers:
        inputs = [values[name] for name in layer.inputs]
        if isinstance(layer, ConvLayer):
            out = conv2d(inputs[0], layer)
        elif isinstance(layer, AddLayer):
            out = add(inputs[0], inputs[1], layer)
        elif layer.op == "average_pool":
            out = average_pool(inputs[0], layer)
        elif layer.op == "max_pool":
            out = max_pool(inputs[0], layer)
        else:
            out = flatten(inputs[0])
        values[layer.output] = out
        if trace is not None:
            trace.append(out)
    return values[model.output_name]


def argmax_lowest(logits: torch.Tensor) -> torch.Tensor:
    """The index of the largest int8 logit; ties go to the lowest class index (SPEC section 6)."""
    return torch.argmax(logits.to(torch.int32), dim=1)  # torch returns the first maximal index


def predict(model: IntegerModel, z, instruction_set: str | None = None) -> torch.Tensor:
    return argmax_lowest(forward(model, z, instruction_set=instruction_set))
