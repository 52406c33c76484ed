"""The ``ktg`` command: train, search, export, show, serve.

Every user error is one line on stderr and exit status 2, never a traceback.
``search``, ``export`` and ``serve`` import the upper layers lazily, so the
engine stays usable with no Ray, database or web server installed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

from ktg.errors import KtgError

EXIT_USAGE = 2
# Environment defaults of `ktg search`'s trial resources, set once per cluster.
RESOURCE_ENV = ("KTG_WORKERS", "KTG_CPUS_PER_TRIAL", "KTG_GPUS_PER_TRIAL")


# -- shared argument groups ------------------------------------------------------

def _add_data_args(p: argparse.ArgumentParser, *, default_dataset: str | None = "digits") -> None:
    g = p.add_argument_group("data")
    g.add_argument("--dataset", default=default_dataset,
                   help="cifar10, cifar100, tinyimagenet, imagefolder, digits (default), synthetic")
    g.add_argument("--data-dir", help="folder holding the dataset (never downloaded)")
    g.add_argument("--classes", help="class subset for cross-task runs, e.g. 0-49 or 1,3,5")
    g.add_argument("--image-size", type=int, help="resize imagefolder images to this square size (default 32)")


def _add_recipe_args(p: argparse.ArgumentParser, *, epochs: int) -> None:
    g = p.add_argument_group("recipe (defaults: the KTG paper's)")
    g.add_argument("--epochs", type=int, default=epochs)
    g.add_argument("--batch-size", type=int, default=64)
    g.add_argument("--lr", type=float, default=0.1)
    g.add_argument("--momentum", type=float, default=0.9)
    g.add_argument("--weight-decay", type=float, default=5e-4)
    g.add_argument("--milestones", default="0.3,0.6,0.9", help="lr x gamma at these fractions of the epochs")
    g.add_argument("--gamma", type=float, default=0.1)
    g.add_argument("--warmup-steps", type=int, default=500,
                   help="linear lr warm-up over the first steps, never past the first milestone (0 = the paper's)")


def _add_device_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("device")
    g.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")
    g.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                   help="bf16 autocast (default: on with CUDA)")
    g.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="channels_last memory format (default: on with CUDA)")
    g.add_argument("--compile", action="store_true", help="torch.compile every node")
    g.add_argument("--cache-dir", help="pre-trained teacher cache (default $KTG_CACHE_DIR or ~/.cache/ktg/teachers)")


def _recipe(args: argparse.Namespace):  # -> Recipe
    from ktg.trainer import Recipe

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
        field, _, rest = str(exc).partition(": ")
        raise KtgError(f"--{field.replace('_', '-')}: {rest}") from None
    return recipe


def _accel(args: argparse.Namespace):  # -> Accel
    from ktg.device import Accel

    return Accel.resolve(args.device, bf16=args.bf16, channels_last=args.channels_last, compile=args.compile)


def _data_spec(args: argparse.Namespace, val_fraction: float):  # -> DataSpec
    from ktg.data import parse_classes
    from ktg.data.spec import DataSpec

    classes = tuple(parse_classes(args.classes)) if args.classes else None
    return DataSpec(args.dataset, args.data_dir, classes, val_fraction, 0, args.image_size)


# -- train ------------------------------------------------------------------------

def _resolve_checkpoints(graph, graph_path: Path):  # -> Graph
    """Relative checkpoint paths are tried from the working folder, then beside the graph file."""
    nodes = []
    for n in graph.nodes:
        if n.checkpoint and not Path(n.checkpoint).expanduser().is_absolute() and not Path(n.checkpoint).exists():
            beside = graph_path.parent / n.checkpoint
            if beside.exists():
                n = replace(n, checkpoint=str(beside))
        nodes.append(n)
    return replace(graph, nodes=tuple(nodes))


def cmd_train(args: argparse.Namespace) -> int:
    import torch

    from ktg.graph import Graph
    from ktg.report import epoch_bars, fmt_acc, out, table
    from ktg.teachers import TeacherCache
    from ktg.trainer import train_graph

    if args.seeds < 1:
        raise KtgError(f"--seeds: got {args.seeds}; allowed: an integer >= 1")
    if not 0 <= args.val_fraction < 1:
        raise KtgError(f"--val-fraction: got {args.val_fraction}; allowed: a number in [0, 1)")
    graph = _resolve_checkpoints(Graph.load(args.graph), Path(args.graph))
    recipe, accel = _recipe(args), _accel(args)
    spec = _data_spec(args, args.val_fraction)
    data = spec.load()
    teachers = TeacherCache(spec, args.cache_dir)
    seeds = [args.seed + k for k in range(args.seeds)]
    out_dir = Path(args.out) if args.out else None
    per_node: dict[int, dict[str, list]] = {}
    batches = max(1, len(data.train_y) // recipe.batch_size)
    for seed in seeds:
        label = f"seed {seed}" if len(seeds) > 1 else ""
        with epoch_bars(label, recipe.epochs, batches) as bars:
            result = train_graph(graph, data, recipe=recipe, seed=seed, accel=accel, teachers=teachers,
                                 on_batch=bars.on_batch, on_epoch=bars.on_epoch)
        seed_dir = out_dir / f"seed{seed}" if out_dir and len(seeds) > 1 else out_dir
        for nid, node in result.nodes.items():
            rec = per_node.setdefault(nid, {"test": [], "val": [], "checkpoints": []})
            rec["test"].append(node.test_acc)
            rec["val"].append(node.val_acc[-1] if node.val_acc else None)
        if seed_dir is not None:
            seed_dir.mkdir(parents=True, exist_ok=True)
            for nid, state in result.state_dicts().items():
                path = seed_dir / f"node{nid}.pt"
                torch.save(state, path)
                per_node[nid]["checkpoints"].append(str(path))
    rows, nodes_json = [], []
    for node in sorted(graph.nodes, key=lambda n: n.id):
        rec = per_node[node.id]
        frozen = graph.is_frozen(node.id)
        rows.append([node.id, node.model + (" (target)" if node.id == 1 else ""), "yes" if frozen else "no",
                     fmt_acc(rec["test"]), fmt_acc(rec["val"])])
        nodes_json.append({"id": node.id, "model": node.model, "frozen": frozen,
                           "test_acc": _mean_or_none(rec["test"]), "test_acc_per_seed": rec["test"],
                           "val_acc": _mean_or_none(rec["val"]), "val_acc_per_seed": rec["val"],
                           "checkpoints": rec["checkpoints"]})
    title = f"{Path(args.graph).name} on {data.name}, {recipe.epochs} epochs, {len(seeds)} seed(s)"
    out.print(table(title, ["node", "model", "frozen", "test acc %", "val acc %"], rows))
    if out_dir is not None:
        results = {"graph": graph.to_dict(), "dataset": data.name, "classes": data.classes,
                   "epochs": recipe.epochs, "seeds": seeds, "val_fraction": args.val_fraction,
                   "nodes": nodes_json}
        (out_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
        out.print(f"wrote {out_dir / 'results.json'}")
    return 0


def _mean_or_none(values: Sequence[float | None]) -> float | None:
    clean = [v for v in values if v is not None]
    return sum(clean) / len(clean) if clean else None


# -- show ---------------------------------------------------------------------------

def cmd_show(args: argparse.Namespace) -> int:
    from ktg.graph import Graph
    from ktg.report import out, table
    from ktg.show import write_svg

    graph = Graph.load(args.graph)
    target = Path(args.output) if args.output else Path(args.graph).with_suffix(".svg")
    write_svg(graph, target)
    rows = [[e.source if e.source else "label", e.target, e.loss, e.gate, e.weight, e.temperature,
             "all" if e.epochs is None else f"[{e.epochs[0]}, {'end' if e.epochs[1] is None else e.epochs[1]})"]
            for e in graph.edges if e.gate != "cutoff"]
    frozen = ", ".join(str(i) for i in graph.frozen_ids) or "none"
    out.print(table(f"{args.graph}: {len(graph.nodes)} nodes, frozen: {frozen}",
                    ["source", "target", "loss", "gate", "weight", "T", "epochs"], rows))
    out.print(f"wrote {target}")
    return 0


# -- search / export / serve (upper layers, imported lazily) -------------------------

def cmd_search(args: argparse.Namespace) -> int:
    from search.cli import run_search_command

    return run_search_command(args)


def cmd_export(args: argparse.Namespace) -> int:
    from search.cli import run_export_command

    return run_export_command(args)


def cmd_serve(args: argparse.Namespace) -> int:
    from api.server import serve

    serve(host=args.host, port=args.port, storage=args.storage)
    return 0


def _env_number(name: str, kind: type) -> float | int | None:
    raw = os.environ.get(name)
    if not raw:
        return None
    try:
        return kind(raw)
    except ValueError:
        print(f"ktg: error: ${name}: got {raw!r}; allowed: a number", file=sys.stderr)
        sys.exit(EXIT_USAGE)


# -- parser -----------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ktg", description="Knowledge transfer graphs: train, search, share.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train a graph file (every node at once)")
    p.add_argument("--graph", required=True, help="a ktg-graph/1 JSON file")
    _add_data_args(p)
    _add_recipe_args(p, epochs=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--seeds", type=int, default=1, help="repeat with seeds S, S+1, ... and report mean ± std")
    p.add_argument("--val-fraction", type=float, default=0.0, help="hold out this share of the training set")
    p.add_argument("--out", help="write results.json and node<id>.pt here")
    _add_device_args(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("search", help="search graphs with ASHA on Ray Tune; study in Optuna storage")
    p.add_argument("--spec-json", help="the whole search spec as JSON (the API's request body); flags below override")
    p.add_argument("--nodes", type=int)
    p.add_argument("--trials", type=int)
    p.add_argument("--study", help="study name (required unless in --spec-json)")
    _add_data_args(p, default_dataset=None)
    p.add_argument("--epochs", type=int)
    p.add_argument("--target-model", help="model of node 1 (default resnet32)")
    p.add_argument("--models", help="comma-separated choices for the other nodes (default resnet32,resnet110,wrn28-2)")
    p.add_argument("--gates", help="comma-separated gate choices (default all four)")
    p.add_argument("--losses", help="comma-separated losses for non-label edges, e.g. kl,cm,lkd (default kl)")
    p.add_argument("--reduction-factor", type=int, help="ASHA reduction factor (default 2)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--warmup-steps", type=int, help="linear lr warm-up steps (default 500; 0 = the paper's recipe)")
    p.add_argument("--seed", type=int)
    p.add_argument("--storage", help="postgresql://user@host/db or sqlite:///file.db (default $KTG_STORAGE, "
                                     "else sqlite:///ktg-studies.db)")
    # Defaults may come from the environment, so a cluster (e.g. its Ray job image) sets them once.
    p.add_argument("--workers", type=int, default=_env_number("KTG_WORKERS", int),
                   help="trials running at once (default $KTG_WORKERS, else cluster CPUs / cpus-per-trial)")
    p.add_argument("--cpus-per-trial", type=float, default=_env_number("KTG_CPUS_PER_TRIAL", float) or 1.0,
                   help="default $KTG_CPUS_PER_TRIAL, else 1")
    p.add_argument("--gpus-per-trial", type=float, default=_env_number("KTG_GPUS_PER_TRIAL", float) or 0.0,
                   help="default $KTG_GPUS_PER_TRIAL, else 0; fractions pack several graphs on one GPU")
    p.add_argument("--ray-address", help="existing Ray cluster (default $RAY_ADDRESS, else a local Ray)")
    p.add_argument("--out", default="runs/search", help="best.json, teachers and Ray's files go here")
    p.add_argument("--resume", action="store_true", help="continue a study after a crash or Ctrl-C")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("export", help="write the best graphs of a study as ktg-graph/1 files")
    p.add_argument("--study", required=True)
    p.add_argument("--storage")
    p.add_argument("--top", type=int, default=1)
    p.add_argument("--out", default="best")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("show", help="draw a graph file as SVG and list its edges")
    p.add_argument("graph")
    p.add_argument("-o", "--output", help="SVG path (default: the graph's path with .svg)")
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("serve", help="run the REST API")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--storage")
    p.set_defaults(func=cmd_serve)
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
        return 130
    except BrokenPipeError:
        os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
