"""Integer model -> ONNX in QDQ form, for onnxruntime as a second, independent runtime.

Every int8 tensor of the integer model is a QuantizeLinear output and is read
through DequantizeLinear; weights (int8, per-channel) and biases (int32, scale
s_in * s_w) are stored as integers. onnxruntime requantizes in float with
round-half-to-even, unlike TFLite's fixed-point double rounding (SPEC section 6),
so agreement with the engine is measured and reported, not expected to be exact.
The input is the noisy integer image (int16, scale 1/255, zero point 0).
"""

from __future__ import annotations

import numpy as np

from .errors import ConfigError
from .intmodel import AddLayer, ConvLayer, IntegerModel

OPSET = 21  # DequantizeLinear of int16 and int32 tensors


def export_onnx(model: IntegerModel) -> bytes:
    """The integer model as a QDQ ONNX model: int16 input (N, C, H, W), int8 logits out."""
    import onnx  # optional (intrs[export]): the CLI names the extra when it is missing
    from onnx import TensorProto, helper, numpy_helper

    nodes, initializers = [], []

    def const(name: str, array: np.ndarray) -> str:
        initializers.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def dequantized(value: str, source: str | None = None) -> str:
        scale, zero = model.value_qparams[value]
        out = f"{value}_float"
        if value == model.input_name:
            zero_point = const(f"{value}_zero", np.array(zero, np.int16))
        else:
            zero_point = const(f"{value}_zero", np.array(zero, np.int8))
        nodes.append(helper.make_node("DequantizeLinear", [source or value, const(f"{value}_scale", np.float32(scale)),
                                                           zero_point], [out]))
        return out

    def quantize(real: str, value: str) -> None:
        scale, zero = model.value_qparams[value]
        nodes.append(helper.make_node("QuantizeLinear", [real, const(f"{value}_oscale", np.float32(scale)),
                                                         const(f"{value}_ozero", np.array(zero, np.int8))], [value]))

    source = model.input_name
    if model.input_saturation is not None:  # the recorded first step of the base classifier
        lo, hi = model.input_saturation
        nodes.append(helper.make_node("Clip", [model.input_name, const("saturation_low", np.array(lo, np.int16)),
                                               const("saturation_high", np.array(hi, np.int16))], ["saturated"]))
        source = "saturated"
    floats = {model.input_name: dequantized(model.input_name, source)}
    for layer in model.layers:
        x = floats[layer.inputs[0]]
        if isinstance(layer, ConvLayer):
            in_scale = model.value_qparams[layer.inputs[0]][0]
            w = f"{layer.name}_w"
            nodes.append(helper.make_node("DequantizeLinear", [
                const(f"{layer.name}_wq", layer.weight), const(f"{layer.name}_ws", layer.weight_scale),
                const(f"{layer.name}_wz", np.zeros(len(layer.weight_scale), np.int8))], [w], axis=0))
            b = f"{layer.name}_b"
            bias_scale = (np.float32(in_scale) * layer.weight_scale).astype(np.float32)
            nodes.append(helper.make_node("DequantizeLinear", [
                const(f"{layer.name}_bq", layer.bias), const(f"{layer.name}_bs", bias_scale),
                const(f"{layer.name}_bz", np.zeros(len(bias_scale), np.int32))], [b], axis=0))
            y = f"{layer.name}_acc"
            if layer.op == "fully_connected":
                flat_w = f"{layer.name}_w2"
                nodes.append(helper.make_node("Flatten", [w], [flat_w], axis=1))
                nodes.append(helper.make_node("Gemm", [x, flat_w, b], [y], transB=1))
            else:
                (ph, pw) = layer.padding
                nodes.append(helper.make_node("Conv", [x, w, b], [y], strides=list(layer.stride),
                                              pads=[ph, pw, ph, pw]))
            if layer.relu:
                nodes.append(helper.make_node("Relu", [y], [y + "_relu"]))
                y += "_relu"
            quantize(y, layer.output)
        elif isinstance(layer, AddLayer):
            y = f"{layer.name}_sum"
            nodes.append(helper.make_node("Add", [x, floats[layer.inputs[1]]], [y]))
            if layer.relu:
                nodes.append(helper.make_node("Relu", [y], [y + "_relu"]))
                y += "_relu"
            quantize(y, layer.output)
        elif layer.op == "flatten":
            floats[layer.output] = f"{layer.name}_flat"
            nodes.append(helper.make_node("Flatten", [x], [floats[layer.output]], axis=1))
            continue
        else:
            y = f"{layer.name}_pool"
            if layer.is_global:
                nodes.append(helper.make_node("GlobalAveragePool", [x], [y]))
            else:
                op = "AveragePool" if layer.op == "average_pool" else "MaxPool"
                (ph, pw) = layer.padding
                nodes.append(helper.make_node(op, [x], [y], kernel_shape=list(layer.kernel), strides=list(layer.stride),
                                              pads=[ph, pw, ph, pw]))
            quantize(y, layer.output)
        floats[layer.output] = dequantized(layer.output)

    c, h, w = model.input_shape
    graph = helper.make_graph(nodes, "intrs", [helper.make_tensor_value_info(model.input_name, TensorProto.INT16,
                                                                              ["N", c, h, w])],
                              [helper.make_tensor_value_info(model.output_name, TensorProto.INT8,
                                                             ["N", model.num_classes])], initializers)
    onnx_model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="intrs")
    onnx.checker.check_model(onnx_model)
    return onnx_model.SerializeToString()


def run_onnx(content: bytes, z: np.ndarray) -> np.ndarray:
    """int8 logits from onnxruntime for integer inputs z (N, C, H, W), which must fit int16."""
    import onnxruntime

    try:
        session = onnxruntime.InferenceSession(content, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        z = np.asarray(z)
        if z.size and (z.min() < -32768 or z.max() > 32767):
            raise ConfigError("noisy inputs beyond int16: this ONNX model takes int16 inputs")
        return session.run(None, {name: z.astype(np.int16)})[0]
    except Exception as exc:  # onnxruntime raises its own exception types for corrupt or mismatched files
        raise ConfigError(f"onnxruntime cannot run this ONNX model ({str(exc).splitlines()[0][:160]}); "
                          "is the file corrupt or made for another model?") from None
