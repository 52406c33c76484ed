"""The confirmation stage on Ray Tune: re-train the top graphs and independent on more seeds.

It is a second Tune run after the search's, on the same Ray workers and as many
trials at once, with no scheduler: ASHA must never stop a confirmation run (its
accuracy at the full budget is the whole point), and a run of its own needs no
exemption inside ASHA. Its searcher is the search's (``GraphSearcher``: every
epoch recorded, errors and restarts handled, nothing left RUNNING on Ctrl-C or
SIGTERM) with one change: it hands out the stage's pending (graph, seed) jobs
(``search.study.confirmation``) instead of asking TPE.

A confirmation trial is created in the study directly (not queued through
Optuna's ask), with no parameters: TPE, which learns only from trials holding
its parameters, never sees another seed's accuracy, and a trial interrupted
with its driver is not re-queued as a search draw. Its ``graph``, ``seed`` and
``confirm_of`` say what it was; its checkpoints are deleted as it ends.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from search.spec import SearchSpec
from search.study.confirmation import Job
from search.study.contract import TrialAttr
from search.tune.checkpoints import CheckpointBook
from search.tune.searcher import GraphSearcher, Tally
from search.tune.twins import Twins


class ConfirmSearcher(GraphSearcher):
    """Hands Tune the confirmation jobs, one Optuna trial each, then says it is finished."""

    def __init__(self, study: optuna.Study, spec: SearchSpec, tally: Tally, worker_config: dict[str, Any],
                 jobs: Sequence[Job]) -> None:
        # Keep no checkpoint once a run is over (keep_best 0, no disk for pruned ones), and
        # offer no twin: a run on another seed continues nothing.
        super().__init__(study, spec, tally, worker_config, CheckpointBook(0, 0), Twins())
        self.jobs = list(jobs)

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        if not self.jobs:
            return self.FINISHED
        job = self.jobs.pop(0)
        graph = job.candidate.graph
        attrs: dict[str, Any] = {TrialAttr.GRAPH: graph, TrialAttr.SEED: job.seed,
                                 TrialAttr.CONFIRM_OF: job.candidate.trial}
        if job.candidate.baseline:
            attrs[TrialAttr.BASELINE] = job.candidate.baseline
        template = FrozenTrial(number=-1, state=TrialState.RUNNING, value=None, datetime_start=datetime.now(UTC),
                               datetime_complete=None, params={}, distributions={}, user_attrs=attrs,
                               system_attrs={}, intermediate_values={}, trial_id=-1)
        trial = optuna.Trial(self.study, self.study._storage.create_new_trial(self.study._study_id, template))
        self.live[trial_id] = trial  # from here on, an interruption must record it
        self.tally.running += 1
        self.graphs[trial_id] = graph
        return {"graph": graph, "trial_number": trial.number, "seed": job.seed, **self.worker_config}
