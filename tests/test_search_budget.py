"""``--trials N`` means N trained graphs: untrainable draws are recorded but never counted.

A draw whose target would be frozen is FAIL with ``skipped`` and does not use up
the budget, on a first run and on ``--resume``, in the search's own count, in
``search.study.storage`` and in the API's SQL counts. A space with nothing trainable
is refused up front, and an untrainable draw is followed by its repair, so a
sampler stuck on one never loops.
"""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from pydantic import ValidationError
from sqlalchemy.orm import Session

from search.spec import SearchSpec, spec_error_lines
from search.study.contract import counted
from search.study.queries import study_figures
from search.study.storage import finished_count, open_storage, trial_counts
from search.tune.searcher import GraphSearcher, Tally
from tests.search_helpers import AS_BEFORE, FINAL, ktg_env, load, run_ktg

FIRST_TRIALS, RESUMED_TRIALS = 6, 9


def trained(trials: list[optuna.trial.FrozenTrial]) -> list[optuna.trial.FrozenTrial]:
    """Finished trials that trained (not skipped, not interrupted), computed from the attributes."""
    return [t for t in trials if t.state in FINAL and "skipped" not in t.user_attrs
            and not t.user_attrs.get("interrupted")]


def test_only_cutoff_gates_are_refused_by_field() -> None:
    with pytest.raises(ValidationError) as caught:
        SearchSpec(name="s", nodes=2, trials=2, gates=["cutoff"])
    (line,) = spec_error_lines(caught.value)
    assert line.startswith("gates: got only 'cutoff'") and "allowed: add one of through, linear, correct" in line
    SearchSpec(name="s", nodes=2, trials=2, gates=["cutoff", "through"])  # a mix is fine


def test_an_untrainable_draw_is_followed_by_its_repair() -> None:
    """TPE ignores FAIL trials and can draw the same frozen graph forever; the repair breaks that loop."""
    spec = SearchSpec(name="s", nodes=2, trials=3, gates=["cutoff", "linear", "through"])
    study = optuna.create_study(direction="maximize")
    frozen = {"model_2": spec.models[0], "gate_0_1": "cutoff", "gate_2_1": "cutoff",
              "gate_0_2": "through", "gate_1_2": "cutoff"}
    study.enqueue_trial(frozen)  # the draw a stuck posterior keeps making
    searcher = GraphSearcher(study, spec, Tally(budget=3, done_before=0), worker_config={})
    config = searcher.suggest("t0")
    assert isinstance(config, dict)
    first, second = study.get_trials()
    assert first.state == TrialState.FAIL and "frozen" in first.user_attrs["skipped"] and not counted(first)
    # One parameter changed: the target's label edge, opened with the first open gate listed.
    assert second.params == {**frozen, "gate_0_1": "linear"} and second.user_attrs["repair_of"] == first.number
    assert config["trial_number"] == second.number
    assert [(e["source"], e["target"], e["gate"]) for e in config["graph"]["edges"]] == [(0, 1, "linear"),
                                                                                        (0, 2, "through")]
    assert searcher.tally.skipped == 1 and searcher.issued == 1


@pytest.mark.slow
def test_budget_counts_trained_graphs_on_run_and_resume(tmp_path: Path, ray_tmp: Path) -> None:
    """2 nodes, gates through/cutoff: a quarter of the draws freeze node 1, yet N trials train."""
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    common = ["--study", "budget", "--storage", url, "--out", str(tmp_path / "out"), "--workers", "2"]
    first = run_ktg(["search", "--nodes", "2", "--trials", str(FIRST_TRIALS), "--epochs", "1",
                     "--target-model", "resnet20", "--models", "resnet20", "--gates", "through,cutoff",
                     *AS_BEFORE, *common], tmp_path, ktg_env(ray_tmp))
    assert first.rc == 0, first.stdout + first.stderr[-4000:]
    after_first = load(url, "budget").get_trials()
    assert len(trained(after_first)) == FIRST_TRIALS
    skipped = [t for t in after_first if "skipped" in t.user_attrs]
    assert skipped, "no untrainable draw: pick a seed or space where one is drawn"
    assert all(t.state == TrialState.FAIL for t in skipped)

    again = run_ktg(["search", "--resume", "--trials", str(RESUMED_TRIALS), *common], tmp_path, ktg_env(ray_tmp))
    assert again.rc == 0, again.stdout + again.stderr[-4000:]
    study = load(url, "budget")
    trials = study.get_trials()
    assert len(trained(trials)) == RESUMED_TRIALS
    assert all(t.state in FINAL for t in trials)
    # The same count everywhere it is read: the storage rules and the API's SQL.
    assert finished_count(study) == RESUMED_TRIALS == sum(1 for t in trials if counted(t))
    assert trial_counts(study)["fail"] == sum(1 for t in trained(trials) if t.state == TrialState.FAIL)
    storage = open_storage(url)
    with Session(storage.engine) as session:
        figures = study_figures(session, "budget")
    assert figures.finished == RESUMED_TRIALS and figures.counts == trial_counts(study)
