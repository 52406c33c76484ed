"""A graph drawn twice is not trained twice: a re-drawn graph continues its twin.

A 20-trial search of a 16-graph space (2 nodes, one model, gates through or
linear), one trial at a time, so repeats are certain (pigeonhole) and the run
is deterministic. The same search runs twice, side by side: as ktg runs it, and
with the shortcut turned off by a test-only hook (``tests/epoch_log``, which
also logs every epoch the engine trains). Expected: no epoch of any graph is
trained twice; every trial holds exactly the values and state it holds without
the shortcut; a re-drawn trial names its twin and starts with its values.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest
from optuna.trial import TrialState

from tests.search_helpers import AS_BEFORE, KTG, ktg_env, load

pytestmark = pytest.mark.slow

TRIALS, EPOCHS = 20, 4
HOOKS = Path(__file__).resolve().parent / "epoch_log"


@pytest.fixture(scope="module")
def both_searches(tmp_path_factory: pytest.TempPathFactory, ray_tmp: Path) -> SimpleNamespace:
    work = tmp_path_factory.mktemp("twins")
    runs = {}
    for name, extra in (("shortcut", {}), ("plain", {"KTG_TEST_NO_TWINS": "1"})):
        log = work / f"{name}.epochs"
        path = os.pathsep.join(filter(None, [str(HOOKS), os.environ.get("PYTHONPATH")]))
        env = ktg_env(ray_tmp, PYTHONPATH=path, KTG_TEST_EPOCH_LOG=str(log), **extra)
        args = ["search", "--nodes", "2", "--trials", str(TRIALS), "--epochs", str(EPOCHS), "--study", name,
                "--storage", f"sqlite:///{work / name}.db", "--out", str(work / name), "--target-model", "resnet20",
                "--models", "resnet20", "--gates", "through,linear", "--workers", "1", *AS_BEFORE]
        runs[name] = (subprocess.Popen([*KTG, *args], cwd=work, env=env, text=True, stdout=subprocess.PIPE,
                                       stderr=subprocess.STDOUT), log)
    found = {}
    for name, (proc, log) in runs.items():
        output, _ = proc.communicate(timeout=1800)
        assert proc.returncode == 0, f"{name}: {output[-4000:]}"
        trained = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
        found[name] = SimpleNamespace(trials=load(f"sqlite:///{work / name}.db", name).get_trials(), trained=trained)
    return SimpleNamespace(**found)


def test_graphs_are_drawn_twice(both_searches: SimpleNamespace) -> None:
    trials = both_searches.shortcut.trials
    assert len({json.dumps(t.user_attrs["graph"], sort_keys=True) for t in trials}) < len(trials) == TRIALS
    assert any("continued_from" in t.user_attrs for t in trials)


def test_no_epoch_of_any_graph_is_trained_twice(both_searches: SimpleNamespace) -> None:
    counts = Counter((json.dumps(e["graph"], sort_keys=True), e["epoch"]) for e in both_searches.shortcut.trained)
    assert counts and max(counts.values()) == 1, [k for k, n in counts.items() if n > 1]
    plain = sum(t.user_attrs["epochs_done"] for t in both_searches.plain.trials)
    assert len(both_searches.plain.trained) == plain > len(both_searches.shortcut.trained)  # what it saved


def test_the_study_is_the_same_as_without_the_shortcut(both_searches: SimpleNamespace) -> None:
    def record(t: object) -> tuple:
        return (t.number, t.state, t.params, t.value, t.intermediate_values, t.user_attrs["epochs_done"])

    assert [record(t) for t in both_searches.shortcut.trials] == [record(t) for t in both_searches.plain.trials]
    assert not any("continued_from" in t.user_attrs for t in both_searches.plain.trials)


def test_a_redrawn_graph_starts_with_its_twins_values(both_searches: SimpleNamespace) -> None:
    by_number = {t.number: t for t in both_searches.shortcut.trials}
    for t in by_number.values():
        if "continued_from" not in t.user_attrs:
            continue
        twin = by_number[t.user_attrs["continued_from"]]
        assert twin.number < t.number and twin.user_attrs["graph"] == t.user_attrs["graph"]
        assert twin.state in (TrialState.COMPLETE, TrialState.PRUNED)
        assert {e: v for e, v in t.intermediate_values.items() if e in twin.intermediate_values} == \
            twin.intermediate_values
