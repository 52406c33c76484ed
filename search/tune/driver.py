"""Run a study: ASHA on Ray Tune, every trial recorded truthfully in Optuna storage.

This is the driver process of a search. It joins (or starts) Ray, hands Tune
the worker-side trainable (``search.tune.trial``) and the searcher that owns the
study (``search.tune.searcher``), and makes sure that however the run ends (its
budget spent, Ctrl-C, SIGTERM from ``ray job stop``) no trial stays RUNNING.
Workers never need the database or its password, and the driver never imports
torch (``tests/test_layers.py`` holds it to that).
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from ray.tune import Callback

from ktg.teachers import default_cache_dir
from search.baselines import study_baselines
from search.local_ray import join_ray
from search.spec import SearchSpec
from search.study.confirmation import pending_jobs, summarise
from search.study.contract import STUDY_ATTR_ASHA_RUNGS, STUDY_ATTR_CONFIRMATION, STUDY_ATTR_RUNG_SPEARMAN, TrialAttr
from search.study.rungs import rung_correlations
from search.study.storage import finished_count, open_storage
from search.teachers import TEACHER_FILES, teacher_files
from search.tune.checkpoints import book_of
from search.tune.confirm import ConfirmSearcher
from search.tune.schedule import asha_schedule
from search.tune.searcher import GraphSearcher, Tally, TrialHandles, checkpoint_budget
from search.tune.trial import METRIC, train_trial
from search.tune.twins import Twins

DEFAULT_OUT_DIR = Path("runs/search")
CONFIRM_STAGE = "-confirm"  # the confirmation stage's Tune folder: the study's, with this suffix


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
        """The machine's part of every trial's config (see ``search.tune.trial.train_trial``)."""
        # A trial granted no GPU must not wander onto one: Ray does not hide them from it.
        device = "cpu" if self.device == "auto" and self.gpus_per_trial == 0 else self.device
        return {"cache_dir": str(default_cache_dir(self.out_dir / "teachers")), "device": device,
                "cpus": self.cpus_per_trial}


def run_search(spec: SearchSpec, study: optuna.Study, options: RunOptions,
               display: Callable[[Tally, str], Callback] | None = None, storage_url: str | None = None) -> Tally:
    """Run the study to its budget on Ray Tune with ASHA, then its confirmation stage; return the
    search's tally. ``display(tally, title)`` makes each stage's live display.

    The baselines are queued first, on a new study (``search.baselines``). Once
    the budget is spent, the rungs' correlations and the confirmation's summary
    are stored as the study's user attributes. ``storage_url`` lets a SIGTERM
    handler record the running trials on a fresh connection; it is never handed
    to Ray (the searcher is pickled there).
    """
    # Ray's own console reporter would fight our live display; the legacy one is silent at verbose=0.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # Tune's per-trial CSV and TensorBoard logs (a thread and files per trial, copied with
    # the experiment folder) repeat what the study records; its JSON log stays (_tuner).
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    options.out_dir.mkdir(parents=True, exist_ok=True)
    queue_baselines(study, spec)
    tally = Tally(budget=spec.trials, done_before=finished_count(study))
    workers: int | None = None
    # Given teachers' files, as this process reads them (the study keeps the names the spec gave).
    worker_config = {**options.worker_config(), TEACHER_FILES: teacher_files(spec)}
    # For readers without the data (the API's study page): the rungs depend on the data's size.
    study.set_user_attr(STUDY_ATTR_ASHA_RUNGS, list(asha_schedule(spec).rungs))
    if tally.done_before < spec.trials:
        workers = _start_ray(options)
        trials = study.get_trials(deepcopy=False)
        book = book_of(trials, spec.keep_best, checkpoint_budget(spec), experiment_dir(spec, options))
        searcher = GraphSearcher(study, spec, tally, worker_config, book, Twins.of_trials(trials))
        _fit(spec, options, searcher, display(tally, spec.name) if display else None, workers, storage_url)
    study.set_user_attr(STUDY_ATTR_RUNG_SPEARMAN, [c.to_json() for c in rung_correlations(
        study.get_trials(deepcopy=False), asha_schedule(spec).rungs)])
    jobs = pending_jobs(study.get_trials(deepcopy=False), spec)
    if jobs:
        workers = workers or _start_ray(options)
        confirming = Tally(budget=len(jobs), done_before=0)
        searcher = ConfirmSearcher(study, spec, confirming, worker_config, jobs)
        title = f"{spec.name} confirmation ({spec.confirm_seeds} more seeds)"
        _fit(spec, options, searcher, display(confirming, title) if display else None, workers, storage_url,
             stage=CONFIRM_STAGE)
    if spec.confirm_top:
        study.set_user_attr(STUDY_ATTR_CONFIRMATION, summarise(study.get_trials(deepcopy=False), spec).to_json())
    return tally


def queue_baselines(study: optuna.Study, spec: SearchSpec) -> None:
    """On a new study, queue its baselines (``search.baselines``) before any draw: TPE starts from them."""
    if study.get_trials(deepcopy=False):
        return  # queued when the study began (a resume), or it began before baselines existed
    for baseline in study_baselines(spec)[0]:
        study.enqueue_trial(baseline.params, user_attrs={TrialAttr.BASELINE: baseline.name})


def _fit(spec: SearchSpec, options: RunOptions, searcher: GraphSearcher, display: Callback | None, workers: int,
         storage_url: str | None, stage: str = "") -> None:
    """One Tune run of ``searcher``'s trials; Ctrl-C or SIGTERM leave none RUNNING."""
    callbacks = [TrialHandles(searcher), *([display] if display is not None else [])]
    tuner = _tuner(spec, options, searcher, callbacks, workers, stage)
    try:
        with _recording_on_sigterm(searcher, storage_url):
            tuner.fit()
    finally:
        abandoned = searcher.abandon_live()
    if abandoned:  # Tune swallows Ctrl-C and returns: say it was an interruption
        raise KeyboardInterrupt


def experiment_dir(spec: SearchSpec, options: RunOptions, stage: str = "") -> Path:
    """Tune's folder of the study (or of its confirmation ``stage``): one subfolder per trial, with its checkpoint."""
    return (options.out_dir / "ray").resolve() / (spec.name + stage)


def _start_ray(options: RunOptions) -> int:
    """Join the given Ray cluster, else start a local one; return how many trials run at once."""
    import ray

    join_ray(options.ray_address)
    cpus = float(ray.cluster_resources().get("CPU", 1))
    return options.workers or max(1, int(cpus // max(options.cpus_per_trial, 0.01)))


def _tuner(spec: SearchSpec, options: RunOptions, searcher: GraphSearcher, callbacks: list[Callback],
           workers: int, stage: str = "") -> Any:
    """Tune's ``Tuner``: the trainable on its resources, ASHA over epochs (none in the confirmation
    ``stage``: its runs go to the full budget), the searcher, retries."""
    from ray import tune
    from ray.tune.logger import JsonLoggerCallback
    from ray.tune.schedulers import ASHAScheduler

    from search.tune.patches import ignore_stale_actor_failures

    ignore_stale_actor_failures()  # a lost node's trial is retried, not failed (search.tune.patches)

    scheduler = None if stage else ASHAScheduler(time_attr="training_iteration", metric=METRIC, mode="max", max_t=spec.epochs,
                              grace_period=asha_schedule(spec).grace, reduction_factor=spec.reduction_factor)
    resources = {"cpu": options.cpus_per_trial, "gpu": options.gpus_per_trial}
    return tune.Tuner(
        # The spec once, in Ray's object store, not in every trial's config: Tune keeps those
        # for the whole search, so the driver would grow with the spec per trial (README: Performance).
        tune.with_resources(tune.with_parameters(train_trial, spec_fields=spec.model_dump()), resources),
        # reuse_actors: a new worker process per trial costs more than the rest of the
        # orchestration together (README: Performance, search orchestration).
        tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=-1,
                                    max_concurrent_trials=workers, reuse_actors=True),
        run_config=tune.RunConfig(name=spec.name + stage, storage_path=str(experiment_dir(spec, options).parent),
                                  verbose=0, callbacks=[*callbacks, JsonLoggerCallback()],
                                  # No num_to_keep: with it Tune copies the whole experiment folder after
                                  # every checkpoint; the searcher drops old ones (search.tune.checkpoints).
                                  checkpoint_config=tune.CheckpointConfig(),
                                  # A lost worker is retried from its checkpoint; a trial's own
                                  # error ends it with a result instead (search.tune.trial), never retried.
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
