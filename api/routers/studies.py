"""``/v1/studies``: submit a search, follow it, fetch its best graphs, cancel it.

A study is visible to its tenant only; anyone else gets the same 404 as for a
study that does not exist, so ids reveal nothing across tenants.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request, Response, status
from fastapi.exceptions import RequestValidationError
from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from api.db import StudyRow
from api.deps import DbSession, RegistryDep, SettingsDep, Tenant, get_tenant, reject_unknown_query
from api.jobs import RayUnavailable
from api.registry import new_row, optuna_name
from api.schemas import (
    BestGraph,
    BestList,
    EpochAcc,
    ErrorOut,
    StudyPage,
    StudyState,
    StudyStatus,
    TrialOut,
    TrialPage,
    TrialStateName,
)
from api.status import PREFIX, StatusReader, study_status, summary
from api.trials import list_trials, optuna_study_id
from ktg.errors import KtgError
from ktg.graph import Graph
from search.spec import STUDY_NAME_PATTERN, SearchSpec
from search.storage import ATTR_EPOCHS, ATTR_ERROR, ATTR_GRAPH, ATTR_INTERRUPTED, ATTR_SEED, ATTR_SKIPPED

log = logging.getLogger("ktg.api")

_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorOut, "description": "Missing or invalid bearer token"},
    404: {"model": ErrorOut, "description": "No such study for this tenant"},
    422: {"model": ErrorOut, "description": "Invalid input; `errors` names each bad field"},
    503: {"model": ErrorOut, "description": "The database or the Ray cluster is not reachable"},
}
MAX_RANK = 100

router = APIRouter(prefix=PREFIX, tags=["studies"], responses=_ERRORS, dependencies=[Depends(get_tenant), Depends(reject_unknown_query)])
StudyId = Annotated[UUID, Path(description="The study id returned by POST /v1/studies")]


def _get_row(session: Session, tenant: str, study_id: UUID) -> StudyRow:
    row = session.scalars(select(StudyRow).where(StudyRow.id == str(study_id), StudyRow.tenant == tenant)).first()
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no study {study_id}")
    return row


def _find(session: Session, tenant: str, name: str) -> str | None:
    """The id of this tenant's study of that name, if any."""
    return session.scalars(select(StudyRow.id).where(StudyRow.tenant == tenant, StudyRow.name == name)).first()


def _name_error(name: str, message: str) -> RequestValidationError:
    return RequestValidationError([{"type": "value_error", "loc": ("body", "name"), "msg": message, "input": name}])


@router.post("", status_code=status.HTTP_202_ACCEPTED, response_model=StudyStatus,
             responses={409: {"model": ErrorOut, "description": "This tenant already has a study of that name"},
                        413: {"model": ErrorOut, "description": "Request body too large"}},
             summary="Start a search (runs as a Ray job)")
def create_study(spec: SearchSpec, tenant: Tenant, session: DbSession, registry: RegistryDep,
                 settings: SettingsDep, request: Request, response: Response) -> StudyStatus:
    """Record the study and launch it as a Ray job; 202 with its id and ``Location``.

    The same name twice for one tenant is 409 (with the existing study's
    ``Location``), never a second search.
    """
    full_name = optuna_name(tenant, spec.name)
    try:
        SearchSpec.model_validate({**spec.model_dump(), "name": full_name})
    except ValueError:
        limit = 64 - len(tenant) - 1
        raise _name_error(spec.name, f"at most {limit} characters for tenant {tenant!r} "
                                     f"(the Optuna study is named '{tenant}.<name>', {STUDY_NAME_PATTERN})") from None
    if optuna_study_id(session, full_name) is not None and _find(session, tenant, spec.name) is None:
        raise HTTPException(status.HTTP_409_CONFLICT, f"the storage already holds an Optuna study named "
                                                      f"{full_name!r}, made outside this API; choose another name")
    row = new_row(tenant, spec, settings.studies_dir)
    session.add(row)
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        location = f"{PREFIX}/{_find(session, tenant, spec.name) or row.id}"
        raise HTTPException(status.HTTP_409_CONFLICT, f"a study named {spec.name!r} already exists: {location}",
                            headers={"Location": location}) from None
    try:
        registry.submit(row)
    except RayUnavailable as exc:
        if exc.ambiguous:  # Ray may have the job: keep the study; the reconciler finds out
            log.warning("study %s: submission unconfirmed (%s); the reconciler will check", row.id, exc)
        else:
            log.warning("study %s: not started, Ray not reachable (%s)", row.id, exc)
            session.execute(delete(StudyRow).where(StudyRow.id == row.id, StudyRow.submitted_at.is_(None)))
            session.commit()
            raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE,
                                "the Ray cluster is not reachable, the study was not started; try again later",
                                headers={"Retry-After": "30"}) from None
    session.expire_all()
    row = session.get(StudyRow, row.id) or row
    request.app.state.status_reader.forget(row.id)
    response.headers["Location"] = f"{PREFIX}/{row.id}"
    return study_status(session, row)


@router.get("", response_model=StudyPage, summary="List this tenant's studies, newest first")
def list_studies(tenant: Tenant, session: DbSession,
                 limit: Annotated[int, Query(ge=1, le=200)] = 50,
                 offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
                 state: StudyState | None = None) -> StudyPage:
    where = [StudyRow.tenant == tenant]
    if state is not None:
        where.append(StudyRow.state == state)
    total = session.execute(select(func.count()).select_from(StudyRow).where(*where)).scalar() or 0
    rows = session.scalars(select(StudyRow).where(*where).order_by(StudyRow.created_at.desc(), StudyRow.id)
                           .offset(offset).limit(limit)).all()
    return StudyPage(items=[summary(r) for r in rows], total=total, limit=limit, offset=offset)


@router.get("/{study_id}", response_model=StudyStatus, summary="State, trial counts, best accuracy, progress")
async def get_study(study_id: StudyId, tenant: Tenant, request: Request) -> Response:
    """Read back from Ray and the Optuna storage; at most ~1 s old (see ``api.status``)."""
    reader: StatusReader = request.app.state.status_reader
    body = await reader.read(tenant, str(study_id))
    if body is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no study {study_id}")
    return Response(body, media_type="application/json")


@router.get("/{study_id}/trials", response_model=TrialPage, summary="The study's trials, by number")
def get_trials(study_id: StudyId, tenant: Tenant, session: DbSession,
               state: TrialStateName | None = None,
               limit: Annotated[int, Query(ge=1, le=500)] = 100,
               offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0) -> TrialPage:
    row = _get_row(session, tenant, study_id)
    total, records = list_trials(session, row.optuna_name, state=state, limit=limit, offset=offset)
    items = []
    for r in records:
        attrs = r.attrs
        graph = attrs.get(ATTR_GRAPH)
        epochs = attrs.get(ATTR_EPOCHS)
        seed = attrs.get(ATTR_SEED)
        skipped, error = attrs.get(ATTR_SKIPPED), attrs.get(ATTR_ERROR)
        items.append(TrialOut(
            number=r.number, state=r.state, val_acc=r.value, started_at=r.started_at, completed_at=r.completed_at,
            epochs_done=epochs if isinstance(epochs, int) else None,
            seed=seed if isinstance(seed, int) else None,
            interrupted=bool(attrs.get(ATTR_INTERRUPTED)),
            skipped=str(skipped) if skipped else None,
            error=str(error) if error else None,
            history=[EpochAcc(epoch=e, val_acc=v) for e, v in r.history],
            graph=graph if isinstance(graph, dict) else None,
        ))
    return TrialPage(items=items, total=total, limit=limit, offset=offset)


def _best(request: Request, row: StudyRow, k: int) -> list[BestGraph]:
    """Top-k full-budget COMPLETE trials as graph files (the same as ``ktg export``)."""
    from search.storage import best_trials, graph_of, load_study

    storage = request.app.state.optuna_storage
    try:
        study = load_study(row.optuna_name, storage)
    except KtgError:
        return []  # the search has not created its study yet
    return [BestGraph(rank=i, trial=t.number, val_acc=t.value, graph=graph_of(t, row.optuna_name).to_dict())
            for i, t in enumerate(best_trials(study, k), start=1)]


def _ranked(request: Request, row: StudyRow, rank: int) -> BestGraph:
    best = _best(request, row, rank)
    if len(best) < rank:
        raise HTTPException(status.HTTP_404_NOT_FOUND,
                            f"no graph of rank {rank}: the study has {len(best)} complete trial(s) so far")
    return best[rank - 1]


@router.get("/{study_id}/best", response_model=BestList,
            summary="Top graphs (full-budget COMPLETE trials) as ktg-graph/1")
def get_best(study_id: StudyId, tenant: Tenant, session: DbSession, request: Request,
             k: Annotated[int, Query(ge=1, le=MAX_RANK)] = 1) -> BestList:
    row = _get_row(session, tenant, study_id)
    return BestList(study=row.id, items=_best(request, row, k))


Rank = Annotated[int, Path(ge=1, le=MAX_RANK, description="1 = the best")]


@router.get("/{study_id}/best/{rank}.json", summary="One best graph as a bare ktg-graph/1 file",
            response_model=dict[str, Any])
def get_best_graph(study_id: StudyId, rank: Rank, tenant: Tenant, session: DbSession,
                   request: Request) -> dict[str, Any]:
    return _ranked(request, _get_row(session, tenant, study_id), rank).graph


@router.get("/{study_id}/best/{rank}.svg", summary="One best graph drawn as SVG", response_class=Response,
            responses={200: {"content": {"image/svg+xml": {"schema": {"type": "string"}}},
                             "description": "The graph as a standalone SVG picture"}})
def get_best_svg(study_id: StudyId, rank: Rank, tenant: Tenant, session: DbSession, request: Request) -> Response:
    from ktg.show import render_svg

    row = _get_row(session, tenant, study_id)
    best = _ranked(request, row, rank)
    title = f"{row.name} · rank {rank} · trial {best.trial}"
    return Response(render_svg(Graph.from_dict(best.graph), title=title), media_type="image/svg+xml")


@router.delete("/{study_id}", response_model=StudyStatus,
               responses={202: {"model": StudyStatus, "description": "Cancellation requested now"}},
               summary="Cancel (idempotent); finished trials stay recorded")
def cancel_study(study_id: StudyId, tenant: Tenant, session: DbSession, registry: RegistryDep,
                 request: Request, response: Response) -> StudyStatus:
    """200 if the study had already ended (or was cancelled before), 202 if this call cancelled it."""
    row = _get_row(session, tenant, study_id)
    cancelled_now = registry.cancel(row)
    request.app.state.status_reader.forget(row.id)
    response.status_code = status.HTTP_202_ACCEPTED if cancelled_now else status.HTTP_200_OK
    session.expire_all()
    return study_status(session, session.get(StudyRow, row.id) or row)

