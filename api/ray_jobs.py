"""Studies as Ray jobs: launch, read back, stop (the Ray Jobs API client of the service).

Each study is one Ray job (Ray Jobs API) whose ``submission_id`` is the study
id, so submitting twice (a client retry, two API replicas, a restart between
"recorded" and "submitted") can never start two searches: Ray refuses the
second, and we treat that refusal as success. The job runs
``ktg search --spec-json ... --resume``, which makes a re-submitted job after a
lost cluster continue the Optuna study instead of starting over.

The entrypoint never carries the database password: ``ktg search`` reads the
storage URL from ``KTG_STORAGE`` in the cluster's own environment (a Secret in
Docker/Kubernetes; set by ``api.ray_head`` for the head ``ktg serve`` starts).

``JobSubmissionClient`` talks HTTP to the dashboard without timeouts; a hung
dashboard must not hang API threads, so every request here carries one; and
``StatusCache`` keeps statuses for a moment, so polling clients cost Ray little.
"""

from __future__ import annotations

import contextlib
import shlex
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from api.ttl_cache import TtlCache
from ktg.errors import first_line
from search.study.contract import StudyState

# Ray JobStatus -> the study state users see.
STATE_OF_JOB_STATUS: Mapping[str, StudyState] = {
    "PENDING": "queued",
    "RUNNING": "running",
    "SUCCEEDED": "succeeded",
    "FAILED": "failed",
    "STOPPED": "cancelled",
}
TERMINAL_JOB_STATUSES = frozenset({"SUCCEEDED", "FAILED", "STOPPED"})


class RayUnavailable(Exception):
    """The Ray cluster (its dashboard, which serves the Jobs API) did not answer.

    ``ambiguous``: the request may have reached Ray (read timeout, server error),
    so a submission may have happened; otherwise it certainly did not.
    """

    def __init__(self, message: str, *, ambiguous: bool = False) -> None:
        super().__init__(message)
        self.ambiguous = ambiguous


@dataclass(frozen=True)
class JobState:
    """What Ray says about one job."""

    status: str  # PENDING | RUNNING | STOPPED | SUCCEEDED | FAILED
    job_id: str | None
    message: str | None


class _HTTPError(RuntimeError):
    """A non-2xx answer of the dashboard, with its status code (the SDK only gives text)."""

    def __init__(self, status_code: int, text: str) -> None:
        super().__init__(f"Request failed with status code {status_code}: {text}.")
        self.status_code = status_code


def _client_class() -> type[Any]:
    """A JobSubmissionClient with request timeouts and typed HTTP errors.

    Built lazily: importing Ray's job SDK costs a second of start-up that
    processes which never launch a study (tests, the benchmark) need not pay.
    """
    from ray.job_submission import JobSubmissionClient

    class TimedClient(JobSubmissionClient):  # type: ignore[misc]
        timeout_s: float = 10.0

        def _do_request(self, method: str, endpoint: str, **kwargs: Any) -> Any:
            kwargs.setdefault("timeout", self.timeout_s)
            return super()._do_request(method, endpoint, **kwargs)

        def _raise_error(self, r: Any) -> None:
            raise _HTTPError(r.status_code, r.text)

    return TimedClient


class RayJobs:
    """The Ray Jobs API of one cluster, as the study lifecycle needs it.

    Every method raises ``RayUnavailable`` when the cluster cannot be reached,
    so callers answer 503 (or keep the last known state) rather than 500.
    """

    def __init__(self, address: str | None, timeout_s: float = 10.0, token: str | None = None) -> None:
        self.address = address
        self.timeout_s = timeout_s
        # Explicit token for a head we started; otherwise Ray's own loader applies
        # (RAY_AUTH_MODE=token with RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH in our environment).
        self.headers = {"Authorization": f"Bearer {token}"} if token else None
        self._client: Any = None
        self._lock = threading.Lock()

    def _get_client(self) -> Any:
        if self.address is None:
            raise RayUnavailable("no Ray cluster configured (RAY_ADDRESS)")
        with self._lock:
            if self._client is None:
                cls = _client_class()
                cls.timeout_s = self.timeout_s
                try:
                    self._client = cls(self.address, headers=self.headers)
                except Exception as exc:  # connection refused, DNS, version check, timeout
                    raise RayUnavailable(f"Ray at {self.address} did not answer: {first_line(exc)}") from None
            return self._client

    @contextlib.contextmanager
    def _calling(self) -> Iterator[Any]:
        """Yield the client; turn transport failures into RayUnavailable and drop the client."""
        import requests

        client = self._get_client()
        try:
            yield client
        except RayUnavailable:
            raise
        except requests.RequestException as exc:
            with self._lock:
                self._client = None  # reconnect (and re-check the version) next time
            ambiguous = not isinstance(exc, requests.ConnectionError | requests.ConnectTimeout)
            raise RayUnavailable(f"Ray at {self.address} did not answer: {first_line(exc)}",
                                 ambiguous=ambiguous) from None
        except Exception as exc:  # HTTP errors callers did not handle, auth refused, bad answers
            raise RayUnavailable(f"Ray at {self.address} failed: {first_line(exc)}", ambiguous=True) from None

    def version(self) -> str:
        """The cluster's Ray version (the readiness probe)."""
        with self._calling() as client:
            response = client._do_request("GET", "/api/version")
            response.raise_for_status()
            return str(response.json().get("ray_version", "?"))

    def submit(self, submission_id: str, entrypoint: str, metadata: Mapping[str, str]) -> bool:
        """Submit once: True if this call created the job, False if it already existed."""
        with self._calling() as client:
            try:
                client.submit_job(entrypoint=entrypoint, submission_id=submission_id, metadata=dict(metadata))
            except _HTTPError as exc:
                if "already exists" in str(exc):
                    return False
                raise
            return True

    def status(self, submission_id: str) -> JobState | None:
        """The job's state, or None when the cluster does not know it (never submitted, or lost)."""
        with self._calling() as client:
            try:
                info = client.get_job_info(submission_id)
            except _HTTPError as exc:
                if exc.status_code == 404:
                    return None
                raise
        status = getattr(info.status, "value", str(info.status))
        return JobState(status=str(status), job_id=info.job_id, message=info.message)

    def stop(self, submission_id: str) -> None:
        """Ask Ray to stop the job (SIGTERM, then SIGKILL); a job Ray does not know is already stopped."""
        with self._calling() as client:
            try:
                client.stop_job(submission_id)
            except _HTTPError as exc:
                if exc.status_code != 404:
                    raise

    def logs_tail(self, submission_id: str, lines: int = 20) -> str:
        """The last lines of the driver's output: why a study failed, in its own words."""
        with self._calling() as client:
            try:
                text = client.get_job_logs(submission_id)
            except _HTTPError:
                return ""
        return "\n".join(text.rstrip().splitlines()[-lines:])


def search_entrypoint(spec_json: str, out_dir: Path) -> str:
    """The job's shell command; it carries the spec, never the storage URL."""
    return f"ktg search --spec-json {shlex.quote(spec_json)} --out {shlex.quote(str(out_dir))} --resume"


class StatusCache:
    """Ray job statuses, fresh for ``ttl_s``: many clients polling one study cost one
    dashboard request per ttl, not one per poll. An unreachable Ray is remembered for
    ``ttl_s`` too, so an outage does not make every status read wait on a connect."""

    def __init__(self, jobs: RayJobs, ttl_s: float) -> None:
        self.jobs, self.ttl_s = jobs, ttl_s
        self._cache: TtlCache[str, JobState | RayUnavailable | None] = TtlCache(ttl_s)
        # When Ray stopped answering (the first failed request since the last answer), else None.
        self.unreachable_since: datetime | None = None

    def get(self, submission_id: str) -> JobState | None:
        result = self._cache.get_or_compute(submission_id, lambda: self._read(submission_id))
        if isinstance(result, RayUnavailable):  # a fresh exception: the cached one is shared across threads
            raise RayUnavailable(str(result), ambiguous=result.ambiguous)
        return result

    def _read(self, submission_id: str) -> JobState | RayUnavailable | None:
        try:
            state = self.jobs.status(submission_id)
        except RayUnavailable as exc:
            self.saw_ray(False)
            return exc
        self.saw_ray(True)
        return state

    def saw_ray(self, answered: bool) -> None:
        """Record whether Ray just answered (status reads here, and the reconciler's own calls)."""
        if answered:
            self.unreachable_since = None
        elif self.unreachable_since is None:
            self.unreachable_since = datetime.now(UTC)

    def forget(self, submission_id: str) -> None:
        self._cache.forget(submission_id)
