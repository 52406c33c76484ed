"""``ktg search`` / ``ktg export`` end to end: real PostgreSQL, real local Ray, no mocks.

Every search is a ``ktg`` subprocess (its own local Ray) on scikit-learn's
digits with two tiny models, and the study it leaves behind is read back with
Optuna's own API. The expensive runs are module fixtures shared by several
tests:

* ``main_search``: 3 nodes, 12 trials, 4 epochs, ``--storage URL``, trial 1
  poisoned to NaN (``KTG_FAULT_NAN_TRIALS=1``).
* ``interrupted_search``: one study (``KTG_STORAGE`` env, the tiny spec whose
  space is counted by brute force) taken through Ctrl-C, ``--resume`` and
  SIGTERM, ``--resume`` and SIGKILL of the driver, and a last ``--resume``
  that finishes it.
* ``bad_runs``: the bad-input commands, run side by side.

Tests pinned to library bugs (found or fixed) sit at the end of the file, so
``pytest -x`` still runs everything else first.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import optuna
import pytest
from optuna.trial import FixedTrial, FrozenTrial, TrialState

from ktg.errors import KtgError
from ktg.graph import LABEL_NODE, Graph
from search.space import describe_size, sample_graph, space_size
from search.spec import SearchSpec
from search.storage import counted, masked
from tests.postgres import PASSWORD, postgres_url  # noqa: F401

pytestmark = pytest.mark.slow

KTG = [sys.executable, "-m", "ktg.cli"]
TINY_MODELS = ["--target-model", "resnet20", "--models", "resnet20,wrn16-1"]
FINAL = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)

MAIN_NODES, MAIN_TRIALS, MAIN_EPOCHS = 3, 12, 4
ASHA_RUNGS = {1, 2}  # grace 1, reduction factor 2, max_t 4: rungs at epochs 1 and 2
POISONED = 1  # trial number poisoned to NaN in the main search

# The interrupted study: the tiny spec whose space the tests count by brute force.
TINY_SPEC = dict(nodes=2, models=["resnet20", "wrn16-1"], gates=["through", "cutoff"], losses=["kl", "cm"])
CHAIN_TRIALS, CHAIN_EPOCHS = 30, 2  # enough trials that each interruption lands mid-search


# -- helpers --------------------------------------------------------------------------------

def psycopg(url: str) -> str:
    """The URL as Optuna/SQLAlchemy need it for psycopg 3."""
    return "postgresql+psycopg://" + url.removeprefix("postgresql://")


def ktg_env(ray_tmp: Path, **extra: str) -> dict[str, str]:
    """The environment of a ``ktg`` subprocess.

    ``RAY_TMPDIR`` gives its local Ray a private temp root: with the default one,
    ``ray.init()`` joins any cluster someone else ``ray start``-ed on this machine.
    ``COLUMNS`` keeps rich from wrapping the lines the tests parse.
    """
    env = {k: v for k, v in os.environ.items()
           if k not in {"KTG_STORAGE", "KTG_FAULT_NAN_TRIALS", "RAY_ADDRESS"}}
    env |= {"COLUMNS": "200", "RAY_TMPDIR": str(ray_tmp), "PYTHONUNBUFFERED": "1"}
    env |= extra
    return env


def run_ktg(args: list[str], cwd: Path, env: dict[str, str], timeout: float = 600) -> SimpleNamespace:
    proc = subprocess.run([*KTG, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    return SimpleNamespace(rc=proc.returncode, stdout=proc.stdout, stderr=proc.stderr)


def load(url: str, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=psycopg(url))


def space_line(stdout: str) -> str:
    found = re.search(r"search space (\S+) graphs", stdout)
    assert found, f"no 'search space N graphs' line in:\n{stdout}"
    return found.group(1)


def files_under(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and not p.is_symlink()]


def files_with(root: Path, secret: str) -> list[str]:
    needle = secret.encode()
    return [str(p.relative_to(root)) for p in files_under(root) if needle in p.read_bytes()]


def snapshot(trial: FrozenTrial) -> dict[str, Any]:
    return {"number": trial.number, "state": trial.state, "value": trial.value, "params": trial.params,
            "intermediate": dict(trial.intermediate_values), "user_attrs": dict(trial.user_attrs),
            "datetime_complete": trial.datetime_complete}


def brute_force_space(nodes: int, models: list[str], gates: list[str], losses: list[str]) -> int:
    """Distinct graphs, counted by listing them (independently of ``search.space``).

    Node 1's model is fixed; every other node has a model; every label edge a
    gate; every other edge a (gate, loss), where any cutoff edge is simply absent.
    """
    ids = range(1, nodes + 1)
    edges = [(s, t) for t in ids for s in [LABEL_NODE, *ids] if s != t]
    options = [[(g, "ce") for g in gates] if s == LABEL_NODE else [(g, lo) for g in gates for lo in losses]
               for s, t in edges]
    seen = set()
    for node_models in itertools.product(models, repeat=nodes - 1):
        for choice in itertools.product(*options):
            kept = tuple((s, t, g, lo) for (s, t), (g, lo) in zip(edges, choice, strict=True) if g != "cutoff")
            seen.add((node_models, kept))
    return len(seen)


def session_processes(sid: int) -> dict[int, str]:
    """pid -> command line of every live process in session ``sid`` (a ``start_new_session`` child)."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[3]) == sid:
            found[int(stat.parent.name)] = cmdline.strip()
    return found


def is_trial_process(cmdline: str) -> bool:
    """A Ray worker running a trial (Ray titles it ``ray::ImplicitFunc.train``).

    Idle or half-started workers (``ray::IDLE``, ``default_worker.py``) hold no
    trial; after a SIGKILL they may linger until their GCS timeout, writing nothing.
    """
    return any(mark in cmdline for mark in ("ImplicitFunc", "train_trial"))


def training(sid: int) -> bool:
    """Whether a trial of the search in session ``sid`` is running right now."""
    return any(is_trial_process(cmd) for cmd in session_processes(sid).values())


def reap_session(sid: int) -> None:
    """Kill what is left of a search we started (its own session), one pid at a time."""
    for pid in session_processes(sid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def wait_until(proc: subprocess.Popen, url: str, name: str, ready: Callable[[list[FrozenTrial]], bool],
               timeout: float, what: str) -> list[FrozenTrial]:
    """Poll the study until ``ready(trials)``; fail if the search exits first."""
    storage = optuna.storages.RDBStorage(psycopg(url))
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise AssertionError(f"the search exited (rc {proc.returncode}) before {what}")
            try:
                trials = optuna.load_study(study_name=name, storage=storage).get_trials()
            except KeyError:
                trials = []
            if ready(trials):
                return trials
            time.sleep(0.5)
    finally:
        storage.engine.dispose()
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def n_done(trials: list[FrozenTrial]) -> int:
    """Trials that really trained to an end (COMPLETE or PRUNED), counted ones only."""
    return sum(1 for t in trials if counted(t) and t.state in (TrialState.COMPLETE, TrialState.PRUNED))


def n_running(trials: list[FrozenTrial]) -> int:
    return sum(1 for t in trials if t.state == TrialState.RUNNING)


def describe(trials: list[FrozenTrial]) -> str:
    """One line per trial (graph left out), for failure messages."""
    return "\n".join(f"{t.number} {t.state.name} {t.params} {t.intermediate_values} "
                     f"{ {k: v for k, v in t.user_attrs.items() if k != 'graph'} }" for t in trials)


def ray_trial_dirs(out: Path) -> dict[int, Path]:
    """Optuna trial number -> its Ray trial folder (``trial_number`` is in the config)."""
    dirs = {}
    for params in out.glob("ray/*/*/params.json"):
        dirs[json.loads(params.read_text())["trial_number"]] = params.parent
    return dirs


# -- shared runs ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ray_tmp() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="ktgray", dir="/tmp"))  # short: Ray puts sockets in it
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def main_search(postgres_url: str, tmp_path_factory: pytest.TempPathFactory,  # noqa: F811
                ray_tmp: Path) -> SimpleNamespace:
    work = tmp_path_factory.mktemp("main")
    name = f"main-{uuid.uuid4().hex[:8]}"
    out = work / "out"
    args = ["search", "--nodes", str(MAIN_NODES), "--trials", str(MAIN_TRIALS), "--epochs", str(MAIN_EPOCHS),
            "--study", name, "--storage", postgres_url, "--out", str(out), *TINY_MODELS, "--workers", "2"]
    started = time.monotonic()
    res = run_ktg(args, work, ktg_env(ray_tmp, KTG_FAULT_NAN_TRIALS=str(POISONED)))
    study = load(postgres_url, name)
    return SimpleNamespace(work=work, name=name, out=out, url=postgres_url, res=res, study=study,
                           trials=study.get_trials(), seconds=time.monotonic() - started)


@pytest.fixture(scope="module")
def main_ok(main_search: SimpleNamespace) -> SimpleNamespace:
    r = main_search.res
    assert r.rc == 0, f"ktg search failed (rc {r.rc}):\n{r.stdout}\n{r.stderr[-4000:]}"
    return main_search


@pytest.fixture(scope="module")
def after_main(main_ok: SimpleNamespace, ray_tmp: Path) -> SimpleNamespace:
    """``ktg export --top 3`` and ``ktg train --graph best.json``, side by side."""
    out = main_ok.work / "exported"
    commands = {
        "export": ["export", "--study", main_ok.name, "--storage", main_ok.url, "--top", "3", "--out", str(out)],
        "train": ["train", "--graph", str(main_ok.out / "best.json"), "--dataset", "digits", "--epochs", "1"],
    }
    procs = {key: subprocess.Popen([*KTG, *args], cwd=main_ok.work, env=ktg_env(ray_tmp), text=True,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for key, args in commands.items()}
    res = {}
    for key, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=300)
        res[key] = SimpleNamespace(rc=proc.returncode, stdout=stdout, stderr=stderr)
    return SimpleNamespace(out=out, export=res["export"], train=res["train"])


@pytest.fixture(scope="module")
def interrupted_search(postgres_url: str, tmp_path_factory: pytest.TempPathFactory,  # noqa: F811
                       ray_tmp: Path) -> Iterator[SimpleNamespace]:
    """One study through Ctrl-C, --resume + SIGTERM, --resume + SIGKILL of the driver, and a final --resume."""
    work = tmp_path_factory.mktemp("chain")
    name = f"chain-{uuid.uuid4().hex[:8]}"
    out = work / "out"
    env = ktg_env(ray_tmp, KTG_STORAGE=postgres_url, PYTHONFAULTHANDLER="1")  # the URL only in the environment
    first = ["search", "--nodes", str(TINY_SPEC["nodes"]), "--trials", str(CHAIN_TRIALS),
             "--epochs", str(CHAIN_EPOCHS), "--study", name, "--out", str(out), "--target-model", "resnet20",
             "--models", ",".join(TINY_SPEC["models"]), "--gates", ",".join(TINY_SPEC["gates"]),
             "--losses", ",".join(TINY_SPEC["losses"]), "--workers", "2"]
    resume = ["search", "--study", name, "--resume", "--out", str(out)]
    c = SimpleNamespace(work=work, name=name, out=out, url=postgres_url, outputs=[])
    sids: list[int] = []

    def start(args: list[str], tag: str) -> subprocess.Popen:
        with open(work / f"{tag}.out", "wb") as stdout, open(work / f"{tag}.err", "wb") as stderr:
            proc = subprocess.Popen([*KTG, *args], cwd=work, env=env, stdout=stdout, stderr=stderr,
                                    start_new_session=True)
        sids.append(proc.pid)
        return proc

    def outputs(tag: str) -> tuple[str, str]:
        text = ((work / f"{tag}.out").read_text(errors="replace"), (work / f"{tag}.err").read_text(errors="replace"))
        c.outputs.extend(text)
        return text

    try:
        # 1. Ctrl-C (SIGINT to the foreground process group, as a terminal sends it) mid-search.
        proc = start(first, "sigint")
        wait_until(proc, postgres_url, name, lambda ts: n_done(ts) >= 1 and n_running(ts) >= 1,
                   300, "a finished trial while others run")
        os.killpg(proc.pid, signal.SIGINT)
        c.sigint_rc = proc.wait(timeout=120)
        c.sigint_stdout, c.sigint_stderr = outputs("sigint")
        c.after_sigint = load(postgres_url, name).get_trials()
        deadline = time.monotonic() + 15
        while session_processes(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.5)
        c.sigint_leftovers = session_processes(proc.pid)
        reap_session(proc.pid)

        # 2. --resume, then SIGTERM to the driver (what `ray job stop` sends) while trials run.
        proc = start(resume, "sigterm")
        before = n_done(c.after_sigint)
        wait_until(proc, postgres_url, name,
                   lambda ts: n_done(ts) >= before + 1 and n_running(ts) >= 1 and training(proc.pid),
                   300, "another finished trial while others train")
        os.kill(proc.pid, signal.SIGTERM)
        try:
            c.sigterm_rc, c.sigterm_hung = proc.wait(timeout=45), False
        except subprocess.TimeoutExpired:  # stuck: have faulthandler print where, then go on
            os.kill(proc.pid, signal.SIGABRT)
            c.sigterm_rc, c.sigterm_hung = proc.wait(timeout=30), True
        c.sigterm_stdout, c.sigterm_stderr = outputs("sigterm")
        c.after_sigterm = load(postgres_url, name).get_trials()
        reap_session(proc.pid)

        # 3. --resume, then SIGKILL the driver alone while trials run.
        proc = start(resume, "killed")
        before = n_done(c.after_sigterm)
        trials = wait_until(proc, postgres_url, name,
                            lambda ts: n_done(ts) >= before + 1 and n_running(ts) >= 1 and training(proc.pid),
                            300, "another finished trial while others train")
        c.finished_before_kill = {t.number: snapshot(t) for t in trials if t.state in FINAL}
        c.trial_pids = {pid for pid, cmd in session_processes(proc.pid).items() if is_trial_process(cmd)}
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
        outputs("killed")
        c.after_kill = load(postgres_url, name).get_trials()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            c.orphans = {pid: cmd for pid, cmd in session_processes(proc.pid).items() if is_trial_process(cmd)}
            if not c.orphans:
                break
            time.sleep(0.5)
        before_files = {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in files_under(out)}
        time.sleep(2)
        c.files_changed_after_kill = sorted(str(p) for p in files_under(out)
                                            if before_files.get(p) != (p.stat().st_size, p.stat().st_mtime_ns))
        c.trials_changed_after_kill = ([snapshot(t) for t in c.after_kill]
                                       != [snapshot(t) for t in load(postgres_url, name).get_trials()])
        reap_session(proc.pid)  # Ray's agents outlive a SIGKILLed driver; the tests clean them up

        # 4. --resume to the end, with no flag but the name: the spec comes from the study.
        res = run_ktg(resume, work, env)
        c.final = res
        c.outputs.extend([res.stdout, res.stderr])
        c.final_trials = load(postgres_url, name).get_trials()
        yield c
    finally:
        for sid in sids:
            reap_session(sid)


@pytest.fixture(scope="module")
def bad_runs(postgres_url: str, tmp_path_factory: pytest.TempPathFactory,  # noqa: F811
             ray_tmp: Path) -> dict[str, SimpleNamespace]:
    """Each bad input as its own ``ktg`` process, all started at once (they never reach Ray)."""
    work = tmp_path_factory.mktemp("bad")
    existing = f"exists-{uuid.uuid4().hex[:8]}"
    optuna.create_study(study_name=existing, storage=psycopg(postgres_url))
    wrong_pw = "wr0ng-pw-7731"
    wrong_url = postgres_url.replace(f":{PASSWORD}@", f":{wrong_pw}@")
    assert wrong_url != postgres_url

    def search(case: str, **override: str) -> list[str]:
        flags = {"--nodes": "3", "--trials": "2", "--epochs": "1", "--study": f"bad-{case}",
                 "--storage": f"sqlite:///{work / case / 'db.sqlite'}", "--out": str(work / case / "out"),
                 "--target-model": "resnet20", "--models": "resnet20,wrn16-1"} | override
        return ["search", *itertools.chain.from_iterable(flags.items())]

    cases = {
        "models": search("models", **{"--models": "resnet33"}),
        "gates": search("gates", **{"--gates": "lin"}),
        "nodes": search("nodes", **{"--nodes": "1"}),
        "trials": search("trials", **{"--trials": "0"}),
        "unreachable": search("unreachable", **{"--storage": "postgresql://ktg:x@127.0.0.1:1/ktg"}),
        "password": search("password", **{"--storage": wrong_url}),
        "exists": search("exists", **{"--storage": postgres_url, "--study": existing}),
        "export": ["export", "--study", "no-such-study", "--storage", postgres_url, "--out", str(work / "exp")],
        "spec-json": ["search", "--spec-json", '{"name": "j", "nodes": 3,', "--storage",
                      f"sqlite:///{work / 'spec-json' / 'db.sqlite'}", "--out", str(work / "spec-json" / "out")],
        "spec-fields": ["search", "--spec-json", '{"name": "j", "nodes": 11, "trials": 2, "gates": ["open"]}',
                        "--storage", f"sqlite:///{work / 'spec-fields' / 'db.sqlite'}",
                        "--out", str(work / "spec-fields" / "out")],
    }
    env = ktg_env(ray_tmp)
    procs = {}
    for case, args in cases.items():
        (work / case).mkdir(exist_ok=True)
        procs[case] = subprocess.Popen([*KTG, *args], cwd=work / case, env=env, text=True,
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    results = {}
    for case, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=180)
        results[case] = SimpleNamespace(rc=proc.returncode, stdout=stdout, stderr=stderr, work=work / case,
                                        wrong_pw=wrong_pw)
    return results


# -- the space, without Ray -------------------------------------------------------------------

def test_brute_force_counts_the_tiny_space() -> None:
    # 2 models for node 2; 2 gates on each label edge; cutoff or through x {kl, cm} on 1->2 and 2->1.
    assert brute_force_space(**TINY_SPEC) == 2 * 2**2 * 3**2 == 72


@pytest.mark.parametrize("fields", [
    TINY_SPEC,
    dict(nodes=2, models=["resnet20"], gates=["through", "cutoff", "linear", "correct"], losses=["kl"]),
    dict(nodes=3, models=["resnet20", "wrn16-1"], gates=["through", "cutoff", "linear"], losses=["kl"]),
    dict(nodes=3, models=["resnet20"], gates=["linear", "correct"], losses=["kl", "cm"]),
])
def test_space_size_matches_brute_force(fields: dict[str, Any]) -> None:
    spec = SearchSpec(name="s", trials=1, target_model="resnet20", **fields)
    assert space_size(spec) == brute_force_space(**fields)


def test_sampler_reaches_exactly_the_counted_space() -> None:
    """Every assignment of every parameter the sampler may ask for, through ``sample_graph``."""
    spec = SearchSpec(name="s", trials=1, target_model="resnet20", **TINY_SPEC)
    universe: dict[str, list[str]] = {"model_2": spec.models}
    for s, t in [(0, 1), (2, 1), (0, 2), (1, 2)]:
        universe[f"gate_{s}_{t}"] = spec.gates
        if s != LABEL_NODE:
            universe[f"loss_{s}_{t}"] = spec.losses
    graphs = set()
    for values in itertools.product(*universe.values()):
        graph, why = sample_graph(FixedTrial(dict(zip(universe, values, strict=True))), spec)
        if why is None:
            Graph.from_dict(graph)  # a trainable draw is a valid graph file
        graphs.add(json.dumps(graph, sort_keys=True))
    assert len(graphs) == space_size(spec) == brute_force_space(**TINY_SPEC)


def test_frozen_target_is_flagged() -> None:
    spec = SearchSpec(name="s", trials=1, target_model="resnet20", **TINY_SPEC)
    params = {"model_2": "wrn16-1", "gate_0_1": "cutoff", "gate_2_1": "cutoff", "gate_0_2": "through",
              "gate_1_2": "through", "loss_1_2": "kl"}
    graph, why = sample_graph(FixedTrial(params), spec)
    assert why and "frozen" in why
    assert not [e for e in graph["edges"] if e["target"] == 1]


def test_describe_size() -> None:
    assert describe_size(72) == "72"
    assert describe_size(1_048_576) == "1,048,576"
    assert describe_size(3 * 10**12) == "3.00e12"


def test_masked_hides_the_password(postgres_url: str) -> None:  # noqa: F811
    shown = masked(postgres_url)
    assert PASSWORD not in shown and "***" in shown and "127.0.0.1" in shown


# -- bad input: one clear line, non-zero exit, no traceback, no Ray --------------------------------

@pytest.mark.parametrize(("case", "names"), [
    ("models", ["--models", "resnet33"]),
    ("gates", ["--gates", "lin"]),
    ("nodes", ["--nodes"]),
    ("trials", ["--trials"]),
    ("unreachable", ["storage", "127.0.0.1:1"]),
    ("password", ["storage", "password"]),
    ("exists", ["--study", "already exists", "--resume"]),
    ("export", ["study", "no-such-study"]),
    ("spec-json", ["--spec-json", "not valid JSON"]),
    ("spec-fields", ["--nodes", "--gates", "open"]),
])
def test_bad_input_is_one_clear_line(bad_runs: dict[str, SimpleNamespace], case: str, names: list[str]) -> None:
    r = bad_runs[case]
    both = r.stdout + r.stderr
    assert r.rc != 0, both
    assert "Traceback" not in both, both
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got:\n{r.stderr}"
    assert lines[0].startswith(("ktg search: error: ", "ktg export: error: ")), lines[0]
    for name in names:
        assert name in lines[0], f"{name!r} not named in: {lines[0]}"
    assert PASSWORD not in both and r.wrong_pw not in both
    assert not (r.work / "out" / "ray").exists(), "Ray started before the input was checked"
    if case in {"models", "gates", "nodes", "trials", "spec-json", "spec-fields"}:  # the spec itself is bad
        assert not (r.work / "db.sqlite").exists(), "a bad spec created the storage"


# -- the main search (PostgreSQL via --storage) -------------------------------------------------

def test_main_search_exits_0_and_prints_the_space(main_ok: SimpleNamespace) -> None:
    spec = SearchSpec(name="s", nodes=MAIN_NODES, trials=MAIN_TRIALS, target_model="resnet20",
                      models=["resnet20", "wrn16-1"])
    assert space_line(main_ok.res.stdout) == describe_size(space_size(spec)) == "1,048,576"
    assert PASSWORD not in main_ok.res.stdout
    assert "***" in main_ok.res.stdout  # the storage is shown, masked


def test_trial_count_equals_budget(main_ok: SimpleNamespace) -> None:
    assert len(main_ok.trials) == MAIN_TRIALS
    assert all(counted(t) for t in main_ok.trials)
    assert [t.number for t in main_ok.trials] == list(range(MAIN_TRIALS))


def test_every_trial_is_final(main_ok: SimpleNamespace) -> None:
    states = {t.number: t.state for t in main_ok.trials}
    assert all(s in FINAL for s in states.values()), states
    assert TrialState.COMPLETE in states.values(), states
    assert TrialState.PRUNED in states.values(), f"ASHA pruned nothing in {MAIN_TRIALS} trials: {states}"


def test_every_trial_carries_graph_and_seed(main_ok: SimpleNamespace) -> None:
    for t in main_ok.trials:
        assert t.user_attrs["seed"] == 0
        if "skipped" in t.user_attrs:  # an untrainable draw: FAIL, its graph kept to say why
            assert t.state == TrialState.FAIL
            with pytest.raises(KtgError, match="frozen"):
                Graph.from_dict(t.user_attrs["graph"])
            continue
        graph = Graph.from_dict(t.user_attrs["graph"])
        assert [n.id for n in graph.nodes] == [1, 2, 3]
        assert graph.nodes[0].model == "resnet20"
        for node in graph.nodes[1:]:
            assert t.params[f"model_{node.id}"] == node.model
        edges = {(e.source, e.target): e for e in graph.edges}
        for key, gate in t.params.items():
            if key.startswith("gate_"):
                s, tgt = (int(x) for x in key.split("_")[1:])
                assert (gate == "cutoff") == ((s, tgt) not in edges), (t.number, key, gate)
                if gate != "cutoff":
                    assert edges[s, tgt].gate == gate


def test_trial_values_are_accuracies(main_ok: SimpleNamespace) -> None:
    for t in main_ok.trials:
        if t.state == TrialState.COMPLETE:
            assert t.value is not None and 0 <= t.value <= 1
        assert all(0 <= v <= 1 for v in t.intermediate_values.values())
        assert set(t.intermediate_values) <= set(range(1, MAIN_EPOCHS + 1))


def test_only_the_poisoned_trial_fails(main_ok: SimpleNamespace) -> None:
    """The NaN trial is FAIL and the search goes on to its budget; others fail only if untrainable."""
    by_number = {t.number: t for t in main_ok.trials}
    assert by_number[POISONED].state == TrialState.FAIL
    assert "skipped" not in by_number[POISONED].user_attrs
    for t in main_ok.trials:
        if t.number != POISONED and t.state == TrialState.FAIL:
            assert "skipped" in t.user_attrs, f"trial {t.number} failed without being poisoned"
    trained = [t for t in main_ok.trials if t.number != POISONED and "skipped" not in t.user_attrs]
    assert len(trained) >= MAIN_TRIALS - 3
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trained)


def test_best_json_is_the_top_complete_trial(main_ok: SimpleNamespace) -> None:
    best = Graph.load(main_ok.out / "best.json")
    complete = [t for t in main_ok.trials if t.state == TrialState.COMPLETE]
    top_value = max(t.value for t in complete)
    top = {t.number: t for t in complete if t.value == top_value}
    assert best.meta["study"] == main_ok.name
    assert best.meta["trial"] in top
    assert best.meta["val_acc"] == pytest.approx(top_value)
    stored = Graph.from_dict(top[best.meta["trial"]].user_attrs["graph"])
    assert best.nodes == stored.nodes and best.edges == stored.edges
    assert (main_ok.out / "best.svg").is_file()


def test_best_json_trains(after_main: SimpleNamespace) -> None:
    res = after_main.train
    assert res.rc == 0, res.stdout + res.stderr


def test_export_top3_sorted_complete_only(main_ok: SimpleNamespace, after_main: SimpleNamespace) -> None:
    exported = after_main
    assert exported.export.rc == 0, exported.export.stdout + exported.export.stderr
    complete = sorted((t for t in main_ok.trials if t.state == TrialState.COMPLETE), key=lambda t: -t.value)
    k = min(3, len(complete))
    names = sorted(p.name for p in exported.out.glob("*.json"))
    assert names == [f"{i}.json" for i in range(1, k + 1)]
    graphs = [Graph.load(exported.out / f"{i}.json") for i in range(1, k + 1)]
    by_number = {t.number: t for t in main_ok.trials}
    values = [g.meta["val_acc"] for g in graphs]
    assert values == sorted(values, reverse=True)
    assert values == pytest.approx([t.value for t in complete[:k]])
    for g in graphs:
        assert by_number[g.meta["trial"]].state == TrialState.COMPLETE
        assert g.meta["study"] == main_ok.name
    assert graphs[0].meta["trial"] == Graph.load(main_ok.out / "best.json").meta["trial"]
    assert PASSWORD not in exported.export.stdout + exported.export.stderr


def test_no_password_anywhere_after_a_postgres_search(main_ok: SimpleNamespace, after_main: SimpleNamespace) -> None:
    files = files_under(main_ok.out)
    assert any(p.suffix == ".pkl" for p in files), "expected Ray's pickled state under out/ray"
    assert any(p.name.startswith("search_gen_state") for p in files)
    assert files_with(main_ok.out, PASSWORD) == []
    assert files_with(after_main.out, PASSWORD) == []
    assert PASSWORD not in main_ok.res.stdout + main_ok.res.stderr


# -- Ctrl-C, SIGKILL, resume (PostgreSQL via $KTG_STORAGE) ---------------------------------------

def test_ctrl_c_stops_cleanly(interrupted_search: SimpleNamespace) -> None:
    c = interrupted_search
    both = c.sigint_stdout + c.sigint_stderr
    assert c.sigint_rc in (0, 130), both
    assert "Traceback" not in both, both
    assert not [t.number for t in c.after_sigint if t.state in (TrialState.RUNNING,)]
    interrupted = [t for t in c.after_sigint if t.user_attrs.get("interrupted")]
    assert interrupted, "Ctrl-C came while trials ran, yet none is marked interrupted"
    assert all(t.state == TrialState.FAIL for t in interrupted)
    retries = {t.user_attrs["retry_of"] for t in c.after_sigint if "retry_of" in t.user_attrs}
    assert retries == {t.number for t in interrupted if t.params}  # nothing drawn yet: nothing to repeat
    assert not [pid for pid, cmd in c.sigint_leftovers.items() if is_trial_process(cmd)], c.sigint_leftovers


def test_sigterm_records_and_exits(interrupted_search: SimpleNamespace) -> None:
    """SIGTERM (``ray job stop``): live trials marked interrupted and re-queued, exit 128 + 15.

    A trial the driver was still drawing (no ``graph`` yet, never handed to Ray)
    may stay RUNNING: the next ``--resume`` repairs it like a SIGKILL's.
    """
    c = interrupted_search
    both = c.sigterm_stdout + c.sigterm_stderr
    assert not c.sigterm_hung, f"the driver hung after SIGTERM; its stack:\n{c.sigterm_stderr[-5000:]}"
    assert c.sigterm_rc == 128 + signal.SIGTERM, both
    assert "Traceback" not in both, both
    handed = [t.number for t in c.after_sigterm if t.state == TrialState.RUNNING and "graph" in t.user_attrs]
    assert not handed, f"trials left RUNNING after SIGTERM: {handed}\n{describe(c.after_sigterm)}"
    new = {t.number for t in c.after_sigterm if t.user_attrs.get("interrupted")} - {
        t.number for t in c.after_sigint if t.user_attrs.get("interrupted")}
    assert new, "SIGTERM came while trials ran, yet none is newly marked interrupted"
    retries = {t.user_attrs["retry_of"] for t in c.after_sigterm if "retry_of" in t.user_attrs}
    assert {t.number for t in c.after_sigterm if t.number in new and t.params} <= retries


def test_space_size_printed_equals_brute_force(interrupted_search: SimpleNamespace) -> None:
    expected = brute_force_space(**TINY_SPEC)
    assert space_line(interrupted_search.sigint_stdout) == str(expected)
    assert space_line(interrupted_search.final.stdout) == str(expected)  # the stored spec on --resume


def test_sigkill_leaves_no_trial_running_on(interrupted_search: SimpleNamespace) -> None:
    c = interrupted_search
    assert c.trial_pids, "no trial process was running when the driver was killed"
    assert c.orphans == {}, f"trial processes outlived the killed driver: {c.orphans}"
    assert c.files_changed_after_kill == []
    assert not c.trials_changed_after_kill
    assert [t for t in c.after_kill if t.state == TrialState.RUNNING], "the kill left nothing to repair"


def test_resume_finishes_the_budget(interrupted_search: SimpleNamespace) -> None:
    c = interrupted_search
    assert c.final.rc == 0, c.final.stdout + c.final.stderr[-4000:]
    assert "Traceback" not in c.final.stdout + c.final.stderr
    assert f"{TINY_SPEC['nodes']} nodes, {CHAIN_TRIALS} trials, {CHAIN_EPOCHS} epochs" in c.final.stdout
    trials = c.final_trials
    assert sum(1 for t in trials if counted(t)) == CHAIN_TRIALS
    assert all(t.state in FINAL for t in trials), {t.number: t.state.name for t in trials}


def test_resume_keeps_finished_trials(interrupted_search: SimpleNamespace) -> None:
    c = interrupted_search
    now = {t.number: snapshot(t) for t in c.final_trials}
    assert c.finished_before_kill
    for number, before in c.finished_before_kill.items():
        assert now[number] == before


def test_interrupted_trials_are_retried_with_same_params(interrupted_search: SimpleNamespace) -> None:
    trials = interrupted_search.final_trials
    print(describe(trials))  # shown on failure
    by_number = {t.number: t for t in trials}
    interrupted = [t for t in trials if t.user_attrs.get("interrupted")]
    killed = {t.number for t in interrupted_search.after_kill if t.state == TrialState.RUNNING}
    assert killed <= {t.number for t in interrupted}
    retries: dict[int, list[FrozenTrial]] = {}
    for t in trials:
        if "retry_of" in t.user_attrs:
            retries.setdefault(t.user_attrs["retry_of"], []).append(t)
    # One interrupted before it drew anything has no graph to repeat: the budget brings a fresh draw instead.
    drawn = [t for t in interrupted if t.params]
    assert set(retries) == {t.number for t in drawn}
    for t in drawn:
        assert t.state == TrialState.FAIL
        (copy,) = retries[t.number]
        assert copy.state in FINAL
        if "graph" in t.user_attrs:  # it had been handed to Ray: the very same graph runs again
            assert copy.params == t.params
            assert copy.user_attrs["graph"] == t.user_attrs["graph"]
        else:  # the driver died inside ask/sample: what was drawn is kept, the rest drawn anew
            assert t.params.items() <= copy.params.items()
    assert all(by_number[n].user_attrs.get("interrupted") for n in retries)


def test_no_password_anywhere_with_storage_from_env(interrupted_search: SimpleNamespace) -> None:
    c = interrupted_search
    assert any(p.suffix == ".pkl" for p in files_under(c.out))
    assert files_with(c.out, PASSWORD) == []
    for text in c.outputs:
        assert PASSWORD not in text


# -- pinned to library bugs (see the notes in each test) -------------------------------------------

def test_complete_trials_record_every_epoch(main_ok: SimpleNamespace) -> None:
    """COMPLETE = trained to the full budget: a value at each epoch 1..4, ``epochs_done`` 4.

    Regression: Ray Tune passes the result on which the scheduler says STOP (a
    COMPLETE trial's last epoch, a PRUNED trial's rung) only to
    ``Searcher.on_trial_complete``, never to ``on_trial_result``.
    """
    for t in main_ok.trials:
        if t.state == TrialState.COMPLETE:
            assert sorted(t.intermediate_values) == list(range(1, MAIN_EPOCHS + 1)), (t.number, t.intermediate_values)
            assert t.user_attrs["epochs_done"] == MAIN_EPOCHS
            assert t.value == pytest.approx(t.intermediate_values[MAIN_EPOCHS])


def test_pruned_trials_stop_at_an_asha_rung(main_ok: SimpleNamespace) -> None:
    """PRUNED trials hold steps 1..r exactly, r an ASHA rung (same regression as above)."""
    for t in main_ok.trials:
        if t.state == TrialState.PRUNED:
            steps = sorted(t.intermediate_values)
            assert steps and steps[-1] in ASHA_RUNGS, (t.number, t.intermediate_values)
            assert steps == list(range(1, steps[-1] + 1))
            assert t.user_attrs["epochs_done"] == steps[-1]


def test_poisoned_trial_fails_through_nan(main_ok: SimpleNamespace) -> None:
    """``KTG_FAULT_NAN_TRIALS`` must fail the trial with a NaN loss, not on input validation.

    Bug: runner.train_trial poisons with std=0, which DeviceBatches rejects
    ("mean/std: ... std > 0") before a single batch is trained.
    """
    error = ray_trial_dirs(main_ok.out)[POISONED] / "error.txt"
    assert error.is_file()
    text = error.read_text()
    assert "NaN" in text, text[-2000:]
    # The study itself says why, in one line: the exception the trainable raised.
    reason = {t.number: t for t in main_ok.trials}[POISONED].user_attrs["error"]
    assert reason.startswith("NonFiniteLoss: node "), reason
    assert "NaN or inf in epoch 1" in reason and "\n" not in reason, reason
    assert all("error" not in t.user_attrs for t in main_ok.trials if t.state != TrialState.FAIL)


def test_search_starts_its_own_ray_beside_a_ray_start_cluster(tmp_path: Path) -> None:
    """``--ray-address`` unset and no ``$RAY_ADDRESS``: "a local Ray", not whatever cluster is about.

    Bug: ``ray.init(address=None)`` joins the cluster of the last ``ray start`` on
    this machine (Ray reads ``<ray temp>/ray/ray_current_cluster``), so a search
    dies with someone else's cluster. Fix: ``ray.init(address=address or "local")``.
    """
    ray_tmp = Path(tempfile.mkdtemp(prefix="ktgrs", dir="/tmp"))
    env = ktg_env(ray_tmp)
    ray_root = ray_tmp / "ray"
    with open(tmp_path / "head.log", "wb") as log:
        head = subprocess.Popen([str(Path(sys.executable).parent / "ray"), "start", "--head", "--block",
                                 "--num-cpus", "1", "--include-dashboard=false", "--disable-usage-stats",
                                 "--port", "0"],
                                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while not (ray_root / "ray_current_cluster").exists():
            assert head.poll() is None, (tmp_path / "head.log").read_text()
            assert time.monotonic() < deadline, "ray start --head did not come up"
            time.sleep(0.5)
        head_sessions = set(ray_root.glob("session_2*"))
        with open(tmp_path / "ktg.log", "wb") as log:
            proc = subprocess.Popen(
                [*KTG, "search", "--nodes", "2", "--trials", "1", "--epochs", "1", "--study", "own-ray",
                 "--storage", f"sqlite:///{tmp_path / 'db.sqlite'}", "--out", str(tmp_path / "out"), *TINY_MODELS,
                 "--workers", "1"],
                cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:  # which Ray did its driver connect to? (no need to let the trial train)
            pattern = f"session_2*/logs/python-core-driver-*_{proc.pid}.log"
            deadline = time.monotonic() + 120
            while not (drivers := list(ray_root.glob(pattern))):
                assert proc.poll() is None, (tmp_path / "ktg.log").read_text()
                assert time.monotonic() < deadline, "ktg search never connected to a Ray"
                time.sleep(0.3)
        finally:
            reap_session(proc.pid)
        session = drivers[0].parent.parent
        assert session not in head_sessions, f"ktg search ran its trials on the `ray start` cluster ({session.name})"
    finally:
        reap_session(head.pid)  # SIGTERM would drain for 30 s first
        head.wait(timeout=30)
        shutil.rmtree(ray_tmp, ignore_errors=True)
