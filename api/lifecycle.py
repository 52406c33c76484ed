"""The study lifecycle: record, launch, follow, cancel, and reconcile with Ray.

The study row (``api.db.StudyRow``) says what a tenant asked for; Ray says what
runs. They can disagree (the API died between recording and submitting, a cancel
reached the database but not Ray, the cluster was restarted and forgot its jobs),
so the reconciler compares the two and acts: submit what was never submitted,
submit again what Ray lost (``--resume`` continues the study), stop what was
cancelled but still runs. Every action is idempotent; several API replicas may
reconcile at once.

State changes are compare-and-set ``UPDATE ... WHERE state = <what I read>`` so
a slow status refresh can never overwrite a cancellation that landed meanwhile.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, cast

from sqlalchemy import CursorResult, Result, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from api.db import StudyRow, utcnow
from api.ray_jobs import (
    STATE_OF_JOB_STATUS,
    TERMINAL_JOB_STATUSES,
    JobState,
    RayJobs,
    RayUnavailable,
    StatusCache,
    search_entrypoint,
)
from search.spec import SearchSpec
from search.study.contract import ACTIVE_STUDY_STATES, FINISHED_STUDY_STATES

log = logging.getLogger("ktg.api")

# Study ids are derived from (tenant, name): a POST retried after a lost answer,
# or after the row was rolled back, names the same Ray submission id, so Ray
# itself refuses a second search.
_ID_NAMESPACE = uuid.UUID("3f6c2a52-2f8e-4c55-9d8e-6b7467000001")


def _rowcount(result: Result[Any]) -> int:
    """Rows an UPDATE matched (the compare-and-set succeeded when 1)."""
    return int(cast(CursorResult[Any], result).rowcount)


def study_id(tenant: str, name: str) -> str:
    return str(uuid.uuid5(_ID_NAMESPACE, f"{tenant}/{name}"))


def optuna_name(tenant: str, name: str) -> str:
    """The study's name in the Optuna storage, unique across tenants."""
    return f"{tenant}.{name}"


class Redactor:
    """Removes the storage password from text shown to users (Ray messages, driver logs)."""

    def __init__(self, storage: str) -> None:
        from sqlalchemy.engine import make_url

        try:
            password = make_url(storage).password
        except Exception:
            password = None
        self.secrets = [s for s in (password, storage) if s]

    def __call__(self, text: str) -> str:
        for secret in sorted(self.secrets, key=len, reverse=True):
            text = text.replace(secret, "***")
        return text


@dataclass
class StudyLifecycle:
    """A recorded study's life with Ray: submit, follow, cancel, reconcile.

    One per app, shared by the routers and the reconciler: the sessions, the Ray
    Jobs client and its status cache.
    """

    sessions: sessionmaker[Session]
    jobs: RayJobs
    cache: StatusCache
    studies_dir: Path
    redact: Callable[[str], str]
    # (tenant, data_dir as the tenant wrote it) -> the folder the job reads (api.confine): the
    # row keeps the tenant's words, the job gets the path, checked again at each launch.
    data_path: Callable[[str, str], Path] | None = None

    # -- launching ---------------------------------------------------------------
    def submit(self, row: StudyRow) -> None:
        """Submit the row's job (idempotent: Ray knows it afterwards). Raises RayUnavailable."""
        fields = {**row.spec, "name": row.optuna_name}
        if self.data_path is not None and fields.get("data_dir") is not None:
            fields["data_dir"] = str(self.data_path(row.tenant, fields["data_dir"]))
        spec = SearchSpec.model_validate(fields)
        entrypoint = search_entrypoint(spec.model_dump_json(exclude_none=True), Path(row.out_dir))
        created = self.jobs.submit(row.submission_id, entrypoint,
                                   {"ktg_study_id": row.id, "tenant": row.tenant, "name": row.name})
        self.cache.forget(row.submission_id)
        with self.sessions.begin() as session:
            session.execute(update(StudyRow).where(StudyRow.id == row.id, StudyRow.submitted_at.is_(None))
                            .values(submitted_at=utcnow(), updated_at=utcnow()))
        log.info("study %s: job %s", row.id, "submitted" if created else "already known to Ray")

    # -- following -----------------------------------------------------------------
    def refresh(self, row: StudyRow) -> StudyRow:
        """Bring the row up to date with Ray while Ray may still change it; keep the
        last known state if Ray does not answer (status reads never fail on Ray)."""
        if not self._may_change(row) or row.submitted_at is None:
            return row
        try:
            job = self.cache.get(row.submission_id)
        except RayUnavailable:
            return row
        if job is None:
            return row  # lost by Ray (or not there yet): the reconciler submits it again
        return self._apply(row, job)

    @staticmethod
    def _may_change(row: StudyRow) -> bool:
        return row.state in ACTIVE_STUDY_STATES or (row.state == "cancelled" and row.job_status not in TERMINAL_JOB_STATUSES)

    def _apply(self, row: StudyRow, job: JobState) -> StudyRow:
        values: dict[str, Any] = {}
        if job.status != row.job_status:
            values["job_status"] = job.status
        if job.job_id and job.job_id != row.ray_job_id:
            values["ray_job_id"] = job.job_id
        new_state = row.state if row.state in FINISHED_STUDY_STATES else STATE_OF_JOB_STATUS.get(job.status, row.state)
        if new_state != row.state:
            values["state"] = new_state
            if new_state in FINISHED_STUDY_STATES:
                values["finished_at"] = utcnow()
            if new_state == "failed":
                values["message"] = self._failure_message(row, job)
        if not values:
            return row
        values["updated_at"] = utcnow()
        with self.sessions.begin() as session:
            done = _rowcount(session.execute(update(StudyRow).where(StudyRow.id == row.id, StudyRow.state == row.state)
                                             .values(**values)))
            fresh = session.get(StudyRow, row.id)
        if not done:
            log.info("study %s changed meanwhile; kept the newer state", row.id)
        return fresh if fresh is not None else row

    def _failure_message(self, row: StudyRow, job: JobState) -> str:
        try:
            tail = self.jobs.logs_tail(row.submission_id)
        except RayUnavailable:
            tail = ""
        text = (job.message or "the search job failed") + (f"\n{tail}" if tail else "")
        return self.redact(text)[-4000:]

    # -- cancelling ------------------------------------------------------------------
    def cancel(self, row: StudyRow) -> bool:
        """Mark the study cancelled and ask Ray to stop it; True if this call cancelled it.

        The row changes first, so even if Ray does not answer now the reconciler
        stops the job later; finished trials stay in the storage either way.
        """
        with self.sessions.begin() as session:
            now = utcnow()
            cancelled = _rowcount(session.execute(
                update(StudyRow).where(StudyRow.id == row.id, StudyRow.state.in_(ACTIVE_STUDY_STATES))
                .values(state="cancelled", cancel_requested_at=now, finished_at=now, updated_at=now)))
        self.cache.forget(row.submission_id)
        if cancelled or row.state == "cancelled":
            try:
                self.jobs.stop(row.submission_id)
            except RayUnavailable as exc:
                log.warning("study %s: cancel recorded, Ray not reachable (%s); the reconciler will stop it",
                            row.id, exc)
        return bool(cancelled)

    # -- reconciling -----------------------------------------------------------------
    def reconcile_once(self) -> None:
        """Compare every study Ray may still change with Ray, and act."""
        with self.sessions() as session:
            rows = session.scalars(select(StudyRow).where(or_(
                StudyRow.state.in_(ACTIVE_STUDY_STATES),
                (StudyRow.state == "cancelled") & StudyRow.submitted_at.is_not(None)
                & or_(StudyRow.job_status.is_(None), StudyRow.job_status.not_in(TERMINAL_JOB_STATUSES)),
            ))).all()
        for row in rows:
            try:
                self._reconcile(row)
            except RayUnavailable as exc:
                log.warning("reconcile: Ray not reachable (%s)", exc)
                return
            except Exception:  # one bad row must not stop the others
                log.exception("reconcile: study %s", row.id)

    def _reconcile(self, row: StudyRow) -> None:
        if row.state == "cancelled":
            job = self.jobs.status(row.submission_id)
            if job is None or job.status in TERMINAL_JOB_STATUSES:
                self._apply(row, job or JobState("STOPPED", None, None))
            else:
                self.jobs.stop(row.submission_id)
            return
        job = None if row.submitted_at is None else self.jobs.status(row.submission_id)
        if job is None:
            self.submit(row)  # never submitted, or lost with a restarted cluster: --resume continues it
        else:
            self.cache.forget(row.submission_id)
            self._apply(row, job)


class Reconciler:
    """Runs ``StudyLifecycle.reconcile_once`` every ``interval_s`` in a daemon thread."""

    def __init__(self, lifecycle: StudyLifecycle, interval_s: float) -> None:
        self.lifecycle, self.interval_s = lifecycle, interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ktg-reconciler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.lifecycle.reconcile_once()
            except Exception:  # the database may be down for a while: try again later
                log.exception("reconcile failed")
            self._stop.wait(self.interval_s)


def new_row(tenant: str, spec: SearchSpec, studies_dir: Path) -> StudyRow:
    sid = study_id(tenant, spec.name)
    now: datetime = utcnow()
    return StudyRow(id=sid, tenant=tenant, name=spec.name, optuna_name=optuna_name(tenant, spec.name),
                    spec=spec.model_dump(mode="json"), state="queued", created_at=now, updated_at=now,
                    submission_id=sid, out_dir=str(studies_dir / sid))
