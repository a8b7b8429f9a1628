"""Shared pieces of the service tests: projects, producer and coordinator processes, the exactness check."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

import mmf_stream as ms

#: feature dimension of the test projects
DIM = 8
#: classes in a test project before the service starts
INITIAL = 60

PRODUCER = r"""
import sys, time
import numpy as np
import mmf_stream as ms
project, name, count, pause, queue = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
rng = np.random.default_rng(int.from_bytes(name.encode(), 'little') % 2**32)
for i in range(count):
    label = f"{name}-{i}"
    mean = np.abs(rng.normal(size={dim})) + 0.1
    # the id is the label: a producer that is retried (or a delivery repeated) cannot apply a class twice
    ms.submit(project, label, mean=mean, queue=None if queue == "embedded" else queue, message_id=label)
    if pause:
        time.sleep(rng.uniform(0, pause))
""".replace("{dim}", str(DIM))


def make_project(path: Path, size: int = INITIAL, seed: int = 0) -> Path:
    """A class store of ``size`` string-labelled classes."""
    means = ms.class_means(size, DIM, seed=seed)
    store = ms.Store.create(path)
    store.add_means(means, labels=[f"c{i}" for i in range(size)])
    return path


def small_project(path: Path, dim: int) -> Path:
    """A class store of five random classes ``a``..``e`` of dimension ``dim`` (the queue tests' project)."""
    rng = np.random.default_rng(0)
    store = ms.Store.create(path)
    store.add_means(rng.standard_normal((5, dim)), labels=["a", "b", "c", "d", "e"], counts=np.ones(5, dtype=int))
    return path


def env() -> dict[str, str]:
    """The environment for child processes: this checkout first on the path."""
    root = str(Path(__file__).resolve().parents[1])
    return {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}


def start_producer(project: Path, name: str, count: int, pause: float, queue: str = "embedded") -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", PRODUCER, str(project), name, str(count), str(pause), queue],
                            env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def start_coordinator(project: Path, *args: str, extra_env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "mmf_stream.cli", "serve", str(project), *args],
                            env={**env(), **(extra_env or {})}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def run_coordinator(project: Path, *args: str, timeout: float = 180, **kwargs) -> subprocess.CompletedProcess:
    process = start_coordinator(project, *args, **kwargs)
    out, err = process.communicate(timeout=timeout)
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def check_exact(project: Path) -> tuple[ms.Store, ms.Factorization]:
    """The project opens, its factorization describes its classes in its order, and is an exact MMF of
    the store's covariance: the reported error equals that of an explicit reconstruction."""
    store = ms.Store.open(project, mode="r")
    f = ms.load(project)
    assert f.size == store.size
    assert f.labels.tolist() == store.labels.tolist()
    C = store.matrix()
    explicit = np.linalg.norm(C - f.reconstruct())
    assert abs(explicit - f.error) <= 1e-9 * max(1.0, np.linalg.norm(C)), (explicit, f.error)
    return store, f


def expected_labels(producers: dict[str, int]) -> set[str]:
    return {f"{name}-{i}" for name, count in producers.items() for i in range(count)}


def check_applied_once(project: Path, producers: dict[str, int], initial: int = INITIAL) -> None:
    """Every produced class is in the store exactly once with one instance, and the ingest log lists
    each message once."""
    from mmf_stream.store.generations import Project

    store, _ = check_exact(project)
    labels = store.labels.tolist()
    want = expected_labels(producers) | {f"c{i}" for i in range(initial)}
    assert len(labels) == len(set(labels))
    assert set(labels) == want
    assert np.all(store.counts == 1), "a class was applied more than once"
    with Project(project) as log:
        ids = [mid for _, mid, _, _, _ in log.applied()]
        assert sorted(ids) == sorted(expected_labels(producers))
        for name in producers:  # arrival order is kept: each producer's classes were applied in its order
            mine = [int(mid.rsplit("-", 1)[1]) for mid in ids if mid.rsplit("-", 1)[0] == name]
            assert mine == sorted(mine)
        assert log.counters()["applied"] == len(ids)
        assert log.pending() is None


def file_tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder under ``root``: its (size, mtime in ns); equal before and after a reader
    means it wrote nothing (also as root, whom chmod stops from nothing)."""
    found = {}
    for path in sorted(root.rglob("*")):
        info = path.lstat()
        found[str(path.relative_to(root))] = (0 if path.is_dir() else info.st_size, info.st_mtime_ns)
    return found
