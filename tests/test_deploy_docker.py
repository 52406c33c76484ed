"""The Dockerfiles and .dockerignore: built from Debian, what the image runs and copies,
what it must not bake in, and versions and tags that agree with the project, the code,
compose, Kubernetes and the smoke script.
"""

from __future__ import annotations

import re
import shlex
import tomllib

import pytest
import yaml
from packaging.requirements import Requirement

from tests.deploy_files import (
    API_PORT,
    DOCKERFILES,
    ROOT,
    SECRET_NAME,
    SMOKE_SCRIPT,
    STANDIN_COMPOSE_FILE,
    URL_PASSWORD,
    api_serve_argvs,
    arg_defaults,
    argv,
    dockerignored,
    flag,
    image_ref,
    instructions,
    ktg_services,
    one,
    project,
    service,
)


def requirement(name: str) -> Requirement:
    (req,) = [r for r in map(Requirement, project()["dependencies"]) if r.name == name]
    return req


def test_api_serves_on_8000_and_compose_checks_healthz():
    for where, args in api_serve_argvs().items():
        assert args[:2] == ["ktg", "serve"], f"{where}: {args}"
        assert flag(args, "--port") == str(API_PORT), f"{where}: {args}"
        assert flag(args, "--host") == "0.0.0.0", f"{where}: inside a container the API must listen on every interface"
    assert instructions("ktg", "EXPOSE") == [str(API_PORT)]
    assert f":{API_PORT}/healthz" in " ".join(argv(service("api")["healthcheck"]["test"]))


@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_image_builds_from_debian_bookworm(kind):
    """No python:* or rayproject/* base: those cannot be built without a registry."""
    assert arg_defaults(kind)["DEBIAN_IMAGE"] == "debian:bookworm-slim"
    for base in instructions(kind, "FROM"):
        assert base.split()[0] == "${DEBIAN_IMAGE}", f"{kind}: FROM {base}"


@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_image_runs_as_non_root(kind):
    user = instructions(kind, "USER")[-1]
    assert user.split(":")[0] not in {"root", "0"}, user


@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_dockerfile_bakes_in_no_secret(kind):
    for word in ("ENV", "ARG"):
        for rest in instructions(kind, word):
            for key in re.findall(r"(?:^|\s)([A-Za-z_][A-Za-z0-9_]*)(?:=|\s|$)", rest):
                assert not SECRET_NAME.search(key), f"{kind}: {word} {rest}"
                assert key not in {"KTG_STORAGE", "KTG_API_TOKENS"}, f"{kind}: {word} {rest}"
            assert not URL_PASSWORD.search(rest), f"{kind}: {word} {rest}"
    for rest in instructions(kind, "COPY") + instructions(kind, "ADD"):
        assert not re.search(r"secret|\.pem|\.crt|\.env\b", rest), f"{kind}: COPY {rest}"


def test_the_build_ca_reaches_pip_only_as_a_build_secret():
    """Behind a TLS proxy the CA bundle is mounted per RUN, so no layer keeps it."""
    # Every pip step that reaches an index; the last one installs the local ktg wheel only.
    pip_runs = [rest for rest in instructions("ktg", "RUN") if "pip " in rest and "--no-deps /tmp/wheels" not in rest]
    assert len(pip_runs) >= 2
    for rest in pip_runs:
        assert "--mount=type=secret,id=ca_bundle" in rest and "PIP_CERT=/run/secrets/ca_bundle" in rest, rest


def test_dockerfile_copies_every_package_from_the_build_context():
    sources = []
    for rest in instructions("ktg", "COPY"):
        words = [w for w in shlex.split(rest) if not w.startswith("--")]
        if "--from=" not in rest:
            sources += words[:-1]
    packages = {p.rstrip("*") for p in tomllib.loads((ROOT / "pyproject.toml").read_text())
                ["tool"]["setuptools"]["packages"]["find"]["include"]}
    assert packages <= set(sources), f"not copied: {packages - set(sources)}"
    assert "pyproject.toml" in sources
    for source in sources:
        assert (ROOT / source).exists(), f"COPY {source}: no such file in the repository"
        probe = source if (ROOT / source).is_file() else f"{source}/__init__.py"
        assert not dockerignored(probe), f"COPY {source}, but .dockerignore excludes it"


def test_dockerignore_keeps_local_secrets_and_junk_out_of_the_build_context():
    for path in (".env", "docker/secrets/api_tokens", ".venv/bin/python", ".git/config", "datasets/cifar-10/x",
                 "ktg/__pycache__/cli.cpython-311.pyc"):
        assert dockerignored(path), path


def test_pinned_versions_meet_the_package_requirements_and_kubernetes():
    pins = arg_defaults("ktg")
    for name, arg in (("ray", "RAY_VERSION"), ("torch", "TORCH_VERSION"), ("torchvision", "TORCHVISION_VERSION")):
        assert requirement(name).specifier.contains(pins[arg]), f"{arg}={pins[arg]} is not {requirement(name)}"
    assert one("RayCluster")["spec"]["rayVersion"] == pins["RAY_VERSION"]
    (install,) = [rest for rest in instructions("ktg", "RUN") if '"ray[default,tune]==${RAY_VERSION}"' in rest]
    assert "${TORCH_VERSION}" in install, "the ktg install must hold torch at the version installed before it"


def test_torch_build_argument_picks_cpu_by_default_and_knows_cuda():
    assert arg_defaults("ktg")["TORCH_BUILD"] == "cpu"
    (torch_run,) = [rest for rest in instructions("ktg", "RUN") if '"torch==${TORCH_VERSION}"' in rest
                    and "ray[" not in rest]
    assert re.search(r"\bcpu\) index=.*download\.pytorch\.org/whl/cpu", torch_run)
    assert re.search(r"\bcuda\) index=", torch_run)
    assert "allowed: cpu, cuda" in torch_run, "an unknown TORCH_BUILD must stop the build with one clear line"
    gpu = service("ray-worker-gpu")
    assert gpu["build"]["args"]["TORCH_BUILD"] == "cuda"
    assert service("api")["build"]["args"]["TORCH_BUILD"] == "${KTG_TORCH_BUILD:-cpu}"


def test_fashion_mnist_comes_from_the_debian_package_the_code_reads():
    from ktg.data.mnist import DEBIAN_PACKAGE

    installs = " ".join(rest for rest in instructions("ktg", "RUN") if "apt-get install" in rest)
    assert DEBIAN_PACKAGE in installs.split()


def test_image_tags_are_the_project_version_and_every_ktg_service_builds_docker_dockerfile():
    version = project()["version"]
    for name in ktg_services():
        svc = service(name)
        assert image_ref(svc["image"])[0] == "ktg", svc["image"]
        assert image_ref(svc["image"])[1] in {version, f"{version}-cuda"}, svc["image"]
        assert svc["build"]["dockerfile"] == "docker/Dockerfile", name
        cuda = svc["build"].get("args", {}).get("TORCH_BUILD") == "cuda"
        assert svc["image"].endswith("-cuda") == cuda, f"{name}: {svc['image']} and its TORCH_BUILD disagree"


def test_smoke_script_builds_the_images_compose_runs():
    text = SMOKE_SCRIPT.read_text()
    assert re.search(rf"^IMAGE={re.escape(service('api')['image'])}$", text, re.MULTILINE)
    standin = yaml.safe_load(STANDIN_COMPOSE_FILE.read_text())["services"]["postgres"]["image"]
    assert re.search(rf"^STANDIN_IMAGE={re.escape(standin)}$", text, re.MULTILINE)
    assert "-f docker/Dockerfile" in text and "docker/postgres-standin" in text
    assert "down -v" in text
