"""What ``ktg compare`` shows and writes: the paired table, ``compare.json``, the plot.

The first graph is the baseline. Each row gives node 1's test accuracy over
the seeds and, against the baseline, the mean paired difference with its 95 %
t interval; "beyond noise" says whether that interval excludes 0.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ktg.graph import TARGET_NODE
from ktg.report import fmt_acc, mean_std, table
from search.compare.jobs import CompareSetup, JobResult
from search.compare.stats import CONFIDENCE, PairedDifference, mean_interval, paired_difference

REPORT_FORMAT = "ktg-compare/1"


@dataclass
class GraphSummary:
    """One graph's row: its per-seed target accuracies and the difference to the baseline."""

    name: str
    file: str | None
    graph: dict[str, Any] | None
    per_seed: dict[int, float | None]  # seed -> node 1 test acc (None: that job failed)
    errors: dict[int, str]
    versus_baseline: PairedDifference | None

    @property
    def accs(self) -> list[float]:
        return [a for a in self.per_seed.values() if a is not None]

    @property
    def target_model(self) -> str:
        if not self.graph:
            return "-"
        return next((n["model"] for n in self.graph["nodes"] if n["id"] == TARGET_NODE), "-")


def summarise(names: Sequence[str], files: Sequence[str | None], graphs: Sequence[dict[str, Any] | None],
              seeds: Sequence[int], results: Sequence[JobResult],
              load_errors: dict[str, str]) -> list[GraphSummary]:
    by_job = {(r.name, r.seed): r for r in results}
    rows: list[GraphSummary] = []
    for name, file, graph in zip(names, files, graphs, strict=True):
        per_seed: dict[int, float | None] = {}
        errors: dict[int, str] = {}
        for seed in seeds:
            result = by_job.get((name, seed))
            per_seed[seed] = result.target_acc if result else None
            if name in load_errors:
                errors[seed] = load_errors[name]
            elif result is not None and result.error:
                errors[seed] = result.error
        rows.append(GraphSummary(name, file, graph, per_seed, errors, None))
    base = rows[0]
    for row in rows[1:]:
        paired = [s for s in seeds if base.per_seed[s] is not None and row.per_seed[s] is not None]
        if paired:
            row.versus_baseline = paired_difference([base.per_seed[s] for s in paired],  # type: ignore[misc]
                                                    [row.per_seed[s] for s in paired])  # type: ignore[misc]
    return rows


def _pp(value: float) -> str:
    return f"{100 * value:+.2f}"


def _interval(d: PairedDifference) -> str:
    if math.isinf(d.high):
        return "(one seed)"
    return f"[{_pp(d.low)}, {_pp(d.high)}]"


def render_table(rows: Sequence[GraphSummary], title: str) -> Any:
    body = []
    for i, row in enumerate(rows):
        d = row.versus_baseline
        if i == 0:
            diff, ci, verdict = "baseline", "", ""
        elif d is None:
            diff, ci, verdict = "-", "-", "-"
        else:
            diff, ci = _pp(d.mean), _interval(d)
            verdict = ("better" if d.low > 0 else "worse") if d.excludes_zero else "no (noise)"
        failed = f"{len(row.errors)} failed" if row.errors else ""
        body.append([row.name, row.target_model, fmt_acc(row.accs) if row.accs else "failed",
                     diff, ci, verdict, len(row.accs), failed])
    return table(title, ["graph", "node 1 model", "node 1 test acc %", "Δ pp vs first", f"{int(CONFIDENCE * 100)}% CI",
                         "beyond noise", "seeds", "errors"], body)


def write_json(path: Path, rows: Sequence[GraphSummary], setup: CompareSetup, seeds: Sequence[int],
               results: Sequence[JobResult]) -> None:
    graphs = []
    for row in rows:
        d = row.versus_baseline
        mean, std = mean_std(row.accs) if row.accs else (None, None)
        graphs.append({
            "name": row.name, "file": row.file, "graph": row.graph, "target_model": row.target_model,
            "test_acc_per_seed": {str(s): a for s, a in row.per_seed.items()},
            "test_acc_mean": mean, "test_acc_std": std,
            "errors": {str(s): e for s, e in row.errors.items()},
            "vs_baseline": None if d is None else {
                "mean": d.mean, "ci": [_finite(d.low), _finite(d.high)], "confidence": CONFIDENCE,
                "seeds": d.n, "excludes_zero": d.excludes_zero},
        })
    report = {"format": REPORT_FORMAT, "baseline": rows[0].name, "seeds": list(seeds),
              "data": setup.data.key(), "recipe": asdict(setup.recipe), "graphs": graphs,
              "jobs": [r.to_json() for r in results]}
    path.write_text(json.dumps(report, indent=2) + "\n")


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None  # JSON has no infinity


def plot(path: Path, rows: Sequence[GraphSummary], title: str) -> None:
    """Per-seed points and the mean with its 95 % interval, one column per graph."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(4.0, 1.3 * len(rows) + 1.5), 3.6), layout="constrained")
    for x, row in enumerate(rows):
        accs = [100 * a for a in row.accs]
        if not accs:
            continue
        jitter = [x - 0.12 + 0.24 * i / max(1, len(accs) - 1) for i in range(len(accs))]
        ax.scatter(jitter, accs, s=14, color="0.55", zorder=2)
        mean, half = mean_interval(accs)
        ax.errorbar([x + 0.25], [mean], yerr=None if math.isinf(half) else [[half], [half]], fmt="o",
                    color="tab:blue" if x else "black", capsize=4, zorder=3)
    ax.set_xticks(range(len(rows)), [r.name for r in rows], rotation=20, ha="right")
    ax.set_ylabel("node 1 test accuracy (%)")
    ax.set_title(title, fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    fig.savefig(path, dpi=120)
    plt.close(fig)
