"""Where images enter intrs: local data sets as uint8 pixel tensors.

Every loader returns an :class:`ImageSet`: ``images`` is a uint8 tensor of shape
(N, C, H, W) holding the integer pixels p in {0..255} (SPEC section 1), ``labels``
an int64 tensor. Pixels stay integers until a model needs them: a float model
divides by 255 itself, an integer model takes them as they are. Nothing here is
downloaded; every data set is read from a local path (SPEC section 7).
"""

from __future__ import annotations

import gzip
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .errors import DataError

PIXEL_MAX = 255  # an 8-bit pixel p lies in {0..255}; the real image is p / 255 (SPEC section 1)
FASHION_MNIST_DEFAULT_DIR = Path("/usr/share/datasets/fashion-mnist")
CALTECH_BACKGROUND = "BACKGROUND_Google"
CALTECH_NUM_CLASSES = 101
CALTECH_RESIZE, CALTECH_CROP = 256, 224
SPLITS = ("train", "test")


@dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know about a data set: shape, classes, normalization, augmentation."""

    name: str
    num_classes: int
    channels: int
    height: int
    width: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_padding: int = 0  # random crop after reflection padding (0: none)
    horizontal_flip: bool = False
    paper_batch_size: int = 256

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.channels, self.height, self.width)


DATASETS: dict[str, DatasetInfo] = {
    "fashion-mnist": DatasetInfo("fashion-mnist", 10, 1, 28, 28, (0.2860,), (0.3530,)),
    # Cohen et al.'s CIFAR-10 statistics; augmentation as the paper's appendix A.
    "cifar10": DatasetInfo(
        "cifar10", 10, 3, 32, 32, (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010),
        crop_padding=4, horizontal_flip=True,
    ),
    # ImageNet statistics, as for torchvision's pretrained ResNet-50.
    "caltech101": DatasetInfo(
        "caltech101", CALTECH_NUM_CLASSES, 3, CALTECH_CROP, CALTECH_CROP,
        (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), paper_batch_size=64,
    ),
    "digits": DatasetInfo("digits", 10, 1, 8, 8, (0.3050,), (0.3840,)),
}


@dataclass
class ImageSet:
    """Integer images and their labels: ``images`` uint8 (N, C, H, W), ``labels`` int64 (N,)."""

    images: torch.Tensor
    labels: torch.Tensor
    info: DatasetInfo
    split: str

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, idx: int) -> tuple[torch.Tensor, int]:
        return self.images[idx], int(self.labels[idx])

    def subset(self, count: int | None) -> "ImageSet":
        """The first ``count`` images (all when count is None)."""
        if count is None or count >= len(self):
            return self
        return ImageSet(self.images[:count], self.labels[:count], self.info, self.split)


def dataset_info(name: str) -> DatasetInfo:
    try:
        return DATASETS[name]
    except KeyError:
        raise DataError(f"unknown data set {name!r}: choose one of {', '.join(DATASETS)}") from None


def load_dataset(name: str, split: str, data_dir: str | Path | None = None, split_seed: int = 0) -> ImageSet:
    """Load ``split`` ('train' or 'test') of data set ``name`` from ``data_dir``.

    ``split_seed`` fixes the random 80/20 split of the data sets that have none of
    their own (Caltech-101, digits).
    """
    info = dataset_info(name)
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}: choose 'train' or 'test'")
    if name == "fashion-mnist":
        images, labels = _load_fashion_mnist(Path(data_dir) if data_dir else FASHION_MNIST_DEFAULT_DIR, split)
    elif name == "cifar10":
        images, labels = _load_cifar10(_required_dir(data_dir, name), split)
    elif name == "caltech101":
        images, labels = _load_caltech101(_required_dir(data_dir, name), split, split_seed)
    else:
        images, labels = _load_digits(split, split_seed)
    if images.shape[1:] != info.shape:
        raise DataError(f"{name} images have shape {tuple(images.shape[1:])}, expected {info.shape}")
    # np.array copies: idx buffers are read-only, and torch wants writable memory.
    return ImageSet(torch.from_numpy(np.array(images, dtype=np.uint8, order="C")),
                    torch.from_numpy(labels.astype(np.int64)), info, split)


def _required_dir(data_dir: str | Path | None, name: str) -> Path:
    if data_dir is None:
        raise DataError(f"{name} cannot be downloaded here: pass --data-dir with the local copy ({_LAYOUTS[name]})")
    return Path(data_dir)


_LAYOUTS = {
    "fashion-mnist": "a folder with train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
    "t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz (gzipped or not); "
    "Debian: apt-get install dataset-fashion-mnist",
    "cifar10": "the folder cifar-10-batches-py (or its parent) with data_batch_1..data_batch_5 and test_batch",
    "caltech101": "the folder 101_ObjectCategories (or its parent) with one sub-folder of .jpg images per class",
}


# ---------------------------------------------------------------- Fashion-MNIST


def _read_idx(path: Path, magic: int, item_shape: tuple[int, ...]) -> np.ndarray:
    """Read one idx file (LeCun's MNIST format): big-endian magic, dimensions, then uint8 data."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            raw = handle.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"cannot read {path}: {exc}; the file is corrupt, replace it") from None
    ndim = len(item_shape) + 1
    header = 4 + 4 * ndim
    if len(raw) < header or int.from_bytes(raw[:4], "big") != magic:
        raise DataError(f"{path} is not an idx file (bad magic number); the file is corrupt, replace it")
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    if tuple(dims[1:]) != item_shape or len(raw) != header + int(np.prod(dims)):
        raise DataError(f"{path} has dimensions {dims} and {len(raw) - header} data bytes, "
                        f"expected items of shape {item_shape}; the file is corrupt or truncated")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _find_idx(folder: Path, stem: str) -> Path:
    for candidate in (folder / f"{stem}.gz", folder / stem):
        if candidate.is_file():
            return candidate
    raise DataError(f"Fashion-MNIST file {stem}(.gz) not found in {folder}: expected {_LAYOUTS['fashion-mnist']}, "
                    "or pass --data-dir")


def _load_fashion_mnist(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    if not folder.is_dir():
        raise DataError(f"Fashion-MNIST folder {folder} does not exist: expected {_LAYOUTS['fashion-mnist']}, "
                        "or pass --data-dir")
    prefix = "train" if split == "train" else "t10k"
    images = _read_idx(_find_idx(folder, f"{prefix}-images-idx3-ubyte"), 0x803, (28, 28))
    labels = _read_idx(_find_idx(folder, f"{prefix}-labels-idx1-ubyte"), 0x801, ())
    if len(images) != len(labels) or len(images) == 0:
        raise DataError(f"Fashion-MNIST in {folder}: {len(images)} images but {len(labels)} labels")
    if labels.max() >= 10:
        raise DataError(f"Fashion-MNIST labels in {folder} go up to {labels.max()}, expected 0..9")
    return images[:, None, :, :], labels


# ---------------------------------------------------------------- CIFAR-10


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles CIFAR's batch files, refusing anything but numpy arrays and plain data.

    The batches are pickles; a pickle from an untrusted folder could run code, so
    only the classes a numpy array needs are allowed.
    """

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"), ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _cifar_folder(root: Path) -> Path:
    for candidate in (root, root / "cifar-10-batches-py"):
        if (candidate / "test_batch").is_file():
            return candidate
    raise DataError(f"CIFAR-10 not found at {root}: expected {_LAYOUTS['cifar10']}")


def _load_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise DataError(f"CIFAR-10 batch {path} is missing: expected {_LAYOUTS['cifar10']}")
    try:
        with open(path, "rb") as handle:
            batch = _ArrayUnpickler(handle, encoding="bytes").load()
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        labels = np.asarray(batch[b"labels"], dtype=np.int64)
    except Exception as exc:  # any failure to parse is a corrupt file, whatever pickle raised
        raise DataError(f"CIFAR-10 batch {path} is corrupt ({type(exc).__name__}: {exc}); replace it") from None
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(labels) != len(data) or len(data) == 0:
        raise DataError(f"CIFAR-10 batch {path} holds data of shape {data.shape} and {len(labels)} labels, "
                        "expected (N, 3072) and N labels")
    if labels.min() < 0 or labels.max() >= 10:
        raise DataError(f"CIFAR-10 batch {path} has labels outside 0..9")
    return data.reshape(-1, 3, 32, 32), labels


def _load_cifar10(root: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    folder = _cifar_folder(root)
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    parts = [_load_cifar_batch(folder / name) for name in names]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


# ---------------------------------------------------------------- Caltech-101


def caltech101_files(root: Path) -> tuple[list[str], list[tuple[Path, int]]]:
    """The 101 class names (sorted, BACKGROUND_Google dropped) and every (image, label)."""
    folder = root / "101_ObjectCategories" if (root / "101_ObjectCategories").is_dir() else root
    if not folder.is_dir():
        raise DataError(f"Caltech-101 folder {folder} does not exist: expected {_LAYOUTS['caltech101']}")
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir() and p.name != CALTECH_BACKGROUND)
    if len(classes) != CALTECH_NUM_CLASSES:
        raise DataError(f"Caltech-101 folder {folder} has {len(classes)} class folders (BACKGROUND_Google aside), "
                        f"expected {CALTECH_NUM_CLASSES}: {_LAYOUTS['caltech101']}")
    files = []
    for label, name in enumerate(classes):
        images = sorted(p for p in (folder / name).iterdir() if p.suffix.lower() in (".jpg", ".jpeg"))
        if not images:
            raise DataError(f"Caltech-101 class folder {folder / name} has no .jpg images")
        files.extend((p, label) for p in images)
    return classes, files


def _decode_caltech_image(path: Path) -> np.ndarray:
    """Resize the shorter side to 256 and centre-crop 224x224 (the ImageNet test transform)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img = img.convert("RGB")
            w, h = img.size
            scale = CALTECH_RESIZE / min(w, h)
            img = img.resize((max(CALTECH_RESIZE, round(w * scale)), max(CALTECH_RESIZE, round(h * scale))),
                             Image.Resampling.BILINEAR)
            w, h = img.size
            left, top = (w - CALTECH_CROP) // 2, (h - CALTECH_CROP) // 2
            img = img.crop((left, top, left + CALTECH_CROP, top + CALTECH_CROP))
            return np.asarray(img, dtype=np.uint8).transpose(2, 0, 1)
    except (OSError, UnidentifiedImageError) as exc:
        raise DataError(f"Caltech-101 image {path} cannot be decoded ({exc}); remove or replace it") from None


def split_indices(count: int, seed: int, train_fraction: float = 0.8) -> tuple[np.ndarray, np.ndarray]:
    """A seeded random split of range(count) into train and test indices (80/20 by default)."""
    order = np.random.default_rng(seed).permutation(count)
    cut = int(round(train_fraction * count))
    return np.sort(order[:cut]), np.sort(order[cut:])


def _load_caltech101(root: Path, split: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    _, files = caltech101_files(root)
    train, test = split_indices(len(files), seed)
    chosen = [files[i] for i in (train if split == "train" else test)]
    images = np.stack([_decode_caltech_image(path) for path, _ in chosen])
    return images, np.array([label for _, label in chosen], dtype=np.int64)


# ---------------------------------------------------------------- scikit-learn digits


def _load_digits(split: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled 8x8 digits (values 0..16), rescaled to 8-bit pixels."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise DataError("the digits data set needs scikit-learn: pip install scikit-learn") from None
    bunch = load_digits()
    pixels = np.rint(bunch.images * (PIXEL_MAX / 16.0)).astype(np.uint8)[:, None, :, :]
    train, test = split_indices(len(pixels), seed)
    chosen = train if split == "train" else test
    return pixels[chosen], bunch.target[chosen]


# ---------------------------------------------------------------- augmentation


def _reflect(index: torch.Tensor, size: int) -> torch.Tensor:
    """Map indices in [-size+1, 2*size-2] back into [0, size) by reflection (no edge repeat)."""
    index = index.abs()
    return torch.where(index >= size, 2 * (size - 1) - index, index)


def augment(images: torch.Tensor, info: DatasetInfo, generator: torch.Generator) -> torch.Tensor:
    """The data set's training augmentation on a uint8 batch (N, C, H, W).

    CIFAR-10 (the paper's appendix A): pad 4 pixels by reflection, take a random
    crop of the original size, flip horizontally with probability 1/2. Shapes and
    pixel values are preserved: every output pixel is some input pixel.
    """
    n, _, h, w = images.shape
    rows = torch.arange(h).expand(n, h)
    cols = torch.arange(w).expand(n, w)
    if info.crop_padding:
        pad = info.crop_padding
        dy = torch.randint(0, 2 * pad + 1, (n, 1), generator=generator) - pad
        dx = torch.randint(0, 2 * pad + 1, (n, 1), generator=generator) - pad
        rows, cols = _reflect(rows + dy, h), _reflect(cols + dx, w)
    if info.horizontal_flip:
        flip = torch.rand((n, 1), generator=generator) < 0.5
        cols = torch.where(flip, w - 1 - cols, cols)
    if not info.crop_padding and not info.horizontal_flip:
        return images
    batch = torch.arange(n)[:, None, None, None]
    channel = torch.arange(images.shape[1])[None, :, None, None]
    return images[batch, channel, rows[:, None, :, None], cols[:, None, None, :]]


# ---------------------------------------------------------------- user images


def to_pixels(image: torch.Tensor | np.ndarray, shape: tuple[int, int, int] | None = None) -> torch.Tensor:
    """Check one image and return it as uint8 pixels (C, H, W), the input of every noise law.

    uint8 images pass as they are; float images must lie in [0, 1] (no NaN) and
    are rounded to the 8-bit grid, the threat model of the integer certificate
    (SPEC section 2).
    """
    tensor = torch.as_tensor(image)
    if tensor.dim() != 3:
        raise DataError(f"an image must have shape (C, H, W), got {tuple(tensor.shape)}")
    if shape is not None and tuple(tensor.shape) != tuple(shape):
        raise DataError(f"image shape {tuple(tensor.shape)} does not match the model's input {tuple(shape)}")
    return _pixel_values(tensor)


def to_pixel_batch(images: torch.Tensor | np.ndarray) -> torch.Tensor:
    """A batch (N, C, H, W) as uint8 pixels, by the rule of :func:`to_pixels`."""
    tensor = torch.as_tensor(images)
    if tensor.dim() != 4:
        raise DataError(f"a batch of images must have shape (N, C, H, W), got {tuple(tensor.shape)}")
    return _pixel_values(tensor)


def _pixel_values(tensor: torch.Tensor) -> torch.Tensor:
    """uint8 as it is; floats in [0, 1] rounded to the 8-bit grid; anything else refused."""
    if tensor.dtype == torch.uint8:
        return tensor
    if not tensor.is_floating_point():
        raise DataError(f"images must be uint8 pixels or floats in [0, 1], got dtype {tensor.dtype}")
    if not torch.isfinite(tensor).all():
        raise DataError("the image has NaN or infinite pixels: clean the input first")
    if tensor.min() < 0 or tensor.max() > 1:
        raise DataError(f"float pixels must lie in [0, 1], got [{float(tensor.min()):.4g}, {float(tensor.max()):.4g}]")
    return torch.round(tensor * PIXEL_MAX).to(torch.uint8)
