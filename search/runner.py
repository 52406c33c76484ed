"""Run a study: ASHA on Ray Tune, every trial recorded truthfully in Optuna storage.

The driver owns the Optuna study (ask/tell through ``GraphSearcher``); Ray
workers only train and report one validation accuracy per epoch, so they never
need the database or its password. Trial states mean what they say:
COMPLETE = trained to the full budget, PRUNED = stopped by ASHA, FAIL = raised
or went NaN (the exception in ``error``), or was sampled untrainable (the reason
in ``skipped``).
Trials that were RUNNING when a driver died are marked ``interrupted`` and
re-queued with the same parameters on ``--resume``.
"""

from __future__ import annotations

import logging
import os
import signal
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState
from ray.tune import Callback
from ray.tune.search import Searcher

from ktg.errors import KtgError
from search.space import sample_graph
from search.spec import SearchSpec
from search.storage import (
    ATTR_EPOCHS,
    ATTR_ERROR,
    ATTR_GRAPH,
    ATTR_INTERRUPTED,
    ATTR_SEED,
    ATTR_SKIPPED,
    STUDY_ATTR_SPEC,
    open_storage,
    trial_counts,
)

optuna.logging.set_verbosity(optuna.logging.WARNING)

METRIC = "val_acc"
FAULT_ENV = "KTG_FAULT_NAN_TRIALS"  # test hook: trial numbers whose data is poisoned to NaN


@dataclass
class RunOptions:
    """How (not what) to run: the machine side of a search."""

    out_dir: Path
    workers: int | None = None
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    ray_address: str | None = None
    device: str = "auto"


# -- the Ray side: one trial ---------------------------------------------------------

def train_trial(config: dict[str, Any]) -> None:
    """A Ray Tune function trainable: train one sampled graph, report val acc each epoch."""
    from dataclasses import replace

    import torch
    from ray import tune

    from ktg.data.spec import DataSpec
    from ktg.device import Accel
    from ktg.graph import Graph
    from ktg.teachers import TeacherCache
    from ktg.trainer import Recipe, train_graph

    spec = SearchSpec.model_validate(config["spec"])
    torch.set_num_threads(max(1, int(config["cpus"])))
    data_spec = DataSpec(spec.dataset, spec.data_dir, spec.class_list(), spec.val_fraction, 0, None)
    data = data_spec.load()
    if config.get("poison"):
        data = replace(data, mean=tuple(float("nan") for _ in data.mean))  # a real NaN through the real path
    recipe = Recipe(epochs=spec.epochs, batch_size=spec.batch_size, lr=spec.lr, warmup_steps=spec.warmup_steps)
    teachers = TeacherCache(data_spec, config["cache_dir"], quiet=True)

    def report(epoch: int, accs: dict[int, float]) -> None:
        tune.report({METRIC: accs[1], "epoch": epoch})

    train_graph(Graph.from_dict(config["graph"]), data, recipe=recipe, seed=spec.seed,
                accel=Accel.resolve(config["device"]), teachers=teachers, on_epoch=report,
                evaluate_test=False)


# -- the driver side: the searcher -----------------------------------------------------

@dataclass
class Tally:
    """What the live display shows."""

    budget: int
    done_before: int
    complete: int = 0
    pruned: int = 0
    failed: int = 0
    running: int = 0
    best: tuple[float, int] | None = None  # (val acc, trial number)
    started: float = field(default_factory=time.monotonic)

    @property
    def finished(self) -> int:
        return self.complete + self.pruned + self.failed


class GraphSearcher(Searcher):
    """A Ray Tune searcher backed by an Optuna study through ask/tell.

    Unlike Ray's stock OptunaSearch it records ASHA-stopped trials as PRUNED
    (not COMPLETE) and errored/NaN trials as FAIL (never left RUNNING).
    """

    def __init__(self, study: optuna.Study, spec: SearchSpec, tally: Tally, options: RunOptions,
                 poison: set[int]) -> None:
        super().__init__(metric=METRIC, mode="max")
        self.study, self.spec, self.tally, self.options = study, spec, tally, options
        self.poison = poison
        self.issued = 0
        self.live: dict[str, optuna.Trial] = {}
        self.reported: dict[int, int] = {}  # trial number -> last epoch recorded
        self.tune_trials: dict[str, Any] = {}  # Tune's Trial objects, for the reason a trial failed

    # Ray pickles searcher state into its experiment folder: keep the study (and
    # with it the storage URL and its password) out of it.
    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in {"study", "live", "reported", "tune_trials"}}

    def save(self, checkpoint_path: str) -> None:  # the study itself is the checkpoint
        return None

    def restore(self, checkpoint_path: str) -> None:
        return None

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        remaining = self.tally.budget - self.tally.done_before
        while self.issued < remaining:
            trial = self.study.ask()
            self.live[trial_id] = trial  # from here on, an interruption must record it
            self.issued += 1
            graph, skipped = sample_graph(trial, self.spec)
            trial.set_user_attr(ATTR_SEED, self.spec.seed)
            trial.set_user_attr(ATTR_GRAPH, graph)
            if skipped:
                trial.set_user_attr(ATTR_SKIPPED, skipped)
                self.study.tell(trial, state=TrialState.FAIL)
                del self.live[trial_id]
                self.tally.failed += 1
                continue
            self.tally.running += 1
            return {"graph": graph, "spec": self.spec.model_dump(), "trial_number": trial.number,
                    "cache_dir": str(self.options.out_dir / "teachers"), "device": self._device(),
                    "cpus": self.options.cpus_per_trial, "poison": trial.number in self.poison}
        return self.FINISHED

    def _device(self) -> str:
        # A trial granted no GPU must not wander onto one: Ray does not hide them from it.
        if self.options.device == "auto" and self.options.gpus_per_trial == 0:
            return "cpu"
        return self.options.device

    def _record(self, trial: optuna.Trial, result: dict[str, Any] | None) -> None:
        """Store one epoch's validation accuracy as the trial's intermediate value."""
        if not result or METRIC not in result:
            return
        epoch = int(result["epoch"])
        if epoch > self.reported.get(trial.number, 0):
            trial.report(float(result[METRIC]), step=epoch)
            trial.set_user_attr(ATTR_EPOCHS, epoch)
            self.reported[trial.number] = epoch

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        trial = self.live.get(trial_id)
        if trial is not None:
            self._record(trial, result)

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        trial = self.live.get(trial_id)
        if trial is None:
            return
        # Tune hands a trial's last result (the one that ends it) only to this hook.
        self._record(trial, result)
        self.reported.pop(trial.number, None)
        self.tally.running -= 1
        epochs = int((result or {}).get("epoch", 0))
        if error or result is None or METRIC not in result:
            trial.set_user_attr(ATTR_ERROR, failure_reason(self.tune_trials.get(trial_id)))
            self.study.tell(trial, state=TrialState.FAIL)
            self.tally.failed += 1
        elif epochs >= self.spec.epochs:
            value = float(result[METRIC])
            self.study.tell(trial, value)
            self.tally.complete += 1
            if self.tally.best is None or value > self.tally.best[0]:
                self.tally.best = (value, trial.number)
        else:
            self.study.tell(trial, state=TrialState.PRUNED)
            self.tally.pruned += 1
        del self.live[trial_id]  # only once told: an interruption until here records it
        self.tune_trials.pop(trial_id, None)

    def abandon_live(self, storage: optuna.storages.BaseStorage | None = None) -> int:
        """Ctrl-C, SIGTERM or an error in the driver: no trial may stay RUNNING.

        ``storage`` is a separate connection when called from a signal handler,
        which may have interrupted the main thread in the middle of a query.
        Returns how many trials were abandoned.
        """
        abandoned = 0
        for trial_id in list(self.live):
            trial = self.live.pop(trial_id)
            try:
                interrupt_trial(storage or self.study._storage, self.study.study_name, trial._trial_id,
                                trial.number, trial.params)
            except Exception:  # e.g. told meanwhile, or locked by the interrupted query: resume repairs it
                continue
            abandoned += 1
        return abandoned


class TrialHandles(Callback):
    """Hands the searcher Tune's Trial objects: they hold the error of a failed trial.

    Tune tells the searcher of a failure (``error=True``) without the error
    itself, but only after writing it into the Trial's error files.
    """

    def __init__(self, searcher: GraphSearcher) -> None:
        self.searcher = searcher

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.searcher.tune_trials[trial.trial_id] = trial


def failure_reason(tune_trial: Any | None, limit: int = 500) -> str:
    """One line on why a trial failed: the exception the trainable raised, else Ray's error text."""
    if tune_trial is None:
        return "failed before it started training"
    try:
        import cloudpickle

        with open(tune_trial.pickled_error_file, "rb") as f:
            exc = cloudpickle.load(f)
        cause = getattr(exc, "cause", None) or exc
        reason = f"{type(cause).__name__}: {cause}"
    except Exception:  # not picklable, or no file: the text trace's last line names the exception
        error_file = Path(tune_trial.error_file or "")
        text = error_file.read_text(errors="replace") if error_file.is_file() else ""
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        reason = lines[-1] if lines else "raised (no error text recorded by Ray)"
    return " ".join(reason.split())[:limit]


# -- study bookkeeping -------------------------------------------------------------------

def open_study(storage: optuna.storages.BaseStorage, spec: SearchSpec, *, resume: bool) -> optuna.Study:
    """Create the study, or (with resume) reopen it and repair what a dead driver left."""
    names = {s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)}
    if spec.name in names and not resume:
        raise KtgError(f"--study: a study named {spec.name!r} already exists in this storage; "
                       "allowed: --resume to continue it, or a new name")
    with warnings.catch_warnings():  # multivariate/group are "experimental" in name only
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        sampler = optuna.samplers.TPESampler(seed=spec.seed, constant_liar=True, multivariate=True,
                                             group=True, n_startup_trials=10)
    study = optuna.create_study(study_name=spec.name, storage=storage, direction="maximize",
                                sampler=sampler, load_if_exists=True)
    study.set_user_attr(STUDY_ATTR_SPEC, spec.model_dump())
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        # Its driver died (SIGKILL, crash): keep what it recorded, run its graph again.
        interrupt_trial(storage, spec.name, trial._trial_id, trial.number, trial.params)
    return study


def interrupt_trial(storage: optuna.storages.BaseStorage, study_name: str, trial_id: int, number: int,
                    params: dict[str, Any]) -> None:
    """Mark a trial that lost its driver FAIL + interrupted, and queue its graph again.

    A trial interrupted before it drew anything has no graph to repeat; the
    budget (which does not count it) brings a fresh draw instead.
    """
    storage.set_trial_user_attr(trial_id, ATTR_INTERRUPTED, True)
    storage.set_trial_state_values(trial_id, TrialState.FAIL)
    if params:
        again = optuna.load_study(study_name=study_name, storage=storage)
        again.enqueue_trial(params, user_attrs={"retry_of": number})


def stored_spec(storage: optuna.storages.BaseStorage, name: str) -> dict[str, Any] | None:
    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        return None
    return study.user_attrs.get(STUDY_ATTR_SPEC)


def finished_count(study: optuna.Study) -> int:
    """Trials that count against the budget and are over (complete, pruned or failed)."""
    counts = trial_counts(study)
    return counts["complete"] + counts["pruned"] + counts["fail"]


def poisoned_trials() -> set[int]:
    raw = os.environ.get(FAULT_ENV, "")
    return {int(x) for x in raw.split(",") if x.strip().isdigit()}


# -- the run -------------------------------------------------------------------------------

def run_search(spec: SearchSpec, study: optuna.Study, options: RunOptions,
               display: Callable[[Tally], Callback] | None = None, storage_url: str | None = None) -> Tally:
    """Run the study to its budget on Ray Tune with ASHA; return the tally.

    ``storage_url`` lets a SIGTERM handler record the running trials on a fresh
    connection; it is never handed to Ray (the searcher is pickled there).
    """
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    # Ray's own console reporter would fight our live display; the legacy one is silent at verbose=0.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    options.out_dir.mkdir(parents=True, exist_ok=True)
    tally = Tally(budget=spec.trials, done_before=finished_count(study))
    if tally.done_before >= spec.trials:
        return tally
    address = options.ray_address or os.environ.get("RAY_ADDRESS")
    if not ray.is_initialized():
        # "local" (not None): never join some other `ray start` cluster found in /tmp by accident.
        ray.init(address=address or "local", include_dashboard=False, log_to_driver=False,
                 logging_level=logging.ERROR, configure_logging=True)
    cpus = float(ray.cluster_resources().get("CPU", 1))
    workers = options.workers or max(1, int(cpus // max(options.cpus_per_trial, 0.01)))
    searcher = GraphSearcher(study, spec, tally, options, poisoned_trials())
    scheduler = ASHAScheduler(time_attr="training_iteration", metric=METRIC, mode="max",
                              max_t=spec.epochs, grace_period=1, reduction_factor=spec.reduction_factor)
    resources = {"cpu": options.cpus_per_trial, "gpu": options.gpus_per_trial}
    callbacks = [TrialHandles(searcher), *([display(tally)] if display is not None else [])]
    tuner = tune.Tuner(
        tune.with_resources(train_trial, resources),
        # reuse_actors: a new worker process per trial costs ~2 s (5x the rest of the orchestration).
        tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=-1,
                                    max_concurrent_trials=workers, reuse_actors=True),
        run_config=tune.RunConfig(name=spec.name, storage_path=str((options.out_dir / "ray").resolve()),
                                  verbose=0, callbacks=callbacks,
                                  failure_config=tune.FailureConfig(max_failures=0)),
    )
    def on_sigterm(signum: int, frame: object) -> None:
        # `ray job stop` sends SIGTERM and soon SIGKILL: record (on a connection of
        # its own: the main thread may be mid-query), then leave at once.
        try:
            if storage_url is not None:
                searcher.abandon_live(open_storage(storage_url, quick=True))
        finally:
            os._exit(128 + signum)

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        tuner.fit()
    finally:
        signal.signal(signal.SIGTERM, previous)
        abandoned = searcher.abandon_live()
    if abandoned:  # Tune swallows Ctrl-C and returns: say it was an interruption
        raise KeyboardInterrupt
    return tally
