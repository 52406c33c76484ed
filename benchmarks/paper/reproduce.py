"""The KTG paper's Tables 2 and 3 at a scale two CPU cores finish, written to docs/results.md.

    python benchmarks/paper/reproduce.py                 # the full run (about 1.5 h on 2 cores)
    python benchmarks/paper/reproduce.py --smoke --out /tmp/smoke --doc /tmp/smoke/results.md

Every step is a ``ktg`` command (printed before it runs, and recorded in the
page), and every step re-uses what an earlier run of this script finished:
searches continue with ``--resume`` and ``ktg compare --resume`` trains no
(graph, seed) twice. Kill it and run it again.

Steps:
1. three searches: Fashion-MNIST subset with 2 and 3 nodes (Table 2), and
   scikit-learn's digits with 2 nodes (the source of Table 3's transfer);
2. one ``ktg compare`` of the hand-made and searched graphs on the subset, all
   trained on the whole subset (the searches chose on their validation split,
   never on test), paired by seed;
3. the top graphs of the 2-node search re-trained, for validation-vs-test rank
   correlation; and the rung-vs-final correlation over the complete trials;
4. docs/results.md with the tables, the plots and the conclusion the numbers give.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, fields, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Scale:
    """Everything the full run and the smoke run differ in."""

    train_size: int
    epochs: int
    seeds: int
    trials_2n: int
    trials_3n: int
    trials_source: int
    top_k: int
    top_k_seeds: int
    target: str
    peers: str  # the other nodes' model choices in the searches
    teacher: str  # KD's frozen, larger teacher
    workers: int = 2
    data_dir: str | None = None  # Fashion-MNIST's folder (default: where Debian installs it)
    confirm_top: int = 3  # the searches' confirmation stage: top graphs re-trained with more seeds
    confirm_seeds: int = 3


FULL = Scale(train_size=1000, epochs=15, seeds=5, trials_2n=24, trials_3n=32, trials_source=24, top_k=3,
             top_k_seeds=1, target="resnet20", peers="resnet8,resnet20,wrn16-1", teacher="wrn16-2")
SMOKE = Scale(train_size=100, epochs=2, seeds=2, trials_2n=3, trials_3n=3, trials_source=3, top_k=2,
              top_k_seeds=1, target="resnet8", peers="resnet8", teacher="resnet14", confirm_top=1, confirm_seeds=1)

DATASET = "fashionmnist"
SOURCE_DATASET = "digits"  # Table 3: search here, re-use on Fashion-MNIST
SEARCHED_ROWS = ("searched-2n", "searched-3n", "digits-2n", "digits-2n-through")


# -- running ktg -----------------------------------------------------------------

def ktg(args: list[str], log: list[str]) -> None:
    """Run one ``ktg`` command, echoing it; the page lists every command run."""
    exe = str(Path(sys.executable).with_name("ktg"))
    line = "ktg " + shlex.join(args)
    log.append(line)
    print(f"\n$ {line}", flush=True)
    rc = subprocess.run([exe, *args], cwd=ROOT).returncode
    if rc not in (0, 1):  # compare exits 1 when a job failed but the rest reported
        raise SystemExit(f"reproduce: `{line}` exited {rc}")


def study_exists(storage: str, name: str) -> bool:
    import optuna

    try:
        optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        return False
    return True


def search(name: str, nodes: int, trials: int, dataset: str, s: Scale, storage: str, out: Path,
           log: list[str]) -> Path:
    args = ["search", "--study", name, "--nodes", str(nodes), "--trials", str(trials), "--dataset", dataset,
            "--epochs", str(s.epochs), "--target-model", s.target, "--models", s.peers,
            "--workers", str(s.workers), "--storage", storage, "--out", str(out / name),
            "--confirm-top", str(s.confirm_top), "--confirm-seeds", str(s.confirm_seeds)]
    if dataset != SOURCE_DATASET:
        args += ["--train-size", str(s.train_size), *data_dir_flag(s)]
    if study_exists(storage, name):
        args.append("--resume")
    ktg(args, log)
    return out / name / "best.json"


def compare(graphs: dict[str, Path], s: Scale, seeds: int, out: Path, log: list[str]) -> dict[str, Any]:
    ktg(["compare", *map(str, graphs.values()), "--names", ",".join(graphs), "--dataset", DATASET,
         "--train-size", str(s.train_size), "--epochs", str(s.epochs), "--seeds", str(seeds),
         "--workers", str(s.workers), "--out", str(out), "--resume", *data_dir_flag(s)], log)
    return json.loads((out / "compare.json").read_text())


def data_dir_flag(s: Scale) -> list[str]:
    return ["--data-dir", s.data_dir] if s.data_dir else []


# -- the hand-made graphs, with the searches' target model on node 1 -------------

def hand_made(s: Scale, folder: Path) -> dict[str, Path]:
    ce = {"source": 0, "loss": "ce", "gate": "through"}
    graphs = {
        "independent": {"nodes": [{"id": 1, "model": s.target}], "edges": [{**ce, "target": 1}]},
        "kd": {"nodes": [{"id": 1, "model": s.target}, {"id": 2, "model": s.teacher}],
               "edges": [{**ce, "target": 1},
                         {"source": 2, "target": 1, "loss": "kl", "gate": "through", "temperature": 2.0}]},
        "dml-2": {"nodes": [{"id": 1, "model": s.target}, {"id": 2, "model": s.target}],
                  "edges": [{**ce, "target": 1}, {**ce, "target": 2},
                            {"source": 2, "target": 1, "loss": "kl", "gate": "through"},
                            {"source": 1, "target": 2, "loss": "kl", "gate": "through"}]},
    }
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, body in graphs.items():
        paths[name] = folder / f"{name}.json"
        paths[name].write_text(json.dumps({"format": "ktg-graph/1", **body, "meta": {"name": name}}, indent=1))
    return paths


def all_through(source: Path, target: Path) -> Path:
    """The same graph with every edge's gate set to ``through`` (Table 3's ablation)."""
    graph = json.loads(source.read_text())
    for edge in graph["edges"]:
        edge["gate"] = "through"
    graph["meta"] = {**graph.get("meta", {}), "derived": f"{source.name} with every gate through"}
    target.write_text(json.dumps(graph, indent=1))
    return target


# -- reading the studies -------------------------------------------------------------

def complete_trials(storage: str, name: str) -> list[Any]:
    import optuna

    study = optuna.load_study(study_name=name, storage=storage)
    return sorted((t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"),
                  key=lambda t: -(t.value or 0))


def rung_correlation(storage: str, name: str, epochs: int) -> list[tuple[int, float | None, int]]:
    """(epoch, Spearman rho of val acc at that epoch vs final val acc, trials) over complete trials."""
    from scipy.stats import spearmanr

    trials = complete_trials(storage, name)
    rows = []
    for epoch in range(1, epochs):
        pairs = [(t.intermediate_values[epoch], t.value) for t in trials if epoch in t.intermediate_values]
        rho = spearmanr(*zip(*pairs, strict=True)).statistic if len(pairs) >= 3 else None
        rows.append((epoch, None if rho is None or math.isnan(rho) else float(rho), len(pairs)))
    return rows


def repeats(storage: str, name: str) -> tuple[int, int, int]:
    """(trained trials, of which repeated an earlier trial's node-1 upstream graph, repeated epochs).

    Equal upstream graphs train node 1 to the same numbers (the determinism contract), so
    each repeat's epochs re-measured what the study already held.
    """
    import optuna

    from ktg.graph import TARGET_NODE, Graph

    study = optuna.load_study(study_name=name, storage=storage)
    seen: set[str] = set()
    trained = repeated = epochs = 0
    for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        if "graph" not in t.user_attrs or "skipped" in t.user_attrs or not t.intermediate_values:
            continue
        key = Graph.from_dict(t.user_attrs["graph"]).training_key(TARGET_NODE)
        trained += 1
        if key in seen:
            repeated += 1
            epochs += len(t.intermediate_values)
        seen.add(key)
    return trained, repeated, epochs


def best_curve(storage: str, name: str) -> list[tuple[int, float]]:
    """(trials finished, best full-budget val acc so far), in the order trials finished."""
    import optuna

    study = optuna.load_study(study_name=name, storage=storage)
    done = sorted((t for t in study.get_trials(deepcopy=False) if t.state.is_finished() and t.datetime_complete),
                  key=lambda t: t.datetime_complete)
    best, curve = -1.0, []
    for i, t in enumerate(done, 1):
        if t.state.name == "COMPLETE" and t.value is not None:
            best = max(best, t.value)
        curve.append((i, best if best >= 0 else math.nan))
    return curve


def export_top(storage: str, name: str, k: int, folder: Path, log: list[str]) -> dict[str, Path]:
    ktg(["export", "--study", name, "--storage", storage, "--top", str(k), "--out", str(folder)], log)
    return {f"top{i}": folder / f"{i}.json" for i in range(1, k + 1) if (folder / f"{i}.json").exists()}


# -- the page --------------------------------------------------------------------------

def pp(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:+.2f}"


def acc(row: dict[str, Any]) -> str:
    if row["test_acc_mean"] is None:
        return "failed"
    return f"{100 * row['test_acc_mean']:.2f} ± {100 * (row['test_acc_std'] or 0):.2f}"


def paired(report: dict[str, Any], base: str, other: str) -> Any:
    from search.compare.stats import paired_difference

    rows = {g["name"]: g for g in report["graphs"]}
    a, b = rows[base]["test_acc_per_seed"], rows[other]["test_acc_per_seed"]
    seeds = [s for s in a if a[s] is not None and b.get(s) is not None]
    return paired_difference([a[s] for s in seeds], [b[s] for s in seeds]) if seeds else None


def table(report: dict[str, Any], names: list[str], base: str) -> list[str]:
    rows = {g["name"]: g for g in report["graphs"]}
    lines = [f"| graph | node 1 test acc % (mean ± std) | Δ pp vs {base} | 95 % CI | beyond noise |",
             "|---|---|---|---|---|"]
    for name in names:
        d = None if name == base else paired(report, base, name)
        verdict = "" if d is None else (("better" if d.low > 0 else "worse") if d.excludes_zero else "no")
        ci = "" if d is None or math.isinf(d.high) else f"[{pp(d.low)}, {pp(d.high)}]"
        lines.append(f"| {name} | {acc(rows[name])} | {'' if d is None else pp(d.mean)} | {ci} | {verdict} |")
    return lines


def graph_line(path: Path) -> str:
    g = json.loads(path.read_text())
    models = ", ".join(f"{n['id']}: {n['model']}" for n in g["nodes"])
    edges = ", ".join(f"{e['source']}→{e['target']} {e['loss']}/{e['gate']}" for e in g["edges"])
    return f"nodes {models}; edges {edges}"


def plot_curves(curves: dict[str, list[tuple[int, float]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.4), layout="constrained")
    for name, curve in curves.items():
        ax.step([c[0] for c in curve], [100 * c[1] for c in curve], where="post", label=name)
    ax.set_xlabel("trials finished")
    ax.set_ylabel("best full-budget val acc (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=120)
    plt.close(fig)


# -- bring your own teacher (issue 18): a teacher that knows more than the student's data ----

@dataclass(frozen=True)
class TeacherScale:
    """The given-teacher setting: a teacher trained on more data, then a search that may use it."""

    teacher: str  # its model
    teacher_train_size: int | None  # images it trains on (None: the whole 60,000-image split)
    teacher_epochs: int
    train_size: int  # the student's images
    epochs: int
    seeds: int
    trials: int
    target: str
    peers: str
    confirm_top: int = 3  # the search's confirmation stage (its defaults)
    confirm_seeds: int = 3


TEACHER_SCALES = {
    # The protocol (about 3 h on 2 idle cores).
    "full": TeacherScale("resnet20", None, 3, 1000, 60, 5, 24, "wrn16-1", "resnet8,wrn16-1"),
    # The teacher, student, epochs and test seeds, with a smaller search and confirmation
    # stage: about 1.5 h on 2 idle cores, what one working session can spare.
    "session": TeacherScale("resnet20", None, 3, 1000, 60, 5, 20, "wrn16-1", "resnet8,wrn16-1",
                            confirm_top=2, confirm_seeds=2),
    "smoke": TeacherScale("resnet8", 200, 1, 100, 2, 2, 2, "resnet8", "resnet8"),
}
TEACHER_SECTION = ("<!-- given-teacher:begin -->", "<!-- given-teacher:end -->")


def teacher_setting(t: TeacherScale, storage: str, out: Path, log: list[str]) -> dict[str, Any]:
    """Train the teacher on the larger split, search with it available, compare on paired seeds."""
    from search.baselines import given_teacher_kd
    from search.spec import SearchSpec

    folder = out / "given-teacher"
    alone = {"format": "ktg-graph/1", "nodes": [{"id": 1, "model": t.teacher}],
             "edges": [{"source": 0, "target": 1, "loss": "ce", "gate": "through"}]}
    (folder / "graphs").mkdir(parents=True, exist_ok=True)
    (folder / "graphs" / "teacher.json").write_text(json.dumps(alone, indent=1))
    teacher_out = folder / "teacher"
    train = ["train", "--graph", str(folder / "graphs" / "teacher.json"), "--dataset", DATASET,
             "--epochs", str(t.teacher_epochs), "--out", str(teacher_out),
             *(["--train-size", str(t.teacher_train_size)] if t.teacher_train_size else [])]
    if (teacher_out / "node1.pt").exists():
        log.append(f"ktg {shlex.join(train)}  # re-used: trained by an earlier invocation")
    else:
        ktg(train, log)
    checkpoint = str((teacher_out / "node1.pt").relative_to(ROOT) if teacher_out.is_relative_to(ROOT)
                     else teacher_out / "node1.pt")
    flag = f"{t.teacher}-more={t.teacher}:{checkpoint}"
    name = "fm-given-teacher-2n"
    args = ["search", "--study", name, "--nodes", "2", "--trials", str(t.trials), "--dataset", DATASET,
            "--train-size", str(t.train_size), "--epochs", str(t.epochs), "--target-model", t.target,
            "--models", t.peers, "--teacher", flag, "--confirm-top", str(t.confirm_top),
            "--confirm-seeds", str(t.confirm_seeds), "--workers", "2", "--storage", storage,
            "--out", str(folder / name)]
    ktg([*args, *(["--resume"] if study_exists(storage, name) else [])], log)
    spec = SearchSpec(name=name, nodes=2, trials=t.trials, target_model=t.target,
                      teachers=[{"name": f"{t.teacher}-more", "model": t.teacher, "checkpoint": checkpoint}])
    kd = given_teacher_kd(spec, spec.teachers[0]).graph
    ce = {"source": 0, "loss": "ce", "gate": "through"}
    hand = {"independent": {"nodes": [{"id": 1, "model": t.target}], "edges": [{**ce, "target": 1}]},
            "kd-given-teacher": kd,
            "dml-2": {"nodes": [{"id": 1, "model": t.target}, {"id": 2, "model": t.target}],
                      "edges": [{**ce, "target": 1}, {**ce, "target": 2},
                                {"source": 2, "target": 1, "loss": "kl", "gate": "through"},
                                {"source": 1, "target": 2, "loss": "kl", "gate": "through"}]}}
    graphs = {}
    for row, body in hand.items():
        graphs[row] = folder / "graphs" / f"{row}.json"
        graphs[row].write_text(json.dumps({"format": "ktg-graph/1", **body}, indent=1))
    graphs["searched-2n"] = folder / name / "best.json"
    ktg(["compare", *map(str, graphs.values()), "--names", ",".join(graphs), "--dataset", DATASET,
         "--train-size", str(t.train_size), "--epochs", str(t.epochs), "--seeds", str(t.seeds),
         "--workers", "2", "--out", str(folder / "compare"), "--resume"], log)
    teacher_acc = json.loads((teacher_out / "results.json").read_text())
    return {"report": json.loads((folder / "compare" / "compare.json").read_text()), "graphs": graphs,
            "teacher_results": teacher_acc, "checkpoint": checkpoint, "study": (storage, name)}


def teacher_section(t: TeacherScale, scale_name: str, found: dict[str, Any], log: list[str],
                    seconds: float) -> list[str]:
    """The page's section on the given teacher: what ran, the table, and what the numbers say."""
    report, graphs = found["report"], found["graphs"]
    node = next(n for n in found["teacher_results"]["nodes"] if n["id"] == 1)
    images = f"{t.teacher_train_size:,}" if t.teacher_train_size else "all 60,000"
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [TEACHER_SECTION[0], "## A teacher that knows more than the student's data (issue 18)", "",
             f"Measured by `benchmarks/paper/reproduce.py --given-teacher {scale_name}` on {when} "
             f"({platform.machine()}, {_cores()} CPU cores, no GPU; {seconds / 60:.0f} min for this invocation, "
             "steps an earlier one finished are re-used).",
             "",
             f"- **Teacher**: `{t.teacher}` trained on {images} Fashion-MNIST training images for "
             f"{t.teacher_epochs} epoch{'s' if t.teacher_epochs > 1 else ''}: {100 * node['test_acc']:.2f} % on the 10,000 test images. Given to the "
             f"search as `--teacher {t.teacher}-more={t.teacher}:{found['checkpoint']}`.",
             f"- **Student**: `{t.target}` on {t.train_size:,} images, {t.epochs} epochs; the search's other node "
             f"chooses among `{t.peers}` and the teacher, {t.trials} trials; then `ktg compare` on {t.seeds} "
             "paired seeds.", ""]
    if scale_name == "smoke":
        lines += ["**Smoke run: tiny settings that check the pipeline. These numbers mean nothing.**", ""]
    elif scale_name != "full":
        full = TEACHER_SCALES["full"]
        changed = [f"{f.name} {getattr(t, f.name)} (the issue's: {getattr(full, f.name)})"
                   for f in fields(TeacherScale) if getattr(t, f.name) != getattr(full, f.name)]
        lines += [f"This is not the issue's whole protocol: {'; '.join(changed)}.", ""]
    lines += [*table(report, list(graphs), "independent"), "",
              f"- `searched-2n`: {graph_line(graphs['searched-2n'])}", ""]
    d = paired(report, "kd-given-teacher", "searched-2n")
    if d is None:
        lines.append("- searched vs plain KD: no paired result (a job failed).")
    else:
        verdict = ("is plain KD itself (the same graph, so the same numbers seed by seed)" if d.low == d.high == 0 else
                   "beats plain KD beyond seed noise" if d.excludes_zero and d.low > 0 else
                   "loses to plain KD beyond seed noise" if d.excludes_zero else
                   "is not distinguishable from plain KD at this number of seeds")
        lines.append(f"- The searched graph {verdict}: {pp(d.mean)} pp against plain KD, 95 % CI "
                     f"[{pp(d.low)}, {pp(d.high)}].")
    storage, name = found["study"]
    lines += ["", "What the search itself reported (its baselines and its confirmation stage, on the "
              "validation split):", "", *confirmation_lines(storage, (name,)),
              "", "```", *log, "```", TEACHER_SECTION[1]]
    return lines


def splice(page: str, section: list[str]) -> str:
    """The page with its given-teacher section replaced (or appended)."""
    begin, end = TEACHER_SECTION
    text = "\n".join(section)
    if begin in page and end in page:
        return page[:page.index(begin)] + text + page[page.index(end) + len(end):]
    return page.rstrip("\n") + "\n\n" + text + "\n"


# -- main --------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny settings (CI): checks the pipeline, not the method")
    p.add_argument("--out", default="runs/paper", help="studies, compare folders and graphs")
    p.add_argument("--doc", default="docs/results.md", help="the page to write (figures go beside it)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--data-dir", help="Fashion-MNIST's four IDX files (default /usr/share/datasets/fashion-mnist)")
    p.add_argument("--given-teacher", choices=sorted(TEACHER_SCALES),
                   help="run only the given-teacher setting at this scale and replace its section of --doc")
    args = p.parse_args(argv)
    s = replace(SMOKE if args.smoke else FULL, workers=args.workers, data_dir=args.data_dir)
    out, doc = Path(args.out).resolve(), Path(args.doc).resolve()
    out.mkdir(parents=True, exist_ok=True)
    figures = doc.parent / "results"
    figures.mkdir(parents=True, exist_ok=True)
    storage = f"sqlite:///{out / 'studies.db'}"
    log: list[str] = []
    started = time.monotonic()

    if args.given_teacher:
        t = TEACHER_SCALES[args.given_teacher]
        found = teacher_setting(t, storage, out, log)
        section = teacher_section(t, args.given_teacher, found, log, time.monotonic() - started)
        doc.write_text(splice(doc.read_text() if doc.exists() else "", section))
        print(f"\nwrote the given-teacher section of {doc}")
        return 0

    # 1. searches
    best_2n = search("fm-2n", 2, s.trials_2n, DATASET, s, storage, out, log)
    best_3n = search("fm-3n", 3, s.trials_3n, DATASET, s, storage, out, log)
    best_src = search("digits-2n", 2, s.trials_source, SOURCE_DATASET, s, storage, out, log)

    # 2. one paired comparison of every row of Tables 2 and 3
    graphs = hand_made(s, out / "graphs")
    graphs |= {"searched-2n": best_2n, "searched-3n": best_3n, "digits-2n": best_src,
               "digits-2n-through": all_through(best_src, out / "graphs" / "digits-2n-through.json")}
    report = compare(graphs, s, s.seeds, out / "compare", log)

    # 3. how far to trust the search: val vs test over the top-k, rung vs final
    top = export_top(storage, "fm-2n", s.top_k, out / "top-2n", log)
    top_report = compare(top, s, s.top_k_seeds, out / "compare-top-2n", log) if len(top) > 1 else None
    rungs = {name: rung_correlation(storage, name, s.epochs) for name in ("fm-2n", "fm-3n")}
    curves = {name: best_curve(storage, name) for name in ("fm-2n", "fm-3n", "digits-2n")}
    plot_curves(curves, figures / "search-curves.png")
    (figures / "compare.png").write_bytes((out / "compare" / "compare.png").read_bytes())

    page = write_page(s, args.smoke, storage, report, top_report, rungs, graphs, log,
                      time.monotonic() - started, figures, doc)
    doc.write_text(page)
    print(f"\nwrote {doc}")
    return 0


def write_page(s: Scale, smoke: bool, storage: str, report: dict[str, Any], top_report: dict[str, Any] | None,
               rungs: dict[str, list[tuple[int, float | None, int]]], graphs: dict[str, Path], log: list[str],
               seconds: float, figures: Path, doc: Path) -> str:
    from scipy.stats import spearmanr

    from search.compare.stats import paired_difference  # noqa: F401  (the page's CIs are this function's)

    rel = figures.relative_to(doc.parent)
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    machine = f"{platform.machine()}, {_cores()} CPU cores, {platform.python_version()}, no GPU"
    lines = ["# Does a searched graph beat training alone?", ""]
    if smoke:
        lines += ["**Smoke run: tiny settings that check the pipeline. These numbers mean nothing.**", ""]
    lines += [
        f"Measured by `benchmarks/paper/reproduce.py` on {when} ({machine}); this invocation of the script took "
        f"{seconds / 60:.0f} min (steps that an earlier invocation finished are re-used, not counted). "
        "Every number below comes from that run.",
        "",
        "## Setting, and why",
        "",
        f"- **Data**: Fashion-MNIST (real 28×28 images, installed offline by `apt-get install "
        f"dataset-fashion-mnist`), a class-balanced subset of {s.train_size} training images "
        f"(`--train-size {s.train_size}`), the full 10,000-image test set. A small subset is the "
        "data-scarce regime where distillation is said to help most, and it lets 2 CPU cores train "
        f"7 graphs × {s.seeds} seeds and three searches in about an hour.",
        f"- **Target** (node 1): `{s.target}`, the paper's smallest CIFAR ResNet family; other nodes of the "
        f"searches choose among `{s.peers}`; KD's frozen teacher is the larger `{s.teacher}`.",
        f"- **Recipe**: the paper's (SGD, Nesterov, lr 0.1, batch 64, lr × 0.1 at 30/60/90 %) for "
        f"{s.epochs} epochs, with the default 500-step warm-up (capped at the first milestone).",
        f"- **Searches** select on a seeded 20 % validation split of the subset; ASHA's first rung comes after the "
        f"warm-up (derived from the recipe); {s.trials_2n} trials for 2 nodes, {s.trials_3n} for 3. The best "
        f"graphs are then re-trained on the whole subset, seeds 0..{s.seeds - 1}, and scored on test.",
        f"- **Statistics**: every graph is trained with the same {s.seeds} seeds, so results pair by seed "
        "(same initial weights of the shared node-1 model, same batches). The CI is the 95 % t interval "
        "of the per-seed differences.",
        "",
        "## The searches' baselines and confirmation stage (validation)",
        "",
        *confirmation_lines(storage, ("fm-2n", "fm-3n", "digits-2n")),
        "",
        "## Table 2 analog: node 1 on Fashion-MNIST",
        "",
        *table(report, ["independent", "kd", "dml-2", "searched-2n", "searched-3n"], "independent"),
        "",
        f"![per-seed accuracies]({rel}/compare.png)",
        "",
        "## Table 3 analog: a graph searched on digits, re-used on Fashion-MNIST",
        "",
        *table(report, ["searched-2n", "digits-2n", "digits-2n-through", "independent"], "searched-2n"),
        "",
        "The graphs:",
        "",
        *[f"- `{name}`: {graph_line(graphs[name])}" for name in SEARCHED_ROWS],
        "",
        "## Is ASHA's early stop trustworthy here?",
        "",
        "Spearman rank correlation, over the complete trials, between the validation accuracy after each "
        "epoch and the final validation accuracy (1 = the ranking at that epoch is the final one):",
        "",
        "| epoch | " + " | ".join(rungs) + " |",
        "|---|" + "---|" * len(rungs),
    ]
    for i in range(s.epochs - 1):
        cells = []
        for name in rungs:
            _, rho, n = rungs[name][i]
            cells.append("-" if rho is None else f"{rho:.2f} (n={n})")
        lines.append(f"| {i + 1} | " + " | ".join(cells) + " |")
    if top_report is not None:
        trials = complete_trials(storage, "fm-2n")[: len(top_report["graphs"])]
        vals = [t.value for t in trials]
        tests = [g["test_acc_mean"] for g in top_report["graphs"]]
        ok = [(v, t) for v, t in zip(vals, tests, strict=False) if t is not None]
        distinct = len(set(ok)) > 1
        rho = spearmanr(*zip(*ok, strict=True)).statistic if len(ok) >= 3 and distinct else None
        lines += ["", f"Validation vs test over the top {len(ok)} graphs of the 2-node search, re-trained with "
                  f"{s.top_k_seeds} seed(s): Spearman ρ = "
                  f"{'undefined (the graphs tie)' if rho is None or math.isnan(rho) else f'{rho:.2f}'}.", "",
                  "| rank | search val acc % | re-trained test acc % |", "|---|---|---|"]
        for i, (v, t) in enumerate(zip(vals, tests, strict=False), 1):
            lines.append(f"| {i} | {100 * v:.2f} | {'-' if t is None else f'{100 * t:.2f}'} |")
    lines += ["", "How many trained graphs repeated an earlier trial's *upstream* graph of node 1 (node 1 "
              "and every node with a path into it): with the study's one seed these train node 1 to exactly "
              "the same numbers, so their epochs measured nothing new:", "",
              "| study | trained trials | repeats | epochs spent on repeats |", "|---|---|---|---|"]
    for name in ("fm-2n", "fm-3n", "digits-2n"):
        trained, repeated, epochs = repeats(storage, name)
        lines.append(f"| {name} | {trained} | {repeated} | {epochs} |")
    lines += ["", f"![best validation accuracy against trials finished]({rel}/search-curves.png)", "",
              "## Conclusion", "", *conclusion(report, s), "",
              "## The commands this run executed", "", "```", *log, "```", "",
              "## At full scale (not run here)", "",
              "With a GPU cluster, the paper's setting is:", "", "```",
              "ktg search --nodes 4 --trials 1500 --dataset cifar100 --data-dir ~/data --epochs 200 \\",
              "           --storage postgresql://ktg@db/ktg --study c100-4n --workers 16 --gpus-per-trial 0.5 \\",
              "           --ray-address auto",
              "ktg export --study c100-4n --storage postgresql://ktg@db/ktg --top 5 --out best/",
              "ktg compare examples/independent.json examples/kd.json examples/dml-2.json best/1.json \\",
              "            --dataset cifar100 --data-dir ~/data --epochs 200 --seeds 5 --workers 8 --device cuda \\",
              "            --ray-address auto --out runs/c100-compare",
              "```", ""]
    return "\n".join(lines)


def confirmation_lines(storage: str, names: tuple[str, ...]) -> list[str]:
    """Per study: where the baselines ranked on one seed, how well its rungs ranked, and the
    confirmed winner with its margin."""
    import optuna

    from search.study.contract import STUDY_ATTR_RUNG_SPEARMAN
    from search.study.rungs import correlations_from_json
    from search.study.rungs import describe as describe_rungs

    lines = []
    for name in names:
        study = optuna.load_study(study_name=name, storage=storage)
        single = [t for t in complete_trials(storage, name) if "confirm_of" not in t.user_attrs]
        ranks = [f"{t.user_attrs['baseline']} #{i}" for i, t in enumerate(single, 1) if "baseline" in t.user_attrs]
        confirmed = study.user_attrs.get("confirmation") or {}
        winner = (confirmed.get("graphs") or [None])[0]
        lines.append(f"- `{name}`: baselines' ranks among {len(single)} full-budget trials (one seed): "
                     f"{', '.join(ranks) or 'none trained'}.")
        rungs = describe_rungs(correlations_from_json(study.user_attrs.get(STUDY_ATTR_RUNG_SPEARMAN)))
        lines += [f"  ASHA's {line}." for line in rungs]
        if winner is not None:
            changed = single and winner["trial"] != single[0].number
            lines.append(f"  Confirmed winner: trial {winner['trial']} ({winner['baseline'] or 'searched'}), mean "
                         f"{100 * winner['val_acc_mean']:.2f} % over {len(winner['per_seed'])} seeds, "
                         f"{winner['verdict']}; confirmation {'changed' if changed else 'kept'} the single-run winner.")
    return lines


def conclusion(report: dict[str, Any], s: Scale) -> list[str]:
    """Sentences the numbers decide; nothing here is written by hand after the fact."""
    out = []
    for name in ("searched-2n", "searched-3n"):
        for base in ("independent", "dml-2", "kd"):
            d = paired(report, base, name)
            if d is None:
                out.append(f"- `{name}` vs `{base}`: no paired result (a job failed).")
                continue
            if d.low == d.high == 0:
                verdict = "trains node 1 exactly as it does, seed by seed (the same graph upstream of node 1)"
            elif d.excludes_zero:
                verdict = "beats it beyond seed noise" if d.low > 0 else "loses to it beyond seed noise"
            else:
                verdict = "is not distinguishable from it at this number of seeds"
            out.append(f"- `{name}` vs `{base}`: {pp(d.mean)} pp, 95 % CI [{pp(d.low)}, {pp(d.high)}]: {verdict}.")
    d, through = paired(report, "searched-2n", "digits-2n"), paired(report, "digits-2n", "digits-2n-through")
    if through is not None:
        effect = "beyond seed noise" if through.excludes_zero else "within seed noise"
        out.append(f"- Setting every gate of the transferred graph to `through` changes node 1 by {pp(through.mean)} "
                   f"pp (CI [{pp(through.low)}, {pp(through.high)}]), {effect}.")
    if d is not None:
        verdict = "within noise of" if not d.excludes_zero else ("better than" if d.low > 0 else "worse than")
        out.append(f"- The graph searched on digits and re-used on Fashion-MNIST is {verdict} the graph searched in "
                   f"place ({pp(d.mean)} pp, CI [{pp(d.low)}, {pp(d.high)}]).")
    return out


def _cores() -> int:
    import os

    return len(os.sched_getaffinity(0))


if __name__ == "__main__":
    sys.exit(main())
