"""Readers never write: ``mmf-stream status``, depth queries and ``ms.load`` of a project create and modify no
file, so they work on a read-only project (issue 18, item 11).

Tests run as root in CI, where ``chmod a-w`` stops nothing: every test compares the project's whole file
tree (names, sizes, mtimes) before and after, which fails on any write whoever runs it.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest

import mmf_stream as ms
from mmf_stream import cli
from mmf_stream.service.queues.backends import open_queue
from mmf_stream.service.coordinator import Coordinator, ServeOptions
from mmf_stream.service.queues.embedded import EmbeddedQueue, encode_array
from mmf_stream.service.status import project_status
from mmf_stream.store.generations import Project
from mmf_stream.store.readonly import ReadOnlyDatabase

from service_helpers import DIM, file_tree as tree, make_project  # noqa: E402


def _serve(project: Path) -> None:
    coordinator = Coordinator(project, ServeOptions(order=4), log=lambda line: None).start()
    try:
        coordinator.run(idle_exit=0.2)
    finally:
        coordinator.close()


def _write_protect(root: Path, writable: bool) -> None:
    for path in [root, *root.rglob("*")]:
        mode = path.lstat().st_mode
        bits = stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH
        os.chmod(path, (mode | stat.S_IWUSR) if writable else (mode & ~bits))


@pytest.fixture
def served(tmp_path):
    """A project served once (log, layers), with two classes queued since (not applied)."""
    project = make_project(tmp_path / "p")
    _serve(project)
    for i in range(2):
        ms.submit(project, f"n{i}", mean=np.ones(DIM) * (i + 1))
    return project


def test_status_of_a_fresh_project_writes_nothing(tmp_path, capsys):
    project = make_project(tmp_path / "p")
    before = tree(project)
    status = project_status(project)
    assert status["queue_depth"] == 0 and status["generation"] is None
    assert cli.main(["status", str(project), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["queue_depth"] == 0
    assert tree(project) == before  # no queue/messages.sqlite, no service/


def test_status_and_load_of_a_read_only_project(served, capsys):
    before = tree(served)
    _write_protect(served, writable=False)
    try:
        status = project_status(served)
        f = ms.load(served)
        assert cli.main(["status", str(served)]) == 0
        assert "2 waiting" in capsys.readouterr().out
    finally:
        _write_protect(served, writable=True)
    assert status["queue_depth"] == 2 and status["generation"] is not None and f.size == status["factorized"]
    assert tree(served) == before  # nothing created or modified (also as root, where chmod stops nothing)


def test_status_of_a_project_with_a_queue_and_no_log_writes_nothing(tmp_path):
    project = make_project(tmp_path / "p")
    ms.submit(project, "n0", mean=np.ones(DIM))
    before = tree(project)
    assert project_status(project)["queue_depth"] == 1
    assert tree(project) == before


def test_a_reader_sees_what_a_live_writer_commits(tmp_path):
    project = make_project(tmp_path / "p")
    with EmbeddedQueue.of_project(project) as writer:  # open: its -wal and -shm exist
        writer.put("a", "mean", encode_array(np.ones(DIM)))
        with EmbeddedQueue.of_project(project, readonly=True) as reader:
            assert reader.depth() == 1 and reader.identity() == writer.identity()
            writer.put("b", "mean", encode_array(np.ones(DIM)))
            assert reader.depth() == 2
            with pytest.raises(ValueError, match="opened read-only"):
                reader.put("c", "mean", b"")
    with EmbeddedQueue.of_project(project, readonly=True) as reader:  # no writer: the file alone
        assert reader.depth() == 2
        with EmbeddedQueue.of_project(project) as writer:  # a writer comes, commits and goes meanwhile
            writer.put("c", "mean", encode_array(np.ones(DIM)))
        assert reader.depth() == 3


def test_read_only_opens_of_what_does_not_exist(tmp_path):
    project = make_project(tmp_path / "p")
    before = tree(project)
    with open_queue(project, None, readonly=True) as queue:
        assert queue.depth() == 0 and queue.read() == [] and queue.identity() is None and queue.check() == "ok"
    with pytest.raises(ValueError, match="no commit log"):
        Project(project, readonly=True)
    with pytest.raises(FileNotFoundError):
        ReadOnlyDatabase(project / "none.sqlite")
    assert tree(project) == before


def test_a_read_only_log_refuses_writes(served):
    with Project(served, readonly=True) as log:
        assert log.current() is not None
        with pytest.raises(ValueError, match="opened read-only"):
            log.record_event("start", "x")
