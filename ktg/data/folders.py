"""Datasets stored as image files: Tiny ImageNet and a generic image folder.

Images are decoded once with PIL into one uint8 tensor; training then never
touches the files again. Decoding runs in a thread pool because PIL releases
the GIL while decoding, which makes loading ~100k JPEGs several times faster
than a plain loop.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ktg.data.splits import Augment, RawSplits, check_image_size
from ktg.errors import KtgError

_AUGMENT = Augment(pad=4, flip=True)
_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
_TINY_SOURCE = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
_TINY_LAYOUT = "wnids.txt, train/<wnid>/images/*.JPEG, val/images/*.JPEG and val/val_annotations.txt"


def _decode(path: Path, size: int, name: str) -> np.ndarray:
    """One image as (size, size, 3) uint8 RGB; resized only if it is not already that size."""
    try:
        with Image.open(path) as img:
            rgb = img.convert("RGB")
    except (OSError, UnidentifiedImageError) as e:
        raise KtgError(f"{name}: cannot read image {path}: {e}") from e
    if rgb.size != (size, size):
        rgb = rgb.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(rgb, dtype=np.uint8)


def _read_images(paths: list[Path], size: int, name: str) -> torch.Tensor:
    """Decode ``paths`` into a (N, 3, size, size) uint8 tensor, in the given order."""
    out = np.empty((len(paths), size, size, 3), dtype=np.uint8)

    def fill(i: int) -> None:
        out[i] = _decode(paths[i], size, name)

    workers = min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        # list() re-raises the first KtgError from a worker.
        list(pool.map(fill, range(len(paths))))
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


def _image_files(folder: Path) -> list[Path]:
    """Image files directly in ``folder``, sorted by name for a stable order."""
    return sorted(
        p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in _IMAGE_SUFFIXES
    )


# --- Tiny ImageNet -----------------------------------------------------------


def _tiny_root(data_dir: Path | None) -> Path:
    if data_dir is None:
        raise KtgError(
            "tinyimagenet: --data-dir is required (the folder holding tiny-imagenet-200/; ktg never downloads datasets)"
        )
    root = data_dir if (data_dir / "wnids.txt").is_file() else data_dir / "tiny-imagenet-200"
    hint = f"expected {_TINY_LAYOUT} from {_TINY_SOURCE}; ktg never downloads"
    if not root.is_dir():
        raise KtgError(f"tinyimagenet: no dataset at {root} ({hint})")
    needed = [root / "wnids.txt", root / "train", root / "val" / "images", root / "val" / "val_annotations.txt"]
    missing = [str(p.relative_to(root)) for p in needed if not p.exists()]
    if missing:
        raise KtgError(f"tinyimagenet: incomplete dataset at {root}: missing {', '.join(missing)} ({hint})")
    return root


def tinyimagenet(data_dir: Path | None, image_size: int | None) -> RawSplits:
    """Tiny ImageNet: 64x64 RGB, 200 classes; its labelled val set serves as the test set.

    Class ids follow the sorted wnids (the order torchvision's ImageFolder
    would give ``train/``), not the line order of wnids.txt.
    """
    check_image_size("tinyimagenet", image_size, 64)
    root = _tiny_root(data_dir)
    wnids = sorted({line.strip() for line in (root / "wnids.txt").read_text().splitlines() if line.strip()})
    if not wnids:
        raise KtgError(f"tinyimagenet: {root / 'wnids.txt'} lists no classes")
    label_of = {w: i for i, w in enumerate(wnids)}

    train_paths: list[Path] = []
    train_labels: list[int] = []
    for wnid in wnids:
        folder = root / "train" / wnid / "images"
        files = _image_files(folder) if folder.is_dir() else []
        if not files:
            raise KtgError(f"tinyimagenet: no training images in {folder} (expected {wnid}_*.JPEG)")
        train_paths += files
        train_labels += [label_of[wnid]] * len(files)

    test_paths: list[Path] = []
    test_labels: list[int] = []
    annotations = root / "val" / "val_annotations.txt"
    for n, line in enumerate(annotations.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 2 or fields[1] not in label_of:
            raise KtgError(f"tinyimagenet: {annotations} line {n}: expected '<file>\\t<wnid from wnids.txt>\\t...'")
        test_paths.append(root / "val" / "images" / fields[0])
        test_labels.append(label_of[fields[1]])

    return RawSplits(
        "tinyimagenet",
        _read_images(train_paths, 64, "tinyimagenet"),
        torch.tensor(train_labels, dtype=torch.int64),
        _read_images(test_paths, 64, "tinyimagenet"),
        torch.tensor(test_labels, dtype=torch.int64),
        len(wnids),
        _AUGMENT,
    )


# --- generic image folder ----------------------------------------------------


def _class_folders(split: Path) -> dict[str, Path]:
    return {p.name: p for p in sorted(split.iterdir()) if p.is_dir() and not p.name.startswith(".")}


def imagefolder(data_dir: Path | None, image_size: int | None) -> RawSplits:
    """``data_dir/train/<class>/*`` and ``data_dir/test/<class>/*`` (or ``val/``).

    Classes are the train folder names, sorted; images become RGB squares of
    ``image_size`` (default 32), resized without keeping the aspect ratio.
    """
    layout = "train/<class>/<image> and test/<class>/<image> (or val/<class>/<image>)"
    if data_dir is None:
        raise KtgError(f"imagefolder: --data-dir is required (a folder holding {layout})")
    size = 32 if image_size is None else image_size
    train_dir = data_dir / "train"
    test_dir = next((d for d in (data_dir / "test", data_dir / "val") if d.is_dir()), None)
    if not train_dir.is_dir() or test_dir is None:
        raise KtgError(f"imagefolder: no dataset at {data_dir} (expected {layout}; ktg never downloads)")
    names = sorted(_class_folders(train_dir))
    if not names:
        raise KtgError(f"imagefolder: no class folders in {train_dir} (expected {layout})")
    label_of = {c: i for i, c in enumerate(names)}
    unknown = sorted(set(_class_folders(test_dir)) - set(names))
    if unknown:
        raise KtgError(f"imagefolder: {test_dir} has classes missing from {train_dir}: {', '.join(unknown)}")

    def collect(split: Path, require_all: bool) -> tuple[list[Path], list[int]]:
        paths: list[Path] = []
        labels: list[int] = []
        for cls, folder in _class_folders(split).items():
            files = _image_files(folder)
            if require_all and not files:
                raise KtgError(f"imagefolder: no images in {folder} (expected {', '.join(sorted(_IMAGE_SUFFIXES))})")
            paths += files
            labels += [label_of[cls]] * len(files)
        return paths, labels

    train_paths, train_labels = collect(train_dir, require_all=True)
    test_paths, test_labels = collect(test_dir, require_all=False)
    if not test_paths:
        raise KtgError(f"imagefolder: no images under {test_dir} (expected {layout})")
    return RawSplits(
        "imagefolder",
        _read_images(train_paths, size, "imagefolder"),
        torch.tensor(train_labels, dtype=torch.int64),
        _read_images(test_paths, size, "imagefolder"),
        torch.tensor(test_labels, dtype=torch.int64),
        len(names),
        _AUGMENT,
    )
