"""From a data spec to a trained graph: the one sequence every front end runs.

``DataSpec`` -> the loaded data -> the teacher cache -> the device ->
:func:`~ktg.trainer.train_graph`. ``ktg train``, a search trial and
:func:`train` (the notebook's one call) all go through :class:`RunSetup`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ktg.checkpoints import resolve_checkpoints
from ktg.data import ImageData
from ktg.data.spec import DataSpec
from ktg.device import Accel
from ktg.graph import Graph
from ktg.recipe import Recipe
from ktg.teachers import TeacherCache
from ktg.trainer import BatchCallback, EpochCallback, RunResult, train_graph

__all__ = ["GraphSource", "RunSetup", "load_graph", "train"]

GraphSource = Graph | Mapping[str, Any] | str | os.PathLike[str]
"""A graph, its ``ktg-graph/1`` dict, or the path of its file."""


@dataclass(frozen=True)
class RunSetup:
    """What every run on one data spec shares: the loaded data, the teacher cache, the device."""

    spec: DataSpec
    data: ImageData
    teachers: TeacherCache
    accel: Accel

    @classmethod
    def prepare(cls, spec: DataSpec, *, accel: Accel | None = None, cache_dir: str | Path | None = None,
                quiet: bool = False) -> RunSetup:
        """Load ``spec``'s data (once) and open the teacher cache (``$KTG_CACHE_DIR`` when
        ``cache_dir`` is None); ``accel`` defaults to CUDA when present, else the CPU."""
        accel = accel or Accel.resolve("auto")
        return cls(spec, spec.load(), TeacherCache(spec, cache_dir, quiet=quiet), accel)

    def train(self, graph: Graph, recipe: Recipe = Recipe(), *, seed: int = 0,
              on_epoch: EpochCallback | None = None, on_batch: BatchCallback | None = None,
              evaluate_test: bool = True) -> RunResult:
        """Train ``graph`` on this setup's data; see :func:`~ktg.trainer.train_graph`."""
        return train_graph(graph, self.data, recipe=recipe, seed=seed, accel=self.accel, teachers=self.teachers,
                           on_epoch=on_epoch, on_batch=on_batch, evaluate_test=evaluate_test)


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
          on_epoch: EpochCallback | None = None, **recipe_fields: Any) -> RunResult:
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
        return train_graph(the_graph, dataset, recipe=recipe, seed=seed, accel=accel, on_epoch=on_epoch)
    spec = DataSpec(dataset, data_dir, val_fraction=val_fraction) if isinstance(dataset, str) else dataset
    setup = RunSetup.prepare(spec, accel=accel, cache_dir=cache_dir)
    return setup.train(the_graph, recipe, seed=seed, on_epoch=on_epoch)
