"""Probes: ``/healthz`` (the process serves) and ``/readyz`` (it can do its job).

No token: orchestrators probe without credentials. Ready means the database and
the Ray cluster both answer now; the bodies name which one does not, but never
its address or credentials.
"""

from __future__ import annotations

import logging

from fastapi import APIRouter, Depends, Request, Response, status
from sqlalchemy import text

from api.deps import RegistryDep, reject_unknown_query
from api.jobs import RayUnavailable
from api.schemas import ErrorOut, Health, Readiness

log = logging.getLogger("ktg.api")
router = APIRouter(tags=["health"], dependencies=[Depends(reject_unknown_query)])


@router.get("/healthz", response_model=Health, summary="Liveness: the API process answers",
            responses={422: {"model": ErrorOut, "description": "Unknown query parameter"}})
def healthz() -> Health:
    return Health(status="ok")


@router.get("/readyz", response_model=Readiness, summary="Readiness: the database and Ray answer",
            responses={503: {"model": Readiness, "description": "The database or Ray does not answer"},
                       422: {"model": ErrorOut, "description": "Unknown query parameter"}})
def readyz(request: Request, registry: RegistryDep, response: Response) -> Readiness:
    database = ray = "ok"
    try:
        with request.app.state.sessions() as session:
            session.execute(text("SELECT 1"))
    except Exception as exc:
        log.warning("readyz: database: %s", exc)
        database = "unreachable"
    try:
        registry.jobs.version()
    except RayUnavailable as exc:
        log.warning("readyz: %s", exc)
        ray = "unreachable"
    ready = database == ray == "ok"
    if not ready:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    return Readiness(status="ready" if ready else "not ready", database=database, ray=ray)
