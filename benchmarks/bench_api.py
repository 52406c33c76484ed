"""Status-read latency under load: ``GET /v1/studies/{id}`` with 50 concurrent clients.

Set-up, all real: a PostgreSQL (a throwaway one from ``tests/postgres.py``, or
``--storage URL``), a 1,500-trial Optuna study shaped like an ASHA search (mixed
states, per-epoch intermediate values), a local Ray head with a job RUNNING under
the study's submission id (so every read also goes through the Ray status path),
and ``ktg serve`` (uvicorn) on loopback in its own process.

The load: N keep-alive HTTP/1.1 clients (a small asyncio client: a heavier one would
spend the two cores of a CI machine on itself), first in a closed loop (each sends
its next request as soon as the answer is in: the worst case, throughput-bound),
then paced (each polls every ``--interval``). Prints p50/p90/p99/max, throughput
and the server's CPU time per request (steadier than latency on a shared machine);
the target is p99 < 50 ms. It also prints, side by side, one status
read through ``search.study.storage.trial_counts`` (Optuna loads every trial) against
the API's SQL aggregate (``search.study.queries.study_figures``), which is why the latter exists.

With ``--best``, it measures instead the best-graph endpoints (``/best?k=1``,
``/best/1.json``, ``/best/1.svg``) on a 1,000- and a 10,000-trial study side by side,
against the way they were read before (every trial through Optuna), to show that
their time does not grow with the study.

    python benchmarks/bench_api.py [--storage URL] [--clients 50] [--seconds 15]
    python benchmarks/bench_api.py --best [--storage URL]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from ktg.machine import free_port, wait_until  # noqa: E402

TOKEN = "bench-token-0123456789abcdef"


@contextlib.contextmanager
def throwaway_postgres() -> Iterator[str]:
    """The test suite's PostgreSQL (real server, loopback, password auth), outside pytest."""
    from tests.postgres import postgres_url

    fixture = postgres_url.__wrapped__()  # type: ignore[attr-defined]
    url = next(fixture)
    try:
        yield url
    finally:
        with contextlib.suppress(StopIteration):
            next(fixture)


def prepare_study(storage_url: str, data_dir: Path, trials: int) -> tuple[str, str]:
    """The 1,500-trial study and its registry row (running, with a Ray job RUNNING):
    (study id, Optuna study name)."""
    from api.db import init_schema, make_engine, make_sessions, utcnow
    from api.lifecycle import new_row
    from api.ray_head import ensure_local_head
    from api.ray_jobs import RayJobs
    from search.spec import SearchSpec
    from search.study.storage import open_storage
    from tests.optuna_studies import fill_study

    storage = open_storage(storage_url)
    name = f"bench-{int(time.time())}"
    started = time.perf_counter()
    study = fill_study(storage, f"bench.{name}", trials, epochs=200, seed=7, workers=8)
    values = sum(len(t.intermediate_values) for t in study.get_trials(deepcopy=False))
    print(f"study: {trials} trials, {values} intermediate values, written in {time.perf_counter() - started:.1f} s")

    engine = make_engine(storage_url)
    init_schema(engine)
    sessions = make_sessions(engine)
    spec = SearchSpec(name=name, nodes=4, trials=trials, epochs=200)
    row = new_row("bench", spec, data_dir / "studies")
    row.state, row.submitted_at = "running", utcnow()
    with sessions.begin() as session:
        session.add(row)
    engine.dispose()

    head = ensure_local_head(data_dir, storage_url)
    RayJobs(head.dashboard_url, token=head.token()).submit(row.submission_id, "sleep 900", {"bench": "1"})
    return row.id, row.optuna_name


def compare_single_reads(storage_url: str, study_name: str, repeats: int = 5) -> None:
    """One status read, no load: Optuna's trial_counts vs the API's SQL aggregate."""
    from api.db import make_engine, make_sessions
    from search.study.queries import study_figures
    from search.study.storage import load_study, open_storage, trial_counts

    storage = open_storage(storage_url)
    engine = make_engine(storage_url)
    sessions = make_sessions(engine)

    def optuna_read() -> dict[str, int]:
        return trial_counts(load_study(study_name, storage))

    def sql_read() -> dict[str, int]:
        with sessions() as session:
            return study_figures(session, study_name).counts

    assert optuna_read() == sql_read()
    timings = {}
    for label, read in (("optuna trial_counts", optuna_read), ("API SQL aggregate", sql_read)):
        samples = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            read()
            samples.append(time.perf_counter() - t0)
        timings[label] = statistics.median(samples)
    engine.dispose()
    slow, fast = timings["optuna trial_counts"], timings["API SQL aggregate"]
    print(f"one status read, no load: optuna trial_counts {slow * 1e3:.1f} ms, API SQL {fast * 1e3:.1f} ms "
          f"(x{slow / fast:.0f})")


BEST_SIZES = (1_000, 10_000)
BEST_PATHS = ("/best?k=1", "/best/1.json", "/best/1.svg")


def prepare_finished_study(storage_url: str, data_dir: Path, trials: int) -> tuple[str, str]:
    """A finished study of ``trials`` trials (20 epochs each at most) and its registry row:
    (study id, Optuna study name)."""
    from api.db import init_schema, make_engine, make_sessions
    from api.lifecycle import new_row
    from search.spec import SearchSpec
    from search.study.storage import open_storage
    from tests.optuna_studies import fill_study

    name = f"best-{trials}-{int(time.time())}"
    started = time.perf_counter()
    fill_study(open_storage(storage_url), f"bench.{name}", trials, epochs=20, seed=3, workers=8)
    print(f"study: {trials} trials written in {time.perf_counter() - started:.1f} s")
    engine = make_engine(storage_url)
    init_schema(engine)
    row = new_row("bench", SearchSpec(name=name, nodes=4, trials=trials, epochs=20), data_dir / "studies")
    row.state = "succeeded"
    with make_sessions(engine).begin() as session:
        session.add(row)
    engine.dispose()
    return row.id, row.optuna_name


def median_ms(call: Callable[[], object], repeats: int) -> float:
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        call()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples) * 1e3


def compare_best(storage_url: str, port: int, studies: dict[int, tuple[str, str]], repeats: int = 15) -> None:
    """The best-graph endpoints over HTTP on each study, and the old read (every trial through Optuna)."""
    import urllib.request

    from search.study.storage import load_study, open_storage

    storage = open_storage(storage_url)

    def get(url: str) -> bytes:
        request = urllib.request.Request(url, headers={"Authorization": f"Bearer {TOKEN}"})
        with urllib.request.urlopen(request, timeout=60) as response:
            return bytes(response.read())

    def optuna_top(name: str) -> object:  # what /best did before: load every trial, sort in Python
        trials = load_study(name, storage).get_trials(deepcopy=False)
        return sorted((t for t in trials if t.state.name == "COMPLETE" and t.value is not None),
                      key=lambda t: (-t.value, t.number))[:1]

    header = f"{'median of ' + str(repeats) + ' (ms)':<34}" + "".join(f"{n:>12,} trials" for n in studies)
    print(header)
    for path in BEST_PATHS:
        cells = [median_ms(lambda sid=sid, path=path: get(f"http://127.0.0.1:{port}/v1/studies/{sid}{path}"), repeats)
                 for sid, _ in studies.values()]
        print(f"{'GET ' + path:<34}" + "".join(f"{c:>19.1f}" for c in cells))
    cells = [median_ms(lambda name=name: optuna_top(name), 3) for _, name in studies.values()]
    print(f"{'before: top-1 through Optuna':<34}" + "".join(f"{c:>19.1f}" for c in cells))


async def client_loop(port: int, path: str, stop_at: float, record_from: float, interval: float,
                      latencies: list[float], errors: list[str], answered: list[int]) -> None:
    """One keep-alive client: request, read the whole answer, wait out ``interval``
    (0: at once, a closed loop), repeat."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    request = (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n\r\n").encode()
    if interval:
        await asyncio.sleep(random.uniform(0, interval))  # spread the clients over the period
    try:
        while time.perf_counter() < stop_at:
            t0 = time.perf_counter()
            writer.write(request)
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:"))
            await reader.readexactly(length)
            answered[0] += 1
            if status != 200:
                errors.append(str(status))
            elif t0 >= record_from:
                latencies.append(time.perf_counter() - t0)
            if interval:
                await asyncio.sleep(max(0.0, t0 + interval - time.perf_counter()))
    finally:
        writer.close()


async def load(port: int, path: str, clients: int, seconds: float, warmup: float,
               interval: float) -> tuple[list[float], list[str], int]:
    """(latencies after the warm-up, errors, requests answered in all)."""
    latencies: list[float] = []
    errors: list[str] = []
    answered = [0]
    start = time.perf_counter()
    await asyncio.gather(*(client_loop(port, path, start + warmup + seconds, start + warmup, interval,
                                       latencies, errors, answered) for _ in range(clients)))
    return latencies, errors, answered[0]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def report(label: str, latencies: list[float], errors: list[str], seconds: float, server_cpu_per_request: float) -> None:
    ms = sorted(x * 1e3 for x in latencies)
    print(f"  {label}: {len(ms)} requests ({len(ms) / seconds:.0f}/s), errors {len(errors)}, "
          f"server CPU {server_cpu_per_request * 1e3:.2f} ms/request")
    print(f"    p50 {percentile(ms, 0.50):.1f} ms  p90 {percentile(ms, 0.90):.1f} ms  "
          f"p99 {percentile(ms, 0.99):.1f} ms  max {ms[-1]:.1f} ms   (target p99 < 50 ms)")


def percentile(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--storage", help="a postgresql:// URL (default: a throwaway local PostgreSQL)")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--trials", type=int, default=1500)
    parser.add_argument("--interval", type=float, default=0.1, help="seconds between a paced client's requests")
    parser.add_argument("--best", action="store_true", help="measure the best-graph endpoints instead")
    args = parser.parse_args()
    if args.best:
        return main_best(args.storage)

    data_dir = Path(tempfile.mkdtemp(prefix="ktg-bench-api-"))
    with contextlib.ExitStack() as stack:  # left in reverse: the server, the folder, the database
        storage_url = args.storage or stack.enter_context(throwaway_postgres())
        stack.callback(shutil.rmtree, data_dir, ignore_errors=True)
        study_id, study_name = prepare_study(storage_url, data_dir, args.trials)
        compare_single_reads(storage_url, study_name)
        port, server = stack.enter_context(serving(storage_url, data_dir, "bench"))
        path = f"/v1/studies/{study_id}"
        print(f"GET /v1/studies/{{id}} ({args.trials} trials, study running, its Ray job RUNNING): "
              f"{args.clients} concurrent keep-alive clients on loopback, {args.seconds:.0f} s each after "
              f"{args.warmup:.0f} s warm-up, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
        for label, interval in (("closed loop (next request as soon as the answer is in)", 0.0),
                                (f"paced (each client every {args.interval * 1e3:.0f} ms)", args.interval)):
            cpu_before = cpu_seconds(server.pid)
            latencies, errors, answered = asyncio.run(load(port, path, args.clients, args.seconds, args.warmup,
                                                           interval))
            cpu = (cpu_seconds(server.pid) - cpu_before) / max(1, answered)
            report(label, latencies, errors, args.seconds, cpu)
    return 0


def main_best(storage: str | None) -> int:
    data_dir = Path(tempfile.mkdtemp(prefix="ktg-bench-best-"))
    with contextlib.ExitStack() as stack:
        storage_url = storage or stack.enter_context(throwaway_postgres())
        stack.callback(shutil.rmtree, data_dir, ignore_errors=True)
        studies = {n: prepare_finished_study(storage_url, data_dir, n) for n in BEST_SIZES}
        port, _ = stack.enter_context(serving(storage_url, data_dir, "bench"))
        print(f"best-graph endpoints, one client, sequential; {os.cpu_count()} CPUs, "
              f"load average {os.getloadavg()[0]:.1f}")
        compare_best(storage_url, port, studies)
    return 0


@contextlib.contextmanager
def serving(storage_url: str, data_dir: Path, tenant: str) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    """``ktg serve`` on a free loopback port (its local Ray head in ``data_dir``), stopped afterwards:
    (port, server process); ``TOKEN`` is ``tenant``'s."""
    from api.ray_head import read_head, stop_local_head

    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KTG_", "RAY_"))}
    env |= {"KTG_STORAGE": storage_url, "KTG_API_TOKENS": f"{tenant}:{TOKEN}", "KTG_DATA_DIR": str(data_dir)}
    with open(data_dir / "serve.log", "wb") as log:  # the server process writes to it
        server = subprocess.Popen([sys.executable, "-m", "ktg.cli", "serve", "--port", str(port)], env=env,
                                  stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    try:
        wait_healthy(port, server)
        yield port, server
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
        head = read_head(data_dir)
        stop_local_head(data_dir, grace_s=5)
        if head is not None:  # the head's private folder around Ray's own (api.ray_head)
            shutil.rmtree(Path(head.temp_dir).parent, ignore_errors=True)


def wait_healthy(port: int, server: subprocess.Popen[bytes]) -> None:
    import urllib.request

    def answers() -> bool:
        with contextlib.suppress(OSError), urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2):
            return True
        return False

    if not wait_until(answers, 120, every_s=0.3, give_up=lambda: server.poll() is not None):
        raise SystemExit(f"the API server exited with {server.returncode}" if server.poll() is not None
                         else "the API server did not answer within 120 s")


if __name__ == "__main__":
    sys.exit(main())
