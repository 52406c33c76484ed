"""``/v1/studies``: submit a search, follow it, fetch its best graphs, cancel it.

A study is visible to its tenant only; anyone else gets the same 404 as for a
study that does not exist, so ids reveal nothing across tenants. The work is
``api.service``'s; this module maps it to HTTP.
"""

from __future__ import annotations

from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Response, status
from fastapi.exceptions import RequestValidationError
from sqlalchemy.orm import Session

from api import service
from api.confine import Unconfined, confine, confine_data_dir
from api.db import StudyRow
from api.deps import (
    DbSession,
    LifecycleDep,
    SettingsDep,
    StatusReaderDep,
    Tenant,
    get_tenant,
    reject_unknown_query,
)
from api.quotas import quota_problems
from api.schemas import BestGraph, BestList, ErrorOut, StudyPage, StudyProgress, StudyStatus, TrialPage
from api.settings import Settings
from api.status import PREFIX, study_status, summary
from api.strict_json import StrictJsonRoute
from ktg.errors import KtgError
from ktg.graph import Graph
from search.spec import SearchSpec
from search.study.contract import StudyState, TrialStateName
from search.study.queries import TrialOrder
from search.teachers import teacher_misfits

_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorOut, "description": "Missing or invalid bearer token"},
    404: {"model": ErrorOut, "description": "No such study for this tenant"},
    422: {"model": ErrorOut, "description": "Invalid input; `errors` names each bad field"},
    503: {"model": ErrorOut, "description": "The database or the Ray cluster is not reachable"},
}
MAX_RANK = 100

router = APIRouter(prefix=PREFIX, tags=["studies"], responses=_ERRORS, route_class=StrictJsonRoute,
                   dependencies=[Depends(get_tenant), Depends(reject_unknown_query)])
StudyId = Annotated[UUID, Path(description="The study id returned by POST /v1/studies")]


def _owned(session: Session, tenant: str, study_id: UUID) -> StudyRow:
    row = service.owned_study(session, tenant, str(study_id))
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no study {study_id}")
    return row


def _invalid(problems: list[tuple[str, str]]) -> RequestValidationError:
    """A 422 naming each (field, message), in the shape of the body's own validation errors."""
    return RequestValidationError([{"type": "value_error", "loc": ("body", field), "msg": message, "input": None}
                                   for field, message in problems])


def _check_submission(spec: SearchSpec, tenant: str, settings: Settings) -> None:
    """What needs the operator's settings: the data confinement and the quotas (a 422 naming the fields).

    Runs in the thread pool (the endpoint is sync): confinement resolves symlinks on disk.
    """
    problems = quota_problems(spec, max_trial_epochs=settings.max_trial_epochs,
                              max_model_params=settings.max_model_params)
    try:
        confine_data_dir(settings.datasets_dir, tenant, spec.dataset, spec.data_dir)
    except Unconfined as exc:
        problems.insert(0, (exc.field, exc.reason))
    if problems:
        raise _invalid(problems)


def _check_teachers(spec: SearchSpec, tenant: str, settings: Settings) -> None:
    """Each given teacher's checkpoint, confined like ``data_dir``, must fit the study's data: a 422
    naming each that does not.

    Reading the data and the checkpoints takes a child process (``search.data_facts``), so it
    runs here, in a sync endpoint, on FastAPI's thread pool: never on the event loop.
    """
    if not spec.teachers:
        return
    problems: list[tuple[str, str]] = []
    files: dict[str, str] = {}
    for i, t in enumerate(spec.teachers):
        try:
            files[t.checkpoint] = str(confine(settings.datasets_dir, tenant, t.checkpoint, f"teachers.{i}.checkpoint"))
        except Unconfined as exc:
            problems.append((exc.field, exc.reason))
    if problems:
        raise _invalid(problems)
    data_dir = confine_data_dir(settings.datasets_dir, tenant, spec.dataset, spec.data_dir)
    here = spec.model_copy(update={"data_dir": str(data_dir) if data_dir is not None else None})
    try:
        misfits = teacher_misfits(here, files)
    except KtgError:  # its text may hold a server path: say what, not where
        raise _invalid([("dataset", "cannot be read here to check the teachers against it")]) from None
    if misfits:
        raise _invalid([(f"teachers.{i}.checkpoint", why) for i, why in misfits])


@router.post("", status_code=status.HTTP_202_ACCEPTED, response_model=StudyStatus,
             responses={409: {"model": ErrorOut, "description": "This tenant already has a study of that name"},
                        413: {"model": ErrorOut, "description": "Request body too large"}},
             summary="Start a search (runs as a Ray job)")
def create_study(spec: SearchSpec, tenant: Tenant, session: DbSession, lifecycle: LifecycleDep,
                 settings: SettingsDep, reader: StatusReaderDep, response: Response) -> StudyStatus:
    """Record the study and launch it as a Ray job; 202 with its id and ``Location``.

    The same name twice for one tenant is 409 (with the existing study's
    ``Location``), never a second search. A ``data_dir`` outside what the tenant
    may read and a spec over the operator's quotas are 422, before anything is
    recorded or launched.
    """
    _check_submission(spec, tenant, settings)
    _check_teachers(spec, tenant, settings)
    try:
        row = service.create_study(session, lifecycle, settings.studies_dir, tenant, spec)
    except service.NameTooLong as exc:
        raise _invalid([("name", str(exc))]) from None
    except service.NameTaken as exc:
        headers = {"Location": exc.location} if exc.location else None
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc), headers=headers) from None
    except service.NotStarted as exc:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(exc), headers={"Retry-After": "30"}) from None
    reader.forget(row.id)
    response.headers["Location"] = f"{PREFIX}/{row.id}"
    return study_status(session, row)


@router.get("", response_model=StudyPage, summary="List this tenant's studies, newest first")
def list_studies(tenant: Tenant, session: DbSession,
                 limit: Annotated[int, Query(ge=1, le=200)] = 50,
                 offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
                 state: StudyState | None = None) -> StudyPage:
    total, rows = service.list_studies(session, tenant, state=state, limit=limit, offset=offset)
    return StudyPage(items=[summary(r) for r in rows], total=total, limit=limit, offset=offset)


@router.get("/{study_id}", response_model=StudyStatus, summary="State, trial counts, best accuracy, progress")
async def get_study(study_id: StudyId, tenant: Tenant, reader: StatusReaderDep) -> Response:
    """Read back from Ray and the Optuna storage; at most ~1 s old (see ``api.status``)."""
    body = await reader.read(tenant, str(study_id))
    if body is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no study {study_id}")
    return Response(body, media_type="application/json")


@router.get("/{study_id}/trials", response_model=TrialPage, summary="The study's trials, by number unless ordered")
def get_trials(study_id: StudyId, tenant: Tenant, session: DbSession,
               state: TrialStateName | None = None,
               limit: Annotated[int, Query(ge=1, le=500)] = 100,
               offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
               order: Annotated[TrialOrder, Query(description=(
                   "number, val_acc or epochs_done; '-' first for descending; unknown values last"))] = "number",
               ) -> TrialPage:
    row = _owned(session, tenant, study_id)
    return service.trial_page(session, row, state=state, limit=limit, offset=offset, order=order)


@router.get("/{study_id}/progress", response_model=StudyProgress,
            summary="Best accuracy against trials finished; trials reached and stopped at each ASHA rung")
def get_progress(study_id: StudyId, tenant: Tenant, session: DbSession) -> StudyProgress:
    return service.study_progress(session, _owned(session, tenant, study_id))


def _ranked(session: Session, row: StudyRow, rank: int) -> BestGraph:
    best = service.best_graphs(session, row, rank)
    if len(best) < rank:
        raise HTTPException(status.HTTP_404_NOT_FOUND,
                            f"no graph of rank {rank}: the study has {len(best)} complete trial(s) so far")
    return best[rank - 1]


@router.get("/{study_id}/best", response_model=BestList,
            summary="Top graphs (full-budget COMPLETE trials) as ktg-graph/1")
def get_best(study_id: StudyId, tenant: Tenant, session: DbSession,
             k: Annotated[int, Query(ge=1, le=MAX_RANK)] = 1) -> BestList:
    row = _owned(session, tenant, study_id)
    return BestList(study=row.id, items=service.best_graphs(session, row, k))


Rank = Annotated[int, Path(ge=1, le=MAX_RANK, description="1 = the best")]


@router.get("/{study_id}/best/{rank}.json", summary="One best graph as a bare ktg-graph/1 file",
            response_model=dict[str, Any])
def get_best_graph(study_id: StudyId, rank: Rank, tenant: Tenant, session: DbSession) -> dict[str, Any]:
    return _ranked(session, _owned(session, tenant, study_id), rank).graph


@router.get("/{study_id}/best/{rank}.svg", summary="One best graph drawn as SVG", response_class=Response,
            responses={200: {"content": {"image/svg+xml": {"schema": {"type": "string"}}},
                             "description": "The graph as a standalone SVG picture"}})
def get_best_svg(study_id: StudyId, rank: Rank, tenant: Tenant, session: DbSession) -> Response:
    from ktg.show import render_svg

    row = _owned(session, tenant, study_id)
    best = _ranked(session, row, rank)
    title = f"{row.name} · rank {rank} · trial {best.trial}"
    return Response(render_svg(Graph.from_dict(best.graph), title=title), media_type="image/svg+xml")


@router.delete("/{study_id}", response_model=StudyStatus,
               responses={202: {"model": StudyStatus, "description": "Cancellation requested now"}},
               summary="Cancel (idempotent); finished trials stay recorded")
def cancel_study(study_id: StudyId, tenant: Tenant, session: DbSession, lifecycle: LifecycleDep,
                 reader: StatusReaderDep, response: Response) -> StudyStatus:
    """200 if the study had already ended (or was cancelled before), 202 if this call cancelled it."""
    row = _owned(session, tenant, study_id)
    cancelled_now = lifecycle.cancel(row)
    reader.forget(row.id)
    response.status_code = status.HTTP_202_ACCEPTED if cancelled_now else status.HTTP_200_OK
    return study_status(session, service.reread(session, row))
