"""How ASHA's rungs are chosen: after the lr warm-up, then every ``reduction_factor`` times as many epochs.

The driver asks for the schedule before the search starts (and prints it); the
first rung depends on how many steps an epoch has, so on the number of training
images, which are counted without importing torch into the driver. The
validation images are counted too: they say how finely one accuracy can rank
graphs (``AshaSchedule.describe``).
"""

from __future__ import annotations

import multiprocessing
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import cache
from math import sqrt

from ktg.data.spec import DataSpec
from search.spec import SearchSpec


@dataclass(frozen=True)
class AshaSchedule:
    """Where ASHA may stop a trial: after ``grace`` epochs, then at every rung."""

    grace: int
    rungs: tuple[int, ...]  # epochs < the budget at which a trial can be stopped
    warmup_epochs: int  # how long the recipe's lr warm-up lasts, in epochs
    val_images: int = 0  # the validation split every trial is ranked on

    def describe(self) -> str:
        where = ", ".join(map(str, self.rungs)) or "none (every trial runs to the end)"
        line = f"ASHA rungs at epochs {where} (lr warm-up over after epoch {self.warmup_epochs})"
        if self.val_images:
            line += (f"; one validation accuracy on {self.val_images:,} images has a standard error of "
                     f"{100 * validation_standard_error(self.val_images):.1f} pp at 80%")
        return line


def validation_standard_error(images: int, accuracy: float = 0.8) -> float:
    """The binomial standard error of one accuracy measured on ``images`` images: sqrt(p(1-p)/n)."""
    return sqrt(accuracy * (1 - accuracy) / images)


def _count_images(data: DataSpec) -> tuple[int, int]:
    loaded = data.load()
    return len(loaded.train_y), 0 if loaded.val_y is None else len(loaded.val_y)


@cache
def _images(data: DataSpec) -> tuple[int, int]:
    """How many images a trial trains and validates on, read in a child process: reading
    data imports torch, which the driver never loads (its memory: README, Performance).
    A bad dataset's KtgError comes back."""
    if "torch" in sys.modules:  # loaded already (a notebook, a test): a child would save nothing
        return _count_images(data)
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as child:
        return child.submit(_count_images, data).result()


def asha_schedule(spec: SearchSpec) -> AshaSchedule:
    """ASHA's rungs for ``spec``. With no ``grace_epochs`` the first rung comes once the lr
    warm-up is over: before that, validation accuracies mostly measure how far up the lr
    has climbed, and they lean against every graph that starts slowly by design (a
    ``linear`` gate weighs almost nothing in the first epochs)."""
    train_images, val_images = _images(spec.data_spec())
    steps_per_epoch = max(1, train_images // spec.batch_size)
    warmup = spec.recipe().warmup_epochs(steps_per_epoch)
    grace = min(spec.epochs, spec.grace_epochs or max(1, warmup))
    rungs, epoch = [], grace
    while epoch < spec.epochs:
        rungs.append(epoch)
        epoch *= spec.reduction_factor
    return AshaSchedule(grace, tuple(rungs), warmup, val_images)
