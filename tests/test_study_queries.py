"""The SQL reads of a study (``search.study.queries``) and the storage's study rules
(``search.study.storage``) say what Optuna's own API says about the same study.

One study per database, SQLite and a real PostgreSQL, shaped like an ASHA search
(every trial state, re-queued trials) plus the cases the rules single out: a
COMPLETE trial without a graph (never "best"), a NaN accuracy (unknown, not a
number), and a user attribute ktg does not write. The expectations are computed
here from ``optuna.load_study(...).get_trials()``.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime

import optuna
import pytest
from optuna.storages import RDBStorage
from optuna.trial import TrialState, create_trial
from sqlalchemy.orm import Session

from search.study.contract import TRIAL_ATTRS, TrialAttr
from search.study.queries import list_trials, optuna_study_id, study_figures
from search.study.storage import best_trials, finished_count, open_storage, trial_counts
from tests.optuna_studies import GRAPH, fill_study
from tests.postgres import postgres_url  # noqa: F401

NAME = "queries.mixed"
STATES = ("complete", "pruned", "fail", "running", "waiting")
# The attribute names ktg writes, spelled out: they are read by plain Optuna and SQL users too.
KTG_ATTRS = {"graph", "seed", "epochs_done", "skipped", "interrupted", "error", "retries", "continued_from",
             "repair_of", "retry_of", "baseline", "confirm_of"}


def test_the_contract_names_every_attribute_ktg_writes() -> None:
    assert {str(a) for a in TRIAL_ATTRS} == KTG_ATTRS


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def storage(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RDBStorage]:
    """A storage holding the study ``NAME``."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('queries') / 'studies.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
    storage = open_storage(url)
    study = fill_study(storage, NAME, 120, epochs=12, seed=5)
    study.add_trial(create_trial(state=TrialState.COMPLETE, value=0.999, intermediate_values={12: 0.999},
                                 user_attrs={"note": "made by hand, no graph"}))
    study.add_trial(create_trial(state=TrialState.FAIL, intermediate_values={1: 0.25, 2: math.nan},
                                 user_attrs={TrialAttr.GRAPH: GRAPH, TrialAttr.SEED: 0, TrialAttr.EPOCHS: 2,
                                             TrialAttr.ERROR: "NonFiniteLoss: node 1: loss became NaN or inf in epoch 2"}))
    study.add_trial(create_trial(state=TrialState.PRUNED, value=0.5, intermediate_values={1: 0.5},
                                 user_attrs={TrialAttr.GRAPH: GRAPH, TrialAttr.SKIPPED: "frozen target", "retry_of": 3}))
    yield storage
    storage.engine.dispose()


def optuna_study(storage: RDBStorage) -> optuna.Study:
    return optuna.load_study(study_name=NAME, storage=storage)


def session(storage: RDBStorage) -> Session:
    """A session on the very engine Optuna writes through."""
    return Session(storage.engine)


def known(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def test_counts_finished_and_best_match_optuna(storage: RDBStorage) -> None:
    study = optuna_study(storage)
    trials = study.get_trials()
    by_state = Counter(t.state.name.lower() for t in trials if not t.user_attrs.get(TrialAttr.INTERRUPTED))
    expected_counts = {name: by_state[name] for name in STATES}
    assert expected_counts["waiting"] > 0 and len(trials) > sum(expected_counts.values())  # re-queued ones exist

    with session(storage) as s:
        figures = study_figures(s, NAME)
    assert figures.counts == expected_counts == trial_counts(study)
    finished = expected_counts["complete"] + expected_counts["pruned"] + expected_counts["fail"]
    assert figures.finished == finished == finished_count(study)

    with_graph = [t for t in trials if TrialAttr.GRAPH in t.user_attrs and known(t.value) is not None]
    complete = sorted((t for t in with_graph if t.state == TrialState.COMPLETE), key=lambda t: (-t.value, t.number))
    assert study.best_value == 0.999 > complete[0].value  # Optuna's best has no graph: never ktg's best
    assert figures.best_complete_val_acc == complete[0].value
    assert [t.number for t in best_trials(study, 5)] == [t.number for t in complete[:5]]
    assert figures.best_val_acc == max(t.value for t in with_graph
                                       if t.state in (TrialState.COMPLETE, TrialState.PRUNED))


def test_trial_pages_match_optuna(storage: RDBStorage) -> None:
    trials = optuna_study(storage).get_trials()
    records = []
    with session(storage) as s:
        while True:
            total, page = list_trials(s, NAME, state=None, limit=37, offset=len(records))
            records += page
            if not page:
                break
    assert total == len(trials) and [r.number for r in records] == [t.number for t in trials]
    for record, trial in zip(records, trials, strict=True):
        assert record.state == trial.state.name.lower()
        assert record.value == known(trial.value)
        assert record.history == [(step, known(v)) for step, v in sorted(trial.intermediate_values.items())]
        assert record.attrs == {k: v for k, v in trial.user_attrs.items() if k in KTG_ATTRS}
        assert record.started_at == _utc(trial.datetime_start)
        assert record.completed_at == _utc(trial.datetime_complete)
    assert any(v is None for r in records for _, v in r.history)  # the NaN epoch reads as unknown


@pytest.mark.parametrize("state", STATES)
def test_the_state_filter_matches_optuna(storage: RDBStorage, state: str) -> None:
    expected = [t.number for t in optuna_study(storage).get_trials() if t.state.name.lower() == state]
    with session(storage) as s:
        total, page = list_trials(s, NAME, state=state, limit=500, offset=0)
    assert total == len(expected) and [r.number for r in page] == expected


def test_a_study_not_created_yet_reads_as_empty(storage: RDBStorage) -> None:
    with session(storage) as s:
        assert optuna_study_id(s, "queries.later") is None
        figures = study_figures(s, "queries.later")
        assert figures.counts == dict.fromkeys(STATES, 0) and figures.finished == 0
        assert figures.best_val_acc is None and figures.best_complete_val_acc is None
        assert list_trials(s, "queries.later", state=None, limit=10, offset=0) == (0, [])


def _utc(local: datetime | None) -> datetime | None:
    """Optuna hands datetimes back naive, in local time."""
    return local.astimezone(UTC) if local is not None else None
