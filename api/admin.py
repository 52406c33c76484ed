"""``ktg admin``: the operator's view of every tenant's studies, on the service's machine.

It reads the service's own configuration (``KTG_STORAGE``, the tokens, ``KTG_DATA_DIR``,
``RAY_ADDRESS``: ``api.settings``), so it sees what the API sees. ``list`` shows
every study of every tenant; ``cancel`` cancels by id, every active study of one
tenant, or every active study of the tenants whose token is gone (``--orphaned``):
removing a token stops new requests, not the searches already running.

A cancel is the API's own (``StudyLifecycle.cancel``): recorded in the database
first, then Ray is asked to stop the job; when Ray cannot be reached now, the
service's reconciler stops it later.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from ktg.errors import KtgError

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker

    from api.db import StudyRow
    from api.lifecycle import StudyLifecycle
    from api.settings import Settings
    from ktg.cli import Subcommands

COLUMNS = ("id", "tenant", "name", "state", "created_at", "ray_status", "orphaned")


def add_admin_command(sub: Subcommands) -> None:
    p = sub.add_parser("admin", help="operator commands: list and cancel any tenant's studies (KTG_STORAGE)")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="every study of every tenant, newest first")
    listing.add_argument("--tenant", help="only this tenant's studies")
    listing.add_argument("--orphaned", action="store_true", help="only studies of tenants that have no token any more")
    listing.add_argument("--json", action="store_true", help="one JSON array instead of a table")
    listing.set_defaults(func=_list)
    cancel = actions.add_parser("cancel", help="cancel studies: by id, all of a tenant's, or all orphaned ones")
    cancel.add_argument("ids", nargs="*", metavar="ID", help="study ids")
    cancel.add_argument("--tenant", help="every active study of this tenant")
    cancel.add_argument("--orphaned", action="store_true", help="every active study of tenants that have no token")
    cancel.set_defaults(func=_cancel)


def _settings() -> Settings:
    from api.settings import ConfigError, Settings

    try:
        return Settings.from_env()
    except ConfigError as exc:
        raise KtgError(str(exc)) from None


def _sessions(settings: Settings) -> sessionmaker[Session]:
    from api.db import init_schema, make_engine, make_sessions

    engine = make_engine(settings.storage, pool_size=1)
    try:
        init_schema(engine)  # the same schema check as the service: never read a layout this code does not know
    except Exception as exc:
        from search.study.storage import masked

        raise KtgError(f"storage: cannot use {masked(settings.storage)}: {exc}") from None
    return make_sessions(engine)


def _studies(session: Session, settings: Settings, *, tenant: str | None, orphaned: bool,
             active_only: bool = False) -> list[StudyRow]:
    from sqlalchemy import select

    from api.db import StudyRow
    from search.study.contract import ACTIVE_STUDY_STATES

    query = select(StudyRow).order_by(StudyRow.created_at.desc(), StudyRow.id)
    if tenant is not None:
        query = query.where(StudyRow.tenant == tenant)
    if orphaned:
        query = query.where(StudyRow.tenant.not_in(set(settings.tokens.values())))
    if active_only:
        query = query.where(StudyRow.state.in_(ACTIVE_STUDY_STATES))
    return list(session.scalars(query).all())


def _record(row: StudyRow, tenants: set[str]) -> dict[str, Any]:
    return {"id": row.id, "tenant": row.tenant, "name": row.name, "state": row.state,
            "created_at": row.created_at.isoformat(timespec="seconds"), "ray_status": row.job_status,
            "orphaned": row.tenant not in tenants}


def _list(args: argparse.Namespace) -> int:
    settings = _settings()
    with _sessions(settings)() as session:
        rows = _studies(session, settings, tenant=args.tenant, orphaned=args.orphaned)
    tenants = set(settings.tokens.values())
    records = [_record(row, tenants) for row in rows]
    if args.json:
        print(json.dumps(records, indent=2))
    else:
        print(_table(records))
    return 0


def _table(records: Sequence[dict[str, Any]]) -> str:
    """Fixed-width columns a terminal and ``grep`` both read."""
    cells = [list(COLUMNS)] + [[_cell(r[c]) for c in COLUMNS] for r in records]
    widths = [max(len(row[i]) for row in cells) for i in range(len(COLUMNS))]
    lines = ["  ".join(value.ljust(width) for value, width in zip(row, widths, strict=True)).rstrip() for row in cells]
    return "\n".join([*lines, f"{len(records)} stud{'y' if len(records) == 1 else 'ies'}"])


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def _lifecycle(settings: Settings, sessions: sessionmaker[Session]) -> StudyLifecycle:
    """The service's lifecycle, on the Ray it uses: ``RAY_ADDRESS``, else the local head ``ktg serve`` started."""
    from api.lifecycle import Redactor, StudyLifecycle
    from api.ray_head import read_head
    from api.ray_jobs import RayJobs, StatusCache

    if settings.ray_address is None:
        head = read_head(settings.data_dir)
        if head is not None:
            settings = replace(settings, ray_address=head.dashboard_url, ray_token=head.token())
    jobs = RayJobs(settings.ray_address, timeout_s=settings.ray_timeout_s, token=settings.ray_token)
    return StudyLifecycle(sessions=sessions, jobs=jobs, cache=StatusCache(jobs, 0.0), studies_dir=settings.studies_dir,
                          redact=Redactor(settings.storage), max_running=settings.max_running_studies,
                          storage_url=settings.storage)


def _cancel(args: argparse.Namespace) -> int:
    from api.db import StudyRow

    chosen = sum([bool(args.ids), args.tenant is not None, args.orphaned])
    if chosen != 1:
        raise KtgError("cancel: give study ids, or --tenant T, or --orphaned (exactly one of them)")
    settings = _settings()
    sessions = _sessions(settings)
    with sessions() as session:
        if args.ids:
            rows = [session.get(StudyRow, i) for i in args.ids]
            missing = [i for i, row in zip(args.ids, rows, strict=True) if row is None]
            if missing:
                raise KtgError(f"cancel: no study with id {', '.join(missing)} (see: ktg admin list)")
            targets = [row for row in rows if row is not None]
        else:
            targets = _studies(session, settings, tenant=args.tenant, orphaned=args.orphaned, active_only=True)
    lifecycle = _lifecycle(settings, sessions)
    # Waiting studies first: cancelling a running one admits the tenant's next waiting study.
    for row in sorted(targets, key=lambda r: r.admitted_at is not None):
        now = lifecycle.cancel(row)
        print(f"{row.id}  {row.tenant}/{row.name}: {'cancelled' if now else f'already {row.state}'}")
    if not targets:
        print("no active study matched")
    return 0
