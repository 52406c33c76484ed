"""A study launched through the API survives the loss of a cluster node.

Real parts only: a 2-node Ray cluster on this machine (``ray start --head`` and a
second ``ray start --address``, token authentication on), ``ktg serve`` over HTTP
pointed at it with ``RAY_ADDRESS``, and a real PostgreSQL. While a trial trains on
the second node, that node leaves (its raylet and workers killed at once). The
trial must restart from its checkpoint on the head, and the study must end
``succeeded`` with every trial trained and every epoch recorded once.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from tests.api_server import Server, status
from tests.postgres import postgres_url  # noqa: F401
from tests.ray_cluster import alive_nodes, cluster_env, join_node, start_head, trial_workers
from tests.search_helpers import AS_BEFORE_FIELDS, reap_session
from tests.waiting import wait_for

pytestmark = pytest.mark.slow

TOKEN = "carol-token-3c9e0f"
TRIALS = 8
SPEC = {"name": "lost", "nodes": 2, "trials": TRIALS, "epochs": 6, "models": ["resnet20", "wrn16-1"],
        "target_model": "resnet20", "gates": ["through", "linear"], "max_retries": 2, **AS_BEFORE_FIELDS}


def trials_of(client: httpx.Client, study_id: str) -> list[dict[str, Any]]:
    page = client.get(f"/v1/studies/{study_id}/trials", params={"limit": 100})
    assert page.status_code == 200, page.text
    items: list[dict[str, Any]] = page.json()["items"]
    return items


def still_running(client: httpx.Client, study_id: str) -> None:
    """Fail at once, with the reason, if the study ended before the node was lost."""
    now = status(client, study_id)
    assert now["state"] in {"queued", "running"}, f"the study ended early: {now}"


def on_second_node(client: httpx.Client, study_id: str, address: str, env: dict[str, str], second: str) -> bool:
    still_running(client, study_id)
    return any(nid == second for _, nid in trial_workers(address, env))


def both_slots_mid_trial(client: httpx.Client, study_id: str) -> bool:
    """Two trials running, each past its first epoch (so with a checkpoint), and at least
    two trials still to come (so the head has work left after the node is gone)."""
    still_running(client, study_id)
    trials = trials_of(client, study_id)
    running = [t for t in trials if t["state"] == "running" and t["history"]]
    return len(running) >= 2 and len(trials) <= TRIALS - 2


@pytest.fixture(scope="module")
def lost_node_study(postgres_url: str, tmp_path_factory: pytest.TempPathFactory,  # noqa: F811
                    ray_tmp: Path) -> SimpleNamespace:
    work = tmp_path_factory.mktemp("api-lost-node")
    # The search jobs read the storage from the cluster, and run `ktg` from its PATH.
    env = cluster_env(ray_tmp, work, KTG_STORAGE=postgres_url,
                      PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    head, address, dashboard = start_head(work, env, cpus=1)
    node = None
    server = Server(env={**env, "RAY_ADDRESS": dashboard, "KTG_DATA_DIR": str(work / "data"),
                         "KTG_API_TOKENS": f"carol:{TOKEN}", "PYTHONUNBUFFERED": "1"},
                    data_dir=work / "data", log_path=work / "serve.log")
    try:
        node = join_node(work, env, address, cpus=1)
        wait_for(lambda: len(alive_nodes(address, env)) == 2, 120, "the second node", alive=[head, node])
        second = next(nid for nid, is_head in alive_nodes(address, env).items() if not is_head)
        server.start()
        carol = server.client({"Authorization": f"Bearer {TOKEN}"})
        submitted = carol.post("/v1/studies", json=SPEC)
        assert submitted.status_code == 202, submitted.text
        study_id = submitted.json()["id"]
        # As in test_search_retries: ask the slow state API first, then kill as soon as
        # the study shows both slots in mid-trial.
        wait_for(lambda: on_second_node(carol, study_id, address, env, second), 300,
                 "a trial worker on the second node", every=0.5, alive=[head, node])
        wait_for(lambda: both_slots_mid_trial(carol, study_id), 300, "a trial in mid-run on each node", every=0.3,
                 alive=[head, node])
        running = {t["number"] for t in trials_of(carol, study_id) if t["state"] == "running"}
        reap_session(node.pid)  # the node leaves in mid-trial: its raylet and its workers, all at once
        done = wait_for(lambda: (s := status(carol, study_id))["state"] in {"succeeded", "failed", "cancelled"}
                        and s, 900, "the study to end", every=2)
        return SimpleNamespace(done=done, running=running, trials=trials_of(carol, study_id),
                               log=(work / "serve.log").read_text())
    finally:
        server.kill(signal.SIGTERM)
        for proc in (node, head):
            if proc is not None:
                reap_session(proc.pid)


def test_a_study_whose_cluster_lost_a_node_succeeds(lost_node_study: SimpleNamespace) -> None:
    done, trials = lost_node_study.done, lost_node_study.trials
    outcomes = [(t["number"], t["state"], t["retries"], t["error"]) for t in trials]
    assert done["state"] == "succeeded", f"{done.get('message')}\n{outcomes}\n{lost_node_study.log[-3000:]}"
    assert done["finished"] == TRIALS and done["ray"]["status"] == "SUCCEEDED"
    assert len(trials) == TRIALS and {t["state"] for t in trials} <= {"complete", "pruned"}, outcomes


def test_the_lost_nodes_trial_was_retried_once_with_every_epoch_once(lost_node_study: SimpleNamespace) -> None:
    retried = [t for t in lost_node_study.trials if t["retries"]]
    assert [t["retries"] for t in retried] == [1], retried  # the lost node's trial, once
    assert retried[0]["number"] in lost_node_study.running
    for t in lost_node_study.trials:
        assert [h["epoch"] for h in t["history"]] == list(range(1, t["epochs_done"] + 1)), t
