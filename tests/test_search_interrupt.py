"""``ktg search`` interrupted and resumed: Ctrl-C, SIGTERM, SIGKILL of the driver, ``--resume``.

One study (PostgreSQL through ``$KTG_STORAGE``, the tiny spec whose space is
counted by brute force) is taken by the module fixture ``interrupted_search``
through Ctrl-C, ``--resume`` and SIGTERM, ``--resume`` and SIGKILL of the
driver, and a last ``--resume`` that finishes it; the tests read what each
step left. Real PostgreSQL, real local Ray, no mocks.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import optuna
import pytest
from optuna.trial import FrozenTrial, TrialState

from api.processes import session_processes
from search.study.contract import counted
from search.study.storage import sqlalchemy_url
from tests.postgres import PASSWORD, postgres_url  # noqa: F401
from tests.search_helpers import (
    AS_BEFORE,
    FINAL,
    KTG,
    TINY_SPEC,
    brute_force_space,
    files_under,
    files_with,
    is_trial_process,
    ktg_env,
    load,
    reap_session,
    run_ktg,
    space_line,
)

pytestmark = pytest.mark.slow

CHAIN_TRIALS, CHAIN_EPOCHS = 30, 2  # enough trials that each interruption lands mid-search


# -- helpers --------------------------------------------------------------------------------

def snapshot(trial: FrozenTrial) -> dict[str, Any]:
    return {"number": trial.number, "state": trial.state, "value": trial.value, "params": trial.params,
            "intermediate": dict(trial.intermediate_values), "user_attrs": dict(trial.user_attrs),
            "datetime_complete": trial.datetime_complete}


def training(sid: int) -> bool:
    """Whether a trial of the search in session ``sid`` is running right now."""
    return any(is_trial_process(cmd) for cmd in session_processes(sid).values())


def wait_until(proc: subprocess.Popen, url: str, name: str, ready: Callable[[list[FrozenTrial]], bool],
               timeout: float, what: str) -> list[FrozenTrial]:
    """Poll the study until ``ready(trials)``; fail if the search exits first."""
    storage = optuna.storages.RDBStorage(sqlalchemy_url(url))
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


# -- the shared run ----------------------------------------------------------------------------

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
             "--losses", ",".join(TINY_SPEC["losses"]), "--workers", "2", *AS_BEFORE]
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
