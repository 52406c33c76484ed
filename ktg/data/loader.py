"""On-device batching with batched augmentation (the training hot path).

Instead of a DataLoader with per-image PIL transforms, the whole uint8 dataset
lives on the device and each epoch is produced with a handful of large tensor
ops (as in airbench): one permutation, one random draw for all crop offsets
and flips, then per chunk a single gather that performs crop + flip at once,
and one fused normalisation. Batches are views into the chunk.

Determinism: every random number of an epoch comes from one generator seeded
from (seed, epoch) and nothing else, and all of them are drawn up front in a
fixed order (permutation, crop offsets, flips). Batches therefore do not
depend on chunking, on earlier epochs, or on global RNG state.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from ktg.data.splits import Augment
from ktg.errors import KtgError, allowed

# Generator seeds must fit in 64 bits; this keeps (seed, epoch) mixing in range.
_SEED_MODULUS = 1 << 63


def epoch_seed(seed: int, epoch: int) -> int:
    """Seed of the generator of one epoch: distinct for each (seed, epoch) in practice."""
    return (seed * 1_000_003 + epoch) % _SEED_MODULUS


def _reflect(index: torch.Tensor, size: int) -> torch.Tensor:
    """Map indices in [-(size-1), 2*(size-1)] into [0, size) like reflect padding.

    Reflect (not edge-repeating) padding: -1 -> 1 and size -> size - 2, the
    same as ``F.pad(mode="reflect")``.
    """
    last = size - 1
    return last - (last - index.abs()).abs()


class DeviceBatches:
    """Batches of normalised (optionally augmented) images, produced on ``device``.

    ``x`` is uint8 (N, C, H, W) and ``y`` int64 (N,); both are copied to
    ``device`` once, here. Each ``epoch(e)`` yields (images, labels) with images
    float ``(x / 255 - mean) / std`` in ``dtype``. Evaluation mode is
    ``shuffle=False, augment=None, drop_last=False``: every sample once, in order.
    """

    # Images processed per chunk are bounded by this many elements (float32:
    # 4 bytes each), so an epoch of a large dataset never needs a full float copy.
    chunk_elements: int = 1 << 25

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        batch_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        augment: Augment | None,
        seed: int,
        device: torch.device | str = "cpu",
        shuffle: bool = True,
        drop_last: bool = True,
        channels_last: bool = False,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        if x.dtype != torch.uint8 or x.dim() != 4:
            raise KtgError(f"images: got {x.dtype} tensor of shape {tuple(x.shape)}; expected uint8 (N, C, H, W)")
        if y.dim() != 1 or len(y) != len(x) or y.is_floating_point():
            raise KtgError(f"labels: got shape {tuple(y.shape)}; expected integer ({len(x)},) to match the images")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise allowed("batch_size", batch_size, "a positive integer")
        channels, height, width = (int(s) for s in x.shape[1:])
        if len(mean) != channels or len(std) != channels or any(s <= 0 for s in std):
            raise KtgError(f"mean/std: got {tuple(mean)}/{tuple(std)}; expected {channels} values each, std > 0")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise allowed("seed", seed, "an integer")
        augment = augment or Augment()
        if augment.pad < 0 or augment.pad >= min(height, width):
            raise allowed("augment.pad", augment.pad, f"0..{min(height, width) - 1} for {height}x{width} images")

        self.device = torch.device(device)
        self.batch_size = batch_size
        self.augment = augment
        self.seed = seed
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.channels_last = channels_last
        self.dtype = dtype
        self.num_samples = len(x)
        # The one host-to-device copy of the data.
        self.x = x.to(self.device).contiguous()
        self.y = y.to(self.device, torch.int64)
        self._windows = self._crop_windows(augment) if augment.pad or augment.flip else None
        # (x / 255 - mean) / std  ==  x * scale + shift: one fused op per chunk.
        std_t = torch.tensor(std, dtype=torch.float64)
        mean_t = torch.tensor(mean, dtype=torch.float64)
        self._scale = (1.0 / (255.0 * std_t)).to(self.device, torch.float32).view(1, channels, 1, 1)
        self._shift = (-mean_t / std_t).to(self.device, torch.float32).view(1, channels, 1, 1)

    def __len__(self) -> int:
        """Batches per epoch."""
        if self.drop_last:
            return self.num_samples // self.batch_size
        return (self.num_samples + self.batch_size - 1) // self.batch_size

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield the batches of epoch ``epoch``; a function of (seed, epoch) only.

        Nothing here synchronises with the host: sizes are Python ints known
        up front and all indexing uses device tensors.
        """
        n, batch = self.num_samples, self.batch_size
        gen = torch.Generator(device=self.device)
        gen.manual_seed(epoch_seed(self.seed, epoch))
        order = torch.randperm(n, generator=gen, device=self.device) if self.shuffle else None
        pad, flip = self.augment.pad, self.augment.flip
        offsets = torch.randint(0, 2 * pad + 1, (n, 2), generator=gen, device=self.device) if pad else None
        flips = torch.rand(n, generator=gen, device=self.device) < 0.5 if flip else None

        used = len(self) * batch if self.drop_last else n
        per_image = self.x[0].numel()
        chunk = max(1, self.chunk_elements // (batch * per_image)) * batch
        for start in range(0, used, chunk):
            stop = min(start + chunk, used)
            images, labels = self._chunk(order, offsets, flips, start, stop)
            for s in range(0, stop - start, batch):
                yield images[s : s + batch], labels[s : s + batch]

    def _chunk(
        self,
        order: torch.Tensor | None,
        offsets: torch.Tensor | None,
        flips: torch.Tensor | None,
        start: int,
        stop: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Epoch positions [start, stop): gather, augment and normalise in one go."""
        if order is None:
            source = None if offsets is None and flips is None else torch.arange(start, stop, device=self.device)
            labels = self.y[start:stop]
        else:
            source = order[start:stop]
            labels = self.y[source]

        if offsets is None and flips is None:
            images = self.x[start:stop] if source is None else self.x[source]
        else:
            assert source is not None
            images = self._augmented(source, offsets, flips, start, stop)

        out = torch.addcmul(self._shift, images.to(torch.float32), self._scale)
        if self.channels_last:
            return out.to(dtype=self.dtype, memory_format=torch.channels_last), labels
        return out.to(self.dtype), labels

    def _crop_windows(self, augment: Augment) -> torch.Tensor:
        """Every crop of every image, as a view: (flipped, sample, C, dy, dx, H, W).

        The data is reflect-padded once (and, with flips, stored a second time
        mirrored), so that a crop at offset (dy, dx) of a possibly flipped
        image is one entry of an ``unfold`` view. An epoch then needs a single
        gather of whole image rows, with no padded or flipped copies per batch.
        Costs (1 + flip) * ((H + 2 pad) (W + 2 pad)) / (H W) times the raw data.
        """
        pad = augment.pad
        height, width = self.x.shape[2:]
        rows = _reflect(torch.arange(-pad, height + pad, device=self.device), height)
        cols = _reflect(torch.arange(-pad, width + pad, device=self.device), width)
        # The mirrored padded image reads the padded columns in reverse order.
        col_orders = [cols, cols.flip(0)] if augment.flip else [cols]
        row_padded = self.x.index_select(2, rows)
        sides = self.x.new_empty((len(col_orders), *row_padded.shape[:3], len(cols)))
        for side, order in zip(sides, col_orders, strict=True):  # written in place: no stacked copies
            torch.index_select(row_padded, 3, order, out=side)
        return sides.unfold(3, height, 1).unfold(4, width, 1)

    def _augmented(
        self,
        source: torch.Tensor,
        offsets: torch.Tensor | None,
        flips: torch.Tensor | None,
        start: int,
        stop: int,
    ) -> torch.Tensor:
        """Random-crop and random-flip ``x[source]`` (reflect-padded) with a single gather.

        A flipped crop at column offset dx of the padded image is the crop at
        2 * pad - dx of the mirrored padded image: output column j reads padded
        column W - 1 - j + dx, the same as flipping the unflipped crop.
        """
        assert self._windows is not None
        pad = self.augment.pad
        zeros = torch.zeros_like(source)
        dy = offsets[start:stop, 0] if offsets is not None else zeros
        dx = offsets[start:stop, 1] if offsets is not None else zeros
        side = zeros
        if flips is not None:
            side = flips[start:stop].long()
            dx = torch.where(flips[start:stop], 2 * pad - dx, dx)
        return self._windows[side, source, :, dy, dx]
