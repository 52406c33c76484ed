"""How well ``ktg compare --workers 2`` uses two cores, measured side by side in one run.

    python benchmarks/bench_compare.py [--epochs 10] [--seeds 2]

Runs the same (graph, seed) jobs twice on digits: in this process one after the
other, then on a local Ray with two workers. Prints, for the parallel run, the
issue's figure  wall / (sum of its job times / 2)  (target <= 1.15), and the
plain speed-up  sequential wall / parallel wall.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from ktg.data.spec import DataSpec
from ktg.graph import Graph
from ktg.recipe import Recipe
from search.compare.jobs import CompareSetup, Job, run_jobs

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
GRAPHS = ("independent", "dml-2", "kd")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--seeds", type=int, default=2)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        setup = CompareSetup(DataSpec("digits"), Recipe(epochs=args.epochs), cache_dir=f"{tmp}/teachers")
        jobs = [Job(name, Graph.load(EXAMPLES / f"{name}.json").to_dict(), seed)
                for name in GRAPHS for seed in range(args.seeds)]
        # Teachers pre-trained once, outside both timings (both runs would share the cache anyway).
        run_jobs([j for j in jobs if j.name == "kd"], setup, Path(tmp) / "warm")
        walls, sums = {}, {}
        for label, workers in (("sequential", 1), ("2 workers", 2)):
            started = time.perf_counter()
            results = run_jobs(jobs, setup, Path(tmp) / label, workers=workers)
            walls[label] = time.perf_counter() - started
            sums[label] = sum(r.seconds for r in results)
            assert not any(r.error for r in results), [r.error for r in results if r.error]
    for label in walls:
        print(f"{label:>10}: wall {walls[label]:7.1f} s, sum of job times {sums[label]:7.1f} s")
    ratio = walls["2 workers"] / (sums["2 workers"] / 2)
    print(f"2 workers: wall / (sum of job times / 2) = {ratio:.2f}  (issue's bound: <= 1.15)")
    print(f"speed-up over sequential: {walls['sequential'] / walls['2 workers']:.2f}x")


if __name__ == "__main__":
    main()
