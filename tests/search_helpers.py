"""What the ``ktg search`` tests share: running ``ktg`` in a subprocess, reading what it left.

Every search is a ``ktg`` subprocess (its own local Ray) and the study it leaves
behind is read back with Optuna's own API; the processes a search started are
found in ``/proc`` by their session (``api.processes``) and cleaned up by pid.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import optuna
from optuna.trial import FixedTrial, TrialState

from api.processes import session_processes
from ktg.graph import LABEL_NODE, Graph
from search.space import sample_graph
from search.spec import SearchSpec
from search.study.storage import sqlalchemy_url

KTG = [sys.executable, "-m", "ktg.cli"]
TINY_MODELS = ["--target-model", "resnet20", "--models", "resnet20,wrn16-1"]
# A search as before issue 17: no hand-made graphs queued first, no confirmation stage
# (for the tests of other behaviour, whose trial sets these would change).
AS_BEFORE_FIELDS = {"baselines": "none", "confirm_top": 0}
AS_BEFORE = ["--baselines", "none", "--confirm-top", "0"]
FINAL = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)

# The interrupted study: the tiny spec whose space the tests count by brute force.
TINY_SPEC = dict(nodes=2, models=["resnet20", "wrn16-1"], gates=["through", "cutoff"], losses=["kl", "cm"])

# Test-only: a folder whose sitecustomize poisons chosen trials to NaN (see its docstring).
FAULT_INJECTION_DIR = Path(__file__).resolve().parent / "fault_injection"
FAULT_ENV = "KTG_FAULT_NAN_TRIALS"  # what that sitecustomize reads (it cannot import this module)


def ktg_env(ray_tmp: Path, **extra: str) -> dict[str, str]:
    """The environment of a ``ktg`` subprocess.

    ``RAY_TMPDIR`` gives its local Ray a private temp root: with the default one,
    ``ray.init()`` joins any cluster someone else ``ray start``-ed on this machine.
    ``COLUMNS`` keeps rich from wrapping the lines the tests parse.
    """
    env = {k: v for k, v in os.environ.items()
           if k not in {"KTG_STORAGE", FAULT_ENV, "RAY_ADDRESS"}}
    env |= {"COLUMNS": "200", "RAY_TMPDIR": str(ray_tmp), "PYTHONUNBUFFERED": "1"}
    env |= extra
    return env


def nan_fault_env(*trials: int) -> dict[str, str]:
    """Extra environment that makes these Optuna trial numbers of a ``ktg search`` train on NaN data.

    The search and every Ray process it starts inherit it, so the hook in
    ``tests/fault_injection/sitecustomize.py`` reaches the workers.
    """
    path = [str(FAULT_INJECTION_DIR), *filter(None, [os.environ.get("PYTHONPATH")])]
    return {"PYTHONPATH": os.pathsep.join(path), FAULT_ENV: ",".join(str(t) for t in trials)}


def run_ktg(args: list[str], cwd: Path, env: dict[str, str], timeout: float = 600) -> SimpleNamespace:
    proc = subprocess.run([*KTG, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    return SimpleNamespace(rc=proc.returncode, stdout=proc.stdout, stderr=proc.stderr)


def load(url: str, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=sqlalchemy_url(url))


def space_line(stdout: str) -> str:
    found = re.search(r"search space (\S+) graphs", stdout)
    assert found, f"no 'search space N graphs' line in:\n{stdout}"
    return found.group(1)


def files_under(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and not p.is_symlink()]


def files_with(root: Path, secret: str) -> list[str]:
    needle = secret.encode()
    return [str(p.relative_to(root)) for p in files_under(root) if needle in p.read_bytes()]


def brute_force_space(nodes: int, models: list[str], gates: list[str], losses: list[str],
                      teachers: tuple[str, ...] = (), temperatures: tuple[float, ...] = ()) -> int:
    """Distinct graphs, counted by listing them (independently of ``search.space``).

    Node 1's model is fixed; every other node has a model or is one of ``teachers``;
    every label edge a gate; every other edge a (gate, loss), and an edge out of a
    teacher a (gate, loss, temperature); any cutoff edge, and any edge into a
    teacher (it is frozen as given), is simply absent.
    """
    ids = range(1, nodes + 1)
    seen = set()
    for node_models in itertools.product([*models, *(f"teacher:{t}" for t in teachers)], repeat=nodes - 1):
        teacher_ids = {i for i, m in enumerate(node_models, start=2) if m.startswith("teacher:")}
        edges = [(s, t) for t in ids if t not in teacher_ids for s in [LABEL_NODE, *ids] if s != t]
        options = [[(g, "ce", None) for g in gates] if s == LABEL_NODE
                   else [(g, lo, temp) for g in gates for lo in losses
                         for temp in (temperatures if s in teacher_ids else (None,))]
                   for s, t in edges]
        for choice in itertools.product(*options):
            kept = tuple((s, t, g, lo, temp) for (s, t), (g, lo, temp) in zip(edges, choice, strict=True)
                         if g != "cutoff")
            seen.add((node_models, kept))
    return len(seen)


def sampled_graphs(universe: dict[str, list[Any]], spec: SearchSpec) -> set[str]:
    """Every graph ``sample_graph`` draws from each assignment of the parameters in ``universe``
    (each a list of values), as sorted JSON; each trainable draw must be a valid graph file."""
    graphs = set()
    for values in itertools.product(*universe.values()):
        graph, why = sample_graph(FixedTrial(dict(zip(universe, values, strict=True))), spec)
        if why is None:
            Graph.from_dict(graph)
        graphs.add(json.dumps(graph, sort_keys=True))
    return graphs


def is_trial_process(cmdline: str) -> bool:
    """A Ray worker running a trial (Ray titles it ``ray::ImplicitFunc.train``).

    Idle or half-started workers (``ray::IDLE``, ``default_worker.py``) hold no
    trial; after a SIGKILL they may linger until their GCS timeout, writing nothing.
    """
    return any(mark in cmdline for mark in ("ImplicitFunc", "train_trial"))


def reap_session(sid: int) -> None:
    """Kill what is left of a search we started (its own session), one pid at a time."""
    for pid in session_processes(sid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
