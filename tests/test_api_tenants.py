"""A shared service's promises to its tenants, end to end: ``ktg serve`` with a real
PostgreSQL and its own local Ray head, tiny digits searches, nothing mocked.

- A tenant runs at most ``KTG_MAX_RUNNING_STUDIES`` studies; the next one waits as
  ``queued`` (Ray never hears of it) and starts when one of the first ends.
- A cancelled study leaves no WAITING trial behind.
- A trial that runs out of memory fails at once, never retried; a study whose every
  trial failed ends ``failed`` with the first trial's error.
- What a tenant reads never holds a server path, the job's command line or a traceback.
- The local Ray head keeps its files to the service's user and listens on loopback only.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from api.lifecycle import CANCELLED_BEFORE_RUN
from api.processes import session_members
from api.ray_head import HEAD_STATE_FILE, read_head
from api.ray_jobs import RayJobs
from tests.api_server import Server, serving, status
from tests.postgres import postgres_url  # noqa: F401
from tests.search_helpers import AS_BEFORE_FIELDS, FAULT_INJECTION_DIR
from tests.waiting import wait_for

pytestmark = pytest.mark.slow

TOKENS = {"alice": "alice-token-77d1", "bob": "bob-token-1c9e", "carol": "carol-token-5b2a"}
TINY = {"nodes": 2, "epochs": 2, "dataset": "digits", "models": ["resnet20"], "target_model": "resnet20",
        **AS_BEFORE_FIELDS}  # no baselines, no confirmation stage: each study trains only what the test counts
OOM_STUDY = "all-oom"  # every trial of carol's study of this name raises MemoryError (tests/fault_injection)


@pytest.fixture(scope="module")
def server(postgres_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:  # noqa: F811
    root = tmp_path_factory.mktemp("tenants")
    datasets = root / "datasets"
    (datasets / "cifar10").mkdir(parents=True)  # there, but holds no CIFAR batch
    with serving(root, KTG_STORAGE=postgres_url, KTG_DATASETS_DIR=str(datasets),
                 KTG_API_TOKENS=",".join(f"{t}:{k}" for t, k in TOKENS.items()), KTG_MAX_RUNNING_STUDIES="2",
                 PYTHONPATH=os.pathsep.join([str(FAULT_INJECTION_DIR), *filter(None, [os.environ.get("PYTHONPATH")])]),
                 KTG_FAULT_OOM_TRIALS=",".join(str(n) for n in range(50)),
                 KTG_FAULT_STUDY=f"carol.{OOM_STUDY}") as srv:
        yield srv


BODIES: list[str] = []  # every response body a tenant got in this module


def client(server: Server, tenant: str) -> httpx.Client:
    def keep(response: httpx.Response) -> None:
        response.read()
        BODIES.append(response.text)

    c = server.client({"Authorization": f"Bearer {TOKENS[tenant]}"})
    c.event_hooks["response"] = [keep]
    return c


def submit(c: httpx.Client, name: str, **fields: Any) -> dict[str, Any]:
    r = c.post("/v1/studies", json={"name": name, **TINY, **fields})
    assert r.status_code == 202, r.text
    body: dict[str, Any] = r.json()
    return body


def ended(c: httpx.Client, study_id: str) -> dict[str, Any] | None:
    s = status(c, study_id)
    return s if s["state"] in {"succeeded", "failed", "cancelled"} and s["ray"]["status"] in {
        "SUCCEEDED", "FAILED", "STOPPED"} else None


def test_a_third_study_waits_for_a_slot_and_a_cancel_leaves_no_waiting_trial(server: Server) -> None:
    alice = client(server, "alice")
    first, second = (submit(alice, name, trials=40)["id"] for name in ("q1", "q2"))
    third = submit(alice, "q3", trials=2)
    assert third["state"] == "queued" and third["ray"]["status"] is None
    assert "KTG_MAX_RUNNING_STUDIES" in third["message"]

    wait_for(lambda: status(alice, first)["trials"]["running"] >= 1, 240, "a trial of q1 to run")
    head = read_head(server.data_dir)
    assert head is not None
    jobs = RayJobs(head.dashboard_url, token=head.token())
    waiting = status(alice, third["id"])
    assert waiting["state"] == "queued" and jobs.status(third["id"]) is None  # Ray never heard of it

    assert alice.delete(f"/v1/studies/{first}").status_code == 202  # a slot is free: q3 starts
    wait_for(lambda: jobs.status(third["id"]) is not None, 60, "q3 to be submitted")
    stopped = wait_for(lambda: ended(alice, first), 120, "q1 to stop")
    assert stopped["state"] == "cancelled"
    trials = alice.get(f"/v1/studies/{first}/trials", params={"limit": 500}).json()["items"]
    assert not [t for t in trials if t["state"] in {"waiting", "running"}]
    # The graph q1 was training when it was stopped was re-queued by its driver, then closed
    # (skipped); or, had the driver been killed first, it is closed as interrupted. Neither counts.
    closed = [t for t in trials if t["state"] == "fail" and (t["skipped"] == CANCELLED_BEFORE_RUN or t["interrupted"])]
    assert closed and stopped["trials"]["waiting"] == stopped["trials"]["running"] == 0

    for study_id in (second, third["id"]):
        alice.delete(f"/v1/studies/{study_id}")
    for study_id in (second, third["id"]):
        wait_for(lambda sid=study_id: ended(alice, sid), 120, "the studies to stop")
        waiting_trials = alice.get(f"/v1/studies/{study_id}/trials", params={"state": "waiting"}).json()
        assert waiting_trials["total"] == 0


def test_trials_out_of_memory_are_not_retried_and_the_study_fails(server: Server) -> None:
    carol = client(server, "carol")
    study_id = submit(carol, OOM_STUDY, trials=2, max_retries=2)["id"]
    done = wait_for(lambda: ended(carol, study_id), 300, "the study to end")
    assert done["state"] == "failed" and done["ray"]["status"] == "SUCCEEDED"  # the job ran; no trial trained
    assert done["message"].startswith("no trial trained successfully; the first failed with: MemoryError")
    assert done["trials"]["fail"] == 2 and done["trials"]["complete"] == done["trials"]["pruned"] == 0
    trials = [t for t in carol.get(f"/v1/studies/{study_id}/trials").json()["items"] if not t["skipped"]]
    assert len(trials) == 2
    for trial in trials:  # at once: no restart, though two were allowed
        assert trial["state"] == "fail" and trial["retries"] == 0 and trial["history"] == []
        assert trial["error"].startswith("MemoryError: out of memory")


def test_a_failed_study_says_why_in_the_tenants_terms(server: Server) -> None:
    bob = client(server, "bob")
    study_id = submit(bob, "no-batches", trials=1, dataset="cifar10", data_dir="cifar10")["id"]
    done = wait_for(lambda: ended(bob, study_id), 240, "the study to end")
    assert done["state"] == "failed"
    message = done["message"]
    assert message and len(message) <= 300 and "\n" not in message
    assert "cifar10" in message, message  # the folder as the tenant named it


def test_no_body_names_a_server_path_or_a_traceback(server: Server) -> None:
    """Runs after the studies above (pytest keeps file order): every answer they got."""
    assert BODIES
    server_paths = [str(server.data_dir), server.env["KTG_DATASETS_DIR"], str(FAULT_INJECTION_DIR.parent.parent)]
    for body in BODIES:
        assert "Traceback" not in body and "--spec-json" not in body
        for path in server_paths:
            assert path not in body, (path, body[:500])


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _listening(pids: set[int]) -> list[str]:
    """The local addresses these processes listen on (TCP and UDP), from ``ss``."""
    out = subprocess.run(["ss", "-H", "-ltunp"], capture_output=True, text=True, check=True).stdout
    return [line.split()[4] for line in out.splitlines() if any(f"pid={pid}," in line for pid in pids)]


def test_the_local_head_is_private_and_listens_on_loopback_only(server: Server) -> None:
    head = read_head(server.data_dir)
    assert head is not None
    private = Path(head.temp_dir).parent
    assert _mode(private) == 0o700
    assert _mode(server.data_dir / HEAD_STATE_FILE) == 0o600 and _mode(server.data_dir / "ray-head.log") == 0o600
    driver_logs = list(Path(head.temp_dir).glob("session_*/logs/job-driver-*.log"))
    assert driver_logs and {_mode(p) for p in driver_logs} == {0o600}
    assert json.loads((server.data_dir / HEAD_STATE_FILE).read_text())["temp_dir"] == head.temp_dir

    addresses = _listening({head.pid, *session_members(head.pid)})
    assert addresses
    public = [a for a in addresses if not a.rsplit(":", 1)[0].strip("[]").endswith(("127.0.0.1", "::1"))]
    assert not public, addresses
