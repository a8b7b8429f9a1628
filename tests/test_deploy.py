"""The deployment files under deploy/.

No Docker, Kubernetes or SLURM runs here, so this checks what can be checked
without them: every YAML parses (and the Kubernetes documents are resources),
the Dask commands are the current ``dask scheduler`` / ``dask worker``, image
tags and pinned versions agree with pyproject.toml, the names the manifests
share agree, the SLURM launcher's job script asks for the resources it was
given, and deploy/local/cluster.sh really starts, serves and stops a cluster on
127.0.0.1.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml")
from packaging.requirements import Requirement  # noqa: E402
from packaging.specifiers import SpecifierSet  # noqa: E402
from packaging.version import Version  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
CLUSTER_SH = DEPLOY / "local" / "cluster.sh"
KUBERNETES = DEPLOY / "kubernetes"
COMPOSE = DEPLOY / "docker" / "compose.yaml"
DOCKERFILE = DEPLOY / "docker" / "Dockerfile"
CONSTRAINTS = DEPLOY / "docker" / "constraints.txt"
LAUNCHER = DEPLOY / "slurm" / "launch.py"

EXPECTED_FILES = [
    "README.md",
    "local/README.md", "local/cluster.sh",
    "docker/README.md", "docker/Dockerfile", "docker/compose.yaml", "docker/constraints.txt",
    "kubernetes/README.md", "kubernetes/daskcluster.yaml", "kubernetes/pvc.yaml", "kubernetes/job.yaml",
    "slurm/README.md", "slurm/launch.py", "slurm/mmf-stream.sbatch",
]


def _pyproject() -> dict:
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)


def _files(*suffixes: str) -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.is_file() and (not suffixes or p.name.endswith(suffixes)))


def _text_files() -> list[Path]:
    out = []
    for path in _files():
        try:
            path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        out.append(path)
    return out


def _yaml(path: Path) -> list:
    with open(path, encoding="utf-8") as f:
        return [doc for doc in yaml.safe_load_all(f) if doc is not None]


def _one(path: Path, kind: str) -> dict:
    docs = [d for d in _yaml(path) if d.get("kind") == kind]
    assert len(docs) == 1, f"{path.name}: expected one {kind}, found {len(docs)}"
    return docs[0]


def _command(container: dict) -> list[str]:
    return [str(x) for x in container.get("command", []) + container.get("args", [])]


# ---------------------------------------------------------------- files, YAML


def test_expected_files_exist():
    missing = [name for name in EXPECTED_FILES if not (DEPLOY / name).is_file()]
    assert not missing, f"missing under deploy/: {missing}"
    for folder in ("local", "docker", "kubernetes", "slurm"):
        assert (DEPLOY / folder / "README.md").read_text().strip(), f"deploy/{folder}/README.md is empty"


def test_every_yaml_parses_and_kubernetes_documents_are_resources():
    paths = _files(".yaml", ".yml")
    assert len(paths) >= 5, paths
    for path in paths:
        docs = _yaml(path)
        assert docs, f"{path} holds no YAML document"
        assert all(isinstance(doc, dict) for doc in docs), path
        if KUBERNETES in path.parents:
            for doc in docs:
                assert isinstance(doc.get("apiVersion"), str) and doc["apiVersion"], f"{path}: no apiVersion"
                assert isinstance(doc.get("kind"), str) and doc["kind"], f"{path}: no kind"
                assert doc.get("metadata", {}).get("name"), f"{path}: {doc['kind']} without metadata.name"
    cluster = _one(KUBERNETES / "daskcluster.yaml", "DaskCluster")
    assert cluster["apiVersion"] == "kubernetes.dask.org/v1"


def test_no_hyphenated_dask_commands():
    # dask-scheduler / dask-worker are gone from current distributed
    hyphenated = re.compile(r"(?<![\w.-])dask-(scheduler|worker)(?![\w-])")
    offenders = []
    for path in _text_files():
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if hyphenated.search(line):
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


def test_compose_services_use_current_dask_commands():
    compose = _yaml(COMPOSE)[0]
    services = compose["services"]
    scheduler = [str(x) for x in services["scheduler"]["command"]]
    assert scheduler[:2] == ["dask", "scheduler"]
    assert scheduler[scheduler.index("--port") + 1] == "8786"
    worker = [str(x) for x in services["worker"]["command"]]
    assert worker[:3] == ["dask", "worker", "tcp://scheduler:8786"]
    assert worker[worker.index("--nthreads") + 1] == "1"
    assert services["worker"]["deploy"]["replicas"] == 2
    job = [str(x) for x in services["job"]["command"]]
    assert job == ["mmf-stream", "factorize", "/data/input.zarr", "--order", "4",
                   "--scheduler", "tcp://scheduler:8786", "--out", "/data/result.zarr"]
    # the workers read the store, the job writes the result: the same volume at /data
    assert "data" in compose["volumes"]
    for name in ("worker", "job", "input"):
        assert "data:/data" in services[name]["volumes"], name
    for name, service in services.items():
        assert re.fullmatch(r"mmf-stream:\S+", service["image"]), name


def test_kubernetes_cluster_and_job_agree():
    cluster = _one(KUBERNETES / "daskcluster.yaml", "DaskCluster")
    name, namespace = cluster["metadata"]["name"], cluster["metadata"]["namespace"]

    scheduler = cluster["spec"]["scheduler"]
    (scheduler_container,) = scheduler["spec"]["containers"]
    assert _command(scheduler_container)[:2] == ["dask", "scheduler"]
    assert {p["port"] for p in scheduler["service"]["ports"]} == {8786, 8787}
    assert scheduler["service"]["selector"] == {"dask.org/cluster-name": name, "dask.org/component": "scheduler"}

    worker = cluster["spec"]["worker"]
    assert isinstance(worker["replicas"], int) and worker["replicas"] >= 1
    (worker_container,) = worker["spec"]["containers"]
    args = _command(worker_container)
    assert args[:2] == ["dask", "worker"]
    assert args[args.index("--name") + 1] == "$(DASK_WORKER_NAME)"  # the operator's convention
    assert args[args.index("--dashboard-address") + 1] == "8788"

    pvc = _one(KUBERNETES / "pvc.yaml", "PersistentVolumeClaim")
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    assert pvc["metadata"]["namespace"] == namespace

    def mounts_store(pod_spec: dict, container: dict) -> bool:
        claims = {v["name"] for v in pod_spec.get("volumes", [])
                  if v.get("persistentVolumeClaim", {}).get("claimName") == pvc["metadata"]["name"]}
        return any(m["mountPath"] == "/data" and m["name"] in claims for m in container.get("volumeMounts", []))

    assert mounts_store(worker["spec"], worker_container)

    job = _one(KUBERNETES / "job.yaml", "Job")
    assert job["apiVersion"] == "batch/v1"
    assert job["metadata"]["namespace"] == namespace
    pod = job["spec"]["template"]["spec"]
    (factorize,) = [c for c in pod["containers"] if "factorize" in _command(c)]
    command = _command(factorize)
    assert command[:3] == ["mmf-stream", "factorize", "/data/input.zarr"]
    # the operator names the scheduler Service <cluster name>-scheduler
    assert command[command.index("--scheduler") + 1] == f"tcp://{name}-scheduler.{namespace}.svc.cluster.local:8786"
    assert command[command.index("--out") + 1].startswith("/data/")
    assert mounts_store(pod, factorize)
    for path in KUBERNETES.glob("*.y*ml"):
        for doc in _yaml(path):
            if doc["kind"] != "Namespace":
                assert doc["metadata"].get("namespace") == namespace, f"{path.name}: {doc['kind']}"


def test_images_and_versions_are_pinned_and_match_pyproject():
    project = _pyproject()["project"]
    version = project["version"]

    # every mmf-stream:<tag> image reference is the package version
    tags = []
    for path in _text_files():
        for match in re.finditer(r"(?<![\w./-])(?:[\w.-]+(?::\d+)?/)*mmf-stream:(\w[\w.-]*)", path.read_text()):
            tags.append((path.relative_to(ROOT), match.group(1).rstrip(".-")))
    assert len({p for p, _ in tags}) >= 4, tags  # Dockerfile, compose, the manifests, READMEs
    assert all(tag == version for _, tag in tags), [t for t in tags if t[1] != version]

    # the base image has an exact tag: python:X.Y.Z-..., X.Y allowed by requires-python
    dockerfile = DOCKERFILE.read_text()
    bases = re.findall(r"^FROM\s+(?:--platform=\S+\s+)?(\S+)", dockerfile, flags=re.M)
    assert bases
    for base in bases:
        match = re.fullmatch(r"python:(\d+\.\d+\.\d+)-slim-bookworm(@sha256:[0-9a-f]{64})?", base)
        assert match, f"base image {base!r} is not python:X.Y.Z-slim-bookworm"
        assert Version(match.group(1)) in SpecifierSet(project["requires-python"])
        assert Version(match.group(1)).release[:2] == (3, 11)
    install = re.search(r"^RUN\s+pip install\b", dockerfile, flags=re.M)
    warmup = re.search(r"^RUN\s+mmf-stream warmup\b", dockerfile, flags=re.M)
    assert install and warmup, "the package is not installed, or the kernels not compiled, in the image"
    assert install.start() < warmup.start()
    # the kernel cache lives in the image (an ENV instruction, continued lines included)
    assert re.search(r"^ENV\s(?:[^\n]*\\\n)*[^\n]*\bNUMBA_CACHE_DIR=/", dockerfile, flags=re.M)

    # dask and distributed: one pinned version each across deploy/, inside the `dask` extra's range
    extra = {Requirement(r).name: Requirement(r).specifier for r in project["optional-dependencies"]["dask"]}
    assert set(extra) == {"dask", "distributed"}
    for name, specifier in extra.items():
        pins = set()
        for path in _text_files():
            pins |= set(re.findall(rf"(?<![\w-]){name}(?:\[[\w,]+\])?==([\w.]+)", path.read_text()))
        assert len(pins) == 1, f"{name}: pinned as {sorted(pins)} under deploy/ (want one version)"
        assert re.search(rf'"{name}(?:\[[\w,]+\])?=={re.escape(next(iter(pins)))}"', dockerfile), name
        assert specifier.contains(next(iter(pins))), f"{name}=={pins} is outside pyproject's {specifier}"
    assert "\".[dask]\"" in dockerfile, "the package is not installed with its dask extra"

    # the constraints pin every runtime dependency, inside pyproject's range
    pins = {}
    for line in CONSTRAINTS.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            requirement = Requirement(line)
            (spec,) = requirement.specifier
            assert spec.operator == "==", line
            pins[requirement.name.lower()] = spec.version
    for dependency in map(Requirement, project["dependencies"]):
        assert dependency.name.lower() in pins, f"{dependency.name} not pinned in {CONSTRAINTS.name}"
        assert dependency.specifier.contains(pins[dependency.name.lower()]), dependency


# ---------------------------------------------------------------- SLURM


def _launcher():
    spec = importlib.util.spec_from_file_location("mmf_stream_deploy_slurm_launch", LAUNCHER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SLURM_ARGS = ["--cores", "4", "--memory", "16GB", "--walltime", "02:00:00", "--queue", "normal",
              "--account", "proj42", "--job-extra=--constraint=avx2",
              "--scheduler-host", "127.0.0.1", "--dashboard-address", "127.0.0.1:0"]


def test_slurm_job_script_has_the_resources(tmp_path):
    pytest.importorskip("dask_jobqueue")
    launch = _launcher()
    args = launch.parse_args(["in.zarr", "--out", str(tmp_path / "r.zarr"), *SLURM_ARGS,
                              "--log-directory", str(tmp_path / "logs")])
    cluster = launch.make_cluster(args)
    try:
        assert re.fullmatch(r"tcp://127\.0\.0\.1:\d+", cluster.scheduler_address), cluster.scheduler_address
        script = cluster.job_script()
    finally:
        cluster.close()
    lines = script.splitlines()
    directives = {line.strip() for line in lines if line.startswith("#SBATCH")}
    for expected in (
        "#SBATCH --cpus-per-task=4",
        "#SBATCH --mem=15G",  # 16 GB = 14.9 GiB, rounded up by dask-jobqueue
        "#SBATCH -t 02:00:00",
        "#SBATCH -p normal",
        "#SBATCH -A proj42",
        "#SBATCH -n 1",
        "#SBATCH --constraint=avx2",
        "#SBATCH -J mmf-stream-worker",
    ):
        assert expected in directives, f"{expected!r} not in\n{script}"
    # dask-jobqueue 0.9's worker command: python -m distributed.cli.dask_worker SCHEDULER ...
    (command,) = [line for line in lines if "distributed.cli.dask_worker" in line]
    words = shlex.split(command)
    assert words[:4] == [sys.executable, "-m", "distributed.cli.dask_worker", cluster.scheduler_address]
    options = dict(zip(words[4::1], words[5::1]))
    assert options["--nworkers"] == "4" and options["--nthreads"] == "1"  # one worker per CPU
    assert options["--lifetime"] == f"{2 * 3600 - 300}s"  # retire 5 minutes before the walltime
    assert "--nanny" in words
    assert lines.index("export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1") < lines.index(command)


def test_slurm_launcher_arguments(tmp_path, capsys):
    pytest.importorskip("dask_jobqueue")
    launch = _launcher()
    assert launch._seconds("02:00:00") == 7200
    assert launch._seconds("1-00:00:00") == 86400
    assert launch._seconds("90") == 5400
    assert launch._seconds("1:30") == 90
    assert launch._seconds("2 hours") is None
    for bad in (["in.zarr"],                                     # no --out
                ["--out", "r.zarr"],                             # no INPUT nor --means
                ["in.zarr", "--means", "m.zarr", "--out", "r.zarr"],
                ["in.zarr", "--out", "r.zarr", "--cores", "4", "--processes", "3"],
                ["in.zarr", "--out", "r.zarr", "--walltime", "soon"]):
        with pytest.raises(SystemExit) as exit_info:
            launch.parse_args(bad)
        assert exit_info.value.code == 2, bad
    capsys.readouterr()
    # --print-job-script prints the script and submits nothing (no sbatch here)
    assert launch.main([*SLURM_ARGS, "--processes", "2", "--log-directory", str(tmp_path / "logs"),
                        "--print-job-script"]) == 0
    out = capsys.readouterr().out
    assert "#SBATCH --cpus-per-task=4" in out and "--nworkers 2 " in out and "--nthreads 2 " in out
    assert "export OMP_NUM_THREADS=2 " in out


# ---------------------------------------------------------------- shell scripts, deploy/local


def test_shell_scripts_parse():
    scripts = _files(".sh", ".sbatch")
    assert CLUSTER_SH in scripts
    for path in scripts:
        result = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
        assert result.returncode == 0, f"{path}: {result.stderr}"
    assert os.access(CLUSTER_SH, os.X_OK), "deploy/local/cluster.sh is not executable"
    assert "set -euo pipefail" in CLUSTER_SH.read_text()


def _cluster(*args, timeout: float = 60, **environment: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, DASK=str(Path(sys.executable).parent / "dask"), PYTHON=sys.executable, **environment)
    return subprocess.run([str(CLUSTER_SH), *map(str, args)], capture_output=True, text=True, env=env,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def _gone(pid: int) -> bool:
    """The process has exited (a zombie whose parent does not reap it counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def _session_members(leaders) -> set[int]:
    """Every live process whose session is led by one of ``leaders`` (the leaders included)."""
    members = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) in leaders and fields[0] != "Z":  # state ppid pgrp session
                members.add(int(entry.name))
    return members


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


@pytest.fixture
def dask_available():
    pytest.importorskip("distributed")
    if not (Path(sys.executable).parent / "dask").exists():
        pytest.skip("no dask command beside the interpreter")
    if shutil.which("bash") is None:
        pytest.skip("no bash")


def test_local_cluster_starts_serves_and_stops(tmp_path, dask_available):
    from distributed import Client

    folder = tmp_path / "cluster"
    pids: dict[str, int] = {}
    try:
        started = _cluster("start", folder, "--workers", "2", "--no-nanny", timeout=240)
        assert started.returncode == 0, started.stderr
        lines = started.stdout.splitlines()
        assert len(lines) == 1, started.stdout
        address = lines[0]
        match = re.fullmatch(r"tcp://127\.0\.0\.1:(\d+)", address)
        assert match, address
        port = int(match.group(1))

        assert sorted(p.name for p in folder.glob("*.pid")) == ["scheduler.pid", "worker-0.pid", "worker-1.pid"]
        pids = {p.stem: int(p.read_text().strip()) for p in folder.glob("*.pid")}
        for name, pid in pids.items():
            assert not _gone(pid), name
            assert "dask" in _cmdline(pid), (name, _cmdline(pid))
        assert "--no-nanny" in _cmdline(pids["worker-0"])
        assert (folder / "scheduler.json").is_file() and (folder / "logs").is_dir()

        with Client(address, timeout="30s", set_as_default=False) as client:
            workers = client.scheduler_info(n_workers=-1)["workers"]
            assert sorted(w["name"] for w in workers.values()) == ["worker-0", "worker-1"]
            assert all(a.startswith("tcp://127.0.0.1:") for a in workers)
            assert set(client.nthreads().values()) == {1}
            assert client.submit(sum, [1, 2]).result(timeout=60) == 3

        status = _cluster("status", folder)
        assert status.returncode == 0, status.stderr
        assert status.stdout.splitlines()[0] == address
        assert "3 live" in status.stdout
    finally:
        stopped = _cluster("stop", folder, timeout=60)
    assert stopped.returncode == 0, stopped.stderr
    for name, pid in pids.items():
        assert _gone(pid), f"{name} (pid {pid}) still runs after stop"
    assert not list(folder.glob("*.pid"))
    with socket.socket() as probe:
        probe.settimeout(2)
        assert probe.connect_ex(("127.0.0.1", port)) != 0, "the scheduler port still accepts connections"
    assert _cluster("status", folder).returncode == 1
    again = _cluster("stop", folder)
    assert again.returncode == 0, again.stderr


@pytest.mark.parametrize("options", [["--workers", "0"], ["--bogus"], ["--threads", "two"], ["--port"]])
def test_local_cluster_rejects_bad_input(tmp_path, options, dask_available):
    folder = tmp_path / "cluster"
    try:
        result = _cluster("start", folder, *options)
        assert result.returncode != 0
        assert result.stdout == ""
        message = result.stderr.strip().splitlines()
        assert len(message) == 1 and "error" in message[0], result.stderr
        assert not (folder / "scheduler.pid").exists()
    finally:
        _cluster("stop", folder)


def test_local_cluster_stop_and_status_of_nothing(tmp_path, dask_available):
    assert _cluster("stop", tmp_path / "never-started").returncode == 0
    assert _cluster("status", tmp_path / "never-started").returncode == 1
    assert _cluster("frobnicate", tmp_path).returncode != 0


def test_local_cluster_stop_spares_unrelated_processes(tmp_path, dask_available):
    # a stale pid file naming a process that is not a dask process: stop must not touch it
    folder = tmp_path / "cluster"
    folder.mkdir()
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        (folder / "scheduler.pid").write_text(f"{sleeper.pid}\n")
        (folder / "worker-0.pid").write_text(f"{sleeper.pid}\n")
        assert _cluster("stop", folder).returncode == 0
        assert sleeper.poll() is None, "stop killed a process it did not start"
        assert not list(folder.glob("*.pid"))
    finally:
        sleeper.kill()
        sleeper.wait()


def test_local_cluster_start_failure_stops_what_it_started(tmp_path, dask_available):
    # a dask command whose workers die at once: start must fail fast, in one line, and stop the scheduler
    real = Path(sys.executable).parent / "dask"
    fake = tmp_path / "dask_without_workers"
    fake.write_text(f'#!/usr/bin/env bash\n[ "$1" = worker ] && exit 3\nexec "{real}" "$@"\n')
    fake.chmod(0o755)
    folder = tmp_path / "cluster"
    env = dict(os.environ, DASK=str(fake), PYTHON=sys.executable)
    try:
        result = subprocess.run([str(CLUSTER_SH), "start", str(folder), "--workers", "2"], capture_output=True,
                                text=True, env=env, timeout=120, stdin=subprocess.DEVNULL)
        assert result.returncode != 0
        assert result.stdout == ""
        message = result.stderr.strip().splitlines()
        assert len(message) == 1 and "workers did not connect" in message[0], result.stderr
        assert (folder / "logs" / "scheduler.log").is_file()
        assert not list(folder.glob("*.pid")) and not (folder / "scheduler.json").exists()
        processes = subprocess.run(["ps", "-eo", "pid=,args="], capture_output=True, text=True).stdout
        leftovers = [line for line in processes.splitlines()
                     if f"{folder}/scheduler.json" in line and not _gone(int(line.split()[0]))]
        assert not leftovers, f"still running after the failed start: {leftovers}"
    finally:
        _cluster("stop", folder)


def test_local_cluster_stop_returns_only_when_every_process_is_gone(tmp_path, dask_available):
    # with nannies: each worker pid file names the nanny, whose worker is a child process in its
    # session; stop returns once all of them (and the multiprocessing helpers) have exited
    folder = tmp_path / "cluster"
    try:
        started = _cluster("start", folder, "--workers", "2", timeout=240)
        assert started.returncode == 0, started.stderr
        leaders = {int(p.read_text()) for p in folder.glob("*.pid")}
        assert len(leaders) == 3
        members = _session_members(leaders)
        assert leaders < members, "the nannies' workers are not in their sessions"
    finally:
        stopped = _cluster("stop", folder, timeout=60)
    alive = {pid: _cmdline(pid) for pid in members if not _gone(pid)}  # at once: no waiting here
    assert stopped.returncode == 0, stopped.stderr
    assert not alive, f"still running when stop returned: {alive}"
    assert not list(folder.glob("*.pid"))


# a dask-named process that ignores SIGTERM, with a child that ignores it too (in its session, another group)
STUBBORN = """
import signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
child = subprocess.Popen([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                          "print('ready', flush=True); time.sleep(600)"], stdout=subprocess.PIPE, text=True,
                         process_group=0)  # its own process group, in the session: a group kill misses it
child.stdout.readline()
print(child.pid, flush=True)
time.sleep(600)
"""


def test_local_cluster_stop_kills_what_ignores_sigterm_and_waits_for_it(tmp_path, dask_available):
    folder = tmp_path / "cluster"
    stubborn = None
    try:
        started = _cluster("start", folder, "--workers", "1", "--no-nanny", timeout=240)
        assert started.returncode == 0, started.stderr
        stubborn = subprocess.Popen([sys.executable, "-c", STUBBORN, "dask-stubborn"], stdout=subprocess.PIPE,
                                    text=True, start_new_session=True)
        child = int(stubborn.stdout.readline())
        (folder / "worker-7.pid").write_text(f"{stubborn.pid}\n")
        pids = {int(p.read_text()) for p in folder.glob("*.pid")} | {child}
        began = time.monotonic()
        stopped = _cluster("stop", folder, timeout=60, STOP_TIMEOUT="2")
        took = time.monotonic() - began
        alive = {pid: _cmdline(pid) for pid in pids if not _gone(pid)}
        assert stopped.returncode == 0, stopped.stderr
        assert not alive, f"still running when stop returned: {alive}"
        assert 2 <= took < 2 + 10, took  # SIGKILL after STOP_TIMEOUT, then gone at once
        assert stubborn.wait(timeout=5) == -signal.SIGKILL
        assert not list(folder.glob("*.pid"))
    finally:
        if stubborn is not None and stubborn.poll() is None:
            stubborn.kill()
        _cluster("stop", folder)


def test_local_cluster_rejects_a_bad_stop_timeout(tmp_path, dask_available):
    result = _cluster("stop", tmp_path, STOP_TIMEOUT="soon")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "STOP_TIMEOUT" in result.stderr, result.stderr
