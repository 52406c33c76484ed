"""Processes on this machine as ``/proc`` shows them (Linux), to stop exactly what we started.

A process started with ``start_new_session=True`` leads a session whose id is its
pid; everything it forks (Ray's raylets, workers, dashboards) stays in that
session unless it starts its own. Reading sessions from ``/proc`` lets the local
Ray head be stopped, and tests clean up after a search, without touching any
other process on the machine (other users' Ray clusters included).

Zombies (dead, not yet reaped) count as gone: they run nothing and cannot be signalled.
"""

from __future__ import annotations

import os
from pathlib import Path


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, dead but not yet reaped, does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        pass  # gone, or no /proc (macOS): ask the kernel
    except IndexError:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def session_members(sid: int) -> list[int]:
    """Live processes of session ``sid``."""
    members = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z" and int(fields[3]) == sid:  # state, ppid, pgrp, session
            members.append(int(entry.name))
    return members


def command_line(pid: int) -> list[bytes] | None:
    """The arguments ``pid`` was started with, or None when they cannot be read (gone, no /proc)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None


def session_processes(sid: int) -> dict[int, str]:
    """pid -> command line (arguments joined by spaces) of every live process in session ``sid``."""
    found = {}
    for pid in session_members(sid):
        args = command_line(pid)
        if args is not None:
            found[pid] = b" ".join(args).decode(errors="replace").strip()
    return found
