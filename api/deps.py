"""Request dependencies: everything a router needs, so that no router reads ``app.state``.

Who is calling (bearer token -> tenant), a database session (or the session
factory), the settings, the study lifecycle, the status reader, the /readyz
cache and the Optuna storage. The cheap ones are ``async``: FastAPI runs sync dependencies in its
thread pool, and a thread hop per dependency per request is most of a cached
status read.

Tokens come from configuration (``Settings.tokens``) and are compared in
constant time. A missing or unknown token is 401 with ``WWW-Authenticate:
Bearer`` (RFC 6750), so clients and proxies know which scheme to use.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from optuna.storages import BaseStorage
from sqlalchemy.orm import Session, sessionmaker

from api.lifecycle import StudyLifecycle
from api.schemas import Readiness
from api.settings import Settings
from api.status import StatusReader
from api.ttl_cache import TtlCache

# auto_error=False: we answer 401 ourselves, with the WWW-Authenticate header.
_bearer = HTTPBearer(auto_error=False, description="A token from KTG_API_TOKENS ('tenant:token')")


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_lifecycle(request: Request) -> StudyLifecycle:
    lifecycle: StudyLifecycle = request.app.state.lifecycle
    return lifecycle


async def get_status_reader(request: Request) -> StatusReader:
    reader: StatusReader = request.app.state.status_reader
    return reader


async def get_readiness_cache(request: Request) -> TtlCache[str, Readiness]:
    """Where /readyz answers are kept for ``Settings.readyz_ttl_s``."""
    cache: TtlCache[str, Readiness] = request.app.state.readiness_cache
    return cache


async def get_optuna_storage(request: Request) -> BaseStorage:
    """Optuna's storage (opened at start-up), for reads that go through Optuna itself."""
    storage: BaseStorage = request.app.state.optuna_storage
    return storage


async def get_sessions(request: Request) -> sessionmaker[Session]:
    """The session factory, for an operation that opens (and answers for) its own sessions."""
    sessions: sessionmaker[Session] = request.app.state.sessions
    return sessions


def get_session(sessions: Annotated[sessionmaker[Session], Depends(get_sessions)]) -> Iterator[Session]:
    """One session per request, closed (and its connection returned) afterwards."""
    with sessions() as session:
        yield session


async def reject_unknown_query(request: Request) -> None:
    """422 for query parameters the operation does not take: a typo such as ``?kk=5``
    must not silently fall back to the default."""
    from fastapi.exceptions import RequestValidationError
    from fastapi.routing import APIRoute

    route = request.scope.get("route")
    if not isinstance(route, APIRoute):
        return
    known = {param.alias for param in route.dependant.query_params}
    for dep in route.dependant.dependencies:
        known |= {param.alias for param in dep.query_params}
    unknown = [name for name in request.query_params if name not in known]
    if unknown:
        allowed = ", ".join(sorted(known)) or "none"
        raise RequestValidationError([{"type": "extra_forbidden", "loc": ("query", name or "(empty name)"),
                                       "msg": f"unknown query parameter; allowed: {allowed}", "input": name}
                                      for name in unknown])


async def get_tenant(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
                     settings: Annotated[Settings, Depends(get_settings)]) -> str:
    """The tenant owning the request's bearer token, or 401."""
    if credentials is None:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "missing bearer token (Authorization: Bearer <token>)",
                            headers={"WWW-Authenticate": "Bearer"})
    tenant = settings.tenant_of(credentials.credentials)
    if tenant is None:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "invalid bearer token",
                            headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})
    return tenant


Tenant = Annotated[str, Depends(get_tenant)]
DbSession = Annotated[Session, Depends(get_session)]
SessionsDep = Annotated[sessionmaker[Session], Depends(get_sessions)]
LifecycleDep = Annotated[StudyLifecycle, Depends(get_lifecycle)]
StatusReaderDep = Annotated[StatusReader, Depends(get_status_reader)]
OptunaStorageDep = Annotated[BaseStorage, Depends(get_optuna_storage)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
ReadinessCacheDep = Annotated[TtlCache[str, Readiness], Depends(get_readiness_cache)]
