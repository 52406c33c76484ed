"""The Ray Tune fix of ``search.tune.patches``: a dead actor's leftover failure never ends a requeued trial."""

from __future__ import annotations

import pytest
from ray.exceptions import ActorUnavailableError, OutOfMemoryError, RayActorError
from ray.tune.execution.tune_controller import TuneController
from ray.tune.experiment import Trial

from search.tune.patches import ignore_stale_actor_failures


def stub_trial(status: str) -> Trial:
    trial = Trial("train_trial", config={}, stub=True)
    trial.set_status(status)
    return trial


def test_a_requeued_trial_ignores_a_leftover_actor_failure() -> None:
    ignore_stale_actor_failures()
    ignore_stale_actor_failures()  # once per process, however often the driver asks
    trial = stub_trial(Trial.PENDING)
    failures = trial.run_metadata.num_failures
    # No controller is touched on this path: the failure is dropped before it counts.
    TuneController._process_trial_failure(None, trial, ActorUnavailableError("lost", None))  # type: ignore[arg-type]
    TuneController._process_trial_failure(None, trial, RayActorError())  # type: ignore[arg-type]
    assert trial.status == Trial.PENDING and trial.run_metadata.num_failures == failures


@pytest.mark.parametrize(("status", "error"), [(Trial.RUNNING, RayActorError()),
                                               (Trial.PENDING, ValueError("the trial's own"))])
def test_other_failures_reach_tune(status: str, error: Exception) -> None:
    ignore_stale_actor_failures()
    trial = stub_trial(status)
    with pytest.raises(AttributeError):  # Tune's own handling starts on the (absent) controller
        TuneController._process_trial_failure(None, trial, error)  # type: ignore[arg-type]


class Controller:
    """Records which way Tune's own failure handling went (no Ray needed on this path)."""

    def __init__(self) -> None:
        self._has_errored, self._iteration, self._trials = False, 0, []
        self.recovered = self.stopped = False
        self._callbacks = self
        self._scheduler_alg = self._search_alg = self

    def _try_recover(self, trial: Trial, exc: Exception) -> None:
        self.recovered = True

    def _schedule_trial_stop(self, trial: Trial, exception: Exception | None = None) -> None:
        self.stopped = True

    def on_trial_recover(self, **info: object) -> None:
        pass

    def on_trial_error(self, *args: object, **info: object) -> None:
        pass

    def on_trial_complete(self, *args: object, **info: object) -> None:
        pass


@pytest.mark.parametrize(("error", "retried"), [(OutOfMemoryError("the node ran low on memory"), False),
                                                (RayActorError(), True)])
def test_out_of_memory_is_never_retried_a_lost_worker_is(error: Exception, retried: bool) -> None:
    ignore_stale_actor_failures()
    trial = stub_trial(Trial.RUNNING)
    # Tune's handle_error counts the failure and writes the trial's error files (which need a
    # running Ray session); the count is what decides a retry, so count only.
    trial.handle_error = lambda exc, **kw: setattr(trial.run_metadata, "num_failures",  # type: ignore[method-assign]
                                                   trial.run_metadata.num_failures + 1)
    trial.max_failures = 3
    controller = Controller()
    TuneController._process_trial_failure(controller, trial, error)  # type: ignore[arg-type]
    assert (controller.recovered, controller.stopped) == (retried, not retried)
