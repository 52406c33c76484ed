"""Whether ASHA's rungs rank graphs as the full budget does: Spearman's rho per rung.

ASHA stops a trial at a rung for being in the bottom of that rung's accuracies.
That is sound only where an early accuracy predicts the final one; on a small
validation split the early ranking can be mostly noise. Per rung, the rank
correlation of the rung's accuracy with the final accuracy is taken over the
search trials that reached both (COMPLETE ones), and a low one is warned of.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from optuna.trial import FrozenTrial, TrialState

from search.study.contract import ranked

LOW_RHO = 0.5  # below this a rung's ranking is a weak guide to the final one
MIN_TRIALS = 3  # fewer points give no correlation worth printing


@dataclass(frozen=True)
class RungCorrelation:
    epoch: int
    rho: float | None  # None: too few trials, or a constant ranking
    trials: int

    @property
    def low(self) -> bool:
        return self.rho is not None and self.rho < LOW_RHO

    def to_json(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "rho": self.rho, "trials": self.trials}


def rung_correlations(trials: Sequence[FrozenTrial], rungs: Sequence[int]) -> list[RungCorrelation]:
    from scipy.stats import spearmanr

    done = [t for t in trials if t.state == TrialState.COMPLETE and ranked(t) and t.value is not None]
    out = []
    for epoch in rungs:
        reached = [t for t in done if epoch in t.intermediate_values]
        rho = None
        if len(reached) >= MIN_TRIALS:
            value = float(spearmanr([t.intermediate_values[epoch] for t in reached],
                                    [t.value for t in reached]).statistic)
            rho = value if math.isfinite(value) else None
        out.append(RungCorrelation(epoch, rho, len(reached)))
    return out


def describe(correlations: Sequence[RungCorrelation]) -> list[str]:
    """One line per rung, and a warning where the rung ranks on noise."""
    lines = []
    for c in correlations:
        rho = "-" if c.rho is None else f"{c.rho:+.2f}"
        line = f"rung at epoch {c.epoch}: Spearman rho with the final accuracy {rho} over {c.trials} trials"
        if c.low:
            line += " - low: ASHA is pruning on noise here"
        lines.append(line)
    return lines


def correlations_from_json(raw: Any) -> list[RungCorrelation]:
    if not isinstance(raw, list):
        return []
    return [RungCorrelation(int(r["epoch"]), r.get("rho"), int(r["trials"])) for r in raw if isinstance(r, dict)]
