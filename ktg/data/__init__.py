"""Datasets for ktg: a table of builders by name, plus the public loading API.

Like torchvision's model registry, each dataset is one builder function; the
table :data:`_DATASETS` names the module of ``ktg.data`` that defines it (and
what is known of the dataset without reading it: channels, class count, whether
it needs a folder), and ``load_dataset`` imports that module on first use, lets
the builder read the files, then applies the steps every dataset shares (class
subset, seeded training subset and validation split, statistics). The table
imports no torch, so that the search driver and the API check names, class
selections and model sizes without it.

Datasets are never downloaded: builders read what is on disk or raise a
``KtgError`` that says where they looked and what they expected.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from ktg.errors import allowed

if TYPE_CHECKING:
    from ktg.data.loader import DeviceBatches
    from ktg.data.splits import Augment, ImageData, RawSplits

__all__ = [
    "Augment",
    "DatasetFacts",
    "DeviceBatches",
    "ImageData",
    "RawSplits",
    "check_dataset_name",
    "class_ranges",
    "count_classes",
    "dataset_facts",
    "dataset_names",
    "load_dataset",
    "parse_classes",
]

# A builder reads one dataset: (data_dir, image_size) -> full train/test splits.
DatasetBuilder = Callable[[Path | None, int | None], "RawSplits"]


@dataclass(frozen=True)
class DatasetFacts:
    """What is known of a dataset without reading it (so without torch)."""

    module: str            # ktg.data.<module> defines the builder of the dataset's name
    channels: int          # colour channels of its images
    classes: int | None    # its class count; None: known only once its files are read (imagefolder)
    folder: Literal["required", "optional", "none"]  # whether it reads a data_dir ("optional": a system default)


_DATASETS: dict[str, DatasetFacts] = {
    "cifar10": DatasetFacts("cifar", 3, 10, "required"),
    "cifar100": DatasetFacts("cifar", 3, 100, "required"),
    "tinyimagenet": DatasetFacts("folders", 3, 200, "required"),
    "imagefolder": DatasetFacts("folders", 3, None, "required"),
    "digits": DatasetFacts("bundled", 1, 10, "none"),
    "synthetic": DatasetFacts("bundled", 3, 10, "none"),
    "fashionmnist": DatasetFacts("mnist", 1, 10, "optional"),  # Debian's package folder by default
    "mnist": DatasetFacts("mnist", 1, 10, "required"),
    "kmnist": DatasetFacts("mnist", 1, 10, "required"),
}
"""Every dataset name -> its facts; the order is the order of dataset_names()."""

# The torch-backed names this package re-exports, imported on first use.
_LAZY = {"Augment": "splits", "ImageData": "splits", "RawSplits": "splits", "DeviceBatches": "loader"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"ktg.data.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'ktg.data' has no attribute {name!r}")


def dataset_names() -> list[str]:
    """The dataset names, in the table's order."""
    return list(_DATASETS)


def dataset_facts(name: str) -> DatasetFacts:
    """The facts of dataset ``name`` (a :class:`KtgError` naming ``dataset`` if there is none)."""
    check_dataset_name(name)
    return _DATASETS[name]


def check_dataset_name(name: object, field: str = "dataset") -> None:
    """Raise :class:`KtgError` naming ``field`` if ``name`` is not a dataset of the table."""
    if not isinstance(name, str) or name not in _DATASETS:  # a JSON list or dict is not hashable
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
    builder: DatasetBuilder = getattr(importlib.import_module(f"ktg.data.{_DATASETS[name].module}"), name)
    raw = builder(root, image_size)
    return finalize(raw, classes=classes, val_fraction=fraction, split_seed=split_seed, train_size=train_size)


_ITEM = re.compile(r"(\d{1,7})(?:-(\d{1,7}))?")
_CLASSES_HELP = "comma-separated class ids or ranges, e.g. '0-49', '1,3,5', '0-4,10'"
# The bound on class ids when the dataset's class count is only known from its files.
_MAX_CLASS_ID = 1_000_000
# Room for a thousand ids listed one by one; parsing stays a few milliseconds.
MAX_CLASSES_TEXT = 10_000


def class_ranges(text: str, dataset: str | None = None) -> list[tuple[int, int]]:
    """The sorted, merged, inclusive id ranges of a class selection like "0-4,10".

    Costs time linear in the text's length (bounded by ``MAX_CLASSES_TEXT``),
    never in the ranges' sizes, so that validating "0-999999,0-999999,..." is
    cheap. Ids must be below the class count of ``dataset`` when it is known
    without reading the dataset.
    """
    if not isinstance(text, str) or len(text) > MAX_CLASSES_TEXT:
        raise allowed("classes", text if not isinstance(text, str) else f"{text[:40]}...",
                      f"{_CLASSES_HELP}, at most {MAX_CLASSES_TEXT} characters")
    known = None if dataset not in _DATASETS else _DATASETS[dataset].classes
    top = _MAX_CLASS_ID if known is None else known - 1
    ranges: list[tuple[int, int]] = []
    for item in text.split(","):
        match = _ITEM.fullmatch(item.strip())
        if match is None:
            raise allowed("classes", text, _CLASSES_HELP)
        lo = int(match.group(1))
        hi = int(match.group(2)) if match.group(2) is not None else lo
        if hi < lo or hi > top:
            within = f"{dataset} has classes 0..{top}" if known is not None else f"high <= {top}"
            raise allowed("classes", text, f"{_CLASSES_HELP} (ranges low-high with low <= high; {within})")
        ranges.append((lo, hi))
    ranges.sort()
    merged = [ranges[0]]
    for lo, hi in ranges[1:]:
        last_lo, last_hi = merged[-1]
        if lo <= last_hi + 1:
            merged[-1] = (last_lo, max(last_hi, hi))
        else:
            merged.append((lo, hi))
    return merged


def parse_classes(text: str, dataset: str | None = None) -> list[int]:
    """Parse a class selection like "0-4,10" into sorted unique ids (see :func:`class_ranges`)."""
    return [i for lo, hi in class_ranges(text, dataset) for i in range(lo, hi + 1)]


def count_classes(text: str, dataset: str | None = None) -> int:
    """How many classes a selection keeps, without listing them."""
    return sum(hi - lo + 1 for lo, hi in class_ranges(text, dataset))
