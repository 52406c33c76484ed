"""The storage rules of a search's Optuna study: open it, interrupt a trial, repair, read back.

Trial states mean what they say: COMPLETE = trained to the full budget,
PRUNED = stopped by ASHA, FAIL = raised or went NaN (the exception in
``error``), or was sampled untrainable (the reason in ``skipped``). Trials
that were RUNNING when a driver died are marked ``interrupted`` and re-queued
with the same parameters when the study is reopened with ``resume``.
"""

from __future__ import annotations

import warnings
from typing import Any

import optuna
from optuna.trial import TrialState

from ktg.errors import KtgError
from search.spec import SearchSpec
from search.study.contract import STUDY_ATTR_SPEC, TrialAttr

optuna.logging.set_verbosity(optuna.logging.WARNING)


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
    storage.set_trial_user_attr(trial_id, TrialAttr.INTERRUPTED, True)
    storage.set_trial_state_values(trial_id, TrialState.FAIL)
    if params:
        again = optuna.load_study(study_name=study_name, storage=storage)
        again.enqueue_trial(params, user_attrs={TrialAttr.RETRY_OF: number})


def close_unfinished_trials(storage: optuna.storages.BaseStorage, study_name: str, reason: str) -> int:
    """End what a stopped study left unfinished, as trials that do not count; how many.

    For a study that will not run again (cancelled, its driver gone): the graphs its
    driver re-queued (WAITING) end FAIL + skipped (``reason``: never trained); a trial
    still RUNNING lost its driver before it could say so, and ends FAIL + interrupted.
    """
    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:
        return 0
    closed = 0
    for trial in study.get_trials(deepcopy=False, states=(TrialState.WAITING, TrialState.RUNNING)):
        attr, value = ((TrialAttr.SKIPPED, reason) if trial.state == TrialState.WAITING
                       else (TrialAttr.INTERRUPTED, True))
        try:
            storage.set_trial_user_attr(trial._trial_id, attr, value)
            storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # ended meanwhile
        closed += 1
    return closed


def stored_spec(storage: optuna.storages.BaseStorage, name: str) -> dict[str, Any] | None:
    """The spec a study was created with (for ``--resume``), or None when there is no such study."""
    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        return None
    return study.user_attrs.get(STUDY_ATTR_SPEC)

