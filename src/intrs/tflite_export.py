"""Integer model -> TFLite flatbuffer with int8 builtin ops, built with the ``tflite`` schema package.

Every tensor and quantization parameter comes from the integer model: weights
and biases as stored, scales and zero points as stored (float32), so TFLite's
own preparation (QuantizeMultiplier of double(s_in) * double(s_w) / double(s_out))
recomputes exactly the multipliers the engine uses. Layout is NHWC; weights OHWI.

Ops: CONV_2D (per-channel int8; the classifier head as a 1x1 CONV_2D, never
FULLY_CONNECTED), ADD, AVERAGE_POOL_2D (global pooling too, never MEAN), PAD
where PyTorch's symmetric padding differs from TFLite's SAME, RESHAPE for the
final logits (SPEC section 6).
"""

from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import replace

import flatbuffers
import numpy as np

from .errors import ConfigError
from .intmodel import AddLayer, ConvLayer, IntegerModel, PoolLayer

# tflite schema enums (tflite/BuiltinOperator.py, BuiltinOptions.py, TensorType.py, Padding.py,
# ActivationFunctionType.py)
ADD, AVERAGE_POOL_2D, CONV_2D, MAX_POOL_2D, RESHAPE, PAD = 0, 1, 3, 17, 22, 34
OPTIONS_CONV, OPTIONS_POOL, OPTIONS_ADD, OPTIONS_RESHAPE, OPTIONS_PAD = 1, 5, 11, 17, 22
INT32, INT8 = 2, 9
SAME, VALID = 0, 1
NO_ACTIVATION, RELU = 0, 1
OP_VERSIONS = {ADD: 2, AVERAGE_POOL_2D: 2, CONV_2D: 3, MAX_POOL_2D: 2, RESHAPE: 1, PAD: 2}


class _Graph:
    """Tensors, buffers and operators of one subgraph, collected before serialisation."""

    def __init__(self):
        self.tensors: list[dict] = []
        self.buffers: list[bytes] = [b""]  # buffer 0 is the empty sentinel
        self.operators: list[dict] = []
        self.opcodes: list[int] = []

    def tensor(self, name: str, shape, dtype: int, scales=None, zero_points=None, data: np.ndarray | None = None,
               axis: int = 0) -> int:
        buffer = 0
        if data is not None:
            self.buffers.append(np.ascontiguousarray(data).tobytes())
            buffer = len(self.buffers) - 1
        self.tensors.append({"name": name, "shape": [int(d) for d in shape], "type": dtype, "buffer": buffer,
                             "scales": None if scales is None else [float(s) for s in np.atleast_1d(scales)],
                             "zero_points": None if zero_points is None else
                             [int(z) for z in np.atleast_1d(zero_points)], "axis": axis})
        return len(self.tensors) - 1

    def op(self, code: int, inputs: list[int], outputs: list[int], options_type: int = 0, options=None) -> None:
        if code not in self.opcodes:
            self.opcodes.append(code)
        self.operators.append({"opcode": self.opcodes.index(code), "inputs": inputs, "outputs": outputs,
                               "options_type": options_type, "options": options})


def input_shift(model: IntegerModel) -> int:
    """How far the model's (saturated) integer input moves to fit int8: 128 for inputs saturated to [0, 255]."""
    if model.input_saturation is not None:
        low, high = model.input_saturation
    else:
        low, high = model.input_range
    if low >= -128 and high <= 127:
        return 0
    if high - low > 255:
        raise ConfigError(f"the model's input range [{low}, {high}] does not fit int8: a TFLite int8 model needs the "
                          "noisy input saturated first (intrs quantize --saturate-input, or intrs export --saturate)")
    return low + 128


def tflite_input(model: IntegerModel, z) -> np.ndarray:
    """What the device feeds the exported model for noisy integer inputs z: saturate, then shift to int8."""
    z = np.asarray(z).astype(np.int64)
    if model.input_saturation is not None:
        z = np.clip(z, *model.input_saturation)
    return (z - input_shift(model)).astype(np.int8)


def export_tflite(model: IntegerModel, batch: int = 1) -> bytes:
    """The integer model as a .tflite flatbuffer (int8 input and output, NHWC)."""
    shift = input_shift(model)
    if shift:  # the input tensor and the layers reading it see x - shift with zero point z - shift
        qparams = dict(model.value_qparams)
        scale, zero = qparams[model.input_name]
        qparams[model.input_name] = (scale, zero - shift)
        model = replace(model, value_qparams=qparams, layers=[_shift_input(layer, model.input_name, shift)
                                                              for layer in model.layers])
    graph = _Graph()
    c, h, w = model.input_shape
    in_scale, in_zero = model.value_qparams[model.input_name]
    values = {model.input_name: (graph.tensor(model.input_name, (batch, h, w, c), INT8, in_scale, in_zero),
                                 (h, w, c))}
    graph_input = values[model.input_name][0]
    for layer in model.layers:
        source, shape = values[layer.inputs[0]]
        if isinstance(layer, ConvLayer):
            values[layer.output] = _conv(graph, layer, source, shape, batch, model)
        elif isinstance(layer, AddLayer):
            scale, zero = model.value_qparams[layer.output]
            out = graph.tensor(layer.output, (batch, *shape), INT8, scale, zero)
            graph.op(ADD, [source, values[layer.inputs[1]][0]], [out], OPTIONS_ADD,
                     ("add", RELU if layer.relu else NO_ACTIVATION))
            values[layer.output] = (out, shape)
        elif layer.op == "flatten":
            if shape[:2] != (1, 1):
                raise ConfigError(f"flatten {layer.name} of a {shape} map reorders channels in NHWC: not exported")
            values[layer.output] = (source, shape)  # (N, 1, 1, C) already is the flat layout
        else:
            values[layer.output] = _pool(graph, layer, source, shape, batch, model)
    logits, shape = values[model.output_name]
    scale, zero = model.value_qparams[model.output_name]
    flat = graph.tensor("logits", (batch, int(np.prod(shape))), INT8, scale, zero)
    # -1: the batch follows the input when a runtime resizes it
    new_shape = graph.tensor("logits_shape", (2,), INT32, data=np.array([-1, int(np.prod(shape))], np.int32))
    graph.op(RESHAPE, [logits, new_shape], [flat], OPTIONS_RESHAPE, ("reshape", [-1, int(np.prod(shape))]))
    return _serialise(graph, [graph_input], [flat])


def _shift_input(layer, input_name: str, shift: int):
    if isinstance(layer, ConvLayer) and layer.inputs[0] == input_name:
        return replace(layer, input_zero_point=layer.input_zero_point - shift)
    if isinstance(layer, AddLayer) and input_name in layer.inputs:
        return replace(layer, input1_zero_point=layer.input1_zero_point - shift * (layer.inputs[0] == input_name),
                       input2_zero_point=layer.input2_zero_point - shift * (layer.inputs[1] == input_name))
    if input_name in layer.inputs:
        raise ConfigError(f"layer {layer.name} reads the shifted input directly: not exported")
    return layer


def _conv(graph: _Graph, layer: ConvLayer, source: int, shape, batch: int, model: IntegerModel):
    h, w, c = shape
    out_channels, _, kh, kw = layer.weight.shape
    (sh, sw), (ph, pw) = layer.stride, layer.padding
    in_scale, in_zero = model.value_qparams[layer.inputs[0]]
    padding = VALID
    if (ph, pw) != (0, 0):
        if (sh, sw) == (1, 1) and (ph, pw) == ((kh - 1) // 2, (kw - 1) // 2) and kh % 2 and kw % 2:
            padding = SAME  # symmetric, so TFLite's SAME is PyTorch's padding
        else:
            # TFLite's SAME puts the odd pixel at the bottom/right; PyTorch pads both sides. PAD fills
            # with the zero point, which the reference convolution skips: the same sum.
            padded = graph.tensor(f"{layer.name}_padded", (batch, h + 2 * ph, w + 2 * pw, c), INT8, in_scale, in_zero)
            pads = graph.tensor(f"{layer.name}_pads", (4, 2), INT32,
                                data=np.array([[0, 0], [ph, ph], [pw, pw], [0, 0]], np.int32))
            graph.op(PAD, [source, pads], [padded], OPTIONS_PAD, ("pad",))
            source, h, w = padded, h + 2 * ph, w + 2 * pw
    if padding == SAME:
        oh, ow = h, w
    else:
        oh, ow = (h - kh) // sh + 1, (w - kw) // sw + 1
    weight = graph.tensor(f"{layer.name}_weight", (out_channels, kh, kw, c), INT8, layer.weight_scale,
                          np.zeros(out_channels, np.int64), layer.weight.transpose(0, 2, 3, 1))
    bias_scales = np.float32(in_scale) * layer.weight_scale.astype(np.float32)
    bias = graph.tensor(f"{layer.name}_bias", (out_channels,), INT32, bias_scales, np.zeros(out_channels, np.int64),
                        layer.bias)
    out_scale, out_zero = model.value_qparams[layer.output]
    out = graph.tensor(layer.output, (batch, oh, ow, out_channels), INT8, out_scale, out_zero)
    graph.op(CONV_2D, [source, weight, bias], [out], OPTIONS_CONV,
             ("conv", padding, sw, sh, RELU if layer.relu else NO_ACTIVATION))
    return out, (oh, ow, out_channels)


def _pool(graph: _Graph, layer: PoolLayer, source: int, shape, batch: int, model: IntegerModel):
    h, w, c = shape
    if layer.is_global:
        (kh, kw), (sh, sw) = (h, w), (1, 1)
    else:
        (kh, kw), (sh, sw) = layer.kernel, layer.stride
        if tuple(layer.padding) != (0, 0):
            raise ConfigError(f"pooling {layer.name} with padding is not exported yet")
    oh, ow = (h - kh) // sh + 1, (w - kw) // sw + 1
    scale, zero = model.value_qparams[layer.output]
    out = graph.tensor(layer.output, (batch, oh, ow, c), INT8, scale, zero)
    code = AVERAGE_POOL_2D if layer.op == "average_pool" else MAX_POOL_2D
    graph.op(code, [source], [out], OPTIONS_POOL, ("pool", VALID, sw, sh, kw, kh))
    return out, (oh, ow, c)


# ---------------------------------------------------------------- flatbuffer serialisation


def _vector(builder, start, items, prepend):
    start(builder, len(items))
    for item in reversed(items):
        prepend(item)
    return builder.EndVector()


def _serialise(graph: _Graph, inputs: list[int], outputs: list[int]) -> bytes:
    (Buffer, Conv2DOptions, Model, Operator, OperatorCode, Pool2DOptions, QuantizationParameters, ReshapeOptions,
     SubGraph, Tensor, AddOptions, PadOptions) = _schema("Buffer", "Conv2DOptions", "Model", "Operator", "OperatorCode",
                                                         "Pool2DOptions", "QuantizationParameters", "ReshapeOptions",
                                                         "SubGraph", "Tensor", "AddOptions", "PadOptions")

    b = flatbuffers.Builder(1024)
    buffers = []
    for data in graph.buffers:
        vec = None
        if data:  # the uint32 length prefix keeps the data 4-byte aligned, as int32 biases need
            vec = b.CreateNumpyVector(np.frombuffer(data, dtype=np.uint8))
        Buffer.BufferStart(b)
        if vec is not None:
            Buffer.BufferAddData(b, vec)
        buffers.append(Buffer.BufferEnd(b))

    tensors = []
    for t in graph.tensors:
        name = b.CreateString(t["name"])
        shape = _vector(b, Tensor.TensorStartShapeVector, t["shape"], b.PrependInt32)
        quant = None
        if t["scales"] is not None:
            scales = _vector(b, QuantizationParameters.QuantizationParametersStartScaleVector, t["scales"],
                             b.PrependFloat32)
            zeros = _vector(b, QuantizationParameters.QuantizationParametersStartZeroPointVector, t["zero_points"],
                            b.PrependInt64)
            QuantizationParameters.QuantizationParametersStart(b)
            QuantizationParameters.QuantizationParametersAddScale(b, scales)
            QuantizationParameters.QuantizationParametersAddZeroPoint(b, zeros)
            QuantizationParameters.QuantizationParametersAddQuantizedDimension(b, t["axis"])
            quant = QuantizationParameters.QuantizationParametersEnd(b)
        Tensor.TensorStart(b)
        Tensor.TensorAddShape(b, shape)
        Tensor.TensorAddType(b, t["type"])
        Tensor.TensorAddBuffer(b, t["buffer"])
        Tensor.TensorAddName(b, name)
        if quant is not None:
            Tensor.TensorAddQuantization(b, quant)
        tensors.append(Tensor.TensorEnd(b))

    operators = []
    for op in graph.operators:
        options = _options(b, op["options"], Conv2DOptions, Pool2DOptions, AddOptions, ReshapeOptions, PadOptions)
        ins = _vector(b, Operator.OperatorStartInputsVector, op["inputs"], b.PrependInt32)
        outs = _vector(b, Operator.OperatorStartOutputsVector, op["outputs"], b.PrependInt32)
        Operator.OperatorStart(b)
        Operator.OperatorAddOpcodeIndex(b, op["opcode"])
        Operator.OperatorAddInputs(b, ins)
        Operator.OperatorAddOutputs(b, outs)
        if options is not None:
            Operator.OperatorAddBuiltinOptionsType(b, op["options_type"])
            Operator.OperatorAddBuiltinOptions(b, options)
        operators.append(Operator.OperatorEnd(b))

    tensor_vec = _vector(b, SubGraph.SubGraphStartTensorsVector, tensors, b.PrependUOffsetTRelative)
    in_vec = _vector(b, SubGraph.SubGraphStartInputsVector, inputs, b.PrependInt32)
    out_vec = _vector(b, SubGraph.SubGraphStartOutputsVector, outputs, b.PrependInt32)
    op_vec = _vector(b, SubGraph.SubGraphStartOperatorsVector, operators, b.PrependUOffsetTRelative)
    sub_name = b.CreateString("main")
    SubGraph.SubGraphStart(b)
    SubGraph.SubGraphAddTensors(b, tensor_vec)
    SubGraph.SubGraphAddInputs(b, in_vec)
    SubGraph.SubGraphAddOutputs(b, out_vec)
    SubGraph.SubGraphAddOperators(b, op_vec)
    SubGraph.SubGraphAddName(b, sub_name)
    subgraph = SubGraph.SubGraphEnd(b)

    codes = []
    for code in graph.opcodes:
        OperatorCode.OperatorCodeStart(b)
        OperatorCode.OperatorCodeAddDeprecatedBuiltinCode(b, code)
        OperatorCode.OperatorCodeAddBuiltinCode(b, code)
        OperatorCode.OperatorCodeAddVersion(b, OP_VERSIONS[code])
        codes.append(OperatorCode.OperatorCodeEnd(b))
    code_vec = _vector(b, Model.ModelStartOperatorCodesVector, codes, b.PrependUOffsetTRelative)
    sub_vec = _vector(b, Model.ModelStartSubgraphsVector, [subgraph], b.PrependUOffsetTRelative)
    buf_vec = _vector(b, Model.ModelStartBuffersVector, buffers, b.PrependUOffsetTRelative)
    description = b.CreateString("intrs integer model")
    Model.ModelStart(b)
    Model.ModelAddVersion(b, 3)
    Model.ModelAddOperatorCodes(b, code_vec)
    Model.ModelAddSubgraphs(b, sub_vec)
    Model.ModelAddBuffers(b, buf_vec)
    Model.ModelAddDescription(b, description)
    b.Finish(Model.ModelEnd(b), file_identifier=b"TFL3")
    return bytes(b.Output())


def _schema(*names: str):
    """The tflite package's generated modules (its __init__ rebinds each name to the class)."""
    import importlib

    try:
        return [importlib.import_module(f"tflite.{name}") for name in names]
    except ImportError:
        raise ConfigError("TFLite export needs the flatbuffers schema package: pip install tflite") from None


def _options(b, spec, Conv2DOptions, Pool2DOptions, AddOptions, ReshapeOptions, PadOptions):
    if spec is None:
        return None
    kind = spec[0]
    if kind == "conv":
        _, padding, stride_w, stride_h, activation = spec
        Conv2DOptions.Conv2DOptionsStart(b)
        Conv2DOptions.Conv2DOptionsAddPadding(b, padding)
        Conv2DOptions.Conv2DOptionsAddStrideW(b, stride_w)
        Conv2DOptions.Conv2DOptionsAddStrideH(b, stride_h)
        Conv2DOptions.Conv2DOptionsAddFusedActivationFunction(b, activation)
        Conv2DOptions.Conv2DOptionsAddDilationWFactor(b, 1)
        Conv2DOptions.Conv2DOptionsAddDilationHFactor(b, 1)
        return Conv2DOptions.Conv2DOptionsEnd(b)
    if kind == "pool":
        _, padding, stride_w, stride_h, filter_w, filter_h = spec
        Pool2DOptions.Pool2DOptionsStart(b)
        Pool2DOptions.Pool2DOptionsAddPadding(b, padding)
        Pool2DOptions.Pool2DOptionsAddStrideW(b, stride_w)
        Pool2DOptions.Pool2DOptionsAddStrideH(b, stride_h)
        Pool2DOptions.Pool2DOptionsAddFilterWidth(b, filter_w)
        Pool2DOptions.Pool2DOptionsAddFilterHeight(b, filter_h)
        return Pool2DOptions.Pool2DOptionsEnd(b)
    if kind == "add":
        AddOptions.AddOptionsStart(b)
        AddOptions.AddOptionsAddFusedActivationFunction(b, spec[1])
        return AddOptions.AddOptionsEnd(b)
    if kind == "reshape":
        shape = _vector(b, ReshapeOptions.ReshapeOptionsStartNewShapeVector, spec[1], b.PrependInt32)
        ReshapeOptions.ReshapeOptionsStart(b)
        ReshapeOptions.ReshapeOptionsAddNewShape(b, shape)
        return ReshapeOptions.ReshapeOptionsEnd(b)
    PadOptions.PadOptionsStart(b)
    return PadOptions.PadOptionsEnd(b)


RESOLVERS = ("reference", "builtin", "default")


@contextlib.contextmanager
def _native_stderr_silenced():
    """File descriptor 2 pointed at /dev/null for the block: native libraries' log lines, which Python's
    sys.stderr never sees, stay off the user's terminal. Python's own errors are raised after it is restored."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def run_tflite(content: bytes, inputs: np.ndarray, resolver: str = "reference") -> np.ndarray:
    """Run a .tflite model with LiteRT (NCHW int8 inputs in, int8 logits out).

    ``resolver``: 'reference' (BUILTIN_REF, the reference kernels), 'builtin'
    (optimized kernels, no XNNPACK) or 'default' (with XNNPACK).
    """
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    kinds = {"reference": OpResolverType.BUILTIN_REF, "builtin": OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
             "default": OpResolverType.AUTO}
    try:
        with _native_stderr_silenced():  # LiteRT's C++ logs "INFO: Created TensorFlow Lite XNNPACK delegate" there
            interpreter = Interpreter(model_content=content, experimental_op_resolver_type=kinds[resolver])
        detail = interpreter.get_input_details()[0]
        nhwc = np.ascontiguousarray(np.asarray(inputs).transpose(0, 2, 3, 1)).astype(np.int8)
        if tuple(detail["shape"][1:]) != nhwc.shape[1:] or detail["dtype"] != np.int8:
            raise ConfigError(f"the .tflite model takes {detail['dtype'].__name__} inputs of shape "
                              f"{tuple(detail['shape'])} (NHWC), not the integer model's {nhwc.shape}")
        if tuple(detail["shape"]) != nhwc.shape:
            interpreter.resize_tensor_input(detail["index"], list(nhwc.shape))
        with _native_stderr_silenced():
            interpreter.allocate_tensors()
            interpreter.set_tensor(detail["index"], nhwc)
            interpreter.invoke()
        return interpreter.get_tensor(interpreter.get_output_details()[0]["index"]).copy()
    except (ValueError, RuntimeError) as exc:
        raise ConfigError(f"LiteRT cannot run this .tflite model ({str(exc).splitlines()[0][:160]}); "
                          "is the file corrupt?") from None
