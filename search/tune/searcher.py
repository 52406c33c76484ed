"""The driver side of a search: the Ray Tune searcher that owns the Optuna study.

It runs in the driver process. It asks the study for each trial, samples its
graph and hands Ray only what a worker needs to train it (``search.tune.trial``);
every result comes back here and is told to the study, so each trial ends in
the state it earned (see ``search.study.resume``) and none is left RUNNING. Which
trial checkpoints stay on disk is decided here too, as trials end.
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

from search.baselines import Baseline, baseline_named
from search.space import repaired, sample_graph
from search.spec import SearchSpec
from search.study.contract import Outcome, TrialAttr
from search.study.resume import interrupt_trial
from search.tune.checkpoints import CheckpointBook, drop_older_checkpoints
from search.tune.trial import ERROR, METRIC, TWIN
from search.tune.twins import Twin, Twins


@dataclass
class Tally:
    """Trials of this run by outcome, and the best so far: what the live display shows."""

    budget: int
    done_before: int
    complete: int = 0
    pruned: int = 0
    failed: int = 0  # failed in training; untrainable draws are ``skipped`` and not counted
    skipped: int = 0
    running: int = 0
    best: tuple[float, int] | None = None  # (val acc, trial number)
    started: float = field(default_factory=time.monotonic)

    @property
    def finished(self) -> int:
        return self.complete + self.pruned + self.failed


def checkpoint_budget(spec: SearchSpec) -> int:
    """``checkpoint_gb`` in bytes: the disk the PRUNED trials' checkpoints may use."""
    return int(spec.checkpoint_gb * 1e9)


class GraphSearcher(Searcher):
    """A Ray Tune searcher backed by an Optuna study through ask/tell.

    Unlike Ray's stock OptunaSearch it records ASHA-stopped trials as PRUNED
    (not COMPLETE) and errored/NaN trials as FAIL (never left RUNNING).
    ``worker_config`` is the machine's part of every trial's config (teacher
    cache, device, CPUs), merged into what ``search.tune.trial.train_trial`` gets.
    Untrainable draws are recorded (``skipped``) but not counted, and their
    repair is drawn next (``search.space.repaired``); a re-drawn
    graph continues its twin (``search.tune.twins``); each epoch is recorded once
    however often Tune restarts a trial (``retries``); and when a trial ends,
    ``book`` decides whether its checkpoint stays (``search.tune.checkpoints``).
    """

    def __init__(self, study: optuna.Study, spec: SearchSpec, tally: Tally, worker_config: dict[str, Any],
                 book: CheckpointBook | None = None, twins: Twins | None = None) -> None:
        super().__init__(metric=METRIC, mode="max")
        self.study, self.spec, self.tally, self.worker_config = study, spec, tally, worker_config
        self.book = book or CheckpointBook(spec.keep_best, checkpoint_budget(spec))
        self.twins = twins or Twins()
        self.issued = 0  # trainable graphs handed to Ray: what the budget counts
        self.live: dict[str, optuna.Trial] = {}
        self.graphs: dict[str, dict[str, Any]] = {}  # Tune trial id -> the graph it trains
        self.continuing: dict[str, tuple[Twin, bool]] = {}  # Tune trial id -> (its twin, twin's checkpoint pinned)
        self.reported: dict[int, dict[int, float]] = {}  # trial number -> {epoch: val acc} recorded
        self.tune_trials: dict[str, Any] = {}  # Tune's Trial objects, for the reason a trial failed
        self.retries: dict[str, int] = {}  # Tune trial id -> restarts after its process died

    # Ray pickles searcher state into its experiment folder: keep the study (and
    # with it the storage URL and its password) out of it.
    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items()
                if k not in {"study", "live", "reported", "tune_trials", "book", "twins", "graphs"}}

    def save(self, checkpoint_path: str) -> None:  # the study itself is the checkpoint
        return None

    def restore(self, checkpoint_path: str) -> None:
        return None

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        remaining = self.tally.budget - self.tally.done_before
        while self.issued < remaining:
            trial = self.study.ask()
            self.live[trial_id] = trial  # from here on, an interruption must record it
            graph, skipped = sample_graph(trial, self.spec)
            baseline = self._baseline_of(trial)
            if baseline is not None:  # queued with its nearest parameters; it trains the hand-made graph
                graph, skipped = baseline.graph, None
                trial.set_user_attr(TrialAttr.BASELINE, baseline.name)
            trial.set_user_attr(TrialAttr.SEED, self.spec.seed)
            trial.set_user_attr(TrialAttr.GRAPH, graph)
            if skipped:  # recorded, but not counted: --trials N means N trained graphs
                trial.set_user_attr(TrialAttr.SKIPPED, skipped)
                self.study.tell(trial, state=TrialState.FAIL)
                del self.live[trial_id]
                self.tally.skipped += 1
                # The next ask pops this repair (search.space.repaired), so draws never loop.
                self.study.enqueue_trial(repaired(trial.params, self.spec), user_attrs={TrialAttr.REPAIR_OF: trial.number})
                continue
            self.issued += 1
            self.tally.running += 1
            self.graphs[trial_id] = graph
            # The spec reaches the worker once, through tune.with_parameters (search.tune.driver): Tune
            # keeps several copies of every trial's config for the whole search.
            config = {"graph": graph, "trial_number": trial.number, **self.worker_config}
            twin = self.twins.of(graph)
            if twin is not None:  # drawn before: continue where that trial stopped (search.tune.twins)
                checkpoint = self.book.pin(twin.number)
                self.continuing[trial_id] = (twin, checkpoint is not None)
                trial.set_user_attr(TrialAttr.CONTINUED_FROM, twin.number)
                config[TWIN] = {"number": twin.number, "values": list(twin.values),
                                "checkpoint": str(checkpoint) if checkpoint is not None else None}
            return config
        return self.FINISHED

    def _baseline_of(self, trial: optuna.Trial) -> Baseline | None:
        """The baseline a queued trial trains: its own ``baseline`` attribute, or that of the
        interrupted trial it runs again (``search.study.resume`` re-queues only parameters)."""
        attrs = trial.user_attrs
        name = attrs.get(TrialAttr.BASELINE)
        if name is None and isinstance(attrs.get(TrialAttr.RETRY_OF), int):
            storage = self.study._storage
            original = storage.get_trial_id_from_study_id_trial_number(self.study._study_id, attrs[TrialAttr.RETRY_OF])
            name = storage.get_trial(original).user_attrs.get(TrialAttr.BASELINE)
        return baseline_named(self.spec, name) if isinstance(name, str) else None

    def _record(self, trial: optuna.Trial, result: dict[str, Any] | None) -> None:
        """Store one epoch's validation accuracy as the trial's intermediate value."""
        if not result or METRIC not in result:
            return
        epoch = int(result["epoch"])
        values = self.reported.setdefault(trial.number, {})
        if epoch > max(values, default=0):  # a trial restarted from a checkpoint may repeat an epoch
            trial.report(float(result[METRIC]), step=epoch)
            trial.set_user_attr(TrialAttr.EPOCHS, epoch)
            values[epoch] = float(result[METRIC])
            self.book.saw(trial.number, epoch, values[epoch])

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        trial = self.live.get(trial_id)
        if trial is not None:
            self._record(trial, result)
        tune_trial = self.tune_trials.get(trial_id)
        if tune_trial is not None and tune_trial.path:
            drop_older_checkpoints(Path(tune_trial.path))

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        trial = self.live.get(trial_id)
        if trial is None:
            return
        # Tune hands a trial's last result (the one that ends it) only to this hook.
        self._record(trial, result)
        values = self.reported.pop(trial.number, {})
        self.tally.running -= 1
        epochs = int((result or {}).get("epoch", 0))
        tune_trial = self.tune_trials.get(trial_id)
        trial_dir = Path(tune_trial.path) if tune_trial is not None and tune_trial.path else None
        value = None
        if error or result is None or METRIC not in result or ERROR in result:
            # Its own fault (ERROR, never retried), or its process died more often than --max-retries.
            reason = str(result[ERROR]) if result and ERROR in result else failure_reason(tune_trial)
            if result and ERROR in result and trial_dir is not None:
                _write_error_file(trial_dir, reason)
            trial.set_user_attr(TrialAttr.ERROR, reason)
            self.study.tell(trial, state=TrialState.FAIL)
            self.tally.failed += 1
            outcome = "fail"
        elif epochs >= self.spec.epochs:
            value = float(result[METRIC])
            self.study.tell(trial, value)
            self.tally.complete += 1
            if self.tally.best is None or value > self.tally.best[0]:
                self.tally.best = (value, trial.number)
            outcome = "complete"
        else:
            self.study.tell(trial, state=TrialState.PRUNED)
            self.tally.pruned += 1
            outcome = "pruned"
        del self.live[trial_id]  # only once told: an interruption until here records it
        self.tune_trials.pop(trial_id, None)
        self.retries.pop(trial_id, None)
        self._keep_checkpoints(trial_id, trial.number, outcome, trial_dir, value, values)

    def _keep_checkpoints(self, trial_id: str, number: int, outcome: Outcome, trial_dir: Path | None,
                          value: float | None, values: dict[int, float]) -> None:
        """A trial ended: its checkpoint by the book's rules, and it may be the twin of later draws."""
        graph = self.graphs.pop(trial_id, None)
        twin, pinned = self.continuing.pop(trial_id, (None, False))
        if twin is not None and pinned:
            self.book.unpin(twin.number)
        self.book.ended(number, outcome, trial_dir, value)
        if outcome == "fail" or graph is None:
            return
        self.twins.offer(graph, number, values)
        if twin is not None and len(values) > len(twin.values):
            self.book.drop(twin.number)  # it went further: the next draw of the graph continues it, not the twin

    def on_trial_restart(self, trial_id: str) -> None:
        """Tune restarts a trial whose process died, from its last checkpoint: count it."""
        trial = self.live.get(trial_id)
        if trial is None:
            return
        self.retries[trial_id] = self.retries.get(trial_id, 0) + 1
        trial.set_user_attr(TrialAttr.RETRIES, self.retries[trial_id])

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
    """Hands the searcher Tune's Trial objects and restarts, which Tune tells callbacks only.

    Tune tells the searcher of a failure (``error=True``) without the error
    itself, but only after writing it into the Trial's error files; and of a
    restart (a dead worker, retried from its checkpoint) not at all.
    """

    def __init__(self, searcher: GraphSearcher) -> None:
        self.searcher = searcher

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.searcher.tune_trials[trial.trial_id] = trial

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.searcher.on_trial_restart(trial.trial_id)


def _write_error_file(trial_dir: Path, reason: str) -> None:
    """Where Tune writes the error of a trial that raised: a trial that failed by itself
    reports it instead of raising (so that it is not retried), and it lands there too."""
    try:
        with open(trial_dir / "error.txt", "a") as f:
            f.write(f"{reason}\n(raised by the trial itself: not retried)\n")
    except OSError:
        pass  # the study holds the error; the file is a courtesy


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
    if reason.startswith(("OutOfMemoryError", "ray.exceptions.OutOfMemoryError")):
        # Ray's text is pages of node addresses, log paths and advice: what the trial did is this.
        reason = ("OutOfMemoryError: out of memory; Ray's memory monitor stopped the trial's worker "
                  "(the graph does not fit its node; not retried)")
    return " ".join(reason.split())[:limit]
