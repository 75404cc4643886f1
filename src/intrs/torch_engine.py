"""The integer engine on any torch device (CPU or CUDA): the same integers as ``intrs.engine``.

``intrs.engine`` is the reference (and the CPU's compiled kernels its fast path); this module
runs the same TFLite int8 semantics as tensor operations on a torch device, so that a GPU
computes the certified base classifier itself. Every value is an integer tensor:

- CONV_2D / FULLY_CONNECTED: im2col (``unfold``) and ``torch._int_mm`` (int8 x int8 -> int32;
  cuBLASLt on CUDA). The GEMM is padded with zeros to what CUDA's kernel accepts (more than 16
  rows, K and N multiples of 8): zero rows and columns add nothing, so the padded products are
  the exact ones. The same padding is applied on every device, so the CPU test runs the code the
  GPU runs. Columns wider than int8 (the first layer, whose input x_q + k lives on the unbounded
  lattice, SPEC section 2) are split into base-2^7 digits x = sum_i d_i 2^(7 i), d_i in [0, 127]
  below the top digit and the top one signed in [-128, 127]: one int8 GEMM per digit, combined in
  int64 with shifts, exact (each digit GEMM stays below K * 128 * 127 < 2^31 for K < 2^17).
- The accumulator's zero-point correction, TFLite's double-rounding requantization, ADD and the
  pools are ``intrs.engine``'s own functions (``requantize``, ``add``, ``average_pool``,
  ``max_pool``, ``flatten``, ``argmax_lowest``), run on the device's tensors: no formula is
  written twice.

Exactness: integer addition and multiplication are exact in any order, int32 accumulators never
overflow here (checked, as the reference checks them), and the requantization is the reference's
code, so the logits are the reference engine's integers on any device; ``tests/test_torch_engine.py``
holds them equal on the CPU (and on CUDA where there is one). The certificate of the CPU engine
therefore carries over unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from . import engine
from .errors import ConfigError
from .intmodel import AddLayer, ConvLayer, IntegerModel

DIGIT_BITS = 7  # base-2^7 digits: the low ones in [0, 127], the top one signed, all int8
MIN_ROWS = 17  # CUDA's torch._int_mm wants more than 16 rows
DIM_MULTIPLE = 8  # and K, N multiples of 8
_MAX_K = 1 << 17  # K * 128 * 127 < 2^31: a digit GEMM cannot overflow its int32 accumulator


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


@dataclass
class _Conv:
    """A CONV_2D / FULLY_CONNECTED layer's constants on the device."""

    layer: ConvLayer
    weight_t: torch.Tensor  # int8 (K_pad, N_pad): column-major on CUDA, row-major on the CPU
    correction: torch.Tensor  # int64 (N,): bias - z_in * sum_k w[k, n]
    multiplier: torch.Tensor  # int64 (N,)
    shift: torch.Tensor  # int64 (N,)
    kernel: tuple[int, int]
    in_channels: int
    out_channels: int


class TorchEngine:
    """An integer model prepared on a torch device; ``forward`` gives the reference engine's int8 logits."""

    def __init__(self, model: IntegerModel, device: str | torch.device = "cpu"):
        self.model, self.device = model, torch.device(device)
        self._convs = {layer.name: self._prepare(layer) for layer in model.layers if isinstance(layer, ConvLayer)}

    def _prepare(self, layer: ConvLayer) -> _Conv:
        weight = torch.from_numpy(layer.weight)
        out_channels, in_channels, kh, kw = weight.shape
        # rows of the GEMM's right side in im2col order: (kh, kw, C_in), channels innermost
        rows = weight.permute(0, 2, 3, 1).reshape(out_channels, -1).to(torch.int64)
        k, n = rows.shape[1], out_channels
        if k >= _MAX_K:
            raise ConfigError(f"layer {layer.name}: {k} products per output exceed what an int32 digit GEMM holds")
        correction = torch.from_numpy(layer.bias).to(torch.int64) - layer.input_zero_point * rows.sum(dim=1)
        padded = torch.zeros((_round_up(n, DIM_MULTIPLE), _round_up(k, DIM_MULTIPLE)), dtype=torch.int8)
        padded[:n, :k] = weight.permute(0, 2, 3, 1).reshape(n, k)
        padded = padded.to(self.device)
        # cuBLASLt's int8 GEMM is fast with a column-major right side (a transposed view); the CPU's with a
        # row-major one. Either layout holds the same integers.
        weight_t = padded.t() if self.device.type == "cuda" else padded.t().contiguous()
        to = dict(device=self.device, dtype=torch.int64)
        return _Conv(layer, weight_t, correction.to(self.device), torch.from_numpy(layer.multiplier).to(**to),
                     torch.from_numpy(layer.shift).to(**to), (kh, kw), in_channels, out_channels)

    def forward(self, z) -> torch.Tensor:
        """int8 logits (N, classes) on the device for integer inputs (pixel steps, x_q = p + k)."""
        z = engine.check_input(self.model, z, self.device)
        values = {self.model.input_name: z}
        for layer in self.model.layers:
            inputs = [values[name] for name in layer.inputs]
            if isinstance(layer, ConvLayer):
                out = self._conv2d(inputs[0], self._convs[layer.name])
            elif isinstance(layer, AddLayer):
                out = engine.add(inputs[0], inputs[1], layer)
            elif layer.op == "average_pool":
                out = engine.average_pool(inputs[0], layer)
            elif layer.op == "max_pool":
                out = engine.max_pool(inputs[0], layer)
            else:
                out = engine.flatten(inputs[0])
            values[layer.output] = out
        return values[self.model.output_name]

    def predict(self, z) -> torch.Tensor:
        """The class of each input: the largest logit, ties to the lowest index (on the device)."""
        return engine.argmax_lowest(self.forward(z))

    def _conv2d(self, x: torch.Tensor, conv: _Conv) -> torch.Tensor:
        """TFLite's per-channel CONV_2D as ``engine.conv2d`` defines it: acc = sum x w + (b - z_in sum w),
        then ``engine.requantize``, the output zero point and the clamp; NCHW shape, channels-last memory."""
        layer = conv.layer
        flat = x.dim() == 2
        if flat:
            x = x[:, :, None, None]
        (kh, kw), (sh, sw), (ph, pw) = conv.kernel, layer.stride, layer.padding
        if ph or pw:
            x = F.pad(x, (pw, pw, ph, ph), value=layer.input_zero_point)
        windows = x.contiguous(memory_format=torch.channels_last).unfold(2, kh, sh).unfold(3, kw, sw)
        n, _, oh, ow = windows.shape[:4]
        columns = windows.permute(0, 2, 3, 4, 5, 1).reshape(n * oh * ow, kh * kw * conv.in_channels)
        acc = integer_matmul(columns, conv.weight_t)[:, :conv.out_channels]
        acc.add_(conv.correction)
        engine._check_int32(acc, f"the accumulator of {layer.name}")
        scaled = engine.requantize(acc, conv.multiplier, conv.shift)
        y = scaled.add_(layer.output_zero_point).clamp_(layer.act_min, layer.act_max).to(torch.int8)
        y = y.reshape(n, oh, ow, conv.out_channels).permute(0, 3, 1, 2)
        return y[:, :, 0, 0] if flat else y


def digit_count(low: int, high: int) -> int:
    """The number of base-2^7 int8 digits that represent every integer of [low, high] (1 for int8 values)."""
    digits = 1
    while not (-(1 << (DIGIT_BITS * digits)) <= low and high < (1 << (DIGIT_BITS * digits))):
        digits += 1
    return digits


def integer_matmul(columns: torch.Tensor, weight_t: torch.Tensor) -> torch.Tensor:
    """Exact int64 products columns (M, K) @ weight_t (K_pad, N_pad) for int8 weights and integer columns.

    The columns are padded with zeros to (max(M, 17) rounded up to 8, K_pad) and split into int8 digits
    (one for int8 values); each digit is one ``torch._int_mm`` and the int64 sum of the digit products
    shifted into place is the product. Returns the first M rows, all N_pad columns.
    """
    rows, k = columns.shape
    low, high = (int(v) for v in torch.aminmax(columns)) if columns.numel() else (0, 0)
    digits = digit_count(low, high)
    padded_rows = _round_up(max(rows, MIN_ROWS), DIM_MULTIPLE)
    wide = columns.to(torch.int32) if digits > 1 else columns
    out = None
    for i in range(digits):
        top = i == digits - 1
        digit = wide >> (DIGIT_BITS * i)  # arithmetic shift: floor division by 2^(7 i)
        if not top:
            digit = digit & ((1 << DIGIT_BITS) - 1)
        left = torch.zeros((padded_rows, weight_t.shape[0]), dtype=torch.int8, device=columns.device)
        left[:rows, :k] = digit
        product = torch._int_mm(left, weight_t)[:rows].to(torch.int64)
        out = product if out is None else out.add_(product << (DIGIT_BITS * i))
    return out


class TorchIntegerClassifier:
    """An integer model as a base classifier on a torch device: the engine's argmax, labels on the device."""

    def __init__(self, model: IntegerModel, device: str | torch.device = "cpu"):
        self.model, self.engine = model, TorchEngine(model, device)
        self.device = self.engine.device

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        return self.engine.predict(batch)
