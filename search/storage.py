"""The Optuna study in a database: open it, and read back what it holds.

The storage is the record of truth for a search: every trial's parameters,
per-epoch validation accuracy (intermediate values), graph (user attribute
``graph``), seed and epochs reached. The URL may carry a password, so it is
only ever shown masked.

The study rules live here, and every floor reads them from here: the trial
state names (``TrialStateName``), which trials count and which are finished
(``counted``: neither re-queued nor skipped; ``FINISHED_STATES``), which trials are the best (``best_trials``),
and the URL SQLAlchemy is given (``sqlalchemy_url``). ``search.study_queries``
reads the same rules in SQL, for status polls.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, get_args

import optuna
from optuna.trial import FrozenTrial, TrialState

from ktg.errors import KtgError
from ktg.graph import Graph

STORAGE_ENV = "KTG_STORAGE"
DEFAULT_STORAGE = "sqlite:///ktg-studies.db"

# User attributes every trial carries (the contract with export and the API).
ATTR_GRAPH = "graph"
ATTR_SEED = "seed"
ATTR_EPOCHS = "epochs_done"
ATTR_SKIPPED = "skipped"          # sampled but never trained (e.g. frozen target)
ATTR_REPAIR_OF = "repair_of"      # the skipped draw whose nearest trainable graph this trial is
ATTR_INTERRUPTED = "interrupted"  # was RUNNING when its driver died; re-queued on resume
ATTR_ERROR = "error"              # why a trial that raised or went NaN failed
ATTR_RETRIES = "retries"          # times Tune restarted it from its checkpoint after its process died
ATTR_CONTINUED_FROM = "continued_from"  # the earlier trial of the same graph whose epochs it took over
STUDY_ATTR_SPEC = "spec"
STUDY_ATTR_RUNGS = "asha_rungs"  # the epochs at which ASHA may stop a trial, recorded when a search starts

# The trial states users see, count and filter by: Optuna's own, named in lower case.
TrialStateName = Literal["complete", "pruned", "fail", "running", "waiting"]
TRIAL_STATES: dict[TrialStateName, TrialState] = {name: TrialState[name.upper()] for name in get_args(TrialStateName)}
# A trial is over, having used its share of the budget, once it completed, was pruned or failed.
FINISHED_STATES: tuple[TrialStateName, ...] = ("complete", "pruned", "fail")


def storage_url(url: str | None) -> str:
    """The URL to use: the flag, else $KTG_STORAGE, else the embedded SQLite file."""
    return url or os.environ.get(STORAGE_ENV) or DEFAULT_STORAGE


def sqlalchemy_url(url: str) -> str:
    """Use psycopg 3 for plain ``postgresql://`` URLs (SQLAlchemy would pick psycopg2)."""
    if url.startswith("postgresql://"):
        return "postgresql+psycopg://" + url.removeprefix("postgresql://")
    return url


def masked(url: str) -> str:
    """The URL with any password replaced by ***, for messages and logs."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<unparseable storage URL>"


def open_storage(url: str, *, quick: bool = False) -> optuna.storages.RDBStorage:
    """Connect (pre-ping, recycle) and fail with one clear line if the database cannot be used.

    ``quick``: short connect/lock/statement timeouts, for the last writes of a
    process that is being stopped.
    """
    shown = masked(url)
    if not url.startswith(("sqlite:", "postgresql:", "postgresql+psycopg:", "postgresql+psycopg2:", "mysql")):
        raise KtgError(f"storage: got {shown!r}; allowed: postgresql://user@host/db or sqlite:///file.db")
    url = sqlalchemy_url(url)
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine_kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if not url.startswith("sqlite"):
        connect_args: dict[str, Any] = {"connect_timeout": 10}
        if quick:
            connect_args = {"connect_timeout": 5, "options": "-c lock_timeout=3000 -c statement_timeout=3000"}
        engine_kwargs |= {"pool_recycle": 300, "connect_args": connect_args}
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, skip_compatibility_check=quick,
                                          skip_table_creation=quick)
    except Exception as exc:
        raise KtgError(f"storage: cannot use {shown}: {_reason(exc)}") from None


def _reason(exc: BaseException) -> str:
    """The first meaningful line of a driver error, without the SQL noise."""
    text = str(getattr(exc, "orig", None) or exc).strip()
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), type(exc).__name__)
    return line.removeprefix("(psycopg.OperationalError) ")


def load_study(name: str, storage: optuna.storages.BaseStorage) -> optuna.Study:
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        names = [s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)]
        raise KtgError(f"study: no study named {name!r} in this storage; existing: "
                       f"{', '.join(names) or 'none'}") from None


def counted(trial: FrozenTrial) -> bool:
    """Whether a trial counts against the budget.

    Interrupted ones were re-queued (their copy counts); skipped ones (FAIL with
    ``skipped``) were never trained: ``--trials N`` means N trained graphs.
    """
    skipped = trial.state == TrialState.FAIL and ATTR_SKIPPED in trial.user_attrs
    return not trial.user_attrs.get(ATTR_INTERRUPTED) and not skipped


def trial_counts(study: optuna.Study) -> dict[str, int]:
    """Trials by state: complete, pruned, fail, running, waiting (re-queued and skipped ones left out)."""
    states = Counter(t.state.name.lower() for t in study.get_trials(deepcopy=False) if counted(t))
    return {name: states.get(name, 0) for name in TRIAL_STATES}


def finished_in(counts: Mapping[str, int]) -> int:
    """How many trials are over, from counts by state name (``trial_counts``, ``StudyFigures.counts``)."""
    return sum(counts[name] for name in FINISHED_STATES)


def finished_count(study: optuna.Study) -> int:
    """Trials that count against the budget and are over (complete, pruned or failed)."""
    return finished_in(trial_counts(study))


def best_trials(study: optuna.Study, k: int = 1) -> list[FrozenTrial]:
    """The top-k trials trained to the full budget (COMPLETE only), best first."""
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if t.value is not None and ATTR_GRAPH in t.user_attrs]
    return sorted(done, key=lambda t: (-t.value, t.number))[:k]


def graph_of(trial: FrozenTrial, study_name: str) -> Graph:
    """The trial's graph as a ``ktg-graph/1`` file with its provenance in ``meta``."""
    graph = Graph.from_dict(trial.user_attrs[ATTR_GRAPH])
    return graph.with_meta(study=study_name, trial=trial.number, val_acc=trial.value,
                           seed=trial.user_attrs.get(ATTR_SEED), epochs=trial.user_attrs.get(ATTR_EPOCHS))
