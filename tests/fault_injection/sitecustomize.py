"""Test-only fault injection: chosen search trials train on data poisoned to NaN, or run out of memory.

The product knows nothing of this. A test that wants trials 1 and 4 of a
``ktg search`` to go NaN runs it with ``PYTHONPATH`` starting with this folder
and ``KTG_FAULT_NAN_TRIALS=1,4`` (``tests.search_helpers.nan_fault_env``).
Python imports ``sitecustomize`` at start-up in that process and in every Ray
process it starts (they inherit its environment), so the hook reaches the
workers that train. There it wraps ``search.tune.trial.train_trial`` as the module
is imported: for a chosen trial number, the run's data (the first
``DataSpec.load`` of the trial; teachers load theirs clean) comes back with a
NaN normalisation mean, which is a real NaN through the real training path.

``KTG_FAULT_OOM_TRIALS=0,2`` makes those trials raise ``MemoryError`` as their
training starts (where a too-big model would). ``KTG_FAULT_STUDY=<study name>``
limits both faults to that study (a server running other studies too).

The wrapper keeps the trainable's module and name, so Ray still pickles it by
reference. This file shadows any other ``sitecustomize`` (Debian's installs
apport's hook) in those processes only, which is harmless for tests.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.abc
import importlib.machinery
import os
import sys
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

FAULT_ENV = "KTG_FAULT_NAN_TRIALS"  # comma-separated Optuna trial numbers
OOM_ENV = "KTG_FAULT_OOM_TRIALS"  # comma-separated Optuna trial numbers
STUDY_ENV = "KTG_FAULT_STUDY"  # only this study's trials (default: every study's)
TRAINABLE_MODULE, TRAINABLE = "search.tune.trial", "train_trial"


def trial_numbers(env: str) -> set[int]:
    return {int(x) for x in os.environ.get(env, "").split(",") if x.strip().isdigit()}


def poisoned_trials() -> set[int]:
    return trial_numbers(FAULT_ENV)


def poisoning(train_trial: Callable[..., None], trials: set[int], oom: set[int]) -> Callable[..., None]:
    """``train_trial``, with the run's data poisoned to NaN when the config's trial is one of ``trials``,
    and raising MemoryError as training starts when it is one of ``oom``."""

    @functools.wraps(train_trial)
    def wrapper(config: dict[str, Any], **parameters: Any) -> None:
        study = os.environ.get(STUDY_ENV)
        if study and parameters.get("spec_fields", {}).get("name") != study:
            return train_trial(config, **parameters)
        number = config["trial_number"]
        if number not in trials | oom:
            return train_trial(config, **parameters)
        from ktg.data.spec import DataSpec

        if number in oom:
            def exhausted(self: DataSpec) -> Any:
                raise MemoryError("cannot allocate the model's activations")

            clean = DataSpec.load
            DataSpec.load = exhausted
            try:
                return train_trial(config, **parameters)
            finally:
                DataSpec.load = clean

        clean_load = DataSpec.load

        def poisoned_load(self: DataSpec) -> Any:
            DataSpec.load = clean_load  # the run's data only
            data = clean_load(self)
            return dataclasses.replace(data, mean=tuple(float("nan") for _ in data.mean))

        DataSpec.load = poisoned_load
        try:
            return train_trial(config, **parameters)
        finally:
            DataSpec.load = clean_load

    return wrapper


class WrapTrainableOnImport(importlib.abc.MetaPathFinder):
    """Finds ``search.tune.trial`` as usual, and wraps its trainable right after the module runs."""

    def __init__(self, trials: set[int], oom: set[int]) -> None:
        self.trials, self.oom = trials, oom

    def find_spec(self, name: str, path: Sequence[str] | None, target: ModuleType | None = None) -> Any:
        if name != TRAINABLE_MODULE:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return None
        exec_module = spec.loader.exec_module

        def exec_and_wrap(module: ModuleType) -> None:
            exec_module(module)
            setattr(module, TRAINABLE, poisoning(getattr(module, TRAINABLE), self.trials, self.oom))

        spec.loader.exec_module = exec_and_wrap  # type: ignore[method-assign]
        return spec


if poisoned_trials() or trial_numbers(OOM_ENV):
    sys.meta_path.insert(0, WrapTrainableOnImport(poisoned_trials(), trial_numbers(OOM_ENV)))
