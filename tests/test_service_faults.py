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
