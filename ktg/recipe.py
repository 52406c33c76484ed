"""The optimisation recipe: the one home of its defaults.

The CLI's flags, the search spec and :func:`ktg.train` read their defaults from
:class:`Recipe`, so a default is written once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ktg.errors import KtgError

__all__ = ["Recipe"]


@dataclass(frozen=True)
class Recipe:
    """The optimisation recipe; defaults are the KTG paper's."""

    epochs: int = 200
    batch_size: int = 64
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    milestones: tuple[float, ...] = (0.3, 0.6, 0.9)  # fractions of the epochs
    gamma: float = 0.1
    # Linear lr warm-up over the first steps, never past the first milestone.
    # Not in the paper, whose CIFAR runs pass 500 steps within the first epoch;
    # on small data lr 0.1 from step 0 collapses mutually-learning nodes to the
    # uniform prediction (measured in the README's recipe section). 0 = the paper exactly.
    warmup_steps: int = 500

    def check(self) -> None:
        checks = [
            ("epochs", self.epochs >= 1, "an integer >= 1"),
            ("batch_size", self.batch_size >= 2, "an integer >= 2"),
            ("lr", self.lr > 0 and math.isfinite(self.lr), "a finite number > 0"),
            ("momentum", 0 <= self.momentum < 1, "a number in [0, 1)"),
            ("weight_decay", self.weight_decay >= 0, "a number >= 0"),
            ("milestones", all(0 < m < 1 for m in self.milestones), "fractions in (0, 1)"),
            ("gamma", 0 < self.gamma <= 1, "a number in (0, 1]"),
            ("warmup_steps", self.warmup_steps >= 0, "an integer >= 0 (0 = no warm-up)"),
        ]
        for name, ok, what in checks:
            if not ok:
                raise KtgError(f"{name}: got {getattr(self, name)!r}; allowed: {what}")

    def milestone_epochs(self) -> list[int]:
        return sorted({max(1, round(m * self.epochs)) for m in self.milestones})

    def warmup_end(self, steps_per_epoch: int) -> int:
        """The steps the warm-up lasts: ``warmup_steps``, never past the first milestone."""
        return min([self.warmup_steps, *(m * steps_per_epoch for m in self.milestone_epochs()[:1])])

    def warmup_epochs(self, steps_per_epoch: int) -> int:
        """The epochs until the warm-up is over (0 without one): the first epoch whose
        accuracy was reached at the scheduled lr, not on the way up to it."""
        return math.ceil(self.warmup_end(steps_per_epoch) / steps_per_epoch)

    def lr_factor(self, step: int, steps_per_epoch: int) -> float:
        """The lr of optimisation step ``step`` (0-based) as a multiple of ``lr``."""
        epoch = step // steps_per_epoch
        decay = self.gamma ** sum(epoch >= m for m in self.milestone_epochs())
        warmup = self.warmup_end(steps_per_epoch)
        return decay * min(1.0, (step + 1) / warmup) if warmup else decay
