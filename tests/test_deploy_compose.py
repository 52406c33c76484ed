"""docker-compose.yml: four services, only the API published, Ray private and
authenticated, secrets through compose secrets, one shared volume, every variable documented.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from typing import Any
from urllib.parse import urlsplit

from tests.deploy_files import (
    API_PORT,
    COMPOSE_ENV_EXAMPLE,
    COMPOSE_FILE,
    ONLY_A_REFERENCE,
    RAY_DASHBOARD_PORT,
    RAY_PRIVATE_PORTS,
    ROOT,
    SECRET_NAME,
    URL_PASSWORD,
    argv,
    compose,
    compose_mounts,
    dockerignored,
    flag,
    service,
    service_env,
)

SERVICES = {"postgres", "ray-head", "ray-worker", "api"}


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
        assert dockerignored(str(source.relative_to(ROOT))), f"secret {name}: {source} is in the build context"


def test_every_compose_variable_is_documented_in_the_env_example():
    used = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", COMPOSE_FILE.read_text()))
    documented = set(re.findall(r"^#?\s*([A-Za-z_][A-Za-z0-9_]*)=", COMPOSE_ENV_EXAMPLE.read_text(), re.MULTILINE))
    assert used <= documented, f"undocumented in {COMPOSE_ENV_EXAMPLE.name}: {sorted(used - documented)}"
    assert re.search(r"^POSTGRES_PASSWORD=$", COMPOSE_ENV_EXAMPLE.read_text(), re.MULTILINE), "no default password"
