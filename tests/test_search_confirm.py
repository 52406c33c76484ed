"""The confirmation stage: the winner by its mean over seeds, its margin over training alone, resumable.

Fast tests build studies by hand (Optuna's in-memory storage) and check the
rules against numbers computed here (scipy's paired t interval). The slow ones
run ``ktg search`` on digits with a real local Ray: a confirmation trial trains
exactly what a ``ktg compare``-style run of the same graph and seed does, and a
driver killed mid-stage resumes without training a finished seed again.
"""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
from optuna.distributions import CategoricalDistribution
from optuna.trial import FrozenTrial, TrialState, create_trial
from scipy.stats import ttest_rel

from ktg.graph import Graph
from search.baselines import dml, independent, kd
from search.spec import SearchSpec
from search.study.confirmation import (
    confirmation_from_json,
    finished_seeds,
    graph_key,
    pending_jobs,
    summarise,
)
from search.study.contract import STUDY_ATTR_CONFIRMATION, counted
from search.study.resume import interrupt_trial
from search.study.storage import best_trials, graph_of
from search.tune.confirm import ConfirmSearcher
from search.tune.searcher import Tally
from tests.search_helpers import KTG, ktg_env, load, reap_session, run_ktg

SPEC = SearchSpec(name="c", nodes=2, trials=6, epochs=2, target_model="resnet8", models=["resnet8"],
                  confirm_top=2, confirm_seeds=4)
ALONE, KD, DML = independent(SPEC), kd(SPEC, "resnet8"), dml(SPEC, "resnet8")


def search_trial(graph: dict, value: float, baseline: str | None = None) -> FrozenTrial:
    attrs = {"graph": graph, "seed": SPEC.seed, **({"baseline": baseline} if baseline else {})}
    return create_trial(value=value, params={"x": 0}, distributions={"x": CategoricalDistribution([0])},
                        user_attrs=attrs, intermediate_values={1: value - 0.1, 2: value})


def confirmation_trial(of: int, graph: dict, seed: int, value: float) -> FrozenTrial:
    return create_trial(value=value, user_attrs={"graph": graph, "seed": seed, "confirm_of": of})


def study_of(trials: list[FrozenTrial]) -> optuna.Study:
    """A study of these trials in a throwaway SQLite file (the best trials are read in SQL)."""
    study = optuna.create_study(direction="maximize", storage=f"sqlite:///{tempfile.mkdtemp(prefix='ktg-confirm-')}/s.db")
    study.add_trials(trials)
    return study


# Single-run best (KD, 0.90) has the worse mean; DML (0.85) is steady. Seeds 1..4 are the confirmation's.
PER_SEED = {"kd": [0.90, 0.70, 0.74, 0.71, 0.72], "dml": [0.85, 0.86, 0.84, 0.87, 0.83],
            "alone": [0.80, 0.79, 0.81, 0.80, 0.78]}


def made_up_study() -> optuna.Study:
    graphs = {"kd": (KD.graph, KD.name), "dml": (DML.graph, DML.name), "alone": (ALONE.graph, "independent")}
    trials = [search_trial(graph, PER_SEED[k][0], b) for k, (graph, b) in graphs.items()]
    trials += [confirmation_trial(i, graphs[k][0], seed, PER_SEED[k][seed])
               for i, k in enumerate(graphs) for seed in range(1, 5)]
    return study_of(trials)


def test_the_winner_is_the_best_mean_not_the_best_single_run() -> None:
    study = made_up_study()
    confirmation = summarise(study.get_trials(), SPEC)
    means = {k: sum(v) / len(v) for k, v in PER_SEED.items()}
    assert max(PER_SEED, key=lambda k: PER_SEED[k][0]) == "kd"  # the search alone would crown KD
    assert [g.trial for g in confirmation.graphs] == [1, 2, 0]  # dml, alone, kd: by mean
    for g, key in zip(confirmation.graphs, ["dml", "alone", "kd"], strict=True):
        assert g.mean == pytest.approx(means[key])
    # What ktg export, ktg search's best.json and /best give, once the summary is stored.
    study.set_user_attr(STUDY_ATTR_CONFIRMATION, confirmation.to_json())
    assert [t.number for t in best_trials(study, 3)] == [1, 2, 0]
    meta = graph_of(best_trials(study)[0], "c", confirmation_from_json(study.user_attrs["confirmation"])).meta
    assert meta["confirmation"]["val_acc_mean"] == pytest.approx(means["dml"])
    assert meta["confirmation"]["confirm_val_acc_mean"] == pytest.approx(sum(PER_SEED["dml"][1:]) / 4)


def test_the_margin_is_scipys_paired_t_interval_on_the_confirmation_seeds() -> None:
    confirmation = summarise(made_up_study().get_trials(), SPEC)
    for key, trial in (("dml", 1), ("kd", 0)):
        d = confirmation.of_trial(trial).vs_independent
        mine, alone = PER_SEED[key][1:], PER_SEED["alone"][1:]  # the search's seed is left out
        expected = ttest_rel(mine, alone).confidence_interval(0.95)
        assert (d.low, d.high) == pytest.approx((expected.low, expected.high))
        assert d.mean == pytest.approx(sum(mine) / 4 - sum(alone) / 4) and d.n == 4
    dml_row = confirmation.of_trial(1)
    assert dml_row.vs_independent.excludes_zero and dml_row.verdict.startswith("above training alone by +")
    kd_row = confirmation.of_trial(0)
    assert kd_row.verdict.startswith("below training alone")


def test_an_interval_across_zero_claims_no_winner() -> None:
    trials = [search_trial(DML.graph, 0.85, DML.name), search_trial(ALONE.graph, 0.80, "independent")]
    noisy, alone = [0.82, 0.78, 0.83, 0.77], [0.80, 0.80, 0.80, 0.80]
    trials += [confirmation_trial(0, DML.graph, s, a) for s, a in zip(range(1, 5), noisy, strict=True)]
    trials += [confirmation_trial(1, ALONE.graph, s, a) for s, a in zip(range(1, 5), alone, strict=True)]
    winner = summarise(study_of(trials).get_trials(), SPEC).winner
    assert winner.trial == 0
    assert winner.verdict == "not distinguishable from training alone on 4 seeds"
    # One confirmation seed: no interval at all (JSON has no infinity), and one seed said as such.
    one = [*trials[:2], confirmation_trial(0, DML.graph, 1, 0.90), confirmation_trial(1, ALONE.graph, 1, 0.80)]
    winner = summarise(study_of(one).get_trials(), SPEC).winner
    assert winner.verdict == "not distinguishable from training alone on 1 seed"
    assert winner.to_json()["vs_independent"]["ci"] == [None, None]


def test_independent_is_confirmed_on_every_seed_when_the_search_never_trained_it() -> None:
    study = study_of([search_trial(DML.graph, 0.85), search_trial(KD.graph, 0.83)])
    jobs = pending_jobs(study.get_trials(), SPEC)
    seeds = {(j.candidate.trial, j.seed) for j in jobs}
    assert seeds == {(t, s) for t in (0, 1) for s in range(1, 5)} | {(None, s) for s in range(0, 5)}


def test_confirm_top_0_means_no_stage() -> None:
    spec = SPEC.model_copy(update={"confirm_top": 0})
    assert pending_jobs(made_up_study().get_trials(), spec) == []


def test_a_crashed_stage_resumes_without_training_a_finished_seed() -> None:
    """Its trials: no parameters (TPE never sees them), not counted; a dead driver's one is re-run, the rest kept."""
    study = study_of([search_trial(DML.graph, 0.85, DML.name), search_trial(ALONE.graph, 0.80, "independent")])
    jobs = pending_jobs(study.get_trials(), SPEC)
    assert len(jobs) == 2 * 4
    searcher = ConfirmSearcher(study, SPEC, Tally(budget=len(jobs), done_before=0), {}, jobs)
    configs = [searcher.suggest(f"t{i}") for i in range(3)]
    for i in range(2):
        searcher.on_trial_complete(f"t{i}", {"val_acc": 0.5 + i / 10, "epoch": SPEC.epochs})
    # The driver dies with t2 running: resume marks it interrupted (search.study.resume.open_study).
    running = study.get_trials(states=(TrialState.RUNNING,))
    assert [t.number for t in running] == [configs[2]["trial_number"]]
    interrupt_trial(study._storage, study.study_name, running[0]._trial_id, running[0].number, running[0].params)
    trials = study.get_trials()
    confirms = [t for t in trials if "confirm_of" in t.user_attrs]
    assert all(not t.params and not counted(t) for t in confirms)
    assert not study.get_trials(states=(TrialState.WAITING,))  # not re-queued as a search draw
    finished = {(graph_key(c["graph"]), c["seed"]) for c in configs[:2]}
    assert set(finished_seeds(trials)) == finished
    again = pending_jobs(trials, SPEC)
    assert len(again) == len(jobs) - 2 and not {(j.candidate.key, j.seed) for j in again} & finished


# -- end to end: ktg search on digits, real local Ray ------------------------------------

E2E = dict(trials=6, epochs=2, top=2, seeds=2)


def e2e_args(name: str, url: str, out: Path) -> list[str]:
    return ["search", "--nodes", "2", "--trials", str(E2E["trials"]), "--epochs", str(E2E["epochs"]),
            "--study", name, "--storage", url, "--out", str(out), "--target-model", "resnet8",
            "--models", "resnet8", "--workers", "2", "--confirm-top", str(E2E["top"]),
            "--confirm-seeds", str(E2E["seeds"]), "--cpus-per-trial", "1"]


@pytest.fixture(scope="module")
def confirmed(tmp_path_factory: pytest.TempPathFactory, ray_tmp: Path) -> SimpleNamespace:
    work = tmp_path_factory.mktemp("confirm")
    name, url = f"cf-{uuid.uuid4().hex[:6]}", f"sqlite:///{work / 'studies.db'}"
    res = run_ktg(e2e_args(name, url, work / "out"), work, ktg_env(ray_tmp))
    assert res.rc == 0, res.stdout + res.stderr[-3000:]
    study = load(url, name)
    spec = SearchSpec.model_validate(study.user_attrs["spec"])
    return SimpleNamespace(work=work, name=name, url=url, res=res, study=study, spec=spec, trials=study.get_trials())


@pytest.mark.slow
def test_the_stage_trains_every_confirmed_graph_on_every_seed(confirmed: SimpleNamespace) -> None:
    trials, spec = confirmed.trials, confirmed.spec
    assert sum(counted(t) for t in trials) == E2E["trials"]
    assert pending_jobs(trials, spec) == []
    confirms = [t for t in trials if "confirm_of" in t.user_attrs]
    assert all(t.state == TrialState.COMPLETE and t.user_attrs["seed"] in (1, 2) for t in confirms)
    top = sorted((t for t in trials if t.state == TrialState.COMPLETE and "confirm_of" not in t.user_attrs),
                 key=lambda t: (-t.value, t.number))
    keys = list(dict.fromkeys(graph_key(t.user_attrs["graph"]) for t in top))[:E2E["top"]]
    keys = set(keys) | {graph_key(independent(spec).graph)}
    assert {(graph_key(t.user_attrs["graph"]), t.user_attrs["seed"]) for t in confirms} == {
        (k, s) for k in keys for s in (1, 2)}
    best = Graph.load(confirmed.work / "out" / "best.json")
    winner = confirmed.study.user_attrs["confirmation"]["graphs"][0]
    assert best.meta["trial"] == winner["trial"] and best.meta["confirmation"]["verdict"] == winner["verdict"]
    assert "confirmed graphs of" in confirmed.res.stdout and "winner by mean over 3 seeds" in confirmed.res.stdout
    assert "standard error of" in confirmed.res.stdout


@pytest.mark.slow
def test_a_confirmation_seed_pairs_with_a_compare_run(confirmed: SimpleNamespace) -> None:
    """Same graph, same seed, same split: the confirmation trial's accuracy is what ``ktg compare`` trains."""
    import torch

    from ktg.run import RunSetup

    trial = next(t for t in confirmed.trials if "confirm_of" in t.user_attrs and t.user_attrs.get("baseline"))
    spec = confirmed.spec
    torch.set_num_threads(1)  # as the trial (--cpus-per-trial 1) and a compare job (--threads-per-job 1)
    setup = RunSetup.prepare(spec.data_spec(), cache_dir=confirmed.work / "out" / "teachers")
    result = setup.train(Graph.from_dict(trial.user_attrs["graph"]), spec.recipe(), seed=trial.user_attrs["seed"],
                         evaluate_test=False)
    assert result.nodes[1].val_acc == [trial.intermediate_values[e] for e in range(1, spec.epochs + 1)]


@pytest.mark.slow
def test_export_shows_the_rungs_and_the_margin(confirmed: SimpleNamespace, ray_tmp: Path) -> None:
    out = confirmed.work / "exported"
    res = run_ktg(["export", "--study", confirmed.name, "--storage", confirmed.url, "--top", "2", "--out", str(out)],
                  confirmed.work, ktg_env(ray_tmp))
    assert res.rc == 0, res.stdout + res.stderr
    assert "rung at epoch 1: Spearman rho" in res.stdout and "winner by mean" in res.stdout
    first = Graph.load(out / "1.json")
    assert first.meta["confirmation"] == confirmed.study.user_attrs["confirmation"]["graphs"][0]


@pytest.mark.slow
def test_a_driver_killed_mid_confirmation_resumes_without_retraining(tmp_path: Path, ray_tmp: Path) -> None:
    name, url, out = f"ck-{uuid.uuid4().hex[:6]}", f"sqlite:///{tmp_path / 'studies.db'}", tmp_path / "out"
    env = ktg_env(ray_tmp)
    with open(tmp_path / "first.log", "wb") as log:
        proc = subprocess.Popen([*KTG, *e2e_args(name, url, out)], cwd=tmp_path, env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline, before = time.monotonic() + 900, []
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                trials = load(url, name).get_trials()
            except (KeyError, Exception):
                trials = []
            confirms = [t for t in trials if "confirm_of" in t.user_attrs]
            if any(t.state == TrialState.COMPLETE for t in confirms) and any(
                    t.state == TrialState.RUNNING for t in confirms):
                before = trials
                os.kill(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.5)
        proc.wait(timeout=60)
    finally:
        reap_session(proc.pid)
    assert before, "the search ended before a confirmation trial finished while another ran:\n" + (
        tmp_path / "first.log").read_text()[-3000:]
    done_before = {t.number: t for t in before if "confirm_of" in t.user_attrs and t.state == TrialState.COMPLETE}
    res = run_ktg(["search", "--study", name, "--storage", url, "--out", str(out), "--resume"], tmp_path, env)
    assert res.rc == 0, res.stdout + res.stderr[-3000:]
    after = load(url, name).get_trials()
    by_number = {t.number: t for t in after}
    for number, t in done_before.items():  # kept as they were
        assert by_number[number].value == t.value and by_number[number].state == TrialState.COMPLETE
    finished = {(graph_key(t.user_attrs["graph"]), t.user_attrs["seed"]) for t in done_before.values()}
    new = [t for t in after if t.number not in {b.number for b in before} and "confirm_of" in t.user_attrs]
    assert new and not {(graph_key(t.user_attrs["graph"]), t.user_attrs["seed"]) for t in new} & finished
    assert pending_jobs(after, SearchSpec.model_validate(load(url, name).user_attrs["spec"])) == []
    assert sum(counted(t) for t in after) == E2E["trials"]


def test_the_standard_error_of_one_validation_accuracy_is_printed_with_the_rungs() -> None:
    from search.tune.schedule import asha_schedule, validation_standard_error

    assert validation_standard_error(400) == pytest.approx(0.02)  # the 400 images: 2 pp
    spec = SearchSpec(name="s", nodes=2, trials=1, epochs=4)
    n = len(spec.data_spec().load().val_y)
    schedule = asha_schedule(spec)
    assert schedule.val_images == n
    assert f"on {n:,} images has a standard error of {100 * (0.16 / n) ** 0.5:.1f} pp at 80%" in schedule.describe()


def test_rung_correlations_and_the_warning_when_a_rung_ranks_on_noise() -> None:
    from search.study.rungs import describe, rung_correlations

    finals = [0.60, 0.70, 0.80, 0.90]
    trials = [create_trial(value=f, intermediate_values={1: 1 - f, 2: f / 2, 3: f}) for f in finals]
    trials.append(create_trial(state=TrialState.PRUNED, intermediate_values={1: 0.99}))  # never reached the end
    trials.append(confirmation_trial(0, ALONE.graph, 1, 0.1))  # another seed: not a search trial
    rows = rung_correlations(trials, [1, 2])
    assert [(r.epoch, r.rho, r.trials) for r in rows] == [(1, pytest.approx(-1.0), 4), (2, pytest.approx(1.0), 4)]
    lines = describe(rows)
    assert "ASHA is pruning on noise" in lines[0] and "noise" not in lines[1]
