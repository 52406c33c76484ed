"""The FastAPI application: ``create_app(settings)`` builds one, ready to serve.

A factory (not a module-level app) so tests, ``ktg serve`` and an ASGI server
each build an app from their own ``Settings``; nothing is read from the
environment here. Every error answer is JSON (``ErrorOut``): bad input is 422
naming each field, a database or Ray outage is 503, and only a bug is 500.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request, status
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy import exc as sa_exc
from starlette.exceptions import HTTPException as StarletteHTTPException

from api.confine import confine
from api.db import init_schema, make_engine, make_sessions
from api.lifecycle import Reconciler, Redactor, StudyLifecycle
from api.ray_jobs import RayJobs, RayUnavailable, StatusCache
from api.routers import health, studies
from api.schemas import ErrorOut, FieldError, Readiness
from api.settings import Settings
from api.status import StatusReader
from api.ttl_cache import TtlCache
from api.web import pages
from ktg.errors import first_line
from search.spec import spec_error_message

log = logging.getLogger("ktg.api")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


# Header lines of one request, names and values (nginx allows 4 x 8 KiB by default; a bearer
# token and a browser's headers take about 1 KiB). The server's parser reads at most
# PARSER_HEAD_BYTES of a request head (request line and headers) before it gives up.
MAX_HEADER_BYTES = 16 * 1024
PARSER_HEAD_BYTES = 4 * MAX_HEADER_BYTES


class BodyLimit:
    """Refuse request bodies over ``max_bytes`` with 413, before any handler parses them.

    Checks ``Content-Length`` up front and also counts what actually arrives
    (chunked uploads have no length), reading at most ``max_bytes + 1`` bytes.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in {"GET", "HEAD", "OPTIONS", "DELETE"}:
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            await self._refuse(send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body = message.get("body", b"")
            size += len(body)
            if size > self.max_bytes:
                await self._refuse(send)
                return
            chunks.append(body)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()  # later calls wait for the disconnect, as the server would

        await self.app(scope, replay, send)

    async def _refuse(self, send: Send) -> None:
        await send_error(send, status.HTTP_413_CONTENT_TOO_LARGE, f"request body too large: at most {self.max_bytes} bytes")


class HeaderLimit:
    """Refuse requests whose header lines (names and values) total over ``max_bytes`` with 431.

    The server's parser stops reading a request head at ``PARSER_HEAD_BYTES``
    (``ktg serve`` runs uvicorn's h11 parser with that limit, a plain 400 beyond
    it), so memory stays bounded; this answers the sizes in between in the
    API's own shape.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and sum(len(k) + len(v) for k, v in scope["headers"]) > self.max_bytes:
            await send_error(send, status.HTTP_431_REQUEST_HEADER_FIELDS_TOO_LARGE,
                             f"request headers too large: at most {self.max_bytes} bytes in all")
            return
        await self.app(scope, receive, send)


async def send_error(send: Send, status_code: int, detail: str) -> None:
    """Answer from a middleware, before any route: an ``ErrorOut`` body, then close the connection."""
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status_code,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


class JsonBodies:
    """Read request bodies as JSON whatever their declared type, as this API takes nothing else.

    ``curl -d '{...}'`` (the documented way to submit a study) labels its body
    ``application/x-www-form-urlencoded``, and FastAPI only parses
    ``application/json``. Relabelling is safe here: requests authenticate with a
    bearer header, never a cookie, so a cross-site form post cannot carry credentials.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] in {"POST", "PUT", "PATCH"}:
            headers = [(k, v) for k, v in scope["headers"] if k != b"content-type"]
            declared = dict(scope["headers"]).get(b"content-type", b"")
            if not declared or declared.split(b";")[0].strip().lower() == b"application/x-www-form-urlencoded":
                scope = {**scope, "headers": [*headers, (b"content-type", b"application/json")]}
        await self.app(scope, receive, send)


def field_errors(errors: list[Any]) -> list[FieldError]:
    """One entry per problem, named by field (the location without 'body'/'query'/'path')."""
    out = []
    for err in errors:
        loc = [str(p) for p in err.get("loc", ())]
        where = ".".join(loc[1:] if loc and loc[0] in {"body", "query", "path", "header"} else loc) or "body"
        kind = err.get("type", "")
        if loc[:1] == ["body"]:
            message = spec_error_message(err, where)
        else:
            message = str(err.get("msg", "invalid")).removeprefix("Value error, ").removeprefix(f"{where}: ")
        if kind == "json_invalid":
            where = "body"
            message = f"malformed JSON: {err.get('ctx', {}).get('error', message)}"
        elif kind == "missing" and where == "body":
            message = "a JSON object is required"
        out.append(FieldError(field=where, message=message))
    return out


def _error(status_code: int, detail: str, headers: dict[str, str] | None = None,
           errors: list[FieldError] | None = None) -> JSONResponse:
    return JSONResponse(ErrorOut(detail=detail, errors=errors).model_dump(exclude_none=True),
                        status_code=status_code, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    async def on_validation(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        errors = field_errors(list(exc.errors()))
        detail = "invalid request: " + "; ".join(f"{e.field}: {e.message}" for e in errors)
        return _error(status.HTTP_422_UNPROCESSABLE_CONTENT, detail, errors=errors)

    async def on_http(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        if exc.status_code == status.HTTP_400_BAD_REQUEST and isinstance(exc.__cause__, ValueError):
            # FastAPI's answer to a body it cannot decode (not UTF-8): malformed JSON, like any other
            message = f"malformed JSON: {type(exc.__cause__).__name__}"
            return _error(status.HTTP_422_UNPROCESSABLE_CONTENT, f"invalid request: body: {message}",
                          errors=[FieldError(field="body", message=message)])
        return _error(exc.status_code, str(exc.detail), headers=dict(exc.headers or {}))

    async def on_database(request: Request, exc: Exception) -> JSONResponse:
        log.warning("database unavailable: %s", first_line(exc))
        return _error(status.HTTP_503_SERVICE_UNAVAILABLE, "the database is not reachable; try again later",
                      headers={"Retry-After": "10"})

    async def on_ray(request: Request, exc: Exception) -> JSONResponse:
        log.warning("%s", exc)
        return _error(status.HTTP_503_SERVICE_UNAVAILABLE, "the Ray cluster is not reachable; try again later",
                      headers={"Retry-After": "10"})

    async def on_bug(request: Request, exc: Exception) -> JSONResponse:
        log.error("internal error on %s %s", request.method, request.url.path, exc_info=exc)
        return _error(status.HTTP_500_INTERNAL_SERVER_ERROR, "internal error")

    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    for db_error in (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.TimeoutError):
        app.add_exception_handler(db_error, on_database)
    app.add_exception_handler(RayUnavailable, on_ray)
    app.add_exception_handler(Exception, on_bug)


def create_app(settings: Settings) -> FastAPI:
    """Build the app. Connecting happens at start-up (lifespan): the study tables'
    schema is created or migrated, Optuna's tables are made to exist, the reconciler starts."""
    engine = make_engine(settings.storage, pool_size=settings.db_pool_size)
    sessions = make_sessions(engine)
    jobs = RayJobs(settings.ray_address, timeout_s=settings.ray_timeout_s, token=settings.ray_token)
    lifecycle = StudyLifecycle(sessions=sessions, jobs=jobs, cache=StatusCache(jobs, settings.ray_status_ttl_s),
                               studies_dir=settings.studies_dir, redact=Redactor(settings.storage),
                               data_path=lambda tenant, path: confine(settings.datasets_dir, tenant, path, "data_dir"),
                               max_running=settings.max_running_studies, storage_url=settings.storage)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        from search.study.storage import open_storage

        await run_in_threadpool(init_schema, engine)
        app.state.optuna_storage = await run_in_threadpool(open_storage, settings.storage)
        reconciler = None
        if settings.reconcile_interval_s > 0:
            reconciler = Reconciler(lifecycle, settings.reconcile_interval_s)
            reconciler.start()
        try:
            yield
        finally:
            if reconciler is not None:
                await run_in_threadpool(reconciler.stop)
            engine.dispose()

    app = FastAPI(
        title="ktg",
        summary="Knowledge transfer graph search as a service",
        description="Submit searches (each runs as a Ray job), follow them, fetch the best graphs. "
                    "Every /v1 endpoint needs `Authorization: Bearer <token>`.",
        version="1",
        lifespan=lifespan,
        docs_url="/docs",
        openapi_url="/openapi.json",
    )
    # What the request dependencies (api.deps) hand to the routers; optuna_storage is set at start-up.
    app.state.settings = settings
    app.state.sessions = sessions
    app.state.lifecycle = lifecycle
    app.state.status_reader = StatusReader(sessions, lifecycle, settings.status_ttl_s)
    app.state.readiness_cache = TtlCache[str, Readiness](settings.readyz_ttl_s, single_flight=True)
    install_error_handlers(app)
    app.include_router(health.router)
    app.include_router(health.router, prefix="/v1", include_in_schema=False)
    app.include_router(studies.router)
    # The study page for people, on the same endpoints (api.web); its headers set its CSP.
    app.include_router(pages.router)
    app.mount(pages.STATIC_URL, pages.static_files(), name="static")
    app.add_middleware(JsonBodies)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(HeaderLimit, max_bytes=MAX_HEADER_BYTES)
    return app
