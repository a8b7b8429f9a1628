"""The Dask engine against real `dask scheduler` / `dask worker` processes on 127.0.0.1.

Clusters are started and stopped by deploy/local/cluster.sh (the script users
run; tests/dask_cluster.py). Every result is compared bit for bit with the local
staged engine.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import zarr

import mmf_stream as ms
from mmf_stream import cli
from mmf_stream.cli import matrices
from dask_cluster import REPO, assert_identical, local_cluster, pid_of

#: small clusters and blocks so that a few hundred classes take several stages and reads
OPTIONS = {"cluster_size": 64, "greedy_below": 128, "gram_block": 256}
DENSE_SIZE = 1100
FACTORED_SIZE = 1400


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Zarr inputs (dense C, class means M) and the local staged engine's results on them."""
    root = tmp_path_factory.mktemp("dask-inputs")
    matrix = ms.hierarchical_covariance(DENSE_SIZE, seed=3)
    means = ms.class_means(FACTORED_SIZE, 40, seed=5)
    dense = zarr.create_array(str(root / "C.zarr"), shape=matrix.shape, chunks=(300, 300), dtype="f8")
    dense[:] = matrix
    factored = zarr.create_array(str(root / "M.zarr"), shape=means.shape, chunks=(500, 40), dtype="f4")
    factored[:] = means.astype(np.float32)
    local_dense = ms.factorize(matrix, order=4, core_size=DENSE_SIZE // 8, schedule="staged", options=OPTIONS)
    local_factored = ms.factorize(means=np.asarray(factored[:]), order=5, schedule="staged", options=OPTIONS)
    return {"root": root, "dense": root / "C.zarr", "means": root / "M.zarr", "local_dense": local_dense,
            "local_factored": local_factored}


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_bit_identical_to_the_local_engine_on_1_2_3_workers(inputs, tmp_path, workers):
    with local_cluster(tmp_path / "cluster", workers) as address:
        dense = ms.factorize(str(inputs["dense"]), order=4, core_size=DENSE_SIZE // 8, schedule="staged",
                             options=OPTIONS, client=address)
        factored = ms.factorize(means=inputs["means"].as_uri(), order=5, schedule="staged", options=OPTIONS,
                                client=address)
    assert_identical(inputs["local_dense"], dense)
    assert_identical(inputs["local_factored"], factored)
    stages = dense.metadata["dask"]["stages"]
    assert len(stages) >= 3 and all(record["levels"] > 0 and record["bytes_received"] > 0 for record in stages)
    assert sum(record["levels"] for record in stages) == DENSE_SIZE - DENSE_SIZE // 8  # every level staged
    factored_stages = factored.metadata["dask"]["stages"]
    assert 0 < sum(record["levels"] for record in factored_stages) < FACTORED_SIZE - 4  # the tail ran greedy
    # the result is exact: its error is the reconstruction's
    C = np.asarray(zarr.open_array(str(inputs["dense"]))[:])
    assert dense.error == pytest.approx(np.linalg.norm(C - dense.reconstruct()), rel=1e-9)


def test_stages_without_levels_run_the_same_on_a_cluster(tmp_path):
    """Blocks of 2 rows (< k): every tuple is decoupled, so stages stop without levels, pass
    decoupled tuples over, then stop checking (the clusters receive the rule): bit identical."""
    rng = np.random.default_rng(4)
    n = 600
    matrix = np.zeros((n, n))
    for start in range(0, n, 2):
        X = rng.normal(size=(2, 3))
        matrix[start : start + 2, start : start + 2] = X @ X.T
    order = rng.permutation(n)
    matrix = matrix[np.ix_(order, order)]
    path = tmp_path / "pairs.zarr"
    stored = zarr.create_array(str(path), shape=matrix.shape, chunks=(300, 300), dtype="f8")
    stored[:] = matrix
    local = ms.factorize(matrix, order=4, core_size=60, schedule="staged", options=OPTIONS)
    with local_cluster(tmp_path / "cluster", 2) as address:
        remote = ms.factorize(str(path), order=4, core_size=60, schedule="staged", options=OPTIONS, client=address)
    assert_identical(local, remote)
    levels = [record["levels"] for record in remote.metadata["dask"]["stages"]]
    assert levels[:2] == [0, 0] and levels[2] > 0


def test_worker_killed_mid_stage_gives_the_same_result(inputs, tmp_path):
    directory = tmp_path / "cluster"
    killed = []

    class KillAtStageTwo:
        def __call__(self, levels: int) -> None:
            pass

        def stage(self, number: int, active: int) -> None:
            if number == 2 and not killed:  # stage 1's rows live on the workers: one of them dies
                pid = pid_of(directory, "worker-1")
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)

    with local_cluster(directory, 3) as address:
        result = ms.factorize(str(inputs["dense"]), order=4, core_size=DENSE_SIZE // 8, schedule="staged",
                              options=OPTIONS, client=address, progress=KillAtStageTwo())
        from distributed import Client

        with Client(address, timeout=30) as client:
            assert len(client.scheduler_info()["workers"]) == 2
    assert killed
    assert_identical(inputs["local_dense"], result)


def test_scheduler_lost_mid_run_is_one_line_and_writes_nothing(inputs, tmp_path, monkeypatch, capsys):
    directory = tmp_path / "cluster"
    out = tmp_path / "result.zarr"

    def kill_scheduler(self, number: int, active: int) -> None:
        if number == 2:
            os.kill(pid_of(directory, "scheduler"), signal.SIGKILL)

    monkeypatch.setattr(matrices._StageProgress, "stage", kill_scheduler)
    with local_cluster(directory, 2) as address:
        code = cli.main(["factorize", str(inputs["dense"]), "--order", "4", "--schedule", "staged",
                         "--scheduler", address, "--out", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "lost the Dask cluster" in err and "Traceback" not in err
    assert not out.exists()


def test_cli_workers_embedded_cluster_matches_local(inputs, tmp_path, capsys):
    out = tmp_path / "r.zarr"
    code = cli.main(["factorize", "--means", str(inputs["means"]), "--order", "5", "--schedule", "staged",
                     "--workers", "2", "--out", str(out), "--quiet"])
    assert code == 0, capsys.readouterr().err
    loaded = ms.load(out)
    # the CLI runs the default options
    expected = ms.factorize(means=np.asarray(zarr.open_array(str(inputs["means"]))[:]), order=5, schedule="staged")
    assert np.array_equal(loaded._raw.tuples, expected._raw.tuples)
    assert np.array_equal(loaded._raw.rotations, expected._raw.rotations)
    assert loaded.error == expected.error


def test_bad_input_on_a_cluster_is_one_line(inputs, tmp_path, capsys, monkeypatch):
    import mmf_stream.dask_client as cluster

    asymmetric = ms.hierarchical_covariance(300, seed=1)
    asymmetric[5, 7] += 1.0
    path = tmp_path / "asym.zarr"
    zarr.create_array(str(path), shape=asymmetric.shape, chunks=(100, 300), dtype="f8")[:] = asymmetric
    broken = ms.class_means(300, 8)
    broken[17, 3] = np.nan
    nan_path = tmp_path / "nan.zarr"
    zarr.create_array(str(nan_path), shape=broken.shape, chunks=(100, 8), dtype="f8")[:] = broken
    with local_cluster(tmp_path / "cluster", 1) as address:
        # an in-memory array is sent to the workers block by block: the same result
        matrix = ms.hierarchical_covariance(300, seed=2)
        assert_identical(ms.factorize(matrix, order=4, core_size=40, schedule="staged", options=OPTIONS),
                         ms.factorize(matrix, order=4, core_size=40, schedule="staged", options=OPTIONS,
                                      client=address))
        with pytest.raises(ValueError, match=r"not symmetric: largest asymmetry \|C\[5,7\] - C\[7,5\]\|"):
            ms.factorize(str(path), order=4, schedule="staged", options=OPTIONS, client=address)
        with pytest.raises(ValueError, match=r"non-finite entries \(NaN or Inf\), first at \(17, 3\)"):
            ms.factorize(means=str(nan_path), order=4, schedule="staged", options=OPTIONS, client=address)
        code = cli.main(["factorize", str(path), "--schedule", "staged", "--scheduler", address,
                         "--out", str(tmp_path / "o.zarr")])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and "not symmetric" in err
    assert not (tmp_path / "o.zarr").exists()
    # nobody listens there
    monkeypatch.setattr(cluster, "CONNECT_TIMEOUT", 2.0)
    code = cli.main(["factorize", str(path), "--schedule", "staged", "--scheduler", "tcp://127.0.0.1:9",
                     "--out", str(tmp_path / "o.zarr")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "cannot reach the Dask scheduler" in err


def test_cli_cluster_options_are_checked(tmp_path, capsys):
    out = str(tmp_path / "o.zarr")
    with pytest.raises(SystemExit) as raised:
        cli.main(["factorize", "x.zarr", "--scheduler", "tcp://127.0.0.1:1", "--workers", "2", "--out", out])
    assert raised.value.code == 2 and "not allowed with argument" in capsys.readouterr().err
    code = cli.main(["factorize", "x.zarr", "--workers", "2", "--schedule", "greedy", "--out", out])
    assert code == 2 and "greedy levels run in one process" in capsys.readouterr().err
    with pytest.raises(SystemExit) as raised:
        cli.main(["factorize", "x.zarr", "--workers", "0", "--out", out])
    assert raised.value.code == 2


def test_serve_runs_its_batch_runs_on_the_scheduler(tmp_path):
    """`mmf-stream serve --scheduler`: the first factorization and the refreshes go to the cluster."""
    from mmf_stream.service.coordinator import serve
    from mmf_stream.service.status import project_status
    from service_helpers import check_exact, make_project

    project = make_project(tmp_path / "p", size=300)
    for i, mean in enumerate(np.abs(np.random.default_rng(2).normal(size=(40, 8))) + 0.1):
        ms.submit(project, f"n{i}", mean=mean)
    with local_cluster(tmp_path / "cluster", 1) as address:
        serve(project, order=4, scheduler=address, batch_max=8, idle_exit=1.0, log=lambda line: None)
    check_exact(project)
    status = project_status(project)
    assert status["applied"] == 40 and status["refreshes"] >= 1


# --- issue 18 item 14: a cluster that would run nothing; the connect timeout -----------------------------------


def _no_cluster(monkeypatch):
    """Make starting a LocalCluster or connecting a Client fail the test."""
    import distributed

    def refuse(*args, **kwargs):
        raise AssertionError("a Dask cluster or client was started")

    monkeypatch.setattr(distributed, "LocalCluster", refuse)
    monkeypatch.setattr(distributed, "Client", refuse)


@pytest.mark.parametrize("where", [["--workers", "2"], ["--scheduler", "tcp://127.0.0.1:1"]])
def test_small_input_on_a_cluster_runs_greedy_here_and_says_so(tmp_path, capsys, monkeypatch, where):
    import time

    matrix = ms.hierarchical_covariance(60, seed=4)
    np.save(tmp_path / "C.npy", matrix)
    _no_cluster(monkeypatch)
    start = time.perf_counter()
    code = cli.main(["factorize", str(tmp_path / "C.npy"), "--order", "4", *where, "--out", str(tmp_path / "r.zarr"),
                     "--quiet"])
    elapsed = time.perf_counter() - start
    err = capsys.readouterr().err
    assert code == 0, err
    lines = [line for line in err.splitlines() if "compiling" not in line]
    assert len(lines) == 1 and "greedy" in lines[0] and "--schedule staged" in lines[0], err
    assert ("no LocalCluster started" in lines[0]) == (where[0] == "--workers"), lines[0]
    assert elapsed < 30  # no cluster start (several seconds), no connect timeout
    expected = ms.factorize(matrix, order=4)
    assert np.array_equal(ms.load(tmp_path / "r.zarr")._raw.tuples, expected._raw.tuples)


def test_unreachable_scheduler_fails_within_the_connect_timeout(tmp_path, capsys):
    import time

    np.save(tmp_path / "C.npy", ms.hierarchical_covariance(60, seed=4))
    start = time.perf_counter()
    code = cli.main(["factorize", str(tmp_path / "C.npy"), "--schedule", "staged", "--scheduler", "tcp://127.0.0.1:1",
                     "--connect-timeout", "1", "--out", str(tmp_path / "r.zarr")])
    elapsed = time.perf_counter() - start
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert "cannot reach the Dask scheduler at tcp://127.0.0.1:1" in err and "within 1 s" in err, err
    assert elapsed < 10
    assert not (tmp_path / "r.zarr").exists()
    start = time.perf_counter()
    with pytest.raises(ConnectionError, match="tcp://127.0.0.1:1"):
        ms.factorize(ms.hierarchical_covariance(60, seed=4), schedule="staged", client="tcp://127.0.0.1:1",
                     connect_timeout=1)
    assert time.perf_counter() - start < 10


@pytest.mark.parametrize("value", ["0", "-1", "nan", "soon"])
def test_connect_timeout_must_be_positive(tmp_path, capsys, value):
    with pytest.raises(SystemExit) as raised:
        cli.main(["factorize", "x.zarr", "--scheduler", "tcp://127.0.0.1:1", "--connect-timeout", value,
                  "--out", str(tmp_path / "o.zarr")])
    err = capsys.readouterr().err
    assert raised.value.code == 2 and err.count("\n") == 1 and "argument --connect-timeout" in err, err


# --- issue 18 item 13 (Dask): distributed's noise stays out of the client's stderr ---------------------------------


@pytest.fixture
def distributed_logging():
    """Restore the distributed loggers' levels and their handlers' formatters after the test."""
    import logging

    from mmf_stream.dask_client import DISTRIBUTED_LOGGERS

    loggers = [logging.getLogger(name) for name in DISTRIBUTED_LOGGERS]
    saved = [(logger, logger.level, [(handler, handler.formatter) for handler in logger.handlers])
             for logger in loggers]
    yield
    for logger, level, handlers in saved:
        logger.setLevel(level)
        for handler, formatter in handlers:
            handler.setFormatter(formatter)


def test_distributed_loggers_are_quiet_and_one_line(distributed_logging):
    import io
    import logging

    import mmf_stream.dask_client as cluster

    ours, root = logging.getLogger("mmf_stream"), logging.getLogger()
    before = (ours.level, root.level, list(root.handlers))
    # distributed puts a plain stderr StreamHandler on its logger (unless the root logger already has
    # handlers, as under pytest): stand one in, writing here
    top = logging.getLogger("distributed")
    written = io.StringIO()
    handler, propagate = logging.StreamHandler(written), top.propagate
    top.addHandler(handler)
    top.propagate = False
    try:
        with pytest.raises(ConnectionError):  # opening a client quiets them (the scheduler's address here)
            with cluster.connect_client("tcp://127.0.0.1:1", connect_timeout=0.5):
                pass
        for name in cluster.DISTRIBUTED_LOGGERS:
            assert logging.getLogger(name).getEffectiveLevel() >= logging.ERROR, name
        assert (ours.level, root.level, list(root.handlers)) == before  # our own logs and the root: untouched
        logging.getLogger("distributed.scheduler").warning("Removing worker 'tcp://127.0.0.1:1' caused ...")
        try:
            raise RuntimeError("stream closed\nwhile reading")
        except RuntimeError:
            logging.getLogger("distributed.core").exception("Exception while handling op gather")
    finally:
        top.removeHandler(handler)
        top.propagate = propagate
    err = written.getvalue()
    assert "Removing worker" not in err
    assert "Traceback" not in err and err.count("\n") == 1, err
    assert "distributed.core - ERROR - Exception while handling op gather (RuntimeError: stream closed while " \
        "reading)" in err, err
    # a quieter level set before (the CLI silences them entirely) is kept
    logging.getLogger("distributed.comm").setLevel(logging.CRITICAL + 1)
    cluster.quiet_distributed_logs()
    assert logging.getLogger("distributed.comm").level == logging.CRITICAL + 1


_KILL_ONE_WORKER = """
import multiprocessing, os, signal, sys
import numpy as np, zarr
import mmf_stream as ms
from mmf_stream.dask_client import connect_client

OPTIONS = {options!r}
killed = []


class KillAtStageTwo:
    def __call__(self, levels):
        pass

    def stage(self, number, active):
        if number == 2 and not killed:
            worker = next(p for p in multiprocessing.active_children() if "Dask Worker" in p.name)
            os.kill(worker.pid, signal.SIGKILL)
            killed.append(worker.pid)


if __name__ == "__main__":
    with connect_client(workers=2) as client:
        result = ms.factorize(sys.argv[1], order=4, core_size=75, schedule="staged", options=OPTIONS, client=client,
                              progress=KillAtStageTwo())
    assert killed
    result.save(sys.argv[2])
"""


def test_worker_killed_on_a_local_cluster_leaves_no_noise(tmp_path):
    """A worker of an embedded LocalCluster SIGKILLed mid-run (in a process of its own, whose stderr
    is the one a user reads): the scheduler recomputes its shards, the result is the same, and stderr
    holds no traceback nor distributed warning."""
    matrix = ms.hierarchical_covariance(600, seed=6)
    path = tmp_path / "C.zarr"
    zarr.create_array(str(path), shape=matrix.shape, chunks=(200, 200), dtype="f8")[:] = matrix
    script = tmp_path / "kill_one_worker.py"
    script.write_text(_KILL_ONE_WORKER.format(options=OPTIONS))
    done = subprocess.run([sys.executable, str(script), str(path), str(tmp_path / "r.zarr")], cwd=REPO,
                          env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr and "distributed.scheduler - WARNING" not in done.stderr, done.stderr
    assert "distributed.nanny - WARNING" not in done.stderr, done.stderr
    expected = ms.factorize(matrix, order=4, core_size=75, schedule="staged", options=OPTIONS)
    assert_identical(expected, ms.load(tmp_path / "r.zarr"))
