"""The local Ray head of ``ktg serve``: start it, find it again, stop it.

With no ``RAY_ADDRESS``, ``ktg serve`` runs its searches on a Ray head of its
own. The head runs in its own session so that it outlives the API process: a
restarted API finds it again through ``<data dir>/ray-head.json`` and running
studies go on. Only that head is ever stopped (by its process group and session),
never Ray processes of other clusters on the machine.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from api.processes import alive, command_line, session_members
from api.settings import DATA_DIR_ENV, TOKENS_ENV, TOKENS_FILE_ENV
from ktg.machine import atomic_write, free_port, locked, wait_until
from search.study.storage import STORAGE_ENV

HEAD_STATE_FILE = "ray-head.json"


class HeadError(Exception):
    """The local Ray head could not be started or reused (one line)."""


@dataclass(frozen=True)
class LocalHead:
    """A Ray head this machine runs for ``ktg serve``, recorded in ``<data dir>/ray-head.json``."""

    pid: int  # of `ray start --block`, leader of the head's process group
    dashboard_url: str
    gcs_address: str
    storage_sha256: str
    temp_dir: str
    token_path: str

    def to_json(self) -> str:
        return json.dumps(self.__dict__, indent=2) + "\n"

    def token(self) -> str | None:
        try:
            return Path(self.token_path).read_text().strip() or None
        except OSError:
            return None


def _storage_fingerprint(storage: str) -> str:
    """Identifies the storage a head was started for without writing its password to disk."""
    return hashlib.sha256(storage.encode()).hexdigest()


def _is_head_process(pid: int, dashboard_url: str) -> bool:
    """Whether ``pid`` is still our `ray start --block` (a recycled pid must never be signalled)."""
    args = command_line(pid)
    if args is None:
        return alive(pid)  # no /proc (macOS): trust the pid
    port = dashboard_url.rsplit(":", 1)[-1].encode()
    return b"--head" in args and b"--block" in args and port in args


def _dashboard_answers(url: str, token: str | None, timeout_s: float = 2.0) -> bool:
    request = urllib.request.Request(f"{url}/api/version")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _auth_token(data_dir: Path) -> Path:
    """The head's Ray auth token, private to this data dir (mode 0600), made once.

    The dashboard's Jobs API runs arbitrary commands, so the head requires a
    token; keeping it here rather than in the user-wide ``~/.ray/auth_token``
    keeps other Ray clusters on the machine (and their clients) out of it.
    """
    path = data_dir / "ray-auth-token"
    if not path.exists():
        import secrets

        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
    return path


# Ray puts its Unix sockets at <temp dir>/session_<date>_<time>_<pid>/sockets/plasma_store:
# about 70 bytes after the temp dir, of the 107 a socket path may have.
MAX_TEMP_DIR_CHARS = 36


def _temp_dir(data_dir: Path) -> Path:
    """Ray's temp folder for this head, inside a folder only the service's user may enter.

    Ray makes its own folders 0777 (so that several users can share one); the
    private folder around them (0700) keeps everyone else out of the session: its
    sockets, its logs (job drivers' logs hold specs), its metrics files. It is
    ``<data dir>/ray`` when that is short enough for Ray's socket paths, else a fresh
    folder of an unpredictable name in the system's temp folder. It is never the
    default /tmp/ray either, whose ``ray_current_cluster`` would make any
    ``ray.init()`` on this machine join our head.
    """
    private = data_dir.resolve() / "ray"
    if len(str(private / "r")) > MAX_TEMP_DIR_CHARS:
        private = Path(tempfile.mkdtemp(prefix="ktg-ray-"))  # 0700, a random name
    private.mkdir(mode=0o700, exist_ok=True)
    os.chmod(private, 0o700)
    return private / "r"


def read_head(data_dir: Path) -> LocalHead | None:
    """The head recorded in the data dir, if its file is readable (alive or not)."""
    try:
        raw = json.loads((data_dir / HEAD_STATE_FILE).read_text())
        return LocalHead(**raw)
    except (OSError, ValueError, TypeError):
        return None


def _head_lock(data_dir: Path) -> contextlib.AbstractContextManager[None]:
    """Two `ktg serve` starting at once must not start two heads for one data dir."""
    return locked(data_dir / "ray-head.lock")


def ensure_local_head(data_dir: Path, storage: str, start_timeout_s: float = 120.0) -> LocalHead:
    """Reuse the head recorded in ``data_dir`` if it answers, else start one.

    The head runs in its own session so that it outlives the API process: a
    restarted API finds it again through the state file and running studies go
    on. Its environment carries ``KTG_STORAGE`` (for the jobs' drivers) and this
    interpreter's ``bin`` first on ``PATH`` (so ``ktg`` is the same install).
    """
    fingerprint = _storage_fingerprint(storage)
    with _head_lock(data_dir):
        head = read_head(data_dir)
        if (head is not None and _is_head_process(head.pid, head.dashboard_url)
                and _dashboard_answers(head.dashboard_url, head.token())):
            if head.storage_sha256 != fingerprint:
                raise HeadError(f"the local Ray head (pid {head.pid}, {head.dashboard_url}) recorded in {data_dir} "
                                "was started for another storage; stop it first "
                                f"(kill -TERM -{head.pid}) or use another {DATA_DIR_ENV}")
            return head
        return _start_head(data_dir, storage, fingerprint, start_timeout_s)


def _start_head(data_dir: Path, storage: str, fingerprint: str, start_timeout_s: float) -> LocalHead:
    ray_bin = Path(sys.executable).with_name("ray")
    if not ray_bin.exists():
        raise HeadError(f"cannot start a local Ray head: {ray_bin} not found (pip install 'ray[default]')")
    gcs_port, dashboard_port = free_port(), free_port()
    token_path, temp_dir = _auth_token(data_dir), _temp_dir(data_dir)
    token = token_path.read_text().strip()
    cmd = [str(ray_bin), "start", "--head", "--block", "--disable-usage-stats", "--temp-dir", str(temp_dir),
           "--node-ip-address", "127.0.0.1", "--port", str(gcs_port),
           "--include-dashboard", "true", "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard_port),
           # Fixed defaults (10001, 52365, ...) would collide with any other Ray on this machine.
           "--ray-client-server-port", str(free_port()), "--dashboard-agent-listen-port", str(free_port()),
           "--metrics-export-port", str(free_port()), "--runtime-env-agent-port", str(free_port())]
    # The searches need the storage, not the API's bearer tokens: keep those out of Ray.
    private = {"RAY_ADDRESS", "RAY_AUTH_TOKEN", TOKENS_ENV, TOKENS_FILE_ENV}
    env = {k: v for k, v in os.environ.items() if k not in private}
    env |= {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_path)}
    env[STORAGE_ENV] = storage
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    # A single-node head on loopback: Ray turns --node-ip-address 127.0.0.1 into the
    # machine's address (and then binds its metrics servers to every interface) unless
    # this, Ray's "no multi-node cluster" switch, is off; then the node's address is
    # 127.0.0.1 and the metrics export, dashboard and autoscaler metrics ports, and the
    # client server listen on loopback only.
    env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    log_path = data_dir / "ray-head.log"
    log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.fchmod(log_fd, 0o600)
    with os.fdopen(log_fd, "ab") as log:
        # umask 077: every file the head's processes write (their logs, the job drivers'
        # logs with each study's spec, checkpoints) is the service user's alone.
        process = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                   env=env, start_new_session=True, close_fds=True, umask=0o077)
    dashboard_url = f"http://127.0.0.1:{dashboard_port}"
    if not wait_until(lambda: _dashboard_answers(dashboard_url, token, timeout_s=1.0), start_timeout_s,
                      give_up=lambda: process.poll() is not None):
        if process.poll() is not None:
            raise HeadError(f"the local Ray head exited with status {process.returncode}; see {log_path}")
        _kill_group(process.pid)
        raise HeadError(f"the local Ray head did not answer within {start_timeout_s:.0f} s; see {log_path}")
    head = LocalHead(pid=process.pid, dashboard_url=dashboard_url, gcs_address=f"127.0.0.1:{gcs_port}",
                     storage_sha256=fingerprint, temp_dir=str(temp_dir), token_path=str(token_path))
    atomic_write(data_dir / HEAD_STATE_FILE, head.to_json(), mode=0o600)
    return head


def _kill_group(pid: int, grace_s: float = 30.0) -> None:
    """Stop the head whose `ray start --block` is ``pid``: SIGTERM its process group
    (Ray drains and stops its processes), then SIGKILL whatever of its session lingers.
    Only this session is touched: never Ray processes of other clusters."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)

    def gone() -> bool:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)  # reap it if it is our child
        return not alive(pid)

    wait_until(gone, grace_s, every_s=0.2)
    for member in session_members(pid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(member, signal.SIGKILL)


def stop_local_head(data_dir: Path, grace_s: float = 30.0) -> bool:
    """Stop the head recorded in ``data_dir`` (only that one: by its process group). True if one was running.

    Ray drains for up to 30 s on SIGTERM; ``grace_s`` bounds the wait before SIGKILL.
    """
    with _head_lock(data_dir):
        head = read_head(data_dir)
        if head is None:
            return False
        running = _is_head_process(head.pid, head.dashboard_url)
        if running:
            _kill_group(head.pid, grace_s)
        (data_dir / HEAD_STATE_FILE).unlink(missing_ok=True)
        return running
