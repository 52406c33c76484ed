"""Where a graph run stands after an epoch: enough to continue it exactly.

:meth:`ktg.run.RunSetup.train` hands a :class:`RunState` to its hooks'
``on_state`` after every epoch and takes one back as ``resume``. It holds every
trained node's weights and BatchNorm buffers, the optimizer's state (momentum
buffers), the step counter (the lr schedule and the ``linear`` gate read it),
the epochs done and the per-epoch validation accuracies so far. Nothing else is
needed to continue the same run: the batches of epoch ``e`` are a function of
(seed, e) alone (``ktg.data.loader.DeviceBatches.epoch``), and frozen teachers
are never saved, since they come back from their checkpoint or the teacher
cache unchanged. So, on the CPU, a run resumed from its epoch-k state ends with
exactly the weights and accuracies of one that never stopped (DESIGN.md).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from torch import Tensor

from ktg.checkpoints import read_state, write_state
from ktg.errors import KtgError
from ktg.graph import Graph
from ktg.recipe import Recipe

__all__ = ["RUN_STATE_FORMAT", "RunState", "run_key"]

RUN_STATE_FORMAT = "ktg-run-state/1"


def run_key(graph: Graph, recipe: Recipe, seed: int) -> str:
    """What a state belongs to: the graph's nodes and edges, the recipe and the seed (not ``meta``)."""
    shape = {k: v for k, v in graph.to_dict().items() if k != "meta"}
    return json.dumps({"graph": shape, "recipe": asdict(recipe), "seed": seed}, sort_keys=True)


@dataclass
class RunState:
    """A graph run after ``epochs_done`` epochs; tensors are CPU copies, owned by the state."""

    key: str  # run_key(...) of the run it came from
    epochs_done: int
    step: int
    weights: dict[int, dict[str, Tensor]]  # trained node id -> its state_dict (BatchNorm buffers included)
    optimizer: dict[str, Any]
    val_acc: dict[int, list[float]]  # scored node id -> validation accuracy per epoch so far

    def check(self, key: str) -> None:
        """A state resumes only the run it came from: same graph, recipe and seed."""
        if self.key != key:
            raise KtgError("resume: the saved run state belongs to another graph, recipe or seed; "
                           "allowed: a state saved by this very run")

    def save(self, path: str | Path) -> None:
        """One file, written atomically (a reader never sees half a state)."""
        payload = {"format": RUN_STATE_FORMAT, "key": self.key, "epochs_done": self.epochs_done,
                   "step": self.step, "optimizer": self.optimizer,
                   "weights": {str(nid): w for nid, w in self.weights.items()},
                   "val_acc": {str(nid): accs for nid, accs in self.val_acc.items()}}
        write_state(payload, Path(path))

    @classmethod
    def load(cls, path: str | Path) -> RunState:
        try:
            payload = read_state(path)
        except Exception as exc:
            raise KtgError(f"resume: cannot read a run state at {path} ({type(exc).__name__})") from None
        if not isinstance(payload, dict) or payload.get("format") != RUN_STATE_FORMAT:
            raise KtgError(f"resume: {path} is not a run state; allowed: a {RUN_STATE_FORMAT} file")
        return cls(key=payload["key"], epochs_done=int(payload["epochs_done"]), step=int(payload["step"]),
                   weights={int(nid): w for nid, w in payload["weights"].items()},
                   optimizer=payload["optimizer"],
                   val_acc={int(nid): list(accs) for nid, accs in payload["val_acc"].items()})
