"""The Kubernetes manifests under deploy/kubernetes/ against Kubernetes' own schemas and the Dask operator's CRDs.

``deploy/kubernetes/validate.py`` checks each document strictly (an unknown
field is an error, as with ``kubectl apply``'s default server-side field
validation): built-in kinds with ``kubernetes-validate``'s schemas of the
Kubernetes releases in ``KUBERNETES_VERSIONS``, the operator's kinds with the
``openAPIV3Schema`` of the CRDs that ``dask-kubernetes`` ships, through
``jsonschema``. Planted broken copies (a wrong field type, an unknown field, a
missing required field) must be rejected, so the check can fail.
"""

from __future__ import annotations

import copy
import importlib.util
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
KUBERNETES = ROOT / "deploy" / "kubernetes"
VALIDATE = KUBERNETES / "validate.py"


@pytest.fixture(scope="module")
def validate():
    spec = importlib.util.spec_from_file_location("mmf_stream_deploy_kubernetes_validate", VALIDATE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def crds(validate):
    return validate.crd_schemas()


def _manifests() -> list[Path]:
    return sorted(KUBERNETES.glob("*.yaml"))


def _document(path: Path, kind: str) -> dict:
    (doc,) = [d for d in yaml.safe_load_all(path.read_text()) if d and d.get("kind") == kind]
    return doc


def test_the_operator_crds_are_found(crds):
    assert {("kubernetes.dask.org/v1", kind) for kind in ("DaskCluster", "DaskJob", "DaskWorkerGroup")} <= set(crds)
    cluster = crds[("kubernetes.dask.org/v1", "DaskCluster")]
    assert cluster["properties"]["spec"]["additionalProperties"] is False  # strict
    assert "worker" in cluster["properties"]["spec"]["required"]


@pytest.mark.parametrize("path", _manifests(), ids=lambda p: p.name)
def test_every_manifest_validates_strictly(path, validate, crds):
    kinds = {doc["kind"] for doc in validate.load_documents(path)}
    assert kinds, path
    problems = validate.check_file(path, validate.KUBERNETES_VERSIONS, crds)
    assert not problems, "\n".join(problems)


def test_the_command_line_validates_every_manifest(validate, capsys):
    assert validate.main([]) == 0
    out = capsys.readouterr().out
    assert f"{len(_manifests())} file(s) valid" in out
    assert validate.main([str(KUBERNETES / "missing.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("validate.py: error:"), err
    assert validate.main(["--kubernetes-version", "9.99", str(KUBERNETES / "namespace.yaml")]) == 2
    capsys.readouterr()


def test_a_missing_package_is_one_line(validate, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "kubernetes_validate", None)  # import fails
    assert validate.main([]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "kubernetes_validate is not installed" in err, err


def _set(doc: dict, path: str, value) -> None:
    *parents, last = path.split(".")
    node = doc
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    if value is DELETE:
        del node[int(last) if isinstance(node, list) else last]
    elif isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value


DELETE = object()


def _dask_job() -> dict:
    """A DaskJob made of this repository's DaskCluster and factorization Job (valid as it is)."""
    cluster = _document(KUBERNETES / "daskcluster.yaml", "DaskCluster")
    job = _document(KUBERNETES / "job.yaml", "Job")
    pod = copy.deepcopy(job["spec"]["template"]["spec"])
    pod["containers"][0]["name"] = "job"
    pod.pop("initContainers")  # the operator starts the job once the cluster is up
    return {"apiVersion": "kubernetes.dask.org/v1", "kind": "DaskJob",
            "metadata": {"name": "mmf-stream-factorize", "namespace": cluster["metadata"]["namespace"]},
            "spec": {"job": {"spec": pod}, "cluster": {"spec": copy.deepcopy(cluster["spec"])}}}


# (what, file or builder, kind, field path, new value or DELETE, what the problem line must name)
PLANTED = [
    # the Dask operator's CRDs
    ("crd wrong type", "daskcluster.yaml", "DaskCluster", "spec.worker.replicas", "4", "spec.worker.replicas"),
    ("crd int targetPort", "daskcluster.yaml", "DaskCluster", "spec.scheduler.service.ports.0.targetPort", 8786,
     "targetPort"),
    ("crd unknown field", "daskcluster.yaml", "DaskCluster", "spec.worker.replica", 4, "'replica' was unexpected"),
    ("crd unknown container field", "daskcluster.yaml", "DaskCluster", "spec.worker.spec.containers.0.imagePullPolicyy",
     "IfNotPresent", "'imagePullPolicyy' was unexpected"),
    ("crd missing required", "daskcluster.yaml", "DaskCluster", "spec.scheduler", DELETE,
     "'scheduler' is a required property"),
    ("crd missing container name", "daskcluster.yaml", "DaskCluster", "spec.worker.spec.containers.0.name", DELETE,
     "'name' is a required property"),
    ("crd metadata unknown field", "daskcluster.yaml", "DaskCluster", "metadata.labelz", {}, "'labelz' was unexpected"),
    ("daskjob valid", _dask_job, "DaskJob", None, None, None),
    ("daskjob wrong type", _dask_job, "DaskJob", "spec.cluster.spec.worker.replicas", [4], "replicas"),
    ("daskjob unknown field", _dask_job, "DaskJob", "spec.job.specs", {}, "'specs' was unexpected"),
    ("daskjob missing required", _dask_job, "DaskJob", "spec.job", DELETE, "'job' is a required property"),
    # Kubernetes' own schemas
    ("job wrong type", "job.yaml", "Job", "spec.backoffLimit", "two", "spec.backoffLimit"),
    ("job unknown field", "job.yaml", "Job", "spec.template.spec.containers.0.comand", ["x"], "'comand' was unexpected"),
    ("job missing required", "job.yaml", "Job", "spec.template.spec.containers.0.name", DELETE,
     "'name' is a required property"),
    ("pvc wrong type", "pvc.yaml", "PersistentVolumeClaim", "spec.accessModes", "ReadWriteMany", "spec.accessModes"),
]


@pytest.mark.parametrize("what, source, kind, field, value, expected", PLANTED, ids=[p[0] for p in PLANTED])
def test_planted_broken_copies_are_rejected(tmp_path, validate, crds, what, source, kind, field, value, expected):
    doc = source() if callable(source) else _document(KUBERNETES / source, kind)
    copy_path = tmp_path / "broken.yaml"
    if field is None:  # a valid document built here: it validates
        copy_path.write_text(yaml.safe_dump(doc))
        assert validate.check_file(copy_path, validate.KUBERNETES_VERSIONS, crds) == []
        return
    _set(doc, field, value)
    copy_path.write_text(yaml.safe_dump(doc))
    problems = validate.check_file(copy_path, validate.KUBERNETES_VERSIONS, crds)
    assert problems, f"{what}: the broken copy validated"
    assert all(expected in line for line in problems), problems
    for version in validate.KUBERNETES_VERSIONS:  # rejected for every release checked
        assert any(line.endswith(f"(Kubernetes {version})") for line in problems), problems
    assert validate.main([str(copy_path)]) == 1
