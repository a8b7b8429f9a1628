#!/usr/bin/env python3
"""Validate Kubernetes manifests against Kubernetes' own schemas and the Dask operator's CRDs.

    python deploy/kubernetes/validate.py [FILE.yaml ...] [--kubernetes-version X.Y ...]

With no FILE, every ``*.yaml`` beside this script. Each document is checked
strictly, as ``kubectl apply`` (server-side field validation ``Strict``, the
default since Kubernetes 1.27) would check it, without a cluster:

* a built-in kind (``StatefulSet``, ``Service``, ``Job``, ...) against the
  JSON schemas of the Kubernetes release that the ``kubernetes-validate``
  package ships (its strict variant: an unknown field is an error);
* a Dask operator kind (``DaskCluster``, ``DaskJob``, ``DaskWorkerGroup``,
  ``DaskAutoscaler``) against the ``openAPIV3Schema`` of the CustomResourceDefinition
  that the operator's Helm chart installs, read from the ``dask-kubernetes``
  package (``dask_kubernetes/operator/deployment/helm/dask-kubernetes-operator/crds/``),
  with ``jsonschema``, made strict the way the API server is (an unknown field
  is an error unless the schema keeps unknown fields), and its ``metadata``
  against Kubernetes' ``ObjectMeta``.

Prints one line per problem (``FILE: KIND/NAME: FIELD: what``) and exits 1
if there is any, 0 if every document validates, 2 on bad usage or a missing
package (``pip install -e '.[dev]'`` installs them). ``tests/test_deploy_kubernetes.py``
runs it on every manifest.
"""

from __future__ import annotations

import argparse
import copy
import functools
import importlib.resources
import sys
from pathlib import Path
from typing import Any

#: the Kubernetes releases (schemas of kubernetes-validate) every manifest is checked against: the oldest
#: the manifests support and the newest that kubernetes-validate 1.37 ships
KUBERNETES_VERSIONS = ("1.30", "1.37")
#: where dask-kubernetes keeps the CRDs its Helm chart installs (generated from its templates, refs resolved)
CRD_FOLDER = ("operator", "deployment", "helm", "dask-kubernetes-operator", "crds")
#: problems listed per document (the first ones, by field path)
MAX_PROBLEMS = 20

PROG = "validate.py"


class MissingPackage(Exception):
    """A package the validation needs is not installed."""


def _modules():
    try:
        import jsonschema
        import kubernetes_validate
        import yaml
    except ImportError as error:
        raise MissingPackage(f"{error.name} is not installed (pip install -e '.[dev]', or pip install "
                             "kubernetes-validate jsonschema dask-kubernetes PyYAML)") from None
    return jsonschema, kubernetes_validate, yaml


def load_documents(path: str | Path) -> list[dict[str, Any]]:
    """The YAML documents of ``path`` (empty ones dropped)."""
    _, _, yaml = _modules()
    with open(path, encoding="utf-8") as f:
        return [doc for doc in yaml.safe_load_all(f) if doc is not None]


def strict_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """A copy of a CRD's structural schema that rejects what the API server rejects under strict field
    validation: an object with ``properties`` takes no other field (unless it has ``additionalProperties``
    or ``x-kubernetes-preserve-unknown-fields``), and ``nullable`` allows null."""
    node = copy.deepcopy(schema)

    def walk(node: Any) -> None:
        if not isinstance(node, dict):
            return
        if node.get("nullable") and isinstance(node.get("type"), str):
            node["type"] = [node["type"], "null"]
        if node.get("x-kubernetes-int-or-string") and "type" not in node:
            node["type"] = ["integer", "string"]
        if ("properties" in node and "additionalProperties" not in node
                and not node.get("x-kubernetes-preserve-unknown-fields")):
            node["additionalProperties"] = False
        for child in node.get("properties", {}).values():
            walk(child)
        for key in ("items", "additionalProperties", "not"):
            walk(node.get(key))
        for key in ("allOf", "anyOf", "oneOf"):
            for child in node.get(key, []):
                walk(child)

    walk(node)
    return node


@functools.lru_cache(maxsize=1)
def crd_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    """``(apiVersion, kind) -> strict schema`` of every CRD that dask-kubernetes ships (all served versions;
    read once, shared: do not modify)."""
    _, _, yaml = _modules()
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: the CRDs are about 1 MB
    try:
        folder = importlib.resources.files("dask_kubernetes").joinpath(*CRD_FOLDER)
    except ModuleNotFoundError:
        raise MissingPackage("dask_kubernetes is not installed (pip install -e '.[dev]', or pip install "
                             "dask-kubernetes)") from None
    schemas = {}
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if not entry.name.endswith(".yaml"):
            continue
        crd = yaml.load(entry.read_text(encoding="utf-8"), Loader=loader)
        if not isinstance(crd, dict) or crd.get("kind") != "CustomResourceDefinition":
            continue
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            if not version.get("served", True):
                continue
            api_version = f"{group}/{version['name']}"
            schema = strict_schema(version["schema"]["openAPIV3Schema"])
            # the API server checks these itself (metadata: against ObjectMeta, see problems())
            schema.setdefault("properties", {}).update({
                "apiVersion": {"const": api_version},
                "kind": {"const": kind},
                "metadata": {"type": "object"},
            })
            schema["required"] = sorted(set(schema.get("required", [])) | {"apiVersion", "kind", "metadata"})
            schemas[(api_version, kind)] = schema
    if not schemas:
        raise MissingPackage(f"no CustomResourceDefinition found under dask_kubernetes/{'/'.join(CRD_FOLDER)}")
    return schemas


def _field(path) -> str:
    return ".".join(str(part) for part in path) or "(document)"


def problems(document: Any, version: str, crds: dict[tuple[str, str], dict[str, Any]] | None = None) -> list[str]:
    """What is wrong with one manifest document for Kubernetes ``version`` (``"1.33"``): one line
    each, ``FIELD: what``; empty when it validates."""
    jsonschema, kubernetes_validate, _ = _modules()
    if not isinstance(document, dict) or not isinstance(document.get("apiVersion"), str) \
            or not isinstance(document.get("kind"), str):
        return ["(document): not a Kubernetes object (no apiVersion and kind)"]
    crds = crd_schemas() if crds is None else crds
    key = (document["apiVersion"], document["kind"])
    if key in crds:
        validator = jsonschema.Draft4Validator(crds[key])  # OpenAPI 3.0's schema dialect
        found = [f"{_field(e.absolute_path)}: {e.message}"
                 for e in sorted(validator.iter_errors(document), key=lambda e: [str(p) for p in e.absolute_path])]
        if isinstance(document.get("metadata"), dict):  # ObjectMeta, through any kind that has only metadata
            found += [line for line in problems(
                {"apiVersion": "v1", "kind": "ConfigMap", "metadata": document["metadata"]}, version, crds)
                if line.startswith(("metadata:", "metadata."))]
        return found[:MAX_PROBLEMS]
    try:
        kubernetes_validate.validate(document, version, strict=True)
    except kubernetes_validate.ValidationError as error:
        return [f"{_field(error.path)}: {error.message}"]
    except kubernetes_validate.SchemaNotFoundError:
        return [f"(document): no schema for {document['kind']} {document['apiVersion']} in Kubernetes {version} "
                "nor in the Dask operator's CRDs"]
    return []


def check_file(path: str | Path, versions=KUBERNETES_VERSIONS, crds=None) -> list[str]:
    """Every problem of the manifests in ``path``, one line each (``FILE: KIND/NAME: FIELD: what``)."""
    crds = crd_schemas() if crds is None else crds
    lines = []
    for document in load_documents(path):
        name = document.get("metadata", {}).get("name") if isinstance(document, dict) else None
        what = f"{document.get('kind') if isinstance(document, dict) else '?'}/{name}"
        for version in versions:
            for line in problems(document, version, crds):
                lines.append(f"{path}: {what}: {line} (Kubernetes {version})")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="*", help="manifests (default: every *.yaml beside this script)")
    parser.add_argument("--kubernetes-version", action="append", metavar="X.Y",
                        help=f"a Kubernetes release to check against (repeatable; default {' and '.join(KUBERNETES_VERSIONS)})")
    args = parser.parse_args(argv)
    files = args.files or sorted(str(p) for p in Path(__file__).resolve().parent.glob("*.yaml"))
    versions = tuple(args.kubernetes_version or KUBERNETES_VERSIONS)
    try:
        _, _, yaml = _modules()
        from kubernetes_validate.utils import VersionNotSupportedError, all_versions

        crds = crd_schemas()
    except MissingPackage as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 2
    shipped = sorted({".".join(v.split(".")[:2]) for v in all_versions()}, key=lambda v: tuple(map(int, v.split("."))))
    for version in versions:
        if version not in shipped:
            print(f"{PROG}: error: Kubernetes {version} is not among the releases kubernetes-validate ships "
                  f"({shipped[0]} to {shipped[-1]})", file=sys.stderr)
            return 2
    lines = []
    try:
        for path in files:
            lines += check_file(path, versions, crds)
    except VersionNotSupportedError as error:
        print(f"{PROG}: error: Kubernetes {error.version} is not among the releases kubernetes-validate ships",
              file=sys.stderr)
        return 2
    except (OSError, ValueError, yaml.YAMLError) as error:  # a missing file, YAML that does not parse
        print(f"{PROG}: error: {' '.join(str(error).split())}", file=sys.stderr)
        return 2
    for line in lines:
        print(line)
    if not lines:
        print(f"{len(files)} file(s) valid for Kubernetes {', '.join(versions)} and the Dask operator's CRDs")
    return 1 if lines else 0


if __name__ == "__main__":
    sys.exit(main())
