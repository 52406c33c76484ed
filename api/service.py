"""What the endpoints do, without HTTP: the study table's SQL, launching and
cancelling through the lifecycle, and the reads of trials and best graphs.

The routers take what they need through ``api.deps`` and turn the results (and
the exceptions below) into answers; nothing here reads a request or ``app.state``.
Reads of Optuna's own tables are ``search.study.queries``' (the best graphs with
the query ``ktg export`` uses too).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from sqlalchemy import delete, func, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from api.db import StudyRow
from api.lifecycle import StudyLifecycle, new_row, optuna_name
from api.ray_jobs import RayJobs, RayUnavailable
from api.schemas import (
    BestGraph,
    BestStepOut,
    EpochAcc,
    Readiness,
    RungOut,
    StudyProgress,
    TrialOut,
    TrialPage,
)
from api.status import PREFIX
from api.tenant_text import tenant_text
from search.spec import STUDY_NAME_PATTERN, SearchSpec
from search.study.confirmation import confirmation_from_json
from search.study.contract import (
    STUDY_ATTR_ASHA_RUNGS,
    STUDY_ATTR_CONFIRMATION,
    TRIAL_ATTRS,
    StudyState,
    TrialAttr,
    TrialStateName,
    read_attr,
)
from search.study.queries import (
    TrialOrder,
    TrialRecord,
    best_so_far,
    epochs_reached,
    list_trials,
    optuna_study_id,
    study_attr,
    study_figures,
    top_trials,
)
from search.study.storage import graph_of

log = logging.getLogger("ktg.api")


class NameTooLong(ValueError):
    """The study name does not fit once prefixed with the tenant (a 422 on ``name``)."""


class NameTaken(Exception):
    """The name is in use: by this tenant's study at ``location``, or by a study made outside the API."""

    def __init__(self, message: str, location: str | None = None) -> None:
        super().__init__(message)
        self.location = location


class NotStarted(Exception):
    """Ray certainly did not get the job, so the study was not recorded either."""


# -- the study table -----------------------------------------------------------------------

def owned_study(session: Session, tenant: str, study_id: str) -> StudyRow | None:
    """The tenant's study of that id; None for another tenant's, as for one that does not exist."""
    return session.scalars(select(StudyRow).where(StudyRow.id == study_id, StudyRow.tenant == tenant)).first()


def find_study(session: Session, tenant: str, name: str) -> str | None:
    """The id of this tenant's study of that name, if any."""
    return session.scalars(select(StudyRow.id).where(StudyRow.tenant == tenant, StudyRow.name == name)).first()


def list_studies(session: Session, tenant: str, *, state: StudyState | None, limit: int,
                 offset: int) -> tuple[int, Sequence[StudyRow]]:
    """One page of the tenant's studies, newest first, and how many match in all."""
    where = [StudyRow.tenant == tenant]
    if state is not None:
        where.append(StudyRow.state == state)
    total = session.execute(select(func.count()).select_from(StudyRow).where(*where)).scalar() or 0
    rows = session.scalars(select(StudyRow).where(*where).order_by(StudyRow.created_at.desc(), StudyRow.id)
                           .offset(offset).limit(limit)).all()
    return total, rows


def reread(session: Session, row: StudyRow) -> StudyRow:
    """The row as the database holds it now (the lifecycle changes rows in sessions of its own)."""
    session.expire_all()
    return session.get(StudyRow, row.id) or row


# -- launching -----------------------------------------------------------------------------

def create_study(session: Session, lifecycle: StudyLifecycle, studies_dir: Path, tenant: str,
                 spec: SearchSpec) -> StudyRow:
    """Record the study and launch it as a Ray job, or leave it ``queued`` while the tenant
    runs as many studies as its quota allows; the row as it stands afterwards.

    The same name twice for one tenant is ``NameTaken`` (never a second search).
    When Ray certainly did not get the job the row is removed again (``NotStarted``);
    when it may have (an ambiguous failure) the study is kept and the reconciler finds out.
    """
    full_name = optuna_name(tenant, spec.name)
    try:
        SearchSpec.model_validate({**spec.model_dump(), "name": full_name})
    except ValueError:
        limit = 64 - len(tenant) - 1
        raise NameTooLong(f"at most {limit} characters for tenant {tenant!r} "
                          f"(the Optuna study is named '{tenant}.<name>', {STUDY_NAME_PATTERN})") from None
    if optuna_study_id(session, full_name) is not None and find_study(session, tenant, spec.name) is None:
        raise NameTaken(f"the storage already holds an Optuna study named {full_name!r}, made outside this API; "
                        "choose another name")
    row = new_row(tenant, spec, studies_dir)
    session.add(row)
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        location = f"{PREFIX}/{find_study(session, tenant, spec.name) or row.id}"
        raise NameTaken(f"a study named {spec.name!r} already exists: {location}", location=location) from None
    admitted = lifecycle.admit(tenant)  # first in first out: older waiting studies of the tenant go first
    for older in admitted:
        if older.id != row.id:
            lifecycle.start_admitted_row(older)
    if row.id not in {a.id for a in admitted}:
        return reread(session, row)  # "queued": it starts when one of the tenant's studies ends
    try:
        lifecycle.submit(row)
    except RayUnavailable as exc:
        if exc.ambiguous:  # Ray may have the job: keep the study; the reconciler finds out
            log.warning("study %s: submission unconfirmed (%s); the reconciler will check", row.id, exc)
        else:
            log.warning("study %s: not started, Ray not reachable (%s)", row.id, exc)
            session.execute(delete(StudyRow).where(StudyRow.id == row.id, StudyRow.submitted_at.is_(None)))
            session.commit()
            raise NotStarted("the Ray cluster is not reachable, the study was not started; try again later") from None
    return reread(session, row)


# -- reads ---------------------------------------------------------------------------------

def trial_page(session: Session, row: StudyRow, *, state: TrialStateName | None, limit: int,
               offset: int, order: TrialOrder = "number") -> TrialPage:
    """One page of the study's trials, by number unless ``order`` says otherwise."""
    total, records = list_trials(session, row.optuna_name, state=state, limit=limit, offset=offset, order=order)
    return TrialPage(items=[_trial_out(r, row.spec.get("data_dir")) for r in records], total=total, limit=limit,
                     offset=offset)


def _trial_out(record: TrialRecord, data_dir: str | None) -> TrialOut:
    """A trial record as clients see it; attributes of an unexpected type read as unknown."""
    attrs = {str(attr): read_attr(attr, record.attrs.get(attr)) for attr, rule in TRIAL_ATTRS.items()
             if rule.shown or attr == TrialAttr.GRAPH}
    if attrs[TrialAttr.ERROR]:  # the exception's own words name server paths: the tenant reads its terms
        attrs[TrialAttr.ERROR] = tenant_text(attrs[TrialAttr.ERROR], data_dir)
    return TrialOut(number=record.number, state=record.state, val_acc=record.value, started_at=record.started_at,
                    completed_at=record.completed_at, history=[EpochAcc(epoch=e, val_acc=v) for e, v in record.history],
                    **attrs)


def study_progress(session: Session, row: StudyRow) -> StudyProgress:
    """The best accuracy against trials finished, and how many trials reached and stopped at each rung."""
    reached = epochs_reached(session, row.optuna_name)
    rungs = study_attr(session, row.optuna_name, STUDY_ATTR_ASHA_RUNGS)
    known = isinstance(rungs, list) and all(isinstance(r, int) and not isinstance(r, bool) for r in rungs)
    figures = study_figures(session, row.optuna_name)

    def trained_at_least(epoch: int) -> int:
        return sum(n for by_epoch in reached.values() for e, n in by_epoch.items() if e >= epoch)

    return StudyProgress(
        study=row.id, finished=figures.finished, epochs=int(row.spec.get("epochs", 0)),
        best_so_far=[BestStepOut(finished=s.finished, trial=s.trial, val_acc=s.val_acc)
                     for s in best_so_far(session, row.optuna_name)],
        rungs=[RungOut(epoch=r, reached=trained_at_least(r), stopped=reached.get("pruned", {}).get(r, 0))
               for r in rungs] if known else None,
        full_budget=figures.counts["complete"],
    )


def best_graphs(session: Session, row: StudyRow, k: int) -> list[BestGraph]:
    """Top-k full-budget COMPLETE trials as graph files: one query, the rule ``ktg export`` uses
    (a confirmation stage's graphs first, by their mean)."""
    confirmation = confirmation_from_json(study_attr(session, row.optuna_name, STUDY_ATTR_CONFIRMATION))
    first = [g.trial for g in confirmation.graphs] if confirmation else []
    graphs = [graph_of(t, row.optuna_name, confirmation).to_dict()
              for t in top_trials(session, row.optuna_name, k, first=first)]
    return [BestGraph(rank=i, trial=g["meta"]["trial"], val_acc=g["meta"]["val_acc"], graph=g,
                      confirmation=g["meta"].get("confirmation")) for i, g in enumerate(graphs, start=1)]


def readiness(sessions: sessionmaker[Session], jobs: RayJobs) -> Readiness:
    """Whether the database and the Ray cluster answer now (naming which does not, never where)."""
    database = ray = "ok"
    try:
        with sessions() as session:
            session.execute(text("SELECT 1"))
    except Exception as exc:
        log.warning("readyz: database: %s", exc)
        database = "unreachable"
    try:
        jobs.version()
    except RayUnavailable as exc:
        log.warning("readyz: %s", exc)
        ray = "unreachable"
    return Readiness(status="ready" if database == ray == "ok" else "not ready", database=database, ray=ray)
