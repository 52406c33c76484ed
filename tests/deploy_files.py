"""Reading the deployment files for the deploy tests: docker-compose.yml, the
Dockerfiles under docker/, .dockerignore and the Kubernetes manifests under deploy/.

Plain parsing (YAML, the Dockerfile instruction syntax, Docker's ignore rules),
cached per file; no Docker engine or Kubernetes cluster is needed.
"""

from __future__ import annotations

import functools
import json
import re
import shlex
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
COMPOSE_ENV_EXAMPLE = ROOT / "docker" / "compose.env.example"
# The one ktg image (API, Ray head, Ray workers) and the offline stand-in for postgres:15.
DOCKERFILES = {"ktg": ROOT / "docker" / "Dockerfile", "postgres-standin": ROOT / "docker" / "postgres-standin" / "Dockerfile"}
STANDIN_COMPOSE_FILE = ROOT / "docker" / "postgres-standin" / "compose.yml"
SMOKE_SCRIPT = ROOT / "docker" / "smoke.sh"
DOCKERIGNORE = ROOT / ".dockerignore"
README = ROOT / "docker" / "README.md"
DEPLOY = ROOT / "deploy"
KUSTOMIZATION = DEPLOY / "kustomization.yaml"
SECRET_TEMPLATE = DEPLOY / "secret.example.yaml"

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


# -- loading ----------------------------------------------------------------------------


@functools.cache
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def service(name: str) -> dict[str, Any]:
    return compose()["services"][name]


PROFILES = ("cpu", "gpu")


def profile_services(profile: str) -> dict[str, dict[str, Any]]:
    """The services `docker compose --profile <profile> up` starts."""
    return {name: svc for name, svc in compose()["services"].items()
            if not svc.get("profiles") or profile in svc["profiles"]}


def ray_services(profile: str) -> tuple[str, str]:
    """(head, worker) service names of a profile."""
    services = profile_services(profile)
    heads = [n for n, s in services.items() if "--head" in argv(s.get("command"))]
    workers = [n for n, s in services.items() if argv(s.get("command"))[:2] == ["ray", "start"] and n not in heads]
    assert len(heads) == 1 and len(workers) == 1, f"profile {profile}: heads {heads}, workers {workers}"
    return heads[0], workers[0]


def ktg_services() -> list[str]:
    """Every service running the ktg image: the API and each profile's head and worker."""
    return ["api", *sorted({name for profile in PROFILES for name in ray_services(profile)})]


def env_default(value: str) -> str:
    """The value of a compose string, with ``${VAR:-default}`` read as its default."""
    return re.sub(r"\$\{[A-Za-z_][A-Za-z0-9_]*:-([^}]*)\}", r"\1", value)


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


def image_cmd(kind: str = "ktg") -> list[str]:
    return exec_form(instructions(kind, "CMD")[-1])


def api_serve_argvs() -> dict[str, list[str]]:
    """The command each API container runs (compose's `command` / the pod's command+args, else the image's CMD)."""
    (container,) = containers(api_deployment())
    k8s = argv(container.get("command")) + argv(container.get("args"))
    return {"Dockerfile": image_cmd(),
            "docker-compose.yml": argv(service("api").get("command")) or image_cmd(),
            "deploy/api.yaml": k8s or image_cmd()}


# -- .dockerignore -------------------------------------------------------------------------


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


def dockerignored(path: str) -> bool:
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
