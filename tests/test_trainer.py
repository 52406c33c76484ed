"""The one-pass graph trainer: detached sources, frozen teachers, determinism, teacher cache.

Expectations come from independent runs (a node trained alone, a checkpoint
file, a model evaluated by hand), compared bit for bit where the determinism
contract of DESIGN.md promises it. Everything runs on digits (8x8) for 1-2
epochs with small models, on the CPU.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import queue
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from ktg.checkpoints import classifier_rows
from ktg.data import ImageData
from ktg.data.spec import DataSpec
from ktg.device import Accel
from ktg.errors import KtgError
from ktg.graph import Graph, Node
from ktg.losses import node_loss
from ktg.models import build_model
from ktg.recipe import Recipe
from ktg.run import RunHooks, RunSetup
from ktg.run_state import RunState
from ktg.teachers import TeacherCache
from ktg.trainer import NonFiniteLoss, RunResult

ONE_EPOCH = Recipe(epochs=1)
MODEL = "wrn16-1"  # the fastest model of the zoo on 8x8 digits
CPU = Accel(torch.device("cpu"))


def edge(source: int, target: int, loss: str, gate: str = "through", **extra: Any) -> dict[str, Any]:
    return {"source": source, "target": target, "loss": loss, "gate": gate, **extra}


def graph(nodes: list[dict[str, Any]] | int, *edges: dict[str, Any]) -> Graph:
    """A graph from node dicts (or a count of plain MODEL nodes 1..n) and edge dicts."""
    if isinstance(nodes, int):
        nodes = [{"id": i, "model": MODEL} for i in range(1, nodes + 1)]
    return Graph.from_dict({"format": "ktg-graph/1", "nodes": nodes, "edges": list(edges)})


def same_state(a: dict[str, Tensor], b: dict[str, Tensor]) -> bool:
    """Bit-identical state_dicts: same keys, every tensor torch.equal (buffers included)."""
    return a.keys() == b.keys() and all(torch.equal(a[k].cpu(), b[k].cpu()) for k in a)


def state(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def train(g: Graph, data: ImageData, *, recipe: Recipe = ONE_EPOCH, accel: Accel = CPU,
          teachers: TeacherCache | None = None, seed: int = 0, **hooks: Any) -> RunResult:
    """One run through the engine's front door, ``RunSetup.train``; ``hooks`` are ``RunHooks``' fields."""
    return RunSetup(data, accel, teachers=teachers).train(g, recipe, seed=seed, hooks=RunHooks(**hooks))


# Two reference runs shared by several tests (seed 0, one epoch, digits):
# node 1 on labels alone, and nodes 1 and 2 each on labels alone in one graph.

@pytest.fixture(scope="module")
def alone(digits_data: ImageData) -> RunResult:
    return train(graph(1, edge(0, 1, "ce")), digits_data)


@pytest.fixture(scope="module")
def labels_only_pair(digits_data: ImageData) -> RunResult:
    return train(graph(2, edge(0, 1, "ce"), edge(0, 2, "ce")), digits_data)


# --- an edge sends no gradient into its source ------------------------------------

@pytest.mark.parametrize(("loss", "gate"), [("kl", "through"), ("kl", "correct"), ("cm", "through"),
                                            ("lkd", "linear")])
def test_edge_loss_sends_no_gradient_into_its_source(digits_data: ImageData, loss: str, gate: str) -> None:
    g = graph(2, edge(0, 1, "ce"), edge(0, 2, "ce"), edge(2, 1, loss, gate))
    models = {nid: build_model(MODEL, in_channels=digits_data.in_channels, num_classes=digits_data.num_classes,
                               image_size=digits_data.image_size).train() for nid in (1, 2)}
    x = (digits_data.train_x[:64].float() / 255 - 0.5) / 0.25
    y = digits_data.train_y[:64]
    outs = {nid: models[nid](x) for nid in (1, 2)}
    # progress 0.5: mid-run, so that the linear gate is not 0
    loss_1 = node_loss(g.incoming(1), 1, outs, y, progress=0.5, num_classes=digits_data.num_classes)
    source_params = list(models[2].parameters())
    target_params = list(models[1].parameters())
    grads = torch.autograd.grad(loss_1, source_params + target_params, allow_unused=True, retain_graph=True)
    assert all(gr is None for gr in grads[: len(source_params)])      # nothing reaches node 2
    assert sum(gr.abs().sum().item() for gr in grads[len(source_params):] if gr is not None) > 0

    # The transfer term alone (without the label edge) also trains node 1 and only node 1.
    transfer = node_loss([e for e in g.incoming(1) if e.source == 2], 1, outs, y, progress=0.5,
                         num_classes=digits_data.num_classes)
    grads = torch.autograd.grad(transfer, source_params + target_params, allow_unused=True)
    assert all(gr is None for gr in grads[: len(source_params)])
    assert sum(gr.abs().sum().item() for gr in grads[len(source_params):] if gr is not None) > 0


# --- determinism contract -------------------------------------------------------------

def test_label_only_nodes_train_as_alone_in_a_graph(alone: RunResult, labels_only_pair: RunResult) -> None:
    assert same_state(labels_only_pair.state_dicts()[1], alone.state_dicts()[1])
    assert labels_only_pair.nodes[1].test_acc == alone.nodes[1].test_acc


@pytest.mark.parametrize("cutoff_listed", [True, False], ids=["cutoff-listed", "cutoff-omitted"])
def test_target_with_only_cutoff_transfer_trains_as_alone(
    digits_data: ImageData, alone: RunResult, labels_only_pair: RunResult, cutoff_listed: bool
) -> None:
    edges = [edge(0, 1, "ce"), edge(0, 2, "ce"), edge(1, 2, "kl")]
    if cutoff_listed:
        edges.append(edge(2, 1, "kl", "cutoff"))
    result = train(graph(2, *edges), digits_data)
    assert same_state(result.state_dicts()[1], alone.state_dicts()[1])
    # The 1->2 edge did change node 2, so the graph is not trivially node 1 alone.
    assert not same_state(result.state_dicts()[2], labels_only_pair.state_dicts()[2])


@pytest.mark.parametrize(("loss", "gate", "cutoff_listed"), [
    ("kl", "through", True), ("cm", "through", False), ("lkd", "correct", True), ("kl", "linear", False),
])
def test_source_node_is_untouched_by_its_outgoing_edges(
    digits_data: ImageData, labels_only_pair: RunResult, loss: str, gate: str, cutoff_listed: bool
) -> None:
    """Node 2 teaches node 1 through an edge; node 2 (id 2, labels only) equals node 2 of a
    graph without that edge, bit for bit: no gradient leaked into it, nothing else moved it."""
    edges = [edge(0, 1, "ce"), edge(0, 2, "ce"), edge(2, 1, loss, gate)]
    if cutoff_listed:
        edges.append(edge(1, 2, "kl", "cutoff"))
    result = train(graph(2, *edges), digits_data)
    assert same_state(result.state_dicts()[2], labels_only_pair.state_dicts()[2])
    assert not same_state(result.state_dicts()[1], labels_only_pair.state_dicts()[1])


def test_different_seeds_give_different_weights(digits_data: ImageData, alone: RunResult) -> None:
    other = train(graph(1, edge(0, 1, "ce")), digits_data, seed=1)
    a, b = alone.state_dicts()[1], other.state_dicts()[1]
    assert a.keys() == b.keys()
    assert all(not torch.equal(a[k], b[k]) for k in a if k.endswith("weight") and a[k].dim() > 1)


# --- frozen nodes ------------------------------------------------------------------------

def test_frozen_checkpoint_node_keeps_weights_and_batchnorm_buffers(
    digits_data: ImageData, alone: RunResult, tmp_path: Path
) -> None:
    checkpoint = tmp_path / "node1.pt"
    torch.save(alone.state_dicts()[1], checkpoint)
    g = graph([{"id": 1, "model": MODEL}, {"id": 3, "model": MODEL, "checkpoint": str(checkpoint)}],
              edge(0, 1, "ce"), edge(3, 1, "kl", temperature=4.0))
    result = train(g, digits_data)
    saved = torch.load(checkpoint, weights_only=True)
    after = state(result.models[3])
    assert any(k.endswith("num_batches_tracked") for k in after)
    assert any(k.endswith("running_mean") for k in after) and any(k.endswith("running_var") for k in after)
    assert same_state(after, saved)
    assert result.nodes[3].frozen and not result.nodes[1].frozen
    # Same weights, same test figure as when it was trained; and node 1 did learn from it.
    assert result.nodes[3].test_acc == alone.nodes[1].test_acc
    assert not same_state(result.state_dicts()[1], alone.state_dicts()[1])


def test_frozen_node_without_checkpoint_needs_a_teacher_cache(digits_data: ImageData) -> None:
    g = graph(2, edge(0, 1, "ce"), edge(2, 1, "kl"))
    with pytest.raises(KtgError, match=r"must be pre-trained; run it through RunSetup\.prepare"):
        train(g, digits_data)


def test_teacher_is_pretrained_once_and_cached(digits_data: ImageData, alone: RunResult, tmp_path: Path) -> None:
    g = graph(2, edge(0, 1, "ce"), edge(2, 1, "kl"))
    first_cache = TeacherCache(DataSpec("digits"), tmp_path / "teachers", quiet=True)
    first = train(g, digits_data, teachers=first_cache)
    assert len(first_cache.trained) == 1
    teacher_file = first_cache.trained[0]
    assert teacher_file.exists() and teacher_file.parent == tmp_path / "teachers"
    # The teacher is the label-only run of the same model with the same seed and recipe...
    cached = torch.load(teacher_file, weights_only=True)
    assert same_state(cached, alone.state_dicts()[1])
    # ...and stayed frozen while node 1 learned from it.
    assert same_state(first.state_dicts()[2], cached)

    second_cache = TeacherCache(DataSpec("digits"), tmp_path / "teachers", quiet=True)
    second = train(g, digits_data, teachers=second_cache)
    assert second_cache.trained == []
    assert sorted(p.name for p in (tmp_path / "teachers").glob("*.pt")) == [teacher_file.name]
    assert same_state(second.state_dicts()[2], cached)
    assert same_state(second.state_dicts()[1], first.state_dicts()[1])

    # The file is named by the cache key; another recipe or seed is another teacher.
    third_cache = TeacherCache(DataSpec("digits"), tmp_path / "teachers", quiet=True)
    assert third_cache.key(Node(2, MODEL), ONE_EPOCH, 0)[1] == teacher_file.stem
    assert third_cache.key(Node(2, MODEL), Recipe(epochs=1, lr=0.05), 0)[1] != teacher_file.stem
    assert third_cache.key(Node(2, MODEL), ONE_EPOCH, 1)[1] != teacher_file.stem


def _pretrain_in_another_process(root: str, index: int, barrier: Any, results: Any) -> None:
    """Spawned worker: wait for the other worker, then ask the cache for the same teacher."""
    cache = TeacherCache(DataSpec("digits"), root, quiet=True)
    data = DataSpec("digits").load()
    barrier.wait(timeout=120)
    teacher, classes = cache.pretrained(Node(2, MODEL), data, recipe=ONE_EPOCH, seed=0, accel=CPU)
    torch.save(teacher, Path(root) / f"got-{index}.state")
    results.put((index, len(cache.trained), classes))


@pytest.mark.slow
def test_two_processes_never_train_the_same_teacher(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    workers = [ctx.Process(target=_pretrain_in_another_process, args=(str(tmp_path), i, barrier, results))
               for i in range(2)]
    for w in workers:
        w.start()
    got: list[tuple[int, int, int]] = []
    try:
        deadline = time.monotonic() + 240
        while len(got) < len(workers) and time.monotonic() < deadline:
            try:
                got.append(results.get(timeout=1))
            except queue.Empty:
                if any(w.exitcode not in (None, 0) for w in workers):
                    break  # a worker died: fail now rather than wait for the deadline
    finally:
        for w in workers:
            w.join(timeout=60)
            if w.is_alive():
                w.kill()
    assert [w.exitcode for w in workers] == [0, 0]
    assert sorted(trained for _, trained, _ in got) == [0, 1]   # exactly one of them trained it
    assert all(classes == 10 for _, _, classes in got)
    states = [torch.load(tmp_path / f"got-{i}.state", weights_only=True) for i in range(2)]
    assert same_state(states[0], states[1])
    assert len(list(tmp_path.glob("*.pt"))) == 1


# --- cross-task teachers ---------------------------------------------------------------

FIVE_DIGITS = {"dataset": "digits", "classes": [0, 1, 2, 3, 4]}


@pytest.mark.parametrize("loss", ["lkd", "cm"])
def test_cross_task_teacher_teaches_through_lkd_and_cm(digits_data: ImageData, tmp_path: Path, loss: str) -> None:
    g = graph([{"id": 1, "model": MODEL}, {"id": 3, "model": MODEL, "pretrain": FIVE_DIGITS}],
              edge(0, 1, "ce"), edge(3, 1, loss))
    cache = TeacherCache(DataSpec("digits"), tmp_path, quiet=True)
    result = train(g, digits_data, teachers=cache)
    assert len(cache.trained) == 1
    teacher = result.state_dicts()[3]
    assert classifier_rows(teacher) == 5                    # its own label space
    assert result.nodes[3].test_acc is None                 # not scored on the run's 10 classes
    acc = result.nodes[1].test_acc
    assert acc is not None and 0.0 <= acc <= 1.0
    assert all(torch.isfinite(v).all() for v in result.state_dicts()[1].values())
    if loss == "lkd":
        # It was pre-trained on digits 0-4 alone (same seed, same recipe).
        five = DataSpec("digits", classes=(0, 1, 2, 3, 4)).load()
        reference = train(graph(1, edge(0, 1, "ce")), five)
        assert same_state(teacher, reference.state_dicts()[1])


def test_kl_edge_from_cross_task_teacher_fails_before_training(digits_data: ImageData, tmp_path: Path) -> None:
    g = graph([{"id": 1, "model": MODEL}, {"id": 3, "model": MODEL, "pretrain": FIVE_DIGITS}],
              edge(0, 1, "ce"), edge(3, 1, "kl"))
    cache = TeacherCache(DataSpec("digits"), tmp_path / "teachers", quiet=True)
    batches: list[tuple[int, int]] = []
    with pytest.raises(KtgError, match=r"'kl'.*cm, lkd"):
        train(g, digits_data, teachers=cache, on_batch=lambda e, i: batches.append((e, i)))
    assert cache.trained == [] and batches == []
    assert list(tmp_path.rglob("*.pt")) == []                # the teacher was not even pre-trained


def test_teacher_pretrained_on_the_runs_classes_is_not_cross_task(tmp_path: Path) -> None:
    """``pretrain: {dataset: <the run's>}`` leaves classes to the run ("None fields mean 'the
    run's'"), so on a run over digits 0-4 the teacher has the run's 5 classes: a kl edge is fine
    and the teacher is scored like any same-task node."""
    spec = DataSpec("digits", classes=(0, 1, 2, 3, 4))
    data = spec.load()
    g = graph([{"id": 1, "model": MODEL}, {"id": 2, "model": MODEL, "pretrain": {"dataset": "digits"}}],
              edge(0, 1, "ce"), edge(2, 1, "kl"))
    cache = TeacherCache(spec, tmp_path, quiet=True)
    result = train(g, data, teachers=cache)
    assert classifier_rows(result.state_dicts()[2]) == 5
    reference = train(graph(1, edge(0, 1, "ce")), data)
    assert same_state(result.state_dicts()[2], reference.state_dicts()[1])
    assert result.nodes[2].test_acc == reference.nodes[1].test_acc


# --- non-finite losses -------------------------------------------------------------------

def test_huge_learning_rate_raises_non_finite_loss_naming_node_and_epoch(digits_data: ImageData) -> None:
    with pytest.raises(NonFiniteLoss, match=r"^node 1: .*NaN or inf.* epoch 1\b") as info:
        train(graph(1, edge(0, 1, "ce")), digits_data, recipe=Recipe(epochs=1, lr=1e30))
    assert isinstance(info.value, KtgError)


def test_non_finite_loss_names_the_node_and_epoch_where_it_happened(digits_val_data: ImageData) -> None:
    # Node 1 is healthy; node 2's edge blows up only from epoch index 1 (the 2nd epoch) on.
    g = graph(2, edge(0, 1, "ce"), edge(0, 2, "ce"), edge(1, 2, "kl", weight=1e30, epochs=[1, None]))
    epochs_done: list[int] = []
    with pytest.raises(NonFiniteLoss, match=r"^node 2: .* epoch 2\b"):
        train(g, digits_val_data, recipe=Recipe(epochs=3), on_epoch=lambda e, accs: epochs_done.append(e))
    assert epochs_done == [1]


# --- epoch windows -------------------------------------------------------------------------

def test_edge_window_that_never_opens_changes_nothing(
    digits_data: ImageData, labels_only_pair: RunResult, capsys: pytest.CaptureFixture[str]
) -> None:
    late = train(graph(2, edge(0, 1, "ce"), edge(0, 2, "ce"), edge(2, 1, "kl", epochs=[5, None])), digits_data)
    assert "never fires" in capsys.readouterr().out
    assert same_state(late.state_dicts()[1], labels_only_pair.state_dicts()[1])
    # The same edge open in epoch 0 does change node 1.
    early = train(graph(2, edge(0, 1, "ce"), edge(0, 2, "ce"), edge(2, 1, "kl", epochs=[0, 1])), digits_data)
    assert not same_state(early.state_dicts()[1], labels_only_pair.state_dicts()[1])


def test_edge_window_opens_at_its_start_epoch(digits_data: ImageData) -> None:
    def weights_per_epoch(g: Graph) -> list[dict[int, dict[str, Tensor]]]:
        states: list[RunState] = []
        train(g, digits_data, recipe=Recipe(epochs=2), on_state=states.append)
        return [s.weights for s in states]

    windowed = weights_per_epoch(graph(2, edge(0, 1, "ce"), edge(0, 2, "ce"), edge(2, 1, "kl", epochs=[1, None])))
    plain = weights_per_epoch(graph(2, edge(0, 1, "ce"), edge(0, 2, "ce")))
    assert same_state(windowed[0][1], plain[0][1])        # inactive in epoch 0
    assert not same_state(windowed[1][1], plain[1][1])    # active in epoch 1
    assert same_state(windowed[1][2], plain[1][2])


def test_node_whose_only_edge_opens_later_trains(digits_data: ImageData) -> None:
    """Node 2 learns only from node 1, from epoch index 1 on: before that it has no active
    edge, so its loss is 0 (an empty sum), not a crash."""
    g = graph(2, edge(0, 1, "ce"), edge(1, 2, "kl", epochs=[1, None]))
    result = train(g, digits_data, recipe=Recipe(epochs=2))
    assert result.epochs_done == 2
    assert all(torch.isfinite(v.float()).all() for v in result.state_dicts()[2].values())


# --- callbacks -------------------------------------------------------------------------

def _accuracy_by_hand(model: nn.Module, data: ImageData, x: Tensor, y: Tensor) -> float:
    mean = torch.tensor(data.mean).view(1, -1, 1, 1)
    std = torch.tensor(data.std).view(1, -1, 1, 1)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        _, logits = model((x.float() / 255.0 - mean) / std)
    model.train(was_training)
    return (logits.argmax(dim=1) == y).float().mean().item()


def test_on_epoch_reports_every_scored_node_each_epoch(digits_val_data: ImageData) -> None:
    data = digits_val_data
    assert data.val_x is not None and data.val_y is not None
    calls: list[tuple[int, dict[int, float]]] = []
    g = graph(2, edge(0, 1, "ce"), edge(0, 2, "ce"), edge(2, 1, "kl"))
    result = train(g, data, recipe=Recipe(epochs=2), on_epoch=lambda e, accs: calls.append((e, dict(accs))))
    assert [e for e, _ in calls] == [1, 2]
    for _, accs in calls:
        assert sorted(accs) == [1, 2]
        assert all(0.0 <= a <= 1.0 for a in accs.values())
    for nid in (1, 2):
        assert result.nodes[nid].val_acc == [accs[nid] for _, accs in calls]
        by_hand = _accuracy_by_hand(result.models[nid], data, data.val_x, data.val_y)
        assert calls[-1][1][nid] == pytest.approx(by_hand, abs=1.5 / len(data.val_y))
    assert calls[-1][1][1] > 0.2  # it learned something: the figure is not a constant


def test_raising_from_on_epoch_stops_the_run(digits_val_data: ImageData) -> None:
    class Stop(Exception):
        pass

    epochs: list[int] = []
    batch_epochs: set[int] = set()

    def on_epoch(epoch: int, accs: dict[int, float]) -> None:
        epochs.append(epoch)
        raise Stop

    with pytest.raises(Stop):
        train(graph(1, edge(0, 1, "ce")), digits_val_data, recipe=Recipe(epochs=3), on_epoch=on_epoch,
              on_batch=lambda e, i: batch_epochs.add(e))
    assert epochs == [1]
    assert batch_epochs == {0}


def test_evaluation_builds_no_autograd_graph(digits_val_data: ImageData) -> None:
    """Every forward in eval mode (the validation and test passes) runs with autograd off."""
    seen: list[bool] = []

    def record(module: nn.Module, inputs: Any, outputs: Any) -> None:
        if not module.training:
            seen.append(torch.is_grad_enabled())

    handle = nn.modules.module.register_module_forward_hook(record)
    try:
        train(graph(1, edge(0, 1, "ce")), digits_val_data)
    finally:
        handle.remove()
    assert seen and not any(seen)


# --- the front door: ktg.train ----------------------------------------------------------

@pytest.mark.parametrize("form", ["dict and name", "file and ImageData", "Graph and DataSpec"])
def test_ktg_train_is_train_graph_in_one_call(digits_data: ImageData, alone: RunResult, tmp_path: Path,
                                               form: str) -> None:
    import ktg

    raw = {"format": "ktg-graph/1", "nodes": [{"id": 1, "model": MODEL}], "edges": [edge(0, 1, "ce")]}
    (tmp_path / "g.json").write_text(json.dumps(raw))
    source, dataset = {"dict and name": (raw, "digits"),
                       "file and ImageData": (str(tmp_path / "g.json"), digits_data),
                       "Graph and DataSpec": (ktg.Graph.from_dict(raw), ktg.DataSpec("digits"))}[form]
    result = ktg.train(source, dataset, epochs=1, device="cpu", cache_dir=tmp_path / "cache")
    assert isinstance(result, ktg.RunResult)
    assert same_state(result.state_dicts()[1], alone.state_dicts()[1])
    assert result.nodes[1].test_acc == alone.nodes[1].test_acc


# --- accelerated paths on the CPU ------------------------------------------------------

def test_bf16_autocast_and_channels_last_on_cpu(digits_val_data: ImageData) -> None:
    accel = Accel(torch.device("cpu"), bf16=True, channels_last=True)
    g = graph([{"id": 1, "model": MODEL}, {"id": 2, "model": "mobilenet-0.25"}],
              edge(0, 1, "ce"), edge(0, 2, "ce"), edge(2, 1, "kl", temperature=4.0), edge(1, 2, "cm"))
    result = train(g, digits_val_data, accel=accel)
    for nid in (1, 2):
        node = result.nodes[nid]
        assert len(node.val_acc) == 1 and math.isfinite(node.val_acc[0]) and 0.0 <= node.val_acc[0] <= 1.0
        assert node.test_acc is not None and math.isfinite(node.test_acc) and 0.0 <= node.test_acc <= 1.0
        assert all(torch.isfinite(v.float()).all() for v in result.state_dicts()[nid].values())


# --- the learning-rate schedule --------------------------------------------------

def test_without_warmup_the_schedule_is_the_papers_multistep() -> None:
    recipe = Recipe(epochs=10, warmup_steps=0)
    spe = 7
    reference = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    multistep = torch.optim.lr_scheduler.MultiStepLR(reference, milestones=[3, 6, 9], gamma=0.1)
    for epoch in range(10):
        expected = reference.param_groups[0]["lr"]
        for step in range(epoch * spe, (epoch + 1) * spe):
            assert recipe.lr_factor(step, spe) == pytest.approx(expected, rel=1e-12)
        reference.step()  # no gradients: changes nothing, but keeps the scheduler's call order
        multistep.step()


def test_warmup_is_linear_and_ends_at_the_first_milestone() -> None:
    long_runs = Recipe(epochs=10, warmup_steps=8)  # 8 steps < the first milestone (epoch 3 = step 15)
    assert [long_runs.lr_factor(k, 5) for k in range(10)] == pytest.approx([1 / 8, 2 / 8, 3 / 8, 4 / 8, 5 / 8,
                                                                            6 / 8, 7 / 8, 1, 1, 1])
    capped = Recipe(epochs=10, warmup_steps=500)  # capped at step 15, where the lr drops to 0.1
    assert capped.lr_factor(0, 5) == pytest.approx(1 / 15)
    assert capped.lr_factor(14, 5) == pytest.approx(1.0)
    assert capped.lr_factor(15, 5) == pytest.approx(0.1)
    assert capped.lr_factor(49, 5) == pytest.approx(0.001)
    with pytest.raises(KtgError, match=r"warmup_steps: got -1; allowed: an integer >= 0"):
        Recipe(warmup_steps=-1).check()


def test_the_optimizer_follows_the_schedule_step_by_step(digits_data: ImageData) -> None:
    recipe = Recipe(epochs=2, lr=0.05, warmup_steps=30, milestones=(0.9,))  # warm-up, then one drop
    spe = len(digits_data.train_y) // recipe.batch_size
    states: list[RunState] = []
    train(graph(1, edge(0, 1, "ce")), digits_data, recipe=recipe, on_state=states.append)
    # The lr of the last step of each epoch, as the saved optimizer state holds it.
    seen = [s.optimizer["param_groups"][0]["lr"] for s in states]
    assert [s.step for s in states] == [spe, 2 * spe]
    assert seen == pytest.approx([0.05 * recipe.lr_factor(k * spe - 1, spe) for k in (1, 2)])
    assert recipe.lr_factor(29, spe) == pytest.approx(1.0) and recipe.lr_factor(0, spe) == pytest.approx(1 / 30)


@pytest.mark.slow
def test_mutual_learning_learns_digits(digits_data: ImageData) -> None:
    """DML on digits with the default recipe: both peers learn (lr 0.1 from step 0 left one at 25 %)."""
    g = graph([{"id": 1, "model": "resnet20"}, {"id": 2, "model": "resnet20"}],
              edge(0, 1, "ce"), edge(0, 2, "ce"), edge(2, 1, "kl"), edge(1, 2, "kl"))
    result = train(g, digits_data, recipe=Recipe(epochs=12))
    assert all(result.nodes[nid].test_acc >= 0.9 for nid in (1, 2)), {n: r.test_acc for n, r in result.nodes.items()}
