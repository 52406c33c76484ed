"""The page routes and their headers; the data comes from ``/v1`` in the browser, never from here.

The pages carry no tenant data at all, so they need no token: the page asks for
one and sends it with each of its own API calls. A Content-Security-Policy lets
a page load and call nothing but its own origin, and run no inline script.
"""

from __future__ import annotations

from pathlib import Path
from uuid import UUID

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from api.status import PREFIX
from api.web.form import spec_form
from search.spec import SearchSpec
from search.study.contract import TRIAL_STATES

HERE = Path(__file__).parent
STATIC_URL = "/static"
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
       "font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
PAGE_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

# The spec's recipe defaults, which are `ktg train`'s too: the re-train command names only the others.
TRAIN_DEFAULTS = {name: SearchSpec.model_fields[name].get_default() for name in ("batch_size", "lr", "warmup_steps")}

templates = Jinja2Templates(directory=HERE / "templates")
router = APIRouter(include_in_schema=False)


def _page(request: Request, template: str, status_code: int = 200, **context: object) -> Response:
    return templates.TemplateResponse(request, template, {"api": PREFIX, "static": STATIC_URL, **context},
                                      status_code=status_code, headers=PAGE_HEADERS)


@router.get("/", response_class=HTMLResponse)
def studies_page(request: Request) -> Response:
    main, advanced = spec_form()
    return _page(request, "studies.html", main_fields=main, advanced_fields=advanced)


@router.get("/studies/{study_id}", response_class=HTMLResponse)
def study_page(request: Request, study_id: str) -> Response:
    try:
        canonical = str(UUID(study_id))
    except ValueError:
        return _page(request, "missing.html", status_code=404)
    return _page(request, "study.html", study_id=canonical, trial_states=list(TRIAL_STATES),
                 train_defaults=TRAIN_DEFAULTS)


def static_files() -> StaticFiles:
    """The page's own scripts, style sheet and icon."""
    return StaticFiles(directory=HERE / "static")
