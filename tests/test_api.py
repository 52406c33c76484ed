"""End to end over real HTTP: ``ktg serve`` in a subprocess (uvicorn on loopback),
a real PostgreSQL, a real local Ray head started by the server, and real
``ktg search`` jobs on digits. Nothing is mocked.

Covers what users do: submit, follow, fetch the best graph and train it, draw it,
cancel a study mid-run, restart the API mid-study; and what they must not be
able to do: no/bad token, another tenant's study, a duplicate name, a huge body,
a bad spec. The database password must never reach a file, a log or Ray.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from api.ray_head import HeadError, ensure_local_head, read_head
from api.ray_jobs import RayJobs
from tests.api_server import KTG, Server, serving, status
from tests.postgres import PASSWORD, postgres_url  # noqa: F401
from tests.search_helpers import AS_BEFORE_FIELDS
from tests.waiting import free_port, wait_for

pytestmark = pytest.mark.slow

ALICE = {"Authorization": "Bearer alice-token-5f1d2c"}
BOB = {"Authorization": "Bearer bob-token-9a8e7b"}
TINY = {"nodes": 2, "epochs": 2, "dataset": "digits", "models": ["resnet20"], "target_model": "resnet20",
        **AS_BEFORE_FIELDS}


@pytest.fixture(scope="module")
def server(postgres_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:  # noqa: F811
    root = tmp_path_factory.mktemp("serve")
    tokens = f"alice:{ALICE['Authorization'][7:]},bob:{BOB['Authorization'][7:]}"
    with serving(root, KTG_STORAGE=postgres_url, KTG_API_TOKENS=tokens) as srv:
        yield srv


def submit(client: httpx.Client, name: str, trials: int) -> str:
    # The body as `curl -d '{...}'` sends it (the example), labelled as a form.
    r = client.post("/v1/studies", content=json.dumps({"name": name, "trials": trials, **TINY}),
                    headers={"content-type": "application/x-www-form-urlencoded"})
    assert r.status_code == 202, r.text
    study_id = r.json()["id"]
    assert r.headers["location"] == f"/v1/studies/{study_id}"
    assert r.json()["state"] in {"queued", "running"} and r.json()["budget"] == trials
    return str(study_id)


def test_search_end_to_end_through_an_api_restart(server: Server, tmp_path: Path) -> None:
    alice = server.client(ALICE)
    study_id = submit(alice, "digits-a", trials=3)

    again = alice.post("/v1/studies", json={"name": "digits-a", "trials": 9, **TINY})
    assert again.status_code == 409 and again.headers["location"] == f"/v1/studies/{study_id}"
    assert [s["id"] for s in alice.get("/v1/studies").json()["items"]].count(study_id) == 1

    # Restart the API while the study runs: the search goes on in Ray.
    wait_for(lambda: status(alice, study_id)["state"] == "running", 120, "the study to run")
    head_before = read_head(server.data_dir)
    server.restart()
    assert read_head(server.data_dir) == head_before  # the same Ray head: it outlived the API
    done = wait_for(lambda: (s := status(alice, study_id))["state"] in {"succeeded", "failed"} and s, 300,
                    "the study to finish")
    assert done["state"] == "succeeded", done.get("message")
    assert done["finished"] == 3 and done["progress"] == 1.0 and done["ray"]["status"] == "SUCCEEDED"
    assert done["trials"]["complete"] >= 1 and 0 < done["best_complete_val_acc"] <= 1
    assert done["best_val_acc"] >= done["best_complete_val_acc"] and done["finished_at"]

    trials = alice.get(f"/v1/studies/{study_id}/trials").json()
    assert trials["total"] >= 3 and {t["graph"]["format"] for t in trials["items"] if t["graph"]} == {"ktg-graph/1"}

    best = alice.get(f"/v1/studies/{study_id}/best", params={"k": 1}).json()["items"]
    assert len(best) == 1 and best[0]["val_acc"] == done["best_complete_val_acc"]
    graph_file = tmp_path / "best.json"
    graph_file.write_text(json.dumps(best[0]["graph"]))
    train = subprocess.run([KTG, "train", "--graph", str(graph_file), "--dataset", "digits", "--epochs", "1",
                            "--out", str(tmp_path / "train")], capture_output=True, text=True, timeout=300,
                           env=server.env)
    assert train.returncode == 0, train.stderr[-2000:]
    assert json.loads((tmp_path / "train" / "results.json").read_text())

    svg = alice.get(f"/v1/studies/{study_id}/best/1.svg")
    assert svg.status_code == 200 and svg.headers["content-type"].startswith("image/svg+xml")
    assert ET.fromstring(svg.text).tag == "{http://www.w3.org/2000/svg}svg"

    # Another tenant sees nothing of it.
    bob = server.client(BOB)
    for path in ("", "/trials", "/best", "/best/1.svg"):
        assert bob.get(f"/v1/studies/{study_id}{path}").status_code == 404
    assert bob.delete(f"/v1/studies/{study_id}").status_code == 404
    assert study_id not in {s["id"] for s in bob.get("/v1/studies").json()["items"]}

    # The password never left the server's environment: not in Ray's job, files or logs.
    head = read_head(server.data_dir)
    assert head is not None
    jobs = RayJobs(head.dashboard_url, token=head.token())
    info = jobs._get_client().get_job_info(study_id)
    assert PASSWORD not in info.entrypoint and PASSWORD not in json.dumps(info.metadata or {})
    assert "ktg search --spec-json" in info.entrypoint and "--resume" in info.entrypoint
    assert PASSWORD not in server.log_path.read_text()
    head_env = Path(f"/proc/{head.pid}/environ").read_bytes().split(b"\0")
    assert not [v for v in head_env if v.startswith(b"KTG_API_TOKENS")]  # Ray gets the storage, not the tokens
    for written in server.data_dir.rglob("*"):
        if written.is_file() and written.stat().st_size < 5_000_000:
            assert PASSWORD.encode() not in written.read_bytes(), written


def test_cancel_mid_run_keeps_finished_trials(server: Server) -> None:
    alice = server.client(ALICE)
    study_id = submit(alice, "digits-cancel", trials=40)
    running = wait_for(lambda: (s := status(alice, study_id))["finished"] >= 1 and s, 240, "a finished trial")
    assert running["state"] == "running"

    cancel = alice.delete(f"/v1/studies/{study_id}")
    assert cancel.status_code == 202 and cancel.json()["state"] == "cancelled"
    finished = cancel.json()["finished"]
    assert finished >= running["finished"]

    stopped = wait_for(lambda: (s := status(alice, study_id))["ray"]["status"] == "STOPPED" and s, 90,
                       "Ray to stop the job")
    assert stopped["state"] == "cancelled" and stopped["finished_at"]
    assert stopped["finished"] >= finished and stopped["finished"] < 40
    time.sleep(3)  # nothing runs any more: the counts stay where they are
    later = status(alice, study_id)
    assert later["finished"] == stopped["finished"] and later["trials"]["complete"] >= running["trials"]["complete"]

    again = alice.delete(f"/v1/studies/{study_id}")
    assert again.status_code == 200 and again.json()["state"] == "cancelled"
    listed = alice.get("/v1/studies", params={"state": "cancelled"}).json()["items"]
    assert study_id in {s["id"] for s in listed}


def test_a_study_recorded_but_never_submitted_is_launched_once(server: Server, postgres_url: str) -> None:  # noqa: F811
    """The API died between recording a study and submitting its job: the reconciler
    (of the next API process) submits it, and submitting again starts nothing new."""
    from api.db import make_engine, make_sessions
    from api.lifecycle import new_row
    from search.spec import SearchSpec

    engine = make_engine(postgres_url)
    spec = SearchSpec.model_validate({"name": "digits-orphan", "trials": 2, **TINY})
    row = new_row("alice", spec, server.data_dir / "studies")
    with make_sessions(engine).begin() as session:
        session.add(row)
    engine.dispose()
    alice = server.client(ALICE)
    launched = wait_for(lambda: (s := status(alice, row.id))["ray"]["status"] in {"PENDING", "RUNNING"} and s,
                        60, "the reconciler to submit the job")
    assert launched["state"] in {"queued", "running"}

    head = read_head(server.data_dir)
    assert head is not None
    jobs = RayJobs(head.dashboard_url, token=head.token())
    assert jobs.submit(row.submission_id, "echo a second search", {}) is False  # Ray refuses a second job
    assert [j.submission_id for j in jobs._get_client().list_jobs()].count(row.submission_id) == 1
    assert alice.delete(f"/v1/studies/{row.id}").status_code == 202


def test_the_local_head_is_reused_only_for_its_own_storage(server: Server) -> None:
    head = read_head(server.data_dir)
    assert head is not None
    assert ensure_local_head(server.data_dir, server.env["KTG_STORAGE"]) == head
    with pytest.raises(HeadError, match="started for another storage"):
        ensure_local_head(server.data_dir, "postgresql://someone:else@127.0.0.1:1/other")
    assert (server.data_dir / "ray-auth-token").stat().st_mode & 0o077 == 0  # the Jobs API token is private


def test_auth_limits_and_bad_input_over_http(server: Server) -> None:
    anon = server.client()
    for method, path in (("GET", "/v1/studies"), ("POST", "/v1/studies"),
                         ("GET", "/v1/studies/3f6c2a52-2f8e-4c55-9d8e-6b7467000001")):
        r = anon.request(method, path, json={"name": "x", "nodes": 2, "trials": 1})
        assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
    wrong = server.client({"Authorization": "Bearer alice-token-5f1d2d"})
    r = wrong.get("/v1/studies")
    assert r.status_code == 401 and "invalid_token" in r.headers["www-authenticate"]
    assert anon.get("/healthz").json() == {"status": "ok"}
    ready = anon.get("/readyz")
    assert ready.status_code == 200 and ready.json() == {"status": "ready", "database": "ok", "ray": "ok"}
    assert anon.get("/docs").status_code == 200 and "/v1/studies" in anon.get("/openapi.json").json()["paths"]

    alice = server.client(ALICE)
    huge = {"name": "huge", "nodes": 2, "trials": 1, "data_dir": "x" * 100_000}
    assert alice.post("/v1/studies", json=huge).status_code == 413

    bad = alice.post("/v1/studies", json={"name": "bad", "nodes": 11, "trials": 0, "dataset": "imagenet",
                                          "models": ["resnet20", "vgg16"], "gates": ["sometimes"], "colour": 1,
                                          "warmup_steps": -1})
    assert bad.status_code == 422
    fields = {e["field"] for e in bad.json()["errors"]}
    assert fields == {"nodes", "trials", "dataset", "models", "gates", "colour", "warmup_steps"}
    for word in ("nodes", "trials", "dataset", "imagenet", "vgg16", "sometimes", "colour"):
        assert word in bad.json()["detail"]
    malformed = alice.post("/v1/studies", content=b'{"name": "m", "nodes": 2,', headers={"content-type":
                                                                                           "application/json"})
    assert malformed.status_code == 422 and malformed.json()["errors"][0]["field"] == "body"
    assert "malformed JSON" in malformed.json()["detail"]
    missing = alice.post("/v1/studies", json={"name": "m"})
    assert missing.status_code == 422 and {e["field"] for e in missing.json()["errors"]} == {"nodes", "trials"}
    long_name = alice.post("/v1/studies", json={"name": "n" * 64, "nodes": 2, "trials": 1})
    assert long_name.status_code == 422 and long_name.json()["errors"][0]["field"] == "name"
    typo = alice.get("/v1/studies", params={"limt": 5})
    assert typo.status_code == 422 and typo.json()["errors"][0]["field"] == "limt"


def test_serve_refuses_bad_configuration_in_one_line(postgres_url: str, tmp_path: Path) -> None:  # noqa: F811
    base = {k: v for k, v in os.environ.items() if not k.startswith(("KTG_", "RAY_"))}
    base["KTG_DATA_DIR"] = str(tmp_path)
    cases = [
        ({"KTG_STORAGE": postgres_url}, "no API token configured"),
        ({"KTG_STORAGE": postgres_url.replace("/ktg", "/nodb"), "KTG_API_TOKENS": "a:b"}, "storage: cannot use"),
        ({"KTG_STORAGE": postgres_url, "KTG_API_TOKENS": "a:b", "KTG_MAX_BODY_BYTES": "-1"}, "KTG_MAX_BODY_BYTES"),
    ]
    for extra, expected in cases:
        run = subprocess.run([KTG, "serve", "--port", str(free_port())], env={**base, **extra},
                             capture_output=True, text=True, timeout=60)
        assert run.returncode != 0 and expected in run.stderr, run.stderr
        assert "Traceback" not in run.stderr and len(run.stderr.strip().splitlines()) == 1, run.stderr
        assert PASSWORD not in run.stderr
