"""The hand-made graphs a study trains before TPE draws anything: independent, KD, DML.

Each baseline is two things:
- ``graph``: exactly the hand-made graph (what the trial trains and records as
  ``graph``): KD's frozen teacher speaks through a ``kl`` edge at T = 2, as in
  Hinton et al.;
- ``params``: the nearest point of the search space, enqueued as the trial's
  parameters so that TPE learns from the result there. For independent and DML
  that point trains the very same graph; for KD it differs only in the
  temperature (the space has none: its edges use the default, 1).

So the searcher builds the graph itself rather than from the parameters: the
study then holds the real KD (T = 2) it compares against, and TPE still places
it. A baseline whose point is not in the space (e.g. no ``cutoff`` gate, or no
``kl`` loss) is left out, and said so. ``candidates`` is the one table of rows;
a user's teacher checkpoint (``given_teacher_kd``, at T = 4) is one of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ktg.graph import FORMAT, LABEL_NODE, TARGET_NODE
from search.spec import SearchSpec, TeacherSpec

KD_TEMPERATURE = 2.0  # KD from a model of the space, pre-trained on the study's data (Hinton et al.)
GIVEN_TEACHER_TEMPERATURE = 4.0  # KD from a user's teacher (Hinton et al.'s usual choice; issue 18's held-out run)
PEER = 2  # the node a KD teacher or a DML peer sits on


@dataclass(frozen=True)
class Baseline:
    name: str  # "independent", "kd:wrn16-2", "dml:resnet20" (the trial's ``baseline`` attribute)
    graph: dict[str, Any]  # the hand-made ktg-graph/1 the trial trains
    params: dict[str, Any] | None  # its nearest point of the search space; None: not in the space
    missing: str = ""  # why it is not in the space


def _edge(source: int, target: int, loss: str = "ce", **extra: Any) -> dict[str, Any]:
    return {"source": source, "target": target, "loss": loss, "gate": "through", **extra}


def _build(spec: SearchSpec, name: str, peer: str | None, edges: list[dict[str, Any]],
           open_edges: dict[tuple[int, int], str]) -> Baseline:
    """A baseline from its graph's peer model and edges, and the space's edges it opens (source,
    target) -> loss: every other edge into node 1 is cut off; nodes past the peer train alone."""
    nodes = [{"id": TARGET_NODE, "model": spec.target_model}] + ([{"id": PEER, "model": peer}] if peer else [])
    graph = {"format": FORMAT, "nodes": nodes, "edges": edges, "meta": {"dataset": spec.dataset, "baseline": name}}
    needs = {"through", "cutoff"} - set(spec.gates)
    if needs or any(loss not in spec.losses for loss in open_edges.values()):
        missing = (f"gates lack {', '.join(sorted(needs))}" if needs
                   else f"losses lack {', '.join(sorted(set(open_edges.values()) - set(spec.losses)))}")
        return Baseline(name, graph, None, missing)
    ids = range(1, spec.nodes + 1)
    params: dict[str, Any] = {f"model_{i}": peer if i == PEER and peer else spec.models[0] for i in ids if i != TARGET_NODE}
    for target in ids:
        # A KD teacher (PEER with no edge in) is frozen: its label edge is cut too.
        frozen = peer is not None and target == PEER and not any(t == PEER for _, t in open_edges)
        params[f"gate_{LABEL_NODE}_{target}"] = "cutoff" if frozen else "through"
        for source in ids:
            if source == target:
                continue
            loss = open_edges.get((source, target))
            params[f"gate_{source}_{target}"] = "through" if loss else "cutoff"
            if loss and len(spec.losses) > 1:
                params[f"loss_{source}_{target}"] = loss
    return Baseline(name, graph, params)


def independent(spec: SearchSpec) -> Baseline:
    """Node 1 trained on labels alone."""
    return _build(spec, "independent", None, [_edge(LABEL_NODE, TARGET_NODE)], {})


def kd(spec: SearchSpec, teacher: str, temperature: float = KD_TEMPERATURE) -> Baseline:
    """Node 1 on labels and a frozen ``teacher`` (pre-trained on the same data, cached)."""
    edges = [_edge(LABEL_NODE, TARGET_NODE), _edge(PEER, TARGET_NODE, "kl", temperature=temperature)]
    return _build(spec, f"kd:{teacher}", teacher, edges, {(PEER, TARGET_NODE): "kl"})


def dml(spec: SearchSpec, peer: str) -> Baseline:
    """Deep mutual learning: node 1 and ``peer``, each on labels and on the other (KL, T = 1)."""
    edges = [_edge(LABEL_NODE, TARGET_NODE), _edge(LABEL_NODE, PEER), _edge(PEER, TARGET_NODE, "kl"),
             _edge(TARGET_NODE, PEER, "kl")]
    return _build(spec, f"dml:{peer}", peer, edges, {(PEER, TARGET_NODE): "kl", (TARGET_NODE, PEER): "kl"})


def given_teacher_kd(spec: SearchSpec, teacher: TeacherSpec) -> Baseline:
    """Plain KD from a teacher the user gave: node 1 learns from the labels and from the teacher
    on node 2 (``kl`` at T = 4, both gates ``through``); no other node takes part.

    Its parameters are an exact draw of the space (the teacher edge's temperature is
    searched), so TPE learns from the very graph trained.
    """
    name = f"kd:{teacher.choice()}"
    graph = {"format": FORMAT,
             "nodes": [{"id": TARGET_NODE, "model": spec.target_model},
                       {"id": PEER, "model": teacher.model, "checkpoint": teacher.checkpoint}],
             "edges": [_edge(LABEL_NODE, TARGET_NODE),
                       _edge(PEER, TARGET_NODE, "kl", temperature=GIVEN_TEACHER_TEMPERATURE)],
             "meta": {"dataset": spec.dataset, "baseline": name}}
    if not ("through" in spec.gates and "kl" in spec.losses and GIVEN_TEACHER_TEMPERATURE in spec.temperatures
            and (spec.nodes == 2 or "cutoff" in spec.gates)):
        return Baseline(name, graph, None, f"T = {GIVEN_TEACHER_TEMPERATURE:g}, the kl loss or the gates "
                                           "through/cutoff are not in the space")
    params: dict[str, Any] = {f"model_{PEER}": teacher.choice(), f"gate_{LABEL_NODE}_{TARGET_NODE}": "through",
                              f"gate_{PEER}_{TARGET_NODE}": "through",
                              f"temperature_{PEER}_{TARGET_NODE}": GIVEN_TEACHER_TEMPERATURE}
    if len(spec.losses) > 1:
        params[f"loss_{PEER}_{TARGET_NODE}"] = "kl"
    # Every other node is drawn, but cut off from everything: nothing upstream of node 1,
    # so a trial trains the two-node graph above (search.tune.trial: training_graph).
    for i in range(PEER + 1, spec.nodes + 1):
        params[f"model_{i}"] = spec.models[0]
        for other in [LABEL_NODE, *range(1, spec.nodes + 1)]:
            if other != i:
                params[f"gate_{other}_{i}"] = "cutoff"
                if other not in (LABEL_NODE, PEER):  # edges into the teacher are not drawn
                    params[f"gate_{i}_{other}"] = "cutoff"
    return Baseline(name, graph, params)


def candidates(spec: SearchSpec) -> list[Baseline]:
    """Every hand-made graph of the space's kind, in the order they train."""
    return [independent(spec), *(given_teacher_kd(spec, t) for t in spec.teachers), *(kd(spec, m) for m in spec.models),
            *(dml(spec, m) for m in spec.models)]


def study_baselines(spec: SearchSpec) -> tuple[list[Baseline], list[str]]:
    """The baselines ``spec.baselines`` asks for that its space contains, and one note per one left out.

    ``all`` keeps only independent when the others would take more than half of
    the trial budget: a search has to be left room to search.
    """
    if spec.baselines == "none":
        return [], []
    rows = candidates(spec) if spec.baselines == "all" else [independent(spec)]
    notes = [f"baseline {b.name} left out: not in the search space ({b.missing})" for b in rows if b.params is None]
    rows = [b for b in rows if b.params is not None]
    if len(rows) > 1 and 2 * len(rows) > spec.trials:
        notes.append(f"baselines: only independent ({len(rows)} hand-made graphs would take more than half "
                     f"of --trials {spec.trials})")
        rows = rows[:1] if rows[0].name == "independent" else []
    return rows, notes


def baseline_named(spec: SearchSpec, name: str) -> Baseline | None:
    """The study's baseline of that name (what a queued baseline trial trains), if any."""
    return next((b for b in candidates(spec) if b.name == name), None)
