"""The search space and its spec, without Ray: the sampler, the count, the size shown.

Fast unit tests: every count is checked against ``brute_force_space``, which
lists the graphs independently of ``search.space``.
"""

from __future__ import annotations

from typing import Any

import pytest
from optuna.trial import FixedTrial

from ktg.graph import LABEL_NODE
from search.space import describe_size, sample_graph, space_size
from search.spec import SearchSpec
from search.study.storage import masked
from tests.postgres import PASSWORD, postgres_url  # noqa: F401
from tests.search_helpers import TINY_SPEC, brute_force_space, sampled_graphs


def test_brute_force_counts_the_tiny_space() -> None:
    # 2 models for node 2; 2 gates on each label edge; cutoff or through x {kl, cm} on 1->2 and 2->1.
    assert brute_force_space(**TINY_SPEC) == 2 * 2**2 * 3**2 == 72


@pytest.mark.parametrize("fields", [
    TINY_SPEC,
    dict(nodes=2, models=["resnet20"], gates=["through", "cutoff", "linear", "correct"], losses=["kl"]),
    dict(nodes=3, models=["resnet20", "wrn16-1"], gates=["through", "cutoff", "linear"], losses=["kl"]),
    dict(nodes=3, models=["resnet20"], gates=["linear", "correct"], losses=["kl", "cm"]),
])
def test_space_size_matches_brute_force(fields: dict[str, Any]) -> None:
    spec = SearchSpec(name="s", trials=1, target_model="resnet20", **fields)
    assert space_size(spec) == brute_force_space(**fields)


def test_sampler_reaches_exactly_the_counted_space() -> None:
    """Every assignment of every parameter the sampler may ask for, through ``sample_graph``."""
    spec = SearchSpec(name="s", trials=1, target_model="resnet20", **TINY_SPEC)
    universe: dict[str, list[str]] = {"model_2": spec.models}
    for s, t in [(0, 1), (2, 1), (0, 2), (1, 2)]:
        universe[f"gate_{s}_{t}"] = spec.gates
        if s != LABEL_NODE:
            universe[f"loss_{s}_{t}"] = spec.losses
    assert len(sampled_graphs(universe, spec)) == space_size(spec) == brute_force_space(**TINY_SPEC)


def test_frozen_target_is_flagged() -> None:
    spec = SearchSpec(name="s", trials=1, target_model="resnet20", **TINY_SPEC)
    params = {"model_2": "wrn16-1", "gate_0_1": "cutoff", "gate_2_1": "cutoff", "gate_0_2": "through",
              "gate_1_2": "through", "loss_1_2": "kl"}
    graph, why = sample_graph(FixedTrial(params), spec)
    assert why and "frozen" in why
    assert not [e for e in graph["edges"] if e["target"] == 1]


def test_describe_size() -> None:
    assert describe_size(72) == "72"
    assert describe_size(1_048_576) == "1,048,576"
    assert describe_size(3 * 10**12) == "3.00e12"


def test_masked_hides_the_password(postgres_url: str) -> None:  # noqa: F811
    shown = masked(postgres_url)
    assert PASSWORD not in shown and "***" in shown and "127.0.0.1" in shown
