"""A throwaway PostgreSQL server on loopback for the tests (real, never mocked).

Started once per test session with the server binaries on this machine
(``initdb``/``pg_ctl``). PostgreSQL refuses to run as root, so under root (CI)
the cluster is owned by and run as the ``postgres`` system user. Import the
fixture into a test module: ``from tests.postgres import postgres_url  # noqa: F401``.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.waiting import free_port

PASSWORD = "s3cret-pw"  # the tests check this string never leaks into files or logs
USER = "ktg"


def _binary(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    for candidate in sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), reverse=True):
        return str(candidate)
    pytest.skip(f"PostgreSQL server binary {name!r} not found (apt-get install -y postgresql)")


def _as_server_user(cmd: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return cmd
    return ["runuser", "-u", "postgres", "--", *cmd]


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A postgresql:// URL (user ktg with a password) to an empty database 'ktg'."""
    root = Path(tempfile.mkdtemp(prefix="ktg-pg-"))
    data = root / "data"
    if os.geteuid() == 0:
        pw = pwd.getpwnam("postgres")
        os.chown(root, pw.pw_uid, pw.pw_gid)
    pwfile = root / "pw"
    pwfile.write_text(PASSWORD + "\n")
    if os.geteuid() == 0:
        os.chown(pwfile, pwd.getpwnam("postgres").pw_uid, -1)
    port = free_port()
    subprocess.run(_as_server_user([_binary("initdb"), "-D", str(data), "-U", USER, "--pwfile", str(pwfile),
                                    "-A", "scram-sha-256", "-E", "UTF8", "--no-sync"]),
                   check=True, capture_output=True)
    log = root / "server.log"
    subprocess.run(_as_server_user([_binary("pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-o",
                                    f"-p {port} -c listen_addresses=127.0.0.1 -k {root} -c fsync=off "
                                    "-c max_connections=200", "start"]),
                   check=True, capture_output=True)
    try:
        env = {**os.environ, "PGPASSWORD": PASSWORD}
        subprocess.run(["psql", "-h", "127.0.0.1", "-p", str(port), "-U", USER, "-d", "postgres",
                        "-c", "CREATE DATABASE ktg"], check=True, capture_output=True, env=env)
        yield f"postgresql://{USER}:{PASSWORD}@127.0.0.1:{port}/ktg"
    finally:
        subprocess.run(_as_server_user([_binary("pg_ctl"), "-D", str(data), "-m", "immediate", "stop"]),
                       capture_output=True)
        shutil.rmtree(root, ignore_errors=True)
