"""The search floor's ``ktg`` subcommands: ``search``, ``export`` and ``compare``.

Each ``add_*_command`` is a ``ktg.commands`` entry point (pyproject.toml): the
engine's CLI finds them there and never imports this floor. Only the flags live
here, so ``ktg --help`` stays quick; a handler imports Ray and Optuna when its
command runs.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, get_args, get_origin

from ktg.cli import add_data_args, add_recipe_args, env_number
from ktg.errors import KtgError

if TYPE_CHECKING:
    from ktg.cli import Subcommands

# Environment defaults of `ktg search`'s trial resources, set once per cluster
# (e.g. in its Ray job image).
WORKERS_ENV = "KTG_WORKERS"
CPUS_PER_TRIAL_ENV = "KTG_CPUS_PER_TRIAL"
GPUS_PER_TRIAL_ENV = "KTG_GPUS_PER_TRIAL"
RESOURCE_ENV = (WORKERS_ENV, CPUS_PER_TRIAL_ENV, GPUS_PER_TRIAL_ENV)


# Spec fields whose flag is not the field's own name.
FLAG_OF_FIELD = {"name": "--study", "teachers": "--teacher"}
TEACHER_FORM = "NAME=MODEL:PATH"


def parse_teacher_flag(text: str) -> dict[str, str]:
    """``--teacher NAME=MODEL:PATH`` as a ``TeacherSpec``'s fields (a model name holds no ':')."""
    name, _, rest = text.partition("=")
    model, _, path = rest.partition(":")
    if not (name.strip() and model.strip() and path.strip()):
        raise KtgError(f"--teacher: got {text!r}; allowed: {TEACHER_FORM}, e.g. r20-full=resnet20:teachers/r20.pt")
    return {"name": name.strip(), "model": model.strip(), "checkpoint": path.strip()}


# Spec fields holding a list of objects: one repeatable flag per object, parsed by the function.
OBJECT_FLAGS: dict[str, tuple[Callable[[str], dict[str, Any]], str]] = {
    "teachers": (parse_teacher_flag, TEACHER_FORM),
}


def flag_of(field: str) -> str:
    """The ``ktg search`` flag of a ``SearchSpec`` field."""
    return FLAG_OF_FIELD.get(field, "--" + field.replace("_", "-"))


def add_spec_flags(p: argparse.ArgumentParser) -> None:
    """One flag per ``SearchSpec`` field: its type, its description, its default said once.

    Every flag defaults to None (not given), so that it overrides ``--spec-json`` and a
    resumed study's stored spec only when given; list fields are comma-separated.
    """
    from pydantic_core import PydanticUndefined

    from search.spec import SearchSpec

    g = p.add_argument_group("search spec (the API's request body; flags override --spec-json)")
    for name, field in SearchSpec.model_fields.items():
        kind = _flag_type(field.annotation)
        if field.is_required():
            default = "required unless in --spec-json"
        elif field.default_factory is not None:
            listed = ",".join(map(str, field.default_factory()))  # type: ignore[call-arg]
            default = f"default {listed}" if listed else ""
        else:
            default = "" if field.default in (None, PydanticUndefined) else f"default {field.default}"
        text = (field.description or name.replace("_", " ")) + (f" ({default})" if default else "")
        if name in OBJECT_FLAGS:
            g.add_argument(flag_of(name), dest=name, action="append", metavar=OBJECT_FLAGS[name][1],
                           help=(field.description or name) + " (repeatable)")
            continue
        g.add_argument(flag_of(name), dest=name, type=kind, metavar=_METAVAR.get(kind, "X"),
                       help=text.replace("%", "%%"))


_METAVAR: dict[type, str] = {int: "N", float: "X", str: "TEXT"}


def _flag_type(annotation: Any) -> type:
    """int, float or str: what argparse parses a field's flag as (lists stay text, split later)."""
    if get_origin(annotation) is list:
        return str
    for kind in (int, float):
        if annotation is kind or kind in get_args(annotation):
            return kind
    return str


def add_search_command(sub: Subcommands) -> None:
    p = sub.add_parser("search", help="search graphs with ASHA on Ray Tune; study in Optuna storage")
    p.add_argument("--spec-json", help="the whole search spec as JSON (the API's request body); flags below override")
    add_spec_flags(p)
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
    from search.compare.command import run_compare_command

    return run_compare_command(args)
