"""The search space, define-by-run: node models, edge gates, and (optionally) edge losses.

Node 1's model is fixed (it is the network being improved); every other node
draws its model, or one of the spec's pre-trained ``teachers`` (``teacher:<name>``),
every edge (label edges included) its gate, and, when more than one loss is
allowed, every non-label edge that is not cut off its loss. A teacher is frozen
as given, so the edges into it are not drawn (all cutoff); an open edge out of
it also draws its temperature. Parameter names are stable (``model_2``,
``gate_0_1``, ``loss_2_1``, ``temperature_2_1``) so studies can be read with
plain Optuna or SQL.
"""

from __future__ import annotations

import math
from typing import Any

import optuna

from ktg.graph import FORMAT, LABEL_NODE, TARGET_NODE
from search.spec import SearchSpec


def sample_graph(trial: optuna.Trial, spec: SearchSpec) -> tuple[dict, str | None]:
    """Draw one graph; return (graph dict, why it cannot be trained or None)."""
    ids = list(range(1, spec.nodes + 1))
    teachers = {t.choice(): t for t in spec.teachers}
    nodes = [{"id": TARGET_NODE, "model": spec.target_model}]
    teacher_ids = set()
    for i in ids[1:]:
        choice = trial.suggest_categorical(f"model_{i}", [*spec.models, *teachers])
        if choice in teachers:
            teacher_ids.add(i)
            nodes.append({"id": i, "model": teachers[choice].model, "checkpoint": teachers[choice].checkpoint})
        else:
            nodes.append({"id": i, "model": choice})
    edges = []
    for target in ids:
        if target in teacher_ids:
            continue  # frozen as given: every edge into it is cutoff
        for source in [LABEL_NODE, *ids]:
            if source == target:
                continue
            gate = trial.suggest_categorical(f"gate_{source}_{target}", spec.gates)
            if gate == "cutoff":
                continue  # an unlisted edge is a cutoff edge
            if source == LABEL_NODE:
                loss = "ce"
            elif len(spec.losses) > 1:
                loss = trial.suggest_categorical(f"loss_{source}_{target}", spec.losses)
            else:
                loss = spec.losses[0]
            edge: dict[str, Any] = {"source": source, "target": target, "loss": loss, "gate": gate}
            if source in teacher_ids:
                edge["temperature"] = trial.suggest_categorical(f"temperature_{source}_{target}", spec.temperatures)
            edges.append(edge)
    graph = {"format": FORMAT, "nodes": nodes, "edges": edges, "meta": {"dataset": spec.dataset}}
    if not any(e["target"] == TARGET_NODE for e in edges):
        return graph, f"target node {TARGET_NODE} would be frozen (every incoming edge is cutoff)"
    return graph, None


def repaired(params: dict[str, object], spec: SearchSpec) -> dict[str, object]:
    """An untrainable draw's nearest trainable graph: the same draw with the target's label edge opened.

    TPE ignores FAIL trials, so a posterior that favours cutting off every edge
    into the target would draw that graph again and again (a 2-node resume did
    100 times in a row). Queuing this repair as the next draw ends the loop: it
    trains, and TPE learns from it. Opening the label edge (plain supervised
    training of the target, with the first open gate) changes one parameter.
    """
    opened = next(g for g in spec.gates if g != "cutoff")  # the spec refuses gates of only 'cutoff'
    return {**params, f"gate_{LABEL_NODE}_{TARGET_NODE}": opened}


def space_size(spec: SearchSpec) -> int:
    """The number of distinct graphs.

    Without teachers: models^(M-1) x label gates^M x non-label edge options^(M(M-1)),
    where a non-label edge is either cut off or one of (open gate, loss); the KTG
    paper's M^(n-1) * G^(N^2) counts the same thing with a single loss. With
    teachers, sum over how many of the M-1 free nodes are teachers (r of them):
    edges into a teacher are absent, and an open edge out of one also has a temperature.
    """
    m = spec.nodes
    open_gates = len([g for g in spec.gates if g != "cutoff"])
    cutoff = 1 if "cutoff" in spec.gates else 0
    per_edge = open_gates * len(spec.losses) + cutoff
    per_teacher_edge = open_gates * len(spec.losses) * len(spec.temperatures) + cutoff
    total = 0
    for r in range(m if spec.teachers else 1):
        trained = m - r  # node 1 and the free nodes that are not teachers
        total += (math.comb(m - 1, r) * len(spec.teachers) ** r * len(spec.models) ** (m - 1 - r)
                  * len(spec.gates) ** trained * per_edge ** (trained * (trained - 1))
                  * per_teacher_edge ** (r * trained))
    return total


def describe_size(n: int) -> str:
    return f"{n:,}" if n < 10**7 else f"{n / 10 ** int(math.log10(n)):.2f}e{int(math.log10(n))}"
