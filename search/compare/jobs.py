"""``ktg compare``: train several graphs with the same seeds and pair their results.

Every (graph, seed) pair is one job. Jobs with equal seeds share initial weights
(for a shared node model) and batch order, so differences pair by seed. Jobs run
in this process (``workers=1``) or as Ray tasks (``workers > 1`` on a local Ray,
or on the cluster at ``ray_address``); frozen teachers are shared through the
teacher cache. Each finished job is written to ``out/jobs/<name>/seed<S>.json``
with a fingerprint of everything that determines it, so ``resume`` re-uses it
and never trains it twice; two names whose jobs have one fingerprint share one run.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ktg.data.spec import DataSpec
from ktg.errors import KtgError
from ktg.graph import TARGET_NODE, Graph
from ktg.machine import atomic_write
from ktg.recipe import Recipe
from search.local_ray import join_ray

if TYPE_CHECKING:
    from ktg.run import RunSetup  # imports torch: only a job needs it

JOB_FORMAT = "ktg-compare-job/1"


@dataclass(frozen=True)
class CompareSetup:
    """What every job of a comparison shares: data, recipe, machine."""

    data: DataSpec
    recipe: Recipe
    device: str = "cpu"
    cache_dir: str | None = None
    threads: int = 1  # torch threads (and Ray CPUs) per job


@dataclass(frozen=True)
class Job:
    name: str
    graph: dict[str, Any] = field(repr=False)
    seed: int

    def fingerprint(self, setup: CompareSetup) -> str:
        """Everything that determines the job's numbers (the graph's ``meta`` does not)."""
        graph = {k: v for k, v in self.graph.items() if k != "meta"}
        key = {"graph": graph, "seed": self.seed, "data": setup.data.key(), "recipe": asdict(setup.recipe)}
        return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class JobResult:
    name: str
    seed: int
    fingerprint: str
    test_acc: dict[int, float | None]  # per scored node
    seconds: float
    error: str | None = None

    @property
    def target_acc(self) -> float | None:
        return None if self.error else self.test_acc.get(TARGET_NODE)

    def to_json(self) -> dict[str, Any]:
        return {"format": JOB_FORMAT, "name": self.name, "seed": self.seed, "fingerprint": self.fingerprint,
                "test_acc": {str(k): v for k, v in self.test_acc.items()}, "seconds": self.seconds,
                "error": self.error}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> JobResult:
        return cls(raw["name"], int(raw["seed"]), raw["fingerprint"],
                   {int(k): v for k, v in raw["test_acc"].items()}, float(raw["seconds"]), raw.get("error"))


# -- one job (runs in a Ray worker or in this process) -------------------------------

@cache
def _setup(setup: CompareSetup) -> RunSetup:
    """A worker process loads each dataset once, however many jobs it runs."""
    from ktg.device import Accel
    from ktg.run import RunSetup

    return RunSetup.prepare(setup.data, accel=Accel.resolve(setup.device), cache_dir=setup.cache_dir, quiet=True)


def run_job(job: Job, setup: CompareSetup, fingerprint: str) -> JobResult:
    """Train one graph with one seed; a failure is a result with its reason, never an exception."""
    import torch

    torch.set_num_threads(max(1, setup.threads))
    started = time.perf_counter()
    try:
        result = _setup(setup).train(Graph.from_dict(job.graph), setup.recipe, seed=job.seed)
        accs = {nid: node.test_acc for nid, node in result.nodes.items() if node.test_acc is not None}
        error = None
    except KtgError as exc:
        accs, error = {}, str(exc)
    except Exception as exc:  # one line, not a traceback: the other jobs still report
        accs, error = {}, f"{type(exc).__name__}: {exc}"
    return JobResult(job.name, job.seed, fingerprint, accs, time.perf_counter() - started, error)


# -- the comparison -------------------------------------------------------------------

def job_path(out_dir: Path, name: str, seed: int) -> Path:
    return out_dir / "jobs" / name / f"seed{seed}.json"


def _reusable(out_dir: Path, job: Job, fingerprint: str) -> JobResult | None:
    path = job_path(out_dir, job.name, job.seed)
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if raw.get("format") != JOB_FORMAT or raw.get("fingerprint") != fingerprint or raw.get("error"):
        return None  # another setup, or a failure worth another try
    return JobResult.from_json(raw)


def run_jobs(jobs: Sequence[Job], setup: CompareSetup, out_dir: Path, *, workers: int = 1,
             ray_address: str | None = None, resume: bool = False,
             on_result: Callable[[JobResult, bool], None] | None = None) -> list[JobResult]:
    """Run (or, with ``resume``, re-use) every job; results in the order of ``jobs``.

    ``on_result(result, reused)`` is called as each job finishes.
    """
    results: dict[tuple[str, int], JobResult] = {}
    # Names that train the same thing (a search's winner that is one of the hand-made graphs,
    # say): the engine is deterministic, so one run gives every name its numbers.
    waiting: dict[str, list[Job]] = {}  # fingerprint -> its jobs without a result yet
    known: dict[str, JobResult] = {}  # fingerprint -> a result re-used from disk
    for job in jobs:
        fingerprint = job.fingerprint(setup)
        reused = _reusable(out_dir, job, fingerprint) if resume else None
        if reused is not None:
            known[fingerprint] = reused
            results[job.name, job.seed] = reused
            if on_result:
                on_result(reused, True)
        else:
            waiting.setdefault(fingerprint, []).append(job)

    def record(result: JobResult) -> None:
        """``result`` for every job waiting on its fingerprint, each under its own name."""
        for job in waiting[result.fingerprint]:
            named = replace(result, name=job.name)
            path = job_path(out_dir, named.name, named.seed)
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, json.dumps(named.to_json(), indent=1) + "\n")  # a killed compare leaves no half file
            results[named.name, named.seed] = named
            if on_result:
                on_result(named, False)

    todo = []
    for fingerprint, jobs_of_it in waiting.items():
        if fingerprint in known:  # trained before, under another name
            record(known[fingerprint])
        else:
            todo.append((jobs_of_it[0], fingerprint))
    # The costliest jobs first, so that two workers end together (longest-processing-time order).
    todo.sort(key=lambda item: -_cost(item[0]))
    runner = _in_process if workers <= 1 and not ray_address else _on_ray
    for result in runner(todo, setup, workers, ray_address) if todo else ():
        record(result)
    return [results[j.name, j.seed] for j in jobs]


def _cost(job: Job) -> float:
    """A rough relative cost: trained nodes count fully, frozen ones (forward only) a third."""
    graph = Graph.from_dict(job.graph)
    return len(graph.trained_ids) + len(graph.frozen_ids) / 3


def _in_process(todo: list[tuple[Job, str]], setup: CompareSetup, workers: int,
                ray_address: str | None) -> Iterator[JobResult]:
    for job, fingerprint in todo:
        yield run_job(job, setup, fingerprint)


def _on_ray(todo: list[tuple[Job, str]], setup: CompareSetup, workers: int,
            ray_address: str | None) -> Iterator[JobResult]:
    import ray

    join_ray(ray_address, num_cpus=max(1, workers) * setup.threads)  # a local Ray sized to the workers
    task = ray.remote(num_cpus=setup.threads, max_retries=1)(run_job)
    queue = list(todo)
    running: list[Any] = []
    while queue or running:
        while queue and len(running) < max(1, workers):
            job, fingerprint = queue.pop(0)
            running.append(task.remote(job, setup, fingerprint))
        done, running = ray.wait(running, num_returns=1)
        yield ray.get(done[0])
