"""Throughput of DeviceBatches vs torchvision's usual PIL + DataLoader pipeline.

Both produce the same augmentation (reflect-pad 4 + random 32x32 crop, random
horizontal flip, normalisation) for batches of 64 from the same 10,000 random
32x32 RGB images. DeviceBatches runs on CUDA when available, else the CPU.
Prints images/second; never asserts. Run: python benchmarks/bench_data.py
"""

from __future__ import annotations

import os
import time

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from ktg.data import Augment, DeviceBatches

N, SIZE, BATCH = 10_000, 32, 64
MEAN, STD = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)


class PilImages(Dataset[tuple[torch.Tensor, int]]):
    """Images kept as PIL objects, as torchvision's CIFAR10 dataset does."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, transform: transforms.Compose) -> None:
        self.images = [Image.fromarray(img) for img in x.permute(0, 2, 3, 1).numpy()]
        self.labels = y.tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.transform(self.images[i]), self.labels[i]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_device_batches(x: torch.Tensor, y: torch.Tensor, device: torch.device, epochs: int = 5) -> float:
    """Best images/second over a few epochs, after one warm-up epoch."""
    db = DeviceBatches(x, y, batch_size=BATCH, mean=MEAN, std=STD, augment=Augment(pad=4, flip=True),
                       seed=0, device=device)
    best = 0.0
    for epoch in range(epochs + 1):
        sync(device)
        start = time.perf_counter()
        images = 0
        for xb, _ in db.epoch(epoch):
            images += len(xb)
        sync(device)
        if epoch > 0:  # epoch 0 is warm-up
            best = max(best, images / (time.perf_counter() - start))
    return best


def bench_torchvision(x: torch.Tensor, y: torch.Tensor, workers: int = 2) -> float:
    """Images/second of the second epoch (workers already started) of a standard DataLoader."""
    transform = transforms.Compose([
        transforms.RandomCrop(SIZE, padding=4, padding_mode="reflect"),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize(MEAN, STD),
    ])
    loader = DataLoader(PilImages(x, y, transform), batch_size=BATCH, shuffle=True, drop_last=True,
                        num_workers=workers, persistent_workers=True)
    rate = 0.0
    for _ in range(2):
        start = time.perf_counter()
        images = 0
        for xb, _ in loader:
            images += len(xb)
        rate = images / (time.perf_counter() - start)
    return rate


def main() -> None:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (N, 3, SIZE, SIZE), dtype=torch.uint8, generator=gen)
    y = torch.randint(0, 10, (N,), generator=gen)
    print(f"{N} images {SIZE}x{SIZE}x3, batch {BATCH}, pad-4 reflect crop + flip + normalise; "
          f"torch {torch.__version__}, {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}")
    ours = bench_device_batches(x, y, device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"DeviceBatches ({name}):                   {ours:12,.0f} images/s")
    theirs = bench_torchvision(x, y)
    print(f"torchvision PIL + DataLoader (2 workers): {theirs:12,.0f} images/s")
    print(f"ratio DeviceBatches / torchvision:        {ours / theirs:12.1f}x")


if __name__ == "__main__":
    main()
