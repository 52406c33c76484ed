"""The deployment files agree with the code: every environment variable they set is
one the code reads, and every flag they pass exists in ``ktg serve`` and ``ray start``.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.deploy_files import (
    DOCKERFILES,
    ROOT,
    api_serve_argvs,
    argv,
    compose,
    containers,
    instructions,
    k8s_env,
    ktg_services,
    manifests,
    one,
    service,
    service_env,
)

# -- environment variables ---------------------------------------------------------------

def known_env_names() -> set[str]:
    """The variables the code reads: the API's contract, plus what the engine reads on Ray nodes."""
    from api.settings import ENV_NAMES
    from ktg.teachers import CACHE_ENV
    from search.commands import RESOURCE_ENV
    from search.study.storage import STORAGE_ENV

    return {*ENV_NAMES, *RESOURCE_ENV, CACHE_ENV, STORAGE_ENV}


def ktg_env_names_used() -> dict[str, set[str]]:
    """KTG_* and RAY_ADDRESS names set anywhere in the deployment files, with where."""
    used: dict[str, set[str]] = {}

    def add(name: str, where: str) -> None:
        if name.startswith("KTG_") or name == "RAY_ADDRESS":
            used.setdefault(name, set()).add(where)

    for name, svc in compose()["services"].items():
        for key in service_env(svc):
            add(key, f"docker-compose.yml:{name}")
    for kind in DOCKERFILES:
        for rest in instructions(kind, "ENV") + instructions(kind, "ARG"):
            for key in re.findall(r"(?:^|\s)([A-Za-z_][A-Za-z0-9_]*)=", " " + rest):
                add(key, DOCKERFILES[kind].name)
    for path, doc in manifests():
        for container in containers(doc):
            for key in k8s_env(container):
                add(key, f"{path.name}:{container['name']}")
    return used


def test_every_env_name_is_one_the_code_reads():
    unknown = {name: sorted(where) for name, where in ktg_env_names_used().items()
               if name not in known_env_names()}
    assert not unknown, f"env names the code does not read (typo, or add them to api.settings.ENV_NAMES): {unknown}"


def test_the_essential_env_names_are_set():
    used = ktg_env_names_used()
    for name in ("KTG_STORAGE", "KTG_API_TOKENS_FILE", "KTG_DATA_DIR", "KTG_CACHE_DIR", "KTG_DATASETS_DIR", "RAY_ADDRESS"):
        assert name in used, f"{name} is set nowhere"


# -- the CLI the files call ------------------------------------------------------------------


def _console_script(name: str) -> str | None:
    beside = Path(sys.executable).with_name(name)
    return str(beside) if beside.exists() else shutil.which(name)


def test_ktg_serve_accepts_the_flags_the_files_pass():
    if not (ROOT / "ktg" / "cli.py").exists():
        pytest.skip("ktg/cli.py does not exist yet, so `ktg serve` cannot be checked")
    script = _console_script("ktg")
    cmd = [script] if script else [sys.executable, "-m", "ktg.cli"]
    result = subprocess.run([*cmd, "serve", "--help"], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    used = {a.split("=")[0] for args in api_serve_argvs().values() for a in args if a.startswith("--")}
    assert {"--host", "--port"} <= used
    for name in sorted(used):
        assert re.search(rf"(^|\s){re.escape(name)}\b", result.stdout), f"`ktg serve` has no {name}"


def test_ray_start_accepts_the_flags_the_files_pass():
    script = _console_script("ray")
    if script is None:
        pytest.skip("the ray CLI is not installed here (pip install 'ray[default]')")
    result = subprocess.run([script, "start", "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    used = set()
    for name in ktg_services()[1:]:
        args = argv(service(name)["command"])
        assert args[:2] == ["ray", "start"], args
        used |= {a.split("=")[0] for a in args if a.startswith("--")}
    rc = one("RayCluster")["spec"]
    for group in [rc["headGroupSpec"], *rc["workerGroupSpecs"]]:
        used |= {f"--{key}" for key in group.get("rayStartParams", {})}
    for name in sorted(used):
        assert re.search(rf"(^|\s){re.escape(name)}\b", result.stdout), f"`ray start` has no {name}"
