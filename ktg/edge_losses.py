"""The one table of edge losses: each loss's name, what it reads, and its rules.

The graph file validates loss names and their rules against :data:`EDGE_LOSSES`,
and the trainer dispatches through it to the per-sample function the row names
in :mod:`ktg.losses`. The table itself imports no torch, so that the search
driver and the API check graphs without it. Adding a loss is one function in
:mod:`ktg.losses`, one row here and one test.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Needs = Literal["labels", "logits", "embeddings", "local posterior"]
"""What of the source a loss reads: the labels alone, its logits, its embedding, or
its local posterior (which is built from its embedding)."""

CorrectMask = Literal["none", "logits", "local posterior"]
"""How the ``correct`` gate tells the samples the source gets right: not at all
(then it equals ``through``), by its top-1 logit, or by its local nearest-centre class."""


@dataclass(frozen=True)
class EdgeLoss:
    """One edge loss: the name of its per-sample function in ``ktg.losses``, and its rules."""

    function: str
    needs: Needs
    label_edge: bool         # carried by edges from node 0 (the labels), and only by them
    cross_task: bool         # may leave a node trained on other classes than the run
    correct_mask: CorrectMask

    def uses_local(self, gate_kind: str) -> bool:
        """Whether an edge of this loss and gate needs the source's local posterior."""
        return self.needs == "local posterior" or (gate_kind == "correct" and self.correct_mask == "local posterior")


EDGE_LOSSES: dict[str, EdgeLoss] = {
    "ce": EdgeLoss("ce_edge", needs="labels", label_edge=True, cross_task=False, correct_mask="none"),
    "kl": EdgeLoss("kl_edge", needs="logits", label_edge=False, cross_task=False, correct_mask="logits"),
    "cm": EdgeLoss("cm_edge", needs="embeddings", label_edge=False, cross_task=True,
                   correct_mask="local posterior"),
    "lkd": EdgeLoss("lkd_edge", needs="local posterior", label_edge=False, cross_task=True,
                    correct_mask="local posterior"),
}
"""Every edge loss by name, in the order error messages and pictures list them."""

LABEL_LOSSES = tuple(name for name, loss in EDGE_LOSSES.items() if loss.label_edge)
NETWORK_LOSSES = tuple(name for name, loss in EDGE_LOSSES.items() if not loss.label_edge)
CROSS_TASK_LOSSES = tuple(name for name, loss in EDGE_LOSSES.items() if loss.cross_task)
