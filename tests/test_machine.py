"""The machine helpers every floor shares (``ktg.machine``), and the teacher-cache rule."""

from __future__ import annotations

import multiprocessing
import os
import socket
import stat
import time
from pathlib import Path

import pytest

from ktg.machine import atomic_write, free_port, locked, wait_until
from ktg.teachers import CACHE_ENV, default_cache_dir


def test_atomic_write_leaves_the_content_with_its_mode_and_nothing_else(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    atomic_write(target, "one")
    atomic_write(target, b"two", mode=0o600)
    assert target.read_bytes() == b"two"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    atomic_write(tmp_path / "by-writer.txt", lambda tmp: tmp.write_text(tmp.name))
    # The writer saw the file under its own name (torch.save names its archive after it).
    assert (tmp_path / "by-writer.txt").read_text() == "by-writer.txt"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["by-writer.txt", "state.json"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "kept.txt"
    atomic_write(target, "old")

    def half_written(tmp: Path) -> None:
        tmp.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, half_written)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["kept.txt"]


def _hold(path: str, stamps: str) -> None:
    with locked(Path(path)):
        with open(stamps, "a") as f:
            f.write(f"in {time.monotonic()}\n")
        time.sleep(0.3)
        with open(stamps, "a") as f:
            f.write(f"out {time.monotonic()}\n")


def test_locked_excludes_other_processes(tmp_path: Path) -> None:
    stamps = tmp_path / "stamps"
    ctx = multiprocessing.get_context("fork")
    workers = [ctx.Process(target=_hold, args=(str(tmp_path / "x.lock"), str(stamps))) for _ in range(3)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
    events = [line.split()[0] for line in stamps.read_text().splitlines()]
    assert events == ["in", "out"] * 3  # never two holders at once


def test_free_port_is_bindable() -> None:
    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


def test_wait_until_returns_the_value_or_none() -> None:
    calls = iter([0, "", "ready"])
    assert wait_until(lambda: next(calls), timeout_s=10, every_s=0.01) == "ready"
    assert wait_until(lambda: None, timeout_s=0.05, every_s=0.01) is None
    given_up: list[int] = []
    assert wait_until(lambda: given_up.append(1), timeout_s=60, every_s=0.01, give_up=lambda: len(given_up) >= 3) is None
    assert len(given_up) == 3


def test_the_teacher_cache_is_ktg_cache_dir_when_set(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(CACHE_ENV, raising=False)
    assert default_cache_dir(tmp_path / "out" / "teachers") == tmp_path / "out" / "teachers"
    assert default_cache_dir() == Path.home() / ".cache" / "ktg" / "teachers"
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "shared"))
    assert default_cache_dir(tmp_path / "out" / "teachers") == tmp_path / "shared"
    from search.tune.driver import RunOptions

    assert RunOptions(out_dir=tmp_path / "out").worker_config()["cache_dir"] == str(tmp_path / "shared")
    monkeypatch.delenv(CACHE_ENV)
    assert RunOptions(out_dir=tmp_path / "out").worker_config()["cache_dir"] == str(tmp_path / "out" / "teachers")
    assert os.environ.get(CACHE_ENV) is None
