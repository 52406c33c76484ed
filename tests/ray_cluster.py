"""A real Ray cluster on this machine for the tests: a ``ray start --head`` with token
authentication on, a second node joined to it, and Ray's state API to find trial workers.
Shared by ``test_search_retries.py`` (the search's own driver) and ``test_api_lost_node.py``
(searches launched by the API).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

from tests.search_helpers import ktg_env
from tests.waiting import free_port

RAY = str(Path(sys.executable).parent / "ray")


def cluster_env(ray_tmp: Path, work: Path, **extra: str) -> dict[str, str]:
    """Every process of the test cluster: its own Ray temp root and its own auth token.

    A lost node is declared dead after 3 missed 1 s health checks (Ray's default is
    5 of 3 s): until then Ray still counts its CPU, and a restart placed there would
    fail again and spend a second retry.
    """
    token = work / "auth_token"
    if not token.exists():
        token.write_text(uuid.uuid4().hex)
    return ktg_env(ray_tmp, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token), RAY_health_check_period_ms="1000",
                   RAY_health_check_failure_threshold="3", **extra)


def start_head(work: Path, env: dict[str, str], cpus: int) -> tuple[subprocess.Popen, str, str]:
    """``ray start --head --block`` with the dashboard (the state API and the job API live
    there); its GCS address and its dashboard's URL."""
    dashboard_port = free_port()
    current = Path(env["RAY_TMPDIR"]) / "ray" / "ray_current_cluster"
    current.unlink(missing_ok=True)
    with open(work / "head.log", "wb") as log:
        head = subprocess.Popen(
            [RAY, "start", "--head", "--block", "--port", "0", "--num-cpus", str(cpus), "--disable-usage-stats",
             "--include-dashboard=true", "--dashboard-port", str(dashboard_port),
             "--dashboard-agent-listen-port", str(free_port()), "--ray-client-server-port", str(free_port())],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 120
    while not current.exists() or not current.read_text().strip():
        assert head.poll() is None, (work / "head.log").read_text()
        assert time.monotonic() < deadline, "ray start --head did not come up"
        time.sleep(0.5)
    return head, current.read_text().strip(), f"http://127.0.0.1:{dashboard_port}"


def join_node(work: Path, env: dict[str, str], address: str, cpus: int) -> subprocess.Popen:
    """A second Ray node on this machine: ``ray start --address ... --block``."""
    with open(work / "node.log", "wb") as log:
        return subprocess.Popen(
            [RAY, "start", "--address", address, "--block", "--num-cpus", str(cpus), "--disable-usage-stats",
             "--dashboard-agent-listen-port", str(free_port())],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def state_api(address: str, env: dict[str, str], query: str) -> object:
    """One of Ray's state API answers, as JSON (asked from a process that holds the cluster's token)."""
    code = ("import json, sys\n"
            "from ray.util.state import list_actors, list_nodes\n"
            f"print(json.dumps({query}))\n")
    proc = subprocess.run([sys.executable, "-c", code, address], env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def trial_workers(address: str, env: dict[str, str]) -> list[tuple[int, str]]:
    """(pid, node id) of every live trial actor (Tune's ``ImplicitFunc``), from Ray's state API."""
    return [tuple(a) for a in state_api(address, env, (
        "[(a.pid, a.node_id) for a in list_actors(address=sys.argv[1], filters=[('state', '=', 'ALIVE')], "
        "detail=True) if a.class_name == 'ImplicitFunc']"))]


def alive_nodes(address: str, env: dict[str, str]) -> dict[str, bool]:
    """Node id -> whether it is the head, for the live nodes."""
    return dict(state_api(address, env, (
        "[(n.node_id, n.is_head_node) for n in list_nodes(address=sys.argv[1]) if n.state == 'ALIVE']")))
