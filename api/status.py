"""A study's status as clients see it, and the fast path that serves it to pollers.

``GET /v1/studies/{id}`` is what dashboards, scripts and CI loops call over and
over, often many clients on one study. Each answer combines the study row,
Ray's job status and the trial figures from the Optuna tables; computing it costs
a few milliseconds of database and Python time, which 50 clients polling in a
tight loop would turn into hundreds of milliseconds of queueing. So the answer is
computed at most once per ``ttl_s`` per study, by one request while the others
wait for it (single flight), and served as ready JSON bytes. A status is at most
``ttl_s`` old, and cancelling a study drops its entry at once.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime

from fastapi.concurrency import run_in_threadpool
from sqlalchemy.orm import Session, sessionmaker

from api.db import StudyRow
from api.lifecycle import StudyLifecycle
from api.schemas import RayJobOut, StudyStatus, StudySummary, TrialCounts
from api.ttl_cache import TtlCache
from search.study.queries import study_figures

PREFIX = "/v1/studies"


def links(study_id: str) -> dict[str, str]:
    base = f"{PREFIX}/{study_id}"
    return {"self": base, "trials": f"{base}/trials", "best": f"{base}/best"}


def summary(row: StudyRow) -> StudySummary:
    return StudySummary(id=row.id, name=row.name, state=row.state, created_at=row.created_at,  # type: ignore[arg-type]
                        updated_at=row.updated_at, finished_at=row.finished_at, links=links(row.id))


def study_status(session: Session, row: StudyRow, ray_silent_since: datetime | None = None) -> StudyStatus:
    """The full status of one study: its row + trial figures from the Optuna tables.

    ``ray_silent_since``: Ray has not answered since then, so the state is only the last one seen.
    """
    message = row.message
    if ray_silent_since is not None:
        message = (f"the Ray cluster has not answered since {ray_silent_since.isoformat(timespec='seconds')}; "
                   f"the state shown is the last one seen")
    figures = study_figures(session, row.optuna_name)
    budget = int(row.spec.get("trials", 0)) or 1
    return StudyStatus(
        **summary(row).model_dump(),
        optuna_study=row.optuna_name,
        spec=row.spec,
        trials=TrialCounts(**figures.counts),
        finished=figures.finished,
        budget=budget,
        progress=min(1.0, figures.finished / budget),
        best_val_acc=figures.best_val_acc,
        best_complete_val_acc=figures.best_complete_val_acc,
        message=message,
        ray=RayJobOut(submission_id=row.submission_id, job_id=row.ray_job_id, status=row.job_status,
                      unreachable_since=ray_silent_since),
    )


@dataclass(frozen=True)
class _Entry:
    tenant: str
    body: bytes


class StatusReader:
    """Serves study statuses as JSON, computed at most once per ``ttl_s`` per study."""

    MAX_ENTRIES = 10_000

    def __init__(self, sessions: sessionmaker[Session], lifecycle: StudyLifecycle, ttl_s: float) -> None:
        self.sessions, self.lifecycle, self.ttl_s = sessions, lifecycle, ttl_s
        self._cache: TtlCache[str, _Entry] = TtlCache(ttl_s, max_entries=self.MAX_ENTRIES)
        self._inflight: dict[str, asyncio.Future[_Entry | None]] = {}

    async def read(self, tenant: str, study_id: str) -> bytes | None:
        """The status JSON, or None if this tenant has no such study."""
        found, entry = self._cache.get(study_id)
        if not found:
            entry = await self._compute_once(study_id)
        if entry is None or entry.tenant != tenant:
            return None
        return entry.body

    def forget(self, study_id: str) -> None:
        """Drop a study's entry (it just changed here: cancelled, created)."""
        self._cache.forget(study_id)

    async def _compute_once(self, study_id: str) -> _Entry | None:
        pending = self._inflight.get(study_id)
        if pending is None:
            pending = asyncio.ensure_future(run_in_threadpool(self._compute, study_id))
            self._inflight[study_id] = pending
            pending.add_done_callback(lambda _: self._inflight.pop(study_id, None))
        # shield: one waiter going away (client disconnect) must not cancel the others' answer
        return await asyncio.shield(pending)

    def _compute(self, study_id: str) -> _Entry | None:
        with self.sessions() as session:
            row = session.get(StudyRow, study_id)
            if row is None:
                return None
            row = self.lifecycle.refresh(row)
            body = study_status(session, row, self.lifecycle.ray_silent_since(row)).model_dump_json().encode()
        entry = _Entry(tenant=row.tenant, body=body)
        self._cache.put(study_id, entry)
        return entry

