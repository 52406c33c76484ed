"""ktg: knowledge transfer graphs, trained as one (the engine: plain PyTorch).

A notebook needs one import and one call::

    import ktg

    result = ktg.train("examples/dml-2.json", "digits", epochs=30)
    result.nodes[1].test_acc

The public API is the names in ``__all__``. They are imported on first use, so
``import ktg`` (and with it ``ktg --help``) stays quick until one is needed.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ktg.data import ImageData, load_dataset
    from ktg.data.spec import DataSpec
    from ktg.errors import KtgError
    from ktg.graph import Graph
    from ktg.recipe import Recipe
    from ktg.run import RunSetup, train
    from ktg.trainer import RunResult

__all__ = ["DataSpec", "Graph", "ImageData", "KtgError", "Recipe", "RunResult", "RunSetup", "load_dataset", "train"]

# name -> the module that defines it
_HOMES = {
    "DataSpec": "ktg.data.spec",
    "Graph": "ktg.graph",
    "ImageData": "ktg.data",
    "KtgError": "ktg.errors",
    "Recipe": "ktg.recipe",
    "RunResult": "ktg.trainer",
    "RunSetup": "ktg.run",
    "load_dataset": "ktg.data",
    "train": "ktg.run",
}


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'ktg' has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOMES[name]), name)
    globals()[name] = value  # the next lookup is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
