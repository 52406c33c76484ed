"""Given teachers (issue 18): pre-trained checkpoints as nodes the search may use.

The spec and its ``--teacher`` flag, the space with teachers (counted by brute
force), the teacher-KD hand-made graph, the check of a teacher against the data
(one line per mismatch), a teacher frozen bit for bit through a trial's training,
the 422 over HTTP, and (slow) a real search whose exported graph re-trains with
``ktg train`` to its trial's numbers.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient
from optuna.trial import FixedTrial

from api.settings import Settings
from ktg.data import ImageData
from ktg.device import Accel
from ktg.graph import LABEL_NODE, TARGET_NODE, Graph
from ktg.models import build_model
from ktg.recipe import Recipe
from ktg.run import RunHooks, RunSetup
from ktg.run_state import RunState
from search.baselines import GIVEN_TEACHER_TEMPERATURE, given_teacher_kd
from search.cli import build_spec
from search.commands import add_spec_flags
from search.space import sample_graph, space_size
from search.spec import SearchSpec
from search.teachers import teacher_files, teacher_misfits, with_teacher_files
from tests import api_fixtures
from tests.api_fixtures import ALICE, app_fixture, client_fixture  # noqa: F401
from tests.postgres import postgres_url  # noqa: F401
from tests.search_helpers import AS_BEFORE, brute_force_space, ktg_env, load, run_ktg, sampled_graphs

TEACHER_MODEL = "resnet8"


def save_teacher(path: Path, *, model: str = TEACHER_MODEL, channels: int = 1, classes: int = 10,
                 seed: int = 0) -> Path:
    """A state_dict as ``ktg train`` writes it (weights only), of freshly drawn weights."""
    torch.manual_seed(seed)
    torch.save(build_model(model, in_channels=channels, num_classes=classes, image_size=8).state_dict(), path)
    return path


def spec_with(checkpoint: str, **fields: Any) -> SearchSpec:
    base = dict(name="t", nodes=2, trials=1, target_model="resnet8", models=["resnet8"],
                teachers=[{"name": "big", "model": TEACHER_MODEL, "checkpoint": checkpoint}])
    return SearchSpec.model_validate({**base, **fields})


# -- the spec and its flag ------------------------------------------------------------------

def parse_flags(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_spec_flags(p)
    return p.parse_args(argv)


def test_teacher_flag_repeats_and_fills_the_spec() -> None:
    args = parse_flags(["--study", "s", "--nodes", "3", "--trials", "2", "--teacher", "a=resnet20:t/a.pt",
                        "--teacher", "b=wrn16-1:/abs/b:c.pt", "--temperatures", "2,8"])
    spec = build_spec(args, None, {})
    assert [(t.name, t.model, t.checkpoint) for t in spec.teachers] == [
        ("a", "resnet20", "t/a.pt"), ("b", "wrn16-1", "/abs/b:c.pt")]  # a path may hold ':'
    assert spec.temperatures == [2.0, 8.0]
    assert SearchSpec(name="s", nodes=2, trials=1).temperatures == [1.0, 2.0, 4.0]


@pytest.mark.parametrize(("flags", "expected"), [
    (["--teacher", "a-resnet20"], "--teacher: got 'a-resnet20'; allowed: NAME=MODEL:PATH"),
    (["--teacher", "a=resnet21:x.pt"], "--teacher: got 'resnet21'; allowed: resnet<depth>"),
    (["--teacher", "a=resnet20:x.pt", "--teacher", "a=resnet8:y.pt"], "--teacher: teacher 'a' is named twice"),
    (["--temperatures", "0"], "--temperatures: Input should be greater than 0"),
])
def test_bad_teacher_flags_are_one_line(flags: list[str], expected: str) -> None:
    from ktg.errors import KtgError

    with pytest.raises(KtgError) as caught:
        build_spec(parse_flags(["--study", "s", "--nodes", "2", "--trials", "1", *flags]), None, {})
    assert str(caught.value).startswith(expected) and "\n" not in str(caught.value)


# -- the space ----------------------------------------------------------------------------------

SPACES = [
    dict(nodes=2, models=["resnet8"], gates=["through", "cutoff"], losses=["kl"], teachers=("a",),
         temperatures=(1.0, 4.0)),
    dict(nodes=2, models=["resnet8", "wrn16-1"], gates=["through", "linear"], losses=["kl", "cm"],
         teachers=("a", "b"), temperatures=(2.0,)),
    dict(nodes=3, models=["resnet8"], gates=["through", "cutoff"], losses=["kl"], teachers=("a",),
         temperatures=(1.0, 2.0)),
]


def space_spec(fields: dict[str, Any]) -> SearchSpec:
    teachers = [{"name": n, "model": TEACHER_MODEL, "checkpoint": f"{n}.pt"} for n in fields["teachers"]]
    return SearchSpec(name="s", trials=1, target_model="resnet8", **{**fields, "teachers": teachers,
                                                                     "temperatures": list(fields["temperatures"])})


@pytest.mark.parametrize("fields", SPACES)
def test_space_size_with_teachers_matches_brute_force(fields: dict[str, Any]) -> None:
    assert space_size(space_spec(fields)) == brute_force_space(**fields)


def test_sampler_reaches_exactly_the_counted_space_with_a_teacher() -> None:
    """Every assignment of every parameter the sampler may ask for, through ``sample_graph``."""
    fields = SPACES[0]
    spec = space_spec(fields)
    universe: dict[str, list[Any]] = {"model_2": ["resnet8", "teacher:a"]}
    for s, t in [(0, 1), (2, 1), (0, 2), (1, 2)]:
        universe[f"gate_{s}_{t}"] = spec.gates
    universe["temperature_2_1"] = spec.temperatures
    assert len(sampled_graphs(universe, spec)) == space_size(spec) == brute_force_space(**fields)


def test_a_teacher_node_is_frozen_with_its_checkpoint_and_its_edge_records_gate_and_temperature() -> None:
    spec = space_spec(SPACES[2])
    params = {"model_2": "teacher:a", "model_3": "resnet8", "gate_0_1": "through", "gate_2_1": "through",
              "temperature_2_1": 2.0, "gate_3_1": "cutoff", "gate_0_3": "through", "gate_1_3": "cutoff",
              "gate_2_3": "through", "temperature_2_3": 1.0}
    raw, why = sample_graph(FixedTrial(params), spec)
    graph = Graph.from_dict(raw)
    assert why is None
    assert graph.node(2).checkpoint == "a.pt" and graph.node(2).model == TEACHER_MODEL  # as the spec names it
    assert graph.is_frozen(2) and not [e for e in raw["edges"] if e["target"] == 2]
    out_of_teacher = {(e.target, e.gate, e.temperature) for e in graph.edges if e.source == 2}
    assert out_of_teacher == {(1, "through", 2.0), (3, "through", 1.0)}


def test_teacher_kd_is_the_draw_its_params_name() -> None:
    for fields in ({**SPACES[2], "temperatures": (2.0, GIVEN_TEACHER_TEMPERATURE)}, {**SPACES[0], "temperatures": (GIVEN_TEACHER_TEMPERATURE,)}):
        spec = space_spec(fields)
        kd = given_teacher_kd(spec, spec.teachers[0])
        assert kd.name == "kd:teacher:a" and kd.params is not None
        drawn, why = sample_graph(FixedTrial(kd.params), spec)
        assert why is None
        expected = {"nodes": [{"id": 1, "model": "resnet8"}, {"id": 2, "model": TEACHER_MODEL, "checkpoint": "a.pt"}],
                    "edges": [{"source": 0, "target": 1, "loss": "ce", "gate": "through"},
                              {"source": 2, "target": 1, "loss": "kl", "gate": "through", "temperature": 4.0}]}
        assert {k: kd.graph[k] for k in ("nodes", "edges")} == expected
        assert Graph.from_dict(drawn).training_key(TARGET_NODE) == Graph.from_dict(kd.graph).training_key(TARGET_NODE)
    # T = 4 outside --temperatures: the graph is still given, but no draw of the space makes it
    outside_spec = space_spec({**SPACES[0], "temperatures": (1.0, 2.0)})
    outside = given_teacher_kd(outside_spec, outside_spec.teachers[0])
    assert outside.params is None and outside.graph["edges"][1]["temperature"] == 4.0


# -- the check against the data -------------------------------------------------------------------

@pytest.mark.parametrize(("teacher", "reason"), [
    (dict(), None),
    (dict(classes=5), "it predicts 5 classes; allowed: the data's 10"),
    (dict(channels=3), "it takes 3-channel images; allowed: the data's 1"),
    (dict(model="resnet20"), "it is not a resnet8 (it has no place for 'layers.3.conv1.weight' and"),
    (dict(model="wrn16-1"), "it is not a resnet8 (it lacks"),
])
def test_a_teacher_that_does_not_fit_the_data_is_one_line(tmp_path: Path, teacher: dict[str, Any],
                                                          reason: str | None) -> None:
    path = save_teacher(tmp_path / "t.pt", **teacher)
    spec = spec_with(str(path))
    misfits = teacher_misfits(spec)  # digits: 10 classes, 1 channel
    if reason is None:
        assert misfits == []
        return
    ((index, line),) = misfits
    assert index == 0 and "\n" not in line
    assert line.startswith(f"teacher 'big' ({TEACHER_MODEL}, {path}): {reason}")


def test_ktg_search_refuses_a_misfit_teacher_in_one_line_and_leaves_nothing(tmp_path: Path, ray_tmp: Path) -> None:
    save_teacher(tmp_path / "c3.pt", channels=3)
    res = run_ktg(["search", "--study", "s", "--nodes", "2", "--trials", "1", "--teacher", f"big={TEACHER_MODEL}:c3.pt",
                   "--storage", f"sqlite:///{tmp_path / 's.db'}", "--out", str(tmp_path / "out")],
                  tmp_path, ktg_env(ray_tmp), timeout=300)
    assert res.rc != 0
    lines = res.stderr.strip().splitlines()
    assert lines == [f"ktg search: error: --teacher: teacher 'big' ({TEACHER_MODEL}, c3.pt): "
                     "it takes 3-channel images; allowed: the data's 1"]
    assert not (tmp_path / "s.db").exists()


# -- frozen through a trial ---------------------------------------------------------------------

def test_a_teacher_trains_nothing_and_stays_out_of_the_run_state(tmp_path: Path, digits_val_data: ImageData,
                                                                 cpu_accel: Accel) -> None:
    """What a trial runs (``search.tune.trial``): the drawn graph, its teachers' files, RunSetup.train."""
    path = save_teacher(tmp_path / "big.pt")
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    spec = spec_with("big.pt")
    raw, _ = sample_graph(FixedTrial({"model_2": "teacher:big", "gate_0_1": "through", "gate_2_1": "through",
                                      "temperature_2_1": 4.0}), spec)
    graph = with_teacher_files(Graph.from_dict(raw).training_graph(TARGET_NODE), teacher_files(spec, tmp_path))
    states: list[RunState] = []
    result = RunSetup(digits_val_data, cpu_accel).train(graph, Recipe(epochs=1, batch_size=64), seed=0,
                                                        evaluate_test=False, hooks=RunHooks(on_state=states.append))
    saved = torch.load(path, weights_only=True)
    after = result.models[2].state_dict()
    assert set(after) == set(saved) and all(torch.equal(after[k], saved[k]) for k in saved)  # BatchNorm buffers too
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before
    assert [set(s.weights) for s in states] == [{TARGET_NODE}]  # never in a trial checkpoint
    assert not any(p.requires_grad for p in result.models[2].parameters())


# -- over HTTP ---------------------------------------------------------------------------------------

def test_a_teacher_checkpoint_outside_the_datasets_folder_is_422(client: TestClient, tmp_path: Path) -> None:
    path = save_teacher(tmp_path / "elsewhere.pt")
    for checkpoint in (str(path), "../../etc/passwd", "tenants/bob/t.pt"):
        body = {"name": f"t-{uuid.uuid4().hex[:6]}", "nodes": 2, "trials": 1,
                "teachers": [{"name": "big", "model": TEACHER_MODEL, "checkpoint": checkpoint}]}
        r = client.post("/v1/studies", json=body, headers=ALICE)
        assert r.status_code == 422, r.text
        assert "teachers.0.checkpoint" in [e["field"] for e in r.json()["errors"]]
        assert str(tmp_path) not in r.text


@pytest.fixture(scope="module", name="app_settings")
def app_settings_fixture(postgres_url: str, tmp_path_factory: pytest.TempPathFactory) -> Settings:  # noqa: F811
    """The shared API settings with a datasets folder holding Alice's 3-channel teacher."""
    datasets = tmp_path_factory.mktemp("datasets")
    (datasets / "tenants" / "alice").mkdir(parents=True)
    save_teacher(datasets / "tenants" / "alice" / "c3.pt", channels=3)
    settings = api_fixtures.app_settings_fixture.__wrapped__(postgres_url, tmp_path_factory)  # type: ignore[attr-defined]
    return dataclasses.replace(settings, datasets_dir=datasets.resolve())


def test_a_misfit_teacher_inside_the_datasets_folder_is_422_naming_it(client: TestClient) -> None:
    body = {"name": "misfit", "nodes": 2, "trials": 1,
            "teachers": [{"name": "big", "model": "resnet20", "checkpoint": "tenants/alice/c3.pt"}]}
    r = client.post("/v1/studies", json=body, headers=ALICE)
    assert r.status_code == 422 and "teacher 'big'" in r.text and "3-channel" in r.text


# -- a real search (slow) ---------------------------------------------------------------------------

@pytest.mark.slow
def test_search_with_a_teacher_exports_a_graph_that_retrains_to_its_trial(tmp_path: Path, ray_tmp: Path) -> None:
    """The teacher is drawn, its edge's gate and temperature are in the trial's graph, the
    exported file names the checkpoint as the flag did, and ``ktg train`` of it gives node 1
    the trial's validation accuracy, bit for bit (one torch thread, like the trial)."""
    (tmp_path / "teachers").mkdir()
    save_teacher(tmp_path / "teachers" / "big.pt")
    storage, name, epochs = f"sqlite:///{tmp_path / 's.db'}", "teach", 2
    env = ktg_env(ray_tmp, OMP_NUM_THREADS="1")
    res = run_ktg(["search", "--study", name, "--nodes", "2", "--trials", "4", "--epochs", str(epochs), *AS_BEFORE,
                   "--target-model", "resnet8", "--models", "resnet8", "--teacher", "big=resnet8:teachers/big.pt",
                   "--gates", "through,linear", "--temperatures", "2,4", "--workers", "2", "--storage", storage,
                   "--out", str(tmp_path / "out")], tmp_path, env)
    assert res.rc == 0, res.stdout + res.stderr[-3000:]
    trials = [t for t in load(storage, name).get_trials() if t.state.name == "COMPLETE"]
    taught = [t for t in trials if t.params.get("model_2") == "teacher:big"]
    assert taught, [t.params for t in trials]  # the seeded sampler draws it among the 4
    trial = taught[0]
    edge = next(e for e in trial.user_attrs["graph"]["edges"] if e["source"] == 2)
    assert edge["gate"] == trial.params["gate_2_1"] and edge["temperature"] == trial.params["temperature_2_1"]
    assert trial.user_attrs["graph"]["nodes"][1]["checkpoint"] == "teachers/big.pt"

    res = run_ktg(["export", "--study", name, "--storage", storage, "--top", str(len(trials)),
                   "--out", str(tmp_path / "best")], tmp_path, env)
    assert res.rc == 0, res.stderr
    rank = sorted(trials, key=lambda t: (-t.value, t.number)).index(trial) + 1
    exported = tmp_path / "best" / f"{rank}.json"
    assert json.loads(exported.read_text())["nodes"][1]["checkpoint"] == "teachers/big.pt"
    res = run_ktg(["train", "--graph", str(exported), "--dataset", "digits", "--epochs", str(epochs),
                   "--val-fraction", "0.2", "--seed", "0", "--out", str(tmp_path / "retrained")], tmp_path, env)
    assert res.rc == 0, res.stderr
    node1 = next(n for n in json.loads((tmp_path / "retrained" / "results.json").read_text())["nodes"]
                 if n["id"] == TARGET_NODE)
    assert node1["val_acc"] == trial.intermediate_values[epochs] == trial.value
    assert LABEL_NODE not in {n["id"] for n in json.loads(exported.read_text())["nodes"]}
