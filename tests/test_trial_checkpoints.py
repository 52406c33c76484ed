"""Per-epoch run states (the engine) and per-epoch trial checkpoints (the search).

The engine's half of the determinism contract across interruptions: on the CPU,
a run resumed from its epoch-k state ends with exactly (``torch.equal``) the
weights and per-epoch accuracies of a run that never stopped. The graph has a
frozen teacher (pre-trained through the teacher cache, never saved in a state)
and a ``linear`` gate, whose weight reads the step counter the state carries.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
from optuna.trial import TrialState

from ktg.data import ImageData
from ktg.device import Accel
from ktg.errors import KtgError
from ktg.graph import Graph
from ktg.recipe import Recipe
from ktg.run import RunHooks, RunSetup
from ktg.run_state import RunState
from ktg.teachers import TeacherCache
from ktg.trainer import RunResult
from search.tune.checkpoints import CheckpointBook, book_of, drop_older_checkpoints, folder_bytes
from tests.conftest import DIGITS_VAL
from tests.search_helpers import AS_BEFORE, TINY_MODELS, ktg_env, load, run_ktg

CPU = Accel(torch.device("cpu"))
RECIPE = Recipe(epochs=3, warmup_steps=5)
STOP_AFTER = 1  # epochs done by the state the resumed run starts from


def edge(source: int, target: int, loss: str, gate: str = "through") -> dict[str, Any]:
    return {"source": source, "target": target, "loss": loss, "gate": gate}


# Node 2 is a frozen teacher (no incoming edge); node 3 learns mutually with node 1.
GRAPH = Graph.from_dict({
    "format": "ktg-graph/1",
    "nodes": [{"id": 1, "model": "wrn16-1"}, {"id": 2, "model": "wrn16-1"}, {"id": 3, "model": "resnet20"}],
    "edges": [edge(0, 1, "ce"), edge(2, 1, "kl", "linear"), edge(3, 1, "kl", "correct"),
              edge(0, 3, "ce"), edge(1, 3, "kl")],
})


def run(data: ImageData, cache: Path, **kwargs: Any) -> tuple[RunResult, list[RunState]]:
    states: list[RunState] = []
    setup = RunSetup(data, CPU, teachers=TeacherCache(DIGITS_VAL, cache, quiet=True))
    result = setup.train(GRAPH, RECIPE, seed=3, evaluate_test=False, hooks=RunHooks(on_state=states.append), **kwargs)
    return result, states


@pytest.fixture(scope="module")
def unstopped(digits_val_data: ImageData, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, RunResult,
                                                                                             list[RunState]]:
    cache = tmp_path_factory.mktemp("teachers")
    return (cache, *run(digits_val_data, cache))


def test_a_resumed_run_ends_exactly_as_one_that_never_stopped(
        digits_val_data: ImageData, unstopped: tuple[Path, RunResult, list[RunState]], tmp_path: Path) -> None:
    cache, whole, states = unstopped
    assert [s.epochs_done for s in states] == [1, 2, 3]
    path = tmp_path / "state.pt"
    states[STOP_AFTER - 1].save(path)  # through the disk, as a trial checkpoint goes
    resumed, later = run(digits_val_data, cache, resume=RunState.load(path))
    assert [s.epochs_done for s in later] == [2, 3]
    for nid in (1, 2, 3):
        assert resumed.nodes[nid].val_acc == whole.nodes[nid].val_acc
        mine, theirs = resumed.state_dicts()[nid], whole.state_dicts()[nid]
        assert mine.keys() == theirs.keys()
        assert all(torch.equal(mine[k], theirs[k]) for k in mine), nid  # BatchNorm buffers included
    assert later[-1].step == states[-1].step and later[-1].val_acc == states[-1].val_acc


def test_a_state_holds_the_trained_nodes_only(digits_val_data: ImageData,
                                              unstopped: tuple[Path, RunResult, list[RunState]]) -> None:
    """The frozen teacher comes back from the cache: it is never in a state."""
    _, whole, states = unstopped
    state = states[0]
    assert sorted(state.weights) == [1, 3]
    assert any("running_mean" in k for k in state.weights[1])
    assert state.optimizer["state"] and all("momentum_buffer" in s for s in state.optimizer["state"].values())
    assert state.step == len(digits_val_data.train_y) // RECIPE.batch_size  # one epoch of steps
    assert state.val_acc[1] == whole.nodes[1].val_acc[:1]


def test_a_state_resumes_only_its_own_run(digits_val_data: ImageData,
                                          unstopped: tuple[Path, RunResult, list[RunState]]) -> None:
    cache, _, states = unstopped
    with pytest.raises(KtgError, match="another graph, recipe or seed"):
        RunSetup(digits_val_data, CPU, teachers=TeacherCache(DIGITS_VAL, cache, quiet=True)).train(
            GRAPH, RECIPE, seed=4, evaluate_test=False, resume=states[0])


def test_a_file_that_is_not_a_state_is_one_clear_error(tmp_path: Path) -> None:
    torch.save({"a": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(KtgError, match="is not a run state"):
        RunState.load(tmp_path / "other.pt")
    with pytest.raises(KtgError, match="cannot read a run state"):
        RunState.load(tmp_path / "missing.pt")


def ray_trial_dirs(out: Path) -> dict[int, Path]:
    """Optuna trial number -> its Ray trial folder (``trial_number`` is in the config)."""
    return {json.loads(p.read_text())["trial_number"]: p.parent for p in out.glob("ray/*/*/params.json")}


# -- which checkpoints a search keeps (search.tune.checkpoints) ----------------------------------

def fake_trial_dir(root: Path, number: int, size: int, index: int = 0) -> Path:
    """A Tune trial folder holding one checkpoint folder of ``size`` bytes."""
    trial_dir = root / f"train_trial_{number:05d}"
    (trial_dir / f"checkpoint_{index:06d}").mkdir(parents=True)
    (trial_dir / f"checkpoint_{index:06d}" / "state.pt").write_bytes(b"x" * size)
    (trial_dir / "params.json").write_text(json.dumps({"trial_number": number}))
    return trial_dir


def test_a_failed_trial_loses_its_checkpoints(tmp_path: Path) -> None:
    book = CheckpointBook(keep_best=5, budget_bytes=10**6)
    trial_dir = fake_trial_dir(tmp_path, 0, 10)
    (trial_dir / "checkpoint_000001").mkdir()  # one Tune had no time to delete
    book.ended(0, "fail", trial_dir)
    assert list(trial_dir.glob("checkpoint_*")) == [] and book.kept == {}


def test_only_the_top_complete_trials_keep_theirs(tmp_path: Path) -> None:
    book = CheckpointBook(keep_best=2, budget_bytes=0)
    dirs = {n: fake_trial_dir(tmp_path, n, 10) for n in range(4)}
    for number, value in [(0, 0.5), (1, 0.9), (2, 0.7), (3, 0.6)]:
        book.ended(number, "complete", dirs[number], value)
    assert sorted(book.kept) == [1, 2]
    assert [n for n, d in dirs.items() if list(d.glob("checkpoint_*"))] == [1, 2]


def test_pruned_checkpoints_fit_the_budget_lowest_ranked_at_its_rung_first(tmp_path: Path) -> None:
    """Rung 1: trials 0-3; trial 3 was beaten by all three others there. Rung 2: trials 0 and 1."""
    book = CheckpointBook(keep_best=5, budget_bytes=25)
    for number, accs in {0: [0.9, 0.8], 1: [0.8, 0.9], 2: [0.7], 3: [0.6]}.items():
        for epoch, acc in enumerate(accs, 1):
            book.saw(number, epoch, acc)
    dirs = {n: fake_trial_dir(tmp_path, n, 10) for n in range(4)}
    book.ended(2, "pruned", dirs[2])
    book.ended(3, "pruned", dirs[3])
    assert sorted(book.kept) == [2, 3]  # 20 bytes fit
    book.ended(0, "pruned", dirs[0])  # 30: trial 3 (beaten by 3 of 4 at rung 1) goes
    assert sorted(book.kept) == [0, 2] and book.deleted == [3]
    book.pin(2)  # a live trial continues from 2: it stays, whatever its rank
    book.ended(1, "pruned", dirs[1])  # 30 again: 0 is beaten by 1 of 2 at rung 2, 2 pinned, 1 by none
    assert sorted(book.kept) == [1, 2] and book.deleted == [3, 0]
    book.unpin(2)
    book.enforce()
    assert sorted(book.kept) == [1, 2]  # 20 bytes: within the budget again


def test_a_restarted_search_reads_the_checkpoints_on_disk(tmp_path: Path) -> None:
    """What a driver left behind: kept by the rules it would have applied, the rest deleted."""
    study = optuna.create_study(direction="maximize")
    for state, value, attrs in [(TrialState.COMPLETE, 0.9, {}), (TrialState.COMPLETE, 0.8, {}),
                                (TrialState.FAIL, None, {}), (TrialState.FAIL, None, {"interrupted": True}),
                                (TrialState.PRUNED, 0.5, {})]:
        study.add_trial(optuna.trial.create_trial(state=state, value=value, user_attrs=attrs,
                                                  intermediate_values={1: value or 0.1}))
    dirs = {n: fake_trial_dir(tmp_path, n, 10) for n in range(5)}
    stranger = fake_trial_dir(tmp_path, 99, 10)
    book = book_of(study.get_trials(), keep_best=1, budget_bytes=10**6, experiment_dir=tmp_path)
    assert sorted(book.kept) == [0, 3, 4]  # the best COMPLETE, the interrupted one (its copy continues), PRUNED
    assert [n for n, d in dirs.items() if list(d.glob("checkpoint_*"))] == [0, 3, 4]
    assert not list(stranger.glob("checkpoint_*"))


@pytest.mark.slow
def test_a_search_keeps_the_best_checkpoint_only(tmp_path: Path, ray_tmp: Path) -> None:
    """``--keep-best 1 --checkpoint-gb 0``: one checkpoint left, the best COMPLETE trial's whole run."""
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    out = tmp_path / "out"
    res = run_ktg(["search", "--nodes", "2", "--trials", "5", "--epochs", "4", "--study", "ckpt", "--storage", url,
                   "--out", str(out), *TINY_MODELS, "--workers", "2", "--keep-best", "1", "--checkpoint-gb", "0",
                   *AS_BEFORE],
                  tmp_path, ktg_env(ray_tmp))
    assert res.rc == 0, res.stdout + res.stderr[-4000:]
    trials = {t.number: t for t in load(url, "ckpt").get_trials()}
    left = {number: sorted(d.glob("checkpoint_*")) for number, d in ray_trial_dirs(out).items()}
    assert all(len(found) <= 1 for found in left.values()), left
    best = max((t for t in trials.values() if t.state == TrialState.COMPLETE), key=lambda t: (t.value, -t.number))
    assert [n for n, found in left.items() if found] == [best.number]
    state = RunState.load(left[best.number][0] / "state.pt")
    assert state.epochs_done == 4 and state.val_acc[1] == [best.intermediate_values[e] for e in range(1, 5)]
    frozen = Graph.from_dict(best.user_attrs["graph"]).frozen_ids
    assert sorted(state.weights) == [n for n in (1, 2) if n not in frozen]
    print(f"checkpoint of a 2-node trial: {folder_bytes(left[best.number][0]):,} bytes")


def test_a_running_trial_keeps_its_two_newest_checkpoints(tmp_path: Path) -> None:
    for epoch in range(4):
        (tmp_path / f"checkpoint_{epoch:06d}").mkdir()
    (tmp_path / "result.json").write_text("{}")
    drop_older_checkpoints(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_000002", "checkpoint_000003", "result.json"]
    drop_older_checkpoints(tmp_path, keep=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_000003", "result.json"]
