"""Small services of the local machine, written once for every floor (tests and benchmarks too).

Files written atomically (a reader, or a ``--resume`` after a kill, never sees half a
file), exclusive file locks between processes, a free loopback port, and waiting until
a condition holds. No torch, no Ray: anything may import this.
"""

from __future__ import annotations

import fcntl
import os
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def atomic_write(path: Path, data: str | bytes | Callable[[Path], None], mode: int | None = None) -> None:
    """Write ``path`` in a private folder beside it, then rename it into place.

    ``data`` is the content, or a function that writes the file it is given
    (``torch.save``, say). The file keeps its own name while written, since some
    writers record it (``torch.save`` names its archive after the file). ``mode``:
    the file's permissions (0o600 for secrets), set before any content is written.
    """
    folder = path.parent / f".{path.name}.{os.getpid()}.tmp"
    folder.mkdir(mode=0o700, exist_ok=True)
    tmp = folder / path.name
    try:
        if mode is not None:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode))
            os.chmod(tmp, mode)
        if callable(data):
            data(tmp)
        elif isinstance(data, bytes):
            tmp.write_bytes(data)
        else:
            tmp.write_text(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
        folder.rmdir()


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if missing) while inside; other processes wait."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now (bound, then released)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_until(check: Callable[[], T], timeout_s: float, every_s: float = 0.5,
               give_up: Callable[[], Any] | None = None) -> T | None:
    """Call ``check`` until it returns something truthy, and return that.

    Returns None when ``timeout_s`` passes first, or as soon as ``give_up()`` is
    truthy (a process that should answer has exited, say); the caller says why.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if result:
            return result
        if (give_up is not None and give_up()) or time.monotonic() >= deadline:
            return None
        time.sleep(every_s)
