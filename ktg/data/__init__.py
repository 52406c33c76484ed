"""Datasets for ktg: a table of builders by name, plus the public loading API.

Like torchvision's model registry, each dataset is one builder function; the
table :data:`_BUILDERS` names the module of ``ktg.data`` that defines it, and
``load_dataset`` imports that module on first use, lets the builder read the
files, then applies the steps every dataset shares (class subset, seeded
training subset and validation split, statistics). The table imports no torch,
so that the search driver and the API check dataset names without it.

Datasets are never downloaded: builders read what is on disk or raise a
``KtgError`` that says where they looked and what they expected.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ktg.errors import allowed

if TYPE_CHECKING:
    from ktg.data.loader import DeviceBatches
    from ktg.data.splits import Augment, ImageData, RawSplits

__all__ = [
    "Augment",
    "DeviceBatches",
    "ImageData",
    "RawSplits",
    "check_dataset_name",
    "dataset_names",
    "load_dataset",
    "parse_classes",
]

# A builder reads one dataset: (data_dir, image_size) -> full train/test splits.
DatasetBuilder = Callable[[Path | None, int | None], "RawSplits"]

_BUILDERS: dict[str, str] = {
    "cifar10": "cifar", "cifar100": "cifar",
    "tinyimagenet": "folders", "imagefolder": "folders",
    "digits": "bundled", "synthetic": "bundled",
    "fashionmnist": "mnist", "mnist": "mnist", "kmnist": "mnist",
}
"""Every dataset name -> the module ``ktg.data.<module>`` whose function of that name
builds it. The order is the order of dataset_names()."""

# The torch-backed names this package re-exports, imported on first use.
_LAZY = {"Augment": "splits", "ImageData": "splits", "RawSplits": "splits", "DeviceBatches": "loader"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"ktg.data.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'ktg.data' has no attribute {name!r}")


def dataset_names() -> list[str]:
    """The dataset names, in the table's order."""
    return list(_BUILDERS)


def check_dataset_name(name: object, field: str = "dataset") -> None:
    """Raise :class:`KtgError` naming ``field`` if ``name`` is not a dataset of the table."""
    if not isinstance(name, str) or name not in _BUILDERS:  # a JSON list or dict is not hashable
        raise allowed(field, name, ", ".join(dataset_names()))


def load_dataset(
    name: str,
    *,
    data_dir: str | Path | None = None,
    classes: Sequence[int] | None = None,
    val_fraction: float = 0.0,
    split_seed: int = 0,
    image_size: int | None = None,
    train_size: int | None = None,
) -> ImageData:
    """Load dataset ``name`` into CPU uint8 tensors.

    classes: keep only these original class ids, relabelled 0..k-1 in this order.
    val_fraction: share of the (kept) training set held out for validation,
        chosen by ``split_seed`` alone.
    image_size: resize target for imagefolder (default 32); fixed-size datasets
        only accept their own size.
    train_size: keep a class-balanced subset of this many training images
        (after ``classes``, before the validation split, which is carved out of
        it), chosen by ``split_seed`` alone; None keeps them all.
    """
    check_dataset_name(name)
    from ktg.data.splits import check_train_size, check_val_fraction, finalize

    # Cheap argument checks first: reading tinyimagenet takes a while.
    fraction = check_val_fraction(val_fraction)
    if isinstance(split_seed, bool) or not isinstance(split_seed, int):
        raise allowed("split_seed", split_seed, "an integer")
    if image_size is not None and (isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1):
        raise allowed("image_size", image_size, "a positive integer or None")
    check_train_size(train_size)
    root = None if data_dir is None else Path(data_dir).expanduser()
    builder: DatasetBuilder = getattr(importlib.import_module(f"ktg.data.{_BUILDERS[name]}"), name)
    raw = builder(root, image_size)
    return finalize(raw, classes=classes, val_fraction=fraction, split_seed=split_seed, train_size=train_size)


_ITEM = re.compile(r"^(\d+)(?:-(\d+))?$")
_CLASSES_HELP = "comma-separated class ids or ranges, e.g. '0-49', '1,3,5', '0-4,10'"
# Guards against "0-99999999999" building a huge list; far above any dataset here.
_MAX_CLASS_ID = 1_000_000


def parse_classes(text: str) -> list[int]:
    """Parse a class selection like "0-4,10" into sorted unique ids."""
    ids: set[int] = set()
    items = text.split(",") if isinstance(text, str) else []
    for item in items:
        match = _ITEM.match(item.strip())
        if match is None:
            raise allowed("classes", text, _CLASSES_HELP)
        lo = int(match.group(1))
        hi = int(match.group(2)) if match.group(2) is not None else lo
        if hi < lo or hi > _MAX_CLASS_ID:
            raise allowed("classes", text, _CLASSES_HELP + f" (ranges low-high with low <= high <= {_MAX_CLASS_ID})")
        ids.update(range(lo, hi + 1))
    if not ids:
        raise allowed("classes", text, _CLASSES_HELP)
    return sorted(ids)
