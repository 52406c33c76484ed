"""The search floor's ``ktg`` subcommands: ``search``, ``export`` and ``compare``.

Each ``add_*_command`` is a ``ktg.commands`` entry point (pyproject.toml): the
engine's CLI finds them there and never imports this floor. Only the flags live
here, so ``ktg --help`` stays quick; a handler imports Ray and Optuna when its
command runs.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from ktg.cli import add_data_args, add_recipe_args, env_number
from ktg.recipe import Recipe

if TYPE_CHECKING:
    from ktg.cli import Subcommands

# Environment defaults of `ktg search`'s trial resources, set once per cluster
# (e.g. in its Ray job image).
WORKERS_ENV = "KTG_WORKERS"
CPUS_PER_TRIAL_ENV = "KTG_CPUS_PER_TRIAL"
GPUS_PER_TRIAL_ENV = "KTG_GPUS_PER_TRIAL"
RESOURCE_ENV = (WORKERS_ENV, CPUS_PER_TRIAL_ENV, GPUS_PER_TRIAL_ENV)


def add_search_command(sub: Subcommands) -> None:
    p = sub.add_parser("search", help="search graphs with ASHA on Ray Tune; study in Optuna storage")
    p.add_argument("--spec-json", help="the whole search spec as JSON (the API's request body); flags below override")
    p.add_argument("--nodes", type=int)
    p.add_argument("--trials", type=int)
    p.add_argument("--study", help="study name (required unless in --spec-json)")
    add_data_args(p, default_dataset=None)
    p.add_argument("--epochs", type=int)
    p.add_argument("--target-model", help="model of node 1 (default resnet32)")
    p.add_argument("--models", help="comma-separated choices for the other nodes (default resnet32,resnet110,wrn28-2)")
    p.add_argument("--gates", help="comma-separated gate choices (default all four)")
    p.add_argument("--losses", help="comma-separated losses for non-label edges, e.g. kl,cm,lkd (default kl)")
    p.add_argument("--reduction-factor", type=int, help="ASHA reduction factor (default 2)")
    p.add_argument("--grace-epochs", type=int,
                   help="epochs before ASHA's first rung (default: once the lr warm-up is over)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--warmup-steps", type=int,
                   help=f"linear lr warm-up steps (default {Recipe().warmup_steps}; 0 = the paper's recipe)")
    p.add_argument("--seed", type=int)
    p.add_argument("--max-retries", type=int,
                   help="restarts of a trial whose worker died, from its last checkpoint (default 2)")
    p.add_argument("--keep-best", type=int,
                   help="COMPLETE trials whose checkpoint (trained weights) is kept: the top K (default 5)")
    p.add_argument("--checkpoint-gb", type=float,
                   help="disk for PRUNED trials' checkpoints, which a re-drawn graph continues (default 2)")
    p.add_argument("--storage", help="postgresql://user@host/db or sqlite:///file.db (default $KTG_STORAGE, "
                                     "else sqlite:///ktg-studies.db)")
    p.add_argument("--workers", type=int, default=env_number(WORKERS_ENV, int),
                   help="trials running at once (default $KTG_WORKERS, else cluster CPUs / cpus-per-trial)")
    p.add_argument("--cpus-per-trial", type=float, default=env_number(CPUS_PER_TRIAL_ENV, float) or 1.0,
                   help="default $KTG_CPUS_PER_TRIAL, else 1")
    p.add_argument("--gpus-per-trial", type=float, default=env_number(GPUS_PER_TRIAL_ENV, float) or 0.0,
                   help="default $KTG_GPUS_PER_TRIAL, else 0; fractions pack several graphs on one GPU")
    p.add_argument("--ray-address", help="existing Ray cluster (default $RAY_ADDRESS, else a local Ray)")
    p.add_argument("--out", default="runs/search", help="best.json, teachers and Ray's files go here")
    p.add_argument("--resume", action="store_true", help="continue a study after a crash or Ctrl-C")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=_run_search)


def add_export_command(sub: Subcommands) -> None:
    p = sub.add_parser("export", help="write the best graphs of a study as ktg-graph/1 files")
    p.add_argument("--study", required=True)
    p.add_argument("--storage")
    p.add_argument("--top", type=int, default=1)
    p.add_argument("--out", default="best")
    p.set_defaults(func=_run_export)


def add_compare_command(sub: Subcommands) -> None:
    p = sub.add_parser("compare", help="train graphs with the same seeds; paired differences against the first")
    p.add_argument("graphs", nargs="+", metavar="GRAPH", help="ktg-graph/1 files; the first is the baseline")
    p.add_argument("--names", help="comma-separated row names (default: the files' stems)")
    add_data_args(p)
    add_recipe_args(p, epochs=20)
    p.add_argument("--seed", type=int, default=0, help="first seed (default 0)")
    p.add_argument("--seeds", type=int, default=5, help="seeds S..S+K-1, shared by every graph (default 5)")
    p.add_argument("--workers", type=int, default=1, help="jobs at once (> 1: on a local Ray)")
    p.add_argument("--threads-per-job", type=int, default=1, help="torch threads (Ray CPUs) per job")
    p.add_argument("--ray-address", help="run the jobs on this Ray cluster")
    p.add_argument("--out", default="runs/compare", help="compare.json, compare.png and per-job results")
    p.add_argument("--resume", action="store_true", help="re-use finished (graph, seed) jobs in --out")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, auto")
    p.add_argument("--cache-dir", help="pre-trained teacher cache (default $KTG_CACHE_DIR or ~/.cache/ktg/teachers)")
    p.set_defaults(func=_run_compare)


def _run_search(args: argparse.Namespace) -> int:
    from search.cli import run_search_command

    return run_search_command(args)


def _run_export(args: argparse.Namespace) -> int:
    from search.cli import run_export_command

    return run_export_command(args)


def _run_compare(args: argparse.Namespace) -> int:
    from search.compare_cli import run_compare_command

    return run_compare_command(args)
