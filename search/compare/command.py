"""What ``ktg compare`` does once its flags are parsed (the flags are in ``search/commands.py``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ktg import cli as ktg_cli
from ktg.errors import KtgError
from ktg.report import console, out
from search.compare.jobs import CompareSetup, Job, JobResult, run_jobs
from search.compare.report import plot, render_table, summarise, write_json

EXIT_PARTIAL = 1  # some graph or job failed; the others were still reported


def _names(args: argparse.Namespace) -> list[str]:
    names = [n.strip() for n in args.names.split(",")] if args.names else [Path(g).stem for g in args.graphs]
    if len(names) != len(args.graphs):
        raise KtgError(f"--names: got {len(names)} names for {len(args.graphs)} graphs; allowed: one name per graph")
    if len(set(names)) != len(names) or not all(names):
        raise KtgError(f"--names: got {','.join(names)}; allowed: distinct, non-empty names "
                       "(two files with the same stem need --names)")
    return names


def _check(args: argparse.Namespace) -> None:
    for flag, value, minimum in (("--seeds", args.seeds, 1), ("--workers", args.workers, 1),
                                 ("--threads-per-job", args.threads_per_job, 1)):
        if value < minimum:
            raise KtgError(f"{flag}: got {value}; allowed: an integer >= {minimum}")


def _load_graphs(paths: list[str], names: list[str]) -> tuple[list[dict[str, Any] | None], dict[str, str]]:
    """Each graph file, or the one line that says why it cannot be used (the others still run)."""
    from ktg.run import load_graph  # imports torch: after the flags are checked, so a typo is one quick line

    graphs: list[dict[str, Any] | None] = []
    errors: dict[str, str] = {}
    for path, name in zip(paths, names, strict=True):
        try:
            graphs.append(load_graph(path).to_dict())
        except KtgError as exc:
            graphs.append(None)
            errors[name] = f"{path}: {exc}"
            print(f"ktg compare: error: {path}: {exc}", file=sys.stderr)  # one line, never wrapped
    return graphs, errors


def run_compare_command(args: argparse.Namespace) -> int:
    _check(args)
    names = _names(args)
    recipe = ktg_cli.recipe_from_args(args)
    spec = ktg_cli.data_spec_from_args(args, 0.0)
    setup = CompareSetup(spec, recipe, device=args.device, cache_dir=args.cache_dir, threads=args.threads_per_job)
    spec.load()  # a missing dataset is one line before any job starts
    graphs, load_errors = _load_graphs(args.graphs, names)
    seeds = [args.seed + k for k in range(args.seeds)]
    jobs = [Job(name, graph, seed) for name, graph in zip(names, graphs, strict=True) if graph is not None
            for seed in seeds]
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = _run_with_progress(jobs, setup, out_dir, args)
    rows = summarise(names, args.graphs, graphs, seeds, results, load_errors)
    title = (f"node 1 test accuracy on {spec.name}"
             + (f" ({spec.train_size} training images)" if getattr(spec, "train_size", None) else "")
             + f", {recipe.epochs} epochs, seeds {seeds[0]}..{seeds[-1]}")
    out.print(render_table(rows, title))
    write_json(out_dir / "compare.json", rows, setup, seeds, results)
    plot(out_dir / "compare.png", rows, title)
    out.print(f"wrote {out_dir / 'compare.json'} and {out_dir / 'compare.png'}")
    failed = bool(load_errors) or any(r.error for r in results)
    return EXIT_PARTIAL if failed else 0


def _run_with_progress(jobs: list[Job], setup: CompareSetup, out_dir: Path,
                       args: argparse.Namespace) -> list[JobResult]:
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        TextColumn("{task.fields[last]}"), console=console)
    with progress:
        task = progress.add_task("compare", total=len(jobs), last="")

        def on_result(result: JobResult, reused: bool) -> None:
            if result.error:
                what = f"failed: {result.error}"
                progress.console.print(f"ktg compare: {result.name} seed {result.seed} failed: {result.error}",
                                       highlight=False, markup=False, soft_wrap=True)
            else:
                what = f"{100 * (result.target_acc or 0):.2f}%" + (" (reused)" if reused else "")
            progress.update(task, advance=1, last=f"{result.name} seed {result.seed}: {what}")

        return run_jobs(jobs, setup, out_dir, workers=args.workers, ray_address=args.ray_address,
                        resume=args.resume, on_result=on_result)
