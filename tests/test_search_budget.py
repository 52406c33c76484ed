"""``--trials N`` means N trained graphs: untrainable draws are recorded but never counted.

A draw whose target would be frozen is FAIL with ``skipped`` and does not use up
the budget, on a first run and on ``--resume``, in the search's own count, in
``search.storage`` and in the API's SQL counts. A space with nothing trainable
is refused up front, and a run of untrainable draws ends the search with a clear
error instead of an endless loop.
"""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from pydantic import ValidationError
from sqlalchemy.orm import Session

from ktg.errors import KtgError
from search.searcher import MAX_SKIPS_IN_A_ROW, GraphSearcher, Tally
from search.spec import SearchSpec, spec_error_lines
from search.storage import counted, finished_count, open_storage, trial_counts
from search.study_queries import study_figures
from tests.search_helpers import FINAL, ktg_env, load, run_ktg

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


def test_untrainable_draws_in_a_row_stop_the_searcher() -> None:
    """No endless loop: the searcher stops drawing and says why (what the driver raises)."""
    spec = SearchSpec.model_construct(**{**SearchSpec(name="s", nodes=2, trials=3).model_dump(), "gates": ["cutoff"]})
    study = optuna.create_study(direction="maximize")
    searcher = GraphSearcher(study, spec, Tally(budget=3, done_before=0), worker_config={})
    assert searcher.suggest("t0") == GraphSearcher.FINISHED
    assert isinstance(searcher.error, KtgError)
    assert f"{MAX_SKIPS_IN_A_ROW} graphs in a row could not be trained" in str(searcher.error)
    trials = study.get_trials()
    assert len(trials) == MAX_SKIPS_IN_A_ROW
    assert all(t.state == TrialState.FAIL and "frozen" in t.user_attrs["skipped"] for t in trials)
    assert not any(counted(t) for t in trials) and finished_count(study) == 0
    assert searcher.tally.skipped == MAX_SKIPS_IN_A_ROW and searcher.tally.finished == 0


@pytest.mark.slow
def test_budget_counts_trained_graphs_on_run_and_resume(tmp_path: Path, ray_tmp: Path) -> None:
    """2 nodes, gates through/cutoff: a quarter of the draws freeze node 1, yet N trials train."""
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    common = ["--study", "budget", "--storage", url, "--out", str(tmp_path / "out"), "--workers", "2"]
    first = run_ktg(["search", "--nodes", "2", "--trials", str(FIRST_TRIALS), "--epochs", "1",
                     "--target-model", "resnet20", "--models", "resnet20", "--gates", "through,cutoff",
                     *common], tmp_path, ktg_env(ray_tmp))
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
