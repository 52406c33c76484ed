"""``ktg search`` and ``ktg export``: turn flags into a spec, run, show, write files."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any, get_origin

import optuna
from pydantic import ValidationError
from pydantic.fields import FieldInfo
from ray.tune import Callback
from rich.live import Live
from rich.table import Table
from rich.text import Text

from ktg.errors import KtgError
from ktg.graph import LABEL_NODE, Graph
from ktg.report import console, fmt_acc, out, table
from search.baselines import study_baselines
from search.commands import OBJECT_FLAGS, flag_of
from search.compare.stats import CONFIDENCE
from search.space import describe_size, space_size
from search.spec import SearchSpec, spec_error_lines
from search.study.confirmation import Confirmation
from search.study.contract import STUDY_ATTR_RUNG_SPEARMAN, TrialAttr, ranked
from search.study.resume import open_study, stored_spec
from search.study.rungs import correlations_from_json
from search.study.rungs import describe as describe_rungs
from search.study.storage import best_trials, confirmation_of, graph_of, load_study, masked, open_storage, storage_url
from search.teachers import check_teachers
from search.tune.driver import RunOptions, run_search
from search.tune.schedule import asha_schedule
from search.tune.searcher import Tally


def build_spec(args: argparse.Namespace, base: dict[str, Any] | None, given: dict[str, Any]) -> SearchSpec:
    """Merge the stored spec (on resume), --spec-json (``given``) and the flags; validate once."""
    fields: dict[str, Any] = {**(base or {}), **given}
    for name, field in SearchSpec.model_fields.items():
        value = getattr(args, name, None)
        if value is not None and name in OBJECT_FLAGS:  # a repeated flag, one object each
            fields[name] = [OBJECT_FLAGS[name][0](v) for v in value]
        elif value is not None:
            is_list = get_origin(field.annotation) is list
            fields[name] = [v.strip() for v in value.split(",") if v.strip()] if is_list else value
    for name, field in SearchSpec.model_fields.items():
        if field.is_required() and name not in fields:
            raise KtgError(f"{flag_of(name)}: missing; allowed: {_allowed(field)}")
    try:
        return SearchSpec.model_validate(fields)
    except ValidationError as exc:
        lines = []
        for line in spec_error_lines(exc):
            head, _, rest = line.partition(": ")
            key = head.split(".")[0]
            lines.append(f"{flag_of(key) if key in SearchSpec.model_fields else head}: {rest}")
        raise KtgError("; ".join(lines)) from None


def _allowed(field: FieldInfo) -> str:
    """What a required field takes, from its constraints: '2..10', '>= 1', or its description."""
    ge = next((m.ge for m in field.metadata if hasattr(m, "ge")), None)
    le = next((m.le for m in field.metadata if hasattr(m, "le")), None)
    if ge is not None:
        return f"an integer in {ge}..{le}" if le is not None else f"an integer >= {ge}"
    return (field.description or "a value").lower()


class LiveDisplay(Callback):
    """Trials done / pruned / failed / running, the best so far with its graph, an ETA."""

    def __init__(self, tally: Tally, study_name: str) -> None:
        self.tally, self.study_name = tally, study_name
        self.live = Live(self._render(), console=console, refresh_per_second=2, transient=False)

    def __getstate__(self) -> dict[str, Any]:  # Ray may pickle callbacks; a live console cannot be
        return {"tally": self.tally, "study_name": self.study_name}

    def setup(self, **info: Any) -> None:
        self.live.start()

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self.refresh()
        self.live.stop()
        if not console.is_terminal:  # rich ends the last render with a newline only on a terminal
            console.line()

    def _render(self) -> Text:
        t = self.tally
        done = t.done_before + t.finished
        elapsed = time.monotonic() - t.started
        eta = "-"
        if t.finished:
            eta = f"{elapsed / t.finished * max(0, t.budget - done) / 60:.1f} min"
        best = f"{100 * t.best[0]:.2f}% (trial {t.best[1]})" if t.best else "-"
        fields = [self.study_name, f"{done}/{t.budget} trials", f"complete {t.complete}", f"pruned {t.pruned}",
                  f"failed {t.failed}", f"running {t.running}", f"best val {best}", f"ETA {eta}"]
        # Short fields on as few lines as fit: wrapped between fields, never inside one.
        lines = [""]
        for f in fields:
            joined = f"{lines[-1]}  {f}" if lines[-1] else f
            if len(joined) > console.width and lines[-1]:
                lines.append(f)
            else:
                lines[-1] = joined
        text = Text("\n".join(lines), no_wrap=True)
        text.stylize("bold", 0, len(self.study_name))
        return text

    def refresh(self) -> None:
        self.live.update(self._render())

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.refresh()

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        self.refresh()

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.refresh()

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.refresh()


def _edges_text(graph: dict[str, Any]) -> tuple[str, str]:
    g = Graph.from_dict(graph)
    models = " ".join(n.model for n in g.nodes)
    edges = ", ".join(f"{e.source}>{e.target} {e.loss}/{e.gate}" + (f" T={e.temperature:g}" if e.temperature != 1 else "")
                      for e in g.edges if e.source != LABEL_NODE)
    return models, edges or "-"


def _top_table(study_name: str, trials: list, title: str) -> Table:
    rows = []
    for rank, t in enumerate(trials, 1):
        models, edges = _edges_text(t.user_attrs[TrialAttr.GRAPH])
        rows.append([rank, t.number, f"{100 * t.value:.2f}", t.user_attrs.get(TrialAttr.BASELINE, ""), models, edges])
    return table(title, ["rank", "trial", "val acc %", "baseline", "models (node 1 first)", "edges between nodes"], rows)


def _confirmed_table(confirmation: Confirmation, graphs: dict[int, dict[str, Any]], title: str) -> Table:
    """The confirmed graphs by mean over seeds, each with its paired margin over independent."""
    rows = []
    for rank, c in enumerate(confirmation.graphs, 1):
        d = c.vs_independent
        margin = "-" if d is None else f"{100 * d.mean:+.2f}"
        ci = "-" if d is None or d.n < 2 else f"[{100 * d.low:+.2f}, {100 * d.high:+.2f}]"
        models, edges = _edges_text(graphs[c.trial]) if c.trial in graphs else ("-", "-")
        rows.append([rank, c.trial, c.baseline or "", fmt_acc(list(c.per_seed.values())), len(c.per_seed),
                     margin, ci, models, edges])
    return table(title, ["rank", "trial", "baseline", "val acc % (mean ± sd)", "seeds", "Δ pp vs independent",
                         f"{int(100 * CONFIDENCE)}% CI", "models (node 1 first)", "edges between nodes"], rows)


def _winner_line(confirmation: Confirmation) -> str:
    winner = confirmation.winner
    if winner is None:
        return "confirmation: no confirmed graph finished"
    return f"winner by mean over {len(winner.per_seed)} seeds: trial {winner.trial}, {winner.verdict}"


def show_study_figures(study: optuna.Study, best: list) -> None:
    """What ``ktg search`` ends with and ``ktg export`` shows: the rungs, the confirmed ranking, the margin."""
    for line in describe_rungs(correlations_from_json(study.user_attrs.get(STUDY_ATTR_RUNG_SPEARMAN))):
        out.print(line, highlight=False)
    confirmation = confirmation_of(study)
    if confirmation is not None and confirmation.graphs:
        graphs = {t.number: t.user_attrs[TrialAttr.GRAPH] for t in study.get_trials(deepcopy=False)
                  if TrialAttr.GRAPH in t.user_attrs}
        seeds = ", ".join(map(str, confirmation.seeds))
        out.print(_confirmed_table(confirmation, graphs,
                                   f"confirmed graphs of {study.study_name} (validation, seeds {seeds} added)"))
        out.print(_winner_line(confirmation), highlight=False)


def write_graphs(study: optuna.Study, trials: list, out_dir: Path, names: list[str]) -> list[Path]:
    """Write each trial's graph (JSON + SVG) with its provenance (and its confirmation, if any)."""
    from ktg.show import write_svg

    out_dir.mkdir(parents=True, exist_ok=True)
    confirmation = confirmation_of(study)
    paths = []
    for trial, name in zip(trials, names, strict=False):
        graph = graph_of(trial, study.study_name, confirmation)
        path = out_dir / f"{name}.json"
        graph.save(path)
        write_svg(graph, path.with_suffix(".svg"))
        paths.append(path)
    return paths


def run_search_command(args: argparse.Namespace) -> int:
    options = RunOptions(out_dir=Path(args.out), workers=args.workers, cpus_per_trial=args.cpus_per_trial,
                         gpus_per_trial=args.gpus_per_trial, ray_address=args.ray_address, device=args.device)
    if options.workers is not None and options.workers < 1:
        raise KtgError(f"--workers: got {options.workers}; allowed: an integer >= 1")
    if options.cpus_per_trial <= 0 or options.gpus_per_trial < 0:
        raise KtgError("--cpus-per-trial/--gpus-per-trial: allowed: cpus > 0, gpus >= 0 (fractions pack a GPU)")
    given = _spec_json(args.spec_json)
    url = storage_url(args.storage)
    if args.resume:  # the spec stored in the study comes first
        storage = open_storage(url)
        name = args.name or given.get("name")  # --study: its dest is the spec field name
        spec = build_spec(args, stored_spec(storage, name) if isinstance(name, str) else None, given)
        schedule = asha_schedule(spec)
        check_teachers(spec, flag_of("teachers"))
    else:  # checked before the storage is touched: bad input leaves nothing behind, not even an empty file
        spec = build_spec(args, None, given)
        schedule = asha_schedule(spec)  # reads the data: a missing dataset leaves nothing behind either
        check_teachers(spec, flag_of("teachers"))  # read with the data, in the same child process
        storage = open_storage(url)
    study = open_study(storage, spec, resume=args.resume)
    out.print(f"study [bold]{spec.name}[/] in {masked(url)}: {spec.nodes} nodes, {spec.trials} trials, "
              f"{spec.epochs} epochs on {spec.dataset}; search space {describe_size(space_size(spec))} graphs")
    out.print(schedule.describe(), highlight=False)
    _show_baselines(spec, resume=args.resume)
    tally = run_search(spec, study, options, display=LiveDisplay, storage_url=url)
    best = best_trials(study, 5)
    if not best:
        out.print("no trial reached the full budget yet; nothing to export")
        return 0
    order = ("the confirmed graphs first, by their mean over seeds; then by one seed"
             if confirmation_of(study) else "by one seed")
    out.print(_top_table(spec.name, [t for t in best if ranked(t)] or best,
                         f"top graphs of {spec.name} (full-budget trials; {order})"))
    show_study_figures(study, best)
    path = write_graphs(study, best[:1], options.out_dir, ["best"])[0]
    out.print(f"wrote {path} and {path.with_suffix('.svg')}  ({tally.complete} complete, "
              f"{tally.pruned} pruned, {tally.failed} failed this run)")
    return 0


def _show_baselines(spec: SearchSpec, *, resume: bool) -> None:
    baselines, notes = study_baselines(spec)
    for note in notes:
        out.print(note, highlight=False)
    if baselines:
        when = "queued when the study began" if resume else "trained first, counted in --trials"
        out.print(f"baselines ({when}): {', '.join(b.name for b in baselines)}", highlight=False)


def _spec_json(text: str | None) -> dict[str, Any]:
    """The fields given with --spec-json (what the API submits), or none."""
    if not text:
        return {}
    try:
        given = json.loads(text)
    except json.JSONDecodeError as exc:
        raise KtgError(f"--spec-json: not valid JSON ({exc.msg} at char {exc.pos})") from None
    if not isinstance(given, dict):
        raise KtgError("--spec-json: expected a JSON object of search fields")
    return given


def run_export_command(args: argparse.Namespace) -> int:
    if args.top < 1:
        raise KtgError(f"--top: got {args.top}; allowed: an integer >= 1")
    url = storage_url(args.storage)
    study = load_study(args.study, open_storage(url))
    best = best_trials(study, args.top)
    if not best:
        raise KtgError(f"study {args.study!r} has no trial trained to the full budget yet; nothing to export")
    paths = write_graphs(study, best, Path(args.out), [str(i) for i in range(1, len(best) + 1)])
    out.print(_top_table(args.study, best, f"top {len(best)} of {args.study}"))
    show_study_figures(study, best)
    for p in paths:
        out.print(f"wrote {p}")
    return 0
