"""JSON bodies read strictly: a duplicate key or nesting too deep is malformed JSON (a 422).

Python's reader keeps the last of two equal keys, so ``{"trials": 1, "trials":
100000}`` would pass whatever a proxy or a log saw first; and it answers deep
nesting with ``RecursionError``, which FastAPI turns into a bare 400. Both
become ``json.JSONDecodeError``, which FastAPI reports as ``json_invalid``, so
the answer is the API's usual 422 naming ``body``. ``NaN`` and ``Infinity`` are
still read (as Python's reader does): the spec refuses them by field, as "must
be a finite number". Parsing runs on the event loop; it is linear in the body,
which ``BodyLimit`` has already bounded.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            # JSONDecodeError wants the document and a position; the key is what the client needs
            raise json.JSONDecodeError(f"duplicate key {key[:80]!r}", "", 0)
        seen[key] = value
    return seen


def loads_strict(body: bytes | str) -> Any:
    """``json.loads`` refusing duplicate keys and deep nesting (as ``JSONDecodeError``)."""
    try:
        return json.loads(body, object_pairs_hook=_object)
    except RecursionError:
        raise json.JSONDecodeError("nested too deeply", "", 0) from None


class StrictJsonRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = loads_strict(await self.body())
        return self._json


class StrictJsonRoute(APIRoute):
    """A route whose handler reads its body with :func:`loads_strict`."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def strict(request: Request) -> Response:
            return await handler(StrictJsonRequest(request.scope, request.receive))

        return strict
