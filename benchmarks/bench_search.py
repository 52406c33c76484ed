"""Orchestration overhead of ``ktg search``: Ray Tune + ASHA + storage, against plain Optuna.

Both sides run trivially cheap trials (no training: each "epoch" only reports
a made-up validation accuracy), so what is timed is the machinery alone:

* ``ktg search``: the real ``search.tune.driver.run_search`` (GraphSearcher over an
  Optuna study, ASHA on Ray Tune, a Ray actor per trial, the driver writing
  every report to the storage), with ``search.tune.trial.train_trial`` replaced in
  this process by a function that calls ``ray.tune.report`` once per epoch.
* plain Optuna: ``study.optimize`` in-process, the same sampler settings and
  the same define-by-run space (``search.space.sample_graph``), and Optuna's
  ``SuccessiveHalvingPruner`` (min resource 1, the same reduction factor).

Prints a table (total seconds, per trial, per reported epoch, and the ratio)
for SQLite and, when given ``--storage postgresql://...`` or ``--postgres``
(a throwaway server from the tests' helper), PostgreSQL; then where the Ray
side's time goes. Nothing is asserted.

    .venv/bin/python benchmarks/bench_search.py --trials 16 --epochs 4 --postgres
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import optuna  # noqa: E402
from optuna.trial import TrialState  # noqa: E402

import search.tune.driver as driver  # noqa: E402
from search.space import sample_graph  # noqa: E402
from search.spec import SearchSpec  # noqa: E402
from search.study.resume import open_study  # noqa: E402
from search.study.storage import open_storage  # noqa: E402
from search.tune.driver import RunOptions, run_search  # noqa: E402
from search.tune.searcher import GraphSearcher  # noqa: E402

optuna.logging.set_verbosity(optuna.logging.ERROR)


def fake_acc(trial_number: int, epoch: int, epochs: int) -> float:
    """A made-up learning curve: each trial has its own ceiling, reached by the last epoch."""
    ceiling = random.Random(trial_number).uniform(0.2, 0.95)
    return ceiling * (0.5 + 0.5 * epoch / epochs)


# -- the Ray side -------------------------------------------------------------------------------

def cheap_trial(config: dict[str, Any], spec_fields: dict[str, Any]) -> None:
    """Stand-in for ``search.tune.trial.train_trial``: no data, no model, one report per epoch."""
    from ray import tune

    started = time.time()
    epochs = int(spec_fields["epochs"])
    for epoch in range(1, epochs + 1):
        tune.report({"val_acc": fake_acc(config["trial_number"], epoch, epochs), "epoch": epoch,
                     "t_started": started, "t_report": time.time()})


class TimedSearcher(GraphSearcher):
    """The real searcher, with the wall time of each driver-side call (storage included) noted."""

    log: ClassVar[dict[str, list[float]]] = {}
    stamps: ClassVar[dict[str, dict[str, float]]] = {}

    def _note(self, key: str, seconds: float) -> None:
        self.log.setdefault(key, []).append(seconds)

    def suggest(self, trial_id: str):  # type: ignore[no-untyped-def]
        t0 = time.time()
        out = super().suggest(trial_id)
        self._note("suggest (ask + sample + attrs)", time.time() - t0)
        self.stamps.setdefault(trial_id, {})["suggested"] = time.time()
        return out

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        now = time.time()
        if "t_report" in result:
            self._note("report -> driver latency", now - result["t_report"])
            stamps = self.stamps.setdefault(trial_id, {})
            stamps.setdefault("started", result["t_started"])
        super().on_trial_result(trial_id, result)
        self._note("on_trial_result (report + attr)", time.time() - now)

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        now = time.time()
        if result and "t_report" in result:
            stamps = self.stamps.setdefault(trial_id, {})
            stamps.setdefault("started", result["t_started"])
            stamps["last_report"] = result["t_report"]
        stamps = self.stamps.setdefault(trial_id, {})
        stamps["completed"] = now
        super().on_trial_complete(trial_id, result, error)
        self._note("on_trial_complete (tell)", time.time() - now)


def ray_epochs(out_dir: Path, name: str) -> int:
    """Epochs reported, as Ray recorded them (one line per report in each trial's result.json)."""
    return sum(len(p.read_text().splitlines()) for p in (out_dir / "ray" / name).glob("*/result.json"))


@contextlib.contextmanager
def reusing_actors(enabled: bool) -> Iterator[None]:
    """Optionally force ``TuneConfig(reuse_actors=True)`` into run_search (what-if, not the default)."""
    from ray import tune

    original = tune.TuneConfig
    if enabled:
        tune.TuneConfig = lambda **kw: original(**{**kw, "reuse_actors": True})  # type: ignore[misc]
    try:
        yield
    finally:
        tune.TuneConfig = original  # type: ignore[misc]


def bench_ray(url: str, trials: int, epochs: int, workers: int, work: Path, reuse: bool = False) -> dict[str, Any]:
    import ray

    driver.train_trial = cheap_trial  # measured: orchestration, not training
    driver.GraphSearcher = TimedSearcher
    TimedSearcher.log, TimedSearcher.stamps = {}, {}
    name = f"bench-ray-{uuid.uuid4().hex[:8]}"
    spec = SearchSpec(name=name, nodes=3, trials=trials, epochs=epochs, target_model="resnet20",
                      models=["resnet20", "wrn16-1"])
    storage = open_storage(url)
    study = open_study(storage, spec, resume=False)
    options = RunOptions(out_dir=work / name, workers=workers)
    t0 = time.perf_counter()
    if not ray.is_initialized():
        ray.init(address="local", include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    t1 = time.perf_counter()
    with reusing_actors(reuse):
        run_search(spec, study, options)
    t2 = time.perf_counter()
    states = [t.state for t in study.get_trials(deepcopy=False)]
    return {"name": name, "init_s": t1 - t0, "search_s": t2 - t1, "trials": len(states),
            "epochs": ray_epochs(options.out_dir, name), "states": _states(states),
            "log": {k: list(v) for k, v in TimedSearcher.log.items()},
            "stamps": dict(TimedSearcher.stamps)}


# -- plain Optuna -------------------------------------------------------------------------------

class Untrainable(Exception):
    pass


def bench_optuna(url: str, trials: int, epochs: int) -> dict[str, Any]:
    import warnings

    name = f"bench-optuna-{uuid.uuid4().hex[:8]}"
    spec = SearchSpec(name=name, nodes=3, trials=trials, epochs=epochs, target_model="resnet20",
                      models=["resnet20", "wrn16-1"])
    storage = open_storage(url)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        sampler = optuna.samplers.TPESampler(seed=0, constant_liar=True, multivariate=True, group=True,
                                             n_startup_trials=10)
    pruner = optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=spec.reduction_factor)
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize", sampler=sampler,
                                pruner=pruner)
    reported = 0

    def objective(trial: optuna.Trial) -> float:
        nonlocal reported
        graph, skipped = sample_graph(trial, spec)
        trial.set_user_attr("seed", spec.seed)
        trial.set_user_attr("graph", graph)
        if skipped:  # as the searcher does: an untrainable draw is FAIL
            trial.set_user_attr("skipped", skipped)
            raise Untrainable(skipped)
        value = 0.0
        for epoch in range(1, epochs + 1):
            value = fake_acc(trial.number, epoch, epochs)
            trial.report(value, epoch)
            trial.set_user_attr("epochs_done", epoch)
            reported += 1
            if trial.should_prune():
                raise optuna.TrialPruned()
        return value

    t0 = time.perf_counter()
    study.optimize(objective, n_trials=trials, catch=(Untrainable,))
    seconds = time.perf_counter() - t0
    states = [t.state for t in study.get_trials(deepcopy=False)]
    return {"search_s": seconds, "trials": len(states), "epochs": reported, "states": _states(states)}


def _states(states: list[TrialState]) -> str:
    return ", ".join(f"{s.name.lower()} {states.count(s)}" for s in (TrialState.COMPLETE, TrialState.PRUNED,
                                                                      TrialState.FAIL) if states.count(s))


# -- PostgreSQL from the tests' helper ---------------------------------------------------------------

@contextlib.contextmanager
def throwaway_postgres() -> Iterator[str]:
    from tests.postgres import postgres_url

    fixture = getattr(postgres_url, "__wrapped__", None) or postgres_url._get_wrapped_function()
    yield from fixture()


# -- report -----------------------------------------------------------------------------------------

def _row(label: str, seconds: float, trials: int, epochs: int) -> str:
    return (f"{label:<34} {seconds:>9.2f} {seconds / max(trials, 1):>11.3f} {seconds / max(epochs, 1):>11.4f}"
            f" {trials:>7} {epochs:>7}")


def _ms(values: list[float]) -> str:
    if not values:
        return "-"
    return f"median {1000 * statistics.median(values):7.1f} ms  max {1000 * max(values):7.1f} ms  n={len(values)}"


def report(backend: str, ray_res: dict[str, Any], opt_res: dict[str, Any], workers: int, epochs: int,
           reuse_res: dict[str, Any] | None) -> None:
    print(f"\n== {backend}: {ray_res['trials']} trials x up to {epochs} epochs "
          "(ASHA / SuccessiveHalving, reduction factor 2), cheap trials")
    print(f"{'':<34} {'total s':>9} {'s / trial':>11} {'s / epoch':>11} {'trials':>7} {'epochs':>7}")
    print(_row(f"ktg search (Ray, {workers} workers), fit", ray_res["search_s"], ray_res["trials"],
               ray_res["epochs"]))
    with_init = ray_res["search_s"] + ray_res["init_s"]
    print(_row("  ... plus ray.init", with_init, ray_res["trials"], ray_res["epochs"]))
    if reuse_res is not None:
        print(_row("  what-if reuse_actors=True, fit", reuse_res["search_s"], reuse_res["trials"],
                   reuse_res["epochs"]))
    print(_row("plain Optuna in-process", opt_res["search_s"], opt_res["trials"], opt_res["epochs"]))
    ratio_t = (ray_res["search_s"] / ray_res["trials"]) / (opt_res["search_s"] / opt_res["trials"])
    ratio_e = (ray_res["search_s"] / max(ray_res["epochs"], 1)) / (opt_res["search_s"] / max(opt_res["epochs"], 1))
    print(f"{'ratio ktg / Optuna':<34} {ray_res['search_s'] / opt_res['search_s']:>9.1f}x {ratio_t:>10.1f}x "
          f"{ratio_e:>10.1f}x")
    init = f"{ray_res['init_s']:.2f} s" if ray_res["init_s"] > 0.5 else "already up"
    print(f"states: ktg [{ray_res['states']}]   optuna [{opt_res['states']}]   ray.init {init}")
    print("where the Ray side's time goes (driver-side calls include the storage round trips):")
    for key, values in ray_res["log"].items():
        print(f"  {key:<36} {_ms(values)}")
    stamps = ray_res["stamps"].values()
    startup = [s["started"] - s["suggested"] for s in stamps if "started" in s and "suggested" in s]
    finish = [s["completed"] - s["last_report"] for s in stamps if "completed" in s and "last_report" in s]
    print(f"  {'suggest -> trainable running':<36} {_ms(startup)}   (actor start-up)")
    print(f"  {'last report -> on_trial_complete':<36} {_ms(finish)}")
    driver = sum(sum(v) for v in ray_res["log"].values() if v) - sum(ray_res["log"].get("report -> driver latency",
                                                                                           []))
    print(f"  driver-side searcher calls in all: {driver:.2f} s of {ray_res['search_s']:.2f} s; actor start-up "
          f"summed over trials: {sum(startup):.2f} s ({sum(startup) / workers:.2f} s of wall time at {workers} "
          f"workers)")


def _ray_shutdown() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--storage", help="a postgresql:// URL to time as well as SQLite")
    parser.add_argument("--postgres", action="store_true", help="start a throwaway PostgreSQL (tests' helper)")
    parser.add_argument("--reuse", action="store_true",
                        help="also time a what-if run with TuneConfig(reuse_actors=True) forced in")
    parser.add_argument("--json", help="also write the raw figures here")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="ktg-bench-"))
    results: dict[str, Any] = {}
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, work, ignore_errors=True)
        if "RAY_TMPDIR" not in os.environ:  # a Ray of our own, never one somebody `ray start`-ed
            ray_tmp = tempfile.mkdtemp(prefix="ktgbench", dir="/tmp")
            os.environ["RAY_TMPDIR"] = ray_tmp
            stack.callback(shutil.rmtree, ray_tmp, ignore_errors=True)
        stack.callback(_ray_shutdown)
        backends = {"SQLite": f"sqlite:///{work / 'bench.db'}"}
        if args.storage:
            backends["PostgreSQL"] = args.storage
        elif args.postgres:
            backends["PostgreSQL"] = stack.enter_context(throwaway_postgres())
        print(f"cheap-trial orchestration benchmark: {args.trials} trials, {args.epochs} epochs, "
              f"{args.workers} Ray workers, {os.cpu_count()} CPUs")
        for backend, url in backends.items():
            opt_res = bench_optuna(url, args.trials, args.epochs)
            ray_res = bench_ray(url, args.trials, args.epochs, args.workers, work)
            reuse_res = bench_ray(url, args.trials, args.epochs, args.workers, work, reuse=True) if args.reuse else None
            report(backend, ray_res, opt_res, args.workers, args.epochs, reuse_res)
            results[backend] = {"ray": {k: v for k, v in ray_res.items() if k != "stamps"}, "optuna": opt_res,
                                "ray_reuse": reuse_res and {k: v for k, v in reuse_res.items() if k != "stamps"}}
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
