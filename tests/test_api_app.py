"""The API app in-process on a real PostgreSQL, with no Ray: the study tables' schema,
the status reads against ``search.study.storage``'s own helpers, listing, launching
without Ray, cancelling, and the embedded SQLite default.

Ray is configured at a closed port, so launching answers 503 and no search ever
starts here; the end-to-end tests with a real Ray are in ``test_api.py``, the
fuzzing of every endpoint in ``test_api_fuzz.py``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import optuna
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from optuna.trial import TrialState
from sqlalchemy import select, text

from api.app import create_app
from api.db import SCHEMA_VERSION, SchemaError, SchemaVersionRow, StudyRow, init_schema, make_engine
from api.settings import Settings
from search.spec import SearchSpec
from search.study.contract import TrialAttr
from search.study.queries import study_figures
from search.study.storage import best_trials, open_storage, trial_counts
from tests.api_fixtures import (  # noqa: F401
    ALICE,
    BOB,
    TOKENS,
    app_fixture,
    app_settings_fixture,
    client_fixture,
    closed_port,
    filled_fixture,
    register,
)
from tests.optuna_studies import fill_study
from tests.postgres import postgres_url  # noqa: F401

# -- the study tables' schema ---------------------------------------------------------------

def test_schema_is_versioned_and_refuses_a_newer_one(client: TestClient, app_settings: Settings) -> None:
    engine = make_engine(app_settings.storage)
    try:
        assert init_schema(engine) == SCHEMA_VERSION  # idempotent at every start
        with engine.begin() as conn:
            assert conn.execute(select(SchemaVersionRow.version)).scalar_one() == SCHEMA_VERSION
            conn.execute(text("UPDATE ktg_api_schema_version SET version = :v"), {"v": SCHEMA_VERSION + 1})
        with pytest.raises(SchemaError, match="newer than this API"):
            init_schema(engine)
    finally:
        with engine.begin() as conn:
            conn.execute(text("UPDATE ktg_api_schema_version SET version = :v"), {"v": SCHEMA_VERSION})
        engine.dispose()


# -- status reads agree with search.study.storage -----------------------------------------------------

def test_status_counts_and_best_match_the_storage_helpers(client: TestClient, app: FastAPI,
                                                          filled: tuple[str, optuna.Study]) -> None:
    study_id, study = filled
    body = client.get(f"/v1/studies/{study_id}", headers=ALICE).json()
    assert body["trials"] == trial_counts(study)  # interrupted ones left out, their re-queued copies waiting
    counts = trial_counts(study)
    finished = counts["complete"] + counts["pruned"] + counts["fail"]
    assert body["finished"] == finished and body["budget"] == 400
    assert body["progress"] == pytest.approx(finished / 400)
    assert body["best_complete_val_acc"] == best_trials(study, 1)[0].value
    done = [t.value for t in study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED)) if t.value is not None]
    assert body["best_val_acc"] == max(done)
    with app.state.sessions() as session:
        figures = study_figures(session, "alice.mixed")
    assert figures.counts == trial_counts(study)


def test_trials_pages_cover_the_study_in_order(client: TestClient, filled: tuple[str, optuna.Study]) -> None:
    study_id, study = filled
    seen: list[dict[str, Any]] = []
    offset = 0
    while True:
        page = client.get(f"/v1/studies/{study_id}/trials", params={"limit": 128, "offset": offset},
                          headers=ALICE).json()
        seen += page["items"]
        offset += 128
        if offset >= page["total"]:
            break
    trials = study.get_trials()
    assert [t["number"] for t in seen] == [t.number for t in trials]
    for got, trial in zip(seen, trials, strict=True):
        assert got["state"] == trial.state.name.lower()
        assert got["val_acc"] == trial.value
        assert [(h["epoch"], h["val_acc"]) for h in got["history"]] == sorted(trial.intermediate_values.items())
        assert got["interrupted"] == bool(trial.user_attrs.get(TrialAttr.INTERRUPTED))
        assert got["error"] == trial.user_attrs.get(TrialAttr.ERROR)
        assert got["retries"] == trial.user_attrs.get(TrialAttr.RETRIES, 0)
        assert got["continued_from"] == trial.user_attrs.get(TrialAttr.CONTINUED_FROM)
    assert any(t["retries"] for t in seen) and any(t["continued_from"] is not None for t in seen)
    pruned = client.get(f"/v1/studies/{study_id}/trials", params={"state": "pruned", "limit": 500},
                        headers=ALICE).json()
    assert pruned["total"] == len(study.get_trials(states=(TrialState.PRUNED,)))
    assert {t["state"] for t in pruned["items"]} == {"pruned"}


def test_best_graphs_are_the_top_complete_trials(client: TestClient, filled: tuple[str, optuna.Study]) -> None:
    study_id, study = filled
    best = client.get(f"/v1/studies/{study_id}/best", params={"k": 3}, headers=ALICE).json()
    expected = best_trials(study, 3)
    assert [b["trial"] for b in best["items"]] == [t.number for t in expected]
    assert [b["rank"] for b in best["items"]] == [1, 2, 3]
    top = best["items"][0]["graph"]
    assert top["format"] == "ktg-graph/1" and top["meta"]["study"] == "alice.mixed"
    assert top["meta"]["val_acc"] == expected[0].value and top["meta"]["trial"] == expected[0].number
    bare = client.get(f"/v1/studies/{study_id}/best/1.json", headers=ALICE)
    assert bare.json() == top
    svg = client.get(f"/v1/studies/{study_id}/best/2.svg", headers=ALICE)
    assert svg.status_code == 200 and svg.headers["content-type"].startswith("image/svg+xml")
    import xml.etree.ElementTree as ET

    assert ET.fromstring(svg.text).tag.endswith("svg")
    missing = client.get(f"/v1/studies/{study_id}/best/100.svg", headers=ALICE)
    assert missing.status_code == 404 and "complete trial" in missing.json()["detail"]


def test_a_study_not_started_yet_reads_as_empty(client: TestClient, app: FastAPI, app_settings: Settings) -> None:
    spec = SearchSpec(name="later", nodes=3, trials=10)
    study_id = register(app.state.sessions, "alice", spec, "queued", app_settings.data_dir)
    body = client.get(f"/v1/studies/{study_id}", headers=ALICE).json()
    assert body["state"] == "queued" and body["finished"] == 0 and body["progress"] == 0
    assert body["best_val_acc"] is None and body["trials"] == dict.fromkeys(body["trials"], 0)
    assert client.get(f"/v1/studies/{study_id}/best", headers=ALICE).json()["items"] == []
    assert client.get(f"/v1/studies/{study_id}/trials", headers=ALICE).json() == {
        "items": [], "total": 0, "limit": 100, "offset": 0}


def test_list_is_per_tenant_paginated_and_filterable(client: TestClient, app: FastAPI,
                                                     app_settings: Settings) -> None:
    for i in range(5):
        register(app.state.sessions, "bob", SearchSpec(name=f"b{i}", nodes=2, trials=1),
                 "failed" if i % 2 else "succeeded", app_settings.data_dir)
    first = client.get("/v1/studies", params={"limit": 2}, headers=BOB).json()
    rest = client.get("/v1/studies", params={"limit": 10, "offset": 2}, headers=BOB).json()
    assert first["total"] == 5 and len(first["items"]) == 2 and len(rest["items"]) == 3
    names = [s["name"] for s in first["items"] + rest["items"]]
    assert sorted(names) == [f"b{i}" for i in range(5)] and names == ["b4", "b3", "b2", "b1", "b0"]
    failed = client.get("/v1/studies", params={"state": "failed"}, headers=BOB).json()
    assert sorted(s["name"] for s in failed["items"]) == ["b1", "b3"]
    alice = client.get("/v1/studies", params={"limit": 200}, headers=ALICE).json()
    assert not {s["name"] for s in alice["items"]} & set(names)


def test_launch_without_ray_is_503_and_leaves_nothing_behind(client: TestClient, app: FastAPI) -> None:
    r = client.post("/v1/studies", json={"name": "no-ray", "nodes": 2, "trials": 1}, headers=ALICE)
    assert r.status_code == 503 and r.headers["retry-after"]
    assert "Ray" in r.json()["detail"]
    with app.state.sessions() as session:
        assert session.scalars(select(StudyRow).where(StudyRow.name == "no-ray")).first() is None
    ready = client.get("/readyz")
    assert ready.status_code == 503 and ready.json() == {"status": "not ready", "database": "ok",
                                                          "ray": "unreachable"}
    assert client.get("/healthz").json() == {"status": "ok"}


def test_a_name_taken_in_the_storage_outside_the_api_is_409(client: TestClient, app_settings: Settings) -> None:
    optuna.create_study(study_name="alice.from-cli", storage=open_storage(app_settings.storage))
    r = client.post("/v1/studies", json={"name": "from-cli", "nodes": 2, "trials": 1}, headers=ALICE)
    assert r.status_code == 409 and "outside this API" in r.json()["detail"]
    # the same name is free for another tenant: Optuna names are per tenant
    assert client.post("/v1/studies", json={"name": "from-cli", "nodes": 2, "trials": 1},
                       headers=BOB).status_code == 503  # (no Ray here)


def test_deleting_an_ended_study_changes_nothing(client: TestClient, filled: tuple[str, optuna.Study]) -> None:
    study_id, _ = filled
    before = client.get(f"/v1/studies/{study_id}", headers=ALICE).json()
    r = client.delete(f"/v1/studies/{study_id}", headers=ALICE)
    assert r.status_code == 200 and r.json()["state"] == "succeeded"
    assert r.json()["trials"] == before["trials"]


def test_cancel_before_ray_ever_saw_it(client: TestClient, app: FastAPI, app_settings: Settings) -> None:
    study_id = register(app.state.sessions, "alice", SearchSpec(name="never", nodes=2, trials=5), "queued",
                        app_settings.data_dir)
    first = client.delete(f"/v1/studies/{study_id}", headers=ALICE)
    assert first.status_code == 202 and first.json()["state"] == "cancelled"
    assert first.json()["finished_at"] is not None
    again = client.delete(f"/v1/studies/{study_id}", headers=ALICE)
    assert again.status_code == 200 and again.json()["state"] == "cancelled"
    with app.state.sessions() as session:
        row = session.get(StudyRow, study_id)
        assert row is not None and row.cancel_requested_at is not None
        assert row.cancel_requested_at <= datetime.now(UTC)


def test_the_embedded_sqlite_default_works_too(tmp_path: Path) -> None:
    """`ktg serve` with no storage configured keeps studies in a SQLite file."""
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    settings_ = Settings(storage=url, tokens=TOKENS, data_dir=tmp_path, ray_address=f"http://127.0.0.1:{closed_port()}",
                         reconcile_interval_s=0)
    app = create_app(settings_)
    with TestClient(app) as c:
        study = fill_study(open_storage(url), "alice.lite", 40, epochs=8, seed=3)
        study_id = register(app.state.sessions, "alice", SearchSpec(name="lite", nodes=2, trials=40), "running",
                            tmp_path)
        body = c.get(f"/v1/studies/{study_id}", headers=ALICE).json()
        assert body["trials"] == trial_counts(study) and body["created_at"].endswith("Z")
        assert c.get(f"/v1/studies/{study_id}/best", headers=ALICE).json()["items"][0]["trial"] == \
            best_trials(study, 1)[0].number
        assert c.post("/v1/studies", json={"name": "x", "nodes": 2, "trials": 1}, headers=ALICE).status_code == 503


def test_train_size_and_grace_epochs_are_spec_fields_over_http(client: TestClient) -> None:
    """The API's body is the search spec: the new fields validate there, and name themselves."""
    schema = client.get("/openapi.json").json()["components"]["schemas"]["SearchSpec"]["properties"]
    assert {"train_size", "grace_epochs"} <= set(schema)
    bad = client.post("/v1/studies", json={"name": "small", "nodes": 2, "trials": 1, "train_size": 1,
                                           "grace_epochs": 0}, headers=ALICE)
    assert bad.status_code == 422
    assert "train_size" in bad.json()["detail"] and "grace_epochs" in bad.json()["detail"]
    ok = client.post("/v1/studies", json={"name": "small", "nodes": 2, "trials": 1, "train_size": 500,
                                          "grace_epochs": 3, "dataset": "fashionmnist"}, headers=ALICE)
    assert ok.status_code == 503  # valid: it got as far as launching (no Ray here)
