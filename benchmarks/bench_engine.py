"""Engine overhead: one graph step vs the same models trained one by one, and vs DML.

For M = 2, 3, 4 nodes (all ResNet-32, then mixed models), fully connected with
``through`` ``kl`` edges, it prints

    graph step / sum of the single-model steps on the same batch   (target <= 1.10)
    DML-style step (re-forward after each node's update) / sum of single steps

measured side by side in one run. Print only; never asserts.

    python benchmarks/bench_engine.py [--steps 20] [--batch 64] [--size 32]
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from ktg.data import Augment, ImageData
from ktg.device import Accel
from ktg.graph import Graph
from ktg.losses import kl_loss
from ktg.models import build_model
from ktg.recipe import Recipe
from ktg.run import RunHooks, RunSetup

CONFIGS = {
    "resnet32 x2": ["resnet32"] * 2,
    "resnet32 x3": ["resnet32"] * 3,
    "resnet32 x4": ["resnet32"] * 4,
    "mixed x2": ["resnet32", "wrn16-2"],
    "mixed x3": ["resnet32", "wrn16-2", "mobilenet-0.5"],
    "mixed x4": ["resnet32", "wrn16-2", "mobilenet-0.5", "resnet20"],
}


def fake_data(n: int, size: int, classes: int = 10) -> ImageData:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    return ImageData(name="bench", train_x=x, train_y=y, val_x=None, val_y=None, test_x=x[:2], test_y=y[:2],
                     num_classes=classes, classes=None, mean=(0.5,) * 3, std=(0.25,) * 3,
                     augment=Augment(pad=4, flip=True))


def full_graph(models: list[str]) -> Graph:
    ids = range(1, len(models) + 1)
    edges = [{"source": 0, "target": t, "loss": "ce", "gate": "through"} for t in ids]
    edges += [{"source": s, "target": t, "loss": "kl", "gate": "through"} for t in ids for s in ids if s != t]
    return Graph.from_dict({"format": "ktg-graph/1", "edges": edges,
                            "nodes": [{"id": i, "model": m} for i, m in zip(ids, models, strict=True)]})


def seconds_per_step(graph: Graph, data: ImageData, batch: int, accel: Accel) -> float:
    recipe = Recipe(epochs=2, batch_size=batch)
    stamps: list[float] = []
    hooks = RunHooks(on_batch=lambda epoch, i: stamps.append(time.perf_counter()) if epoch == 1 else None)
    RunSetup(data, accel).train(graph, recipe, hooks=hooks, evaluate_test=False)
    return (stamps[-1] - stamps[0]) / (len(stamps) - 1)  # epoch 2 only: warm caches


def dml_seconds_per_step(models: list[str], data: ImageData, batch: int, steps: int) -> float:
    """DML's update: after each node's step, every node is run again on the batch."""
    nets = []
    for i, name in enumerate(models):
        torch.manual_seed(i)
        nets.append(build_model(name, in_channels=3, num_classes=data.num_classes, image_size=data.image_size))
    opts = [torch.optim.SGD(n.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4) for n in nets]
    x = (data.train_x[:batch].float() / 255 - 0.5) / 0.25
    y = data.train_y[:batch]
    times = []
    for _ in range(steps + 2):
        t0 = time.perf_counter()
        for i, opt in enumerate(opts):
            logits = [n(x)[1] for n in nets]  # the re-forward DML pays per node
            loss = F.cross_entropy(logits[i], y) + sum(
                kl_loss(logits[j].detach(), logits[i], 1.0).mean() for j in range(len(nets)) if j != i)
            opt.zero_grad()
            loss.backward()
            opt.step()
        times.append(time.perf_counter() - t0)
    return sum(times[2:]) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    accel = Accel.resolve(args.device)
    data = fake_data(args.batch * args.steps, args.size)
    print(f"device {accel.device}, batch {args.batch}, {args.size}x{args.size} images, "
          f"{args.steps} timed steps, {torch.get_num_threads()} threads")
    print(f"{'graph':<14} {'graph step s':>12} {'sum single s':>12} {'graph/sum':>10} {'DML/sum':>8}")
    for label, models in CONFIGS.items():
        # Interleaved rounds, best of each: a busy machine slows a round, never speeds it up.
        graph_s, alone = float("inf"), float("inf")
        for _ in range(args.rounds):
            alone = min(alone, sum(seconds_per_step(full_graph([m]), data, args.batch, accel) for m in models))
            graph_s = min(graph_s, seconds_per_step(full_graph(models), data, args.batch, accel))
        dml = dml_seconds_per_step(models, data, args.batch, args.steps) if accel.device.type == "cpu" else float("nan")
        print(f"{label:<14} {graph_s:>12.4f} {alone:>12.4f} {graph_s / alone:>10.3f} {dml / alone:>8.2f}")


if __name__ == "__main__":
    main()
