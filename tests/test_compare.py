"""``ktg compare``: paired seeds, the paired t interval, resume, and failures that stay local."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from search.compare.stats import mean_interval, paired_difference

CE = {"source": 0, "loss": "ce", "gate": "through"}


def ktg(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ktg.cli", *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "KTG_CACHE_DIR": str(cwd / "cache")}, timeout=900)


def write(path: Path, nodes: list[dict], edges: list[dict]) -> str:
    path.write_text(json.dumps({"format": "ktg-graph/1", "nodes": nodes, "edges": edges}))
    return str(path)


# -- statistics against scipy ----------------------------------------------------------

def test_paired_interval_matches_scipy_ttest_rel() -> None:
    from scipy.stats import ttest_rel

    a = [0.811, 0.802, 0.825, 0.797, 0.818]
    b = [0.820, 0.806, 0.829, 0.809, 0.817]
    d = paired_difference(a, b)
    expected = ttest_rel(b, a).confidence_interval(0.95)
    assert d.mean == pytest.approx(sum(y - x for x, y in zip(a, b, strict=True)) / 5)
    assert (d.low, d.high) == pytest.approx((expected.low, expected.high))
    assert d.n == 5


def test_interval_excludes_zero_only_when_it_does() -> None:
    assert paired_difference([0.1, 0.2, 0.3], [0.2, 0.3, 0.41]).excludes_zero  # every seed +0.1 or so
    assert not paired_difference([0.1, 0.2, 0.3], [0.2, 0.1, 0.35]).excludes_zero
    one = paired_difference([0.5], [0.6])
    assert math.isinf(one.high) and not one.excludes_zero  # one seed says nothing about noise


def test_mean_interval_matches_scipy() -> None:
    import numpy as np
    from scipy.stats import sem, t

    values = [1.0, 2.0, 4.0, 7.0]
    mean, half = mean_interval(values)
    low, high = t.interval(0.95, 3, loc=np.mean(values), scale=sem(values))
    assert mean == 3.5 and half == pytest.approx((high - low) / 2)


def test_unequal_pairs_are_refused() -> None:
    with pytest.raises(ValueError, match="equal"):
        paired_difference([0.1, 0.2], [0.1])


# -- end to end ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def compared(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Four graphs on synthetic data, 2 seeds: alone, alone beside a cut-off peer, DML, a bad file."""
    cwd = tmp_path_factory.mktemp("compare")
    alone = write(cwd / "alone.json", [{"id": 1, "model": "resnet8"}], [{**CE, "target": 1}])
    # Node 2 learns from the labels only and its edge into node 1 is not listed (cutoff): by the
    # determinism contract node 1 trains exactly as alone, seed by seed.
    beside = write(cwd / "beside.json", [{"id": 1, "model": "resnet8"}, {"id": 2, "model": "wrn16-1"}],
                   [{**CE, "target": 1}, {**CE, "target": 2}])
    dml = write(cwd / "dml.json", [{"id": 1, "model": "resnet8"}, {"id": 2, "model": "resnet8"}],
                [{**CE, "target": 1}, {**CE, "target": 2}, {"source": 2, "target": 1, "loss": "kl", "gate": "through"},
                 {"source": 1, "target": 2, "loss": "kl", "gate": "through"}])
    (cwd / "bad.json").write_text(json.dumps({"format": "ktg-graph/1", "nodes": [{"id": 1, "model": "resnet8"}],
                                              "edges": [{**CE, "target": 1, "gate": "lin"}]}))
    args = ["compare", alone, beside, dml, str(cwd / "bad.json"), "--dataset", "synthetic", "--epochs", "2",
            "--seeds", "2", "--seed", "3", "--warmup-steps", "0", "--out", "cmp"]
    first = ktg(*args, cwd=cwd)
    report = json.loads((cwd / "cmp" / "compare.json").read_text())
    files = {p: p.stat().st_mtime_ns for p in (cwd / "cmp" / "jobs").rglob("*.json")}
    again = ktg(*args, "--resume", cwd=cwd)
    return {"cwd": cwd, "first": first, "report": report, "files": files, "again": again,
            "again_report": json.loads((cwd / "cmp" / "compare.json").read_text())}


@pytest.mark.slow
def test_a_bad_graph_is_one_line_and_the_others_report(compared: dict) -> None:
    first = compared["first"]
    assert first.returncode == 1, first.stderr  # partial: one graph failed
    assert "Traceback" not in first.stderr
    lines = [ln for ln in first.stderr.splitlines() if "bad.json" in ln and "error" in ln]
    assert len(lines) == 1 and "edges[0].gate: got 'lin'; allowed: through, cutoff, linear, correct" in lines[0]
    rows = {g["name"]: g for g in compared["report"]["graphs"]}
    assert rows["bad"]["test_acc_mean"] is None and rows["bad"]["errors"]
    for name in ("alone", "beside", "dml"):
        assert len([a for a in rows[name]["test_acc_per_seed"].values() if a is not None]) == 2
    assert "alone" in first.stdout and "beside" in first.stdout and "95% CI" in first.stdout


@pytest.mark.slow
def test_equal_seeds_pair_the_shared_node(compared: dict) -> None:
    rows = {g["name"]: g for g in compared["report"]["graphs"]}
    assert rows["beside"]["test_acc_per_seed"] == rows["alone"]["test_acc_per_seed"]
    assert rows["beside"]["vs_baseline"]["mean"] == 0.0
    assert set(rows["alone"]["test_acc_per_seed"]) == {"3", "4"}


@pytest.mark.slow
def test_report_differences_are_the_paired_interval(compared: dict) -> None:
    rows = {g["name"]: g for g in compared["report"]["graphs"]}
    a = [rows["alone"]["test_acc_per_seed"][s] for s in ("3", "4")]
    b = [rows["dml"]["test_acc_per_seed"][s] for s in ("3", "4")]
    d = paired_difference(a, b)
    assert rows["dml"]["vs_baseline"]["mean"] == pytest.approx(d.mean)
    assert rows["dml"]["vs_baseline"]["ci"] == pytest.approx([d.low, d.high])
    assert (compared["cwd"] / "cmp" / "compare.png").stat().st_size > 1000


@pytest.mark.slow
def test_resume_trains_nothing_twice(compared: dict) -> None:
    again = compared["again"]
    assert again.returncode == 1  # the bad file is still bad
    now = {p: p.stat().st_mtime_ns for p in (compared["cwd"] / "cmp" / "jobs").rglob("*.json")}
    assert now == compared["files"] and len(now) == 6  # 3 good graphs x 2 seeds, none rewritten
    assert compared["again_report"]["graphs"] == compared["report"]["graphs"]


@pytest.mark.slow
def test_a_nan_graph_fails_alone_on_ray_workers(tmp_path: Path) -> None:
    alone = write(tmp_path / "alone.json", [{"id": 1, "model": "resnet8"}], [{**CE, "target": 1}])
    # A huge edge weight makes node 1's loss (CE about 2.3 at first) inf in the first step: a real NonFiniteLoss.
    nan = write(tmp_path / "nan.json", [{"id": 1, "model": "resnet8"}], [{**CE, "target": 1, "weight": 1e308}])
    run = ktg("compare", alone, nan, "--dataset", "synthetic", "--epochs", "1", "--seeds", "2", "--workers", "2",
              "--out", "cmp", cwd=tmp_path)
    assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr
    report = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    rows = {g["name"]: g for g in report["graphs"]}
    assert all("NaN or inf" in e for e in rows["nan"]["errors"].values()) and len(rows["nan"]["errors"]) == 2
    assert all(a is not None for a in rows["alone"]["test_acc_per_seed"].values())


def test_bad_flags_are_one_line(tmp_path: Path) -> None:
    alone = write(tmp_path / "a.json", [{"id": 1, "model": "resnet8"}], [{**CE, "target": 1}])
    for extra, field in ((["--seeds", "0"], "--seeds"), (["--names", "x,y"], "--names"),
                         (["--workers", "0"], "--workers"), (["--dataset", "nope"], "dataset")):
        run = ktg("compare", alone, *extra, cwd=tmp_path)
        assert run.returncode == 2 and "Traceback" not in run.stderr
        assert run.stderr.count("\n") == 1 and field in run.stderr, run.stderr


def test_names_of_one_graph_share_one_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A graph listed under two names (meta aside) trains once per seed, now or on resume."""
    from ktg.data.spec import DataSpec
    from ktg.recipe import Recipe
    from search.compare import jobs as compare_jobs

    trained: list[tuple[str, int]] = []
    real_run_job = compare_jobs.run_job

    def counting(job: compare_jobs.Job, setup: compare_jobs.CompareSetup, fingerprint: str) -> compare_jobs.JobResult:
        trained.append((job.name, job.seed))
        return real_run_job(job, setup, fingerprint)

    monkeypatch.setattr(compare_jobs, "run_job", counting)
    setup = compare_jobs.CompareSetup(DataSpec(name="digits", train_size=100), Recipe(epochs=1, warmup_steps=0),
                                      cache_dir=str(tmp_path / "cache"))
    alone = {"format": "ktg-graph/1", "nodes": [{"id": 1, "model": "resnet8"}], "edges": [{**CE, "target": 1}]}
    winner = {**alone, "meta": {"baseline": "independent", "study": "s"}}
    out = tmp_path / "cmp"
    first = compare_jobs.run_jobs([compare_jobs.Job(n, g, s) for n, g in (("alone", alone), ("winner", winner))
                                   for s in (0, 1)], setup, out)
    assert sorted(trained) == [("alone", 0), ("alone", 1)]
    by_name = {(r.name, r.seed): r.test_acc for r in first}
    assert by_name["winner", 0] == by_name["alone", 0] and by_name["winner", 1] == by_name["alone", 1]
    assert (out / "jobs" / "winner").is_dir()
    # Resumed with a third name for the same graph: its numbers come from the file of another name.
    trained.clear()
    again = compare_jobs.run_jobs([compare_jobs.Job("third", winner, 1), compare_jobs.Job("alone", alone, 1)],
                                  setup, out, resume=True)
    assert trained == [] and again[0].test_acc == by_name["alone", 1] and again[0].name == "third"
