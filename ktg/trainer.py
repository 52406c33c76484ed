"""Train every node of a knowledge transfer graph at once (KTG, Algorithm 1).

Per batch: one forward of every node that is needed, the edge losses with their
sources detached, one backward of ``sum_t L_t``, one optimizer step for all the
non-frozen nodes. Frozen teachers run in eval mode under ``no_grad``. Metrics
and the non-finite check stay on the device until the epoch ends, so a training
step never waits for the host.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from ktg.data.loader import DeviceBatches
from ktg.device import Accel
from ktg.errors import KtgError
from ktg.graph import LABEL_NODE, Edge, Graph
from ktg.losses import LocalPosterior, ce_loss, cm_loss, gate, kl_loss, lkd_loss, local_posterior
from ktg.models import CHECKPOINT_ALLOWED, build_model, classifier_rows
from ktg.seeding import derive_seed

if TYPE_CHECKING:
    from ktg.data import ImageData
    from ktg.teachers import TeacherCache

EpochCallback = Callable[[int, dict[int, float]], None]
"""Called after each epoch with (epochs done, {node id: validation accuracy})."""

BatchCallback = Callable[[int, int], None]
"""Called after each step with (epoch index, batches done in the epoch)."""

EVAL_BATCH = 1024


@dataclass(frozen=True)
class Recipe:
    """The optimisation recipe; defaults are the KTG paper's."""

    epochs: int = 200
    batch_size: int = 64
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    milestones: tuple[float, ...] = (0.3, 0.6, 0.9)  # fractions of the epochs
    gamma: float = 0.1
    # Linear lr warm-up over the first steps, never past the first milestone.
    # Not in the paper, whose CIFAR runs pass 500 steps within the first epoch;
    # on small data (digits: 22 steps an epoch) lr 0.1 from step 0 collapses
    # mutually-learning nodes to the uniform prediction (DML-3 on digits, 30
    # epochs: 24 % test accuracy without, 98 % with). 0 = the paper exactly.
    warmup_steps: int = 500

    def check(self) -> None:
        checks = [
            ("epochs", self.epochs >= 1, "an integer >= 1"),
            ("batch_size", self.batch_size >= 2, "an integer >= 2"),
            ("lr", self.lr > 0 and math.isfinite(self.lr), "a finite number > 0"),
            ("momentum", 0 <= self.momentum < 1, "a number in [0, 1)"),
            ("weight_decay", self.weight_decay >= 0, "a number >= 0"),
            ("milestones", all(0 < m < 1 for m in self.milestones), "fractions in (0, 1)"),
            ("gamma", 0 < self.gamma <= 1, "a number in (0, 1]"),
            ("warmup_steps", self.warmup_steps >= 0, "an integer >= 0 (0 = no warm-up)"),
        ]
        for name, ok, what in checks:
            if not ok:
                raise KtgError(f"{name}: got {getattr(self, name)!r}; allowed: {what}")

    def milestone_epochs(self) -> list[int]:
        return sorted({max(1, round(m * self.epochs)) for m in self.milestones})

    def lr_factor(self, step: int, steps_per_epoch: int) -> float:
        """The lr of optimisation step ``step`` (0-based) as a multiple of ``lr``."""
        milestones = self.milestone_epochs()
        epoch = step // steps_per_epoch
        decay = self.gamma ** sum(epoch >= m for m in milestones)
        warmup = min([self.warmup_steps, *(m * steps_per_epoch for m in milestones[:1])])
        return decay * min(1.0, (step + 1) / warmup) if warmup else decay


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


def train_graph(graph: Graph, data: ImageData, *, recipe: Recipe = Recipe(), seed: int = 0,
                accel: Accel | None = None, teachers: TeacherCache | None = None,
                on_epoch: EpochCallback | None = None, on_batch: BatchCallback | None = None,
                evaluate_test: bool = True) -> RunResult:
    """Train ``graph`` on ``data`` and return every node's accuracies and weights.

    ``on_epoch`` may raise to stop the run early (the search uses this for ASHA).
    """
    recipe.check()
    accel = accel or Accel.resolve("auto")
    # Read checkpoints up front, so a bad one fails before anything trains.
    checkpoints = {nid: _load_checkpoint(graph.node(nid).checkpoint or "")
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
    for epoch in range(recipe.epochs):
        run.train_epoch(epoch, on_batch)
        if data.val_x is not None:
            accs = run.accuracy("val")
            for nid, acc in accs.items():
                results[nid].val_acc.append(acc)
            if on_epoch is not None:
                on_epoch(epoch + 1, accs)
        elif on_epoch is not None:
            on_epoch(epoch + 1, {})
    if evaluate_test:
        for nid, acc in run.accuracy("test").items():
            results[nid].test_acc = acc
    return RunResult(results, models, recipe.epochs)


# -- building the nodes ---------------------------------------------------------

def _load_checkpoint(path: str) -> dict[str, Tensor]:
    try:
        state = torch.load(Path(path).expanduser(), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise KtgError(f"checkpoint: no file at {path}; {CHECKPOINT_ALLOWED}") from None
    except Exception as exc:  # a corrupt or foreign file: say which, not a traceback
        raise KtgError(f"checkpoint: cannot read {path} ({type(exc).__name__}); "
                       f"{CHECKPOINT_ALLOWED}") from None
    if not isinstance(state, dict):
        raise KtgError(f"checkpoint: {path} holds no state_dict; {CHECKPOINT_ALLOWED}")
    return state


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
                                   "pass teachers=TeacherCache(DataSpec(...)) to train_graph")
                state, num_classes = teachers.pretrained(node, data, recipe=recipe, seed=seed, accel=accel)
        # The determinism contract: initial weights depend only on (seed, node id, model).
        torch.manual_seed(derive_seed(seed, "init", node.id, node.model))
        model = build_model(node.model, in_channels=data.in_channels, num_classes=num_classes,
                            image_size=data.image_size)
        if state is not None:
            try:
                model.load_state_dict(state)
            except RuntimeError as exc:
                first = str(exc).splitlines()[0]
                raise KtgError(f"nodes[id={node.id}].checkpoint: does not fit model {node.model!r} "
                               f"on this data ({first})") from None
            model.requires_grad_(False)
        models[node.id] = accel.place(model)
    return models


# -- the training loop ------------------------------------------------------------

@dataclass
class _Outputs:
    embedding: Tensor
    logits: Tensor


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

    def train_epoch(self, epoch: int, on_batch: BatchCallback | None) -> None:
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
                outs: dict[int, _Outputs] = {}
                with torch.no_grad():
                    for nid in teaching:
                        outs[nid] = _Outputs(*self.forward[nid](x))
                for nid in learning:
                    outs[nid] = _Outputs(*self.forward[nid](x))
            losses = torch.stack([self._node_loss(t, edges[t], outs, y) for t in learning])
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

    def _node_loss(self, target: int, edges: list[Edge], outs: dict[int, _Outputs], labels: Tensor) -> Tensor:
        """``L_t = mean_n sum_{edges s->t} w * G(l_{s,t}(n))``, sources detached."""
        progress = self.step / self.total_steps
        mine = outs[target]
        terms = []
        for e in edges:
            values, correct = self._edge_loss(e, mine, outs, labels)
            terms.append(e.weight * gate(values, e.gate, progress=progress, correct=correct))
        return torch.stack(terms).sum(dim=0).mean()

    def _edge_loss(self, e: Edge, mine: _Outputs, outs: dict[int, _Outputs],
                   labels: Tensor) -> tuple[Tensor, Tensor | None]:
        """The per-sample loss of one edge and, for the correct gate, the source-correct mask."""
        if e.loss == "ce":
            return ce_loss(mine.logits, labels), None
        src = outs[e.source]
        emb_s, logits_s = src.embedding.detach(), src.logits.detach()
        if e.loss == "kl":
            correct = logits_s.argmax(dim=1) == labels if e.gate == "correct" else None
            return kl_loss(logits_s, mine.logits, e.temperature), correct
        local: LocalPosterior = local_posterior(emb_s, labels, self.num_classes, e.temperature)
        correct = local.prediction == labels if e.gate == "correct" else None
        if e.loss == "cm":
            return cm_loss(emb_s, mine.embedding, labels, e.temperature), correct
        return lkd_loss(local, mine.logits, e.temperature), correct

    @torch.no_grad()
    def _eval_batches(self, split: str) -> DeviceBatches:
        """The split's images, moved to the device once and kept there."""
        if split not in self._eval:
            x, y = getattr(self.data, f"{split}_x"), getattr(self.data, f"{split}_y")
            self._eval[split] = DeviceBatches(
                x, y, batch_size=EVAL_BATCH, mean=self.data.mean, std=self.data.std, augment=None, seed=0,
                device=self.accel.device, shuffle=False, drop_last=False, channels_last=self.accel.channels_last)
        return self._eval[split]

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


__all__ = ["NodeResult", "NonFiniteLoss", "Recipe", "RunResult", "train_graph"]
