"""``ktg search`` / ``ktg export`` on bad input: one clear line, non-zero exit, no traceback, no Ray.

Each bad input is its own ``ktg`` subprocess (real PostgreSQL for the storage
cases, no mocks); ``bad_runs`` starts them all at once and the tests read the results.
"""

from __future__ import annotations

import itertools
import subprocess
import uuid
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest

from search.study.storage import sqlalchemy_url
from tests.postgres import PASSWORD, postgres_url  # noqa: F401
from tests.search_helpers import KTG, ktg_env

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def bad_runs(postgres_url: str, tmp_path_factory: pytest.TempPathFactory,  # noqa: F811
             ray_tmp: Path) -> dict[str, SimpleNamespace]:
    """Each bad input as its own ``ktg`` process, all started at once (they never reach Ray)."""
    work = tmp_path_factory.mktemp("bad")
    existing = f"exists-{uuid.uuid4().hex[:8]}"
    optuna.create_study(study_name=existing, storage=sqlalchemy_url(postgres_url))
    wrong_pw = "wr0ng-pw-7731"
    wrong_url = postgres_url.replace(f":{PASSWORD}@", f":{wrong_pw}@")
    assert wrong_url != postgres_url

    def search(case: str, **override: str) -> list[str]:
        flags = {"--nodes": "3", "--trials": "2", "--epochs": "1", "--study": f"bad-{case}",
                 "--storage": f"sqlite:///{work / case / 'db.sqlite'}", "--out": str(work / case / "out"),
                 "--target-model": "resnet20", "--models": "resnet20,wrn16-1"} | override
        return ["search", *itertools.chain.from_iterable(flags.items())]

    cases = {
        "models": search("models", **{"--models": "resnet33"}),
        "gates": search("gates", **{"--gates": "lin"}),
        "nodes": search("nodes", **{"--nodes": "1"}),
        "trials": search("trials", **{"--trials": "0"}),
        "unreachable": search("unreachable", **{"--storage": "postgresql://ktg:x@127.0.0.1:1/ktg"}),
        "password": search("password", **{"--storage": wrong_url}),
        "exists": search("exists", **{"--storage": postgres_url, "--study": existing}),
        "export": ["export", "--study", "no-such-study", "--storage", postgres_url, "--out", str(work / "exp")],
        "spec-json": ["search", "--spec-json", '{"name": "j", "nodes": 3,', "--storage",
                      f"sqlite:///{work / 'spec-json' / 'db.sqlite'}", "--out", str(work / "spec-json" / "out")],
        "spec-fields": ["search", "--spec-json", '{"name": "j", "nodes": 11, "trials": 2, "gates": ["open"]}',
                        "--storage", f"sqlite:///{work / 'spec-fields' / 'db.sqlite'}",
                        "--out", str(work / "spec-fields" / "out")],
    }
    env = ktg_env(ray_tmp)
    procs = {}
    for case, args in cases.items():
        (work / case).mkdir(exist_ok=True)
        procs[case] = subprocess.Popen([*KTG, *args], cwd=work / case, env=env, text=True,
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    results = {}
    for case, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=180)
        results[case] = SimpleNamespace(rc=proc.returncode, stdout=stdout, stderr=stderr, work=work / case,
                                        wrong_pw=wrong_pw)
    return results


@pytest.mark.parametrize(("case", "names"), [
    ("models", ["--models", "resnet33"]),
    ("gates", ["--gates", "lin"]),
    ("nodes", ["--nodes"]),
    ("trials", ["--trials"]),
    ("unreachable", ["storage", "127.0.0.1:1"]),
    ("password", ["storage", "password"]),
    ("exists", ["--study", "already exists", "--resume"]),
    ("export", ["study", "no-such-study"]),
    ("spec-json", ["--spec-json", "not valid JSON"]),
    ("spec-fields", ["--nodes", "--gates", "open"]),
])
def test_bad_input_is_one_clear_line(bad_runs: dict[str, SimpleNamespace], case: str, names: list[str]) -> None:
    r = bad_runs[case]
    both = r.stdout + r.stderr
    assert r.rc != 0, both
    assert "Traceback" not in both, both
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got:\n{r.stderr}"
    assert lines[0].startswith(("ktg search: error: ", "ktg export: error: ")), lines[0]
    for name in names:
        assert name in lines[0], f"{name!r} not named in: {lines[0]}"
    assert PASSWORD not in both and r.wrong_pw not in both
    assert not (r.work / "out" / "ray").exists(), "Ray started before the input was checked"
    if case in {"models", "gates", "nodes", "trials", "spec-json", "spec-fields"}:  # the spec itself is bad
        assert not (r.work / "db.sqlite").exists(), "a bad spec created the storage"
