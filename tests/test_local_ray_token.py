"""A command's own local Ray (``ktg search``, ``ktg compare``: ``search.local_ray``) leaves no
Ray token behind that other users of the machine could read (Ray would write
``~/.ray/auth_token`` with mode 0644)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

PROBE = """
import ray
from search.local_ray import join_ray
join_ray(num_cpus=1)
assert ray.is_initialized()
ray.shutdown()
"""


def test_a_local_ray_writes_no_token_file(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    ray_tmp = Path(tempfile.mkdtemp(prefix="ktg-t-"))  # short: Ray's socket paths must fit 107 bytes
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env |= {"HOME": str(home), "RAY_TMPDIR": str(ray_tmp)}
    try:
        run = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=300)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert run.returncode == 0, run.stderr[-3000:]
    token = home / ".ray" / "auth_token"
    assert not token.exists() or token.stat().st_mode & 0o077 == 0, oct(token.stat().st_mode)
