"""``ktg search`` / ``ktg export`` end to end: real PostgreSQL, real local Ray, no mocks.

The search is a ``ktg`` subprocess (its own local Ray) on scikit-learn's
digits with two tiny models, and the study it leaves behind is read back with
Optuna's own API. The expensive runs are module fixtures shared by the tests:

* ``main_search``: 3 nodes, 12 trials, 4 epochs, ``--storage URL``, trial 1
  poisoned to NaN (``KTG_FAULT_NAN_TRIALS=1`` with the test-only hook of
  ``tests/fault_injection``: the product knows nothing of it).
* ``after_main``: ``ktg export`` of its top 3 and ``ktg train`` of its best graph.

Tests pinned to library bugs (found or fixed) sit at the end of the file, so
``pytest -x`` still runs everything else first.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
from optuna.trial import TrialState

from ktg.errors import KtgError
from ktg.graph import Graph
from search.space import describe_size, space_size
from search.spec import SearchSpec
from search.study.contract import counted
from tests.postgres import PASSWORD, postgres_url  # noqa: F401
from tests.search_helpers import (
    AS_BEFORE,
    FINAL,
    KTG,
    TINY_MODELS,
    files_under,
    files_with,
    ktg_env,
    load,
    nan_fault_env,
    reap_session,
    run_ktg,
    space_line,
)

pytestmark = pytest.mark.slow

MAIN_NODES, MAIN_TRIALS, MAIN_EPOCHS = 3, 12, 4
ASHA_RUNGS = {1, 2}  # grace 1, reduction factor 2, max_t 4: rungs at epochs 1 and 2
POISONED = 1  # trial number poisoned to NaN in the main search


def ray_trial_dirs(out: Path) -> dict[int, Path]:
    """Optuna trial number -> its Ray trial folder (``trial_number`` is in the config)."""
    dirs = {}
    for params in out.glob("ray/*/*/params.json"):
        dirs[json.loads(params.read_text())["trial_number"]] = params.parent
    return dirs


# -- shared runs ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def main_search(postgres_url: str, tmp_path_factory: pytest.TempPathFactory,  # noqa: F811
                ray_tmp: Path) -> SimpleNamespace:
    work = tmp_path_factory.mktemp("main")
    name = f"main-{uuid.uuid4().hex[:8]}"
    out = work / "out"
    args = ["search", "--nodes", str(MAIN_NODES), "--trials", str(MAIN_TRIALS), "--epochs", str(MAIN_EPOCHS),
            "--study", name, "--storage", postgres_url, "--out", str(out), *TINY_MODELS, "--workers", "2", *AS_BEFORE]
    started = time.monotonic()
    res = run_ktg(args, work, ktg_env(ray_tmp, **nan_fault_env(POISONED)))
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


# -- the main search (PostgreSQL via --storage) -------------------------------------------------

def test_main_search_exits_0_and_prints_the_space(main_ok: SimpleNamespace) -> None:
    spec = SearchSpec(name="s", nodes=MAIN_NODES, trials=MAIN_TRIALS, target_model="resnet20",
                      models=["resnet20", "wrn16-1"])
    assert space_line(main_ok.res.stdout) == describe_size(space_size(spec)) == "1,048,576"
    assert PASSWORD not in main_ok.res.stdout
    assert "***" in main_ok.res.stdout  # the storage is shown, masked


def test_trial_count_equals_budget(main_ok: SimpleNamespace) -> None:
    """--trials N = N trained graphs: untrainable (skipped) draws are recorded but not counted."""
    assert sum(1 for t in main_ok.trials if counted(t)) == MAIN_TRIALS
    assert all(counted(t) or "skipped" in t.user_attrs for t in main_ok.trials)
    assert [t.number for t in main_ok.trials] == list(range(len(main_ok.trials)))


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


def test_search_run_from_python(tmp_path: Path, ray_tmp: Path) -> None:
    """The notebook story: ``import search; search.run({...})`` runs the search ``ktg search`` runs.
    Its process is the driver, and the driver never imports torch: only the trials need it."""
    db = tmp_path / "db.sqlite"
    code = ("import sys, search\n"
            "fields = {'name': 'nb', 'nodes': 2, 'trials': 2, 'epochs': 1, 'target_model': 'resnet20',"
            " 'models': ['resnet20'], 'baselines': 'none', 'confirm_top': 0}\n"
            f"tally = search.run(fields, storage='sqlite:///{db}', out_dir='out', workers=1)\n"
            "print('tally', tally.budget, tally.finished)\n"
            "print('driver imported torch:', 'torch' in sys.modules)\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=ktg_env(ray_tmp), capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-4000:]
    assert "tally 2 2" in proc.stdout
    assert "driver imported torch: False" in proc.stdout
    trials = optuna.load_study(study_name="nb", storage=f"sqlite:///{db}").get_trials()
    assert len(trials) == 2 and all(t.state in FINAL for t in trials)
    assert (tmp_path / "out" / "ray" / "nb").is_dir()


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

    Bug: the hook (then in search/runner.py) poisoned with std=0, which DeviceBatches rejects
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
                 "--workers", "1", *AS_BEFORE],
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
