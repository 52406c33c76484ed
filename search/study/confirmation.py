"""The confirmation stage's rules: which graphs it re-trains on which seeds, and what they earn.

After the budget, the top ``confirm_top`` full-budget graphs and independent
(training node 1 alone) are re-trained on ``confirm_seeds`` more seeds: the
study's seed + 1, + 2, ... With the same seed two graphs start from the same
weights and see the same batches (DESIGN.md, determinism contract), so the
accuracies pair by seed exactly as in ``ktg compare``.

- The winner is the best mean over all of a graph's seeds (the study's included).
- Its margin is the paired difference against independent on the confirmation
  seeds alone: the study's seed is where the search picked it for being high,
  so it would lean the difference its way.

Everything here is read from the study's trials (what ``search.tune.confirm``
wrote), so a crashed stage is resumed from the same plan and a finished seed is
never trained again. The summary is stored as the study's user attribute
``confirmation`` for ``ktg export``, the API and the study page.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from optuna.trial import FrozenTrial, TrialState

from ktg.graph import TARGET_NODE, Graph
from search.baselines import independent
from search.compare.stats import CONFIDENCE, PairedDifference, paired_difference
from search.spec import SearchSpec
from search.study.contract import TrialAttr, ranked

INDEPENDENT = "independent"


def graph_key(graph: dict[str, Any]) -> str:
    """Graphs that train node 1 alike (the same key) are one graph here."""
    return Graph.from_dict(graph).training_key(TARGET_NODE)


def confirmation_seeds(spec: SearchSpec) -> list[int]:
    return [spec.seed + k for k in range(1, spec.confirm_seeds + 1)]


@dataclass
class Candidate:
    """A graph the stage confirms: its search trial (None: independent, which the search did not train)."""

    key: str
    graph: dict[str, Any]
    trial: int | None
    value: float | None  # its accuracy on the study's seed, in the search
    baseline: str | None

    def seeds(self, spec: SearchSpec) -> list[int]:
        """The seeds it trains on in this stage (independent with no search trial: the study's too)."""
        return ([spec.seed] if self.trial is None else []) + confirmation_seeds(spec)


def candidates(trials: Sequence[FrozenTrial], spec: SearchSpec) -> list[Candidate]:
    """The top ``confirm_top`` distinct full-budget graphs, best first, then independent if not among them."""
    if spec.confirm_top == 0:
        return []
    by_key: dict[str, Candidate] = {}
    done = [t for t in trials if t.state == TrialState.COMPLETE and ranked(t) and t.value is not None
            and TrialAttr.GRAPH in t.user_attrs]
    for t in sorted(done, key=lambda t: (-t.value, t.number)):  # type: ignore[operator]
        key = graph_key(t.user_attrs[TrialAttr.GRAPH])
        # A graph drawn twice trains to the same numbers: its first trial stands for it.
        by_key.setdefault(key, Candidate(key, t.user_attrs[TrialAttr.GRAPH], t.number, t.value,
                                         t.user_attrs.get(TrialAttr.BASELINE)))
    top = list(by_key.values())[:spec.confirm_top]
    alone = independent(spec).graph
    key = graph_key(alone)
    if all(c.key != key for c in top):
        top.append(by_key.get(key) or Candidate(key, alone, None, None, INDEPENDENT))
    for c in top:
        if c.key == key:
            c.baseline = INDEPENDENT  # a drawn graph that trains node 1 alone is independent, whoever drew it
    return top


def confirmation_trials(trials: Iterable[FrozenTrial]) -> list[FrozenTrial]:
    return [t for t in trials if TrialAttr.CONFIRM_OF in t.user_attrs and TrialAttr.GRAPH in t.user_attrs]


def finished_seeds(trials: Iterable[FrozenTrial]) -> dict[tuple[str, int], FrozenTrial]:
    """(graph key, seed) -> its COMPLETE confirmation trial: never trained again."""
    return {(graph_key(t.user_attrs[TrialAttr.GRAPH]), int(t.user_attrs[TrialAttr.SEED])): t
            for t in sorted(confirmation_trials(trials), key=lambda t: -t.number)
            if t.state == TrialState.COMPLETE and t.value is not None}


@dataclass(frozen=True)
class Job:
    """One confirmation run: a candidate's graph on one seed."""

    candidate: Candidate
    seed: int


def pending_jobs(trials: Sequence[FrozenTrial], spec: SearchSpec) -> list[Job]:
    """What the stage still has to train: every (candidate, seed) without a COMPLETE confirmation trial."""
    done = finished_seeds(trials)
    return [Job(c, seed) for c in candidates(trials, spec) for seed in c.seeds(spec) if (c.key, seed) not in done]


# -- the summary ------------------------------------------------------------------------

@dataclass
class Confirmed:
    """A confirmed graph: its accuracy per seed, its mean, and its margin over independent."""

    trial: int  # the trial that stands for it (its search trial, else its run on the study's seed)
    baseline: str | None
    per_seed: dict[int, float]
    confirm_seeds: list[int]
    vs_independent: PairedDifference | None = None

    @property
    def mean(self) -> float:
        return statistics.fmean(self.per_seed.values())

    @property
    def confirm_mean(self) -> float | None:
        values = [self.per_seed[s] for s in self.confirm_seeds if s in self.per_seed]
        return statistics.fmean(values) if values else None

    @property
    def verdict(self) -> str:
        """The margin in words; no winner is claimed when the interval includes 0."""
        if self.baseline == INDEPENDENT:
            return "training alone (independent)"
        d = self.vs_independent
        if d is None:
            return "no seed paired with independent"
        if not d.excludes_zero:
            return f"not distinguishable from training alone on {_seeds(d.n)}"
        side = "above" if d.mean > 0 else "below"
        return (f"{side} training alone by {100 * d.mean:+.2f} pp "
                f"({int(100 * CONFIDENCE)}% CI [{100 * d.low:+.2f}, {100 * d.high:+.2f}]) on {_seeds(d.n)}")

    def to_json(self) -> dict[str, Any]:
        d = self.vs_independent
        return {"trial": self.trial, "baseline": self.baseline,
                "per_seed": {str(s): a for s, a in sorted(self.per_seed.items())},
                "val_acc_mean": self.mean, "confirm_seeds": self.confirm_seeds,
                "confirm_val_acc_mean": self.confirm_mean,
                "vs_independent": None if d is None else {
                    "mean": d.mean, "ci": [_finite(d.low), _finite(d.high)], "confidence": CONFIDENCE,
                    "seeds": d.n, "excludes_zero": d.excludes_zero},
                "verdict": self.verdict}


def _seeds(n: int) -> str:
    return f"{n} seed{'' if n == 1 else 's'}"


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None  # JSON has no infinity


@dataclass
class Confirmation:
    """The stage's outcome: the confirmed graphs, the winner (best mean) first."""

    seeds: list[int]
    graphs: list[Confirmed] = field(default_factory=list)

    @property
    def winner(self) -> Confirmed | None:
        return self.graphs[0] if self.graphs else None

    def of_trial(self, number: int) -> Confirmed | None:
        return next((g for g in self.graphs if g.trial == number), None)

    def to_json(self) -> dict[str, Any]:
        return {"seeds": self.seeds, "winner": self.winner.trial if self.winner else None,
                "graphs": [g.to_json() for g in self.graphs]}


def summarise(trials: Sequence[FrozenTrial], spec: SearchSpec) -> Confirmation:
    """Rank the candidates by their mean over every seed they have; pair each with independent."""
    done = finished_seeds(trials)
    seeds = confirmation_seeds(spec)
    rows: list[Confirmed] = []
    for c in candidates(trials, spec):
        per_seed = {s: float(done[c.key, s].value) for s in c.seeds(spec) if (c.key, s) in done}  # type: ignore[arg-type]
        if c.trial is not None and c.value is not None:
            per_seed[spec.seed] = c.value
        if not per_seed:
            continue
        trial = c.trial if c.trial is not None else min(done[c.key, s].number for s in per_seed)
        rows.append(Confirmed(trial, c.baseline, per_seed, seeds))
    alone = next((r for r in rows if r.baseline == INDEPENDENT), None)
    for row in rows:
        if alone is None or row is alone:
            continue
        paired = [s for s in seeds if s in row.per_seed and s in alone.per_seed]
        if paired:
            row.vs_independent = paired_difference([alone.per_seed[s] for s in paired],
                                                   [row.per_seed[s] for s in paired])
    rows.sort(key=lambda r: (-r.mean, r.trial))
    return Confirmation(seeds, rows)


def confirmation_from_json(raw: Any) -> Confirmation | None:
    """The stored summary (the study's ``confirmation`` attribute), or None when there is none."""
    if not isinstance(raw, dict) or not isinstance(raw.get("graphs"), list):
        return None
    graphs = []
    for g in raw["graphs"]:
        d = g.get("vs_independent")
        diff = None if d is None else PairedDifference(
            d["mean"], -math.inf if d["ci"][0] is None else d["ci"][0],
            math.inf if d["ci"][1] is None else d["ci"][1], int(d["seeds"]))
        graphs.append(Confirmed(int(g["trial"]), g.get("baseline"),
                                {int(s): float(a) for s, a in g["per_seed"].items()}, list(g["confirm_seeds"]), diff))
    return Confirmation(list(raw.get("seeds", [])), graphs)
