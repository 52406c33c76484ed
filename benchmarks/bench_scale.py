"""The paper's scale: ``ktg search --nodes 4 --trials 1500`` to the end, on PostgreSQL, 2 workers.

Everything is real: a throwaway PostgreSQL (the tests' helper, or ``--storage``),
the ``ktg search`` command in its own process with a local Ray, then ``ktg export``
and ``ktg serve`` on the finished study. The trials are real too, only small
(``synthetic`` 16x16 images, resnet8 on every node, 1-2 epochs), so that 1,500 of
them fit in an hour on 2 cores. It prints:

* the wall time, and trials by state;
* orchestration seconds per trial over trials 1-100 against the last 100: the time
  the worker slots were not inside a trial's own code, per trial
  ``(span x workers - sum of in-trial seconds) / trials``, where a trial's own
  seconds are Tune's ``time_total_s`` (from the trainable's start to its last report);
* the driver's peak RSS (``VmHWM`` of the ``ktg search`` process, polled);
* the database size, and the Ray experiment folder's size and file count;
* how long ``ktg export --top 10`` takes;
* ``GET /v1/studies/{id}`` and ``GET /v1/studies/{id}/trials?offset=...`` p50/p99,
  served by ``ktg serve`` (the study registered in the API's table, as if the API
  had launched it).

Nothing is asserted; the README's Performance section records a run (docs/results/scale.txt).

    .venv/bin/python benchmarks/bench_scale.py --trials 1500 --out runs/scale | tee runs/scale.txt
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_api import load, percentile, serving, throwaway_postgres  # noqa: E402

TENANT, NAME = "bench", "scale"
WINDOW = 100  # trials per orchestration window


def search_command(args: argparse.Namespace, storage: str, out: Path) -> list[str]:
    return [sys.executable, "-m", "ktg.cli", "search", "--nodes", str(args.nodes), "--trials", str(args.trials),
            "--study", f"{TENANT}.{NAME}", "--storage", storage, "--out", str(out), "--workers", str(args.workers),
            "--dataset", "synthetic", "--train-size", str(args.train_size), "--epochs", str(args.epochs),
            "--target-model", args.model, "--models", args.model, "--batch-size", str(args.batch_size), "--warmup-steps", "0"]


@dataclass
class DriverMemory:
    """The driver's RSS as the search went: its peak, and (trials started, RSS) every 10 s."""

    peak: int = 0
    trace: list[tuple[int, int]] = field(default_factory=list)

    def growth(self, trials: int) -> str:
        """RSS once 100 trials had started, at the end, and the growth per trial in between."""
        after = [(n, rss) for n, rss in self.trace if n >= min(WINDOW, trials)]
        if len(after) < 2 or after[-1][0] == after[0][0]:
            return "too short to tell"
        (n0, r0), (n1, r1) = after[0], after[-1]
        return (f"{r0 / 2**20:.0f} MiB at trial {n0}, {r1 / 2**20:.0f} MiB at trial {n1}: "
                f"{(r1 - r0) / (n1 - n0) / 2**20:+.3f} MiB per trial")


def run_search(args: argparse.Namespace, storage: str, out: Path) -> tuple[float, int, DriverMemory]:
    """(wall seconds, exit code, the driver's memory), its output in ``out/search.log``."""
    out.mkdir(parents=True, exist_ok=True)
    memory, experiment, polled = DriverMemory(), out / "ray" / f"{TENANT}.{NAME}", 0.0
    started = time.perf_counter()
    with open(out / "search.log", "wb") as log:
        driver = subprocess.Popen(search_command(args, storage, out), stdout=log, stderr=subprocess.STDOUT,
                                  cwd=REPO, start_new_session=True)
        while driver.poll() is None:
            status = _memory_status(driver.pid)
            memory.peak = max(memory.peak, status.get("VmHWM", 0))
            if time.perf_counter() - polled >= 10 and "VmRSS" in status:
                polled = time.perf_counter()
                trials = sum(1 for _ in experiment.glob("*/params.json")) if experiment.is_dir() else 0
                memory.trace.append((trials, status["VmRSS"]))
            time.sleep(1.0)
    return time.perf_counter() - started, driver.returncode, memory


def _memory_status(pid: int) -> dict[str, int]:
    """The process's ``VmRSS`` and high-water ``VmHWM`` in bytes; empty once it is gone."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
        return {line.split(":")[0]: int(line.split()[1]) * 1024 for line in lines
                if line.startswith(("VmRSS:", "VmHWM:"))}
    return {}


def in_trial_seconds(experiment: Path) -> dict[int, float]:
    """Study trial number -> seconds inside the trainable (Tune's ``time_total_s`` of its last report)."""
    seconds: dict[int, float] = {}
    for params in experiment.glob("*/params.json"):
        number = json.loads(params.read_text()).get("trial_number")
        results = params.with_name("result.json")
        lines = results.read_text().splitlines() if results.is_file() else []
        if number is not None and lines:
            seconds[int(number)] = float(json.loads(lines[-1]).get("time_total_s", 0.0))
    return seconds


def orchestration(trials: list, inside: dict[int, float], workers: int) -> float:
    """Seconds per trial the worker slots spent outside trials' own code, over ``trials``."""
    span = (max(t.datetime_complete for t in trials) - min(t.datetime_start for t in trials)).total_seconds()
    busy = sum(inside.get(t.number, 0.0) for t in trials)
    return (span * workers - busy) / len(trials)


def folder_size(folder: Path) -> tuple[int, int, int]:
    """(bytes, files, bytes inside trial checkpoints) under a folder."""
    size = files = in_checkpoints = 0
    for root, _, names in os.walk(folder):
        checkpoint = "/checkpoint_" in root
        for name in names:
            with contextlib.suppress(OSError):
                bytes_ = os.lstat(os.path.join(root, name)).st_size
                size, files = size + bytes_, files + 1
                in_checkpoints += bytes_ if checkpoint else 0
    return size, files, in_checkpoints


def database_size(storage: str) -> int:
    from sqlalchemy import create_engine, text

    from search.study.storage import sqlalchemy_url

    engine = create_engine(sqlalchemy_url(storage))
    try:
        with engine.connect() as connection:
            return int(connection.execute(text("SELECT pg_database_size(current_database())")).scalar_one())
    finally:
        engine.dispose()


def register_study(storage: str, data_dir: Path) -> str:
    """The CLI's study as an API study row (finished), so that ``ktg serve`` serves it; its id."""
    import optuna

    from api.db import init_schema, make_engine, make_sessions, utcnow
    from api.lifecycle import new_row
    from search.spec import SearchSpec
    from search.study.storage import STUDY_ATTR_SPEC, open_storage

    study = optuna.load_study(study_name=f"{TENANT}.{NAME}", storage=open_storage(storage))
    spec = SearchSpec.model_validate({**study.user_attrs[STUDY_ATTR_SPEC], "name": NAME})
    engine = make_engine(storage)
    init_schema(engine)
    row = new_row(TENANT, spec, data_dir / "studies")
    row.state, row.submitted_at, row.finished_at = "succeeded", utcnow(), utcnow()
    with make_sessions(engine).begin() as session:
        session.add(row)
    engine.dispose()
    return row.id


def api_latencies(port: int, path: str, clients: int, seconds: float) -> str:
    latencies, errors, _ = asyncio.run(load(port, path, clients, seconds, warmup=2.0, interval=0.1))
    ms = sorted(x * 1e3 for x in latencies)
    if not ms:
        return f"no answer ({len(errors)} errors: {sorted(set(errors))})"
    return (f"p50 {percentile(ms, 0.50):6.1f} ms  p99 {percentile(ms, 0.99):6.1f} ms  "
            f"({len(ms)} requests, {clients} clients polling every 100 ms, {len(errors)} errors)")


def report(args: argparse.Namespace, storage: str, out: Path, wall: float, rc: int, memory: DriverMemory) -> None:
    import optuna

    from search.study.storage import counted, open_storage

    study = optuna.load_study(study_name=f"{TENANT}.{NAME}", storage=open_storage(storage))
    all_trials = study.get_trials(deepcopy=False)
    trained = sorted((t for t in all_trials if counted(t) and t.datetime_complete is not None),
                     key=lambda t: t.number)
    states: dict[str, int] = {}
    for t in all_trials:
        states[t.state.name.lower()] = states.get(t.state.name.lower(), 0) + 1
    print(f"ktg search --nodes {args.nodes} --trials {args.trials} --epochs {args.epochs} --workers {args.workers} "
          f"(synthetic, {args.train_size} images, {args.model}), PostgreSQL: exit {rc}")
    print(f"  wall time          {wall / 60:8.1f} min   ({wall / max(1, len(trained)):.2f} s per trained trial)")
    print(f"  trials             {len(trained)} trained; rows by state {states}")
    inside = in_trial_seconds(out / "ray" / f"{TENANT}.{NAME}")
    if len(trained) >= 2 * WINDOW:
        first, last = trained[:WINDOW], trained[-WINDOW:]
        early, late = orchestration(first, inside, args.workers), orchestration(last, inside, args.workers)
        print(f"  orchestration      trials 1-{WINDOW}: {early:.2f} s/trial;  trials "
              f"{len(trained) - WINDOW + 1}-{len(trained)}: {late:.2f} s/trial;  x{late / early:.2f}")
        print(f"  in-trial seconds   trials 1-{WINDOW}: {sum(inside.get(t.number, 0) for t in first) / WINDOW:.2f}"
              f" s/trial;  last {WINDOW}: {sum(inside.get(t.number, 0) for t in last) / WINDOW:.2f} s/trial")
        windows = [trained[i:i + WINDOW] for i in range(0, len(trained) - WINDOW + 1, WINDOW)]
        print(f"  per {WINDOW} trials     orchestration "
              + " ".join(f"{orchestration(w, inside, args.workers):.2f}" for w in windows)
              + "  |  in-trial " + " ".join(f"{sum(inside.get(t.number, 0) for t in w) / len(w):.2f}" for w in windows))
    print(f"  driver peak RSS    {memory.peak / 2**20:8.0f} MiB   (RSS {memory.growth(len(trained))})")
    print(f"  database           {database_size(storage) / 2**20:8.1f} MiB")
    size, files, in_checkpoints = folder_size(out / "ray")
    print(f"  Ray experiment     {size / 2**20:8.1f} MiB in {files:,} files ({out / 'ray'}); "
          f"{in_checkpoints / 2**20:.1f} MiB of it in trial checkpoints (--checkpoint-gb, --keep-best)")
    started = time.perf_counter()
    export = subprocess.run([sys.executable, "-m", "ktg.cli", "export", "--study", f"{TENANT}.{NAME}",
                             "--storage", storage, "--top", "10", "--out", str(out / "export")],
                            cwd=REPO, capture_output=True, text=True)
    print(f"  ktg export --top 10 {time.perf_counter() - started:7.1f} s (exit {export.returncode})")

    data_dir = Path(tempfile.mkdtemp(prefix="ktg-bench-scale-"))
    try:
        study_id = register_study(storage, data_dir)
        with serving(storage, data_dir, TENANT) as (port, _):
            for path in (f"/v1/studies/{study_id}", f"/v1/studies/{study_id}/trials?limit=100&offset=0",
                         f"/v1/studies/{study_id}/trials?limit=100&offset={max(0, len(all_trials) - 100)}"):
                print(f"  GET {path.replace(study_id, '{id}'):<46} {api_latencies(port, path, 10, args.seconds)}")
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--storage", help="a postgresql:// URL (default: a throwaway local PostgreSQL)")
    parser.add_argument("--trials", type=int, default=1500)
    parser.add_argument("--nodes", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--train-size", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=25)
    parser.add_argument("--model", default="resnet8")
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds of API load per endpoint")
    parser.add_argument("--out", type=Path, help="the search's output folder (default: a temporary one)")
    args = parser.parse_args()

    out = args.out or Path(tempfile.mkdtemp(prefix="ktg-scale-out-"))
    if out.exists() and any(out.iterdir()):
        raise SystemExit(f"--out: {out} is not empty; allowed: a new or empty folder")
    with contextlib.ExitStack() as stack:
        storage = args.storage or stack.enter_context(throwaway_postgres())
        wall, rc, memory = run_search(args, storage, out)
        if rc != 0:
            print((out / "search.log").read_text()[-3000:])
        report(args, storage, out, wall, rc, memory)
    return 0


if __name__ == "__main__":
    sys.exit(main())
