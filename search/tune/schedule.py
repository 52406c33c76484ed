"""How ASHA's rungs are chosen: after the lr warm-up, then every ``reduction_factor`` times as many epochs.

The driver asks for the schedule before the search starts (and prints it); the
first rung depends on how many steps an epoch has, so on the number of training
images, which are counted without importing torch into the driver (``search.data_facts``).
"""

from __future__ import annotations

from dataclasses import dataclass

from search.spec import SearchSpec
from search.teachers import spec_facts


@dataclass(frozen=True)
class AshaSchedule:
    """Where ASHA may stop a trial: after ``grace`` epochs, then at every rung."""

    grace: int
    rungs: tuple[int, ...]  # epochs < the budget at which a trial can be stopped
    warmup_epochs: int  # how long the recipe's lr warm-up lasts, in epochs

    def describe(self) -> str:
        where = ", ".join(map(str, self.rungs)) or "none (every trial runs to the end)"
        return f"ASHA rungs at epochs {where} (lr warm-up over after epoch {self.warmup_epochs})"


def asha_schedule(spec: SearchSpec) -> AshaSchedule:
    """ASHA's rungs for ``spec``. With no ``grace_epochs`` the first rung comes once the lr
    warm-up is over: before that, validation accuracies mostly measure how far up the lr
    has climbed, and they lean against every graph that starts slowly by design (a
    ``linear`` gate weighs almost nothing in the first epochs)."""
    steps_per_epoch = max(1, spec_facts(spec).train_images // spec.batch_size)
    warmup = spec.recipe().warmup_epochs(steps_per_epoch)
    grace = min(spec.epochs, spec.grace_epochs or max(1, warmup))
    rungs, epoch = [], grace
    while epoch < spec.epochs:
        rungs.append(epoch)
        epoch *= spec.reduction_factor
    return AshaSchedule(grace, tuple(rungs), warmup)
