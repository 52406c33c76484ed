"""Every Kubernetes object in deploy/ against the schemas of pinned versions, offline:
the core kinds against Kubernetes 1.33's OpenAPI definitions, the RayCluster against
the ``openAPIV3Schema`` of the KubeRay 1.7.0 CRD (deploy/schemas/, with its README).

Unknown fields are errors here (the API server would drop them or only warn), so a
misspelt or misplaced field fails the test instead of silently doing nothing.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import re
from collections.abc import Callable
from typing import Any

import pytest
import yaml
from jsonschema import Draft4Validator

from tests.deploy_files import DEPLOY, README, manifests

SCHEMAS = DEPLOY / "schemas"
K8S_VERSION = "1.33"
KUBERAY_VERSION = "1.7.0"
K8S_DEFINITIONS = SCHEMAS / f"kubernetes-{K8S_VERSION}-definitions.json"
RAYCLUSTER_CRD = SCHEMAS / f"kuberay-{KUBERAY_VERSION}-ray.io_rayclusters.yaml"
REF = "#/definitions/"
OBJECT_META = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
# Kubernetes' two special strings, which YAML users write as numbers too.
LOOSE_TYPES = {
    "io.k8s.apimachinery.pkg.util.intstr.IntOrString": {"type": ["integer", "string"]},
    "io.k8s.apimachinery.pkg.api.resource.Quantity": {"type": ["string", "number"]},
}


def _strict(node: Any) -> Any:
    """A copy in which every object with listed properties refuses any other property,
    and OpenAPI's ``nullable`` becomes JSON Schema's null type."""
    if isinstance(node, list):
        return [_strict(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: _strict(value) for key, value in node.items()}
    if "properties" in out and "additionalProperties" not in out \
            and not out.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    if out.pop("nullable", False) and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    return out


@functools.cache
def k8s_definitions() -> dict[str, Any]:
    definitions = json.loads(K8S_DEFINITIONS.read_text())["definitions"]
    return {name: LOOSE_TYPES.get(name) or _strict(schema) for name, schema in definitions.items()}


@functools.cache
def k8s_kinds() -> dict[tuple[str, str], str]:
    """(apiVersion, kind) -> definition name, from the definitions' group-version-kind."""
    kinds = {}
    for name, schema in json.loads(K8S_DEFINITIONS.read_text())["definitions"].items():
        for gvk in schema.get("x-kubernetes-group-version-kind", []):
            api_version = f"{gvk['group']}/{gvk['version']}" if gvk["group"] else gvk["version"]
            kinds[(api_version, gvk["kind"])] = name
    return kinds


@functools.cache
def raycluster_schema(api_version: str) -> dict[str, Any]:
    crd = yaml.safe_load(RAYCLUSTER_CRD.read_text())
    group = crd["spec"]["group"]
    (version,) = [v for v in crd["spec"]["versions"] if f"{group}/{v['name']}" == api_version]
    schema = _strict(version["schema"]["openAPIV3Schema"])
    # The CRD leaves metadata to the API server, which checks it as any object's.
    schema["properties"]["metadata"] = {"$ref": REF + OBJECT_META}
    return schema


def validator(doc: dict[str, Any]) -> Draft4Validator:
    """The validator for one manifest document, chosen by its apiVersion and kind."""
    key = (doc.get("apiVersion"), doc.get("kind"))
    if key == ("ray.io/v1", "RayCluster"):
        root = raycluster_schema(key[0])
    else:
        assert key in k8s_kinds(), f"{key} is not a Kubernetes {K8S_VERSION} kind held in {K8S_DEFINITIONS.name}"
        root = {"$ref": REF + k8s_kinds()[key]}
    return Draft4Validator({**root, "definitions": k8s_definitions()})


def errors(doc: dict[str, Any]) -> list[str]:
    found = sorted(validator(doc).iter_errors(doc), key=lambda e: list(e.absolute_path))
    return [f"{'.'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}" for e in found]


def _label(item: tuple[Any, dict[str, Any]]) -> str:
    path, doc = item
    return f"{path.name}:{doc['kind']}/{doc['metadata']['name']}"


@pytest.mark.parametrize("item", manifests(), ids=_label)
def test_manifest_matches_its_pinned_schema(item):
    found = errors(item[1])
    assert not found, f"{_label(item)}:\n" + "\n".join(found)


# -- the schemas do catch mistakes -------------------------------------------------------


def _first(kind: str) -> dict[str, Any]:
    return copy.deepcopy(next(doc for _, doc in manifests() if doc["kind"] == kind))


def _pod(doc: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = doc["spec"]["template"]["spec"]
    return spec


def _rename(node: dict[str, Any], old: str, new: str) -> None:
    node[new] = node.pop(old)


# (kind, what goes wrong, the change, the path the error must name)
BREAKAGES: list[tuple[str, str, Callable[[dict[str, Any]], None], str]] = [
    ("Deployment", "misspelt container field",
     lambda d: _rename(_pod(d)["containers"][0], "ports", "port"), "spec.template.spec.containers.0"),
    ("Deployment", "replicas as a word", lambda d: d["spec"].update(replicas="one"), "spec.replicas"),
    ("Deployment", "env entry without a name",
     lambda d: _pod(d)["containers"][0]["env"][0].pop("name"), "spec.template.spec.containers.0.env.0"),
    ("Service", "port as a list", lambda d: d["spec"]["ports"][0].update(port=[8000]), "spec.ports.0.port"),
    ("StatefulSet", "volume claim template in the pod spec",
     lambda d: _pod(d).update(volumeClaimTemplates=[]), "spec.template.spec"),
    ("NetworkPolicy", "unknown policy type field",
     lambda d: d["spec"].update(ingres=[]), "spec"),
    ("PersistentVolumeClaim", "access modes as a string",
     lambda d: d["spec"].update(accessModes="ReadWriteMany"), "spec.accessModes"),
    ("Secret", "string data as a list", lambda d: d.update(stringData=["x"]), "stringData"),
    ("Namespace", "misspelt metadata field", lambda d: _rename(d["metadata"], "name", "nmae"), "metadata"),
    ("RayCluster", "misspelt worker group field",
     lambda d: _rename(d["spec"]["workerGroupSpecs"][0], "maxReplicas", "maxReplica"), "spec.workerGroupSpecs.0"),
    ("RayCluster", "rayStartParams value as a number",
     lambda d: d["spec"]["headGroupSpec"]["rayStartParams"].update({"num-cpus": 0}),
     "spec.headGroupSpec.rayStartParams.num-cpus"),
    ("RayCluster", "container field in the head group",
     lambda d: d["spec"]["headGroupSpec"].update(image="ktg:0.1.0"), "spec.headGroupSpec"),
    ("RayCluster", "misspelt metadata field", lambda d: d["metadata"].update(label={}), "metadata"),
]


@pytest.mark.parametrize(("kind", "what", "change", "where"), BREAKAGES, ids=[b[1] for b in BREAKAGES])
def test_a_broken_field_fails_validation(kind, what, change, where):
    doc = _first(kind)
    assert not errors(doc)
    change(doc)
    found = errors(doc)
    assert any(line.startswith(where + ":") for line in found), f"{what}: expected an error at {where}, got {found}"


# -- the pins ---------------------------------------------------------------------------


def _readme_sha256(name: str) -> set[str]:
    """The sha256 digests on the lines of deploy/schemas/README.md that name ``name``."""
    lines = [line for line in (SCHEMAS / "README.md").read_text().splitlines() if f"`{name}`" in line]
    return {digest for line in lines for digest in re.findall(r"\b[0-9a-f]{64}\b", line)}


def test_schema_files_are_the_ones_the_readme_pins():
    for path in (K8S_DEFINITIONS, RAYCLUSTER_CRD):
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        assert digest in _readme_sha256(path.name), f"deploy/schemas/README.md does not pin {path.name} ({digest})"
    crd = yaml.safe_load(RAYCLUSTER_CRD.read_text())
    assert crd["metadata"]["name"] == "rayclusters.ray.io"
    assert json.loads(K8S_DEFINITIONS.read_text())["definitions"], "no definitions"


def test_the_docs_name_the_pinned_operator_and_kubernetes_versions():
    readme = README.read_text()
    assert f"KubeRay {KUBERAY_VERSION}" in readme, f"docker/README.md must name KubeRay {KUBERAY_VERSION}"
    assert f"Kubernetes {K8S_VERSION}" in readme, f"docker/README.md must name Kubernetes {K8S_VERSION}"
    assert f"KubeRay {KUBERAY_VERSION}" in (DEPLOY / "raycluster.yaml").read_text()
