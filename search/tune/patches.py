"""Two fixes to Ray Tune (2.60) that ktg's retry contract depends on, applied by the driver.

1. A dead actor's leftover failure never ends a requeued trial.

When a node leaves, the trial running there fails more than once: its ``train``
future fails with the lost actor, Tune requeues the trial (PENDING) to restart it
from its checkpoint, and a moment later a second future of the same dead actor
fails too. ``TuneController._process_trial_failure`` then finds the trial PENDING,
not RUNNING, and ends it as ERROR instead of retrying it, although
``--max-retries`` allows more (seen on a 2-node cluster: one retry, then FAIL).
A failure of a dead actor's leftover future, reported for a trial that is already
waiting to restart, says nothing new about the trial: drop it.

Failures of a trial's creation task reach the same method with the trial set
RUNNING first (``TuneController._actor_failed``), so they are not affected.

2. Running out of memory is the trial's own fault. When Ray's memory monitor kills
a worker to save its node, the trial fails with ``ray.exceptions.OutOfMemoryError``,
which Tune treats as a lost worker and retries up to ``--max-retries`` times: the
same graph, on the same kind of worker, runs out of memory again each time. Such a
trial ends at once (FAIL, with its error), like one that raises ``MemoryError``
itself (``search.tune.trial``).
"""

from __future__ import annotations

import functools
from typing import Any

PATCHED = "_ktg_ignores_stale_actor_failures"


def ignore_stale_actor_failures() -> None:
    """Patch ``TuneController._process_trial_failure`` once per process (idempotent)."""
    from ray.exceptions import OutOfMemoryError, RayActorError
    from ray.tune.execution.tune_controller import TuneController
    from ray.tune.experiment import Trial

    original = TuneController._process_trial_failure
    if getattr(original, PATCHED, False):
        return

    @functools.wraps(original)
    def process_trial_failure(self: TuneController, trial: Trial, exception: Any) -> None:
        if trial.status == Trial.PENDING and isinstance(exception, RayActorError):
            return  # a leftover future of the actor that already failed this trial
        if isinstance(exception, OutOfMemoryError):
            trial.max_failures = 0  # Tune's should_recover() then says no: the trial ends as an error
        original(self, trial, exception)

    setattr(process_trial_failure, PATCHED, True)
    TuneController._process_trial_failure = process_trial_failure  # type: ignore[method-assign]
