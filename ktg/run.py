"""Running a graph: the one public way, for every front end.

``RunSetup`` holds what runs on one dataset share (the loaded data, the teacher
cache, the device); ``RunSetup.train`` runs one graph, from scratch or from a
saved ``RunState``, telling a ``RunHooks`` as it goes. ``ktg train``, ``ktg
compare``, a search trial, the teacher cache and :func:`train` (the notebook's
one call) all run graphs through it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ktg.checkpoints import resolve_checkpoints
from ktg.data import ImageData
from ktg.data.spec import DataSpec
from ktg.device import Accel
from ktg.graph import Graph
from ktg.recipe import Recipe
from ktg.run_state import RunState
from ktg.teachers import TeacherCache
from ktg.trainer import NO_HOOKS, RunHooks, RunResult, train_graph

__all__ = ["GraphSource", "RunHooks", "RunSetup", "load_graph", "train"]

GraphSource = Graph | Mapping[str, Any] | str | os.PathLike[str]
"""A graph, its ``ktg-graph/1`` dict, or the path of its file."""


@dataclass(frozen=True)
class RunSetup:
    """What every run on one dataset shares: the loaded data, the device, the teacher cache.

    ``teachers`` pre-trains (once, cached) the frozen nodes that have no ``checkpoint``;
    without it such a graph is an error. ``spec`` is the data's spec, when it came from one.
    """

    data: ImageData
    accel: Accel
    teachers: TeacherCache | None = None
    spec: DataSpec | None = None

    @classmethod
    def prepare(cls, spec: DataSpec, *, accel: Accel | None = None, cache_dir: str | Path | None = None,
                quiet: bool = False) -> RunSetup:
        """Load ``spec``'s data (once) and open the teacher cache (``$KTG_CACHE_DIR`` when
        ``cache_dir`` is None); ``accel`` defaults to CUDA when present, else the CPU."""
        return cls(spec.load(), accel or Accel.resolve("auto"), TeacherCache(spec, cache_dir, quiet=quiet), spec)

    def train(self, graph: Graph, recipe: Recipe = Recipe(), *, seed: int = 0, hooks: RunHooks = NO_HOOKS,
              resume: RunState | None = None, evaluate_test: bool = True) -> RunResult:
        """Train every node of ``graph`` at once (KTG's Algorithm 1) and return their accuracies and weights.

        With the same ``seed``, a node's initial weights depend only on (seed, node id,
        model) and the batches only on the seed (DESIGN.md, determinism). ``resume``, a
        state ``hooks.on_state`` was given by a run of this very graph, recipe and seed,
        continues that run, ending (on the CPU) exactly as a run that never stopped.
        ``evaluate_test=False`` skips the test split (a search selects on validation).
        """
        return train_graph(graph, self.data, recipe=recipe, seed=seed, accel=self.accel, teachers=self.teachers,
                           hooks=hooks, evaluate_test=evaluate_test, resume=resume)


def load_graph(source: GraphSource) -> Graph:
    """The graph ``source`` names. A file's relative checkpoint paths are tried from the
    working folder, then beside the file."""
    if isinstance(source, Graph):
        return source
    if isinstance(source, Mapping):
        return Graph.from_dict(dict(source))
    path = Path(source)
    return resolve_checkpoints(Graph.load(path), path)


def train(graph: GraphSource, dataset: str | DataSpec | ImageData = "digits", *, seed: int = 0,
          recipe: Recipe | None = None, device: str | Accel = "auto", data_dir: str | None = None,
          val_fraction: float = 0.0, cache_dir: str | Path | None = None,
          on_epoch: Callable[[int, dict[int, float]], None] | None = None, **recipe_fields: Any) -> RunResult:
    """Train a graph on a dataset; return every node's accuracies and trained model.

    ``dataset`` is a dataset name (read from ``data_dir``, with ``val_fraction``
    of the training set held out), a :class:`~ktg.data.spec.DataSpec`, or loaded
    :class:`~ktg.data.ImageData` (then frozen nodes need a ``checkpoint``: there is
    no spec to pre-train a teacher on). ``recipe_fields`` override the
    :class:`~ktg.recipe.Recipe` (``epochs=30``, ``lr=0.05``, ...)::

        result = ktg.train("examples/dml-2.json", "digits", epochs=30)
        result.nodes[1].test_acc
    """
    recipe = replace(recipe or Recipe(), **recipe_fields)
    accel = device if isinstance(device, Accel) else Accel.resolve(device)
    the_graph = load_graph(graph)
    if not isinstance(dataset, str) and (data_dir is not None or val_fraction != 0.0):
        raise TypeError("data_dir and val_fraction go with a dataset name; a DataSpec or ImageData has its own")
    if isinstance(dataset, ImageData):
        setup = RunSetup(dataset, accel)
    else:
        spec = DataSpec(dataset, data_dir, val_fraction=val_fraction) if isinstance(dataset, str) else dataset
        setup = RunSetup.prepare(spec, accel=accel, cache_dir=cache_dir)
    return setup.train(the_graph, recipe, seed=seed, hooks=RunHooks(on_epoch=on_epoch))
