"""A graph drawn twice is not trained twice: the earlier trial of the same graph to continue.

All trials of a study use its one seed, so the same graph always trains to the
same numbers, epoch by epoch. When TPE draws a graph the study has already
trained (small or well-explored spaces), the new trial takes the earlier one's
recorded values as its own (so ASHA judges it at every rung it passed) and
trains on from that trial's checkpoint, if ASHA lets it go further. This index
holds, per graph, the trial that got furthest: its number and its values.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from optuna.trial import FrozenTrial, TrialState

from ktg.graph import TARGET_NODE, Graph
from search.study.contract import TrialAttr, ranked


@dataclass(frozen=True)
class Twin:
    """A finished trial of a graph: its number and its accuracy at epochs 1..k."""

    number: int
    values: tuple[float, ...]


def graph_key(graph: dict[str, Any]) -> str:
    """Graphs that train the target alike are twins, however they differ elsewhere
    (a trial trains only ``Graph.training_graph(TARGET_NODE)``: see ``search.tune.trial``)."""
    return Graph.from_dict(graph).training_key(TARGET_NODE)


def leading_values(by_epoch: dict[int, float]) -> tuple[float, ...]:
    """The values of epochs 1, 2, ... up to the first one missing."""
    values = []
    while len(values) + 1 in by_epoch:
        values.append(by_epoch[len(values) + 1])
    return tuple(values)


@dataclass
class Twins:
    """Per graph, the finished trial that trained it furthest."""

    by_graph: dict[str, Twin] = field(default_factory=dict)

    def offer(self, graph: dict[str, Any], number: int, by_epoch: dict[int, float]) -> None:
        """A trial of ``graph`` ended with these values; it becomes the twin if it got further."""
        values = leading_values(by_epoch)
        key = graph_key(graph)
        if values and (key not in self.by_graph or len(values) > len(self.by_graph[key].values)):
            self.by_graph[key] = Twin(number, values)

    def of(self, graph: dict[str, Any]) -> Twin | None:
        return self.by_graph.get(graph_key(graph))

    @classmethod
    def of_trials(cls, trials: Iterable[FrozenTrial]) -> Twins:
        """From a study's trials: the COMPLETE and PRUNED ones, and those interrupted with their driver.

        A trial that failed by itself is left out: it would only fail again; so is a
        confirmation trial: it trained on another seed.
        """
        twins = cls()
        for t in sorted(trials, key=lambda t: t.number):
            continuable = t.state in (TrialState.COMPLETE, TrialState.PRUNED) or (
                t.state == TrialState.FAIL and t.user_attrs.get(TrialAttr.INTERRUPTED))
            if continuable and ranked(t) and TrialAttr.GRAPH in t.user_attrs and TrialAttr.SKIPPED not in t.user_attrs:
                twins.offer(t.user_attrs[TrialAttr.GRAPH], t.number, t.intermediate_values)
        return twins
