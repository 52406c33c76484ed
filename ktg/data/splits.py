"""Dataset containers and the dataset-independent steps of loading.

Builders (cifar.py, mnist.py, folders.py, bundled.py) only read files and
return a ``RawSplits``; everything a user can vary (class subset, training
subset, validation split) happens here, once, so every dataset behaves the
same way.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from ktg.errors import KtgError, allowed

# Fixed seed of the held-out test split of datasets that ship without one
# (digits). Independent of ``split_seed`` so a test set never moves.
FIXED_TEST_SEED = 12345


@dataclass(frozen=True)
class Augment:
    """What the batched augmentation does for a dataset."""

    pad: int = 0  # reflect-pad then random crop back to the original size (0 = no crop)
    flip: bool = False  # random horizontal flip


@dataclass
class RawSplits:
    """What a builder reads from disk: full train and test sets, all classes."""

    name: str
    train_x: torch.Tensor = field(repr=False)  # uint8 (N, C, H, W)
    train_y: torch.Tensor = field(repr=False)  # int64 (N,)
    test_x: torch.Tensor = field(repr=False)
    test_y: torch.Tensor = field(repr=False)
    num_classes: int
    augment: Augment


@dataclass
class ImageData:
    """A loaded dataset, ready to hand to ``DeviceBatches``.

    Tensors are excluded from the repr: printing a dataset should not dump
    millions of pixels.
    """

    name: str
    train_x: torch.Tensor = field(repr=False)  # uint8, (N, C, H, W), CPU
    train_y: torch.Tensor = field(repr=False)  # int64, (N,), labels 0..num_classes-1
    val_x: torch.Tensor | None = field(repr=False)
    val_y: torch.Tensor | None = field(repr=False)
    test_x: torch.Tensor = field(repr=False)
    test_y: torch.Tensor = field(repr=False)
    num_classes: int
    classes: list[int] | None  # original class ids kept (None = all), in new-label order
    mean: tuple[float, ...]  # per channel, of train_x / 255
    std: tuple[float, ...]
    augment: Augment

    @property
    def in_channels(self) -> int:
        return int(self.train_x.shape[1])

    @property
    def image_size(self) -> int:
        """Height (= width: all datasets here are square)."""
        return int(self.train_x.shape[2])


def check_image_size(name: str, image_size: int | None, native: int) -> None:
    """Reject a resize request for a dataset that has a fixed size.

    Silently ignoring it would let a user believe they trained at another
    resolution.
    """
    if image_size is not None and image_size != native:
        raise allowed("image_size", image_size, f"{native} or None for {name} (only imagefolder resizes)")


def check_val_fraction(val_fraction: float) -> float:
    ok = (
        isinstance(val_fraction, (int, float))
        and not isinstance(val_fraction, bool)
        and math.isfinite(val_fraction)
        and 0.0 <= val_fraction < 1.0
    )
    if not ok:
        raise allowed("val_fraction", val_fraction, "a number in [0, 1)")
    return float(val_fraction)


def check_classes(classes: Sequence[int], num_classes: int, name: str) -> list[int]:
    """Validate user class ids against the dataset; keeps the given order."""
    expected = f"distinct class ids in 0..{num_classes - 1} for {name}"
    try:
        # operator.index accepts numpy/torch integer scalars but not floats.
        ids = [operator.index(c) for c in classes if not isinstance(c, bool)]
    except TypeError:
        raise allowed("classes", classes, expected) from None
    if not ids or len(ids) != len(classes) or len(set(ids)) != len(ids):
        raise allowed("classes", classes, expected)
    if any(not 0 <= c < num_classes for c in ids):
        raise allowed("classes", ids, expected)
    return ids


def subset_classes(x: torch.Tensor, y: torch.Tensor, classes: list[int], num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep samples of ``classes`` (in their original order), label = position in ``classes``."""
    new_label = torch.full((num_classes,), -1, dtype=torch.int64)
    new_label[torch.tensor(classes, dtype=torch.int64)] = torch.arange(len(classes))
    mapped = new_label[y]
    keep = mapped >= 0
    return x[keep], mapped[keep]


def check_train_size(train_size: int | None) -> int | None:
    """Reject a ``train_size`` that is not a positive integer (None keeps the whole training split)."""
    if train_size is not None and (isinstance(train_size, bool) or not isinstance(train_size, int) or train_size < 1):
        raise allowed("train_size", train_size, "a positive integer (images kept of the training split) or None")
    return train_size


def balanced_subset(
    y: torch.Tensor, train_size: int, num_classes: int, *, seed: int, name: str, kept: list[int] | None
) -> torch.Tensor:
    """Indices (sorted) of a class-balanced subset of ``train_size`` samples of labels ``y`` (0..num_classes-1).

    Each of the k classes gets ``train_size // k`` samples and the lowest
    ``train_size % k`` labels (the first classes of ``--classes``) one more;
    which samples is drawn by ``seed`` alone, so a subset is the same in every
    trial and process. ``kept`` maps labels back to dataset class ids for messages.
    """
    k = num_classes
    counts = torch.bincount(y, minlength=k)
    if train_size > len(y):
        raise allowed("train_size", train_size, f"at most {len(y)}, the size of the training split of {name}"
                      + (" with these classes" if kept is not None else ""))
    if train_size < 2 * k:
        raise allowed("train_size", train_size, f"at least 2 images per class, i.e. {2 * k} or more for {k} classes")
    per_class, extra = divmod(train_size, k)
    quota = torch.full((k,), per_class, dtype=torch.int64)
    quota[:extra] += 1
    if bool((counts < quota).any()):
        # k * (smallest class) is always possible; name that class, it sets the bound.
        label = int(counts.argmin())
        raise allowed("train_size", train_size,
                      f"up to {k * int(counts[label])} for a class-balanced subset of {name} (class "
                      f"{kept[label] if kept is not None else label} has only {int(counts[label])} training images)")
    gen = torch.Generator().manual_seed(seed)
    picked = []
    for label in range(k):
        members = (y == label).nonzero().flatten()
        picked.append(members[torch.randperm(len(members), generator=gen)[: int(quota[label])]])
    return torch.cat(picked).sort().values


def split_indices(n: int, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded random split of ``range(n)`` into (rest, held_out), both sorted.

    Only ``seed`` decides the split (its own CPU generator), so every trial of a
    search sees the same validation set. Sorting keeps the original order
    inside each part, which makes splits easy to inspect and compare.
    """
    n_out = round(n * fraction)
    if n_out == 0 or n_out >= n:
        raise KtgError(
            f"val_fraction: got {fraction!r}, which leaves {n_out} of {n} training images "
            "for validation; allowed: a fraction giving at least one image on each side"
        )
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=gen)
    return perm[n_out:].sort().values, perm[:n_out].sort().values


def channel_stats(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) std of ``x / 255``.

    Accumulates float64 sums chunk by chunk so a 50k-image set never needs a
    full float copy. A constant channel gets std 1 instead of 0 so that
    normalising never divides by zero.
    """
    channels = x.shape[1]
    total = torch.zeros(channels, dtype=torch.float64)
    total_sq = torch.zeros(channels, dtype=torch.float64)
    for chunk in torch.split(x, 4096):
        c = chunk.to(torch.float64) / 255.0
        total += c.sum(dim=(0, 2, 3))
        total_sq += (c * c).sum(dim=(0, 2, 3))
    count = x.shape[0] * x.shape[2] * x.shape[3]
    mean = total / count
    std = (total_sq / count - mean * mean).clamp_min(0.0).sqrt()
    std = torch.where(std > 0, std, torch.ones_like(std))
    return tuple(mean.tolist()), tuple(std.tolist())


def finalize(
    raw: RawSplits,
    *,
    classes: Sequence[int] | None,
    val_fraction: float,
    split_seed: int,
    train_size: int | None = None,
) -> ImageData:
    """Apply class subset, training subset, validation split and statistics to what a builder read.

    In this order: the validation split is carved out of the ``train_size``
    subset, which is drawn from the kept classes; the test split is only
    touched by the class subset.
    """
    train_x, train_y, test_x, test_y = raw.train_x, raw.train_y, raw.test_x, raw.test_y
    kept: list[int] | None = None
    num_classes = raw.num_classes
    if classes is not None:
        kept = check_classes(classes, raw.num_classes, raw.name)
        train_x, train_y = subset_classes(train_x, train_y, kept, raw.num_classes)
        test_x, test_y = subset_classes(test_x, test_y, kept, raw.num_classes)
        num_classes = len(kept)
        if len(train_y) == 0:
            raise KtgError(f"classes: got {kept}; {raw.name} has no training images of these classes")
    subset_size = check_train_size(train_size)
    if subset_size is not None:
        chosen = balanced_subset(train_y, subset_size, num_classes, seed=split_seed, name=raw.name, kept=kept)
        train_x, train_y = train_x[chosen], train_y[chosen]
    val_x: torch.Tensor | None = None
    val_y: torch.Tensor | None = None
    if val_fraction > 0:
        rest, held = split_indices(len(train_y), val_fraction, split_seed)
        val_x, val_y = train_x[held], train_y[held]
        train_x, train_y = train_x[rest], train_y[rest]
    # Statistics of what is actually trained on: no peeking at val or test.
    mean, std = channel_stats(train_x)
    return ImageData(
        name=raw.name,
        train_x=train_x.contiguous(),
        train_y=train_y.contiguous(),
        val_x=val_x,
        val_y=val_y,
        test_x=test_x.contiguous(),
        test_y=test_y.contiguous(),
        num_classes=num_classes,
        classes=kept,
        mean=mean,
        std=std,
        augment=raw.augment,
    )
