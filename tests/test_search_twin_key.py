"""Twins are graphs that train the target alike, not only graphs drawn alike."""

from __future__ import annotations

from search.tune.twins import Twins


def graph(edges: list[tuple[int, int, str]], model_2: str = "resnet8") -> dict:
    return {"format": "ktg-graph/1", "nodes": [{"id": 1, "model": "resnet20"}, {"id": 2, "model": model_2}],
            "edges": [{"source": s, "target": t, "loss": "ce" if s == 0 else "kl", "gate": g} for s, t, g in edges]}


def test_a_graph_that_differs_only_downstream_of_the_target_is_a_twin() -> None:
    twins = Twins()
    twins.offer(graph([(0, 1, "through"), (0, 2, "through")]), 3, {1: 0.5, 2: 0.6})
    # Node 2 learns from node 1 but teaches it nothing; node 1's label gate "correct" passes every label.
    same = graph([(0, 1, "correct"), (1, 2, "linear")], model_2="wrn16-1")
    twin = twins.of(same)
    assert twin is not None and twin.number == 3 and twin.values == (0.5, 0.6)
    assert twins.of(graph([(0, 1, "through"), (2, 1, "through"), (0, 2, "through")])) is None
    assert twins.of(graph([(0, 1, "linear")])) is None
