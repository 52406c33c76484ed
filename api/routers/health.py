"""Probes: ``/healthz`` (the process serves) and ``/readyz`` (it can do its job).

No token: orchestrators probe without credentials. Ready means the database and
the Ray cluster both answered within the last second; the bodies name which one does not, but never
its address or credentials.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Response, status

from api.deps import LifecycleDep, ReadinessCacheDep, SessionsDep, reject_unknown_query
from api.schemas import ErrorOut, Health, Readiness
from api.service import readiness

router = APIRouter(tags=["health"], dependencies=[Depends(reject_unknown_query)])


@router.get("/healthz", response_model=Health, summary="Liveness: the API process answers",
            responses={422: {"model": ErrorOut, "description": "Unknown query parameter"}})
def healthz() -> Health:
    return Health(status="ok")


@router.get("/readyz", response_model=Readiness, summary="Readiness: the database and Ray answer",
            responses={503: {"model": Readiness, "description": "The database or Ray does not answer"},
                       422: {"model": ErrorOut, "description": "Unknown query parameter"}})
def readyz(sessions: SessionsDep, lifecycle: LifecycleDep, cache: ReadinessCacheDep, response: Response) -> Readiness:
    """Computed at most once a second (``Settings.readyz_ttl_s``), by one thread while others wait:
    probes need no token, so a flood of them must not become a flood of database and Ray requests."""
    ready = cache.get_or_compute("readiness", lambda: readiness(sessions, lifecycle.jobs))
    if ready.status != "ready":
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    return ready
