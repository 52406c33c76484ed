"""The hand-made graphs in every study: trained first, marked, counted, exactly as made by hand.

Fast tests build the baselines and hand them out through the searcher on an
in-memory Optuna study; the slow one runs ``ktg search`` (real local Ray) and
reads the study back.
"""

from __future__ import annotations

import copy
import uuid
from pathlib import Path

import optuna
import pytest
from optuna.trial import FixedTrial, TrialState

from ktg.graph import Graph
from search.baselines import candidates, study_baselines
from search.space import repaired, sample_graph
from search.spec import SearchSpec
from search.study.contract import counted
from search.study.resume import interrupt_trial, open_study
from search.tune.driver import queue_baselines
from search.tune.searcher import GraphSearcher, Tally
from tests.search_helpers import ktg_env, load, run_ktg

MODELS = ["resnet20", "wrn16-1"]


def spec_of(**fields: object) -> SearchSpec:
    return SearchSpec.model_validate({"name": "s", "nodes": 3, "trials": 20, "target_model": "resnet20",
                                      "models": MODELS, **fields})


def edges(graph: dict) -> set[tuple]:
    return {(e["source"], e["target"], e["loss"], e["gate"], e.get("temperature", 1.0)) for e in graph["edges"]}


# What each baseline is, written out by hand: (peer model or None, its edges).
EXPECTED = {
    "independent": (None, {(0, 1, "ce", "through", 1.0)}),
    **{f"kd:{m}": (m, {(0, 1, "ce", "through", 1.0), (2, 1, "kl", "through", 2.0)}) for m in MODELS},
    **{f"dml:{m}": (m, {(0, 1, "ce", "through", 1.0), (0, 2, "ce", "through", 1.0), (2, 1, "kl", "through", 1.0),
                        (1, 2, "kl", "through", 1.0)}) for m in MODELS},
}


def test_the_baselines_are_the_hand_made_graphs() -> None:
    spec = spec_of()
    rows = candidates(spec)
    assert [b.name for b in rows] == list(EXPECTED)
    for b in rows:
        peer, expected = EXPECTED[b.name]
        assert [n["model"] for n in b.graph["nodes"]] == ["resnet20", *([peer] if peer else [])]
        assert edges(b.graph) == expected, b.name
        if peer:  # KD's teacher is frozen, DML's peer trains
            assert Graph.from_dict(b.graph).is_frozen(2) == b.name.startswith("kd:")


@pytest.mark.parametrize("losses", [["kl"], ["kl", "cm"]])
def test_each_baseline_sits_on_its_nearest_point_of_the_space(losses: list[str]) -> None:
    """Its parameters draw a graph that trains node 1 exactly as the baseline does, but for KD's T = 2."""
    spec = spec_of(losses=losses)
    for b in candidates(spec):
        assert b.params is not None
        drawn, why = sample_graph(FixedTrial(b.params), spec)
        assert why is None
        made = copy.deepcopy(b.graph)
        for e in made["edges"]:
            e.pop("temperature", None)  # the space has no temperature: its edges use the default
        assert Graph.from_dict(drawn).training_key(1) == Graph.from_dict(made).training_key(1), b.name


def test_baselines_the_space_lacks_are_left_out_and_said_so() -> None:
    rows, notes = study_baselines(spec_of(gates=["through", "linear"]))
    assert rows == [] and len(notes) == len(EXPECTED) and all("gates lack cutoff" in n for n in notes)
    rows, notes = study_baselines(spec_of(losses=["cm"]))
    assert [b.name for b in rows] == ["independent"]
    assert sorted(n.split()[1] for n in notes) == sorted(n for n in EXPECTED if n != "independent")


def test_all_falls_back_to_independent_when_it_would_take_over_half_the_budget() -> None:
    assert len(study_baselines(spec_of(trials=10))[0]) == 5
    rows, notes = study_baselines(spec_of(trials=9))
    assert [b.name for b in rows] == ["independent"] and "more than half" in notes[-1]
    assert [b.name for b in study_baselines(spec_of(baselines="independent"))[0]] == ["independent"]
    assert study_baselines(spec_of(baselines="none")) == ([], [])


def test_the_searcher_hands_out_the_baselines_first_then_draws() -> None:
    spec = spec_of(trials=6, models=["wrn16-1"])
    study = optuna.create_study(direction="maximize")
    queue_baselines(study, spec)
    searcher = GraphSearcher(study, spec, Tally(budget=spec.trials, done_before=0), worker_config={})
    expected = study_baselines(spec)[0]
    configs = [searcher.suggest(f"t{i}") for i in range(len(expected) + 1)]
    trials = study.get_trials()
    for b, config, trial in zip(expected, configs, trials, strict=False):
        assert isinstance(config, dict) and config["graph"] == b.graph  # the hand-made graph, T = 2 included
        assert trial.user_attrs["baseline"] == b.name and trial.user_attrs["graph"] == b.graph
        assert trial.params == b.params and counted(trial)
    assert "baseline" not in trials[len(expected)].user_attrs  # then TPE draws
    # A baseline interrupted with its driver is queued again by parameters alone: it still trains the KD graph.
    kd = trials[1]
    interrupt_trial(study._storage, study.study_name, kd._trial_id, kd.number, kd.params)
    config = searcher.suggest("again")
    retry = study.get_trials()[-1]
    assert isinstance(config, dict) and config["graph"] == expected[1].graph
    assert retry.user_attrs["baseline"] == expected[1].name and retry.user_attrs["retry_of"] == kd.number


def test_a_resumed_study_queues_no_baselines_again() -> None:
    spec = spec_of(trials=6, models=["wrn16-1"])
    study = optuna.create_study(direction="maximize")
    queue_baselines(study, spec)
    queue_baselines(study, spec)
    assert len(study.get_trials(states=(TrialState.WAITING,))) == 3


@pytest.mark.slow
def test_a_search_trains_its_baselines_first_marked_and_counted(tmp_path: Path, ray_tmp: Path) -> None:
    name = f"bl-{uuid.uuid4().hex[:6]}"
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    trials = 6
    res = run_ktg(["search", "--nodes", "2", "--trials", str(trials), "--epochs", "1", "--study", name,
                   "--storage", url, "--out", str(tmp_path / "out"), "--target-model", "resnet8",
                   "--models", "resnet8", "--workers", "2", "--confirm-top", "0"], tmp_path, ktg_env(ray_tmp))
    assert res.rc == 0, res.stdout + res.stderr[-3000:]
    assert "baselines (trained first, counted in --trials): independent, kd:resnet8, dml:resnet8" in res.stdout
    spec = SearchSpec(name=name, nodes=2, trials=trials, epochs=1, target_model="resnet8", models=["resnet8"])
    expected = study_baselines(spec)[0]
    study = load(url, name)
    done = sorted(study.get_trials(), key=lambda t: t.number)
    assert sum(counted(t) for t in done) == trials  # the baselines are part of --trials
    started = sorted(done, key=lambda t: t.datetime_start)
    # Trained first: the first trials to start are the baselines, in order, each the hand-made graph.
    assert [t.user_attrs.get("baseline") for t in started[:len(expected)]] == [b.name for b in expected]
    for t, b in zip(started, expected, strict=False):
        assert t.user_attrs["graph"] == b.graph and t.state == TrialState.COMPLETE
    assert not any("baseline" in t.user_attrs for t in started[len(expected):])


@pytest.mark.slow
def test_no_baselines_and_no_confirmation_draw_as_before(tmp_path: Path, ray_tmp: Path) -> None:
    """``--baselines none --confirm-top 0``: the trials TPE alone draws on the seed, replayed here."""
    name, url, trials = f"nb-{uuid.uuid4().hex[:6]}", f"sqlite:///{tmp_path / 'studies.db'}", 5
    res = run_ktg(["search", "--nodes", "2", "--trials", str(trials), "--epochs", "1", "--study", name,
                   "--storage", url, "--out", str(tmp_path / "out"), "--target-model", "resnet8",
                   "--models", "resnet8,wrn16-1", "--workers", "1", "--baselines", "none", "--confirm-top", "0"],
                  tmp_path, ktg_env(ray_tmp))
    assert res.rc == 0, res.stdout + res.stderr[-3000:]
    study = load(url, name)
    recorded = sorted(study.get_trials(), key=lambda t: t.number)
    assert not any({"baseline", "confirm_of"} & set(t.user_attrs) for t in recorded)
    # The line a search with baselines prints first (the tmp folder in the storage URL says "baselines" too).
    assert "confirmation" not in study.user_attrs and "baselines (" not in res.stdout
    assert sum(counted(t) for t in recorded) == trials
    # One trial at a time: each draw follows from the results before it, as TPE makes it on this seed.
    spec = SearchSpec.model_validate(study.user_attrs["spec"])
    replay = open_study(optuna.storages.InMemoryStorage(), spec, resume=False)
    for t in recorded:
        again = replay.ask()
        _, why = sample_graph(again, spec)
        assert again.params == t.params, t.number
        if why:
            replay.tell(again, state=TrialState.FAIL)
            replay.enqueue_trial(repaired(again.params, spec))
            continue
        for step, value in t.intermediate_values.items():
            again.report(value, step)
        replay.tell(again, t.value if t.state == TrialState.COMPLETE else None, state=t.state)
