"""Checkpoints: the ``node<id>.pt`` state_dicts ``ktg train`` writes and graphs load.

A frozen node's ``checkpoint`` names such a file, the teacher cache keeps its
pre-trained teachers in the same form, and ``ktg train --out`` writes one per
node. Reading, writing and locating them lives here, once.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch
from torch import Tensor

from ktg.errors import KtgError
from ktg.graph import Graph
from ktg.machine import atomic_write

__all__ = ["CHECKPOINT_ALLOWED", "classifier_rows", "load_checkpoint", "read_state", "resolve_checkpoints",
           "write_state"]

CHECKPOINT_ALLOWED = "allowed: a node<id>.pt written by 'ktg train'"

State = dict[str, Tensor]


def read_state(path: str | Path) -> State:
    """A state_dict file, loaded onto the CPU with no pickled code allowed to run."""
    return torch.load(Path(path).expanduser(), map_location="cpu", weights_only=True)


def write_state(state: State, path: Path) -> None:
    """Write ``state`` atomically: a reader never sees a half-written file."""
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: str) -> State:
    """A node's ``checkpoint`` file; any problem with it is one :class:`KtgError` naming it."""
    try:
        state = read_state(path)
    except FileNotFoundError:
        raise KtgError(f"checkpoint: no file at {path}; {CHECKPOINT_ALLOWED}") from None
    except Exception as exc:  # a corrupt or foreign file: say which, not a traceback
        raise KtgError(f"checkpoint: cannot read {path} ({type(exc).__name__}); "
                       f"{CHECKPOINT_ALLOWED}") from None
    if not isinstance(state, dict):
        raise KtgError(f"checkpoint: {path} holds no state_dict; {CHECKPOINT_ALLOWED}")
    return state


def classifier_rows(state: State) -> int:
    """The number of classes a saved state_dict predicts.

    Every family ends with a Linear classifier, whose weight is the state's last
    2-D tensor; that is how a ``node<id>.pt`` tells its label space.
    """
    weights = [v for v in state.values() if v.dim() == 2]
    if not weights:
        raise KtgError(f"checkpoint: no classifier weight found; {CHECKPOINT_ALLOWED}")
    return int(weights[-1].shape[0])


def resolve_checkpoints(graph: Graph, graph_path: Path) -> Graph:
    """Relative checkpoint paths are tried from the working folder, then beside the graph file."""
    nodes = []
    for n in graph.nodes:
        if n.checkpoint and not Path(n.checkpoint).expanduser().is_absolute() and not Path(n.checkpoint).exists():
            beside = graph_path.parent / n.checkpoint
            if beside.exists():
                n = replace(n, checkpoint=str(beside))
        nodes.append(n)
    return replace(graph, nodes=tuple(nodes))
