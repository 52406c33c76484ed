"""The deployment files agree with the code, with each other, and keep secrets out.

No Docker engine or Kubernetes cluster is needed: docker-compose.yml, the
Dockerfiles under docker/ and the manifests under deploy/ are parsed and
cross-checked against the CLI (`ktg serve --help`, `ray start --help`), against
the environment variables the code reads, and against one another (ports, image
names, service names, secret keys, shared paths).
"""

from __future__ import annotations

import functools
import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
COMPOSE_ENV_EXAMPLE = ROOT / "docker" / "compose.env.example"
DOCKERFILES = {"api": ROOT / "docker" / "api.Dockerfile", "ray": ROOT / "docker" / "ray.Dockerfile"}
DOCKERIGNORE = ROOT / ".dockerignore"
README = ROOT / "docker" / "README.md"
DEPLOY = ROOT / "deploy"
KUSTOMIZATION = DEPLOY / "kustomization.yaml"
SECRET_TEMPLATE = DEPLOY / "secret.example.yaml"

SERVICES = {"postgres", "ray-head", "ray-worker", "api"}
API_PORT = 8000
# 8265 is the Ray dashboard and Jobs API (runs any command it is sent), 6379 the
# GCS, 10001 the Ray Client server: none may be published.
RAY_DASHBOARD_PORT = 8265
RAY_PRIVATE_PORTS = {RAY_DASHBOARD_PORT, 6379, 10001}
SECRET_NAME = re.compile(r"PASSWORD|TOKEN|SECRET", re.IGNORECASE)
ONLY_A_REFERENCE = re.compile(r"^\$\{[A-Za-z_][A-Za-z0-9_]*(?:(?::?[-?+])[^}]*)?\}$")
URL_PASSWORD = re.compile(r"://[^:/@\s]+:([^@\s]+)@")
# Short volume syntax SOURCE:TARGET[:MODE], where SOURCE may be a ${VAR:-default}.
SHORT_VOLUME = re.compile(r"^((?:\$\{[^}]*\}|[^:])*):([^:]+)(?::[^:]*)?$")
PLACEHOLDER = "REPLACE_ME"


# -- loading ----------------------------------------------------------------------------


@functools.cache
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def service(name: str) -> dict[str, Any]:
    return compose()["services"][name]


def service_env(svc: dict[str, Any]) -> dict[str, str]:
    env = svc.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def compose_mounts(svc: dict[str, Any]) -> dict[str, str]:
    """{container path: source} of a service's volumes, short or long syntax."""
    mounts = {}
    for entry in svc.get("volumes", []):
        if isinstance(entry, dict):
            mounts[entry["target"]] = str(entry.get("source", ""))
        else:
            match = SHORT_VOLUME.match(str(entry))
            assert match, f"cannot read the volume {entry!r}"
            mounts[match[2]] = match[1]
    return mounts


def argv(command: str | list[str] | None) -> list[str]:
    if command is None:
        return []
    return shlex.split(command) if isinstance(command, str) else [str(c) for c in command]


def flag(args: list[str], name: str) -> str | None:
    """The value of ``--name value`` or ``--name=value`` in an argument list."""
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


@functools.cache
def dockerfile(kind: str) -> tuple[tuple[str, str], ...]:
    """(INSTRUCTION, arguments) pairs of a Dockerfile: continuations joined, comments dropped."""
    instructions, current = [], ""
    for line in DOCKERFILES[kind].read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        word, _, rest = (current + stripped).partition(" ")
        instructions.append((word.upper(), rest.strip()))
        current = ""
    return tuple(instructions)


def instructions(kind: str, name: str) -> list[str]:
    return [rest for word, rest in dockerfile(kind) if word == name]


def exec_form(text: str) -> list[str]:
    assert text.startswith("["), f"use the exec (JSON) form, got {text!r}"
    return json.loads(text)


def arg_defaults(kind: str) -> dict[str, str]:
    defaults = {}
    for rest in instructions(kind, "ARG"):
        name, sep, value = rest.partition("=")
        if sep:
            defaults[name] = value.strip('"')
    return defaults


@functools.cache
def manifests() -> tuple[tuple[Path, dict[str, Any]], ...]:
    """Every Kubernetes document under deploy/ (the secret template included), with its file."""
    docs = []
    for path in sorted(DEPLOY.glob("*.yaml")):
        if path != KUSTOMIZATION:
            docs += [(path, doc) for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
    return tuple(docs)


def of_kind(kind: str) -> list[dict[str, Any]]:
    return [doc for _, doc in manifests() if doc["kind"] == kind]


def one(kind: str) -> dict[str, Any]:
    docs = of_kind(kind)
    assert len(docs) == 1, f"expected one {kind}, found {len(docs)}"
    return docs[0]


def walk(node: Any) -> Iterator[dict[str, Any]]:
    """Every mapping inside a document, depth first."""
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from walk(value)


def pod_specs(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The pod specs of a workload: Deployment/StatefulSet template, or each RayCluster group's."""
    if doc["kind"] == "RayCluster":
        groups = [doc["spec"]["headGroupSpec"], *doc["spec"].get("workerGroupSpecs", [])]
        return [g["template"]["spec"] for g in groups]
    template = doc.get("spec", {}).get("template")
    return [template["spec"]] if template else []


def containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return [c for spec in pod_specs(doc) for c in spec.get("containers", []) + spec.get("initContainers", [])]


def k8s_env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


def api_deployment() -> dict[str, Any]:
    (deployment,) = [d for d in of_kind("Deployment") if d["metadata"]["name"] == "ktg-api"]
    return deployment


def api_container() -> dict[str, Any]:
    (container,) = containers(api_deployment())
    return container


def ray_containers() -> list[dict[str, Any]]:
    return containers(one("RayCluster"))


def image_ref(image: str) -> tuple[str, str]:
    name, _, tag = image.rpartition(":")
    return (name, tag) if name and "/" not in tag else (image, "latest")


@functools.cache
def project() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def image_cmd(kind: str) -> list[str]:
    return exec_form(instructions(kind, "CMD")[-1])


def api_serve_argvs() -> dict[str, list[str]]:
    """The command each API container runs (compose's `command` / the pod's command+args, else the image's CMD)."""
    (container,) = containers(api_deployment())
    k8s = argv(container.get("command")) + argv(container.get("args"))
    return {"api.Dockerfile": image_cmd("api"),
            "docker-compose.yml": argv(service("api").get("command")) or image_cmd("api"),
            "deploy/api.yaml": k8s or image_cmd("api")}


# -- environment variables ---------------------------------------------------------------


def known_env_names() -> set[str]:
    """The variables the code reads: the API's contract, plus what the engine reads on Ray nodes."""
    from api.settings import ENV_NAMES
    from ktg.cli import RESOURCE_ENV
    from ktg.teachers import CACHE_ENV
    from search.storage import STORAGE_ENV

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
    for name in ("KTG_STORAGE", "KTG_API_TOKENS_FILE", "KTG_DATA_DIR", "KTG_CACHE_DIR", "RAY_ADDRESS"):
        assert name in used, f"{name} is set nowhere"


# -- docker compose ------------------------------------------------------------------------


def test_compose_has_exactly_the_four_services():
    assert set(compose()["services"]) == SERVICES


def test_postgres_keeps_its_data_in_a_named_volume_and_has_a_healthcheck():
    pg = service("postgres")
    assert compose_mounts(pg).get("/var/lib/postgresql/data") in set(compose().get("volumes") or {})
    assert "pg_isready" in " ".join(argv(pg["healthcheck"]["test"]))
    assert ONLY_A_REFERENCE.match(service_env(pg)["POSTGRES_PASSWORD"])


def _container_ports(entry: Any) -> tuple[str | None, set[int]]:
    """(published host part, container ports) of one compose `ports` entry, short or long syntax."""
    if isinstance(entry, dict):
        published = entry.get("published")
        return (None if published is None else str(published)), {int(entry["target"])}
    host, _, target = str(entry).split("/")[0].rpartition(":")
    low, _, high = target.partition("-")
    return (host or None), set(range(int(low), int(high or low) + 1))


def test_only_the_api_publishes_a_port_and_only_8000():
    for name, svc in compose()["services"].items():
        assert svc.get("network_mode") != "host", f"{name}: host networking would expose every Ray port"
        published = [_container_ports(p) for p in svc.get("ports", [])]
        if name != "api":
            assert not published, f"{name} publishes {svc['ports']}"
    ports = [_container_ports(p) for p in service("api")["ports"]]
    assert [targets for _, targets in ports] == [{API_PORT}]
    assert ports[0][0] is not None and ports[0][0].rpartition(":")[2] == str(API_PORT)


def test_no_service_publishes_a_ray_port():
    for name, svc in compose()["services"].items():
        for entry in svc.get("ports", []):
            host, targets = _container_ports(entry)
            host_port = (host or "").rpartition(":")[2]
            assert not targets & RAY_PRIVATE_PORTS, f"{name} publishes {entry}"
            assert not (host_port.isdigit() and int(host_port) in RAY_PRIVATE_PORTS), f"{name} publishes {entry}"


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


def test_ray_address_is_the_head_services_dashboard():
    url = urlsplit(service_env(service("api"))["RAY_ADDRESS"])
    head = argv(service("ray-head")["command"])
    assert "--head" in head
    assert url.scheme == "http" and url.hostname == "ray-head"
    assert url.port == int(flag(head, "--dashboard-port") or RAY_DASHBOARD_PORT)
    assert flag(head, "--dashboard-host") == "0.0.0.0", "the dashboard must listen beyond the head's loopback"


def test_worker_joins_the_heads_gcs_port():
    worker = argv(service("ray-worker")["command"])
    head = argv(service("ray-head")["command"])
    assert worker[:2] == ["ray", "start"] and "--block" in worker and "--head" not in worker
    assert flag(worker, "--address") == f"ray-head:{flag(head, '--port') or 6379}"


def test_worker_reserves_an_nvidia_gpu():
    devices = service("ray-worker")["deploy"]["resources"]["reservations"]["devices"]
    assert any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) for d in devices), devices


def test_ray_containers_get_the_database_and_enough_shared_memory():
    api_storage = service_env(service("api"))["KTG_STORAGE"]
    for name in ("ray-head", "ray-worker"):
        svc = service(name)
        assert service_env(svc)["KTG_STORAGE"] == api_storage, f"{name}: search jobs use the API's database"
        size = re.fullmatch(r"(\d+)\s*([gm])b?", str(svc["shm_size"]).lower())
        assert size and int(size[1]) * (1024 if size[2] == "g" else 1) >= 1024, f"{name}: shm_size {svc['shm_size']}"


def test_shared_volume_is_mounted_at_the_same_path_wherever_ktg_dirs_are_used():
    """The API hands each Ray job an absolute output path, so the paths must agree."""
    named = set(compose().get("volumes") or {})
    seen = {}
    for name in ("api", "ray-head", "ray-worker"):
        svc = service(name)
        env = service_env(svc)
        mounts = {dst: src for dst, src in compose_mounts(svc).items() if src in named}
        for var in ("KTG_DATA_DIR", "KTG_CACHE_DIR"):
            path = env[var]
            (mount,) = [m for m in mounts if path == m or path.startswith(m.rstrip("/") + "/")]
            seen.setdefault(var, set()).add((path, mounts[mount]))
    assert all(len(v) == 1 for v in seen.values()), seen


def test_compose_holds_no_literal_password_or_token():
    text = COMPOSE_FILE.read_text()
    for name, svc in compose()["services"].items():
        env = service_env(svc)
        assert "KTG_API_TOKENS" not in env, f"{name}: tokens go through a compose secret (KTG_API_TOKENS_FILE)"
        for key, value in env.items():
            for password in URL_PASSWORD.findall(value):
                assert ONLY_A_REFERENCE.match(password), f"{name}: {key} holds a literal password"
            if SECRET_NAME.search(key):
                assert ONLY_A_REFERENCE.match(value) or value.startswith("/run/secrets/"), f"{name}: {key}={value!r}"
    assert "REPLACE_ME" not in text


def _compose_secret_of(name: str, var: str) -> str:
    """The compose secret whose file the service's ``var`` names (and that the service mounts)."""
    path = service_env(service(name))[var]
    secret = path.removeprefix("/run/secrets/")
    assert path.startswith("/run/secrets/") and secret in service(name).get("secrets", []), f"{name}: {var}={path}"
    return secret


def test_api_tokens_come_from_a_compose_secret():
    assert _compose_secret_of("api", "KTG_API_TOKENS_FILE") in compose()["secrets"]


def test_every_ray_process_and_client_uses_the_same_ray_auth_token():
    secrets = set()
    for name in ("api", "ray-head", "ray-worker"):
        assert service_env(service(name))["RAY_AUTH_MODE"] == "token", name
        secrets.add(_compose_secret_of(name, "RAY_AUTH_TOKEN_PATH"))
    assert len(secrets) == 1, secrets


def test_compose_secret_files_stay_out_of_git_and_of_the_build_context():
    for name, secret in compose()["secrets"].items():
        source = (ROOT / secret["file"]).resolve()
        if shutil.which("git") and (ROOT / ".git").exists():
            ignored = subprocess.run(["git", "check-ignore", "-q", str(source)], cwd=ROOT)
            assert ignored.returncode == 0, f"secret {name}: {source} must be git-ignored"
        assert _dockerignored(str(source.relative_to(ROOT))), f"secret {name}: {source} is in the build context"


def test_every_compose_variable_is_documented_in_the_env_example():
    used = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", COMPOSE_FILE.read_text()))
    documented = set(re.findall(r"^#?\s*([A-Za-z_][A-Za-z0-9_]*)=", COMPOSE_ENV_EXAMPLE.read_text(), re.MULTILINE))
    assert used <= documented, f"undocumented in {COMPOSE_ENV_EXAMPLE.name}: {sorted(used - documented)}"
    assert re.search(r"^POSTGRES_PASSWORD=$", COMPOSE_ENV_EXAMPLE.read_text(), re.MULTILINE), "no default password"


# -- Dockerfiles ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_dockerfile_bakes_in_no_secret(kind):
    for word in ("ENV", "ARG"):
        for rest in instructions(kind, word):
            for key in re.findall(r"(?:^|\s)([A-Za-z_][A-Za-z0-9_]*)(?:=|\s|$)", rest):
                assert not SECRET_NAME.search(key), f"{kind}: {word} {rest}"
                assert key not in {"KTG_STORAGE", "KTG_API_TOKENS"}, f"{kind}: {word} {rest}"
            assert not URL_PASSWORD.search(rest), f"{kind}: {word} {rest}"


def _dockerignore_regex(pattern: str) -> re.Pattern[str]:
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def _dockerignored(path: str) -> bool:
    """Docker's rule: the last matching pattern wins; a pattern matching a parent folder matches."""
    excluded = False
    for line in DOCKERIGNORE.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate, pattern = line.startswith("!"), line.lstrip("!").strip("/")
        regex = _dockerignore_regex(pattern)
        parts = path.split("/")
        if any(regex.fullmatch("/".join(parts[:n])) for n in range(1, len(parts) + 1)):
            excluded = not negate
    return excluded


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
        assert not _dockerignored(probe), f"{kind}: COPY {source}, but .dockerignore excludes it"


def test_dockerignore_keeps_local_secrets_and_junk_out_of_the_build_context():
    for path in (".env", "docker/secrets/api_tokens", ".venv/bin/python", ".git/config", "datasets/cifar-10/x",
                 "ktg/__pycache__/cli.cpython-311.pyc"):
        assert _dockerignored(path), path


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
    for name in ("ray-head", "ray-worker"):
        args = argv(service(name)["command"])
        assert args[:2] == ["ray", "start"], args
        used |= {a.split("=")[0] for a in args if a.startswith("--")}
    rc = one("RayCluster")["spec"]
    for group in [rc["headGroupSpec"], *rc["workerGroupSpecs"]]:
        used |= {f"--{key}" for key in group.get("rayStartParams", {})}
    for name in sorted(used):
        assert re.search(rf"(^|\s){re.escape(name)}\b", result.stdout), f"`ray start` has no {name}"


# -- Kubernetes -------------------------------------------------------------------------------


def test_every_manifest_parses_and_every_kind_is_there():
    kinds = {doc["kind"] for _, doc in manifests()}
    assert {"Namespace", "Secret", "StatefulSet", "Service", "RayCluster", "Deployment",
            "PersistentVolumeClaim"} <= kinds
    (namespace,) = [d["metadata"]["name"] for d in of_kind("Namespace")]
    for path, doc in manifests():
        assert doc.get("apiVersion") and doc["metadata"].get("name"), f"{path.name}: {doc.get('kind')}"
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == namespace, f"{path.name}: {doc['metadata']['name']}"


def test_kustomization_lists_every_manifest_but_the_secret_template():
    kustomization = yaml.safe_load(KUSTOMIZATION.read_text())
    files = {p.name for p in DEPLOY.glob("*.yaml")} - {KUSTOMIZATION.name, SECRET_TEMPLATE.name}
    assert set(kustomization["resources"]) == files
    assert len(kustomization["resources"]) == len(files)


def test_raycluster_autoscales_a_gpu_worker_group():
    rc = one("RayCluster")
    assert rc["apiVersion"] == "ray.io/v1"
    spec = rc["spec"]
    assert spec["enableInTreeAutoscaling"] is True
    gpu_groups = [g for g in spec["workerGroupSpecs"]
                  if any(int(c.get("resources", {}).get("limits", {}).get("nvidia.com/gpu", 0)) >= 1
                         for c in g["template"]["spec"]["containers"])]
    assert gpu_groups, "no worker group asks for nvidia.com/gpu"
    for group in gpu_groups:
        assert 0 <= group["minReplicas"] <= group.get("replicas", group["minReplicas"]) <= group["maxReplicas"]
        assert group["maxReplicas"] >= 1
    for group in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:
        params = group.get("rayStartParams", {})
        assert all(isinstance(v, str) for v in params.values()), f"rayStartParams must be strings: {params}"
    assert spec["headGroupSpec"]["rayStartParams"].get("dashboard-host", "0.0.0.0") == "0.0.0.0"


def _port_number(container: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    (number,) = [p["containerPort"] for p in container["ports"] if p.get("name") == port]
    return number


def test_api_deployment_port_probes_and_service_agree():
    container = api_container()
    assert [p["containerPort"] for p in container["ports"]] == [API_PORT]
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        get = container[probe]["httpGet"]
        assert get["path"] == path and _port_number(container, get["port"]) == API_PORT
    labels = api_deployment()["spec"]["template"]["metadata"]["labels"]
    (svc,) = [s for s in of_kind("Service") if s["spec"].get("selector", {}).items() <= labels.items()]
    assert svc["spec"].get("type", "ClusterIP") == "ClusterIP"
    assert [_port_number(container, p.get("targetPort", p["port"])) for p in svc["spec"]["ports"]] == [API_PORT]


def test_secret_references_resolve_to_the_template_secrets_keys():
    (template,) = [doc for path, doc in manifests() if path == SECRET_TEMPLATE]
    name, keys = template["metadata"]["name"], set(template.get("stringData", {})) | set(template.get("data", {}))
    assert all(PLACEHOLDER in str(v) for v in template["stringData"].values()), "template values must be placeholders"
    assert len(of_kind("Secret")) == 1, "the only Secret is the template; the real one is made with kubectl"
    refs = [(d["secretKeyRef"]["name"], d["secretKeyRef"]["key"]) for _, doc in manifests() for d in walk(doc)
            if "secretKeyRef" in d]
    refs += [(d["secret"]["secretName"], item["key"]) for _, doc in manifests() for d in walk(doc)
             if isinstance(d.get("secret"), dict) for item in d["secret"].get("items", [])]
    assert refs
    for ref in refs:
        assert ref[0] == name and ref[1] in keys, f"{ref} is not a key of Secret {name}: {sorted(keys)}"


def test_kubernetes_env_carries_no_literal_secret():
    for path, doc in manifests():
        for container in containers(doc):
            for key, entry in k8s_env(container).items():
                value = str(entry.get("value", ""))
                assert not URL_PASSWORD.search(value), f"{path.name}: {key}"
                if SECRET_NAME.search(key) or key == "KTG_STORAGE":
                    assert "valueFrom" in entry or key.endswith("_FILE"), f"{path.name}: {key} must come from a Secret"


def test_ray_token_auth_is_on_for_every_ray_container_the_autoscaler_and_the_api():
    rc = one("RayCluster")
    env_lists = {c["name"]: c.get("env", []) for c in [*ray_containers(), api_container()]}
    env_lists["autoscaler"] = rc["spec"]["autoscalerOptions"].get("env", [])
    sources = set()
    for where, env in env_lists.items():
        by_name = {e["name"]: e for e in env}
        assert by_name.get("RAY_AUTH_MODE", {}).get("value") == "token", where
        ref = by_name["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]
        sources.add((ref["name"], ref["key"]))
    assert len(sources) == 1, f"one token for the whole cluster: {sources}"


def test_api_reads_its_tokens_from_the_mounted_secret():
    container = api_container()
    path = k8s_env(container)["KTG_API_TOKENS_FILE"]["value"]
    volumes = {v["name"]: v for v in api_deployment()["spec"]["template"]["spec"]["volumes"]}
    for mount in container["volumeMounts"]:
        secret = volumes[mount["name"]].get("secret")
        if secret and path.startswith(mount["mountPath"].rstrip("/") + "/"):
            assert path.removeprefix(mount["mountPath"].rstrip("/") + "/") in [i["path"] for i in secret["items"]]
            return
    pytest.fail(f"KTG_API_TOKENS_FILE={path} is not in a mounted Secret")


def test_ray_address_is_the_kuberay_head_services_dashboard_port():
    rc = one("RayCluster")
    url = urlsplit(k8s_env(api_container())["RAY_ADDRESS"]["value"])
    service_name = f"{rc['metadata']['name']}-head-svc"
    assert url.scheme == "http" and url.port == RAY_DASHBOARD_PORT
    assert url.hostname == service_name or url.hostname.startswith(service_name + "."), url.hostname
    head = rc["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert RAY_DASHBOARD_PORT in [p["containerPort"] for p in head.get("ports", [])]


def test_nothing_exposes_the_ray_ports_outside_the_cluster():
    for svc in of_kind("Service"):
        if svc["spec"].get("type", "ClusterIP") in {"NodePort", "LoadBalancer"}:
            ports = {p["port"] for p in svc["spec"]["ports"]} | {p.get("targetPort") for p in svc["spec"]["ports"]}
            assert not ports & RAY_PRIVATE_PORTS, svc["metadata"]["name"]
            assert not any(k.startswith("ray.io/") for k in svc["spec"].get("selector", {})), svc["metadata"]["name"]
    for kind in ("Ingress", "HTTPRoute", "GRPCRoute", "TCPRoute", "Gateway"):
        for doc in of_kind(kind):
            text = json.dumps(doc)
            assert "head-svc" not in text and str(RAY_DASHBOARD_PORT) not in text, f"{kind} {doc['metadata']['name']}"
    head = one("RayCluster")["spec"]["headGroupSpec"]
    assert head.get("serviceType", "ClusterIP") == "ClusterIP"
    assert head.get("headService", {}).get("spec", {}).get("type", "ClusterIP") == "ClusterIP"
    assert not head.get("enableIngress", False)


def test_shared_rwx_volume_backs_the_ktg_dirs_in_the_api_and_every_ray_pod():
    (pvc,) = [p for p in of_kind("PersistentVolumeClaim") if "ReadWriteMany" in p["spec"]["accessModes"]]
    claim = pvc["metadata"]["name"]
    paths = set()
    workloads = [api_deployment(), one("RayCluster")]
    for pod in [spec for doc in workloads for spec in pod_specs(doc)]:
        volumes = {v["name"] for v in pod["volumes"] if v.get("persistentVolumeClaim", {}).get("claimName") == claim}
        for container in pod["containers"]:
            mounts = [m["mountPath"] for m in container.get("volumeMounts", []) if m["name"] in volumes]
            env = k8s_env(container)
            for var in ("KTG_DATA_DIR", "KTG_CACHE_DIR"):
                value = env[var]["value"]
                assert any(value == m or value.startswith(m.rstrip("/") + "/") for m in mounts), \
                    f"{container['name']}: {var}={value} is not on the shared volume {claim}"
                paths.add((var, value))
    assert len(paths) == 2, f"the API and the Ray pods must agree on the paths: {sorted(paths)}"


def test_kubernetes_images_are_the_ones_compose_builds():
    built = set()
    for name in ("api", "ray-head", "ray-worker"):
        svc = service(name)
        kind = image_ref(svc["image"])[0].removeprefix("ktg-")
        assert svc["build"]["dockerfile"] == f"docker/{kind}.Dockerfile", f"{name} builds {svc['image']} from elsewhere"
        built.add(svc["image"])
    assert service("ray-head")["image"] == service("ray-worker")["image"]
    assert {c["image"] for c in containers(api_deployment())} == {service("api")["image"]}
    assert {c["image"] for c in ray_containers()} == {service("ray-head")["image"]}
    kustomization = yaml.safe_load(KUSTOMIZATION.read_text())
    version = project()["version"]
    for entry in kustomization["images"]:
        assert entry["name"] in {image_ref(i)[0] for i in built}
        assert str(entry.get("newTag", version)) == version
    readme = README.read_text()
    for image in sorted(built):
        assert image in readme, f"docker/README.md does not name the image {image}"
        kind = image_ref(image)[0].removeprefix("ktg-")
        assert f"-f docker/{kind}.Dockerfile -t {image} ." in readme


def test_kubectl_kustomize_renders_the_manifests():
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed here")
    result = subprocess.run([kubectl, "kustomize", str(DEPLOY)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    rendered = [d for d in yaml.safe_load_all(result.stdout) if d]
    expected = [doc for path, doc in manifests() if path != SECRET_TEMPLATE]
    assert sorted((d["kind"], d["metadata"]["name"]) for d in rendered) == \
        sorted((d["kind"], d["metadata"]["name"]) for d in expected)
