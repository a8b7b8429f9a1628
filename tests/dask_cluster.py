"""A real Dask cluster for tests (``dask scheduler`` + ``dask worker`` processes on 127.0.0.1), and the
bit-for-bit comparison of two factorizations that the Dask tests make.

Clusters are started and stopped by deploy/local/cluster.sh (the script users run)::

    from dask_cluster import assert_identical, local_cluster

    with local_cluster(tmp_path / "cluster", 2, env={"AWS_ENDPOINT_URL": ...}) as address:
        ...  # address: tcp://127.0.0.1:PORT; the processes' pids in tmp_path/cluster/<name>.pid
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

import mmf_stream as ms

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "deploy" / "local" / "cluster.sh"


def _env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment, its interpreter's ``dask``, this checkout first on the path (the workers
    run the code under test, whatever is installed), and ``extra``."""
    path = os.pathsep.join(filter(None, (str(REPO), os.environ.get("PYTHONPATH"))))
    return dict(os.environ, DASK=str(Path(sys.executable).parent / "dask"), PYTHON=sys.executable, PYTHONPATH=path,
                **(extra or {}))


@contextmanager
def local_cluster(directory: Path, workers: int, env: Mapping[str, str] | None = None) -> Iterator[str]:
    """A scheduler and ``workers`` worker processes (no nanny: a SIGKILL kills the worker), with this
    process's environment and ``env``; yields the scheduler's address, stops them all on exit."""
    started = subprocess.run(["bash", str(SCRIPT), "start", str(directory), "--workers", str(workers), "--no-nanny"],
                             env=_env(env), capture_output=True, text=True, timeout=240)
    try:
        assert started.returncode == 0, started.stderr
        address = started.stdout.strip()
        assert address.startswith("tcp://127.0.0.1:")
        yield address
    finally:
        subprocess.run(["bash", str(SCRIPT), "stop", str(directory)], env=_env(env), capture_output=True, timeout=120)


def pid_of(directory: Path, name: str) -> int:
    """The pid of the cluster's ``name`` process (``scheduler``, ``worker-0``, ...)."""
    return int((directory / f"{name}.pid").read_text().strip())


def assert_identical(expected: ms.Factorization, got: ms.Factorization) -> None:
    """The two factorizations are the same bit for bit (levels, core, error, insertion snapshots)."""
    for name in ("tuples", "wavelets", "rotations", "level_errors", "diagonal", "core", "core_block"):
        assert np.array_equal(getattr(expected._raw, name), getattr(got._raw, name)), name
    assert got.error == expected.error
    assert got.norm == pytest.approx(expected.norm, rel=1e-12)
    mine, theirs = expected.insertion_state, got.insertion_state
    assert len(mine.snapshots) == len(theirs.snapshots) > 0
    for a, b in zip(mine.snapshots, theirs.snapshots):
        assert a.level == b.level and np.array_equal(a.indices, b.indices)
        for field in ("block", "rows"):
            x, y = getattr(a, field), getattr(b, field)
            assert (x is None and y is None) or np.array_equal(x, y), field
    if mine.final_rows is not None:
        assert np.array_equal(mine.final_rows, theirs.final_rows)
