"""The Dockerfiles and .dockerignore: what the images run and copy, what they must not
bake in, and versions and tags that agree with the project and with Kubernetes.
"""

from __future__ import annotations

import re
import shlex
import tomllib

import pytest

from tests.deploy_files import (
    API_PORT,
    DOCKERFILES,
    ROOT,
    SECRET_NAME,
    URL_PASSWORD,
    api_serve_argvs,
    arg_defaults,
    dockerfile,
    dockerignored,
    flag,
    image_ref,
    instructions,
    one,
    project,
    service,
)


def test_api_serves_on_8000_and_the_image_checks_healthz():
    for where, args in api_serve_argvs().items():
        assert args[:2] == ["ktg", "serve"], f"{where}: {args}"
        assert flag(args, "--port") == str(API_PORT), f"{where}: {args}"
        assert flag(args, "--host") == "0.0.0.0", f"{where}: inside a container the API must listen on every interface"
    assert instructions("api", "EXPOSE") == [str(API_PORT)]
    (healthcheck,) = instructions("api", "HEALTHCHECK")
    assert f":{API_PORT}/healthz" in healthcheck


def test_api_image_runs_as_non_root():
    user = instructions("api", "USER")[-1]
    assert user.split(":")[0] not in {"root", "0"}, user


@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_dockerfile_bakes_in_no_secret(kind):
    for word in ("ENV", "ARG"):
        for rest in instructions(kind, word):
            for key in re.findall(r"(?:^|\s)([A-Za-z_][A-Za-z0-9_]*)(?:=|\s|$)", rest):
                assert not SECRET_NAME.search(key), f"{kind}: {word} {rest}"
                assert key not in {"KTG_STORAGE", "KTG_API_TOKENS"}, f"{kind}: {word} {rest}"
            assert not URL_PASSWORD.search(rest), f"{kind}: {word} {rest}"


@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_dockerfile_copies_every_package_from_the_build_context(kind):
    sources = []
    for rest in instructions(kind, "COPY"):
        words = [w for w in shlex.split(rest) if not w.startswith("--")]
        if "--from=" not in rest:
            sources += words[:-1]
    packages = {p.rstrip("*") for p in tomllib.loads((ROOT / "pyproject.toml").read_text())
                ["tool"]["setuptools"]["packages"]["find"]["include"]}
    assert packages <= set(sources), f"{kind}: not copied: {packages - set(sources)}"
    assert "pyproject.toml" in sources
    for source in sources:
        assert (ROOT / source).exists(), f"{kind}: COPY {source}: no such file in the repository"
        probe = source if (ROOT / source).is_file() else f"{source}/__init__.py"
        assert not dockerignored(probe), f"{kind}: COPY {source}, but .dockerignore excludes it"


def test_dockerignore_keeps_local_secrets_and_junk_out_of_the_build_context():
    for path in (".env", "docker/secrets/api_tokens", ".venv/bin/python", ".git/config", "datasets/cifar-10/x",
                 "ktg/__pycache__/cli.cpython-311.pyc"):
        assert dockerignored(path), path


def test_ray_version_is_the_same_everywhere():
    versions = {kind: arg_defaults(kind)["RAY_VERSION"] for kind in DOCKERFILES}
    assert len(set(versions.values())) == 1, versions
    (version,) = set(versions.values())
    base = [rest for word, rest in dockerfile("ray") if word == "FROM" and "rayproject/ray" in rest]
    assert base and base[-1].startswith("rayproject/ray:${RAY_VERSION}-py311"), base
    assert one("RayCluster")["spec"]["rayVersion"] == version


def test_image_tags_are_the_project_version():
    version = project()["version"]
    for name in ("api", "ray-head", "ray-worker"):
        assert image_ref(service(name)["image"])[1] == version, service(name)["image"]
