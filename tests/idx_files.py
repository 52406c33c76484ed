"""IDX files (the MNIST family's format) written by the tests: the readers get real bytes."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def idx_images(images: np.ndarray) -> bytes:
    n, rows, cols = images.shape
    return struct.pack(">IIII", 2051, n, rows, cols) + images.astype(np.uint8).tobytes()


def idx_labels(labels: np.ndarray) -> bytes:
    return struct.pack(">II", 2049, len(labels)) + labels.astype(np.uint8).tobytes()


def write(path: Path, data: bytes, gz: bool) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)
    return path


def write_split(folder: Path, split: str, images: np.ndarray, labels: np.ndarray, gz: bool = False) -> None:
    """One split's two files, named as torchvision and Debian name them."""
    images_file, labels_file = FILES[split]
    write(folder / images_file, idx_images(images), gz)
    write(folder / labels_file, idx_labels(labels), gz)
