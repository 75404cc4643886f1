"""Shared fixtures: tiny synthetic data sets in the real on-disk formats, and a tiny trained model."""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from intrs.data import CALTECH_BACKGROUND, CALTECH_NUM_CLASSES
from intrs.training import TrainConfig, train

torch.set_num_threads(2)


def write_idx(path: Path, array: np.ndarray, magic: int, compress: bool = True) -> None:
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    if compress:
        with gzip.open(path, "wb") as handle:
            handle.write(data)
    else:
        path.write_bytes(data)


@pytest.fixture
def fashion_dir(tmp_path: Path) -> Path:
    """A Fashion-MNIST folder in the real idx format: 30 train and 12 test images."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "fashion"
    folder.mkdir()
    for prefix, count in (("train", 30), ("t10k", 12)):
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (count, 28, 28)), 0x803)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", rng.integers(0, 10, (count,)), 0x801)
    return folder


@pytest.fixture
def cifar_dir(tmp_path: Path) -> Path:
    """A cifar-10-batches-py folder with the real pickle layout: 5 x 8 train and 6 test images."""
    rng = np.random.default_rng(1)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name, count in [(f"data_batch_{i}", 8) for i in range(1, 6)] + [("test_batch", 6)]:
        batch = {b"batch_label": name.encode(), b"labels": rng.integers(0, 10, count).tolist(),
                 b"data": rng.integers(0, 256, (count, 3072), dtype=np.uint8),
                 b"filenames": [f"{i}.png".encode() for i in range(count)]}
        with open(folder / name, "wb") as handle:
            pickle.dump(batch, handle, protocol=2)
    return tmp_path


@pytest.fixture
def caltech_dir(tmp_path: Path) -> Path:
    """A 101_ObjectCategories folder: 101 classes of 1-2 small JPEGs each, plus BACKGROUND_Google."""
    from PIL import Image

    rng = np.random.default_rng(2)
    root = tmp_path / "101_ObjectCategories"
    for c in range(CALTECH_NUM_CLASSES):
        folder = root / f"class_{c:03d}"
        folder.mkdir(parents=True)
        for i in range(1 + c % 2):
            size = (int(rng.integers(40, 80)), int(rng.integers(30, 60)))
            mode = "L" if c == 5 else "RGB"  # Caltech-101 has some grayscale images
            pixels = rng.integers(0, 256, (size[1], size[0]) + (() if mode == "L" else (3,)), dtype=np.uint8)
            Image.fromarray(pixels, mode).save(folder / f"image_{i:04d}.jpg")
    (root / CALTECH_BACKGROUND).mkdir()
    Image.fromarray(np.zeros((30, 30, 3), np.uint8)).save(root / CALTECH_BACKGROUND / "image_0001.jpg")
    return tmp_path


@pytest.fixture(scope="session")
def digits_checkpoint(tmp_path_factory) -> Path:
    """A tiny ResNet-8 trained for 2 short epochs on scikit-learn's digits at sigma = 0.25."""
    out = tmp_path_factory.mktemp("digits_model")
    config = TrainConfig("digits", 0.25, arch="resnet8", width=4, schedule="ci", eval_images=200)
    return train(config, out).path


@pytest.fixture(scope="session")
def fashion_checkpoint(tmp_path_factory):
    """A small ResNet-8 trained briefly on real Fashion-MNIST at sigma = 0.25."""
    from intrs.data import FASHION_MNIST_DEFAULT_DIR

    if not (FASHION_MNIST_DEFAULT_DIR / "t10k-images-idx3-ubyte.gz").exists():
        pytest.skip("Fashion-MNIST is not installed (scripts/setup.sh installs Debian's dataset-fashion-mnist)")
    out = tmp_path_factory.mktemp("fashion_model")
    config = TrainConfig("fashion-mnist", 0.25, arch="resnet8", width=8, schedule="ci", epochs=2, lr=0.1,
                         train_subset=4096, eval_images=500)
    return train(config, out)


@pytest.fixture(scope="session")
def fashion_qat(fashion_checkpoint, tmp_path_factory):
    """That model after one short epoch of quantization-aware training, as an integer model file."""
    from intrs.intmodel import save_integer_model
    from intrs.quant import QuantizeConfig, quantize

    model, metrics = quantize(fashion_checkpoint, QuantizeConfig("qat", epochs=1, train_subset=2048,
                                                                  calibration_images=512, eval_images=200))
    path = save_integer_model(model, tmp_path_factory.mktemp("fashion_int") / "model.npz")
    return path, metrics


@pytest.fixture(scope="session")
def digits_int_models(digits_checkpoint, tmp_path_factory):
    """QAT and PTQ integer models of the tiny digits ResNet-8: {'qat': path, 'ptq': path}."""
    from intrs.checkpoint import load_checkpoint
    from intrs.intmodel import save_integer_model
    from intrs.quant import QuantizeConfig, quantize

    out = tmp_path_factory.mktemp("digits_int")
    checkpoint = load_checkpoint(digits_checkpoint)
    paths = {}
    for method in ("qat", "ptq"):
        model, _ = quantize(checkpoint, QuantizeConfig(method, epochs=1, train_subset=256, calibration_images=256,
                                                       eval_images=100))
        paths[method] = save_integer_model(model, out / f"{method}.npz")
    return paths


def build_calibrated_resnet20(shape: tuple[int, int, int], seed: int = 0):
    """A ResNet-20 with random weights and its integer model, calibrated on random pixels: what the
    kernel-exactness checks need (none depends on what was learned). Seeds torch's global generator."""
    from intrs.bench import calibrated_resnet20  # the model bench times: one builder for both

    return calibrated_resnet20(shape, seed)


@pytest.fixture
def calibrated_resnet20():
    """``build_calibrated_resnet20``, called by the test with its shape and seed: (float model, integer model)."""
    return build_calibrated_resnet20
