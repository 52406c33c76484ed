"""What the tests that start servers share: a free loopback port, and polling until
something is ready (failing with what was awaited, and early if a process it needs died).
Both are ``ktg.machine``'s; this adds the test's failure message."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Sequence
from typing import Any

from ktg.machine import free_port, wait_until

__all__ = ["free_port", "wait_for"]


def wait_for(check: Callable[[], Any], timeout: float, what: str, every: float = 1.0,
             alive: Sequence[subprocess.Popen] = ()) -> Any:
    """Poll ``check`` until it returns something truthy, and return that; fail naming ``what``
    on timeout, or as soon as one of the ``alive`` processes has exited."""
    last: list[Any] = [None]

    def checked() -> Any:
        last[0] = check()
        return last[0]

    found = wait_until(checked, timeout, every_s=every, give_up=lambda: any(p.poll() is not None for p in alive))
    if found:
        return found
    for proc in alive:
        assert proc.poll() is None, f"{proc.args[:3]} exited (rc {proc.returncode}) before {what}"
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (last: {last[0]!r})")
