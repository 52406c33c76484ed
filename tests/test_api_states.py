"""True states and what tenants read, in-process on a real PostgreSQL with Ray at a closed port.

- The quota: admissions are first in first out and never exceed ``KTG_MAX_RUNNING_STUDIES``,
  even when several API replicas admit at once; a study past the quota is accepted as
  ``queued`` without Ray being asked anything.
- While Ray does not answer, a status says so.
- ``/best``'s one query follows the rule (COMPLETE, finite value, a graph; best value first,
  ties by number), checked against Optuna's own trials.
- The trials a cancelled study's driver re-queued are closed, and never counted.
- Failure texts reach tenants in their own terms.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta
from typing import Any

import optuna
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from optuna.trial import TrialState, create_trial
from sqlalchemy import update
from sqlalchemy.orm import Session

from api.db import StudyRow, utcnow
from api.lifecycle import StudyLifecycle, new_row
from api.settings import Settings
from api.tenant_text import MAX_CHARS, SERVER_PATH, failure_cause, tenant_text
from search.spec import SearchSpec
from search.study.contract import TrialAttr
from search.study.queries import first_trial_error, study_figures, top_trials
from search.study.resume import close_unfinished_trials
from search.study.storage import best_trials, open_storage
from tests.api_fixtures import (  # noqa: F401
    ALICE,
    app_fixture,
    app_settings_fixture,
    client_fixture,
    register,
)
from tests.optuna_studies import GRAPH
from tests.postgres import postgres_url  # noqa: F401


@pytest.fixture(name="retired", autouse=True)
def retired_fixture(client: TestClient, app: FastAPI) -> Iterator[None]:
    """The PostgreSQL server is shared by the session: leave no study active for the
    servers of later modules to admit, submit or count against a tenant's quota."""
    yield
    with app.state.sessions.begin() as session:
        session.execute(update(StudyRow).where(StudyRow.state.in_(("queued", "running")))
                        .values(state="cancelled", job_status="STOPPED"))


def spec(name: str, trials: int = 2) -> SearchSpec:
    return SearchSpec(name=name, nodes=2, trials=trials, epochs=2, models=["resnet20"], target_model="resnet20")


def queue_rows(app: FastAPI, tenant: str, names: list[str]) -> list[str]:
    """Waiting studies, created one second apart in this order."""
    start = utcnow() - timedelta(hours=1)
    ids = []
    with app.state.sessions.begin() as session:
        for i, name in enumerate(names):
            row = new_row(tenant, spec(name), app.state.settings.studies_dir)
            row.created_at = start + timedelta(seconds=i)
            session.add(row)
            ids.append(row.id)
    return ids


def test_admission_is_fifo_and_within_the_quota_across_replicas(client: TestClient, app: FastAPI) -> None:
    ids = queue_rows(app, "dave", [f"d{i}" for i in range(6)])
    base: StudyLifecycle = app.state.lifecycle
    # Four "replicas": each its own lifecycle (its own in-process lock), one database.
    replicas = [replace(base, max_running=2) for _ in range(4)]
    admitted: list[str] = []
    gate = threading.Barrier(len(replicas))

    def admit(lifecycle: StudyLifecycle) -> None:
        gate.wait()
        admitted.extend(row.id for row in lifecycle.admit("dave"))

    threads = [threading.Thread(target=admit, args=(r,)) for r in replicas]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(admitted) == sorted(ids[:2])  # the two oldest, once each

    with app.state.sessions.begin() as session:  # one of them ends: the next oldest gets its slot
        session.execute(update(StudyRow).where(StudyRow.id == ids[0]).values(state="succeeded"))
    assert [r.id for r in replicas[0].admit("dave")] == [ids[2]]
    assert replicas[1].admit("dave") == []
    with app.state.sessions() as session:
        waiting = session.get(StudyRow, ids[3])
        assert waiting is not None and waiting.state == "queued" and "KTG_MAX_RUNNING_STUDIES" in waiting.message


def test_a_study_past_the_quota_is_queued_without_asking_ray(client: TestClient, app: FastAPI,
                                                             app_settings: Settings) -> None:
    for name in ("full-1", "full-2"):  # alice's two slots, taken
        study_id = register(app.state.sessions, "alice", spec(name), "running", app_settings.data_dir)
        with app.state.sessions.begin() as session:
            session.execute(update(StudyRow).where(StudyRow.id == study_id).values(admitted_at=utcnow()))
    # Ray is at a closed port: a submission would answer 503.
    r = client.post("/v1/studies", headers=ALICE, json={"name": "third", **spec("x").model_dump(exclude={"name"})})
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["state"] == "queued" and body["ray"]["status"] is None and "waiting" in body["message"]


def test_a_status_says_when_ray_does_not_answer(client: TestClient, app: FastAPI, app_settings: Settings) -> None:
    study_id = register(app.state.sessions, "alice", spec("silent"), "running", app_settings.data_dir)
    with app.state.sessions.begin() as session:
        session.execute(update(StudyRow).where(StudyRow.id == study_id)
                        .values(submitted_at=utcnow(), admitted_at=utcnow(), job_status="RUNNING"))
    body = client.get(f"/v1/studies/{study_id}", headers=ALICE).json()
    assert body["state"] == "running" and body["ray"]["unreachable_since"] is not None
    assert "has not answered since" in body["message"]

    finished = register(app.state.sessions, "alice", spec("over"), "succeeded", app_settings.data_dir)
    done = client.get(f"/v1/studies/{finished}", headers=ALICE).json()  # its state is final: Ray is not needed
    assert done["ray"]["unreachable_since"] is None and done["message"] is None


def test_best_is_the_rule_in_one_query(client: TestClient, app: FastAPI, app_settings: Settings) -> None:
    storage = open_storage(app_settings.storage)
    study = optuna.create_study(study_name="alice.ranked", storage=storage, direction="maximize")
    graph = {TrialAttr.GRAPH: GRAPH}
    cases: list[tuple[TrialState, float | None, dict[str, Any]]] = [
        (TrialState.COMPLETE, 0.5, graph), (TrialState.COMPLETE, 0.9, graph), (TrialState.COMPLETE, 0.9, graph),
        (TrialState.COMPLETE, 0.95, {}),  # no graph: not a graph file
        (TrialState.PRUNED, 0.99, graph),  # not trained to the full budget
        (TrialState.COMPLETE, math.inf, graph),  # not a finite value
        (TrialState.FAIL, None, graph), (TrialState.COMPLETE, 0.7, graph),
    ]
    for state, value, attrs in cases:
        study.add_trial(create_trial(state=state, value=value, user_attrs=attrs, intermediate_values={1: 0.1}))
    expected = sorted([t for t in study.get_trials() if t.state == TrialState.COMPLETE and t.value is not None
                       and math.isfinite(t.value) and TrialAttr.GRAPH in t.user_attrs],
                      key=lambda t: (-t.value, t.number))
    assert [t.number for t in expected] == [1, 2, 7, 0]
    with Session(storage.engine) as session:
        ranked = top_trials(session, "alice.ranked", 10)
    assert [(t.number, t.value) for t in ranked] == [(t.number, t.value) for t in expected]
    assert [t.number for t in best_trials(study, 3)] == [1, 2, 7]  # ktg export reads the same

    study_id = register(app.state.sessions, "alice", spec("ranked"), "succeeded", app_settings.data_dir)
    best = client.get(f"/v1/studies/{study_id}/best", headers=ALICE, params={"k": 10}).json()["items"]
    assert [(b["rank"], b["trial"], b["val_acc"]) for b in best] == [(1, 1, 0.9), (2, 2, 0.9), (3, 7, 0.7), (4, 0, 0.5)]
    assert best[0]["graph"]["meta"]["trial"] == 1
    assert client.get(f"/v1/studies/{study_id}/best/5.json", headers=ALICE).status_code == 404


def test_requeued_trials_of_a_cancelled_study_are_closed_and_not_counted(app_settings: Settings) -> None:
    storage = open_storage(app_settings.storage)
    study = optuna.create_study(study_name="alice.requeued", storage=storage, direction="maximize")
    study.add_trial(create_trial(state=TrialState.COMPLETE, value=0.5, user_attrs={TrialAttr.GRAPH: GRAPH}))
    study.enqueue_trial({"x": 1}, user_attrs={TrialAttr.RETRY_OF: 0})
    study.enqueue_trial({"x": 2})
    study.ask()  # takes the first queued one: RUNNING, its driver then killed
    assert close_unfinished_trials(storage, "alice.requeued", "cancelled") == 2
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.FAIL]
    assert [t.user_attrs.get(TrialAttr.INTERRUPTED) for t in trials] == [None, True, None]
    assert [t.user_attrs.get(TrialAttr.SKIPPED) for t in trials] == [None, None, "cancelled"]
    with Session(storage.engine) as session:
        counts = study_figures(session, "alice.requeued").counts
    assert counts == {"complete": 1, "pruned": 0, "fail": 0, "running": 0, "waiting": 0}
    assert close_unfinished_trials(storage, "alice.requeued", "cancelled") == 0
    assert close_unfinished_trials(storage, "alice.no-such-study", "cancelled") == 0


def test_the_first_counted_failure_names_a_study_that_trained_nothing(app_settings: Settings) -> None:
    storage = open_storage(app_settings.storage)
    study = optuna.create_study(study_name="alice.untrained", storage=storage, direction="maximize")
    for attrs in ({TrialAttr.SKIPPED: "untrainable draw"}, {TrialAttr.INTERRUPTED: True, TrialAttr.ERROR: "lost"},
                  {TrialAttr.ERROR: "MemoryError: out of memory"}, {TrialAttr.ERROR: "NonFiniteLoss: NaN"}):
        study.add_trial(create_trial(state=TrialState.FAIL, user_attrs=attrs))
    with Session(storage.engine) as session:
        assert first_trial_error(session, "alice.untrained") == "MemoryError: out of memory"
        assert first_trial_error(session, "alice.no-such-study") is None


def test_failure_texts_are_in_the_tenants_terms() -> None:
    log = "\n".join([
        "2026-12-03 study alice.x: 2 nodes",
        "Traceback (most recent call last):",
        '  File "/opt/venv/lib/python3.11/site-packages/ktg/data/cifar.py", line 40, in load',
        "ktg search: error: data_dir: no CIFAR batches in /srv/datasets/tenants/alice/cifar/train: expected data_batch_1",
    ])
    cause = failure_cause(log)
    assert cause is not None and cause.startswith("data_dir: no CIFAR batches")
    assert tenant_text(cause, "tenants/alice/cifar") == (
        "data_dir: no CIFAR batches in tenants/alice/cifar/train: expected data_batch_1")
    assert tenant_text(cause, None) == f"data_dir: no CIFAR batches in {SERVER_PATH}: expected data_batch_1"
    traceback_only = "Traceback (most recent call last):\n  File \"/x/y.py\"\nOSError: [Errno 36] File name too long: '/srv/" + "d" * 300 + "'"
    shown = tenant_text(failure_cause(traceback_only) or "", "d" * 300)
    assert shown.startswith("OSError: [Errno 36] File name too long") and "/srv" not in shown and len(shown) <= MAX_CHARS
    entrypoint = "Job failed: ktg search --spec-json '{\"name\": \"a\"}' --out /data/studies/1 --resume"
    assert tenant_text(entrypoint) == "Job failed: the search job"
    assert failure_cause("nothing recognisable here\n") is None
