"""MNIST, Fashion-MNIST and KMNIST from real IDX files.

The files are written here byte by byte from the IDX format (big-endian magic
2051 for images, 2049 for labels, then the dimensions), so the expected values
come from the test, not from the reader; Debian's Fashion-MNIST files are read
too where they are installed, and checked against a plain numpy parse.
"""

from __future__ import annotations

import gzip
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from ktg.data import Augment, DeviceBatches, load_dataset
from ktg.data.mnist import DATASETS, DEBIAN_FASHION_MNIST, read_idx_dataset
from ktg.errors import KtgError
from ktg.models import build_model
from tests.idx_files import FILES, idx_images, idx_labels, write, write_split

NAMES = ["fashionmnist", "mnist", "kmnist"]
FOLDER = {"fashionmnist": "FashionMNIST", "mnist": "MNIST", "kmnist": "KMNIST"}
SIZES = {"train": 60, "test": 20}


def write_idx_set(folder: Path, gz: bool, seed: int = 0) -> dict[str, np.ndarray]:
    """The four files of a tiny set in ``folder``; returns the arrays written."""
    rng = np.random.default_rng(seed)
    ref: dict[str, np.ndarray] = {}
    for split in FILES:
        n = SIZES[split]
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = np.arange(n) % 10
        rng.shuffle(labels)
        write_split(folder, split, images, labels, gz)
        ref[f"{split}_x"], ref[f"{split}_y"] = images, labels
    return ref


def layout_folder(root: Path, name: str, layout: str) -> Path:
    return root / FOLDER[name] / "raw" if layout == "torchvision" else root


@pytest.mark.parametrize("gz", [True, False], ids=["gz", "plain"])
@pytest.mark.parametrize("layout", ["torchvision", "flat"])
@pytest.mark.parametrize("name", NAMES)
def test_reads_idx_files_exactly(name: str, layout: str, gz: bool, tmp_path: Path) -> None:
    ref = write_idx_set(layout_folder(tmp_path, name, layout), gz)
    d = load_dataset(name, data_dir=tmp_path)
    assert d.name == name and d.num_classes == 10 and d.in_channels == 1 and d.image_size == 28
    for split in ("train", "test"):
        x, y = getattr(d, f"{split}_x"), getattr(d, f"{split}_y")
        assert x.dtype == torch.uint8 and x.shape == (SIZES[split], 1, 28, 28)
        assert y.dtype == torch.int64
        np.testing.assert_array_equal(x[:, 0].numpy(), ref[f"{split}_x"])
        np.testing.assert_array_equal(y.numpy(), ref[f"{split}_y"])
    assert d.mean == pytest.approx([ref["train_x"].mean() / 255.0], abs=1e-9)


def test_augmentation_per_dataset() -> None:
    augment = {d.name: d.augment for d in DATASETS}
    assert augment == {
        "fashionmnist": Augment(pad=2, flip=True),
        "mnist": Augment(pad=2, flip=False),  # a mirrored digit is another symbol
        "kmnist": Augment(pad=2, flip=False),
    }


@pytest.mark.parametrize("name", NAMES)
def test_digits_are_never_mirrored_garments_are(name: str, tmp_path: Path) -> None:
    # Bright left half, dark right half: a 2 px shift keeps the left side
    # bright, only a mirror makes the right side bright.
    images = np.zeros((200, 28, 28), dtype=np.uint8)
    images[:, :, :14] = 255
    for images_file, labels_file in FILES.values():
        write(tmp_path / images_file, idx_images(images), gz=False)
        write(tmp_path / labels_file, idx_labels(np.arange(200) % 10), gz=False)
    d = load_dataset(name, data_dir=tmp_path)
    batches = DeviceBatches(d.train_x, d.train_y, batch_size=200, mean=(0.0,), std=(1.0,), augment=d.augment,
                            seed=0, shuffle=False)
    (out, _), = list(batches.epoch(0))
    mirrored = out[:, 0, :, -10:].mean(dim=(1, 2)) > out[:, 0, :, :10].mean(dim=(1, 2))
    if name == "fashionmnist":
        assert 0.3 < mirrored.double().mean().item() < 0.7
    else:
        assert not mirrored.any()


@pytest.mark.parametrize("model", ["resnet20", "wrn16-1", "mobilenet-0.25"])
def test_every_model_family_takes_one_channel_28px(model: str, tmp_path: Path) -> None:
    write_idx_set(tmp_path, gz=False)
    d = load_dataset("mnist", data_dir=tmp_path)
    batches = DeviceBatches(d.train_x[:4], d.train_y[:4], batch_size=4, mean=d.mean, std=d.std,
                            augment=d.augment, seed=0)
    (x, _), = list(batches.epoch(0))
    net = build_model(model, in_channels=d.in_channels, num_classes=d.num_classes, image_size=d.image_size)
    embedding, logits = net.eval()(x)
    assert logits.shape == (4, 10) and embedding.shape[0] == 4
    assert torch.isfinite(logits).all()


# --- missing and damaged files -------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_missing_file_is_one_line_naming_it_and_the_fix(name: str, tmp_path: Path) -> None:
    folder = tmp_path / FOLDER[name] / "raw"
    write_idx_set(folder, gz=True)
    (folder / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(KtgError) as err:
        load_dataset(name, data_dir=tmp_path)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"{name}: missing t10k-labels-idx1-ubyte(.gz) in {folder};")
    assert "train-images" not in message.split(";")[0]  # only the missing file is named as missing
    assert "never download" in message
    if name == "fashionmnist":
        assert "apt-get install dataset-fashion-mnist" in message


def test_missing_debian_folder_names_the_package(tmp_path: Path) -> None:
    fashion = next(d for d in DATASETS if d.name == "fashionmnist")
    absent = tmp_path / "fashion-mnist"
    with pytest.raises(KtgError, match=rf"^fashionmnist: missing .* in {absent}, which does not exist; "
                                       r"fix: apt-get install dataset-fashion-mnist$"):
        read_idx_dataset(replace(fashion, default_dir=absent), None, None)


@pytest.mark.parametrize("name", ["mnist", "kmnist"])
def test_digit_sets_need_a_data_dir(name: str) -> None:
    with pytest.raises(KtgError, match=rf"^{name}: --data-dir is required .*{FOLDER[name]}/raw/.*never downloads"):
        load_dataset(name)


@pytest.mark.parametrize("gz", [True, False], ids=["gz", "plain"])
@pytest.mark.parametrize("damaged", ["t10k-images-idx3-ubyte", "train-labels-idx1-ubyte"])
def test_truncated_file_is_one_line_naming_it(damaged: str, gz: bool, tmp_path: Path) -> None:
    write_idx_set(tmp_path, gz=False)
    whole = (tmp_path / damaged).read_bytes()
    (tmp_path / damaged).unlink()
    path = write(tmp_path / damaged, whole, gz)
    path.write_bytes(path.read_bytes()[:-5])  # cut off mid-stream
    with pytest.raises(KtgError) as err:
        load_dataset("fashionmnist", data_dir=tmp_path)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"fashionmnist: cannot read {path} (truncated")
    assert "apt-get install dataset-fashion-mnist" in message


def test_header_count_mismatch_names_the_labels_file(tmp_path: Path) -> None:
    write_idx_set(tmp_path, gz=False)
    labels = tmp_path / "train-labels-idx1-ubyte"
    labels.write_bytes(idx_labels(np.arange(59) % 10))  # a valid file, one label short
    with pytest.raises(KtgError, match=rf"^mnist: {labels} has 59 labels for the 60 images of "
                                       rf"{tmp_path / 'train-images-idx3-ubyte'}"):
        load_dataset("mnist", data_dir=tmp_path)


def test_not_an_idx_file(tmp_path: Path) -> None:
    write_idx_set(tmp_path, gz=True)
    images = tmp_path / "train-images-idx3-ubyte.gz"
    images.write_bytes(gzip.compress(idx_labels(np.arange(60) % 10)))  # a labels file in its place
    with pytest.raises(KtgError, match=rf"^kmnist: cannot read {images} \(truncated or not an IDX file: "):
        load_dataset("kmnist", data_dir=tmp_path)


# --- Debian's Fashion-MNIST (dataset-fashion-mnist) ----------------------------------


def numpy_idx(path: Path, offset: int) -> np.ndarray:
    """An independent parse of a gzipped IDX file's payload."""
    return np.frombuffer(gzip.decompress(path.read_bytes()), dtype=np.uint8, offset=offset)


@pytest.mark.skipif(not DEBIAN_FASHION_MNIST.is_dir(), reason="apt-get install dataset-fashion-mnist")
def test_debian_fashion_mnist_is_the_default() -> None:
    d = load_dataset("fashionmnist", train_size=300, val_fraction=0.2, split_seed=0)
    assert d.train_x.shape == (240, 1, 28, 28) and d.val_x is not None and d.val_x.shape == (60, 1, 28, 28)
    assert torch.bincount(torch.cat([d.train_y, d.val_y]), minlength=10).tolist() == [30] * 10
    test_x = numpy_idx(DEBIAN_FASHION_MNIST / "t10k-images-idx3-ubyte.gz", 16).reshape(-1, 28, 28)
    test_y = numpy_idx(DEBIAN_FASHION_MNIST / "t10k-labels-idx1-ubyte.gz", 8)
    assert d.test_x.shape == (10000, 1, 28, 28) and d.test_x.dtype == torch.uint8
    np.testing.assert_array_equal(d.test_x[:, 0].numpy(), test_x)
    np.testing.assert_array_equal(d.test_y.numpy(), test_y)
    assert np.bincount(test_y).tolist() == [1000] * 10  # Fashion-MNIST's balanced test set
    assert d.augment == Augment(pad=2, flip=True)
