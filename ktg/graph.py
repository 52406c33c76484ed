"""The graph file, ``ktg-graph/1``: load, validate, save.

A graph is the unit users export, share, diff and re-train, so validation is
strict and every error names the field (``edges[2].gate``) and what is allowed.
Node 0 is the label source and is never listed; node 1 is the target.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ktg.edge_losses import CROSS_TASK_LOSSES, EDGE_LOSSES, LABEL_LOSSES, NETWORK_LOSSES
from ktg.errors import KtgError, allowed

FORMAT = "ktg-graph/1"
LABEL_NODE = 0
TARGET_NODE = 1
LOSSES = tuple(EDGE_LOSSES)  # the names of the one table of losses, in its order
GATES = ("through", "cutoff", "linear", "correct")

_TOP_FIELDS = {"format", "nodes", "edges", "meta"}
_NODE_FIELDS = {"id", "model", "checkpoint", "pretrain"}
_PRETRAIN_FIELDS = {"dataset", "classes"}
_EDGE_FIELDS = {"source", "target", "loss", "gate", "weight", "temperature", "epochs"}


@dataclass(frozen=True)
class Pretrain:
    """What a frozen teacher was (or is to be) trained on; None fields mean 'the run's'."""

    dataset: str | None = None
    classes: tuple[int, ...] | None = None


@dataclass(frozen=True)
class Node:
    id: int
    model: str
    checkpoint: str | None = None
    pretrain: Pretrain | None = None


@dataclass(frozen=True)
class Edge:
    source: int
    target: int
    loss: str
    gate: str
    weight: float = 1.0
    temperature: float = 1.0
    # [start, end) in epochs; end None means "until the end of the run".
    epochs: tuple[int, int | None] | None = None

    def active(self, epoch: int) -> bool:
        """Whether the edge computes anything in this (0-based) epoch."""
        if self.gate == "cutoff":
            return False
        if self.epochs is None:
            return True
        start, end = self.epochs
        return epoch >= start and (end is None or epoch < end)


@dataclass(frozen=True)
class Graph:
    nodes: tuple[Node, ...]
    edges: tuple[Edge, ...]
    meta: dict[str, Any] = field(default_factory=dict)

    # -- structure -------------------------------------------------------
    @property
    def node_ids(self) -> list[int]:
        return [n.id for n in self.nodes]

    def node(self, node_id: int) -> Node:
        for n in self.nodes:
            if n.id == node_id:
                return n
        raise KtgError(f"graph has no node {node_id}; nodes: {self.node_ids}")

    def incoming(self, node_id: int) -> list[Edge]:
        """The non-cutoff edges into a node (label edge included)."""
        return [e for e in self.edges if e.target == node_id and e.gate != "cutoff"]

    def is_frozen(self, node_id: int) -> bool:
        """A node none of whose incoming edges carries a loss: a pre-trained teacher."""
        return not self.incoming(node_id)

    @property
    def frozen_ids(self) -> list[int]:
        return [n.id for n in self.nodes if self.is_frozen(n.id)]

    @property
    def trained_ids(self) -> list[int]:
        return [n.id for n in self.nodes if not self.is_frozen(n.id)]

    def upstream_of(self, node_id: int) -> Graph:
        """The part of the graph that decides how ``node_id`` trains: the node, every node
        with a path of non-cutoff edges into it, and the edges among them (``meta`` dropped).

        By the determinism contract two graphs with equal ``upstream_of(n)`` train node
        ``n`` to exactly the same numbers with the same seed: the nodes downstream of it
        only read it (sources are detached) and draw their own initial weights.
        """
        keep, frontier = {node_id}, [node_id]
        while frontier:
            for e in self.incoming(frontier.pop()):
                if e.source != LABEL_NODE and e.source not in keep:
                    keep.add(e.source)
                    frontier.append(e.source)
        edges = tuple(e for e in self.edges if e.target in keep and e.gate != "cutoff")
        return Graph(tuple(n for n in self.nodes if n.id in keep), edges)

    def training_graph(self, node_id: int) -> Graph:
        """The smallest graph that trains ``node_id`` exactly as this one does: its
        :meth:`upstream_of`, each gate that equals another written as that one (``correct``
        on a loss with no correct-mask, such as ``ce``, is ``through``), edges in one order."""
        up = self.upstream_of(node_id)
        edges = [replace(e, gate="through") if e.gate == "correct" and EDGE_LOSSES[e.loss].correct_mask == "none"
                 else e for e in up.edges]
        return replace(up, edges=tuple(sorted(edges, key=lambda e: (e.target, e.source, e.loss))))

    def training_key(self, node_id: int) -> str:
        """A string equal for two graphs exactly when they train ``node_id`` the same way."""
        return json.dumps(self.training_graph(node_id).to_dict(), sort_keys=True)

    # -- (de)serialisation --------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        nodes = []
        for n in self.nodes:
            d: dict[str, Any] = {"id": n.id, "model": n.model}
            if n.checkpoint is not None:
                d["checkpoint"] = n.checkpoint
            if n.pretrain is not None:
                p: dict[str, Any] = {}
                if n.pretrain.dataset is not None:
                    p["dataset"] = n.pretrain.dataset
                if n.pretrain.classes is not None:
                    p["classes"] = list(n.pretrain.classes)
                d["pretrain"] = p
            nodes.append(d)
        edges = []
        for e in self.edges:
            d = {"source": e.source, "target": e.target, "loss": e.loss, "gate": e.gate}
            if e.weight != 1.0:
                d["weight"] = e.weight
            if e.temperature != 1.0:
                d["temperature"] = e.temperature
            if e.epochs is not None:
                d["epochs"] = list(e.epochs)
            edges.append(d)
        out: dict[str, Any] = {"format": FORMAT, "nodes": nodes, "edges": edges}
        if self.meta:
            out["meta"] = dict(self.meta)
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    def save(self, path: str | Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(self.to_json())

    @classmethod
    def from_dict(cls, data: Any) -> Graph:
        return _parse_graph(data)

    @classmethod
    def load(cls, path: str | Path) -> Graph:
        p = Path(path)
        try:
            text = p.read_text()
        except OSError as exc:
            raise KtgError(f"graph: cannot read {p}: {exc.strerror}") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise KtgError(f"graph: {p} is not valid JSON (line {exc.lineno}: {exc.msg})") from None
        return _parse_graph(data)

    def with_meta(self, **meta: Any) -> Graph:
        return Graph(self.nodes, self.edges, {**self.meta, **meta})

    # -- checks that need the run ------------------------------------------
    def foreign_nodes(self, *, dataset: str, classes: list[int] | None, num_classes: int,
                      teacher_classes: dict[int, int] | None = None) -> set[int]:
        """Nodes trained on other classes than the run (cross-task teachers).

        ``teacher_classes`` maps a frozen node to its number of outputs when a
        checkpoint fixes it.
        """
        foreign = {n.id for n in self.nodes if not _same_label_space(n, dataset, classes, num_classes)}
        foreign |= {nid for nid, count in (teacher_classes or {}).items() if count != num_classes}
        return foreign

    def check_run(self, *, dataset: str, classes: list[int] | None, num_classes: int,
                  epochs: int, teacher_classes: dict[int, int] | None = None) -> list[str]:
        """Check the graph against a run before anything trains; return warnings.

        A ``kl`` edge needs source and target on the same classes, which only the
        run knows: failing here, not mid-training.
        """
        foreign = self.foreign_nodes(dataset=dataset, classes=classes, num_classes=num_classes,
                                     teacher_classes=teacher_classes)
        for i, e in enumerate(self.edges):
            if e.gate != "cutoff" and not EDGE_LOSSES[e.loss].cross_task and e.source in foreign:
                raise KtgError(
                    f"edges[{i}].loss: a {e.loss!r} edge cannot leave node {e.source}, which is trained on "
                    f"other classes than this run ({dataset}); allowed from it: {', '.join(CROSS_TASK_LOSSES)}"
                )
        warnings = []
        for i, e in enumerate(self.edges):
            if e.gate != "cutoff" and e.epochs is not None and e.epochs[0] >= epochs:
                warnings.append(
                    f"edges[{i}] ({e.source}->{e.target} {e.loss}) starts at epoch {e.epochs[0]} "
                    f"but the run has {epochs} epochs: it never fires"
                )
        return warnings


def _same_label_space(node: Node, dataset: str, classes: list[int] | None, num_classes: int) -> bool:
    """Whether the node's output k means the run's label k.

    Label k of a run is its k-th kept class (``classes`` in label order, all
    classes when None); a teacher's are its sorted ``pretrain.classes``, or the
    run's own when it names none.
    """
    if node.pretrain is None:
        return True
    if node.pretrain.dataset is not None and node.pretrain.dataset != dataset:
        return False
    if node.pretrain.classes is None:
        return True
    run_labels = list(classes) if classes is not None else list(range(num_classes))
    return list(node.pretrain.classes) == run_labels


# -- parsing -----------------------------------------------------------------

def _check_fields(obj: Any, where: str, known: set[str]) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise KtgError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    unknown = sorted(set(obj) - known)
    if unknown:
        raise allowed(f"{where}.{unknown[0]}" if where else unknown[0], "unknown field",
                      ", ".join(sorted(known)))
    return obj


def _int(value: Any, where: str, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise KtgError(f"{where}: got {value!r}; allowed: an integer >= {minimum}")
    return value


def _number(value: Any, where: str, *, positive: bool) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (positive and value == 0):
        bound = "> 0" if positive else ">= 0"
        raise KtgError(f"{where}: got {value!r}; allowed: a finite number {bound}")
    return float(value)


def _choice(value: Any, where: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise allowed(where, value, ", ".join(choices))
    return value


def _parse_node(raw: Any, where: str) -> Node:
    from ktg.models import check_model_name

    d = _check_fields(raw, where, _NODE_FIELDS)
    for key in ("id", "model"):
        if key not in d:
            raise KtgError(f"{where}.{key}: missing (required)")
    node_id = _int(d["id"], f"{where}.id", minimum=1)
    if not isinstance(d["model"], str):
        raise KtgError(f"{where}.model: got {d['model']!r}; allowed: a model name string")
    check_model_name(d["model"], f"{where}.model")
    checkpoint = d.get("checkpoint")
    if checkpoint is not None and not isinstance(checkpoint, str):
        raise KtgError(f"{where}.checkpoint: got {checkpoint!r}; allowed: a file path string")
    pretrain = None
    if "pretrain" in d:
        pretrain = _parse_pretrain(d["pretrain"], f"{where}.pretrain")
    return Node(node_id, d["model"], checkpoint, pretrain)


def _parse_pretrain(raw: Any, where: str) -> Pretrain:
    d = _check_fields(raw, where, _PRETRAIN_FIELDS)
    dataset = d.get("dataset")
    if dataset is not None:
        from ktg.data import check_dataset_name

        check_dataset_name(dataset, f"{where}.dataset")
    classes = d.get("classes")
    if classes is not None:
        if not isinstance(classes, list) or not classes:
            raise KtgError(f"{where}.classes: got {classes!r}; allowed: a non-empty list of class ids")
        classes = tuple(sorted({_int(c, f"{where}.classes[{i}]") for i, c in enumerate(classes)}))
    return Pretrain(dataset, classes)


def _parse_edge(raw: Any, where: str, node_ids: set[int]) -> Edge:
    d = _check_fields(raw, where, _EDGE_FIELDS)
    for key in ("source", "target", "loss", "gate"):
        if key not in d:
            raise KtgError(f"{where}.{key}: missing (required)")
    ids = ", ".join(str(i) for i in sorted(node_ids))
    source = _int(d["source"], f"{where}.source")
    if source != LABEL_NODE and source not in node_ids:
        raise allowed(f"{where}.source", source, f"0 (labels) or a listed node id: {ids}")
    target = _int(d["target"], f"{where}.target")
    if target not in node_ids:
        why = " (node 0 is the label source and takes no edges)" if target == LABEL_NODE else ""
        raise allowed(f"{where}.target", target, f"a listed node id: {ids}{why}")
    if source == target:
        raise KtgError(f"{where}: an edge from node {source} to itself; allowed: source != target")
    loss = _choice(d["loss"], f"{where}.loss", LOSSES)
    if (source == LABEL_NODE) != EDGE_LOSSES[loss].label_edge:
        carried = ", ".join(repr(name) for name in LABEL_LOSSES)
        if EDGE_LOSSES[loss].label_edge:
            raise allowed(f"{where}.loss", loss, f"{', '.join(NETWORK_LOSSES)} (only edges from node 0 carry {carried})")
        raise allowed(f"{where}.loss", loss, f"{', '.join(LABEL_LOSSES)} (edges from node 0, the labels, carry {carried})")
    gate = _choice(d["gate"], f"{where}.gate", GATES)
    weight = _number(d.get("weight", 1.0), f"{where}.weight", positive=False)
    temperature = _number(d.get("temperature", 1.0), f"{where}.temperature", positive=True)
    epochs = None
    if "epochs" in d and d["epochs"] is not None:
        epochs = _parse_window(d["epochs"], f"{where}.epochs")
    return Edge(source, target, loss, gate, weight, temperature, epochs)


def _parse_window(raw: Any, where: str) -> tuple[int, int | None]:
    allowed_form = "[start, end) as two integers 0 <= start < end, or [start, null]"
    if not isinstance(raw, list) or len(raw) != 2:
        raise allowed(where, raw, allowed_form)
    start, end = raw
    if isinstance(start, bool) or not isinstance(start, int) or start < 0:
        raise allowed(where, raw, allowed_form)
    if end is not None and (isinstance(end, bool) or not isinstance(end, int) or end <= start):
        raise allowed(where, raw, allowed_form)
    return start, end


def _parse_graph(data: Any) -> Graph:
    d = _check_fields(data, "graph", _TOP_FIELDS)
    if d.get("format") != FORMAT:
        raise allowed("format", d.get("format"), FORMAT)
    raw_nodes = d.get("nodes")
    if not isinstance(raw_nodes, list) or not raw_nodes:
        raise KtgError("nodes: expected a non-empty list of {id, model} objects")
    nodes: list[Node] = []
    seen: set[int] = set()
    for i, raw in enumerate(raw_nodes):
        node = _parse_node(raw, f"nodes[{i}]")
        if node.id in seen:
            raise KtgError(f"nodes[{i}].id: node {node.id} is listed twice; allowed: unique ids")
        seen.add(node.id)
        nodes.append(node)
    if TARGET_NODE not in seen:
        raise KtgError("nodes: node 1 (the target) is missing; allowed: ids 1, 2, ... with 1 present")
    raw_edges = d.get("edges", [])
    if not isinstance(raw_edges, list):
        raise KtgError("edges: expected a list of edge objects")
    edges = [_parse_edge(raw, f"edges[{i}]", seen) for i, raw in enumerate(raw_edges)]
    keys: dict[tuple[int, int, str], int] = {}
    for i, e in enumerate(edges):
        key = (e.source, e.target, e.loss)
        if key in keys:
            raise KtgError(
                f"edges[{i}]: duplicates edges[{keys[key]}] ({e.source}->{e.target} {e.loss}); "
                "allowed: one edge per (source, target, loss)"
            )
        keys[key] = i
    meta = d.get("meta", {})
    if not isinstance(meta, dict):
        raise KtgError(f"meta: got {meta!r}; allowed: a JSON object")
    graph = Graph(tuple(nodes), tuple(edges), dict(meta))
    if graph.is_frozen(TARGET_NODE):
        raise KtgError(
            "edges: node 1 (the target) is frozen (no incoming edge carries a loss); "
            "allowed: at least one non-cutoff edge into node 1, e.g. the label edge 0->1 ce"
        )
    for i, n in enumerate(nodes):
        if (n.checkpoint or n.pretrain) and not graph.is_frozen(n.id):
            field_name = "checkpoint" if n.checkpoint else "pretrain"
            raise KtgError(
                f"nodes[{i}].{field_name}: node {n.id} has incoming edges, so it is trained, not "
                "pre-trained; allowed: checkpoint/pretrain only on frozen nodes (all incoming edges cutoff)"
            )
    return graph
