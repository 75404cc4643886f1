"""The whole integer model exported to ONNX (QDQ) and run by onnxruntime, an independent runtime
that requantizes in float (round half to even): agreement is measured, and must be high."""

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")

from intrs import engine  # noqa: E402
from intrs.data import load_dataset  # noqa: E402
from intrs.intmodel import load_integer_model  # noqa: E402
from intrs.noise import DiscreteGaussianNoise, numpy_generator  # noqa: E402
from intrs.onnx_export import export_onnx, run_onnx  # noqa: E402
from intrs.quant import discrete_noisy_input  # noqa: E402


def test_onnxruntime_agrees_with_the_engine_on_noisy_fashion_mnist(fashion_qat):
    model = load_integer_model(fashion_qat[0])
    test = load_dataset("fashion-mnist", "test").subset(500)
    z = discrete_noisy_input(test.images, DiscreteGaussianNoise(0.25), numpy_generator(3)).to(torch.int32)
    ours = engine.forward(model, z).numpy()
    theirs = run_onnx(export_onnx(model), z.numpy())
    assert theirs.dtype == np.int8 and theirs.shape == ours.shape
    identical_logits = float((theirs == ours).mean())
    identical_predictions = float((theirs.argmax(1) == ours.argmax(1)).mean())
    print(f"onnxruntime vs engine: {identical_logits:.4f} of int8 logits, {identical_predictions:.4f} of predictions")
    assert identical_predictions >= 0.97
    assert identical_logits >= 0.5
    assert np.abs(theirs.astype(int) - ours.astype(int)).mean() < 1.0
