"""The API app in-process on a real PostgreSQL, with Ray configured at a closed port
(launching answers 503, no search ever starts): fixtures and helpers shared by
``test_api_app.py`` and ``test_api_fuzz.py``.

A module uses the fixtures (``app_settings``, ``app``, ``client``, ``filled``) by
importing their functions, with ``postgres_url``; each importing module gets its own
instances (and its own PostgreSQL server). The functions are named ``*_fixture`` so
that importing them does not shadow the test parameters of the same name.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from api.app import create_app
from api.lifecycle import new_row
from api.settings import Settings
from search.spec import SearchSpec
from search.study.storage import open_storage
from tests.optuna_studies import fill_study
from tests.waiting import free_port

TOKENS = {"token-alice-0123456789": "alice", "token-bob-0123456789": "bob"}
ALICE = {"Authorization": "Bearer token-alice-0123456789"}
BOB = {"Authorization": "Bearer token-bob-0123456789"}


closed_port = free_port  # Ray "configured" at a port nothing listens on: launching answers 503


def register(sessions: Any, tenant: str, spec: SearchSpec, state: str, data_dir: Path) -> str:
    """A study row for a study created outside Ray (as if its job had run)."""
    row = new_row(tenant, spec, data_dir / "studies")
    row.state = state
    with sessions.begin() as session:
        session.add(row)
    return row.id


@pytest.fixture(scope="module", name="app_settings")
def app_settings_fixture(postgres_url: str, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return Settings(storage=postgres_url, tokens=TOKENS, data_dir=tmp_path_factory.mktemp("api-app"),
                    ray_address=f"http://127.0.0.1:{closed_port()}", ray_timeout_s=2.0, reconcile_interval_s=0)


@pytest.fixture(scope="module", name="app")
def app_fixture(app_settings: Settings) -> FastAPI:
    return create_app(app_settings)


@pytest.fixture(scope="module", name="client")
def client_fixture(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app, raise_server_exceptions=True) as c:  # runs the lifespan: schema, Optuna tables
        yield c


@pytest.fixture(scope="module", name="filled")
def filled_fixture(client: TestClient, app: FastAPI, app_settings: Settings) -> tuple[str, optuna.Study]:
    """Alice's 'mixed' study: 300 trials of every state, registered as running."""
    storage = open_storage(app_settings.storage)
    spec = SearchSpec(name="mixed", nodes=2, trials=400, epochs=20, models=["resnet20"], target_model="resnet20")
    study = fill_study(storage, "alice.mixed", 300, epochs=20, seed=1)
    return register(app.state.sessions, "alice", spec, "succeeded", app_settings.data_dir), study
