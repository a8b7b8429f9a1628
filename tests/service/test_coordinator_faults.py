"""The service against operator faults (issue 18): deleted lock and log files, replaced queues,
corrupt files, signals during start-up, classes appended while idle."""

from __future__ import annotations

import numpy as np
import pytest

import mmf_stream as ms
from mmf_stream.service.coordinator import Coordinator, CoordinatorBusy, ServeOptions, serving_pid
from mmf_stream.store.generations import Project
from service_helpers import DIM, INITIAL, check_exact, make_project


def _coordinator(project, **options) -> Coordinator:
    return Coordinator(project, ServeOptions(order=4, batch_wait=0.0, **options), log=lambda line: None)


def _means(count, seed=1):
    return np.abs(np.random.default_rng(seed).normal(size=(count, DIM))) + 0.1


def _drain(coordinator: Coordinator) -> None:
    while coordinator.step():
        pass


def test_deleting_the_lock_file_does_not_let_a_second_coordinator_in(tmp_path):
    project = make_project(tmp_path / "p")
    first = _coordinator(project).start()
    try:
        lock_file = project / "service" / "coordinator.lock"
        assert lock_file.read_text() == str(__import__("os").getpid())
        lock_file.unlink()
        with pytest.raises(CoordinatorBusy, match="another coordinator"):
            _coordinator(project).start()
        assert serving_pid(project) == -1  # serving, and the file that named it is gone
    finally:
        first.close()
    assert serving_pid(project) is None
    second = _coordinator(project).start()  # free again once the first stopped
    second.close()


def test_a_coordinator_never_applies_messages_another_one_committed(tmp_path, monkeypatch):
    project = make_project(tmp_path / "p")
    first = _coordinator(project).start()
    try:
        for i, mean in enumerate(_means(6)):
            ms.submit(project, f"n{i}", mean=mean)
        # a second coordinator that got past the lock by some other fault (e.g. a copied project) commits
        # the same messages between the first one's read and its commit
        second = _coordinator(project)
        monkeypatch.setattr(second._lock, "acquire", lambda: None)
        second.start()
        read = first._queue.read

        def read_then_let_the_second_commit(*args, **kwargs):
            messages = read(*args, **kwargs)
            if messages and second._queue is not None:
                _drain(second)
                second.close()
            return messages

        monkeypatch.setattr(first._queue, "read", read_then_let_the_second_commit)
        with pytest.raises(CoordinatorBusy, match="another process committed"):
            first.step()
    finally:
        first.close()
    store, f = check_exact(project)
    assert store.size == f.size == INITIAL + 6
    assert store.counts.max() == 1  # no class applied twice


def _served(tmp_path, count=6):
    """A project whose coordinator applied ``count`` queued classes, then stopped."""
    project = make_project(tmp_path / "p")
    for i, mean in enumerate(_means(count)):
        ms.submit(project, f"n{i}", mean=mean, message_id=f"n{i}")
    coordinator = _coordinator(project).start()
    try:
        _drain(coordinator)
    finally:
        coordinator.close()
    return project


def _log_without_side_files(project):
    """The stopped project's commit log, its SQLite -wal/-shm files removed (all is in the main file)."""
    for side in ("-wal", "-shm"):
        (project / "service" / f"log.sqlite{side}").unlink(missing_ok=True)
    return project / "service" / "log.sqlite"


def _log_files(project):
    return sorted(p.name for p in (project / "service").iterdir() if p.name.startswith("log.sqlite"))


@pytest.mark.parametrize("damage", ["delete", "truncate"])
def test_a_lost_commit_log_is_refused_and_can_be_rebuilt_without_applying_twice(tmp_path, capsys, damage):
    from mmf_stream.cli import main

    project = _served(tmp_path)
    log = _log_without_side_files(project)
    if damage == "delete":
        log.unlink()
    else:
        log.write_bytes(b"")
    before = ms.Store.open(project, mode="r").generation
    assert main(["serve", str(project), "--idle-exit", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "log.sqlite" in err and "--rebuild-log" in err
    assert ms.Store.open(project, mode="r").generation == before  # refused before touching anything
    assert main(["serve", str(project), "--idle-exit", "0", "--rebuild-log"]) == 0
    assert "rebuilding the commit log" in capsys.readouterr().err
    store, f = check_exact(project)
    assert store.size == f.size == INITIAL + 6 and store.counts.max() == 1  # nothing re-applied
    with Project(project) as rebuilt:
        assert rebuilt.current().position == 6 and rebuilt.current().reason == "log rebuilt"
    if damage == "truncate":
        assert any(".replaced-" in name for name in _log_files(project))  # the damaged file is kept aside
    ms.submit(project, "later", mean=_means(1, seed=5)[0])
    assert main(["serve", str(project), "--idle-exit", "0"]) == 0
    assert ms.Store.open(project, mode="r").size == INITIAL + 7


def test_a_commit_log_older_than_the_store_is_refused(tmp_path, capsys):
    import shutil

    from mmf_stream.cli import main

    project = _served(tmp_path, count=3)
    backup = tmp_path / "backup"
    shutil.copytree(project / "service", backup)
    for i, mean in enumerate(_means(3, seed=2)):
        ms.submit(project, f"m{i}", mean=mean)
    assert main(["serve", str(project), "--idle-exit", "0"]) == 0
    shutil.rmtree(project / "service")
    shutil.copytree(backup, project / "service")  # an old backup of the log put back
    capsys.readouterr()
    assert main(["serve", str(project), "--idle-exit", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "older than the class store" in err
    assert ms.Store.open(project, mode="r").size == INITIAL + 6


def test_classes_appended_while_the_coordinator_is_idle_are_factorized(tmp_path):
    project = make_project(tmp_path / "p")
    coordinator = _coordinator(project).start()
    try:
        assert coordinator.step() == 0
        other_writer = ms.Store.open(project)  # covariance --append from another process, as it were
        other_writer.add_means(_means(5), labels=[f"late{i}" for i in range(5)])
        assert coordinator.step() == 0  # no message waits, and yet
        assert coordinator.factorization.size == INITIAL + 5
    finally:
        coordinator.close()
    store, f = check_exact(project)
    assert f.size == store.size == INITIAL + 5


def test_the_log_says_ready_batch_dead_letter_and_stop(tmp_path, caplog):
    import logging

    from mmf_stream.service.coordinator import LOGGER_NAME, serve
    from mmf_stream.service.queues.embedded import EmbeddedQueue

    project = make_project(tmp_path / "p")
    for i, mean in enumerate(_means(3)):
        ms.submit(project, f"n{i}", mean=mean)
    with EmbeddedQueue.of_project(project) as queue:
        queue.put("bad", "mean", b"not an array")
    with caplog.at_level(logging.INFO, logger=LOGGER_NAME):
        serve(project, order=4, idle_exit=0.2, batch_wait=0.0)
    lines = [record.getMessage() for record in caplog.records if record.name == LOGGER_NAME]
    assert all("\n" not in line for line in lines)
    assert lines[0].startswith("factorizing")
    assert any(line.startswith("ready: serving") for line in lines)
    batch = next(line for line in lines if line.startswith("batch:"))
    assert "3 applied (3 added)" in batch and "1 dead letter" in batch and "generation" in batch
    assert any(line.startswith("dead letter") and "not a .npy array" in line for line in lines)
    assert lines[-1].startswith("stopped")


def test_sigterm_during_the_start_up_factorization_stops_cleanly(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    from service_helpers import env

    project = tmp_path / "p"
    store = ms.Store.create(project)
    store.add_means(ms.class_means(3000, 16, seed=0), labels=[f"c{i}" for i in range(3000)])
    process = subprocess.Popen([sys.executable, "-m", "mmf_stream.cli", "serve", str(project), "--order", "5"],
                               env=env(), stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    try:
        first = process.stderr.readline()
        assert "factorizing 3000 classes" in first, first
        time.sleep(0.5)
        assert process.poll() is None  # still factorizing
        process.send_signal(signal.SIGTERM)
        err = process.stderr.read()
        assert process.wait(timeout=60) == 0, err
    finally:
        process.kill()
    assert "stopped by SIGTERM" in err and "Traceback" not in err
    with Project(project) as log:
        assert log.current() is None and log.pending() is None  # nothing half-written
    assert ms.Store.open(project, mode="r").size == 3000


def _layer_files(project):
    return sorted((project / "service" / "layers").glob("g*.npz"), key=lambda p: p.stat().st_size)


@pytest.mark.parametrize("damage", ["truncate", "flip", "rewrite", "delete"])
def test_a_damaged_layer_file_is_refused_in_one_line(tmp_path, capsys, damage):
    from mmf_stream.cli import main

    project = _served(tmp_path)
    good = ms.load(project)
    layer = _layer_files(project)[-1]  # the largest: the final rows or the rotations
    content = layer.read_bytes()
    if damage == "truncate":
        layer.write_bytes(content[: len(content) // 2])
    elif damage == "flip":
        flipped = bytearray(content)
        flipped[len(content) // 2] ^= 0x10
        layer.write_bytes(bytes(flipped))
    elif damage == "rewrite":  # a valid npz with other values
        with np.load(layer) as data:
            rows, values = data["rows"], data["values"]
        np.savez(layer, rows=rows, values=values * 1.5)
    else:
        layer.unlink()
    with pytest.raises(ValueError, match="is corrupt: layer file") as raised:
        ms.load(project)
    assert "\n" not in str(raised.value)
    assert main(["serve", str(project), "--idle-exit", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "layer file" in err
    if damage == "delete":  # status sees it without reading the layers
        assert main(["status", str(project)]) == 2
        assert "is missing" in capsys.readouterr().err
    assert good.size == INITIAL + 6


@pytest.mark.parametrize("damage", ["garbage", "truncate"])
def test_a_garbage_commit_log_is_refused_in_one_line(tmp_path, capsys, damage):
    from mmf_stream.cli import main

    project = _served(tmp_path)
    log = _log_without_side_files(project)
    content = log.read_bytes()
    log.write_bytes(b"this is not a database" * 100 if damage == "garbage" else content[:1000])
    for command in (["serve", str(project), "--idle-exit", "0"], ["status", str(project)]):
        assert main(command) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "log.sqlite" in err, err
    with pytest.raises(ValueError, match="log.sqlite"):
        ms.load(project)


def test_a_store_whose_metadata_was_edited_is_refused(tmp_path, capsys):
    import json

    from mmf_stream.cli import main

    project = _served(tmp_path)
    meta_file = project / "zarr.json"
    meta = json.loads(meta_file.read_text())
    meta["attributes"]["mmf_stream"]["size"] = INITIAL  # six classes "forgotten"
    meta_file.write_text(json.dumps(meta))
    capsys.readouterr()
    assert main(["serve", str(project), "--idle-exit", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is corrupt" in err and "zarr.json" in err
    assert main(["status", str(project), "--json"]) == 2
    assert "zarr.json" in capsys.readouterr().err
    assert json.loads(meta_file.read_text()) == meta  # untouched


def test_a_queue_deleted_and_created_again_is_refused_then_adopted(tmp_path, capsys):
    import shutil

    from mmf_stream.cli import main

    project = _served(tmp_path)  # position 6 in the first queue
    shutil.rmtree(project / "queue")
    for i, mean in enumerate(_means(3, seed=7)):
        ms.submit(project, f"after{i}", mean=mean)  # sequence numbers 1..3 again: at or below the position
    capsys.readouterr()
    assert main(["serve", str(project), "--idle-exit", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not the one" in err and "--adopt-queue" in err
    assert main(["status", str(project), "--json"]) == 2  # status says so too
    captured = capsys.readouterr()
    assert "is not the one" in captured.err
    assert main(["serve", str(project), "--idle-exit", "0", "--adopt-queue"]) == 0
    store, f = check_exact(project)
    assert store.size == f.size == INITIAL + 9 and store.counts.max() == 1
    assert main(["serve", str(project), "--idle-exit", "0"]) == 0  # adopted for good


def test_a_garbage_embedded_queue_is_refused_in_one_line(tmp_path, capsys):
    from mmf_stream.cli import main

    project = _served(tmp_path)
    queue = project / "queue" / "messages.sqlite"
    for side in queue.parent.glob("messages.sqlite-*"):
        side.unlink()
    queue.write_bytes(b"not a database" * 300)
    mean = tmp_path / "m.npy"
    np.save(mean, _means(1)[0])
    capsys.readouterr()
    for command in (["serve", str(project), "--idle-exit", "0"], ["submit", str(project), "--label", "y",
                                                                   "--mean", str(mean)]):
        assert main(command) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "is not a readable queue" in err, err
    with pytest.raises(ValueError, match="not a readable queue"):
        ms.submit(project, "z", mean=_means(1)[0])
    assert main(["status", str(project), "--json"]) == 0  # the project's own state, the queue's error beside it
    assert "queue_error" in capsys.readouterr().out


@pytest.mark.parametrize("library", ["wraps", "swallows"])
def test_a_stop_signal_that_a_library_wraps_or_swallows_still_abandons_the_step(tmp_path, library):
    # CI saw "SystemError: CPUDispatcher(...) returned a result with an exception set": the handler's
    # StopRequested was raised while a numba dispatcher was in C, and came out as a SystemError.
    import os
    import signal
    import time

    from mmf_stream.service.coordinator import StopRequested

    def computation():
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler runs here
        except StopRequested as stop:
            if library == "wraps":
                raise SystemError("returned a result with an exception set") from stop
        return "finished"

    coordinator = _coordinator(make_project(tmp_path / "p"))
    previous = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT)}
    coordinator.install_signal_handlers()
    try:
        with pytest.raises(StopRequested, match="SIGTERM"):
            with coordinator._abandonable_step():
                computation()
        assert coordinator.stopping
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
