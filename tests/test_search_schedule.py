"""ASHA's rungs: the first one comes once the lr warm-up is over, unless the user sets it."""

from __future__ import annotations

import math

import pytest

from ktg.recipe import Recipe
from search.spec import SearchSpec
from search.tune.schedule import asha_schedule

DIGITS_TRAIN = 1150  # digits' 1437 training images less the 20 % validation split


def spec(**fields: object) -> SearchSpec:
    return SearchSpec.model_validate({"name": "s", "nodes": 2, "trials": 1, **fields})


def test_warmup_end_is_capped_at_the_first_milestone() -> None:
    recipe = Recipe(epochs=15, warmup_steps=500)  # first milestone: round(0.3 * 15) = 4 epochs
    assert recipe.warmup_end(12) == 48 and recipe.warmup_epochs(12) == 4
    assert Recipe(epochs=200, warmup_steps=500).warmup_epochs(390) == 2  # CIFAR: ceil(500 / 390)
    assert Recipe(epochs=10, warmup_steps=0).warmup_epochs(10) == 0


@pytest.mark.parametrize(("epochs", "warmup", "batch"), [(30, 500, 64), (20, 100, 32), (8, 500, 64), (30, 0, 64)])
def test_grace_is_the_end_of_the_warmup_on_digits(epochs: int, warmup: int, batch: int) -> None:
    s = spec(epochs=epochs, warmup_steps=warmup, batch_size=batch)
    steps = DIGITS_TRAIN // batch
    first_milestone = round(0.3 * epochs)
    expected = max(1, math.ceil(min(warmup, first_milestone * steps) / steps))
    schedule = asha_schedule(s)
    assert schedule.grace == expected
    assert schedule.rungs[0] == expected
    # Every rung is the grace period times a power of the reduction factor, below the budget.
    assert list(schedule.rungs) == [expected * 2**k for k in range(10) if expected * 2**k < epochs]
    # The step that ends the grace epoch is past the warm-up.
    assert schedule.grace * steps >= min(warmup, first_milestone * steps)


def test_grace_epochs_overrides_and_reduction_factor_spaces_the_rungs() -> None:
    schedule = asha_schedule(spec(epochs=40, grace_epochs=3, reduction_factor=3))
    assert schedule.grace == 3 and schedule.rungs == (3, 9, 27)
    assert "3, 9, 27" in schedule.describe()


def test_no_rung_when_the_warmup_lasts_the_whole_budget() -> None:
    schedule = asha_schedule(spec(epochs=2, grace_epochs=5))
    assert schedule.grace == 2 and schedule.rungs == ()
    assert "none" in schedule.describe()


def test_train_size_shortens_the_epochs_and_so_lengthens_the_grace() -> None:
    small = asha_schedule(spec(epochs=30, train_size=200))  # 160 training images: 2 steps an epoch
    assert small.warmup_epochs == round(0.3 * 30)  # capped at the first milestone (9 epochs)
    assert small.grace == 9


def test_bad_grace_epochs_is_a_field_error() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="grace_epochs"):
        spec(grace_epochs=0)
