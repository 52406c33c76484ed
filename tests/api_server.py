"""``ktg serve`` in a subprocess, for the tests that drive the API over real HTTP
(``test_api*.py``, ``test_web_browser.py``, ``test_security_serve.py``).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from api.ray_head import read_head, stop_local_head
from tests.waiting import free_port, wait_for

KTG = str(Path(sys.executable).with_name("ktg"))


@dataclass
class Server:
    """A `ktg serve` process; ``restart`` kills it (SIGKILL, like a crash) and starts another."""

    env: dict[str, str]
    data_dir: Path
    log_path: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        log = open(self.log_path, "ab")  # the child process writes to it
        self.process = subprocess.Popen([KTG, "serve", "--host", "127.0.0.1", "--port", str(self.port)],
                                        env=self.env, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        wait_for(self._healthy, 180, "ktg serve to answer /healthz", every=0.5)

    def _healthy(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"ktg serve exited {self.process.returncode}:\n{self.log_path.read_text()[-3000:]}")
        try:
            return httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(timeout=30)

    def restart(self) -> None:
        self.kill()
        self.start()

    def client(self, headers: dict[str, str] | None = None) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)


@contextmanager
def serving(root: Path, **env: str) -> Iterator[Server]:
    """``ktg serve`` with its data dir under ``root`` and ``env`` over this process's environment
    less every ``KTG_`` and ``RAY_`` variable; on exit it stops the server, then the local Ray
    head the server started (only that one) and the head's private temp folder."""
    data = root / "data"
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("KTG_", "RAY_"))}
    srv = Server(env={**clean, "KTG_DATA_DIR": str(data), "PYTHONUNBUFFERED": "1", **env}, data_dir=data,
                 log_path=root / "serve.log")
    try:
        srv.start()
        yield srv
    finally:
        srv.kill(signal.SIGTERM)
        head = read_head(data)
        stop_local_head(data, grace_s=5)
        if head is not None:
            shutil.rmtree(Path(head.temp_dir).parent, ignore_errors=True)


def status(client: httpx.Client, study_id: str) -> dict[str, Any]:
    r = client.get(f"/v1/studies/{study_id}")
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body
