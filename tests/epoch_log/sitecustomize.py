"""Test-only hooks for the twin tests: log every trained epoch; optionally turn twins off.

The product knows nothing of this. A test runs ``ktg search`` with ``PYTHONPATH``
starting with this folder (``tests.search_helpers``-style, see
``tests/test_search_twins.py``); Python imports ``sitecustomize`` at start-up in
that process and in every Ray process it starts, which inherit its environment.

* ``KTG_TEST_EPOCH_LOG=FILE``: every epoch a run trains (``ktg.run.RunSetup.train``) appends one
  JSON line ``{"graph": ..., "epoch": e}`` to FILE (the graph without ``meta``),
  so a test can count how often each epoch of each graph was trained.
* ``KTG_TEST_NO_TWINS=1``: the searcher never finds a twin (``search.tune.twins.Twins.of``
  answers None): the same search without the shortcut, for comparison.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.abc
import importlib.machinery
import json
import os
import sys
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

EPOCH_LOG_ENV, NO_TWINS_ENV = "KTG_TEST_EPOCH_LOG", "KTG_TEST_NO_TWINS"


def log_epochs(module: ModuleType) -> None:
    """Wrap ``RunSetup.train`` (every run goes through it) so that each epoch's hook logs the epoch."""
    log = os.environ[EPOCH_LOG_ENV]
    train = module.RunSetup.train

    @functools.wraps(train)
    def logged(self: Any, graph: Any, *args: Any, hooks: Any = module.NO_HOOKS, **kwargs: Any) -> Any:
        shape = {k: v for k, v in graph.to_dict().items() if k != "meta"}

        def logged_epoch(epoch: int) -> None:
            with open(log, "a") as f:  # one short write in append mode: lines from processes never interleave
                f.write(json.dumps({"graph": shape, "epoch": epoch}, sort_keys=True) + "\n")

        # A search trial reports (and ASHA may stop it) in on_state, which comes first: log there.
        def on_state(state: Any) -> None:
            logged_epoch(state.epochs_done)
            given.on_state(state)

        def on_epoch(epoch: int, accs: dict[int, float]) -> None:
            if given.on_state is None:
                logged_epoch(epoch)
            if given.on_epoch is not None:
                given.on_epoch(epoch, accs)

        given = hooks
        wrapped = dataclasses.replace(given, on_epoch=on_epoch,
                                      on_state=on_state if given.on_state is not None else None)
        return train(self, graph, *args, hooks=wrapped, **kwargs)

    module.RunSetup.train = logged


def no_twins(module: ModuleType) -> None:
    module.Twins.of = lambda self, graph: None


class WrapOnImport(importlib.abc.MetaPathFinder):
    """Finds a module as usual and patches it right after it runs."""

    def __init__(self, patches: dict[str, Callable[[ModuleType], None]]) -> None:
        self.patches = patches

    def find_spec(self, name: str, path: Sequence[str] | None, target: ModuleType | None = None) -> Any:
        if name not in self.patches:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return None
        exec_module = spec.loader.exec_module

        def exec_and_patch(module: ModuleType) -> None:
            exec_module(module)
            self.patches[name](module)

        spec.loader.exec_module = exec_and_patch  # type: ignore[method-assign]
        return spec


_patches: dict[str, Callable[[ModuleType], None]] = {}
if os.environ.get(EPOCH_LOG_ENV):
    _patches["ktg.run"] = log_epochs
if os.environ.get(NO_TWINS_ENV) == "1":
    _patches["search.tune.twins"] = no_twins
if _patches:
    sys.meta_path.insert(0, WrapOnImport(_patches))
