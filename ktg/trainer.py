"""Train every node of a knowledge transfer graph at once (KTG, Algorithm 1).

Per batch: one forward of every node that is needed, the edge losses with their
sources detached, one backward of ``sum_t L_t``, one optimizer step for all the
non-frozen nodes. Frozen teachers run in eval mode under ``no_grad``. Metrics
and the non-finite check stay on the device until the epoch ends, so a training
step never waits for the host.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from ktg.checkpoints import classifier_rows, load_checkpoint
from ktg.data.loader import DeviceBatches
from ktg.device import Accel
from ktg.errors import KtgError, first_line
from ktg.graph import LABEL_NODE, Graph
from ktg.losses import node_loss
from ktg.models import build_model
from ktg.recipe import Recipe
from ktg.run_state import RunState, run_key
from ktg.seeding import derive_seed

if TYPE_CHECKING:
    from ktg.data import ImageData
    from ktg.teachers import TeacherCache

@dataclass(frozen=True)
class RunHooks:
    """What a caller hears of a run as it goes; each hook is optional.

    ``on_batch(epoch index, batches done in the epoch)`` after each step (a progress bar);
    ``on_state(state)`` after each epoch, with the run's resumable state (save it to
    continue from there: ``RunSetup.train(..., resume=state)``); then
    ``on_epoch(epochs done, {node id: validation accuracy})``, which may raise to stop
    the run early (ASHA does). The state is only built when ``on_state`` is given: it
    copies every trained weight to the host.
    """

    on_batch: Callable[[int, int], None] | None = None
    on_epoch: Callable[[int, dict[int, float]], None] | None = None
    on_state: Callable[[RunState], None] | None = None


NO_HOOKS = RunHooks()

EVAL_BATCH = 1024


class NonFiniteLoss(KtgError):
    """A node's loss became NaN or inf: the run cannot go on."""


@dataclass
class NodeResult:
    id: int
    model: str
    frozen: bool
    val_acc: list[float] = field(default_factory=list)   # one per epoch (empty without a val split)
    test_acc: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "model": self.model, "frozen": self.frozen,
                "test_acc": self.test_acc,
                "val_acc": self.val_acc[-1] if self.val_acc else None,
                "val_acc_per_epoch": self.val_acc}


@dataclass
class RunResult:
    nodes: dict[int, NodeResult]
    models: dict[int, nn.Module]
    epochs_done: int

    def state_dicts(self) -> dict[int, dict[str, Tensor]]:
        return {nid: {k: v.detach().cpu() for k, v in m.state_dict().items()}
                for nid, m in self.models.items()}


def train_graph(graph: Graph, data: ImageData, *, recipe: Recipe, seed: int, accel: Accel,
                teachers: TeacherCache | None, hooks: RunHooks = NO_HOOKS, evaluate_test: bool = True,
                resume: RunState | None = None) -> RunResult:
    """Algorithm 1 on ``data``: every node's accuracies and weights. Callers go through
    :meth:`ktg.run.RunSetup.train`, which documents the arguments."""
    recipe.check()
    # Read checkpoints up front, so a bad one fails before anything trains.
    checkpoints = {nid: load_checkpoint(graph.node(nid).checkpoint or "")
                   for nid in graph.frozen_ids if graph.node(nid).checkpoint}
    checkpoint_classes = {nid: classifier_rows(state) for nid, state in checkpoints.items()}
    space = dict(dataset=data.name, classes=data.classes, num_classes=data.num_classes,
                 teacher_classes=checkpoint_classes)
    for warning in graph.check_run(epochs=recipe.epochs, **space):
        print(f"ktg: warning: {warning}")
    models = _build_models(graph, data, recipe, seed, accel, teachers, checkpoints)
    # Accuracy on this run's labels means nothing for a teacher of other classes.
    scored = [nid for nid in sorted(models) if nid not in graph.foreign_nodes(**space)]
    run = _GraphRun(graph, data, recipe, accel, models, seed, scored)
    results = {n.id: NodeResult(n.id, n.model, graph.is_frozen(n.id)) for n in graph.nodes}
    key = run_key(graph, recipe, seed)
    if resume is not None:
        resume.check(key)
        run.restore(resume)
        for nid, accs in resume.val_acc.items():
            results[nid].val_acc = list(accs)
    for epoch in range(resume.epochs_done if resume else 0, recipe.epochs):
        run.train_epoch(epoch, hooks.on_batch)
        accs = run.accuracy("val") if data.val_x is not None else {}
        for nid, acc in accs.items():
            results[nid].val_acc.append(acc)
        if hooks.on_state is not None:
            hooks.on_state(run.state(key, epoch + 1, {nid: results[nid].val_acc for nid in scored}))
        if hooks.on_epoch is not None:
            hooks.on_epoch(epoch + 1, accs)
    if evaluate_test:
        for nid, acc in run.accuracy("test").items():
            results[nid].test_acc = acc
    return RunResult(results, models, recipe.epochs)


# -- building the nodes ---------------------------------------------------------

def _build_models(graph: Graph, data: ImageData, recipe: Recipe, seed: int, accel: Accel,
                  teachers: TeacherCache | None, checkpoints: dict[int, dict[str, Tensor]]) -> dict[int, nn.Module]:
    models: dict[int, nn.Module] = {}
    for node in sorted(graph.nodes, key=lambda n: n.id):
        num_classes = data.num_classes
        state = None
        if graph.is_frozen(node.id):
            if node.id in checkpoints:
                state = checkpoints[node.id]
                num_classes = classifier_rows(state)
            else:
                if teachers is None:
                    raise KtgError(f"nodes[id={node.id}]: frozen with no checkpoint, so it must be pre-trained; "
                                   "run it through RunSetup.prepare(DataSpec(...)), whose teacher cache trains it")
                state, num_classes = teachers.pretrained(node, data, recipe=recipe, seed=seed, accel=accel)
        # The determinism contract: initial weights depend only on (seed, node id, model).
        torch.manual_seed(derive_seed(seed, "init", node.id, node.model))
        model = build_model(node.model, in_channels=data.in_channels, num_classes=num_classes,
                            image_size=data.image_size)
        if state is not None:
            try:
                model.load_state_dict(state)
            except RuntimeError as exc:
                raise KtgError(f"nodes[id={node.id}].checkpoint: does not fit model {node.model!r} "
                               f"on this data ({first_line(exc)})") from None
            model.requires_grad_(False)
        models[node.id] = accel.place(model)
    return models


# -- the training loop ------------------------------------------------------------

class _GraphRun:
    """The state of one graph run: models, optimizer, step count, data stream."""

    def __init__(self, graph: Graph, data: ImageData, recipe: Recipe, accel: Accel,
                 models: dict[int, nn.Module], seed: int, scored: list[int]) -> None:
        self.graph, self.data, self.recipe, self.accel = graph, data, recipe, accel
        self.models = models
        self.scored = scored
        self.forward = {nid: accel.compiled(m) for nid, m in models.items()}
        self.trained = graph.trained_ids
        self.num_classes = data.num_classes
        self.batches = DeviceBatches(
            data.train_x, data.train_y, batch_size=recipe.batch_size, mean=data.mean, std=data.std,
            augment=data.augment, seed=derive_seed(seed, "data"), device=accel.device,
            channels_last=accel.channels_last,
        )
        if len(self.batches) == 0:
            raise KtgError(f"batch_size: got {recipe.batch_size}, larger than the {len(data.train_y)} "
                           "training images; allowed: at most the training set size")
        params = [p for nid in self.trained for p in models[nid].parameters()]
        self.optimizer = torch.optim.SGD(params, lr=recipe.lr, momentum=recipe.momentum,
                                         nesterov=recipe.nesterov and recipe.momentum > 0,
                                         weight_decay=recipe.weight_decay)
        self.total_steps = recipe.epochs * len(self.batches)
        self.step = 0
        self._eval: dict[str, DeviceBatches] = {}

    def state(self, key: str, epochs_done: int, val_acc: dict[int, list[float]]) -> RunState:
        """A copy of where the run stands (trained nodes only: teachers never change)."""
        weights = {nid: {k: v.detach().to("cpu", copy=True) for k, v in self.models[nid].state_dict().items()}
                   for nid in self.trained}
        saved = self.optimizer.state_dict()  # references to the live buffers: copy them
        optimizer = {"state": {i: {k: v.detach().to("cpu", copy=True) if isinstance(v, Tensor) else v
                                   for k, v in s.items()} for i, s in saved["state"].items()},
                     "param_groups": copy.deepcopy(saved["param_groups"])}
        return RunState(key=key, epochs_done=epochs_done, step=self.step, weights=weights, optimizer=optimizer,
                        val_acc={nid: list(accs) for nid, accs in val_acc.items()})

    def restore(self, state: RunState) -> None:
        """Continue from ``state``: weights, buffers, momentum and the step counter."""
        for nid in self.trained:
            self.models[nid].load_state_dict(state.weights[nid])
        self.optimizer.load_state_dict(state.optimizer)  # moves the buffers to the parameters' device
        self.step = state.step

    def train_epoch(self, epoch: int, on_batch: Callable[[int, int], None] | None) -> None:
        edges = {t: [e for e in self.graph.incoming(t) if e.active(epoch)] for t in self.trained}
        # A trained node whose edges are all windowed shut this epoch rests: like a
        # teacher, it runs (eval mode, no_grad) only if a learning node needs it.
        learning = [t for t in self.trained if edges[t]]
        teaching = sorted({e.source for t in learning for e in edges[t]} - {LABEL_NODE, *learning})
        for nid, model in self.models.items():
            model.train(nid in learning)
        if not learning:
            self.step += len(self.batches)
            return
        finite = torch.ones(len(learning), dtype=torch.bool, device=self.accel.device)
        for i, (x, y) in enumerate(self.batches.epoch(epoch)):
            with self.accel.autocast():
                outs: dict[int, tuple[Tensor, Tensor]] = {}  # node id -> (embedding, logits)
                with torch.no_grad():
                    for nid in teaching:
                        outs[nid] = self.forward[nid](x)
                for nid in learning:
                    outs[nid] = self.forward[nid](x)
            progress = self.step / self.total_steps
            losses = torch.stack([node_loss(edges[t], t, outs, y, progress=progress, num_classes=self.num_classes)
                                  for t in learning])
            finite &= torch.isfinite(losses)
            self.optimizer.zero_grad(set_to_none=True)
            losses.sum().backward()
            self._set_lr()
            self.optimizer.step()
            self.step += 1
            if on_batch is not None:
                on_batch(epoch, i + 1)
        if not bool(finite.all()):  # the one host sync of the epoch
            bad = [learning[i] for i, ok in enumerate(finite.tolist()) if not ok]
            raise NonFiniteLoss(f"node {bad[0]}: loss became NaN or inf in epoch {epoch + 1} "
                                f"(model {self.graph.node(bad[0]).model}); lower --lr or check the graph")

    def _set_lr(self) -> None:
        """The schedule, once per step: a Python float, nothing reaches the device."""
        lr = self.recipe.lr * self.recipe.lr_factor(self.step, len(self.batches))
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    @torch.no_grad()
    def _eval_batches(self, split: str) -> DeviceBatches:
        """The split's images, moved to the device once and kept there."""
        if split not in self._eval:
            x, y = getattr(self.data, f"{split}_x"), getattr(self.data, f"{split}_y")
            self._eval[split] = DeviceBatches(
                x, y, batch_size=EVAL_BATCH, mean=self.data.mean, std=self.data.std, augment=None, seed=0,
                device=self.accel.device, shuffle=False, drop_last=False, channels_last=self.accel.channels_last)
        return self._eval[split]

    @torch.no_grad()  # no autograd graph: evaluation never backpropagates
    def accuracy(self, split: str) -> dict[int, float]:
        """Top-1 accuracy of every scored node on 'val' or 'test'; one host sync at the end."""
        loader = self._eval_batches(split)
        y = getattr(self.data, f"{split}_y")
        ids = self.scored
        correct = torch.zeros(len(ids), dtype=torch.long, device=self.accel.device)
        with _eval_mode(self.models.values()):
            for xb, yb in loader.epoch(0):
                with self.accel.autocast():
                    hits = [(self.forward[nid](xb)[1].argmax(dim=1) == yb).sum() for nid in ids]
                correct += torch.stack(hits)
        return {nid: c / len(y) for nid, c in zip(ids, correct.tolist(), strict=True)}


@contextmanager
def _eval_mode(models: Any) -> Iterator[None]:
    models = list(models)
    was_training = [m.training for m in models]
    for m in models:
        m.eval()
    try:
        yield
    finally:
        for m, flag in zip(models, was_training, strict=True):
            m.train(flag)


__all__ = ["NodeResult", "NonFiniteLoss", "RunHooks", "RunResult"]
