"""The Optuna study in a database: open it, and read back what it holds.

The storage is the record of truth for a search: every trial's parameters,
per-epoch validation accuracy (intermediate values), graph (user attribute
``graph``), seed and epochs reached. The URL may carry a password, so it is
only ever shown masked.

The names and rules are ``search.study.contract``'s; here they are applied through
Optuna's API (trial counts, the best trials), and ``search.study.queries`` applies
them in SQL for the service's status polls.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import FrozenTrial

from ktg.errors import KtgError, first_line
from ktg.graph import Graph
from search.study.confirmation import Confirmation, confirmation_from_json
from search.study.contract import (
    FINISHED_STATES,
    STUDY_ATTR_CONFIRMATION,
    TRIAL_STATES,
    TrialAttr,
    counted,
)

if TYPE_CHECKING:
    from search.study.queries import RankedTrial

STORAGE_ENV = "KTG_STORAGE"
DEFAULT_STORAGE = "sqlite:///ktg-studies.db"


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
    return first_line(exc).removeprefix("(psycopg.OperationalError) ")


def load_study(name: str, storage: optuna.storages.BaseStorage) -> optuna.Study:
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        names = [s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)]
        raise KtgError(f"study: no study named {name!r} in this storage; existing: "
                       f"{', '.join(names) or 'none'}") from None


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


def best_trials(study: optuna.Study, k: int = 1) -> list[RankedTrial]:
    """The top-k trials trained to the full budget, best first: ``search.study.queries.top_trials``'s
    rule and query (the service's ``/best`` reads the same), on the study's database. After a
    confirmation stage its graphs come first, by their mean over seeds (``search.study.confirmation``)."""
    from sqlalchemy.orm import Session

    # Imported here: queries builds on this module's counting rules.
    from search.study.queries import top_trials

    storage = getattr(study._storage, "_backend", study._storage)  # Optuna wraps an RDBStorage in a cache
    if not isinstance(storage, optuna.storages.RDBStorage):
        raise KtgError("storage: the best trials are read from a database storage (sqlite:// or postgresql://)")
    confirmed = confirmation_of(study)
    with Session(storage.engine) as session:
        return top_trials(session, study.study_name, k, first=[g.trial for g in confirmed.graphs] if confirmed else ())


def confirmation_of(study: optuna.Study) -> Confirmation | None:
    """The study's confirmation summary, if its confirmation stage ran."""
    return confirmation_from_json(study.user_attrs.get(STUDY_ATTR_CONFIRMATION))


def graph_of(trial: FrozenTrial | RankedTrial, study_name: str, confirmation: Confirmation | None = None) -> Graph:
    """The trial's graph as a ``ktg-graph/1`` file with its provenance in ``meta``, and,
    for a confirmed graph, its ``confirmation``: accuracy per seed, mean, margin over independent."""
    graph = Graph.from_dict(trial.user_attrs[TrialAttr.GRAPH])
    confirmed = confirmation.of_trial(trial.number) if confirmation else None
    extra = {"confirmation": confirmed.to_json()} if confirmed else {}
    return graph.with_meta(study=study_name, trial=trial.number, val_acc=trial.value,
                           seed=trial.user_attrs.get(TrialAttr.SEED), epochs=trial.user_attrs.get(TrialAttr.EPOCHS),
                           **extra)
