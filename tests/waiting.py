"""What the tests that start servers share: a free loopback port, and polling until
something is ready (failing with what was awaited, and early if a process it needs died)."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from typing import Any


def free_port() -> int:
    """A loopback port nothing listens on now (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(check: Callable[[], Any], timeout: float, what: str, every: float = 1.0,
             alive: Sequence[subprocess.Popen] = ()) -> Any:
    """Poll ``check`` until it returns something truthy, and return that; fail naming ``what``
    on timeout, or as soon as one of the ``alive`` processes has exited."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        for proc in alive:
            assert proc.poll() is None, f"{proc.args[:3]} exited (rc {proc.returncode}) before {what}"
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r})")
