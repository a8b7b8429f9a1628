"""The embedded durable queue and its producers (ms.submit, mmf-stream submit)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import mmf_stream as ms
from mmf_stream import cli
from mmf_stream.service.queues.embedded import EmbeddedQueue, encode_array

from queue_contract import QueueContract  # noqa: E402
from service_helpers import small_project  # noqa: E402

D = 6


@pytest.fixture
def project(tmp_path):
    return small_project(tmp_path / "project.zarr", D)


class TestEmbeddedQueueContract(QueueContract):
    """The queue contract (tests/queue_contract.py) on the project's embedded queue."""

    @pytest.fixture
    def queue_url(self) -> str:
        return "embedded"

    def delete_queue(self, project, queue_url: str) -> None:
        shutil.rmtree(project / "queue", ignore_errors=True)  # absent: nothing to delete


def test_submit_queues_in_arrival_order_with_the_payload(project):
    mean = np.arange(D, dtype=float)
    features = np.ones((3, D))
    first = ms.submit(project, "ketchup", mean=mean)
    second = ms.submit(project, 17, features=features)
    with EmbeddedQueue.of_project(project) as queue:
        messages = queue.read()
        assert [m.id for m in messages] == [first, second] and messages[0].seq < messages[1].seq
        assert messages[0].label == b"ketchup" and messages[0].kind == "mean"
        assert np.array_equal(messages[0].array(), mean)
        assert messages[1].label == b"17" and messages[1].kind == "features"
        assert np.array_equal(messages[1].array(), features)
        assert queue.depth() == 2 and queue.depth(after=messages[0].seq) == 1
        assert queue.read(after=messages[1].seq) == []


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"label": "x"}, ValueError, "exactly one of mean= or features="),
        ({"label": "x", "mean": np.zeros(D), "features": np.zeros((1, D))}, ValueError, "exactly one"),
        ({"label": "x", "mean": np.zeros(D + 1)}, ValueError, "has 7 features; the project's classes have D = 6"),
        ({"label": "x", "mean": np.zeros((2, D))}, ValueError, r"mean must have shape \(D,\)"),
        ({"label": "x", "features": np.zeros(D)}, ValueError, r"features must have shape \(n, D\)"),
        ({"label": "x", "mean": np.full(D, np.nan)}, ValueError, "non-finite"),
        ({"label": "x", "mean": np.array(["a"] * D)}, TypeError, "real numbers"),
        ({"label": "  ", "mean": np.zeros(D)}, ValueError, "label is empty"),
        ({"label": 1.5, "mean": np.zeros(D)}, TypeError, "label must be a string or an integer"),
        ({"label": "x", "mean": np.zeros(D), "queue": "kafka://host"}, ValueError, "unknown queue"),
    ],
)
def test_bad_submissions_are_refused_and_queue_nothing(project, kwargs, error, match):
    with pytest.raises(error, match=match):
        ms.submit(project, **kwargs)
    with EmbeddedQueue.of_project(project) as queue:
        assert queue.depth() == 0


def test_submit_to_something_that_is_not_a_project(tmp_path):
    with pytest.raises(ValueError, match="is not a project"):
        ms.submit(tmp_path, "x", mean=np.zeros(3))


def test_a_producer_killed_mid_stream_leaves_whole_messages(project):
    script = (
        "import sys, numpy as np\n"
        "from mmf_stream.service.queues.embedded import EmbeddedQueue, encode_array\n"
        "q = EmbeddedQueue.of_project(sys.argv[1])\n"
        "i = 0\n"
        "while True:\n"
        "    q.put(f'k{i}', 'mean', encode_array(np.full(5000, float(i))), message_id=f'k{i}')\n"
        "    i += 1\n"
        "    if i == 20: print('ready', flush=True)\n"
    )
    process = subprocess.Popen([sys.executable, "-c", script, str(project)], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline().strip() == "ready"
        time.sleep(0.3)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait(timeout=30)
    with EmbeddedQueue.of_project(project) as queue:
        assert queue.check() == "ok"
        messages = queue.read(limit=100_000)
    assert len(messages) >= 20
    for number, message in enumerate(messages):  # every message whole, none skipped
        assert message.id == f"k{number}"
        assert np.array_equal(message.array(), np.full(5000, float(number)))


def test_cli_submit_prints_the_id_and_errors_are_one_line(project, tmp_path, capsys):
    mean = tmp_path / "mean.npy"
    np.save(mean, np.arange(D, dtype=float))
    assert cli.main(["submit", str(project), "--label", "new", "--mean", str(mean)]) == 0
    message_id = capsys.readouterr().out.strip()
    with EmbeddedQueue.of_project(project) as queue:
        assert [m.id for m in queue.read()] == [message_id]
    wrong = tmp_path / "wrong.npy"
    np.save(wrong, np.zeros(D + 2))
    for argv, text in (
        (["submit", str(project), "--label", "x", "--mean", str(wrong)], "the project's classes have D = 6"),
        (["submit", str(project), "--label", "x"], "exactly one of --mean"),
        (["submit", str(project), "--label", "x", "--mean", str(tmp_path / "none.npy")], "no such file"),
        (["submit", str(tmp_path), "--label", "x", "--mean", str(mean)], "is not a project"),
    ):
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and text in err and "Traceback" not in err
    with EmbeddedQueue.of_project(project) as queue:
        assert queue.depth() == 1


def test_encode_array_refuses_nothing_it_cannot_read_back():
    array = np.linspace(0, 1, 7)
    from mmf_stream.service.queues.embedded import Message

    message = Message(1, "id", b"l", "mean", encode_array(array), "{}", 0.0)
    assert np.array_equal(message.array(), array)


def _raw(queue, label=b"x", kind="mean", payload=None, extra=None):
    payload = encode_array(np.zeros(D)) if payload is None else payload
    queue.put(label, kind, payload, extra=extra)
    return queue.read(limit=10_000)[-1]


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"payload": encode_array(np.zeros(D + 1))}, "has 7 features; the project's classes have D = 6"),
        ({"payload": encode_array(np.full(D, np.inf))}, "non-finite"),
        ({"label": b"\xff\xfe"}, "label is not UTF-8 text"),
        ({"label": b"   "}, "label is empty"),
        ({"payload": b"\x00" * 64}, "payload is not a .npy array"),
        ({"extra": {"colour": "red"}}, "unknown field(s) 'colour'"),
        ({"kind": "median"}, "unknown kind 'median'"),
        ({"kind": "features"}, "features has shape (6,); expected (n, D)"),
        ({"extra": {"count": 0}}, "count must be a positive integer"),
    ],
)
def test_bad_messages_are_dead_lettered_with_their_reason_and_the_next_good_one_decodes(project, fields, reason):
    from mmf_stream.service.messages import BadMessage, decode

    with EmbeddedQueue.of_project(project) as queue:
        _raw(queue, **fields)
        queue.put("good", "features", encode_array(np.ones((4, D))))
        bad, good = queue.read()
        with pytest.raises(BadMessage) as raised:
            decode(bad, D, "str")
        assert reason in str(raised.value)
        queue.dead_letter(bad, str(raised.value))
        queue.dead_letter(bad, "again")  # recorded once
        decoded = decode(good, D, "str")
        assert decoded.label == "good" and decoded.count == 4 and np.array_equal(decoded.mean, np.ones(D))
        assert queue.dead_letters() == [(bad.seq, bad.id, str(raised.value))]


def test_oversized_payloads_are_dead_lettered(project, monkeypatch):
    from mmf_stream.service import messages

    monkeypatch.setattr(messages, "MAX_PAYLOAD_BYTES", 100)
    with EmbeddedQueue.of_project(project) as queue:
        message = _raw(queue)
        with pytest.raises(messages.BadMessage, match="payload is .* bytes; at most 100"):
            messages.decode(message, D, "str")


def test_integer_projects_take_integer_labels(project):
    from mmf_stream.service.messages import BadMessage, decode

    with EmbeddedQueue.of_project(project) as queue:
        queue.put("42", "mean", encode_array(np.zeros(D)))
        queue.put("abc", "mean", encode_array(np.zeros(D)))
        first, second = queue.read()
    assert decode(first, D, "int").label == 42
    with pytest.raises(BadMessage, match="is not an integer"):
        decode(second, D, "int")


def test_submit_reads_only_the_project_metadata(project, monkeypatch):
    """A producer's cost does not grow with the project: no store is opened, no chunk checked."""
    from mmf_stream.store.class_store import Store

    def refuse(*args, **kwargs):
        raise AssertionError("submit opened the class store")

    monkeypatch.setattr(Store, "open", classmethod(refuse))
    message = ms.submit(project, "fresh", mean=np.ones(D))
    assert [m.id for m in EmbeddedQueue.of_project(project).read()][-1] == message
    with pytest.raises(ValueError, match="features; the project's classes have D"):
        ms.submit(project, "wrong", mean=np.ones(D + 1))


def test_submit_to_a_centred_project_is_refused(tmp_path):
    path = tmp_path / "centred"
    ms.Store.create(path, center=True).add_means(np.eye(4), ["a", "b", "c", "d"])
    with pytest.raises(ValueError, match="centred"):
        ms.submit(path, "e", mean=np.ones(4))
    assert not (path / "queue").exists()


def test_removals_are_queued_without_a_payload(project, capsys):
    message = ms.submit(project, "b", remove=True)
    queued = EmbeddedQueue.of_project(project).read()[-1]
    assert queued.id == message and queued.kind == "remove" and queued.payload == b""
    for kwargs, error, match in [({"mean": np.ones(D)}, ValueError, "takes no mean"),
                                 ({"features": np.ones((2, D))}, ValueError, "takes no mean"),
                                 ({"remove": "yes"}, TypeError, "True or False")]:
        with pytest.raises(error, match=match):
            ms.submit(project, "b", **{"remove": True, **kwargs})
    assert cli.main(["submit", str(project), "--label", "c", "--remove"]) == 0
    assert EmbeddedQueue.of_project(project).read()[-1].kind == "remove"
    np.save(project.parent / "m.npy", np.ones(D))
    capsys.readouterr()
    assert cli.main(["submit", str(project), "--label", "c", "--remove", "--mean", str(project.parent / "m.npy")]) == 2
    assert "--remove takes no --mean" in capsys.readouterr().err


def test_bad_removal_messages_are_dead_lettered(project):
    from mmf_stream.service.messages import BadMessage, decode

    with EmbeddedQueue.of_project(project) as queue:
        queue.put("b", "remove", b"123")
        queue.put("b", "remove", b"", extra={"count": 2})
        queue.put("b", "remove", b"")
        first, second, good = queue.read()
    for message, reason in [(first, "carries no payload"), (second, "carries no fields")]:
        with pytest.raises(BadMessage, match=reason):
            decode(message, D, "str")
    assert decode(good, D, "str").removal


#: the embedded queue's schema before it had a meta table (identity)
OLD_SCHEMA = """
CREATE TABLE messages (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, label BLOB NOT NULL,
                       kind TEXT NOT NULL, payload BLOB NOT NULL, extra TEXT NOT NULL DEFAULT '{}',
                       submitted REAL NOT NULL);
CREATE TABLE dead_letters (seq INTEGER PRIMARY KEY, id TEXT NOT NULL, reason TEXT NOT NULL, at REAL NOT NULL);
"""


def test_a_queue_made_before_identities_gets_one_from_its_next_writer(project):
    import sqlite3

    path = project / "queue" / "messages.sqlite"
    path.parent.mkdir()
    old = sqlite3.connect(path)
    old.executescript(OLD_SCHEMA)
    old.execute("INSERT INTO messages (id, label, kind, payload, submitted) VALUES ('m0', x'61', 'mean', x'', 0)")
    old.commit()
    old.close()
    with EmbeddedQueue.of_project(project) as queue:
        identity = queue.identity()
        assert identity and [m.id for m in queue.read()] == ["m0"]
    with EmbeddedQueue.of_project(project) as queue:
        assert queue.identity() == identity
