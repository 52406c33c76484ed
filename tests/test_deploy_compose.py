"""docker-compose.yml: profiles cpu and gpu, each with PostgreSQL, a Ray head, a worker and
the API; trial resources that fit the profile's worker; only the API published; Ray private
and authenticated; secrets through compose secrets; one shared volume and the datasets
folder at the same paths everywhere; every variable documented.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.deploy_files import (
    API_PORT,
    COMPOSE_ENV_EXAMPLE,
    COMPOSE_FILE,
    ONLY_A_REFERENCE,
    PROFILES,
    RAY_DASHBOARD_PORT,
    RAY_PRIVATE_PORTS,
    ROOT,
    SECRET_NAME,
    URL_PASSWORD,
    argv,
    compose,
    compose_mounts,
    dockerignored,
    env_default,
    flag,
    ktg_services,
    profile_services,
    ray_services,
    service,
    service_env,
)

DATASETS = "/datasets"


@pytest.mark.parametrize("profile", PROFILES)
def test_each_profile_runs_postgres_a_head_a_worker_and_the_api(profile):
    head, worker = ray_services(profile)
    assert set(profile_services(profile)) == {"postgres", "api", head, worker}
    assert service(worker)["depends_on"][head]["condition"] == "service_healthy"


def test_every_service_has_a_healthcheck():
    """docker/smoke.sh waits for every service to be healthy."""
    for name, svc in compose()["services"].items():
        assert argv(svc.get("healthcheck", {}).get("test")), f"{name} has no healthcheck"


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
        if name != "api":
            assert not svc.get("ports"), f"{name} publishes {svc['ports']}"
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


@pytest.mark.parametrize("profile", PROFILES)
def test_the_api_and_the_worker_reach_the_profiles_head_by_one_name(profile):
    head_name, worker_name = ray_services(profile)
    head, worker = argv(service(head_name)["command"]), argv(service(worker_name)["command"])
    url = urlsplit(service_env(service("api"))["RAY_ADDRESS"])
    assert url.hostname in service(head_name)["networks"]["default"]["aliases"], f"{head_name} is not {url.hostname}"
    assert url.scheme == "http" and url.port == int(flag(head, "--dashboard-port") or RAY_DASHBOARD_PORT)
    assert flag(head, "--dashboard-host") == "0.0.0.0", "the dashboard must listen beyond the head's loopback"
    assert worker[:2] == ["ray", "start"] and "--block" in worker and "--head" not in worker
    assert flag(worker, "--address") == f"{url.hostname}:{flag(head, '--port') or 6379}"


def _gpu_reservation(svc: dict[str, Any]) -> bool:
    devices = svc.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])
    return any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) for d in devices)


@pytest.mark.parametrize("profile", PROFILES)
def test_default_trial_resources_fit_the_profiles_worker(profile):
    """The search driver runs on the head and reads these; a trial asking for a GPU on a
    CPU-only worker would wait forever, one asking for none would leave the GPU idle."""
    head, worker = ray_services(profile)
    env = {k: env_default(v) for k, v in service_env(service(head)).items()}
    gpus, cpus = float(env["KTG_GPUS_PER_TRIAL"]), float(env["KTG_CPUS_PER_TRIAL"])
    if profile == "gpu":
        assert _gpu_reservation(service(worker)) and 0 < gpus <= 1, (gpus, service(worker).get("deploy"))
        assert service(worker)["image"].endswith("-cuda")
    else:
        assert not _gpu_reservation(service(worker)) and gpus == 0, gpus
        assert cpus <= 1, "one CPU per trial fits a worker on any machine"
    assert env["KTG_WORKERS"] == "", "left empty, the driver derives concurrency from the cluster's CPUs"


def test_ray_containers_get_the_database_and_enough_shared_memory():
    api_storage = service_env(service("api"))["KTG_STORAGE"]
    for name in ktg_services()[1:]:
        svc = service(name)
        assert service_env(svc)["KTG_STORAGE"] == api_storage, f"{name}: search jobs use the API's database"
        size = re.fullmatch(r"(\d+)\s*([gm])b?", str(svc["shm_size"]).lower())
        assert size and int(size[1]) * (1024 if size[2] == "g" else 1) >= 1024, f"{name}: shm_size {svc['shm_size']}"


def test_shared_volume_and_datasets_are_mounted_at_the_same_paths_wherever_ktg_runs():
    """The API hands each Ray job an absolute output path, and a study's data_dir is
    relative to KTG_DATASETS_DIR, so every container must see the same paths."""
    named = set(compose().get("volumes") or {})
    seen: dict[str, set[tuple[str, str]]] = {}
    for name in ktg_services():
        svc = service(name)
        env = service_env(svc)
        mounts = compose_mounts(svc)
        for var in ("KTG_DATA_DIR", "KTG_CACHE_DIR"):
            path = env[var]
            (mount,) = [m for m, src in mounts.items() if src in named and (path == m or path.startswith(m + "/"))]
            seen.setdefault(var, set()).add((path, mounts[mount]))
        assert env["KTG_DATASETS_DIR"] == DATASETS, name
        datasets = [v for v in svc["volumes"] if isinstance(v, str) and v.split(":")[-2:] == [DATASETS, "ro"]]
        assert datasets, f"{name}: the datasets folder must be mounted read-only at {DATASETS}"
        seen.setdefault("datasets", set()).add((DATASETS, mounts[DATASETS]))
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
    for name in ktg_services():
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
