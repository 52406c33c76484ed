"""Fast reads of a study's trials, in SQL on the Optuna storage's tables.

Status is polled (dashboards, ``watch curl``, CI waiting for a study), so it
must stay cheap however many trials a study holds. ``search.study.storage.trial_counts``
loads every trial (parameters, attributes, every epoch's value) to count them;
for a 1,500-trial study that is hundreds of milliseconds per poll. Here the
database counts: a handful of indexed aggregate queries, a few milliseconds.

The rules are ``search.study.contract``'s (which trials count is built from its
``UNCOUNTED`` table; "finished" is ``FINISHED_STATES``; "best" means full-budget
COMPLETE trials with a finite value and a graph: ``top_trials``, which ``ktg
export`` uses too), and ``tests/test_study_queries.py`` pins these
reads to what Optuna's own API says about the same study. The table models are
Optuna's own (``optuna.storages._rdb.models``): the schema Optuna migrates is
the one read here, not a copy of it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, get_args

from optuna.storages._rdb import models as om
from optuna.trial import TrialState
from sqlalchemy import and_, case, exists, func, or_, select
from sqlalchemy.orm import Session, aliased

from search.study.contract import (
    FINISHED_STATES,
    TRIAL_ATTRS,
    TRIAL_STATES,
    UNCOUNTED,
    UNRANKED,
    TrialAttr,
    TrialStateName,
)
from search.study.storage import finished_in

_STATE_NAMES: dict[TrialState, TrialStateName] = {state: name for name, state in TRIAL_STATES.items()}
_FINITE = om.TrialValueModel.TrialValueType.FINITE
# How a page of trials can be ordered: by a column, '-' for descending; unknown values last, ties by number.
TrialOrder = Literal["number", "-number", "val_acc", "-val_acc", "epochs_done", "-epochs_done"]
TRIAL_ORDERS: tuple[str, ...] = get_args(TrialOrder)


@dataclass
class StudyFigures:
    """What a status read reports about a study's trials."""

    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TRIAL_STATES, 0))
    best_val_acc: float | None = None  # over finished trials, at the epoch each reached
    best_complete_val_acc: float | None = None  # over full-budget COMPLETE trials (rank 1 of /best)

    @property
    def finished(self) -> int:
        return finished_in(self.counts)


@dataclass
class TrialRecord:
    """One trial as the trials endpoint shows it."""

    number: int
    state: TrialStateName
    value: float | None
    started_at: datetime | None
    completed_at: datetime | None
    history: list[tuple[int, float | None]]
    attrs: dict[str, Any]


def optuna_study_id(session: Session, study_name: str) -> int | None:
    """Optuna's id of the study, or None while the search has not created it yet."""
    return session.execute(select(om.StudyModel.study_id).where(om.StudyModel.study_name == study_name)).scalar()


def _has_attr(key: str) -> Any:
    attr = om.TrialUserAttributeModel
    return exists().where(and_(attr.trial_id == om.TrialModel.trial_id, attr.key == str(key)))


def _counted() -> Any:
    """``search.study.contract.counted`` in SQL, built from the same table (``UNCOUNTED``)."""
    trial = om.TrialModel
    return ~or_(*(_has_attr(attr) if state is None else and_(trial.state == state, _has_attr(attr))
                  for attr, state in UNCOUNTED.items()))


def _scored() -> Any:
    """Trials whose value is an accuracy that can be "best": complete or pruned, with a graph,
    and not left out of the ranking (``UNRANKED``: confirmation trials)."""
    return and_(om.TrialModel.state.in_((TrialState.COMPLETE, TrialState.PRUNED)), _has_attr(TrialAttr.GRAPH),
                *(~_has_attr(attr) for attr in UNRANKED))


def _value() -> Any:
    """The trial's finite value (its accuracy), or NULL."""
    value = om.TrialValueModel
    return (select(value.value).where(value.trial_id == om.TrialModel.trial_id, value.objective == 0,
                                      value.value_type == _FINITE).scalar_subquery())


def study_figures(session: Session, study_name: str) -> StudyFigures:
    """Trial counts by state (re-queued and skipped ones left out) and the best accuracies so far."""
    figures = StudyFigures()
    study_id = optuna_study_id(session, study_name)
    if study_id is None:
        return figures
    trial = om.TrialModel
    for state, count in session.execute(select(trial.state, func.count()).where(trial.study_id == study_id, _counted())
                                        .group_by(trial.state)):
        name = _STATE_NAMES.get(state)
        if name is not None:
            figures.counts[name] = int(count)
    value = om.TrialValueModel
    best = (select(trial.state, func.max(value.value))
            .join(value, value.trial_id == trial.trial_id)
            .where(trial.study_id == study_id, value.objective == 0, value.value_type == _FINITE, _scored())
            .group_by(trial.state))
    by_state = {state: _finite(v) for state, v in session.execute(best)}
    figures.best_complete_val_acc = by_state.get(TrialState.COMPLETE)
    figures.best_val_acc = max((v for v in by_state.values() if v is not None), default=None)
    return figures


@dataclass(frozen=True)
class RankedTrial:
    """One of a study's best trials: what a graph file and its provenance need.

    ``user_attrs`` holds the graph, seed and epochs (the attributes ``storage.graph_of`` reads).
    """

    number: int
    value: float
    user_attrs: dict[str, Any]


_RANKED_ATTRS = (TrialAttr.GRAPH, TrialAttr.SEED, TrialAttr.EPOCHS, TrialAttr.BASELINE)


def top_trials(session: Session, study_name: str, k: int, first: Sequence[int] = ()) -> list[RankedTrial]:
    """The study's best ``k`` trials, the rule ``ktg export`` and ``/best`` share: the trial
    numbers ``first`` lead (a confirmation stage's graphs, by their mean), then the ranked
    COMPLETE trials (trained to the full budget) with a finite value and a graph, the best
    value first, ties by trial number.

    The database sorts, with ``LIMIT k``: only the k winners' graphs leave the database.
    """
    study_id = optuna_study_id(session, study_name)
    if study_id is None:
        return []
    trial, value = om.TrialModel, om.TrialValueModel
    attrs = {key: aliased(om.TrialUserAttributeModel) for key in _RANKED_ATTRS}
    query = (select(trial.number, value.value, *(a.value_json for a in attrs.values()))
             .join(value, and_(value.trial_id == trial.trial_id, value.objective == 0))
             .where(trial.study_id == study_id, trial.state == TrialState.COMPLETE, value.value_type == _FINITE))
    for key, attr in attrs.items():
        on = and_(attr.trial_id == trial.trial_id, attr.key == str(key))
        query = query.join(attr, on) if key == TrialAttr.GRAPH else query.outerjoin(attr, on)
    leading = {r.number: r for r in _ranked_rows(session, query.where(trial.number.in_(list(first))))} if first else {}
    rest = (query.where(*(~_has_attr(a) for a in UNRANKED), trial.number.not_in(list(leading)))
            .order_by(value.value.desc(), trial.number).limit(max(0, k - len(leading))))
    return ([leading[n] for n in first if n in leading] + _ranked_rows(session, rest))[:k]


def _ranked_rows(session: Session, query: Any) -> list[RankedTrial]:
    ranked = []
    for number, val, *raw in session.execute(query):
        if val is None or not math.isfinite(val):
            continue
        user_attrs = {str(key): json.loads(text) for key, text in zip(_RANKED_ATTRS, raw, strict=True) if text}
        ranked.append(RankedTrial(number=int(number), value=float(val), user_attrs=user_attrs))
    return ranked


def first_trial_error(session: Session, study_name: str) -> str | None:
    """The error of the study's first failed trial that counts (skipped draws and re-queued ones do not)."""
    study_id = optuna_study_id(session, study_name)
    if study_id is None:
        return None
    # Aliased: _counted() looks up the same table in a subquery correlated on the trial only.
    trial, attr = om.TrialModel, aliased(om.TrialUserAttributeModel)
    raw = session.execute(select(attr.value_json).join(trial, trial.trial_id == attr.trial_id)
                          .where(trial.study_id == study_id, trial.state == TrialState.FAIL, _counted(),
                                 attr.key == str(TrialAttr.ERROR))
                          .order_by(trial.number).limit(1)).scalar()
    try:
        error = json.loads(raw) if raw else None
    except ValueError:
        return None
    return str(error) if error else None


def list_trials(session: Session, study_name: str, *, state: TrialStateName | None, limit: int,
                offset: int, order: TrialOrder = "number") -> tuple[int, list[TrialRecord]]:
    """One page of trials in ``order`` (by number unless told), and how many match in all."""
    study_id = optuna_study_id(session, study_name)
    if study_id is None:
        return 0, []
    trial = om.TrialModel
    where = [trial.study_id == study_id]
    if state is not None:
        where.append(trial.state == TRIAL_STATES[state])
    total = int(session.execute(select(func.count()).select_from(trial).where(*where)).scalar() or 0)
    rows = session.execute(select(trial.trial_id, trial.number, trial.state, trial._datetime_start_utc,
                                  trial._datetime_complete_utc)
                           .where(*where).order_by(*_ordering(order)).offset(offset).limit(limit)).all()
    ids = [r.trial_id for r in rows]
    values, history, attrs = _values(session, ids), _history(session, ids), _attrs(session, ids)
    return total, [TrialRecord(number=r.number, state=_STATE_NAMES[r.state],
                               value=values.get(r.trial_id), started_at=_utc(r[3]), completed_at=_utc(r[4]),
                               history=history.get(r.trial_id, []), attrs=attrs.get(r.trial_id, {}))
                   for r in rows]


def _ordering(order: TrialOrder) -> list[Any]:
    """ORDER BY terms: the column (unknown values last either way), then the number."""
    trial, inter = om.TrialModel, om.TrialIntermediateValueModel
    key = order.removeprefix("-")
    if key == "number":
        return [trial.number.desc() if order.startswith("-") else trial.number]
    # epochs done = the last epoch reported (search.trial reports every epoch), so no JSON is parsed
    column = (_value() if key == "val_acc" else
              select(func.max(inter.step)).where(inter.trial_id == trial.trial_id).scalar_subquery())
    return [(column.desc() if order.startswith("-") else column.asc()).nulls_last(), trial.number]


def _values(session: Session, ids: Sequence[int]) -> dict[int, float | None]:
    value = om.TrialValueModel
    query = select(value.trial_id, value.value, value.value_type).where(value.trial_id.in_(ids), value.objective == 0)
    return {tid: (_finite(v) if vtype == _FINITE else None) for tid, v, vtype in session.execute(query)}


def _history(session: Session, ids: Sequence[int]) -> dict[int, list[tuple[int, float | None]]]:
    inter = om.TrialIntermediateValueModel
    finite = inter.TrialIntermediateValueType.FINITE
    out: dict[int, list[tuple[int, float | None]]] = {}
    query = (select(inter.trial_id, inter.step, inter.intermediate_value, inter.intermediate_value_type)
             .where(inter.trial_id.in_(ids)).order_by(inter.trial_id, inter.step))
    for tid, step, v, vtype in session.execute(query):
        out.setdefault(tid, []).append((int(step), _finite(v) if vtype == finite else None))
    return out


def _attrs(session: Session, ids: Sequence[int]) -> dict[int, dict[str, Any]]:
    attr = om.TrialUserAttributeModel
    out: dict[int, dict[str, Any]] = {}
    query = select(attr.trial_id, attr.key, attr.value_json).where(attr.trial_id.in_(ids), attr.key.in_([str(a) for a in TRIAL_ATTRS]))
    for tid, key, raw in session.execute(query):
        try:
            out.setdefault(tid, {})[key] = json.loads(raw)
        except (TypeError, ValueError):
            continue  # not written by ktg: leave it out rather than fail the page
    return out


@dataclass
class BestStep:
    """The best accuracy rose to ``val_acc`` with trial ``trial``, the ``finished``-th trial to finish."""

    finished: int
    trial: int
    val_acc: float


def best_so_far(session: Session, study_name: str) -> list[BestStep]:
    """The best accuracy against trials finished, as the steps where it rose.

    Counted trials are taken in the order they finished (then by number); a
    trial's accuracy enters the running best as in ``study_figures`` (complete
    or pruned, with a graph), so the last step is its ``best_val_acc``. One
    query with window functions: a 1,500-trial study returns a few dozen rows.
    """
    study_id = optuna_study_id(session, study_name)
    if study_id is None:
        return []
    trial, value = om.TrialModel, om.TrialValueModel
    in_order = (trial._datetime_complete_utc, trial.number)
    accuracy = case((_scored(), value.value), else_=None)
    running = (select(trial.number,
                      func.row_number().over(order_by=in_order).label("finished"),
                      func.max(accuracy).over(order_by=in_order, rows=(None, 0)).label("best"))
               .outerjoin(value, and_(value.trial_id == trial.trial_id, value.objective == 0,
                                      value.value_type == _FINITE))
               .where(trial.study_id == study_id, _counted(),
                      trial.state.in_([TRIAL_STATES[name] for name in FINISHED_STATES]))
               .subquery())
    steps = select(running, func.lag(running.c.best).over(order_by=running.c.finished).label("before")).subquery()
    query = (select(steps.c.finished, steps.c.number, steps.c.best)
             .where(steps.c.best.is_not(None), or_(steps.c.before.is_(None), steps.c.best > steps.c.before))
             .order_by(steps.c.finished))
    return [BestStep(finished=int(n), trial=int(number), val_acc=float(best))
            for n, number, best in session.execute(query)]


def epochs_reached(session: Session, study_name: str) -> dict[TrialStateName, dict[int, int]]:
    """How many counted trials of each state stopped at (or, running, are at) each ``epochs_done``."""
    study_id = optuna_study_id(session, study_name)
    if study_id is None:
        return {}
    trial = om.TrialModel
    attr = aliased(om.TrialUserAttributeModel)  # apart from the one _counted() correlates
    query = (select(trial.state, attr.value_json, func.count())
             .join(attr, and_(attr.trial_id == trial.trial_id, attr.key == str(TrialAttr.EPOCHS)))
             .where(trial.study_id == study_id, _counted())
             .group_by(trial.state, attr.value_json))
    out: dict[TrialStateName, dict[int, int]] = {}
    for state, raw, count in session.execute(query):
        try:
            epochs = json.loads(raw)
        except (TypeError, ValueError):
            continue
        if isinstance(epochs, int) and not isinstance(epochs, bool) and state in _STATE_NAMES:
            by_epoch = out.setdefault(_STATE_NAMES[state], {})
            by_epoch[epochs] = by_epoch.get(epochs, 0) + int(count)
    return out


def study_attr(session: Session, study_name: str, key: str) -> Any:
    """A user attribute of the study (JSON-decoded), or None when it or the study is missing."""
    attr = om.StudyUserAttributeModel
    raw = session.execute(select(attr.value_json).join(om.StudyModel, om.StudyModel.study_id == attr.study_id)
                          .where(om.StudyModel.study_name == study_name, attr.key == key)).scalar()
    try:
        return json.loads(raw) if raw is not None else None
    except (TypeError, ValueError):
        return None


def _finite(value: float | None) -> float | None:
    """JSON has no NaN or infinity: report those as unknown."""
    return value if value is not None and math.isfinite(value) else None


def _utc(value: datetime | None) -> datetime | None:
    """Optuna stores naive UTC datetimes."""
    return value.replace(tzinfo=UTC) if value is not None else None
