"""Search knowledge transfer graphs: ASHA on Ray Tune, every trial in an Optuna study.

From Python, one call runs what ``ktg search`` runs::

    import search
    tally = search.run({"name": "s", "nodes": 2, "trials": 4, "epochs": 2})
    tally.best  # (validation accuracy, trial number) of the best full-budget trial

A study trains its hand-made graphs first (``search.baselines``), then TPE's
draws, then re-trains its top graphs and independent on more seeds (the
confirmation stage: ``search.study.confirmation``, ``search.tune.confirm``).
The study (every trial's graph, per-epoch validation accuracy and state) lands
in ``storage`` (default ``$KTG_STORAGE``, else a local SQLite file); read it
back with Optuna or ``ktg export``. Where each part lives: ``search.spec`` (what a
search is), ``search.space`` (the graphs it draws), ``search.commands`` and
``search.cli`` (the ``ktg search`` and ``ktg export`` commands), and three rooms:
``search.study`` (the study store: its contract, storage, SQL and repairs),
``search.tune`` (the Ray Tune runtime: driver, ASHA schedule, searcher, worker-side
trial, twins, checkpoint retention) and ``search.compare`` (``ktg compare``).

``import search`` stays light (no torch, no Ray): the API imports
``search.spec`` and ``search.study`` alone; what ``run`` needs is imported when it runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from search.spec import SearchSpec
    from search.tune.searcher import Tally

__all__ = ["SearchSpec", "run"]


def run(spec: SearchSpec | Mapping[str, Any], *, storage: str | None = None, out_dir: str | Path | None = None,
        workers: int | None = None, resume: bool = False, device: str = "auto",
        ray_address: str | None = None) -> Tally:
    """Run a search to its trial budget and return its tally (complete, pruned, failed, best).

    ``spec`` is a ``SearchSpec`` or its fields (``name``, ``nodes`` and ``trials``
    are required). ``storage`` is an Optuna storage URL; ``out_dir`` (default
    ``runs/search``, as ``ktg search``) holds the teacher cache and Ray's files; ``workers`` caps the trials run at once
    (default: one per CPU); ``resume`` continues a study of that name, which
    must otherwise not exist yet.
    """
    from search.spec import SearchSpec
    from search.study.resume import open_study
    from search.study.storage import open_storage, storage_url
    from search.teachers import check_teachers
    from search.tune.driver import DEFAULT_OUT_DIR, RunOptions, run_search

    spec = spec if isinstance(spec, SearchSpec) else SearchSpec.model_validate(dict(spec))
    check_teachers(spec)  # before the study exists: a teacher that cannot be used leaves nothing behind
    url = storage_url(storage)
    study = open_study(open_storage(url), spec, resume=resume)
    options = RunOptions(out_dir=Path(out_dir or DEFAULT_OUT_DIR), workers=workers, ray_address=ray_address, device=device)
    return run_search(spec, study, options, storage_url=url)


def __getattr__(name: str) -> Any:
    # ``search.SearchSpec`` without importing the engine (torch) on ``import search``.
    if name == "SearchSpec":
        from search.spec import SearchSpec

        return SearchSpec
    raise AttributeError(f"module 'search' has no attribute {name!r}")
