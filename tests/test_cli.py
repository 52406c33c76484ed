"""`ktg train` and `ktg show` end to end, as a user runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import torch

from ktg.models import build_model

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def ktg(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ktg.cli", *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "KTG_CACHE_DIR": str(cwd / "cache"), **(env or {})}, timeout=600)


@pytest.mark.slow
@pytest.mark.parametrize("example", sorted(p.name for p in EXAMPLES.glob("*.json")))
def test_train_each_example_on_digits(example: str, tmp_path: Path) -> None:
    epochs = "3" if example == "refilled.json" else "1"  # refilled's stage 2 starts at epoch 2
    run = ktg("train", "--graph", str(EXAMPLES / example), "--dataset", "digits", "--epochs", epochs,
              "--val-fraction", "0.2", "--out", "out", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    graph = json.loads((EXAMPLES / example).read_text())
    assert [n["id"] for n in results["nodes"]] == sorted(n["id"] for n in graph["nodes"])
    for node in results["nodes"]:
        state = torch.load(tmp_path / "out" / f"node{node['id']}.pt", weights_only=True)
        model = build_model(node["model"], in_channels=1, num_classes=len(state[list(state)[-1]]),
                            image_size=8)
        model.load_state_dict(state)  # the file is a plain state_dict of that model
        if not node["frozen"]:
            assert 0.0 <= node["test_acc"] <= 1.0 and 0.0 <= node["val_acc"] <= 1.0
    assert "test acc" in run.stdout and "node" in run.stdout


@pytest.mark.slow
def test_seeds_give_mean_and_std_and_per_seed_checkpoints(tmp_path: Path) -> None:
    run = ktg("train", "--graph", str(EXAMPLES / "independent.json"), "--epochs", "1", "--seeds", "2",
              "--seed", "5", "--out", "out", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    node = results["nodes"][0]
    assert results["seeds"] == [5, 6]
    assert len(node["test_acc_per_seed"]) == 2
    assert node["test_acc"] == pytest.approx(sum(node["test_acc_per_seed"]) / 2)
    assert "±" in run.stdout
    a = torch.load(tmp_path / "out" / "seed5" / "node1.pt", weights_only=True)
    b = torch.load(tmp_path / "out" / "seed6" / "node1.pt", weights_only=True)
    assert any(not torch.equal(a[k], b[k]) for k in a)  # two seeds, two different networks


@pytest.mark.slow
def test_a_trained_node_is_a_checkpoint_for_a_frozen_teacher(tmp_path: Path) -> None:
    assert ktg("train", "--graph", str(EXAMPLES / "independent.json"), "--epochs", "1", "--out", "t",
               cwd=tmp_path).returncode == 0
    graph = {"format": "ktg-graph/1",
             "nodes": [{"id": 1, "model": "resnet20"}, {"id": 2, "model": "resnet32", "checkpoint": "t/node1.pt"}],
             "edges": [{"source": 0, "target": 1, "loss": "ce", "gate": "through"},
                       {"source": 2, "target": 1, "loss": "kl", "gate": "correct"}]}
    (tmp_path / "kd.json").write_text(json.dumps(graph))
    run = ktg("train", "--graph", "kd.json", "--epochs", "1", "--out", "s", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    teacher = torch.load(tmp_path / "t" / "node1.pt", weights_only=True)
    after = torch.load(tmp_path / "s" / "node2.pt", weights_only=True)
    assert all(torch.equal(teacher[k], after[k]) for k in teacher)  # frozen: bit-identical
    results = json.loads((tmp_path / "s" / "results.json").read_text())
    assert results["nodes"][1]["frozen"] is True


def test_show_writes_svg_and_lists_edges(tmp_path: Path) -> None:
    run = ktg("show", str(EXAMPLES / "kd.json"), "-o", "kd.svg", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    root = ET.parse(tmp_path / "kd.svg").getroot()
    assert root.tag.endswith("svg")
    assert "kl" in run.stdout and "frozen: 2" in run.stdout


@pytest.mark.parametrize(("args", "fragment"), [
    (["train", "--graph", "missing.json"], "graph: cannot read missing.json"),
    (["train", "--graph", "{examples}/kd.json", "--dataset", "emnist"], "dataset: got 'emnist'; allowed: cifar10"),
    (["train", "--graph", "{examples}/kd.json", "--dataset", "cifar10", "--data-dir", "nowhere"],
     "data_batch_1"),
    (["train", "--graph", "{examples}/kd.json", "--epochs", "0"], "--epochs: got 0; allowed: an integer >= 1"),
    (["train", "--graph", "{examples}/kd.json", "--lr", "-1"], "--lr: got -1.0; allowed: a finite number > 0"),
    (["train", "--graph", "{examples}/kd.json", "--warmup-steps", "-1"], "--warmup-steps: got -1; allowed: an int"),
    (["train", "--graph", "{examples}/kd.json", "--batch-size", "1"], "--batch-size: got 1; allowed: an integer >= 2"),
    (["train", "--graph", "{examples}/kd.json", "--classes", "3-1"], "classes"),
    (["train", "--graph", "{examples}/kd.json", "--device", "tpu"], "device: got 'tpu'"),
    (["train", "--graph", "{examples}/kd.json", "--seeds", "0"], "--seeds: got 0"),
    (["train", "--graph", "{examples}/kd.json", "--milestones", "a,b"], "--milestones"),
])
def test_bad_input_is_one_clear_line(args: list[str], fragment: str, tmp_path: Path) -> None:
    run = ktg(*[a.format(examples=EXAMPLES) for a in args], cwd=tmp_path)
    assert run.returncode == 2
    assert fragment in run.stderr
    assert "Traceback" not in run.stderr + run.stdout
    assert len(run.stderr.strip().splitlines()) == 1
