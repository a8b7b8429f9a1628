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
    # the coordinator's and Redis' StatefulSets, their Services
    ("statefulset replicas as a string", "coordinator.yaml", "StatefulSet", "spec.replicas", "1", "spec.replicas"),
    ("statefulset misspelled field", "coordinator.yaml", "StatefulSet",
     "spec.template.spec.terminationGracePeriodSecond", 120, "'terminationGracePeriodSecond' was unexpected"),
    ("statefulset probe timeout as a duration", "coordinator.yaml", "StatefulSet",
     "spec.template.spec.containers.0.readinessProbe.timeoutSeconds", "10s", "timeoutSeconds"),
    ("statefulset misspelled secretKeyRef", "coordinator.yaml", "StatefulSet",
     "spec.template.spec.containers.0.env.0.valueFrom.secretKeyReff", {"name": "x", "key": "y"},
     "'secretKeyReff' was unexpected"),
    ("statefulset without selector", "coordinator.yaml", "StatefulSet", "spec.selector", DELETE,
     "'selector' is a required property"),
    ("redis claim template wrong type", "redis.yaml", "StatefulSet", "spec.volumeClaimTemplates.0.spec.accessModes",
     "ReadWriteOnce", "accessModes"),
    ("service port as a string", "coordinator.yaml", "Service", "spec.ports.0.port", "9464", "spec.ports.0.port"),
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


# ---------------------------------------------------------------- the coordinator and its Redis


NAMESPACE = "mmf-stream"


def _service_host(service: dict) -> str:
    return f"{service['metadata']['name']}.{service['metadata']['namespace']}.svc.cluster.local"


def _container(statefulset: dict, name: str) -> dict:
    (container,) = [c for c in statefulset["spec"]["template"]["spec"]["containers"] if c["name"] == name]
    return container


def _secret_env(container: dict, variable: str) -> dict:
    (entry,) = [e for e in container.get("env", []) if e["name"] == variable]
    assert "value" not in entry, f"{variable} is written into the manifest"
    return entry["valueFrom"]["secretKeyRef"]


def _port(container: dict, name_or_number) -> int:
    if isinstance(name_or_number, int):
        return name_or_number
    (port,) = [p["containerPort"] for p in container["ports"] if p["name"] == name_or_number]
    return port


def test_the_coordinator_statefulset_serves_the_project():
    from deploy_helpers import parse_command

    statefulset = _document(KUBERNETES / "coordinator.yaml", "StatefulSet")
    service = _document(KUBERNETES / "coordinator.yaml", "Service")
    spec = statefulset["spec"]
    assert spec["replicas"] == 1 and isinstance(spec["replicas"], int)  # one coordinator per project
    assert spec["serviceName"] == service["metadata"]["name"]
    pod = spec["template"]
    assert spec["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    container = _container(statefulset, "coordinator")
    command = [str(x) for x in container.get("command", []) + container.get("args", [])]

    # the container's command line parses with the real parser (a renamed option fails here)
    args = parse_command(command)
    assert args.command == "serve" and args.metrics_host == "0.0.0.0"

    # the project: the pod's own claim from volumeClaimTemplates, mounted where serve reads it
    (template,) = [t for t in spec["volumeClaimTemplates"] if t["metadata"]["name"] == "project"]
    assert template["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert {"name": "project", "mountPath": args.project} in container["volumeMounts"]
    # the example project's claim is the one the StatefulSet makes for its pod 0, so it is adopted
    claim = _document(KUBERNETES / "project-job.yaml", "PersistentVolumeClaim")
    assert claim["metadata"]["name"] == f"project-{statefulset['metadata']['name']}-0"
    job = _document(KUBERNETES / "project-job.yaml", "Job")["spec"]["template"]["spec"]
    assert job["volumes"][0]["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    assert job["containers"][0]["volumeMounts"] == [{"name": "project", "mountPath": args.project}]

    # the queue is the Redis Service, the password from the Secret, never in the manifest
    redis_service = _document(KUBERNETES / "redis.yaml", "Service")
    (redis_port,) = [p["port"] for p in redis_service["spec"]["ports"]]
    assert args.queue == f"redis://{_service_host(redis_service)}:{redis_port}/0"
    secret = _document(KUBERNETES / "secret.example.yaml", "Secret")
    reference = _secret_env(container, "REDIS_PASSWORD")
    assert reference == {"name": secret["metadata"]["name"], "key": "password"}
    assert reference["key"] in secret["stringData"]
    assert secret["stringData"]["password"] not in " ".join(command)

    # the batch runs go to the DaskCluster's scheduler Service (the operator names it <cluster>-scheduler)
    cluster = _document(KUBERNETES / "daskcluster.yaml", "DaskCluster")
    assert args.scheduler == f"tcp://{cluster['metadata']['name']}-scheduler.{NAMESPACE}.svc.cluster.local:8786"

    # probes: liveness (and start-up) /healthz, readiness /readyz, on the metrics port, several seconds' timeout
    expected = {"startupProbe": "/healthz", "livenessProbe": "/healthz", "readinessProbe": "/readyz"}
    for probe, path in expected.items():
        check = container[probe]["httpGet"]
        assert check["path"] == path, probe
        assert _port(container, check["port"]) == args.metrics_port, probe
        assert container[probe]["timeoutSeconds"] >= 5, probe
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 120  # importing, taking the lock
    # SIGTERM: the commit in progress is finished; the kubelet's SIGKILL comes after the grace period
    assert pod["spec"]["terminationGracePeriodSeconds"] >= 60
    assert pod["spec"]["securityContext"]["runAsUser"] == 1000  # the image's user mmf

    # the metrics Service: port 9464 onto the container's metrics port, discoverable by annotations
    (port,) = service["spec"]["ports"]
    assert port["port"] == args.metrics_port == 9464
    assert _port(container, port["targetPort"]) == args.metrics_port
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    assert service["metadata"]["annotations"]["prometheus.io/port"] == str(args.metrics_port)
    assert service["metadata"]["annotations"]["prometheus.io/path"] == "/metrics"


def _redis_parts() -> tuple[dict, dict, str]:
    statefulset = _document(KUBERNETES / "redis.yaml", "StatefulSet")
    config = _document(KUBERNETES / "redis.yaml", "ConfigMap")
    container = _container(statefulset, "redis")
    assert container["command"][:2] == ["sh", "-c"]
    return statefulset, config, container["command"][2]


def _config_lines(text: str) -> dict[str, str]:
    return dict(line.split(None, 1) for line in text.splitlines() if line.strip() and not line.startswith("#"))


def test_redis_persists_to_its_claim_and_takes_the_password_from_the_secret():
    statefulset, config, script = _redis_parts()
    assert statefulset["spec"]["replicas"] == 1
    container = _container(statefulset, "redis")
    settings = _config_lines(config["data"]["redis.conf"])
    assert settings["appendonly"] == "yes" and settings["appendfsync"] == "always"
    # the configuration from the ConfigMap, the data directory on the pod's claim
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    (config_volume,) = [v for v in statefulset["spec"]["template"]["spec"]["volumes"] if "configMap" in v]
    assert config_volume["configMap"]["name"] == config["metadata"]["name"]
    assert f"{mounts[config_volume['name']]}/redis.conf" in script
    (template,) = statefulset["spec"]["volumeClaimTemplates"]
    assert mounts[template["metadata"]["name"]] == settings["dir"]
    service = _document(KUBERNETES / "redis.yaml", "Service")
    assert service["spec"]["ports"][0]["port"] == int(settings["port"])
    # the password: from the Secret, into the configuration on stdin, not onto a command line
    secret = _document(KUBERNETES / "secret.example.yaml", "Secret")
    assert _secret_env(container, "REDIS_PASSWORD") == {"name": secret["metadata"]["name"], "key": "password"}
    assert "requirepass" not in config["data"]["redis.conf"]
    assert "--requirepass" not in script and "exec redis-server" in script
    assert "<" in secret["stringData"]["password"]  # a placeholder, never a real password


@pytest.fixture
def redis_binary():
    from redis_server import redis_server_binary

    return redis_server_binary()


def test_the_redis_container_script_runs_a_real_server_with_aof_and_the_password(tmp_path, redis_binary):
    # the ConfigMap's redis.conf and the container's script, run by a real redis-server on 127.0.0.1
    # (the paths and the port moved into tmp_path; the rest as in the manifest)
    import socket
    import subprocess
    import time

    import redis

    _, config, script = _redis_parts()
    settings = _config_lines(config["data"]["redis.conf"])
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    text = config["data"]["redis.conf"].replace(f"dir {settings['dir']}", f"dir {tmp_path}")
    text = text.replace(f"port {settings['port']}", f"port {port}") + "bind 127.0.0.1\n"
    (tmp_path / "redis.conf").write_text(text)
    script = script.replace("/etc/redis/redis.conf", str(tmp_path / "redis.conf"))
    script = script.replace("exec redis-server", f"exec {redis_binary}")
    password = "0123456789abcdef0123456789abcdef"
    server = subprocess.Popen(["sh", "-c", script], env={"PATH": "/usr/bin:/bin", "REDIS_PASSWORD": password},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        client = redis.Redis(host="127.0.0.1", port=port, password=password, socket_timeout=5)
        deadline = time.monotonic() + 10
        while True:
            try:
                assert client.ping()
                break
            except redis.ConnectionError:
                assert time.monotonic() < deadline and server.poll() is None, server.stdout.read()
                time.sleep(0.1)
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        assert client.config_get("appendfsync") == {"appendfsync": "always"}
        assert client.config_get("dir") == {"dir": str(tmp_path)}
        with pytest.raises(redis.AuthenticationError):  # no password: refused
            redis.Redis(host="127.0.0.1", port=port, socket_timeout=5).set("k", "v")
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(host="127.0.0.1", port=port, password="wrong", socket_timeout=5).ping()
        client.xadd("s", {"a": "1"})
        # exec: the server is the script's process itself, and the password is not on its command line
        cmdline = Path(f"/proc/{server.pid}/cmdline").read_bytes().decode()
        assert "redis" in cmdline and password not in cmdline, cmdline
    finally:
        server.terminate()  # SIGTERM, as the kubelet sends it: the AOF is fsynced and the server exits
        assert server.wait(timeout=20) == 0
    assert list((tmp_path / "appendonlydir").iterdir()), "no append-only file written"
