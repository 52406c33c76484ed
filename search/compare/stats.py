"""Paired statistics for graphs trained with the same seeds.

Two graphs trained with seed S see the same initial weights (for a shared
node model) and the same batches, so their accuracies pair by seed: the
comparison is on the per-seed differences, whose spread is far smaller than
the spread of either graph alone.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

CONFIDENCE = 0.95


@dataclass(frozen=True)
class PairedDifference:
    """``b - a`` over paired seeds: the mean and its t-distribution confidence interval."""

    mean: float
    low: float
    high: float
    n: int

    @property
    def excludes_zero(self) -> bool:
        return self.n > 1 and (self.low > 0 or self.high < 0)


def paired_difference(a: Sequence[float], b: Sequence[float], confidence: float = CONFIDENCE) -> PairedDifference:
    """The mean of ``b[i] - a[i]`` with its two-sided ``confidence`` interval (t with n-1 dof).

    With one pair the interval is unbounded: one seed says nothing about noise.
    """
    if len(a) != len(b) or not a:
        raise ValueError(f"paired samples need equal, non-zero lengths (got {len(a)} and {len(b)})")
    mean, half = mean_interval([y - x for x, y in zip(a, b, strict=True)], confidence)
    return PairedDifference(mean, mean - half, mean + half, len(a))


def mean_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The mean of ``values`` and the half-width of its t confidence interval (inf for one value)."""
    from scipy.stats import t

    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, math.inf
    return mean, float(t.ppf(0.5 + confidence / 2, len(values) - 1)) * statistics.stdev(values) / math.sqrt(len(values))
