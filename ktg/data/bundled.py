"""Datasets that need no files: scikit-learn's digits and a synthetic set.

Both exist so that ktg can be tried, tested and demonstrated without any
download. ``data_dir`` is ignored by both.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from ktg.data.splits import FIXED_TEST_SEED, Augment, RawSplits, check_image_size, split_indices

# Seed of the synthetic prototypes and samples: the set must be identical in
# every process, on every machine.
_SYNTHETIC_SEED = 20240611


def digits(data_dir: Path | None, image_size: int | None) -> RawSplits:
    """scikit-learn's 1797 8x8 grayscale digits, 10 classes.

    The set has no test split, so a fixed 20% (seed ``FIXED_TEST_SEED``,
    independent of ``split_seed``) is held out as the test set. No flips:
    a mirrored digit is a different (or no) digit.
    """
    # Imported here: sklearn is slow to import and only this dataset needs it.
    from sklearn.datasets import load_digits

    check_image_size("digits", image_size, 8)
    bunch = load_digits()
    # Pixel values are 0..16; stretch them to the 0..255 range of other images.
    pixels = torch.from_numpy(bunch.images).to(torch.float64)
    x = (pixels * (255.0 / 16.0)).round().to(torch.uint8).unsqueeze(1)
    y = torch.from_numpy(bunch.target).to(torch.int64)
    train, test = split_indices(len(y), 0.2, FIXED_TEST_SEED)
    return RawSplits("digits", x[train], y[train], x[test], y[test], 10, Augment(pad=1, flip=False))


def synthetic(data_dir: Path | None, image_size: int | None) -> RawSplits:
    """10 classes of 3x16x16 images: a fixed smooth prototype per class plus noise.

    1000 train / 200 test, balanced. Prototypes are upsampled 4x4 noise, so
    they survive small crops and flips and a small CNN learns them in an epoch
    or two; the pixel noise keeps the task from being trivial.
    """
    check_image_size("synthetic", image_size, 16)
    gen = torch.Generator().manual_seed(_SYNTHETIC_SEED)
    coarse = torch.randn(10, 3, 4, 4, generator=gen)
    prototypes = 128.0 + 60.0 * F.interpolate(coarse, size=(16, 16), mode="bilinear", align_corners=False)

    def sample(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.arange(n) % 10
        labels = labels[torch.randperm(n, generator=gen)]
        noise = 30.0 * torch.randn(n, 3, 16, 16, generator=gen)
        images = (prototypes[labels] + noise).round().clamp(0, 255).to(torch.uint8)
        return images, labels

    train_x, train_y = sample(1000)
    test_x, test_y = sample(200)
    return RawSplits("synthetic", train_x, train_y, test_x, test_y, 10, Augment(pad=2, flip=True))
