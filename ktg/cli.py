"""The ``ktg`` command: each floor registers its own subcommands.

The engine's ``train`` and ``show`` are defined here. The floors above add
theirs through the ``ktg.commands`` entry points (pyproject.toml), so this
module imports nothing above the engine. The argument groups that several
commands share, and the error handling, are here for every floor to use.

Every user error is one line on stderr and exit status 2, never a traceback.
Heavy imports happen inside the commands, so ``ktg --help`` stays quick.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING

from ktg.errors import KtgError
from ktg.recipe import Recipe

if TYPE_CHECKING:
    from ktg.data import ImageData
    from ktg.data.spec import DataSpec
    from ktg.device import Accel
    from ktg.graph import Graph
    from ktg.run import RunSetup
    from ktg.trainer import RunResult

    Subcommands = argparse._SubParsersAction[argparse.ArgumentParser]

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
COMMANDS_GROUP = "ktg.commands"  # entry points: command name -> function(subcommands) adding it

Register = Callable[["Subcommands"], None]

_RECIPE_DEFAULTS = Recipe()  # the recipe flags' defaults are the Recipe's


# -- shared argument groups ------------------------------------------------------

def add_data_args(p: argparse.ArgumentParser, *, default_dataset: str | None = "digits") -> None:
    g = p.add_argument_group("data")
    g.add_argument("--dataset", default=default_dataset,
                   help="fashionmnist, mnist, kmnist, cifar10, cifar100, tinyimagenet, imagefolder, "
                        "digits (default), synthetic")
    g.add_argument("--data-dir", help="folder holding the dataset (never downloaded)")
    g.add_argument("--classes", help="class subset for cross-task runs, e.g. 0-49 or 1,3,5")
    g.add_argument("--train-size", type=int, metavar="N",
                   help="a class-balanced, seeded subset of N training images (validation is carved from it)")
    g.add_argument("--image-size", type=int, help="resize imagefolder images to this square size (default 32)")


def add_recipe_args(p: argparse.ArgumentParser, *, epochs: int = _RECIPE_DEFAULTS.epochs) -> None:
    g = p.add_argument_group("recipe (defaults: the KTG paper's)")
    g.add_argument("--epochs", type=int, default=epochs)
    g.add_argument("--batch-size", type=int, default=_RECIPE_DEFAULTS.batch_size)
    g.add_argument("--lr", type=float, default=_RECIPE_DEFAULTS.lr)
    g.add_argument("--momentum", type=float, default=_RECIPE_DEFAULTS.momentum)
    g.add_argument("--weight-decay", type=float, default=_RECIPE_DEFAULTS.weight_decay)
    g.add_argument("--milestones", default=",".join(str(m) for m in _RECIPE_DEFAULTS.milestones),
                   help="lr x gamma at these fractions of the epochs")
    g.add_argument("--gamma", type=float, default=_RECIPE_DEFAULTS.gamma)
    g.add_argument("--warmup-steps", type=int, default=_RECIPE_DEFAULTS.warmup_steps,
                   help="linear lr warm-up over the first steps, never past the first milestone (0 = the paper's)")


def add_device_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("device")
    g.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")
    g.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                   help="bf16 autocast (default: on with CUDA)")
    g.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="channels_last memory format (default: on with CUDA)")
    g.add_argument("--compile", action="store_true", help="torch.compile every node")
    g.add_argument("--cache-dir", help="pre-trained teacher cache (default $KTG_CACHE_DIR or ~/.cache/ktg/teachers)")


def recipe_from_args(args: argparse.Namespace) -> Recipe:
    try:
        milestones = tuple(float(m) for m in args.milestones.split(",") if m.strip())
    except ValueError:
        raise KtgError(f"--milestones: got {args.milestones!r}; allowed: fractions like 0.3,0.6,0.9") from None
    recipe = Recipe(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, momentum=args.momentum,
                    weight_decay=args.weight_decay, milestones=milestones, gamma=args.gamma,
                    warmup_steps=args.warmup_steps)
    try:
        recipe.check()
    except KtgError as exc:  # every recipe field has a flag of the same name: say the flag
        name, _, rest = str(exc).partition(": ")
        raise KtgError(f"--{name.replace('_', '-')}: {rest}") from None
    return recipe


def accel_from_args(args: argparse.Namespace) -> Accel:
    from ktg.device import Accel

    return Accel.resolve(args.device, bf16=args.bf16, channels_last=args.channels_last, compile=args.compile)


def data_spec_from_args(args: argparse.Namespace, val_fraction: float) -> DataSpec:
    from ktg.data import check_dataset_name, parse_classes
    from ktg.data.spec import DataSpec

    check_dataset_name(args.dataset)
    classes = tuple(parse_classes(args.classes, args.dataset)) if args.classes else None
    return DataSpec(args.dataset, args.data_dir, classes, val_fraction, 0, args.image_size,
                    train_size=args.train_size)


def env_number(name: str, kind: type) -> float | int | None:
    """A number from environment variable ``name`` (None when unset), for a flag's default."""
    raw = os.environ.get(name)
    if not raw:
        return None
    try:
        return kind(raw)
    except ValueError:
        print(f"ktg: error: ${name}: got {raw!r}; allowed: a number", file=sys.stderr)
        sys.exit(EXIT_USAGE)


# -- train ------------------------------------------------------------------------

def add_train_command(sub: Subcommands) -> None:
    p = sub.add_parser("train", help="train a graph file (every node at once)")
    p.add_argument("--graph", required=True, help="a ktg-graph/1 JSON file")
    add_data_args(p)
    add_recipe_args(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--seeds", type=int, default=1, help="repeat with seeds S, S+1, ... and report mean ± std")
    p.add_argument("--val-fraction", type=float, default=0.0, help="hold out this share of the training set")
    p.add_argument("--out", help="write results.json and node<id>.pt here")
    add_device_args(p)
    p.set_defaults(func=cmd_train)


@dataclass
class _NodeRecord:
    """One node's figures and checkpoint files, one entry per seed."""

    test: list[float | None] = field(default_factory=list)
    val: list[float | None] = field(default_factory=list)
    checkpoints: list[str] = field(default_factory=list)


def cmd_train(args: argparse.Namespace) -> int:
    if args.seeds < 1:
        raise KtgError(f"--seeds: got {args.seeds}; allowed: an integer >= 1")
    if not 0 <= args.val_fraction < 1:
        raise KtgError(f"--val-fraction: got {args.val_fraction}; allowed: a number in [0, 1)")
    # The flags that need no torch are checked first: a typo is one line at once, not after
    # importing torch.
    recipe, data_spec = recipe_from_args(args), data_spec_from_args(args, args.val_fraction)
    from ktg.run import RunSetup, load_graph

    graph = load_graph(Path(args.graph))
    accel = accel_from_args(args)
    setup = RunSetup.prepare(data_spec, accel=accel, cache_dir=args.cache_dir)
    seeds = [args.seed + k for k in range(args.seeds)]
    out_dir = Path(args.out) if args.out else None
    records = _train_seeds(setup, graph, recipe, seeds, out_dir)
    _print_table(Path(args.graph).name, graph, setup.data, recipe, seeds, records)
    if out_dir is not None:
        _write_results(out_dir, args, graph, setup.data, recipe, seeds, records)
    return 0


def _train_seeds(setup: RunSetup, graph: Graph, recipe: Recipe, seeds: list[int],
                 out_dir: Path | None) -> dict[int, _NodeRecord]:
    """Train the graph once per seed, with progress bars; save each seed's checkpoints under ``out_dir``."""
    from ktg.report import epoch_bars
    from ktg.run import RunHooks

    records: dict[int, _NodeRecord] = {}
    batches = max(1, len(setup.data.train_y) // recipe.batch_size)
    for seed in seeds:
        label = f"seed {seed}" if len(seeds) > 1 else ""
        with epoch_bars(label, recipe.epochs, batches) as bars:
            hooks = RunHooks(on_batch=bars.on_batch, on_epoch=bars.on_epoch)
            result = setup.train(graph, recipe, seed=seed, hooks=hooks)
        for nid, node in result.nodes.items():
            record = records.setdefault(nid, _NodeRecord())
            record.test.append(node.test_acc)
            record.val.append(node.val_acc[-1] if node.val_acc else None)
        seed_dir = out_dir / f"seed{seed}" if out_dir and len(seeds) > 1 else out_dir
        if seed_dir is not None:
            _save_checkpoints(result, seed_dir, records)
    return records


def _save_checkpoints(result: RunResult, folder: Path, records: dict[int, _NodeRecord]) -> None:
    from ktg.checkpoints import write_state

    folder.mkdir(parents=True, exist_ok=True)
    for nid, state in result.state_dicts().items():
        path = folder / f"node{nid}.pt"
        write_state(state, path)
        records[nid].checkpoints.append(str(path))


def _print_table(graph_name: str, graph: Graph, data: ImageData, recipe: Recipe, seeds: list[int],
                 records: dict[int, _NodeRecord]) -> None:
    from ktg.graph import TARGET_NODE
    from ktg.report import fmt_acc, out, table

    rows = []
    for node in sorted(graph.nodes, key=lambda n: n.id):
        record = records[node.id]
        rows.append([node.id, node.model + (" (target)" if node.id == TARGET_NODE else ""),
                     "yes" if graph.is_frozen(node.id) else "no", fmt_acc(record.test), fmt_acc(record.val)])
    title = f"{graph_name} on {data.name}, {recipe.epochs} epochs, {len(seeds)} seed(s)"
    out.print(table(title, ["node", "model", "frozen", "test acc %", "val acc %"], rows))


def _write_results(out_dir: Path, args: argparse.Namespace, graph: Graph, data: ImageData, recipe: Recipe,
                   seeds: list[int], records: dict[int, _NodeRecord]) -> None:
    """``results.json``: the run's graph, data and recipe, and each node's figures per seed and mean."""
    from ktg.report import out

    nodes = []
    for node in sorted(graph.nodes, key=lambda n: n.id):
        record = records[node.id]
        nodes.append({"id": node.id, "model": node.model, "frozen": graph.is_frozen(node.id),
                      "test_acc": _mean_or_none(record.test), "test_acc_per_seed": record.test,
                      "val_acc": _mean_or_none(record.val), "val_acc_per_seed": record.val,
                      "checkpoints": record.checkpoints})
    results = {"graph": graph.to_dict(), "dataset": data.name, "classes": data.classes,
               "epochs": recipe.epochs, "seeds": seeds, "val_fraction": args.val_fraction, "nodes": nodes}
    (out_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    out.print(f"wrote {out_dir / 'results.json'}")


def _mean_or_none(values: Sequence[float | None]) -> float | None:
    clean = [v for v in values if v is not None]
    return sum(clean) / len(clean) if clean else None


# -- show ---------------------------------------------------------------------------

def add_show_command(sub: Subcommands) -> None:
    p = sub.add_parser("show", help="draw a graph file as SVG and list its edges")
    p.add_argument("graph")
    p.add_argument("-o", "--output", help="SVG path (default: the graph's path with .svg)")
    p.set_defaults(func=cmd_show)


def cmd_show(args: argparse.Namespace) -> int:
    from ktg.graph import LABEL_NODE, Graph
    from ktg.report import out, table
    from ktg.show import write_svg

    graph = Graph.load(args.graph)
    target = Path(args.output) if args.output else Path(args.graph).with_suffix(".svg")
    write_svg(graph, target)
    rows = [["label" if e.source == LABEL_NODE else e.source, e.target, e.loss, e.gate, e.weight, e.temperature,
             "all" if e.epochs is None else f"[{e.epochs[0]}, {'end' if e.epochs[1] is None else e.epochs[1]})"]
            for e in graph.edges if e.gate != "cutoff"]
    frozen = ", ".join(str(i) for i in graph.frozen_ids) or "none"
    out.print(table(f"{args.graph}: {len(graph.nodes)} nodes, frozen: {frozen}",
                    ["source", "target", "loss", "gate", "weight", "T", "epochs"], rows))
    out.print(f"wrote {target}")
    return 0


# -- the parser and the run --------------------------------------------------------------

ENGINE_COMMANDS: dict[str, Register] = {"train": add_train_command, "show": add_show_command}

# The order of `ktg --help`: the path from training a graph to serving studies. Only
# the names are here; each floor registers its own command (unlisted ones go last).
COMMAND_ORDER = ("train", "search", "export", "show", "compare", "serve")


def _registrations() -> list[Register]:
    """The engine's commands and the floors' ``ktg.commands`` entry points (each named
    after the command it adds), in ``COMMAND_ORDER``."""
    floors = {ep.name: ep for ep in entry_points(group=COMMANDS_GROUP) if ep.name not in ENGINE_COMMANDS}
    rank = {name: i for i, name in enumerate(COMMAND_ORDER)}
    names = sorted([*ENGINE_COMMANDS, *floors], key=lambda name: (rank.get(name, len(rank)), name))
    return [ENGINE_COMMANDS[name] if name in ENGINE_COMMANDS else floors[name].load() for name in names]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ktg", description="Knowledge transfer graphs: train, search, share.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for register in _registrations():
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except KtgError as exc:
        print(f"ktg {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"ktg {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        os._exit(0)


if __name__ == "__main__":
    sys.exit(main())

