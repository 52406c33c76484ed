"""Run a study: ASHA on Ray Tune, every trial recorded truthfully in Optuna storage.

This is the driver process of a search. It joins (or starts) Ray, hands Tune
the worker-side trainable (``search.trial``) and the searcher that owns the
study (``search.searcher``), and makes sure that however the run ends (its
budget spent, Ctrl-C, SIGTERM from ``ray job stop``) no trial stays RUNNING.
Workers never need the database or its password, and the driver never imports
torch (``tests/test_layers.py`` holds it to that).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import optuna
from ray.tune import Callback

from ktg.data.spec import DataSpec
from search.searcher import GraphSearcher, Tally, TrialHandles, checkpoint_budget
from search.spec import SearchSpec
from search.storage import STUDY_ATTR_RUNGS, finished_count, open_storage
from search.trial import METRIC, train_trial
from search.trial_checkpoints import book_of
from search.twins import Twins

DEFAULT_OUT_DIR = Path("runs/search")


@dataclass
class RunOptions:
    """How (not what) to run: the machine side of a search."""

    out_dir: Path
    workers: int | None = None
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    ray_address: str | None = None
    device: str = "auto"

    def worker_config(self) -> dict[str, Any]:
        """The machine's part of every trial's config (see ``search.trial.train_trial``)."""
        # A trial granted no GPU must not wander onto one: Ray does not hide them from it.
        device = "cpu" if self.device == "auto" and self.gpus_per_trial == 0 else self.device
        return {"cache_dir": str(self.out_dir / "teachers"), "device": device, "cpus": self.cpus_per_trial}


@dataclass(frozen=True)
class AshaSchedule:
    """Where ASHA may stop a trial: after ``grace`` epochs, then at every rung."""

    grace: int
    rungs: tuple[int, ...]  # epochs < the budget at which a trial can be stopped
    warmup_epochs: int  # how long the recipe's lr warm-up lasts, in epochs

    def describe(self) -> str:
        where = ", ".join(map(str, self.rungs)) or "none (every trial runs to the end)"
        return f"ASHA rungs at epochs {where} (lr warm-up over after epoch {self.warmup_epochs})"


def _count_train_images(data: DataSpec) -> int:
    return len(data.load().train_y)


@cache
def _train_images(data: DataSpec) -> int:
    """How many images a trial trains on, read in a child process: reading data imports
    torch, which the driver never does (it was ~470 MiB of the driver's ~1.1 GB at trial
    1,500 of the scale run, README: Performance). A bad dataset's KtgError comes back."""
    if "torch" in sys.modules:  # loaded already (a notebook, a test): a child would save nothing
        return _count_train_images(data)
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as child:
        return child.submit(_count_train_images, data).result()


def asha_schedule(spec: SearchSpec) -> AshaSchedule:
    """ASHA's rungs for ``spec``. With no ``grace_epochs`` the first rung comes once the lr
    warm-up is over: before that, validation accuracies mostly measure how far up the lr
    has climbed, and they lean against every graph that starts slowly by design (a
    ``linear`` gate weighs almost nothing in the first epochs)."""
    steps_per_epoch = max(1, _train_images(spec.data_spec()) // spec.batch_size)
    warmup = spec.recipe().warmup_epochs(steps_per_epoch)
    grace = min(spec.epochs, spec.grace_epochs or max(1, warmup))
    rungs, epoch = [], grace
    while epoch < spec.epochs:
        rungs.append(epoch)
        epoch *= spec.reduction_factor
    return AshaSchedule(grace, tuple(rungs), warmup)


def run_search(spec: SearchSpec, study: optuna.Study, options: RunOptions,
               display: Callable[[Tally], Callback] | None = None, storage_url: str | None = None) -> Tally:
    """Run the study to its budget on Ray Tune with ASHA; return the tally.

    ``storage_url`` lets a SIGTERM handler record the running trials on a fresh
    connection; it is never handed to Ray (the searcher is pickled there).
    """
    # Ray's own console reporter would fight our live display; the legacy one is silent at verbose=0.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # Tune's per-trial CSV and TensorBoard logs (a thread and files per trial, copied with
    # the experiment folder) repeat what the study records; its JSON log stays (_tuner).
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    options.out_dir.mkdir(parents=True, exist_ok=True)
    tally = Tally(budget=spec.trials, done_before=finished_count(study))
    if tally.done_before >= spec.trials:
        return tally
    schedule = asha_schedule(spec)
    # For readers without the data (the API's study page): the rungs depend on the data's size.
    study.set_user_attr(STUDY_ATTR_RUNGS, list(schedule.rungs))
    workers = _start_ray(options)
    trials = study.get_trials(deepcopy=False)
    book = book_of(trials, spec.keep_best, checkpoint_budget(spec), experiment_dir(spec, options))
    searcher = GraphSearcher(study, spec, tally, options.worker_config(), book, Twins.of_trials(trials))
    callbacks = [TrialHandles(searcher), *([display(tally)] if display is not None else [])]
    tuner = _tuner(spec, options, schedule, searcher, callbacks, workers)
    try:
        with _recording_on_sigterm(searcher, storage_url):
            tuner.fit()
    finally:
        abandoned = searcher.abandon_live()
    if abandoned:  # Tune swallows Ctrl-C and returns: say it was an interruption
        raise KeyboardInterrupt
    return tally


def experiment_dir(spec: SearchSpec, options: RunOptions) -> Path:
    """Tune's folder of the study: one subfolder per trial, with its checkpoint."""
    return (options.out_dir / "ray").resolve() / spec.name


def _start_ray(options: RunOptions) -> int:
    """Join the given Ray cluster, else start a local one; return how many trials run at once."""
    import ray

    address = options.ray_address or os.environ.get("RAY_ADDRESS")
    if not ray.is_initialized():
        # "local" (not None): never join some other `ray start` cluster found in /tmp by accident.
        ray.init(address=address or "local", include_dashboard=False, log_to_driver=False,
                 logging_level=logging.ERROR, configure_logging=True)
    cpus = float(ray.cluster_resources().get("CPU", 1))
    return options.workers or max(1, int(cpus // max(options.cpus_per_trial, 0.01)))


def _tuner(spec: SearchSpec, options: RunOptions, schedule: AshaSchedule, searcher: GraphSearcher,
           callbacks: list[Callback], workers: int) -> Any:
    """Tune's ``Tuner``: the trainable on its resources, ASHA over epochs, the searcher, retries."""
    from ray import tune
    from ray.tune.logger import JsonLoggerCallback
    from ray.tune.schedulers import ASHAScheduler

    from search.tune_patches import ignore_stale_actor_failures

    ignore_stale_actor_failures()  # a lost node's trial is retried, not failed (search.tune_patches)

    scheduler = ASHAScheduler(time_attr="training_iteration", metric=METRIC, mode="max", max_t=spec.epochs,
                              grace_period=schedule.grace, reduction_factor=spec.reduction_factor)
    resources = {"cpu": options.cpus_per_trial, "gpu": options.gpus_per_trial}
    return tune.Tuner(
        # The spec once, in Ray's object store, not in each of 1,500 trial configs: Tune keeps
        # those (a driver grew 0.29 MiB per trial with it inside).
        tune.with_resources(tune.with_parameters(train_trial, spec_fields=spec.model_dump()), resources),
        # reuse_actors: a new worker process per trial costs ~2 s (5x the rest of the orchestration).
        tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=-1,
                                    max_concurrent_trials=workers, reuse_actors=True),
        run_config=tune.RunConfig(name=spec.name, storage_path=str(experiment_dir(spec, options).parent),
                                  verbose=0, callbacks=[*callbacks, JsonLoggerCallback()],
                                  # No num_to_keep: with it Tune copies the whole experiment folder after
                                  # every checkpoint; the searcher drops old ones (search.trial_checkpoints).
                                  checkpoint_config=tune.CheckpointConfig(),
                                  # A lost worker is retried from its checkpoint; a trial's own
                                  # error ends it with a result instead (search.trial), never retried.
                                  failure_config=tune.FailureConfig(max_failures=spec.max_retries)),
    )


@contextmanager
def _recording_on_sigterm(searcher: GraphSearcher, storage_url: str | None) -> Iterator[None]:
    """While inside, SIGTERM records the live trials as interrupted, then exits 128 + 15 at once."""

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
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
