"""MNIST, Fashion-MNIST and KMNIST: 28x28 grayscale images in IDX files.

The files are parsed by torchvision's own IDX reader
(``torchvision.datasets.mnist.read_image_file`` / ``read_label_file``, what its
``MNIST``/``FashionMNIST``/``KMNIST`` classes call), never by hand; the classes
also supply each dataset's folder name and download address for messages.
The classes themselves are not instantiated: they only look for uncompressed
files, while Debian's package ships ``.gz`` ones, and reading file by file lets
an error name the exact file that is missing or damaged. Nothing is downloaded.

Layouts, in ``--data-dir`` (each file plain or ``.gz``):
  - torchvision's: ``<data-dir>/FashionMNIST/raw/train-images-idx3-ubyte.gz`` ...
    (``MNIST/raw``, ``KMNIST/raw``);
  - flat: the four files directly in ``<data-dir>``.
Without ``--data-dir``, ``fashionmnist`` reads ``/usr/share/datasets/fashion-mnist``,
where Debian's ``dataset-fashion-mnist`` package puts the four ``.gz`` files.
"""

from __future__ import annotations

import gzip
import shutil
import tempfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ktg.data.splits import Augment, RawSplits, check_image_size
from ktg.errors import KtgError

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
DEBIAN_PACKAGE = "dataset-fashion-mnist"
SIZE = 28
NUM_CLASSES = 10
# (images, labels) of each split, as torchvision and the original sites name them.
SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_ALL_FILES = [f for pair in SPLIT_FILES.values() for f in pair]


@dataclass(frozen=True)
class IdxDataset:
    """One dataset of the MNIST family: how to find it and how to augment it."""

    name: str
    torchvision_class: str  # class in torchvision.datasets; also the folder of its layout
    augment: Augment
    default_dir: Path | None = None  # read when --data-dir is not given
    package: str | None = None  # the Debian package that installs default_dir

    def source(self) -> str:
        """Where the files can be downloaded (by the user: ktg never downloads)."""
        import torchvision.datasets

        return str(getattr(torchvision.datasets, self.torchvision_class).mirrors[0])

    def fix(self, folder: Path, *, damaged: bool) -> str:
        """What to do about a missing (or damaged) file in ``folder``."""
        if self.package and folder == self.default_dir:
            return f"fix: apt-get install {'--reinstall ' if damaged else ''}{self.package}"
        if damaged:
            fix = f"fix: replace it with a good copy from {self.source()}"
        else:
            fix = (f"fix: get them from {self.source()} and put them in {folder} (or in "
                   f"<data-dir>/{self.torchvision_class}/raw, torchvision's layout); ktg never downloads")
        if self.package:
            fix += f", or apt-get install {self.package} and omit --data-dir"
        return fix


# Augmentation: a reflect-pad-2 random crop, i.e. shifts of up to 2 px. MNIST
# fits each digit in a 20x20 box centred in the 28x28 frame (KMNIST follows its
# format), so a 2 px shift never cuts a stroke off and the reflected border is
# background. Fashion-MNIST garments are scaled to span the frame along their
# long side, where a wider pad (CIFAR's 4) would mirror more of the garment into
# the image. No flips for digits and Kuzushiji: a mirrored character is another
# symbol or none. A mirrored shirt or shoe is still a shirt or shoe, so
# Fashion-MNIST flips.
DATASETS = (
    IdxDataset("fashionmnist", "FashionMNIST", Augment(pad=2, flip=True), DEBIAN_FASHION_MNIST, DEBIAN_PACKAGE),
    IdxDataset("mnist", "MNIST", Augment(pad=2, flip=False)),
    IdxDataset("kmnist", "KMNIST", Augment(pad=2, flip=False)),
)


def _file_list() -> str:
    return ", ".join(f"{f}(.gz)" for f in _ALL_FILES)


def _folder(dataset: IdxDataset, data_dir: Path | None) -> Path:
    """The folder holding the four files: torchvision's ``<Class>/raw`` if it exists, else ``data_dir``."""
    if data_dir is None:
        if dataset.default_dir is None:
            raise KtgError(
                f"{dataset.name}: --data-dir is required (the folder holding {_file_list()}, or "
                f"{dataset.torchvision_class}/raw/ with them as torchvision lays it out; "
                f"from {dataset.source()}; ktg never downloads)"
            )
        data_dir = dataset.default_dir
    nested = data_dir / dataset.torchvision_class / "raw"
    return nested if nested.is_dir() else data_dir


def _find_files(dataset: IdxDataset, folder: Path) -> dict[str, Path]:
    """Each of the four files, plain (preferred, as torchvision reads it) or gzipped."""
    found: dict[str, Path] = {}
    missing: list[str] = []
    for name in _ALL_FILES:
        path = next((p for p in (folder / name, folder / f"{name}.gz") if p.is_file()), None)
        if path is None:
            missing.append(f"{name}(.gz)")
        else:
            found[name] = path
    if missing:
        where = f"in {folder}" if folder.is_dir() else f"in {folder}, which does not exist"
        raise KtgError(f"{dataset.name}: missing {', '.join(missing)} {where}; {dataset.fix(folder, damaged=False)}")
    return found


def _read_idx(path: Path, reader: Callable[[str], torch.Tensor], dataset: IdxDataset, folder: Path) -> torch.Tensor:
    """``reader(path)``, through a temporary uncompressed copy for ``.gz`` (torchvision reads plain files).

    torchvision raises on a file whose size disagrees with its header (a
    truncated or padded file) and on a bad magic number or type, gzip on a
    truncated or corrupt stream; each becomes one line naming ``path``.
    """
    try:
        if path.suffix != ".gz":
            return reader(str(path))
        with tempfile.TemporaryDirectory(prefix="ktg-idx-") as tmp:
            plain = Path(tmp) / path.stem
            with gzip.open(path, "rb") as source, plain.open("wb") as target:
                shutil.copyfileobj(source, target)
            return reader(str(plain))
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
        reason = f"truncated or damaged gzip: {e}"
    except (AssertionError, RuntimeError, ValueError, TypeError) as e:  # torchvision's IDX checks
        reason = f"truncated or not an IDX file: {str(e) or type(e).__name__}"
    except OSError as e:
        reason = e.strerror or str(e)
    reason = " ".join(reason.split())  # one line, whatever the library wrote
    raise KtgError(f"{dataset.name}: cannot read {path} ({reason}); {dataset.fix(folder, damaged=True)}")


def _read_split(
    dataset: IdxDataset, folder: Path, images_path: Path, labels_path: Path
) -> tuple[torch.Tensor, torch.Tensor]:
    from torchvision.datasets.mnist import read_image_file, read_label_file

    images = _read_idx(images_path, read_image_file, dataset, folder)
    labels = _read_idx(labels_path, read_label_file, dataset, folder)
    fix = dataset.fix(folder, damaged=True)
    if tuple(images.shape[1:]) != (SIZE, SIZE):
        raise KtgError(f"{dataset.name}: {images_path} holds {images.shape[1]}x{images.shape[2]} images, "
                       f"expected {SIZE}x{SIZE}; {fix}")
    if len(labels) != len(images):
        raise KtgError(f"{dataset.name}: {labels_path} has {len(labels)} labels for the {len(images)} images "
                       f"of {images_path} (one file is from another set); {fix}")
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= NUM_CLASSES):
        raise KtgError(f"{dataset.name}: {labels_path} has labels outside 0..{NUM_CLASSES - 1}; {fix}")
    return images.unsqueeze(1).contiguous(), labels.to(torch.int64)


def read_idx_dataset(dataset: IdxDataset, data_dir: Path | None, image_size: int | None) -> RawSplits:
    """The train and test splits of ``dataset``: uint8 (N, 1, 28, 28) images, labels 0..9."""
    check_image_size(dataset.name, image_size, SIZE)
    folder = _folder(dataset, data_dir)
    files = _find_files(dataset, folder)
    (train_x, train_y), (test_x, test_y) = (
        _read_split(dataset, folder, files[images], files[labels]) for images, labels in SPLIT_FILES.values()
    )
    return RawSplits(dataset.name, train_x, train_y, test_x, test_y, NUM_CLASSES, dataset.augment)


def _builder(dataset: IdxDataset) -> Callable[[Path | None, int | None], RawSplits]:
    def build(data_dir: Path | None, image_size: int | None) -> RawSplits:
        return read_idx_dataset(dataset, data_dir, image_size)

    build.__doc__ = f"{dataset.name}: 60,000 train / 10,000 test 28x28 grayscale images, 10 classes."
    return build


# The builders ktg.data's table names: one per dataset of the family.
fashionmnist, mnist, kmnist = (_builder(dataset) for dataset in DATASETS)
