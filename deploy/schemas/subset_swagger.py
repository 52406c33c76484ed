"""Cut Kubernetes' OpenAPI (swagger 2.0) spec down to what deploy/ needs.

    git show v33.1.0:kubernetes/swagger.json.unprocessed > swagger.json   # kubernetes-client/python
    python deploy/schemas/subset_swagger.py swagger.json > deploy/schemas/kubernetes-1.33-definitions.json

Keeps the definition of every kind named below and everything it refers to,
unchanged; tests/test_deploy_schemas.py turns them into JSON schemas.
"""

from __future__ import annotations

import json
import sys
from typing import Any

# The kinds deploy/ uses, plus ObjectMeta for the RayCluster's metadata (its CRD
# schema leaves metadata to the API server).
ROOTS = (
    "io.k8s.api.core.v1.Namespace",
    "io.k8s.api.core.v1.Secret",
    "io.k8s.api.core.v1.Service",
    "io.k8s.api.core.v1.PersistentVolumeClaim",
    "io.k8s.api.apps.v1.Deployment",
    "io.k8s.api.apps.v1.StatefulSet",
    "io.k8s.api.networking.v1.NetworkPolicy",
    "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta",
)
REF_PREFIX = "#/definitions/"


def refs(node: Any) -> set[str]:
    if isinstance(node, dict):
        found = {node["$ref"].removeprefix(REF_PREFIX)} if isinstance(node.get("$ref"), str) else set()
        return found.union(*(refs(v) for v in node.values()))
    if isinstance(node, list):
        return set().union(*(refs(v) for v in node))
    return set()


def closure(definitions: dict[str, Any], roots: tuple[str, ...]) -> dict[str, Any]:
    keep: dict[str, Any] = {}
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name not in keep:
            keep[name] = definitions[name]
            todo += sorted(refs(keep[name]) - keep.keys())
    return dict(sorted(keep.items()))


def main() -> None:
    spec = json.load(open(sys.argv[1]))
    json.dump({"info": spec["info"], "definitions": closure(spec["definitions"], ROOTS)}, sys.stdout, indent=1)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
