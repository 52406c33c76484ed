"""How ASHA's rungs are chosen: after the lr warm-up, then every ``reduction_factor`` times as many epochs.

The driver asks for the schedule before the search starts (and prints it); the
first rung depends on how many steps an epoch has, so on the number of training
images, which are counted without importing torch into the driver (``search.data_facts``).
The validation images are counted too: they say how finely one accuracy can rank
graphs (``AshaSchedule.describe``).
"""

from __future__ import annotations

from dataclasses import dataclass
from math import sqrt

from search.spec import SearchSpec
from search.teachers import spec_facts


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


def asha_schedule(spec: SearchSpec) -> AshaSchedule:
    """ASHA's rungs for ``spec``. With no ``grace_epochs`` the first rung comes once the lr
    warm-up is over: before that, validation accuracies mostly measure how far up the lr
    has climbed, and they lean against every graph that starts slowly by design (a
    ``linear`` gate weighs almost nothing in the first epochs)."""
    facts = spec_facts(spec)
    train_images, val_images = facts.train_images, facts.val_images
    steps_per_epoch = max(1, train_images // spec.batch_size)
    warmup = spec.recipe().warmup_epochs(steps_per_epoch)
    grace = min(spec.epochs, spec.grace_epochs or max(1, warmup))
    rungs, epoch = [], grace
    while epoch < spec.epochs:
        rungs.append(epoch)
        epoch *= spec.reduction_factor
    return AshaSchedule(grace, tuple(rungs), warmup, val_images)
