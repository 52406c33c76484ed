"""``ktg serve`` in a subprocess, for the tests that drive the API over real HTTP
(``test_api.py``, ``test_api_lost_node.py``).
"""

from __future__ import annotations

import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

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


def status(client: httpx.Client, study_id: str) -> dict[str, Any]:
    r = client.get(f"/v1/studies/{study_id}")
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body
