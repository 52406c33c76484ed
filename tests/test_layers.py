"""The floors import downward only: ``api/`` -> ``search/`` -> ``ktg/``.

Every import statement counts, at any depth (a lazy import inside a function
included): the engine must work with no Ray, database or web server, and the
search without the API.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FLOORS = ("ktg", "search", "api")  # bottom to top


def _floor_of(module: str) -> str | None:
    top = module.split(".")[0]
    return top if top in FLOORS else None


def imported_modules(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, module) of every absolute import in ``tree``, nested ones included."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
    return found


def upward_imports(root: Path) -> list[str]:
    """'file:line imports module' for each import of a floor above the file's own."""
    problems = []
    for floor in FLOORS:
        above = FLOORS[FLOORS.index(floor) + 1:]
        for path in sorted((root / floor).rglob("*.py")):
            for line, module in imported_modules(ast.parse(path.read_text(), str(path))):
                if _floor_of(module) in above:
                    problems.append(f"{path.relative_to(root)}:{line} imports {module}")
    return problems


def test_no_floor_imports_a_floor_above_it() -> None:
    assert upward_imports(ROOT) == []


@pytest.mark.parametrize(("floor", "statement", "upward"), [
    ("ktg", "def f():\n    from search.cli import run\n", True),     # lazy, inside a function
    ("ktg", "import api.server\n", True),
    ("search", "from api import app\n", True),
    ("search", "from ktg.graph import Graph\n", False),
    ("api", "import search.study.storage\n", False),
    ("ktg", "from . import graph\n", False),                         # relative: within the floor
])
def test_the_check_sees_imports_at_any_depth(tmp_path: Path, floor: str, statement: str, upward: bool) -> None:
    for name in FLOORS:
        (tmp_path / name).mkdir()
    (tmp_path / floor / "module.py").write_text(statement)
    assert bool(upward_imports(tmp_path)) == upward


# The processes that only orchestrate: the search driver (``ktg search``) and the API's
# server. torch is ~470 MiB of a process's memory, and only trials and ``ktg train`` need it.
TORCH_FREE = ("search.cli", "search.tune.driver", "api.app")


def test_the_driver_and_the_api_do_not_import_torch() -> None:
    code = ("import importlib, sys\n"
            f"for name in {TORCH_FREE!r}:\n"
            "    importlib.import_module(name)\n"
            "    print(name, 'torch' in sys.modules)\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == [word for name in TORCH_FREE for word in (name, "False")]


# What a search is: the spec, and its given teachers checked against its data.
SPEC_MODULES = {"search.spec", "search.teachers"}


def test_the_api_needs_only_the_spec_and_the_study_store_of_search() -> None:
    """``api/`` reads what a search is (the spec) and what it recorded (``search.study``); the
    Ray Tune runtime and ``ktg compare`` are the job's business, never the service's."""
    used = {module for path in sorted((ROOT / "api").rglob("*.py"))
            for _, module in imported_modules(ast.parse(path.read_text(), str(path))) if module.startswith("search")}
    assert used and all(m in SPEC_MODULES or m == "search.study" or m.startswith("search.study.") for m in used), used
