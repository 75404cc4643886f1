"""The integer model file: int8 weights, int32 biases and fixed-point multipliers, nothing else.

One ``.npz`` file (read with ``allow_pickle=False``: no code is ever unpickled)
holding a JSON header with a versioned schema and one integer array per tensor.
Loading validates every dtype, shape and value range, so a corrupt or foreign
file is refused with one clear error instead of computing garbage.

The float scales are kept beside the integers for provenance and for building
the fake-quantized twin; the integer forward pass (``intrs.engine``) never reads
them.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from .errors import CheckpointError
from .files import write_atomically

FORMAT = "intrs-integer-model"
VERSION = 1
REQUANTIZATIONS = ("double-rounding",)  # TFLite's default, as LiteRT's BUILTIN_REF resolver computes it
# TFLite's int8 ADD (kernels/add.cc) lifts both inputs by 2^20 before rescaling them: part of what an AddLayer's
# multipliers mean, so quant (which computes them), engine and the compiled kernels (which apply them) read it here.
ADD_LEFT_SHIFT = 20


def quantize_multiplier(real: float) -> tuple[int, int]:
    """TFLite's QuantizeMultiplier: real = M0 * 2^(shift - 31), M0 in [2^30, 2^31) an int32.

    frexp, then M0 = round(q * 2^31) half away from zero (C's std::round, not
    Python's round); renormalised when it reaches 2^31; flushed to (0, 0) when
    shift < -31 (tensorflow/lite/kernels/internal/quantization_util.cc).
    """
    if real == 0:
        return 0, 0
    if not math.isfinite(real) or real < 0:
        raise CheckpointError(f"a requantization multiplier must be finite and positive, got {real}")
    q, shift = math.frexp(real)
    m0 = math.floor(q * (1 << 31) + 0.5)  # q * 2^31 >= 2^30 is exact in a double, so this is std::round
    if m0 == 1 << 31:
        m0, shift = m0 // 2, shift + 1
    if shift < -31:
        return 0, 0
    return m0, shift


def quantize_multiplier_smaller_than_one(real: float) -> tuple[int, int]:
    """TFLite's QuantizeMultiplierSmallerThanOneExp: the same, for 0 < real < 1 (shift <= 0)."""
    if not 0 < real < 1:
        raise CheckpointError(f"an ADD multiplier must lie in (0, 1), got {real}")
    return quantize_multiplier(real)


@dataclass
class ConvLayer:
    """CONV_2D (per-channel int8 weights) or FULLY_CONNECTED (a 1x1 convolution on (N, C))."""

    name: str
    op: str  # "conv2d" or "fully_connected"
    inputs: list[str]
    output: str
    weight: np.ndarray  # int8 (O, C, kh, kw) in [-127, 127]
    bias: np.ndarray  # int32 (O,)
    multiplier: np.ndarray  # int32 (O,), M0 in [2^30, 2^31) or 0
    shift: np.ndarray  # int32 (O,)
    stride: tuple[int, int]
    padding: tuple[int, int]
    input_zero_point: int
    output_zero_point: int
    act_min: int
    act_max: int
    input_scale: float
    output_scale: float
    weight_scale: np.ndarray  # float32 (O,): provenance only
    relu: bool = False

    ARRAYS = ("weight", "bias", "multiplier", "shift", "weight_scale")


@dataclass
class AddLayer:
    """TFLite's int8 ADD with its per-input and output multipliers (left shift 20)."""

    name: str
    op: str  # "add"
    inputs: list[str]
    output: str
    input1_zero_point: int
    input2_zero_point: int
    output_zero_point: int
    input1_multiplier: int
    input1_shift: int
    input2_multiplier: int
    input2_shift: int
    output_multiplier: int
    output_shift: int
    act_min: int
    act_max: int
    input1_scale: float
    input2_scale: float
    output_scale: float
    relu: bool = False

    ARRAYS = ()


@dataclass
class PoolLayer:
    """AVERAGE_POOL_2D, MAX_POOL_2D (same scale and zero point in and out) or a flatten."""

    name: str
    op: str  # "average_pool", "max_pool" or "flatten"
    inputs: list[str]
    output: str
    kernel: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    is_global: bool = False
    act_min: int = -128
    act_max: int = 127

    ARRAYS = ()


Layer = ConvLayer | AddLayer | PoolLayer
_LAYER_TYPES = {"conv2d": ConvLayer, "fully_connected": ConvLayer, "add": AddLayer, "average_pool": PoolLayer,
                "max_pool": PoolLayer, "flatten": PoolLayer}


@dataclass
class IntegerModel:
    """An integer-only classifier: the input spec, the layers in order, the output value."""

    input_name: str
    input_shape: tuple[int, int, int]
    input_range: tuple[int, int]  # the first layer's input type: int16 unless clipping is recorded
    input_scale: float
    layers: list[Layer]
    output_name: str
    value_qparams: dict[str, tuple[float, int]]  # value -> (scale, zero point), for the fake-quantized twin
    requantization: str = "double-rounding"
    meta: dict = field(default_factory=dict)
    # Saturation of the noisy input, the base classifier's first step when recorded (SPEC section 2):
    # (0, 255) makes the input fit int8 after a shift of -128, as a TFLite int8 model needs.
    input_saturation: tuple[int, int] | None = None

    @property
    def num_classes(self) -> int:
        last = [layer for layer in self.layers if isinstance(layer, ConvLayer)][-1]
        return int(last.weight.shape[0])


def with_input_saturation(model: IntegerModel, low: int = 0, high: int = 255) -> IntegerModel:
    """The same integer model with the noisy input saturated to [low, high] as its first step.

    A different function from ``model`` wherever a noisy pixel leaves [low, high]:
    certify the variant you deploy. (0, 255) is what a TFLite int8 input holds.
    """
    return replace(model, input_saturation=(int(low), int(high)), meta={**model.meta, "input_saturation": [low, high]})


# ---------------------------------------------------------------- save / load


def save_integer_model(model: IntegerModel, path: str | Path) -> Path:
    """Write ``model`` as one versioned .npz file, atomically."""
    path = Path(path)
    arrays, layers = {}, []
    for i, layer in enumerate(model.layers):
        record = {k: v for k, v in asdict(layer).items() if k not in layer.ARRAYS}
        for name in layer.ARRAYS:
            arrays[f"layers.{i}.{name}"] = np.asarray(getattr(layer, name))
        layers.append(record)
    header = {
        "format": FORMAT, "version": VERSION, "input_name": model.input_name,
        "input_shape": list(model.input_shape), "input_range": list(model.input_range),
        "input_scale": model.input_scale, "output_name": model.output_name, "requantization": model.requantization,
        "value_qparams": {k: [float(s), int(z)] for k, (s, z) in model.value_qparams.items()},
        "input_saturation": None if model.input_saturation is None else list(model.input_saturation),
        "layers": layers, "meta": model.meta,
    }
    arrays["header"] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
    # A file object, not a name: np.savez would append ".npz" to a temporary's name.
    return write_atomically(path, lambda handle: np.savez(handle, **arrays))


def load_integer_model(path: str | Path) -> IntegerModel:
    """Read and validate an integer model file; any inconsistency is a ``CheckpointError``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"integer model {path} not found: make one with 'intrs quantize'")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
        header = json.loads(arrays.pop("header").tobytes().decode())
    except Exception as exc:
        raise CheckpointError(f"{path} is not an intrs integer model ({type(exc).__name__}); "
                              "re-create it with 'intrs quantize'") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an intrs integer model (no '{FORMAT}' header)")
    if header.get("version") != VERSION:
        raise CheckpointError(f"{path} has integer-model version {header.get('version')}, this intrs reads {VERSION}")
    try:
        layers = []
        for i, record in enumerate(header["layers"]):
            cls = _LAYER_TYPES[record["op"]]
            fields = {k: tuple(v) if isinstance(v, list) and k not in ("inputs",) else v for k, v in record.items()}
            fields.update({name: arrays[f"layers.{i}.{name}"] for name in cls.ARRAYS})
            layers.append(cls(**fields))
        model = IntegerModel(header["input_name"], tuple(header["input_shape"]), tuple(header["input_range"]),
                             float(header["input_scale"]), layers, header["output_name"],
                             {k: (float(s), int(z)) for k, (s, z) in header["value_qparams"].items()},
                             header["requantization"], header.get("meta", {}),
                             None if header.get("input_saturation") is None else tuple(header["input_saturation"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"integer model {path} is damaged ({type(exc).__name__}: {str(exc)[:120]})") from None
    validate(model, path)
    return model


def _fail(path, message: str):
    raise CheckpointError(f"integer model {path}: {message}")


def _in_range(array: np.ndarray, low: int, high: int) -> bool:
    return array.size == 0 or (int(array.min()) >= low and int(array.max()) <= high)


def validate(model: IntegerModel, path: str | Path = "<memory>") -> None:
    """Check dtypes, shapes, value ranges and the wiring of every layer."""
    if model.requantization not in REQUANTIZATIONS:
        _fail(path, f"unknown requantization {model.requantization!r}")
    low, high = model.input_range
    if not -(2 ** 31) <= low < high < 2 ** 31:
        _fail(path, f"bad input range {model.input_range}")
    if model.input_saturation is not None:
        lo, hi = model.input_saturation
        if not low <= lo < hi <= high:
            _fail(path, f"input saturation {model.input_saturation} outside the input range {model.input_range}")
    known = {model.input_name}
    for layer in model.layers:
        missing = [name for name in layer.inputs if name not in known]
        if missing or len(layer.inputs) != (2 if layer.op == "add" else 1):
            _fail(path, f"layer {layer.name} reads {layer.inputs}, but only {sorted(known)} exist before it")
        if not (-128 <= layer.act_min <= layer.act_max <= 127):
            _fail(path, f"layer {layer.name} has clamp bounds [{layer.act_min}, {layer.act_max}] outside int8")
        if isinstance(layer, ConvLayer):
            _validate_conv(layer, path)
        elif isinstance(layer, AddLayer):
            zero_points = (layer.input1_zero_point, layer.input2_zero_point, layer.output_zero_point)
            if not all(-128 <= z <= 127 for z in zero_points):
                _fail(path, f"layer {layer.name} has zero points {zero_points} outside int8")
            for m, s in ((layer.input1_multiplier, layer.input1_shift), (layer.input2_multiplier, layer.input2_shift),
                         (layer.output_multiplier, layer.output_shift)):
                if not (2 ** 30 <= m < 2 ** 31 and -31 <= s <= 0):
                    _fail(path, f"layer {layer.name} has an ADD multiplier ({m}, {s}) outside [2^30, 2^31) x [-31, 0]")
        known.add(layer.output)
    if model.output_name not in known:
        _fail(path, f"output {model.output_name!r} is never computed")


def _validate_conv(layer: ConvLayer, path) -> None:
    expected = {"weight": np.int8, "bias": np.int32, "multiplier": np.int32, "shift": np.int32,
                "weight_scale": np.float32}
    for name, dtype in expected.items():
        if getattr(layer, name).dtype != dtype:
            _fail(path, f"layer {layer.name}: {name} has dtype {getattr(layer, name).dtype}, expected {np.dtype(dtype)}")
    weight = layer.weight
    if weight.ndim != 4 or any(getattr(layer, n).shape != (weight.shape[0],) for n in ("bias", "multiplier", "shift")):
        _fail(path, f"layer {layer.name}: weight {weight.shape} does not match bias/multiplier/shift shapes")
    if not _in_range(weight, -127, 127):
        _fail(path, f"layer {layer.name}: weights outside the symmetric int8 range [-127, 127]")
    m = layer.multiplier
    if not np.all((m == 0) | ((m >= 2 ** 30) & (m.astype(np.int64) < 2 ** 31))) or not _in_range(layer.shift, -31, 30):
        _fail(path, f"layer {layer.name}: multipliers outside [2^30, 2^31) or shifts outside [-31, 30]")
    if not (-128 <= layer.output_zero_point <= 127) or min(layer.stride) < 1 or min(layer.padding) < 0:
        _fail(path, f"layer {layer.name}: bad zero point, stride or padding")
