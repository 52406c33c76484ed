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

import functools
import logging
import threading
import uuid
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, cast

import optuna
from sqlalchemy import CursorResult, Result, func, or_, select, text, update
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
from api.settings import DEFAULT_MAX_RUNNING_STUDIES, MAX_RUNNING_STUDIES_ENV
from api.tenant_text import failure_cause, tenant_text
from search.spec import SearchSpec
from search.study.contract import ACTIVE_STUDY_STATES, FINISHED_STUDY_STATES
from search.study.queries import first_trial_error, study_figures
from search.study.resume import close_unfinished_trials
from search.study.storage import open_storage

log = logging.getLogger("ktg.api")

# Study ids are derived from (tenant, name): a POST retried after a lost answer,
# or after the row was rolled back, names the same Ray submission id, so Ray
# itself refuses a second search.
_ID_NAMESPACE = uuid.UUID("3f6c2a52-2f8e-4c55-9d8e-6b7467000001")
# Arbitrary constant naming the "admitting a tenant's studies" advisory locks (with the tenant's crc32).
_ADMISSION_LOCK = 0x6B7461  # "kta"
CANCELLED_BEFORE_RUN = "the study was cancelled before this re-queued trial ran"


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
    max_running: int = DEFAULT_MAX_RUNNING_STUDIES
    # The Optuna storage's URL, to close the trials a cancelled study's driver re-queued.
    storage_url: str | None = None
    _admitting: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    @functools.cached_property
    def optuna_storage(self) -> optuna.storages.BaseStorage:
        if self.storage_url is None:
            raise RuntimeError("StudyLifecycle.storage_url is not set")
        return open_storage(self.storage_url)

    # -- admitting (the tenant's quota of running studies) ---------------------------
    def admit(self, tenant: str) -> list[StudyRow]:
        """Give the tenant's oldest waiting studies the slots its quota has free; return them.

        A slot is held by every active study admitted before. Admissions of one tenant
        are serialised (a PostgreSQL advisory lock across API replicas, a lock within
        this process), so two replicas never both take the last slot; each admission is
        a compare-and-set on the row, so a study cancelled meanwhile is never admitted.
        """
        with self._admitting, self.sessions.begin() as session:
            if session.get_bind().dialect.name == "postgresql":
                session.execute(text("SELECT pg_advisory_xact_lock(:key, :tenant)"),
                                {"key": _ADMISSION_LOCK, "tenant": zlib.crc32(tenant.encode()) - 2**31})
            holding = session.execute(select(func.count()).select_from(StudyRow).where(
                StudyRow.tenant == tenant, StudyRow.state.in_(ACTIVE_STUDY_STATES),
                StudyRow.admitted_at.is_not(None))).scalar() or 0
            waiting = _waiting(tenant)
            candidates = session.scalars(select(StudyRow).where(*waiting)
                                         .order_by(StudyRow.created_at, StudyRow.id)
                                         .limit(max(0, self.max_running - holding))).all()
            admitted = []
            now = utcnow()
            for row in candidates:
                if _rowcount(session.execute(update(StudyRow).where(StudyRow.id == row.id, *waiting)
                                             .values(admitted_at=now, updated_at=now, message=None))):
                    admitted.append(row)
            session.execute(update(StudyRow).where(*waiting, StudyRow.message.is_(None))
                            .values(message=self.waiting_message()))
        for row in admitted:
            log.info("study %s of %s: admitted", row.id, tenant)
        return admitted

    def waiting_message(self) -> str:
        return (f"waiting: this tenant already runs {self.max_running} studies ({MAX_RUNNING_STUDIES_ENV}); "
                "it starts when one of them ends, in the order the studies were created")

    def start_admitted(self, tenant: str) -> None:
        """Admit what the tenant's quota allows and submit it."""
        for row in self.admit(tenant):
            self.start_admitted_row(row)

    def start_admitted_row(self, row: StudyRow) -> None:
        """Submit an admitted study; what Ray does not take now, the reconciler submits later."""
        try:
            self.submit(row)
        except RayUnavailable as exc:
            log.warning("study %s: admitted, not submitted yet (%s); the reconciler will", row.id, exc)

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
                            .values(submitted_at=utcnow(), updated_at=utcnow(),
                                    admitted_at=func.coalesce(StudyRow.admitted_at, utcnow())))
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

    def ray_silent_since(self, row: StudyRow) -> datetime | None:
        """Since when Ray has not answered, for a study whose state only Ray can tell (else None)."""
        if not self._may_change(row) or row.submitted_at is None:
            return None
        return self.cache.unreachable_since

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
        if new_state == "succeeded":
            # The job ran to its end; the study succeeded only if some trial trained.
            untrained = self._untrained_message(row)
            if untrained is not None:
                new_state, values["message"] = "failed", untrained
        elif new_state == "failed":
            values["message"] = self._failure_message(row, job)
        if new_state != row.state:
            values["state"] = new_state
            if new_state in FINISHED_STUDY_STATES:
                values["finished_at"] = utcnow()
        else:
            values.pop("message", None)
        if row.state == "cancelled" and job.status in TERMINAL_JOB_STATUSES and row.job_status not in TERMINAL_JOB_STATUSES:
            self._close_requeued(row)  # before the row says "stopped": a failure here is retried
        if not values:
            return row
        values["updated_at"] = utcnow()
        with self.sessions.begin() as session:
            done = _rowcount(session.execute(update(StudyRow).where(StudyRow.id == row.id, StudyRow.state == row.state)
                                             .values(**values)))
            fresh = session.get(StudyRow, row.id)
        if not done:
            log.info("study %s changed meanwhile; kept the newer state", row.id)
        elif new_state in FINISHED_STUDY_STATES and row.state in ACTIVE_STUDY_STATES:
            self.start_admitted(row.tenant)  # its slot is free: the tenant's next study starts
        return fresh if fresh is not None else row

    def _failure_message(self, row: StudyRow, job: JobState) -> str:
        """One line in the tenant's terms; the job's whole story goes to the service log."""
        try:
            tail = self.jobs.logs_tail(row.submission_id, lines=200)
        except RayUnavailable:
            tail = ""
        log.warning("study %s failed: %s\n%s", row.id, self.redact(job.message or ""), self.redact(tail))
        cause = failure_cause(self.redact(tail))
        if cause is None:
            return f"the search job failed; the operator's service log has the details (study {row.id})"
        return tenant_text(cause, row.spec.get("data_dir"))

    def _untrained_message(self, row: StudyRow) -> str | None:
        """Why a study whose job succeeded has still failed: no trial trained (else None)."""
        with self.sessions() as session:
            counts = study_figures(session, row.optuna_name).counts
            if counts["complete"] + counts["pruned"] > 0:
                return None
            error = first_trial_error(session, row.optuna_name)
        log.warning("study %s: no trial trained; first error: %s", row.id, error)
        if error is None:
            return "no trial trained successfully"
        return tenant_text(f"no trial trained successfully; the first failed with: {error}", row.spec.get("data_dir"))

    def _close_requeued(self, row: StudyRow) -> None:
        """A cancelled study's driver re-queued the graphs it was training (as after any
        interruption), or was killed before it could: nothing will run them, so they end
        (skipped, interrupted), not WAITING or RUNNING forever."""
        if self.storage_url is None:
            return
        closed = close_unfinished_trials(self.optuna_storage, row.optuna_name, CANCELLED_BEFORE_RUN)
        if closed:
            log.info("study %s: closed %d re-queued trial(s) after the cancel", row.id, closed)

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
        never_admitted = row.admitted_at is None and row.submitted_at is None
        if (cancelled or row.state == "cancelled") and not never_admitted:
            try:
                self.jobs.stop(row.submission_id)
            except RayUnavailable as exc:
                log.warning("study %s: cancel recorded, Ray not reachable (%s); the reconciler will stop it",
                            row.id, exc)
        if cancelled:
            self.start_admitted(row.tenant)
        return bool(cancelled)

    # -- reconciling -----------------------------------------------------------------
    def reconcile_once(self) -> None:
        """Admit what the tenants' quotas allow, compare every study Ray may still change with Ray, and act."""
        with self.sessions() as session:
            tenants = session.scalars(select(StudyRow.tenant).where(StudyRow.state == "queued",
                                                                    StudyRow.admitted_at.is_(None)).distinct()).all()
        for tenant in tenants:
            self.admit(tenant)
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
                self.cache.saw_ray(False)
                return
            except Exception:  # one bad row must not stop the others
                log.exception("reconcile: study %s", row.id)

    def _reconcile(self, row: StudyRow) -> None:
        if row.submitted_at is None and row.admitted_at is None and row.state != "cancelled":
            return  # waits for a slot of its tenant's quota
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


def _waiting(tenant: str) -> tuple[Any, ...]:
    """The tenant's studies that wait for a slot (the WHERE clause, for selects and compare-and-set)."""
    return StudyRow.tenant == tenant, StudyRow.state == "queued", StudyRow.admitted_at.is_(None)


def new_row(tenant: str, spec: SearchSpec, studies_dir: Path) -> StudyRow:
    sid = study_id(tenant, spec.name)
    now: datetime = utcnow()
    return StudyRow(id=sid, tenant=tenant, name=spec.name, optuna_name=optuna_name(tenant, spec.name),
                    spec=spec.model_dump(mode="json"), state="queued", created_at=now, updated_at=now,
                    submission_id=sid, out_dir=str(studies_dir / sid))
