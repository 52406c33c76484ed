"""The Ray Tune fix of ``search.tune.patches``: a dead actor's leftover failure never ends a requeued trial."""

from __future__ import annotations

import pytest
from ray.exceptions import ActorUnavailableError, RayActorError
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
