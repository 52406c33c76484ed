"""How ASHA's rungs are chosen: after the lr warm-up, then every ``reduction_factor`` times as many epochs.

The driver asks for the schedule before the search starts (and prints it); the
first rung depends on how many steps an epoch has, so on the number of training
images, which are counted without importing torch into the driver.
"""

from __future__ import annotations

import multiprocessing
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import cache

from ktg.data.spec import DataSpec
from search.spec import SearchSpec


@dataclass(frozen=True)
class AshaSchedule:
    """Where ASHA may stop a trial: after ``grace`` epochs, then at every rung."""

    grace: int
    rungs: tuple[int, ...]  # epochs < the budget at which a trial can be stopped
    warmup_epochs: int  # how long the recipe's lr warm-up lasts, in epochs

    def describe(self) -> str:
        where = ", ".join(map(str, self.rungs)) or "none (every trial runs to the end)"
        return f"ASHA rungs at epochs {where} (lr warm-up over after epoch {self.warmup_epochs})"


def _count_train_images(data: DataSpec) -> int:
    return len(data.load().train_y)


@cache
def _train_images(data: DataSpec) -> int:
    """How many images a trial trains on, read in a child process: reading data imports
    torch, which the driver never loads (its memory: README, Performance). A bad
    dataset's KtgError comes back."""
    if "torch" in sys.modules:  # loaded already (a notebook, a test): a child would save nothing
        return _count_train_images(data)
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as child:
        return child.submit(_count_train_images, data).result()


def asha_schedule(spec: SearchSpec) -> AshaSchedule:
    """ASHA's rungs for ``spec``. With no ``grace_epochs`` the first rung comes once the lr
    warm-up is over: before that, validation accuracies mostly measure how far up the lr
    has climbed, and they lean against every graph that starts slowly by design (a
    ``linear`` gate weighs almost nothing in the first epochs)."""
    steps_per_epoch = max(1, _train_images(spec.data_spec()) // spec.batch_size)
    warmup = spec.recipe().warmup_epochs(steps_per_epoch)
    grace = min(spec.epochs, spec.grace_epochs or max(1, warmup))
    rungs, epoch = [], grace
    while epoch < spec.epochs:
        rungs.append(epoch)
        epoch *= spec.reduction_factor
    return AshaSchedule(grace, tuple(rungs), warmup)
