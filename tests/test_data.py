import pickle

import numpy as np
import pytest
import torch

from conftest import write_idx
from intrs.data import DATASETS, augment, caltech101_files, load_dataset, split_indices, to_pixels
from intrs.errors import DataError


def test_fashion_mnist_reads_idx_files(fashion_dir):
    train, test = load_dataset("fashion-mnist", "train", fashion_dir), load_dataset("fashion-mnist", "test", fashion_dir)
    assert train.images.shape == (30, 1, 28, 28) and test.images.shape == (12, 1, 28, 28)
    assert train.images.dtype == torch.uint8 and train.labels.dtype == torch.int64
    assert int(train.labels.max()) < 10


def test_fashion_mnist_reads_uncompressed_idx(fashion_dir):
    for path in fashion_dir.glob("t10k*.gz"):
        import gzip
        path.with_suffix("").write_bytes(gzip.open(path).read())
        path.unlink()
    assert len(load_dataset("fashion-mnist", "test", fashion_dir)) == 12


def test_fashion_mnist_missing_folder_names_path_and_layout(tmp_path):
    with pytest.raises(DataError, match=r"nowhere.*does not exist.*train-images-idx3-ubyte"):
        load_dataset("fashion-mnist", "train", tmp_path / "nowhere")


def test_fashion_mnist_empty_folder_names_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte\(\.gz\) not found"):
        load_dataset("fashion-mnist", "train", tmp_path)


def test_fashion_mnist_bad_magic_is_corrupt(fashion_dir):
    write_idx(fashion_dir / "t10k-images-idx3-ubyte.gz", np.zeros((12, 28, 28)), 0x801)
    with pytest.raises(DataError, match="bad magic"):
        load_dataset("fashion-mnist", "test", fashion_dir)


def test_fashion_mnist_truncated_file_is_corrupt(fashion_dir):
    path = fashion_dir / "t10k-images-idx3-ubyte.gz"
    import gzip
    raw = gzip.open(path).read()
    with gzip.open(path, "wb") as handle:
        handle.write(raw[:-100])
    with pytest.raises(DataError, match="corrupt or truncated"):
        load_dataset("fashion-mnist", "test", fashion_dir)


def test_fashion_mnist_garbage_gzip_is_corrupt(fashion_dir):
    (fashion_dir / "t10k-labels-idx1-ubyte.gz").write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match="corrupt"):
        load_dataset("fashion-mnist", "test", fashion_dir)


def test_cifar10_reads_pickled_batches(cifar_dir):
    train = load_dataset("cifar10", "train", cifar_dir)
    test = load_dataset("cifar10", "test", cifar_dir / "cifar-10-batches-py")
    assert train.images.shape == (40, 3, 32, 32) and test.images.shape == (6, 3, 32, 32)
    raw = pickle.load(open(cifar_dir / "cifar-10-batches-py" / "test_batch", "rb"), encoding="bytes")
    # The 3072 bytes of a row are the R, G, B planes of 32x32 each.
    assert torch.equal(test.images[0, 1].flatten(), torch.from_numpy(raw[b"data"][0, 1024:2048]))
    assert test.labels.tolist() == raw[b"labels"]


def test_cifar10_without_data_dir_says_it_cannot_download():
    with pytest.raises(DataError, match="cannot be downloaded.*--data-dir"):
        load_dataset("cifar10", "test")


def test_cifar10_missing_batch_is_reported(cifar_dir):
    (cifar_dir / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(DataError, match="data_batch_3 is missing"):
        load_dataset("cifar10", "train", cifar_dir)


def test_cifar10_corrupt_batch_is_reported(cifar_dir):
    (cifar_dir / "cifar-10-batches-py" / "test_batch").write_bytes(b"\x80\x02garbage")
    with pytest.raises(DataError, match="test_batch is corrupt"):
        load_dataset("cifar10", "test", cifar_dir)


def test_cifar10_pickle_that_runs_code_is_refused(cifar_dir, tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    with open(cifar_dir / "cifar-10-batches-py" / "test_batch", "wb") as handle:
        pickle.dump({b"data": Evil(), b"labels": [0]}, handle)
    with pytest.raises(DataError, match="refusing to load builtins.print"):
        load_dataset("cifar10", "test", cifar_dir)


def test_caltech101_drops_background_and_keeps_101_classes(caltech_dir):
    classes, files = caltech101_files(caltech_dir)
    assert len(classes) == 101 and "BACKGROUND_Google" not in classes
    assert len(files) == sum(1 + c % 2 for c in range(101))


def test_caltech101_seeded_80_20_split_of_224_crops(caltech_dir):
    train = load_dataset("caltech101", "train", caltech_dir, split_seed=7)
    test = load_dataset("caltech101", "test", caltech_dir, split_seed=7)
    total = sum(1 + c % 2 for c in range(101))
    assert len(train) + len(test) == total and len(train) == round(0.8 * total)
    assert train.images.shape[1:] == (3, 224, 224) and train.images.dtype == torch.uint8
    again = load_dataset("caltech101", "test", caltech_dir, split_seed=7)
    assert torch.equal(again.images, test.images) and torch.equal(again.labels, test.labels)
    other = load_dataset("caltech101", "test", caltech_dir, split_seed=8)
    assert not torch.equal(other.labels, test.labels)


def test_caltech101_wrong_class_count_is_reported(caltech_dir):
    import shutil
    shutil.rmtree(caltech_dir / "101_ObjectCategories" / "class_000")
    with pytest.raises(DataError, match="has 100 class folders.*expected 101"):
        load_dataset("caltech101", "test", caltech_dir)


def test_caltech101_undecodable_image_is_reported(caltech_dir):
    bad = caltech_dir / "101_ObjectCategories" / "class_000" / "image_0000.jpg"
    bad.write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match="image_0000.jpg cannot be decoded"):
        for split in ("train", "test"):
            load_dataset("caltech101", split, caltech_dir)


def test_digits_are_8bit_pixels_with_a_seeded_split():
    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    assert len(train) + len(test) == 1797 and train.images.shape[1:] == (1, 8, 8)
    assert int(train.images.max()) == 255 and int(train.images.min()) == 0
    assert set(split_indices(1797, 0)[1].tolist()).isdisjoint(split_indices(1797, 0)[0].tolist())


def test_unknown_dataset_and_split_are_rejected():
    with pytest.raises(DataError, match="unknown data set 'mnist'"):
        load_dataset("mnist", "train")
    with pytest.raises(DataError, match="unknown split"):
        load_dataset("digits", "validation")


def test_cifar_augmentation_keeps_shape_dtype_and_pixel_values():
    images = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
    out = augment(images, DATASETS["cifar10"], torch.Generator().manual_seed(0))
    assert out.shape == images.shape and out.dtype == torch.uint8
    for i in range(16):  # a reflection crop and flip only moves pixels around
        assert set(out[i].flatten().tolist()) <= set(images[i].flatten().tolist())
    assert not torch.equal(out, images)


def test_cifar_augmentation_is_a_reflection_padded_crop_then_maybe_a_flip():
    images = torch.randint(0, 256, (32, 3, 32, 32), dtype=torch.uint8)
    out = augment(images, DATASETS["cifar10"], torch.Generator().manual_seed(3))
    padded = torch.nn.functional.pad(images.float(), (4, 4, 4, 4), mode="reflect")
    flips = 0
    for i in range(32):
        matches = [(dy, dx, flip) for dy in range(9) for dx in range(9) for flip in (False, True)
                   if torch.equal(out[i].float(), (lambda c: c.flip(-1) if flip else c)(padded[i, :, dy:dy + 32, dx:dx + 32]))]
        assert matches, f"image {i} is not a reflection-padded crop of its input"
        flips += matches[0][2]
    assert 4 <= flips <= 28  # about half are flipped


def test_no_augmentation_for_fashion_mnist():
    images = torch.randint(0, 256, (4, 1, 28, 28), dtype=torch.uint8)
    assert torch.equal(augment(images, DATASETS["fashion-mnist"], torch.Generator()), images)


def test_to_pixels_checks_shape_range_and_nan():
    assert to_pixels(torch.full((1, 2, 2), 0.5)).tolist() == [[[128, 128], [128, 128]]]
    with pytest.raises(DataError, match="NaN"):
        to_pixels(torch.tensor([[[float("nan")]]]))
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        to_pixels(torch.full((1, 2, 2), 1.5))
    with pytest.raises(DataError, match=r"\(C, H, W\)"):
        to_pixels(torch.zeros(2, 2))
    with pytest.raises(DataError, match="does not match"):
        to_pixels(torch.zeros(1, 2, 2, dtype=torch.uint8), shape=(3, 2, 2))
