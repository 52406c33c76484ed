"""``train_size``: a class-balanced, seeded subset of the training split.

Expected counts are computed here from the rule (``N // k`` per class, one more
for the lowest ``N % k`` labels); samples are compared as (bytes, label)
multisets, so only what a user sees (which images, how many of each class)
is asserted.
"""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from ktg.data import load_dataset
from ktg.data.spec import DataSpec
from ktg.errors import KtgError
from ktg.graph import Node, Pretrain
from ktg.recipe import Recipe
from ktg.teachers import TeacherCache


def multiset(x: torch.Tensor, y: torch.Tensor) -> Counter[tuple[bytes, int]]:
    return Counter((img.numpy().tobytes(), int(label)) for img, label in zip(x, y, strict=True))


def expected_counts(n: int, k: int) -> list[int]:
    return [n // k + (1 if label < n % k else 0) for label in range(k)]


@pytest.mark.parametrize("n", [20, 253, 1000])
def test_balanced_per_class_and_drawn_from_the_training_split(n: int) -> None:
    full = load_dataset("synthetic")  # 100 training images per class
    d = load_dataset("synthetic", train_size=n)
    assert len(d.train_y) == n and d.val_x is None
    assert torch.bincount(d.train_y, minlength=10).tolist() == expected_counts(n, 10)
    chosen = multiset(d.train_x, d.train_y)
    assert chosen & multiset(full.train_x, full.train_y) == chosen  # a subset, no image twice
    assert torch.equal(d.test_x, full.test_x) and torch.equal(d.test_y, full.test_y)  # test set untouched
    assert d.mean == pytest.approx((d.train_x.double() / 255.0).mean(dim=(0, 2, 3)).tolist(), abs=1e-9)  # of the subset


def test_class_subset_first_then_train_size() -> None:
    classes = load_dataset("digits", classes=[7, 2, 5])
    d = load_dataset("digits", classes=[7, 2, 5], train_size=31)
    # 31 = 3 * 10 + 1: the first class of --classes (7, label 0) gets the extra image.
    assert torch.bincount(d.train_y, minlength=3).tolist() == [11, 10, 10]
    chosen = multiset(d.train_x, d.train_y)
    assert chosen & multiset(classes.train_x, classes.train_y) == chosen
    assert torch.equal(d.test_y, classes.test_y)


def test_deterministic_per_seed_different_across_seeds() -> None:
    a = load_dataset("synthetic", train_size=200, split_seed=4)
    b = load_dataset("synthetic", train_size=200, split_seed=4)
    c = load_dataset("synthetic", train_size=200, split_seed=5)
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.train_y, b.train_y)
    assert multiset(a.train_x, a.train_y) != multiset(c.train_x, c.train_y)
    assert torch.bincount(c.train_y).tolist() == [20] * 10


@pytest.mark.parametrize("seed", [0, 1])
def test_validation_is_carved_out_of_the_subset(seed: int) -> None:
    subset = load_dataset("synthetic", train_size=300, split_seed=seed)
    d = load_dataset("synthetic", train_size=300, val_fraction=0.2, split_seed=seed)
    assert d.val_x is not None and d.val_y is not None
    assert (len(d.train_y), len(d.val_y)) == (240, 60)
    assert multiset(d.train_x, d.train_y) + multiset(d.val_x, d.val_y) == multiset(subset.train_x, subset.train_y)


@pytest.mark.parametrize(
    ("train_size", "match"),
    [
        (1001, r"^train_size: got 1001; allowed: at most 1000, the size of the training split of synthetic$"),
        (19, r"^train_size: got 19; allowed: at least 2 images per class, i.e. 20 or more for 10 classes$"),
        (0, r"^train_size: got 0; allowed: a positive integer"),
        (-5, r"^train_size: got -5; allowed: a positive integer"),
        (True, r"^train_size: got True; allowed: a positive integer"),
        (100.0, r"^train_size: got 100.0; allowed: a positive integer"),
        ("100", r"^train_size: got '100'; allowed: a positive integer"),
    ],
)
def test_bad_train_size_is_one_line_naming_it(train_size: object, match: str) -> None:
    with pytest.raises(KtgError, match=match):
        load_dataset("synthetic", train_size=train_size)  # type: ignore[arg-type]


def test_too_large_with_classes_and_too_few_per_class() -> None:
    with pytest.raises(KtgError, match=r"^train_size: got 201; allowed: at most 200, .* synthetic with these classes$"):
        load_dataset("synthetic", classes=[3, 4], train_size=201)
    with pytest.raises(KtgError, match=r"^train_size: got 5; allowed: at least 2 images per class, i.e. 6 or more"):
        load_dataset("synthetic", classes=[0, 1, 2], train_size=5)


def test_a_class_too_small_for_a_balanced_subset() -> None:
    # digits' training classes are not equally large: the whole split is not balanced.
    full = load_dataset("digits")
    counts = torch.bincount(full.train_y, minlength=10)
    smallest = int(counts.argmin())
    with pytest.raises(KtgError, match=rf"^train_size: got {len(full.train_y)}; allowed: up to "
                                       rf"{10 * int(counts.min())} for a class-balanced subset of digits "
                                       rf"\(class {smallest} has only {int(counts.min())} training images\)$"):
        load_dataset("digits", train_size=len(full.train_y))
    assert len(load_dataset("digits", train_size=10 * int(counts.min())).train_y) == 10 * int(counts.min())
    # With --classes the message names the dataset's class id, not the new label.
    largest = int(counts.argmax())
    with pytest.raises(KtgError, match=rf"\(class {smallest} has only {int(counts.min())} training images\)$"):
        load_dataset("digits", classes=[largest, smallest], train_size=int(counts.max() + counts.min()))


# --- DataSpec and the teacher-cache key --------------------------------------------------


def test_data_spec_loads_the_subset_and_keys_it() -> None:
    spec = DataSpec("synthetic", train_size=50, split_seed=3)
    assert torch.equal(spec.load().train_x, load_dataset("synthetic", train_size=50, split_seed=3).train_x)
    # Without a subset the key is what it was before train_size existed (cached teachers stay valid)...
    assert DataSpec("synthetic").key() == {"name": "synthetic", "data_dir": None, "classes": None,
                                           "val_fraction": 0.0, "split_seed": 0, "image_size": None}
    # ...and every subset size is another key.
    keys = [DataSpec("synthetic", train_size=n).key() for n in (None, 50, 60)]
    assert keys[1]["train_size"] == 50 and len({str(sorted(k.items())) for k in keys}) == 3


def test_train_size_is_part_of_the_teacher_cache_key(tmp_path: object) -> None:
    node, recipe = Node(2, "resnet20"), Recipe(epochs=1)
    names = [TeacherCache(DataSpec("synthetic", train_size=n), tmp_path).key(node, recipe, 0)[1] for n in (None, 50, 60)]
    assert len(set(names)) == 3
    # A teacher pre-trained on the run's dataset sees the run's subset; on another dataset, all of it.
    run = DataSpec("synthetic", train_size=50)
    assert TeacherCache(run, tmp_path).key(node, recipe, 0)[0].train_size == 50
    other = Node(2, "resnet20", pretrain=Pretrain(dataset="digits"))
    assert TeacherCache(run, tmp_path).key(other, recipe, 0)[0] == DataSpec("digits")
