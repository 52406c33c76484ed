"""CIFAR-10 / CIFAR-100 from torchvision's on-disk python layout.

The files are read here instead of through torchvision so that nothing can
ever trigger a download, and so that missing files produce one ``KtgError``
listing everything expected. The batches are Python pickles, and a pickle can
name any function to call; so they are read by ``ktg.data.safe_pickle``, which
builds plain data and numpy arrays only: a crafted batch is an error, never code.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ktg.data.safe_pickle import load_plain
from ktg.data.splits import Augment, RawSplits, check_image_size
from ktg.errors import KtgError

_SOURCE = "https://www.cs.toronto.edu/~kriz/cifar.html"
_AUGMENT = Augment(pad=4, flip=True)


def _dataset_folder(name: str, data_dir: Path | None, folder: str, files: list[str], expected: str) -> Path:
    """Find the batch folder (``data_dir/folder`` or ``data_dir`` itself) or raise one clear error."""
    if data_dir is None:
        raise KtgError(
            f"{name}: --data-dir is required (the folder holding {folder}/, as torchvision lays it out; "
            "ktg never downloads datasets)"
        )
    root = data_dir / folder
    if not root.is_dir() and all((data_dir / f).is_file() for f in files):
        root = data_dir  # data_dir already is the batch folder
    hint = f"expected {expected} from {_SOURCE}, in torchvision's layout; ktg never downloads"
    if not root.is_dir():
        raise KtgError(f"{name}: no dataset at {root} ({hint})")
    missing = [f for f in files if not (root / f).is_file()]
    if missing:
        raise KtgError(f"{name}: incomplete dataset at {root}: missing {', '.join(missing)} ({hint})")
    return root


def _read_batch(path: Path, label_key: str, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Read one pickled batch: (N, 3072) uint8 rows in CHW order plus labels."""
    batch = load_plain(path, name)
    if not isinstance(batch, dict):
        raise KtgError(f"{name}: {path} is not a CIFAR batch (expected a pickled dict)")
    # Keys are str in the official files (latin1-decoded), bytes if a Python 3
    # writer used b'data': accept both.
    entries = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in batch.items()}
    if "data" not in entries or label_key not in entries:
        raise KtgError(f"{name}: {path} lacks 'data' or '{label_key}'")
    try:
        data = np.asarray(entries["data"])
        labels = np.asarray(entries[label_key])
    except (TypeError, ValueError) as e:  # ragged lists and the like
        raise KtgError(f"{name}: {path} is not a CIFAR batch ({e})") from None
    if (data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or labels.shape != (data.shape[0],)
            or labels.dtype.kind not in "iu"):
        raise KtgError(f"{name}: {path} has data {data.shape} {data.dtype} and labels {labels.shape} {labels.dtype}, "
                       "expected (N, 3072) uint8 with N integer labels")
    x = torch.from_numpy(data.reshape(-1, 3, 32, 32).copy())
    y = torch.from_numpy(labels.astype(np.int64))
    return x, y


def _read_cifar(
    name: str, data_dir: Path | None, image_size: int | None, *, folder: str, train: list[str], test: str,
    label_key: str, num_classes: int, expected: str,
) -> RawSplits:
    check_image_size(name, image_size, 32)
    root = _dataset_folder(name, data_dir, folder, [*train, test], expected)
    parts = [_read_batch(root / f, label_key, name) for f in train]
    test_x, test_y = _read_batch(root / test, label_key, name)
    train_x = torch.cat([p[0] for p in parts])
    train_y = torch.cat([p[1] for p in parts])
    for y, f in ((train_y, "train"), (test_y, test)):
        if len(y) and (int(y.min()) < 0 or int(y.max()) >= num_classes):
            raise KtgError(f"{name}: labels in {root} ({f}) outside 0..{num_classes - 1}")
    return RawSplits(name, train_x, train_y, test_x, test_y, num_classes, _AUGMENT)


def cifar10(data_dir: Path | None, image_size: int | None) -> RawSplits:
    """CIFAR-10: 50,000 train / 10,000 test 32x32 RGB images, 10 classes."""
    return _read_cifar(
        "cifar10", data_dir, image_size,
        folder="cifar-10-batches-py",
        train=[f"data_batch_{i}" for i in range(1, 6)],
        test="test_batch",
        label_key="labels",
        num_classes=10,
        expected="data_batch_1..data_batch_5 and test_batch",
    )


def cifar100(data_dir: Path | None, image_size: int | None) -> RawSplits:
    """CIFAR-100 (fine labels): 50,000 train / 10,000 test 32x32 RGB images, 100 classes."""
    return _read_cifar(
        "cifar100", data_dir, image_size,
        folder="cifar-100-python",
        train=["train"],
        test="test",
        label_key="fine_labels",
        num_classes=100,
        expected="train and test",
    )
