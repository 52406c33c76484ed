"""The graph file: round trip, and one clear error per kind of mistake."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from ktg.device import Accel
from ktg.errors import KtgError
from ktg.graph import Graph

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

BASE = {
    "format": "ktg-graph/1",
    "nodes": [{"id": 1, "model": "resnet32"}, {"id": 2, "model": "wrn28-2"},
              {"id": 3, "model": "resnet110", "checkpoint": "teachers/r110.pt"}],
    "edges": [
        {"source": 0, "target": 1, "loss": "ce", "gate": "through"},
        {"source": 2, "target": 1, "loss": "kl", "gate": "linear", "temperature": 2.0},
        {"source": 0, "target": 2, "loss": "ce", "gate": "correct"},
        {"source": 1, "target": 2, "loss": "kl", "gate": "through", "weight": 0.5},
        {"source": 3, "target": 1, "loss": "cm", "gate": "through", "epochs": [0, 100]},
        {"source": 3, "target": 2, "loss": "lkd", "gate": "through", "epochs": [100, None]},
    ],
    "meta": {"study": "s", "trial": 17, "val_acc": 0.7346, "custom": {"kept": [1, 2]}},
}


def mutated(path: str, value: object) -> dict:
    """BASE with one field (dotted path, list indices as ints) set to value; None deletes."""
    data = copy.deepcopy(BASE)
    *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
    obj = data
    for p in parents:
        obj = obj[p]
    if value is None:
        del obj[last]
    else:
        obj[last] = value
    return data


def test_round_trip_keeps_everything_including_unknown_meta(tmp_path: Path) -> None:
    graph = Graph.from_dict(BASE)
    graph.save(tmp_path / "g.json")
    again = Graph.load(tmp_path / "g.json")
    assert again == graph
    assert again.meta["custom"] == {"kept": [1, 2]}
    assert json.loads((tmp_path / "g.json").read_text())["edges"][5]["epochs"] == [100, None]


def test_frozen_nodes_and_target() -> None:
    graph = Graph.from_dict(BASE)
    assert graph.frozen_ids == [3]          # no incoming edge
    assert graph.trained_ids == [1, 2]
    assert graph.incoming(1)[1].temperature == 2.0


def test_listed_cutoff_edges_count_as_absent() -> None:
    data = mutated("edges.2.gate", "cutoff")
    data["edges"][3]["gate"] = "cutoff"
    data["edges"][5]["gate"] = "cutoff"
    assert Graph.from_dict(data).frozen_ids == [2, 3]


def test_epoch_windows() -> None:
    edges = Graph.from_dict(BASE).edges
    assert [edges[4].active(e) for e in (0, 99, 100)] == [True, True, False]
    assert [edges[5].active(e) for e in (99, 100, 10_000)] == [False, True, True]


@pytest.mark.parametrize(("data", "expected"), [
    (mutated("nodes.1.model", "resnet33"), ["nodes[1].model", "resnet33", "allowed", "wrn<depth>-<width>"]),
    (mutated("edges.1.gate", "lin"), ["edges[1].gate", "'lin'", "through, cutoff, linear, correct"]),
    (mutated("edges.1.loss", "mse"), ["edges[1].loss", "ce, kl, cm, lkd"]),
    (mutated("edges.1.target", 0), ["edges[1].target", "node 0 is the label source"]),
    (mutated("edges.1.source", 7), ["edges[1].source", "0 (labels) or a listed node id: 1, 2, 3"]),
    (mutated("edges.0.loss", "kl"), ["edges[0].loss", "ce (edges from node 0"]),
    (mutated("edges.1.loss", "ce"), ["edges[1].loss", "only edges from node 0 carry 'ce'"]),
    (mutated("edges.4.epochs", [5, 5]), ["edges[4].epochs", "0 <= start < end"]),
    (mutated("edges.4.epochs", [-1, 3]), ["edges[4].epochs"]),
    (mutated("edges.4.epochs", "all"), ["edges[4].epochs"]),
    (mutated("edges.1.temperature", 0), ["edges[1].temperature", "> 0"]),
    (mutated("edges.1.weight", -1), ["edges[1].weight", ">= 0"]),
    (mutated("edges.1.colour", "red"), ["edges[1].colour", "allowed", "epochs, gate, loss"]),
    (mutated("nodes.0.size", 3), ["nodes[0].size", "allowed"]),
    (mutated("format", "ktg-graph/2"), ["format", "ktg-graph/1"]),
    (mutated("nodes.1.id", 1), ["nodes[1].id", "listed twice"]),
    (mutated("edges.0.gate", "cutoff") | {"edges": [{"source": 0, "target": 1, "loss": "ce", "gate": "cutoff"},
                                                     {"source": 0, "target": 2, "loss": "ce", "gate": "through"}]},
     ["node 1 (the target) is frozen"]),
    (mutated("nodes.0.id", 4), ["node 1 (the target) is missing"]),
    (mutated("nodes.1.checkpoint", "x.pt"), ["nodes[1].checkpoint", "only on frozen nodes"]),
    (mutated("nodes.2.pretrain", {"dataset": "imagenet"}), ["nodes[2].pretrain.dataset", "cifar10"]),
])
def test_every_error_names_the_field_and_what_is_allowed(data: dict, expected: list[str]) -> None:
    with pytest.raises(KtgError) as err:
        Graph.from_dict(data)
    for fragment in expected:
        assert fragment in str(err.value)


def test_duplicate_edge_is_an_error() -> None:
    data = copy.deepcopy(BASE)
    data["edges"].append(dict(data["edges"][1], gate="correct"))
    with pytest.raises(KtgError, match=r"edges\[6\]: duplicates edges\[1\]"):
        Graph.from_dict(data)


def test_bad_json_file_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "g.json").write_text('{"format": "ktg-graph/1", "nodes": [')
    with pytest.raises(KtgError, match="not valid JSON"):
        Graph.load(tmp_path / "g.json")
    with pytest.raises(KtgError, match="cannot read"):
        Graph.load(tmp_path / "missing.json")


def test_kl_from_a_teacher_of_other_classes_fails_before_training() -> None:
    data = copy.deepcopy(BASE)
    data["nodes"][2] = {"id": 3, "model": "resnet110", "pretrain": {"dataset": "cifar100", "classes": [0, 1, 2]}}
    graph = Graph.from_dict(data)  # cm/lkd from it are fine
    assert graph.check_run(dataset="cifar100", classes=None, num_classes=100, epochs=200) == []
    data["edges"].append({"source": 3, "target": 2, "loss": "kl", "gate": "through"})
    graph = Graph.from_dict(data)
    with pytest.raises(KtgError, match=r"edges\[6\]\.loss: a 'kl' edge cannot leave node 3.*allowed from it: cm, lkd"):
        graph.check_run(dataset="cifar100", classes=None, num_classes=100, epochs=200)
    # Same classes as the run: kl is fine.
    assert graph.check_run(dataset="cifar100", classes=[0, 1, 2], num_classes=3, epochs=200) == []
    # A checkpoint whose classifier has another number of classes is foreign too.
    assert graph.foreign_nodes(dataset="cifar100", classes=[0, 1, 2], num_classes=3,
                               teacher_classes={3: 10}) == {3}


def test_windows_that_never_fire_are_warned_about() -> None:
    warnings = Graph.from_dict(BASE).check_run(dataset="digits", classes=None, num_classes=10, epochs=50)
    assert len(warnings) == 1 and "edges[5]" in warnings[0] and "never fires" in warnings[0]


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.json")), ids=lambda p: p.name)
def test_examples_load(path: Path) -> None:
    graph = Graph.load(path)
    assert 1 in graph.trained_ids


def _g(nodes: list[tuple[int, str]], edges: list[tuple[int, int, str]]) -> Graph:
    return Graph.from_dict({"format": "ktg-graph/1", "nodes": [{"id": i, "model": m} for i, m in nodes],
                            "edges": [{"source": s, "target": t, "loss": "ce" if s == 0 else "kl", "gate": g}
                                      for s, t, g in edges]})


def test_upstream_of_keeps_exactly_what_reaches_the_node() -> None:
    g = _g([(1, "resnet20"), (2, "resnet8"), (3, "wrn16-1"), (4, "resnet8")],
           [(0, 1, "through"), (3, 1, "linear"), (4, 3, "correct"), (0, 3, "through"),
            (1, 2, "through"), (0, 2, "through"), (2, 4, "cutoff")])
    up = g.upstream_of(1)
    assert up.node_ids == [1, 3, 4]  # 2 only reads node 1; the 2->4 edge is cut off
    assert {(e.source, e.target) for e in up.edges} == {(0, 1), (3, 1), (4, 3), (0, 3)}
    assert up.meta == {}
    # Node 2's own model and edges do not matter to node 1.
    other = _g([(1, "resnet20"), (2, "wrn16-1"), (3, "wrn16-1"), (4, "resnet8")],
               [(0, 1, "through"), (3, 1, "linear"), (4, 3, "correct"), (0, 3, "through"), (1, 2, "linear")])
    assert other.upstream_of(1) == up
    assert _g([(1, "resnet20"), (2, "resnet8")], [(0, 1, "through"), (2, 1, "through")]).upstream_of(1) != up


def test_training_key_equates_what_trains_alike_and_nothing_else() -> None:
    alone = _g([(1, "resnet20")], [(0, 1, "through")])
    # A correct gate on the label edge passes every sample (the label is always "right").
    assert _g([(1, "resnet20"), (2, "wrn16-1")], [(0, 1, "correct"), (1, 2, "linear")]).training_key(1) \
        == alone.training_key(1)
    assert _g([(1, "resnet20")], [(0, 1, "linear")]).training_key(1) != alone.training_key(1)
    assert _g([(1, "resnet8")], [(0, 1, "through")]).training_key(1) != alone.training_key(1)
    with_peer = _g([(1, "resnet20"), (2, "resnet8")], [(0, 1, "through"), (2, 1, "correct"), (0, 2, "through")])
    # On a kl edge "correct" masks the samples the source gets wrong: not the same as through.
    through_peer = _g([(1, "resnet20"), (2, "resnet8")], [(0, 1, "through"), (2, 1, "through"), (0, 2, "through")])
    assert with_peer.training_key(1) != through_peer.training_key(1)
    # The order edges are listed in does not matter.
    reordered = _g([(1, "resnet20"), (2, "resnet8")], [(0, 2, "through"), (2, 1, "correct"), (0, 1, "through")])
    assert reordered.training_key(1) == with_peer.training_key(1)


def test_equal_upstream_trains_the_node_identically(cpu_accel: Accel) -> None:
    from ktg.data.spec import DataSpec
    from ktg.recipe import Recipe
    from ktg.run import RunSetup

    data = DataSpec("synthetic").load()
    alone = _g([(1, "resnet8")], [(0, 1, "through")])
    beside = _g([(1, "resnet8"), (2, "resnet8")], [(0, 1, "through"), (0, 2, "linear"), (1, 2, "through")])
    assert alone.upstream_of(1) == beside.upstream_of(1)
    recipe = Recipe(epochs=1, warmup_steps=0)
    runs = [RunSetup(data, cpu_accel).train(g, recipe, seed=7) for g in (alone, beside)]
    a, b = (r.models[1].state_dict() for r in runs)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert runs[0].nodes[1].test_acc == runs[1].nodes[1].test_acc
