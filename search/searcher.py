"""The driver side of a search: the Ray Tune searcher that owns the Optuna study.

It runs in the driver process. It asks the study for each trial, samples its
graph and hands Ray only what a worker needs to train it (``search.trial``);
every result comes back here and is told to the study, so each trial ends in
the state it earned (see ``search.study``) and none is left RUNNING.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState
from ray.tune import Callback
from ray.tune.search import Searcher

from search.space import sample_graph
from search.spec import SearchSpec
from search.storage import ATTR_EPOCHS, ATTR_ERROR, ATTR_GRAPH, ATTR_SEED, ATTR_SKIPPED
from search.study import interrupt_trial
from search.trial import METRIC


@dataclass
class Tally:
    """Trials of this run by outcome, and the best so far: what the live display shows."""

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
    ``worker_config`` is the machine's part of every trial's config (teacher
    cache, device, CPUs), merged into what ``search.trial.train_trial`` gets.
    """

    def __init__(self, study: optuna.Study, spec: SearchSpec, tally: Tally, worker_config: dict[str, Any]) -> None:
        super().__init__(metric=METRIC, mode="max")
        self.study, self.spec, self.tally, self.worker_config = study, spec, tally, worker_config
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
                    **self.worker_config}
        return self.FINISHED

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
