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

__all__ = ["CHECKPOINT_ALLOWED", "classifier_rows", "input_channels", "load_checkpoint", "misfit", "read_state",
           "resolve_checkpoints", "write_state"]

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


def input_channels(state: State) -> int:
    """The number of image channels a saved state_dict takes: every family starts with a
    convolution, whose weight (out, in, k, k) is the state's first 4-D tensor."""
    convs = [v for v in state.values() if v.dim() == 4]
    if not convs:
        raise KtgError(f"checkpoint: no convolution weight found; {CHECKPOINT_ALLOWED}")
    return int(convs[0].shape[1])


def misfit(state: State, model: str, *, in_channels: int, num_classes: int, image_size: int) -> str | None:
    """Why ``state`` cannot be a frozen ``model`` node on data of that shape, or None if it fits.

    The class count and the channels are told apart from the architecture, since
    they are what a user gets wrong most (a teacher of another dataset).
    """
    from ktg.models import build_model

    try:
        rows, channels = classifier_rows(state), input_channels(state)
    except KtgError as exc:
        return str(exc).removeprefix("checkpoint: ")
    if rows != num_classes:
        return f"it predicts {rows} classes; allowed: the data's {num_classes}"
    if channels != in_channels:
        return f"it takes {channels}-channel images; allowed: the data's {in_channels}"
    with torch.random.fork_rng(devices=[]):  # building draws initial weights: leave the caller's RNG alone
        expected = build_model(model, in_channels=in_channels, num_classes=num_classes,
                               image_size=image_size).state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    reshaped = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    for keys, what in ((missing, "lacks"), (unexpected, "has no place for"), (reshaped, "has another shape of")):
        if keys:
            more = f" and {len(keys) - 1} more" if len(keys) > 1 else ""
            return f"it is not a {model} (it {what} {keys[0]!r}{more})"
    return None


def resolve_checkpoints(graph: Graph, graph_path: Path) -> Graph:
    """Relative checkpoint paths are tried from the working folder, then beside the graph file;
    one found is made absolute, so that a job run elsewhere (a ``ktg compare`` worker) reads it too."""
    nodes = []
    for n in graph.nodes:
        if n.checkpoint and not Path(n.checkpoint).expanduser().is_absolute():
            for found in (Path(n.checkpoint), graph_path.parent / n.checkpoint):
                if found.exists():
                    n = replace(n, checkpoint=str(found.resolve()))
                    break
        nodes.append(n)
    return replace(graph, nodes=tuple(nodes))
