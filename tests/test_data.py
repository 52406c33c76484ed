"""Tests of ktg.data against independently computed values.

Every dataset on disk is written by the test itself (tiny, in tmp_path), so
nothing is downloaded; expected values come from numpy / the written files,
not from the code under test.
"""

from __future__ import annotations

import pickle
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ktg.data import Augment, DeviceBatches, ImageData, dataset_names, load_dataset, parse_classes
from ktg.errors import KtgError

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def multiset(x: torch.Tensor, y: torch.Tensor) -> Counter[tuple[bytes, int]]:
    """(image bytes, label) pairs with multiplicity: compares sets of samples regardless of order."""
    return Counter((img.numpy().tobytes(), int(label)) for img, label in zip(x, y, strict=True))


# --- registry and argument errors ---------------------------------------------


def test_dataset_names() -> None:
    assert dataset_names() == [
        "cifar10", "cifar100", "tinyimagenet", "imagefolder", "digits", "synthetic", "fashionmnist", "mnist", "kmnist"
    ]


def test_unknown_dataset_names_field_and_choices() -> None:
    with pytest.raises(KtgError, match=r"^dataset: got 'emnist'; allowed: cifar10, .*synthetic, fashionmnist, mnist, kmnist$"):
        load_dataset("emnist")


@pytest.mark.parametrize("text", ["", "a", "5-3", "1,,2", "-1", "1-", "1.5", "0-2000000"])
def test_parse_classes_rejects_bad_text(text: str) -> None:
    with pytest.raises(KtgError, match=r"^classes: "):
        parse_classes(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("0-4", [0, 1, 2, 3, 4]), ("1,3,5", [1, 3, 5]), ("0-4,10", [0, 1, 2, 3, 4, 10]), (" 5, 1-2 ,2", [1, 2, 5])],
)
def test_parse_classes(text: str, expected: list[int]) -> None:
    assert parse_classes(text) == expected


@pytest.mark.parametrize("fraction", [1.5, 1.0, -0.1, float("nan"), "0.2"])
def test_bad_val_fraction(fraction: object) -> None:
    with pytest.raises(KtgError, match=r"^val_fraction: "):
        load_dataset("synthetic", val_fraction=fraction)  # type: ignore[arg-type]


@pytest.mark.parametrize("classes", [[10], [-1], [1, 1], []])
def test_bad_classes_names_range(classes: list[int]) -> None:
    with pytest.raises(KtgError, match=r"^classes: .*0\.\.9"):
        load_dataset("digits", classes=classes)


def test_fixed_size_dataset_rejects_resize() -> None:
    with pytest.raises(KtgError, match=r"^image_size: "):
        load_dataset("digits", image_size=32)


# --- digits ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits_reference() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = np.rint(bunch.images * 255.0 / 16.0).astype(np.uint8)[:, None]
    return torch.from_numpy(x), torch.from_numpy(bunch.target.astype(np.int64))


def test_digits(digits_reference: tuple[torch.Tensor, torch.Tensor]) -> None:
    ref_x, ref_y = digits_reference
    d = load_dataset("digits")
    assert isinstance(d, ImageData)
    assert d.train_x.shape[1:] == (1, 8, 8) and d.test_x.shape[1:] == (1, 8, 8)
    assert d.train_x.dtype == torch.uint8 and d.train_y.dtype == torch.int64
    assert len(d.train_y) + len(d.test_y) == 1797
    assert len(d.test_y) == round(0.2 * 1797)
    assert d.val_x is None and d.val_y is None
    assert d.num_classes == 10 and d.classes is None
    assert d.in_channels == 1 and d.image_size == 8
    assert d.augment == Augment(pad=1, flip=False)
    assert set(d.train_y.tolist()) == set(range(10))
    # train + test is exactly the original data set.
    all_x = torch.cat([d.train_x, d.test_x])
    all_y = torch.cat([d.train_y, d.test_y])
    assert multiset(all_x, all_y) == multiset(ref_x, ref_y)
    # mean/std are those of train_x / 255.
    pixels = d.train_x.double().numpy() / 255.0
    assert d.mean == pytest.approx([pixels.mean()], abs=1e-9)
    assert d.std == pytest.approx([pixels.std()], abs=1e-9)


def test_digits_test_split_is_fixed_and_val_split_is_seeded() -> None:
    base = load_dataset("digits")
    a = load_dataset("digits", val_fraction=0.2, split_seed=0)
    b = load_dataset("digits", val_fraction=0.2, split_seed=0)
    c = load_dataset("digits", val_fraction=0.2, split_seed=1)
    for d in (a, c):  # the test split does not depend on split_seed
        assert torch.equal(d.test_x, base.test_x) and torch.equal(d.test_y, base.test_y)
    assert a.val_x is not None and a.val_y is not None and c.val_x is not None
    n = len(base.train_y)
    assert len(a.val_y) == round(0.2 * n) and len(a.train_y) == n - round(0.2 * n)
    assert torch.equal(a.val_x, b.val_x) and torch.equal(a.train_x, b.train_x)  # same seed, same split
    assert not torch.equal(a.val_x, c.val_x)  # another seed, another split
    # train and val partition the original training set: disjoint, union = all.
    train = multiset(a.train_x, a.train_y)
    val = multiset(a.val_x, a.val_y)
    assert train + val == multiset(base.train_x, base.train_y)
    # Stats come from the training part only.
    assert a.mean == pytest.approx([a.train_x.double().mean().item() / 255.0], abs=1e-9)


def test_digits_class_subset(digits_reference: tuple[torch.Tensor, torch.Tensor]) -> None:
    base = load_dataset("digits")
    d = load_dataset("digits", classes=[7, 2])
    assert d.num_classes == 2 and d.classes == [7, 2]
    for x, y, bx, by in ((d.train_x, d.train_y, base.train_x, base.train_y), (d.test_x, d.test_y, base.test_x, base.test_y)):
        keep = (by == 7) | (by == 2)
        assert torch.equal(x, bx[keep])
        assert torch.equal(y, torch.where(by[keep] == 7, 0, 1))  # new label = position in `classes`


# --- synthetic ------------------------------------------------------------------


def test_synthetic_is_deterministic_balanced_and_learnable() -> None:
    a = load_dataset("synthetic")
    b = load_dataset("synthetic", data_dir="/nonexistent")  # data_dir is ignored
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.test_y, b.test_y)
    assert a.train_x.shape == (1000, 3, 16, 16) and a.test_x.shape == (200, 3, 16, 16)
    assert torch.bincount(a.train_y).tolist() == [100] * 10
    assert a.augment == Augment(pad=2, flip=True)
    # A nearest-class-mean classifier already separates the classes well.
    train = a.train_x.flatten(1).double()
    means = torch.stack([train[a.train_y == k].mean(0) for k in range(10)])
    pred = torch.cdist(a.test_x.flatten(1).double(), means).argmin(1)
    assert (pred == a.test_y).double().mean() > 0.9


# --- CIFAR (tiny files in torchvision's layout) ----------------------------------


def write_pickle(path: Path, obj: object) -> None:
    with path.open("wb") as f:
        pickle.dump(obj, f)


@pytest.fixture()
def tiny_cifar(tmp_path: Path) -> dict[str, dict[str, np.ndarray]]:
    """20 images per batch file; cifar10 with bytes keys, cifar100 with str keys
    (the official files load with str keys under latin1 decoding)."""
    rng = np.random.default_rng(0)
    ref: dict[str, dict[str, np.ndarray]] = {}
    c10 = tmp_path / "cifar-10-batches-py"
    c10.mkdir()
    parts = []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (20, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, 20)
        write_pickle(c10 / name, {b"batch_label": b"x", b"data": data, b"labels": labels.tolist()})
        parts.append((data, labels))
    write_pickle(c10 / "batches.meta", {b"label_names": [b"c"] * 10})
    ref["cifar10"] = {
        "train_x": np.concatenate([p[0] for p in parts[:5]]),
        "train_y": np.concatenate([p[1] for p in parts[:5]]),
        "test_x": parts[5][0],
        "test_y": parts[5][1],
    }
    c100 = tmp_path / "cifar-100-python"
    c100.mkdir()
    entry: dict[str, np.ndarray] = {}
    for name, n in (("train", 100), ("test", 20)):
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = rng.integers(0, 100, n)
        write_pickle(c100 / name, {"data": data, "fine_labels": labels.tolist(), "coarse_labels": (labels // 5).tolist()})
        entry[f"{name}_x"], entry[f"{name}_y"] = data, labels
    write_pickle(c100 / "meta", {"fine_label_names": ["c"] * 100})
    ref["cifar100"] = entry
    return ref


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_reads_back_exactly(name: str, tiny_cifar: dict[str, dict[str, np.ndarray]], tmp_path: Path) -> None:
    ref = tiny_cifar[name]
    d = load_dataset(name, data_dir=tmp_path)
    assert d.num_classes == (10 if name == "cifar10" else 100)
    assert d.augment == Augment(pad=4, flip=True)
    for split in ("train", "test"):
        x, y = getattr(d, f"{split}_x"), getattr(d, f"{split}_y")
        assert x.dtype == torch.uint8 and x.shape[1:] == (3, 32, 32)
        # Row layout of the files: 1024 red, then 1024 green, then 1024 blue values.
        np.testing.assert_array_equal(x.numpy(), ref[f"{split}_x"].reshape(-1, 3, 32, 32))
        np.testing.assert_array_equal(y.numpy(), ref[f"{split}_y"])
        assert x[0, 1, 2, 3].item() == ref[f"{split}_x"][0, 1024 + 2 * 32 + 3]
    expected_mean = (ref["train_x"].reshape(-1, 3, 1024) / 255.0).mean(axis=(0, 2))
    assert d.mean == pytest.approx(expected_mean.tolist(), abs=1e-9)
    # data_dir may also be the batch folder itself.
    folder = "cifar-10-batches-py" if name == "cifar10" else "cifar-100-python"
    assert torch.equal(load_dataset(name, data_dir=tmp_path / folder).test_x, d.test_x)


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_val_split_and_classes(name: str, tiny_cifar: dict[str, dict[str, np.ndarray]], tmp_path: Path) -> None:
    ref = tiny_cifar[name]
    n = len(ref["train_y"])
    d = load_dataset(name, data_dir=tmp_path, val_fraction=0.2, split_seed=3)
    assert d.val_x is not None and d.val_y is not None
    assert (len(d.train_y), len(d.val_y)) == (n - round(0.2 * n), round(0.2 * n))

    d = load_dataset(name, data_dir=tmp_path, classes=[1, 3])
    assert d.num_classes == 2 and d.classes == [1, 3]
    for split in ("train", "test"):
        keep = np.isin(ref[f"{split}_y"], [1, 3])
        np.testing.assert_array_equal(getattr(d, f"{split}_x").numpy(), ref[f"{split}_x"][keep].reshape(-1, 3, 32, 32))
        np.testing.assert_array_equal(getattr(d, f"{split}_y").numpy(), (ref[f"{split}_y"][keep] == 3).astype(np.int64))


def test_cifar_missing_and_incomplete(tmp_path: Path) -> None:
    with pytest.raises(KtgError) as err:
        load_dataset("cifar10", data_dir=tmp_path)
    message = str(err.value)
    assert str(tmp_path / "cifar-10-batches-py") in message and "data_batch_1" in message
    assert "never download" in message
    with pytest.raises(KtgError, match="--data-dir"):
        load_dataset("cifar100")
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    write_pickle(folder / "data_batch_1", {b"data": np.zeros((1, 3072), np.uint8), b"labels": [0]})
    with pytest.raises(KtgError, match=r"missing data_batch_2, .*test_batch"):
        load_dataset("cifar10", data_dir=tmp_path)
    with pytest.raises(KtgError, match=r"cifar100: no dataset at .*cifar-100-python.*train and test"):
        load_dataset("cifar100", data_dir=tmp_path)


def test_cifar_out_of_range_classes(tiny_cifar: dict[str, dict[str, np.ndarray]], tmp_path: Path) -> None:
    with pytest.raises(KtgError, match=r"^classes: .*0\.\.9 for cifar10"):
        load_dataset("cifar10", data_dir=tmp_path, classes=[3, 10])


# --- image folders ----------------------------------------------------------------

COLORS = {"cat": (255, 0, 0), "dog": (0, 128, 255), "emu": (10, 200, 30)}


def solid(path: Path, color: tuple[int, int, int], size: tuple[int, int], mode: str = "RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.new("RGB", size, color)
    (img.convert(mode) if mode != "RGB" else img).save(path)


def test_imagefolder(tmp_path: Path) -> None:
    # Solid colours survive resizing exactly, so pixel values can be checked.
    for split, count in (("train", 3), ("val", 2)):
        for cls in ("dog", "cat"):
            for i in range(count):
                solid(tmp_path / split / cls / f"{i}.png", COLORS[cls], (10 + i, 12))
    solid(tmp_path / "train" / "cat" / "gray.png", (77, 77, 77), (5, 5), mode="L")
    (tmp_path / "train" / "cat" / "notes.txt").write_text("not an image")
    d = load_dataset("imagefolder", data_dir=tmp_path, image_size=8)
    assert d.train_x.shape == (7, 3, 8, 8) and d.test_x.shape == (4, 3, 8, 8)
    assert d.num_classes == 2 and d.augment == Augment(pad=4, flip=True)
    # Classes sorted by folder name: cat = 0, dog = 1.
    assert d.train_y.tolist() == [0, 0, 0, 0, 1, 1, 1] and d.test_y.tolist() == [0, 0, 1, 1]
    for x, y in ((d.train_x, d.train_y), (d.test_x, d.test_y)):
        for img, label in zip(x, y, strict=True):
            colour = COLORS["cat" if label == 0 else "dog"]
            if img[0, 0, 0] == 77:  # the grayscale image became RGB
                colour = (77, 77, 77)
            assert torch.equal(img, torch.tensor(colour, dtype=torch.uint8).view(3, 1, 1).expand(3, 8, 8))
    assert load_dataset("imagefolder", data_dir=tmp_path).image_size == 32  # default size


def test_imagefolder_missing(tmp_path: Path) -> None:
    with pytest.raises(KtgError, match=r"imagefolder: no dataset at .*train/<class>"):
        load_dataset("imagefolder", data_dir=tmp_path)
    solid(tmp_path / "train" / "a" / "0.png", COLORS["cat"], (4, 4))
    solid(tmp_path / "test" / "b" / "0.png", COLORS["cat"], (4, 4))
    with pytest.raises(KtgError, match=r"classes missing from .*train: b"):
        load_dataset("imagefolder", data_dir=tmp_path)


def write_tiny_imagenet(root: Path) -> dict[str, tuple[int, int, int]]:
    wnids = {"n02": COLORS["dog"], "n01": COLORS["cat"], "n03": COLORS["emu"]}
    root.mkdir(parents=True)
    (root / "wnids.txt").write_text("\n".join(wnids) + "\n")  # deliberately not sorted
    for wnid, colour in wnids.items():
        for i in range(2):
            solid(root / "train" / wnid / "images" / f"{wnid}_{i}.JPEG", colour, (64, 64))
    lines = []
    for i, wnid in enumerate(["n03", "n01", "n02", "n01"]):
        solid(root / "val" / "images" / f"val_{i}.JPEG", wnids[wnid], (64, 64))
        lines.append(f"val_{i}.JPEG\t{wnid}\t0\t0\t63\t63")
    (root / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return wnids


def test_tinyimagenet(tmp_path: Path) -> None:
    wnids = write_tiny_imagenet(tmp_path / "tiny-imagenet-200")
    d = load_dataset("tinyimagenet", data_dir=tmp_path)
    assert d.num_classes == 3 and d.train_x.shape == (6, 3, 64, 64) and d.test_x.shape == (4, 3, 64, 64)
    assert d.train_y.tolist() == [0, 0, 1, 1, 2, 2]  # sorted wnids: n01, n02, n03
    assert d.test_y.tolist() == [2, 0, 1, 0]  # val set = test set, labels from the annotations
    by_label = [wnids[w] for w in sorted(wnids)]
    for x, y in ((d.train_x, d.train_y), (d.test_x, d.test_y)):
        for img, label in zip(x, y, strict=True):
            expected = torch.tensor(by_label[int(label)]).view(3, 1, 1).float()
            assert (img.float() - expected).abs().max() <= 4  # JPEG is lossy
    # data_dir may also be the tiny-imagenet-200 folder itself.
    assert torch.equal(load_dataset("tinyimagenet", data_dir=tmp_path / "tiny-imagenet-200").test_y, d.test_y)
    assert load_dataset("tinyimagenet", data_dir=tmp_path, classes=[2]).train_y.tolist() == [0, 0]


def test_tinyimagenet_missing(tmp_path: Path) -> None:
    with pytest.raises(KtgError, match=r"tinyimagenet: no dataset at .*tiny-imagenet-200 .*wnids.txt.*never download"):
        load_dataset("tinyimagenet", data_dir=tmp_path)


# --- DeviceBatches ------------------------------------------------------------------


def id_images(n: int, size: int = 8) -> torch.Tensor:
    """Constant images whose channels 0 and 1 encode the sample id (survives crop and flip)."""
    ids = torch.arange(n)
    x = torch.zeros(n, 3, size, size, dtype=torch.uint8)
    x[:, 0] = (ids // 256).to(torch.uint8).view(n, 1, 1)
    x[:, 1] = (ids % 256).to(torch.uint8).view(n, 1, 1)
    return x


def decode_ids(batch: torch.Tensor) -> torch.Tensor:
    """Inverse of id_images under mean 0, std 1 normalisation."""
    raw = (batch.float().cpu() * 255).round().long()
    return raw[:, 0, 0, 0] * 256 + raw[:, 1, 0, 0]


IDENTITY = {"mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}


def all_batches(db: DeviceBatches, epoch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(x.cpu(), y.cpu()) for x, y in db.epoch(epoch)]


@pytest.mark.parametrize("device", DEVICES)
def test_batches_deterministic_per_seed_and_epoch(device: str) -> None:
    x = torch.randint(0, 256, (300, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    y = torch.arange(300) % 7

    def make(seed: int) -> DeviceBatches:
        return DeviceBatches(x, y, batch_size=32, augment=Augment(pad=2, flip=True), seed=seed, device=device, **IDENTITY)

    a, b = make(5), make(5)
    e0 = all_batches(a, 0)
    torch.manual_seed(123)  # global RNG state must not matter
    assert all(torch.equal(p, q) and torch.equal(s, t) for (p, s), (q, t) in zip(e0, all_batches(b, 0), strict=True))
    assert all_batches(a, 1)[0][1].tolist() != e0[0][1].tolist()  # another epoch, another order
    assert not torch.equal(all_batches(make(6), 0)[0][0], e0[0][0])  # another seed too
    # Chunking is an implementation detail: tiny chunks give the same batches.
    b.chunk_elements = 1
    assert all(torch.equal(p, q) for (p, _), (q, _) in zip(e0, all_batches(b, 0), strict=True))
    assert len(a) == 300 // 32 and all(bx.shape == (32, 3, 8, 8) for bx, _ in e0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("augment", [None, Augment(pad=3, flip=True)])
def test_epoch_is_a_permutation(device: str, augment: Augment | None) -> None:
    n = 1000
    x, y = id_images(n), torch.arange(n) % 10
    db = DeviceBatches(x, y, batch_size=64, augment=augment, seed=1, device=device, drop_last=False, **IDENTITY)
    batches = all_batches(db, 3)
    assert len(db) == len(batches) == 16 and len(batches[-1][1]) == n - 15 * 64
    ids = torch.cat([decode_ids(bx) for bx, _ in batches])
    labels = torch.cat([by for _, by in batches])
    assert sorted(ids.tolist()) == list(range(n))  # every sample exactly once
    assert not torch.equal(ids, torch.arange(n))  # and shuffled
    assert torch.equal(labels, y[ids])  # labels travel with their images
    # drop_last: only full batches, still distinct samples.
    db = DeviceBatches(x, y, batch_size=64, augment=augment, seed=1, device=device, drop_last=True, **IDENTITY)
    ids = torch.cat([decode_ids(bx) for bx, _ in all_batches(db, 0)])
    assert len(db) == 15 and len(ids) == 15 * 64 and len(set(ids.tolist())) == len(ids)


@pytest.mark.parametrize("device", DEVICES)
def test_crop_and_flip_match_reflect_padded_crops(device: str) -> None:
    pad, size, n = 2, 8, 96
    x = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    db = DeviceBatches(x, torch.zeros(n, dtype=torch.int64), batch_size=32, augment=Augment(pad=pad, flip=True),
                       seed=0, device=device, shuffle=False, drop_last=False, **IDENTITY)
    out = torch.cat([(bx * 255).round().to(torch.uint8) for bx, _ in all_batches(db, 0)])
    # numpy's "reflect" is torch's reflect padding (edge pixel not repeated).
    padded = np.pad(x.numpy(), ((0, 0), (0, 0), (pad, pad), (pad, pad)), mode="reflect")
    used = set()
    for i in range(n):
        matches = [
            (dy, dx, flipped)
            for dy in range(2 * pad + 1)
            for dx in range(2 * pad + 1)
            for flipped in (False, True)
            if np.array_equal(
                (lambda c: c[..., ::-1] if flipped else c)(padded[i, :, dy : dy + size, dx : dx + size]),
                out[i].numpy(),
            )
        ]
        assert len(matches) == 1, f"sample {i}: {matches}"
        used.add(matches[0])
    assert len(used) > 20  # offsets and flips really vary (50 combinations possible)
    assert any(m[0] in (0, 2 * pad) for m in used) and any(m[1] in (0, 2 * pad) for m in used)


@pytest.mark.parametrize("device", DEVICES)
def test_flip_rate_is_about_half(device: str) -> None:
    n = 8192
    x = torch.randint(0, 256, (n, 1, 4, 4), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    db = DeviceBatches(x, torch.zeros(n, dtype=torch.int64), batch_size=n, mean=(0.0,), std=(1.0,),
                       augment=Augment(pad=0, flip=True), seed=4, device=device, shuffle=False)
    (bx, _), = all_batches(db, 0)
    out = (bx * 255).round().to(torch.uint8)
    flipped = (out == x.flip(-1)).flatten(1).all(1)
    same = (out == x).flatten(1).all(1)
    assert bool((flipped | same).all())
    assert 0.47 < flipped.double().mean().item() < 0.53


@pytest.mark.parametrize("device", DEVICES)
def test_normalisation_dtype_and_layout(device: str) -> None:
    x = torch.randint(0, 256, (50, 3, 6, 6), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    y = torch.randint(0, 10, (50,), generator=torch.Generator().manual_seed(4))
    mean, std = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)
    expected = (x.double() / 255 - torch.tensor(mean, dtype=torch.float64).view(1, 3, 1, 1)) / torch.tensor(
        std, dtype=torch.float64
    ).view(1, 3, 1, 1)
    db = DeviceBatches(x, y, batch_size=16, mean=mean, std=std, augment=None, seed=0, device=device,
                       shuffle=False, drop_last=False)
    batches = list(db.epoch(0))
    assert all(bx.device.type == device and by.device.type == device for bx, by in batches)
    got = torch.cat([bx.cpu() for bx, _ in batches])
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), expected, atol=1e-5, rtol=0)
    assert torch.equal(torch.cat([by.cpu() for _, by in batches]), y)
    db = DeviceBatches(x, y, batch_size=16, mean=mean, std=std, augment=None, seed=0, device=device,
                       shuffle=False, drop_last=False, channels_last=True, dtype=torch.bfloat16)
    bx, _ = next(iter(db.epoch(0)))
    assert bx.dtype == torch.bfloat16 and bx.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(bx.cpu().double(), expected[:16], atol=0.02, rtol=0.01)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_no_host_sync_in_epoch() -> None:
    x = torch.randint(0, 256, (512, 3, 8, 8), dtype=torch.uint8)
    db = DeviceBatches(x, torch.arange(512) % 10, batch_size=64, augment=Augment(pad=2, flip=True), seed=0,
                       device="cuda", **IDENTITY)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in db.epoch(0):
            pass
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_batches_bad_inputs() -> None:
    x = torch.zeros(10, 3, 4, 4, dtype=torch.uint8)
    y = torch.zeros(10, dtype=torch.int64)
    with pytest.raises(KtgError, match=r"^augment.pad: got 4; allowed: 0..3"):
        DeviceBatches(x, y, batch_size=2, augment=Augment(pad=4), seed=0, **IDENTITY)
    with pytest.raises(KtgError, match=r"^batch_size: "):
        DeviceBatches(x, y, batch_size=0, augment=None, seed=0, **IDENTITY)
    with pytest.raises(KtgError, match=r"^images: "):
        DeviceBatches(x.float(), y, batch_size=2, augment=None, seed=0, **IDENTITY)
    with pytest.raises(KtgError, match=r"^mean/std: "):
        DeviceBatches(x, y, batch_size=2, augment=None, seed=0, mean=(0.0,), std=(1.0,))
