"""``ktg admin``, as an operator runs it on the service's machine: the service's environment,
a real PostgreSQL, the real command in a subprocess. No Ray runs here: a cancel is recorded
in the database, which is what the service's reconciler acts on (it stops the Ray job).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from sqlalchemy import select

from api.db import StudyRow, init_schema, make_engine, make_sessions
from api.lifecycle import new_row
from search.spec import SearchSpec
from tests.api_server import KTG
from tests.postgres import PASSWORD, postgres_url  # noqa: F401


def admin(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([KTG, "admin", *args], env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture(name="service_env")
def service_env_fixture(postgres_url: str, tmp_path: Path) -> dict[str, str]:  # noqa: F811
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KTG_", "RAY_"))}
    # alice still has a token; zed's was removed (zed's studies are orphaned)
    return env | {"KTG_STORAGE": postgres_url, "KTG_API_TOKENS": "alice:alice-tok-1", "KTG_DATA_DIR": str(tmp_path)}


def add_studies(url: str, data_dir: Path, rows: list[tuple[str, str, str]]) -> dict[str, str]:
    """(tenant, name, state) rows; returns name -> id."""
    engine = make_engine(url)
    init_schema(engine)
    ids = {}
    with make_sessions(engine).begin() as session:
        for tenant, name, state in rows:
            spec = SearchSpec(name=name, nodes=2, trials=1, models=["resnet20"], target_model="resnet20")
            row = new_row(tenant, spec, data_dir / "studies")
            row.state = state
            session.add(row)
            ids[name] = row.id
    engine.dispose()
    return ids


def states(url: str) -> dict[str, str]:
    engine = make_engine(url)
    with make_sessions(engine)() as session:
        found = {row.name: row.state for row in session.scalars(select(StudyRow))}
    engine.dispose()
    return found


def test_list_and_cancel_every_tenants_studies(service_env: dict[str, str], postgres_url: str,  # noqa: F811
                                              tmp_path: Path) -> None:
    ids = add_studies(postgres_url, tmp_path, [("alice", "a-run", "running"), ("alice", "a-done", "succeeded"),
                                               ("zed", "z-run", "running"), ("zed", "z-wait", "queued"),
                                               ("zed", "z-old", "failed")])
    listed = admin(service_env, "list", "--json")
    assert listed.returncode == 0, listed.stderr
    records = {r["name"]: r for r in json.loads(listed.stdout)}
    assert set(records) >= set(ids)
    assert {n: (r["tenant"], r["state"], r["orphaned"]) for n, r in records.items() if n in ids} == {
        "a-run": ("alice", "running", False), "a-done": ("alice", "succeeded", False),
        "z-run": ("zed", "running", True), "z-wait": ("zed", "queued", True), "z-old": ("zed", "failed", True)}

    table = admin(service_env, "list", "--orphaned").stdout.splitlines()
    assert table[0].split() == ["id", "tenant", "name", "state", "created_at", "ray_status", "orphaned"]
    assert {line.split()[2] for line in table[1:-1]} >= {"z-run", "z-wait", "z-old"}
    assert not [line for line in table[1:-1] if line.split()[1] == "alice"]

    cancelled = admin(service_env, "cancel", "--tenant", "zed")  # (--orphaned would reach other tests' tenants)
    assert cancelled.returncode == 0, cancelled.stderr
    after = states(postgres_url)
    assert {name: after[name] for name in ids} == {"a-run": "running", "a-done": "succeeded", "z-run": "cancelled",
                                                   "z-wait": "cancelled", "z-old": "failed"}
    assert f"{ids['z-run']}  zed/z-run: cancelled" in cancelled.stdout

    one = admin(service_env, "cancel", ids["a-run"])
    assert one.returncode == 0 and states(postgres_url)["a-run"] == "cancelled"
    again = admin(service_env, "cancel", ids["a-run"])
    assert "already cancelled" in again.stdout
    for output in (listed, cancelled, one, again):
        assert PASSWORD not in output.stdout + output.stderr


@pytest.mark.parametrize(("args", "expected"), [
    (["cancel"], "exactly one of them"),
    (["cancel", "--tenant", "zed", "--orphaned"], "exactly one of them"),
    (["cancel", "3f6c2a52-0000-4c55-9d8e-6b7467000001"], "no study with id 3f6c2a52-0000-4c55-9d8e-6b7467000001"),
])
def test_bad_admin_input_is_one_line(service_env: dict[str, str], args: list[str], expected: str) -> None:
    run = admin(service_env, *args)
    assert run.returncode == 2 and expected in run.stderr, run.stderr
    assert "Traceback" not in run.stderr and len(run.stderr.strip().splitlines()) == 1


def test_admin_needs_the_services_configuration(service_env: dict[str, str]) -> None:
    env = {k: v for k, v in service_env.items() if k != "KTG_API_TOKENS"}
    run = admin(env, "list")
    assert run.returncode == 2 and "KTG_API_TOKENS" in run.stderr and "Traceback" not in run.stderr
