"""Does the search earn its winner? One search with baselines and confirmation, then a paired test.

    python benchmarks/paper/confirmation.py                      # the reduced run (see PROTOCOL)
    python benchmarks/paper/confirmation.py --trials 4 --epochs 1 --out /tmp/c --doc /tmp/c/confirmation.md

A reduced protocol that two shared CPU cores finish within the hour (docs/results.md
says what was run, on what machine):
1. ``ktg search`` on a Fashion-MNIST subset: the hand-made graphs first (independent,
   KD from each model frozen at T = 2, DML with each), then TPE + ASHA, then the
   confirmation stage (the top graphs and independent on more seeds, on validation);
2. ``ktg export`` of the confirmed graphs (their meta carries the margin);
3. ``ktg compare`` on the 10,000 test images, paired by seed: the confirmed winner,
   the single-run best (if it differs), the best hand-made graph by confirmed mean
   and independent;
4. a page answering: are the baselines among the top? does confirmation change the
   winner? does the winner match or beat the best hand-made graph within the paired CI?

Every step re-uses what an earlier invocation finished (``--resume``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reproduce import _cores, acc, ktg, paired, pp, study_exists

DATASET = "fashionmnist"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/confirm")
    p.add_argument("--doc", default="docs/results/confirmation.md")
    p.add_argument("--train-size", type=int, default=1000)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--trials", type=int, default=12)
    p.add_argument("--target", default="resnet8")
    p.add_argument("--models", default="resnet8,wrn16-1")
    p.add_argument("--confirm-top", type=int, default=2)
    p.add_argument("--confirm-seeds", type=int, default=2)
    p.add_argument("--test-seeds", type=int, default=3, help="0: no test comparison (validation only)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--data-dir")
    args = p.parse_args(argv)
    out, doc = Path(args.out).resolve(), Path(args.doc).resolve()
    out.mkdir(parents=True, exist_ok=True)
    storage, name, log = f"sqlite:///{out / 'studies.db'}", "fm-confirm", []
    data = ["--dataset", DATASET, "--train-size", str(args.train_size),
            *(["--data-dir", args.data_dir] if args.data_dir else [])]
    started = time.monotonic()
    search = ["search", "--study", name, "--nodes", "2", "--trials", str(args.trials), "--epochs", str(args.epochs),
              "--target-model", args.target, "--models", args.models, "--confirm-top", str(args.confirm_top),
              "--confirm-seeds", str(args.confirm_seeds), "--workers", str(args.workers), "--storage", storage,
              "--out", str(out / "search"), *data]
    ktg(search + (["--resume"] if study_exists(storage, name) else []), log)
    study = _load(storage, name)
    confirmation = study.user_attrs["confirmation"]
    exported = out / "exported"
    ktg(["export", "--study", name, "--storage", storage, "--top", str(len(confirmation["graphs"])),
         "--out", str(exported)], log)

    report = None
    if args.test_seeds:
        graphs = _rows(study, confirmation, exported)
        ktg(["compare", *map(str, graphs.values()), "--names", ",".join(graphs), *data, "--epochs",
             str(args.epochs), "--seeds", str(args.test_seeds), "--workers", str(args.workers),
             "--out", str(out / "compare"), "--resume"], log)
        report = json.loads((out / "compare" / "compare.json").read_text())
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(_page(args, study, confirmation, report, log, time.monotonic() - started))
    print(f"\nwrote {doc}")
    return 0


def _load(storage: str, name: str) -> Any:
    import optuna

    return optuna.load_study(study_name=name, storage=storage)


def _rows(study: Any, confirmation: dict[str, Any], exported: Path) -> dict[str, Path]:
    """The graphs tested: winner, single-run best, best hand-made by confirmed mean, independent."""
    by_trial = {int(json.loads(p.read_text())["meta"]["trial"]): p for p in sorted(exported.glob("*.json"))}
    ranked = confirmation["graphs"]
    independent = next(g for g in ranked if g["baseline"] == "independent")
    rows = {"independent": by_trial[independent["trial"]]}
    winner = ranked[0]
    rows.setdefault(_label(winner, "winner"), by_trial[winner["trial"]])
    single = _single_run_best(study)
    if single.number != winner["trial"] and single.number in by_trial:
        rows.setdefault(_label({"trial": single.number, "baseline": single.user_attrs.get("baseline")},
                               "single-run-best"), by_trial[single.number])
    hand = next((g for g in ranked if g["baseline"] and g["baseline"] != "independent"), None)
    if hand is not None:
        rows.setdefault(_label(hand, "best-hand-made"), by_trial[hand["trial"]])
    return rows


def _label(row: dict[str, Any], role: str) -> str:
    return f"{role}.t{row['trial']}" + (f".{row['baseline'].replace(':', '-')}" if row.get("baseline") else "")


def _single_run_best(study: Any) -> Any:
    done = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE" and t.value is not None
            and "confirm_of" not in t.user_attrs]
    return min(done, key=lambda t: (-t.value, t.number))


def _page(args: argparse.Namespace, study: Any, confirmation: dict[str, Any], report: dict[str, Any] | None,
          log: list[str], seconds: float) -> str:
    import platform

    trials = [t for t in study.get_trials(deepcopy=False) if "confirm_of" not in t.user_attrs]
    done = sorted((t for t in trials if t.state.name == "COMPLETE" and t.value is not None),
                  key=lambda t: (-t.value, t.number))
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [f"# Confirmation run ({when}, {platform.machine()}, {_cores()} CPU cores shared with other jobs, "
             f"this invocation {seconds / 60:.0f} min)", "",
             f"Fashion-MNIST, {args.train_size} training images (validation: 20 % of them), target `{args.target}`, "
             f"models `{args.models}`, 2 nodes, {args.trials} trials, {args.epochs} epochs, "
             f"confirmation: top {args.confirm_top} + independent, {args.confirm_seeds} more seeds; "
             f"test: {args.test_seeds} seeds on the whole subset, 10,000 test images.", "",
             "## The search's full-budget trials (one seed, validation)", "",
             "| rank | trial | baseline | val acc % |", "|---|---|---|---|"]
    for i, t in enumerate(done, 1):
        lines.append(f"| {i} | {t.number} | {t.user_attrs.get('baseline', '')} | {100 * t.value:.2f} |")
    lines += ["", "## Confirmed (validation, mean over all seeds; margin on the confirmation seeds)", "",
              "| rank | trial | baseline | per seed % | mean % | Δ pp vs independent | 95 % CI | verdict |",
              "|---|---|---|---|---|---|---|---|"]
    for i, g in enumerate(confirmation["graphs"], 1):
        d = g["vs_independent"]
        seeds = ", ".join(f"{s}: {100 * a:.2f}" for s, a in g["per_seed"].items())
        ci = "-" if d is None or d["ci"][0] is None else f"[{pp(d['ci'][0])}, {pp(d['ci'][1])}]"
        lines.append(f"| {i} | {g['trial']} | {g['baseline'] or ''} | {seeds} | {100 * g['val_acc_mean']:.2f} | "
                     f"{'-' if d is None else pp(d['mean'])} | {ci} | {g['verdict']} |")
    if report is None:
        return "\n".join([*lines, "", "(no test comparison in this invocation: --test-seeds 0)", "", "Commands:", "",
                          "```", *log, "```", ""])
    names = [g["name"] for g in report["graphs"]]
    lines += ["", "## On test, paired by seed (against independent)", "",
              "| graph | node 1 test acc % | Δ pp vs independent | 95 % CI |", "|---|---|---|---|"]
    rows = {g["name"]: g for g in report["graphs"]}
    for n in names:
        d = None if n == "independent" else paired(report, "independent", n)
        ci = "" if d is None or d.n < 2 else f"[{pp(d.low)}, {pp(d.high)}]"
        lines.append(f"| {n} | {acc(rows[n])} | {'' if d is None else pp(d.mean)} | {ci} |")
    winner = next(n for n in names if n.startswith("winner"))
    hand = next((n for n in names if n.startswith("best-hand-made")), None)
    if hand is not None:
        d = paired(report, hand, winner)
        lines += ["", f"Winner vs best hand-made on test: {pp(d.mean)} pp, 95 % CI [{pp(d.low)}, {pp(d.high)}]"
                  if d is not None and d.n > 1 else "", ""]
    lines += ["", "Commands:", "", "```", *log, "```", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
