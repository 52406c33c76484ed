"""The Kubernetes manifests under deploy/: every kind there and listed, KubeRay
autoscaling GPU workers, the API's probes and Service, secrets only by reference,
Ray reachable only inside the cluster, and the images compose builds.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from tests.deploy_files import (
    API_PORT,
    DEPLOY,
    KUSTOMIZATION,
    ONLY_A_REFERENCE,
    RAY_DASHBOARD_PORT,
    RAY_PRIVATE_PORTS,
    README,
    SECRET_NAME,
    SECRET_TEMPLATE,
    URL_PASSWORD,
    api_container,
    api_deployment,
    argv,
    compose,
    compose_mounts,
    containers,
    flag,
    image_ref,
    instructions,
    k8s_env,
    manifests,
    of_kind,
    one,
    pod_specs,
    project,
    ray_containers,
    service,
    service_env,
    walk,
)

PLACEHOLDER = "REPLACE_ME"


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


def _ray_group_containers() -> dict[str, dict[str, Any]]:
    """{"head": container, "gpu": container}: the ray container of the head and of the GPU worker group."""
    spec = one("RayCluster")["spec"]
    groups = {"head": spec["headGroupSpec"], **{g["groupName"]: g for g in spec["workerGroupSpecs"]}}
    return {name: g["template"]["spec"]["containers"][0] for name, g in groups.items()}


# Kubernetes container -> the compose service playing the same part (the cluster has GPU workers).
K8S_TO_COMPOSE = {"api": "api", "head": "ray-head-gpu", "gpu": "ray-worker-gpu"}


def _k8s_containers() -> dict[str, dict[str, Any]]:
    return {"api": api_container(), **_ray_group_containers()}


def test_kubernetes_images_are_the_ones_compose_builds():
    for role, container in _k8s_containers().items():
        assert container["image"] == service(K8S_TO_COMPOSE[role])["image"], role
    kustomization = yaml.safe_load(KUSTOMIZATION.read_text())
    images = {image_ref(c["image"])[0] for c in _k8s_containers().values()}
    assert {entry["name"] for entry in kustomization["images"]} == images
    for entry in kustomization["images"]:
        assert "newTag" not in entry, "one newTag would give the CPU and the CUDA image the same tag"
    readme = README.read_text()
    version = project()["version"]
    assert f"docker build -f docker/Dockerfile -t ktg:{version} ." in readme
    assert f"docker build -f docker/Dockerfile --build-arg TORCH_BUILD=cuda -t ktg:{version}-cuda ." in readme


def _ktg_env(env: dict[str, str]) -> set[str]:
    return {name for name in env if name.startswith("KTG_")}


@pytest.mark.parametrize("role", sorted(K8S_TO_COMPOSE))
def test_env_names_and_paths_agree_with_compose(role):
    """Same KTG_* variables in both deployments, and the same values for the paths."""
    container = _k8s_containers()[role]
    k8s = k8s_env(container)
    compose_env = service_env(service(K8S_TO_COMPOSE[role]))
    assert _ktg_env(k8s) == _ktg_env(compose_env), f"{role}: {sorted(_ktg_env(k8s) ^ _ktg_env(compose_env))}"
    for var in ("KTG_DATA_DIR", "KTG_CACHE_DIR", "KTG_DATASETS_DIR"):
        assert k8s[var]["value"] == compose_env[var], f"{role}: {var}"
    assert k8s["RAY_AUTH_MODE"]["value"] == compose_env["RAY_AUTH_MODE"] == "token"


@pytest.mark.parametrize("role", sorted(K8S_TO_COMPOSE))
def test_volumes_agree_with_compose(role):
    """The shared volume at KTG_DATA_DIR, the datasets read-only at KTG_DATASETS_DIR."""
    container = _k8s_containers()[role]
    env = k8s_env(container)
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    compose_mounts_ = compose_mounts(service(K8S_TO_COMPOSE[role]))
    data, datasets = env["KTG_DATA_DIR"]["value"], env["KTG_DATASETS_DIR"]["value"]
    assert data in mounts and data in compose_mounts_, role
    assert mounts[datasets].get("readOnly") is True and datasets in compose_mounts_, role
    assert mounts[datasets]["name"] == mounts[data]["name"] and mounts[datasets]["subPath"] == "datasets", \
        f"{role}: the datasets are the folder datasets/ of the shared volume (storage.yaml)"
    pg_mounts = [m["mountPath"] for c in containers(one("StatefulSet")) for m in c.get("volumeMounts", [])]
    assert set(compose_mounts(service("postgres"))) <= set(pg_mounts)


def test_secrets_agree_with_compose():
    """Every compose secret is a key of the Kubernetes Secret (api_tokens -> api-tokens), and
    PostgreSQL's password is a Secret key in both."""
    (template,) = [doc for path, doc in manifests() if path == SECRET_TEMPLATE]
    keys = set(template["stringData"])
    for name in compose()["secrets"]:
        assert name.replace("_", "-") in keys, f"compose secret {name} has no key in {template['metadata']['name']}"
    (pg,) = containers(one("StatefulSet"))
    assert "secretKeyRef" in k8s_env(pg)["POSTGRES_PASSWORD"]["valueFrom"]
    assert ONLY_A_REFERENCE.match(service_env(service("postgres"))["POSTGRES_PASSWORD"])


def test_ports_agree_with_compose_and_the_image():
    assert [p["containerPort"] for p in api_container()["ports"]] == [API_PORT]
    assert [str(API_PORT)] == instructions("ktg", "EXPOSE")
    head_ports = {p["containerPort"] for p in _ray_group_containers()["head"]["ports"]}
    compose_head = argv(service("ray-head-gpu")["command"])
    assert {int(flag(compose_head, "--port")), int(flag(compose_head, "--dashboard-port"))} <= head_ports
    # The URL's password is a ${...} reference, which urlsplit cannot read: take host:port after the last @.
    host, port = re.fullmatch(r".*@([^:/@]+):(\d+)/\w+", service_env(service("api"))["KTG_STORAGE"]).groups()
    (pg_service,) = [s for s in of_kind("Service") if s["metadata"]["name"] == "ktg-postgres"]
    assert host == "postgres" and int(port) == pg_service["spec"]["ports"][0]["port"] == 5432


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
