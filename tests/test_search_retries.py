"""A lost worker is retried from its checkpoint; a trial's own fault is not retried.

Real Ray, no mocks: a ``ray start --head`` cluster with token authentication on
(and its dashboard, which serves Ray's state API), and a ``ktg search`` joining
it. While trial 0 trains, its worker process, found through Ray's state API,
is SIGKILLed; trial 1 is poisoned to NaN (``tests/fault_injection``). Expected:
trial 0 restarts from its last checkpoint and ends with exactly the per-epoch
accuracies of an uninterrupted run, each epoch recorded once, one retry
counted; trial 1 is FAIL with its error at once, never retried; the search
exits 0.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
import torch
from optuna.trial import TrialState

from ktg.device import Accel
from ktg.graph import Graph
from ktg.run import RunSetup
from search.spec import SearchSpec
from search.study.contract import STUDY_ATTR_SPEC
from search.study.storage import sqlalchemy_url
from tests.ray_cluster import alive_nodes, cluster_env, join_node, start_head, trial_workers
from tests.search_helpers import AS_BEFORE, KTG, TINY_MODELS, nan_fault_env, reap_session
from tests.waiting import wait_for

pytestmark = pytest.mark.slow

EPOCHS, KILL_AFTER, POISONED = 8, 2, 1
LOST_NODE_TRIALS = 8
def study_trials(url: str, name: str) -> list[optuna.trial.FrozenTrial]:
    try:
        return optuna.load_study(study_name=name, storage=sqlalchemy_url(url)).get_trials()
    except KeyError:
        return []


def result_epochs(out: Path, number: int) -> list[int]:
    """The epochs of every result Tune logged for trial ``number``, in order (restarts included)."""
    for params in out.glob("ray/*/*/params.json"):
        if json.loads(params.read_text())["trial_number"] == number:
            lines = (params.parent / "result.json").read_text().splitlines()
            return [json.loads(line)["epoch"] for line in lines if line.strip()]
    raise AssertionError(f"no Ray folder for trial {number}")


def start_search(work: Path, env: dict[str, str], url: str, address: str, *flags: str) -> subprocess.Popen:
    with open(work / "search.log", "wb") as log:
        return subprocess.Popen(
            [*KTG, "search", "--nodes", "2", "--study", "retry", "--storage", url, "--out", str(work / "out"),
             *TINY_MODELS, "--gates", "through,linear", "--max-retries", "2", "--ray-address", address, *AS_BEFORE, *flags],
            cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def running_with(url: str, epochs: int, count: int, to_come: int = 0) -> bool:
    """Whether ``count`` trials are running, each past ``epochs`` epochs (so with a checkpoint),
    and at least ``to_come`` trials of the lost-node search have not started yet."""
    trials = study_trials(url, "retry")
    running = sum(1 for t in trials if t.state == TrialState.RUNNING and len(t.intermediate_values) >= epochs)
    return running >= count and (not to_come or len(trials) <= LOST_NODE_TRIALS - to_come)


@pytest.fixture(scope="module")
def killed_search(tmp_path_factory: pytest.TempPathFactory, ray_tmp: Path) -> SimpleNamespace:
    """One node; trial 0's worker SIGKILLed in mid-run, trial 1 poisoned to NaN."""
    work = tmp_path_factory.mktemp("retries")
    url = f"sqlite:///{work / 'db.sqlite'}"
    env = cluster_env(ray_tmp, work, **nan_fault_env(POISONED))
    head, address, _ = start_head(work, env, cpus=1)
    search = None
    try:
        search = start_search(work, env, url, address, "--trials", "2", "--epochs", str(EPOCHS), "--workers", "1")
        wait_for(lambda: running_with(url, KILL_AFTER, 1), 600, "trial 0 in mid-run", 0.3, [search, head])
        workers = trial_workers(address, env)
        assert len(workers) == 1, workers  # one trial at a time (--workers 1): trial 0's
        killed_at = len(study_trials(url, "retry")[0].intermediate_values)
        os.kill(workers[0][0], signal.SIGKILL)
        rc = search.wait(timeout=900)
    finally:
        if search is not None:
            reap_session(search.pid)
        reap_session(head.pid)
    return SimpleNamespace(rc=rc, log=(work / "search.log").read_text(), out=work / "out", killed_at=killed_at,
                           study=optuna.load_study(study_name="retry", storage=sqlalchemy_url(url)))


@pytest.fixture(scope="module")
def lost_node_search(tmp_path_factory: pytest.TempPathFactory, ray_tmp: Path) -> SimpleNamespace:
    """Two nodes of one CPU each, one trial on each; the second node is killed in mid-search."""
    work = tmp_path_factory.mktemp("lost-node")
    url = f"sqlite:///{work / 'db.sqlite'}"
    env = cluster_env(ray_tmp, work)
    head, address, _ = start_head(work, env, cpus=1)
    node = search = None
    try:
        node = join_node(work, env, address, cpus=1)
        wait_for(lambda: len(alive_nodes(address, env)) == 2, 120, "the second node", 0.3, [head, node])
        second = next(nid for nid, is_head in alive_nodes(address, env).items() if not is_head)
        search = start_search(work, env, url, address, "--trials", str(LOST_NODE_TRIALS), "--epochs", "6",
                              "--workers", "2")
        # Tune reuses each worker for the next trial, so the second node's stays. Asking
        # the state API takes seconds, in which short trials end: ask it first, then kill
        # right after the study shows both slots in mid-trial with trials still to come.
        wait_for(lambda: any(nid == second for _, nid in trial_workers(address, env)), 600,
                 "a worker on the second node", 0.3, [search, head, node])
        wait_for(lambda: running_with(url, 1, 2, to_come=2), 600, "a trial in mid-run on each node", 0.3,
                 [search, head, node])
        running = {t.number for t in study_trials(url, "retry") if t.state == TrialState.RUNNING}
        reap_session(node.pid)  # the node leaves, in mid-trial: its raylet, its workers, all at once
        rc = search.wait(timeout=900)
    finally:
        for proc in (search, node, head):
            if proc is not None:
                reap_session(proc.pid)
    return SimpleNamespace(rc=rc, log=(work / "search.log").read_text(), running=running,
                           study=optuna.load_study(study_name="retry", storage=sqlalchemy_url(url)))


def test_the_search_survives_a_killed_worker(killed_search: SimpleNamespace) -> None:
    assert killed_search.rc == 0, killed_search.log[-4000:]
    assert KILL_AFTER <= killed_search.killed_at < EPOCHS


def test_the_killed_trial_resumes_from_its_checkpoint_as_if_never_stopped(killed_search: SimpleNamespace) -> None:
    trial = killed_search.study.trials[0]
    assert trial.state == TrialState.COMPLETE, trial
    assert trial.user_attrs["retries"] == 1
    assert "error" not in trial.user_attrs
    assert sorted(trial.intermediate_values) == list(range(1, EPOCHS + 1)) and trial.user_attrs["epochs_done"] == EPOCHS
    # Tune restarted it from its checkpoint, not from scratch: in Tune's log of the trial epoch 1
    # appears once, at most one epoch twice. Tune's result.json sometimes keeps only the run after
    # the restart (seen twice, e.g. [3, 4, 5, 6, 7, 8]); then that run starts past epoch 1.
    # The study above holds every epoch, and the numbers below are exact.
    epochs = result_epochs(killed_search.out, 0)
    assert epochs[0] > 1 or epochs.count(1) == 1, epochs
    assert max(epochs) == EPOCHS and len(epochs) <= EPOCHS + 1, epochs
    # The same numbers as an uninterrupted run of its graph (one thread, as the trial ran).
    spec = SearchSpec.model_validate(killed_search.study.user_attrs[STUDY_ATTR_SPEC])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        setup = RunSetup.prepare(spec.data_spec(), accel=Accel.resolve("cpu"),
                                 cache_dir=killed_search.out / "teachers", quiet=True)
        whole = setup.train(Graph.from_dict(trial.user_attrs["graph"]), spec.recipe(), seed=spec.seed,
                            evaluate_test=False)
    finally:
        torch.set_num_threads(threads)
    assert [trial.intermediate_values[e] for e in range(1, EPOCHS + 1)] == whole.nodes[1].val_acc


def test_a_nan_trial_fails_at_once_and_is_never_retried(killed_search: SimpleNamespace) -> None:
    trial = killed_search.study.trials[POISONED]
    assert trial.state == TrialState.FAIL
    assert trial.user_attrs["error"].startswith("NonFiniteLoss: node 1: loss became NaN or inf in epoch 1")
    assert "retries" not in trial.user_attrs and trial.intermediate_values == {}
    assert result_epochs(killed_search.out, POISONED) == [0]  # one result: the error, from one run


def test_a_lost_nodes_trial_moves_to_the_head_and_finishes(lost_node_search: SimpleNamespace) -> None:
    assert lost_node_search.rc == 0, lost_node_search.log[-4000:]
    trials = lost_node_search.study.trials
    outcomes = [(t.number, t.state.name, t.user_attrs.get("retries"), t.user_attrs.get("error")) for t in trials]
    assert len(trials) == LOST_NODE_TRIALS and all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials), (
        f"{outcomes}\n{lost_node_search.log[-3000:]}")
    retried = [t for t in trials if "retries" in t.user_attrs]
    assert [t.user_attrs["retries"] for t in retried] == [1], retried  # the lost node's trial, once
    assert retried[0].number in lost_node_search.running
    for t in trials:
        assert sorted(t.intermediate_values) == list(range(1, t.user_attrs["epochs_done"] + 1))
