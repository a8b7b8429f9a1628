"""The Redis Streams queue (mmf_stream.service.queues.redis_streams) against a real redis-server."""

from __future__ import annotations


import numpy as np
import pytest

import mmf_stream as ms
from mmf_stream import cli
from mmf_stream.service.queues.backends import open_queue, project_id
from mmf_stream.service.messages import BadMessage, decode
from mmf_stream.service.queues.embedded import encode_array
from mmf_stream.service.queues.redis_streams import RedisQueue, parse_entry_id, parse_position

from queue_contract import QueueContract  # noqa: E402
from service_helpers import small_project  # noqa: E402

D = 6


@pytest.fixture
def project(tmp_path):
    return small_project(tmp_path / "project.zarr", D)


@pytest.fixture
def queue(redis_url):
    with RedisQueue(redis_url, "p1", consumer="coordinator-1") as opened:
        yield opened


def _client(url: str):
    import redis

    return redis.Redis.from_url(url)


def _put(queue: RedisQueue, count: int, prefix: str = "m") -> list[str]:
    return [queue.put(f"{prefix}{i}", "mean", encode_array(np.full(D, float(i))), message_id=f"{prefix}{i}")
            for i in range(count)]


def _pending(url: str, stream: str = "mmf_stream:p1") -> int:
    return int(_client(url).xpending(stream, "coordinator")["pending"])


class TestRedisQueueContract(QueueContract):
    """The queue contract (tests/queue_contract.py) on a real redis-server."""

    @pytest.fixture
    def queue_url(self, redis_url) -> str:
        return redis_url

    def delete_queue(self, project, queue_url: str) -> None:
        _client(queue_url).flushdb()


def test_entries_are_stream_entries_under_the_default_key(queue, redis_url):
    first = queue.put("ketchup", "mean", encode_array(np.arange(D, dtype=float)))
    second = queue.put(b"17", "features", encode_array(np.ones((2, D))))
    messages = queue.read()
    assert [m.id for m in messages] == [first, second]
    assert all(isinstance(m.seq, str) for m in messages)
    assert parse_entry_id(messages[0].seq) < parse_entry_id(messages[1].seq)
    assert _client(redis_url).xlen("mmf_stream:p1") == 2  # the default stream key
    assert queue.url == redis_url


def test_dead_letters_are_acknowledged(queue, redis_url):
    _put(queue, 2)
    bad, good = queue.read()
    queue.dead_letter(bad, "bad")
    assert _pending(redis_url) == 1  # the bad one acknowledged; the good one waits for its commit


def test_the_stream_query_parameter_names_the_stream(redis_url):
    with RedisQueue(redis_url + "?stream=custom:key", "p1") as custom:
        custom.put("x", "mean", encode_array(np.zeros(D)))
        assert [m.label for m in custom.read()] == [b"x"]
    client = _client(redis_url)
    assert client.xlen("custom:key") == 1 and not client.exists("mmf_stream:p1")


def test_gathering_a_batch_reads_only_later_entries_and_acknowledges_nothing(queue, redis_url):
    _put(queue, 3)
    batch = queue.read(limit=2)  # the coordinator's first read, after its committed position
    _put(queue, 1, prefix="n")
    more = queue.read(after=batch[-1].seq, wait=0.1)  # more for the same batch, before its commit
    assert [m.id for m in batch + more] == ["m0", "m1", "m2", "n0"]
    assert _pending(redis_url) == 4  # nothing acknowledged before the commit
    queue.acknowledge(batch + more)
    assert _pending(redis_url) == 0 and queue.read(after=more[-1].seq) == []


def test_a_restarted_coordinator_behind_the_group_gets_every_later_entry_again(queue, redis_url):
    _put(queue, 5)
    messages = queue.read()
    queue.acknowledge(messages)  # then the project is restored from a backup taken at messages[1]
    with RedisQueue(redis_url, "p1", consumer="restored") as restored:
        assert [m.id for m in restored.read(after=messages[1].seq, limit=2)] == ["m2", "m3"]
        assert [m.id for m in restored.read(after=messages[1].seq)] == ["m2", "m3", "m4"]
        assert restored.depth(after=messages[1].seq) == 3
    with RedisQueue(redis_url, "p1", consumer="from-scratch") as fresh:
        assert [m.id for m in fresh.read()] == ["m0", "m1", "m2", "m3", "m4"]


def test_a_dead_consumers_unacknowledged_entries_come_back(redis_url):
    dead = RedisQueue(redis_url, "p1", consumer="dead-host-1")
    _put(dead, 4)
    taken = dead.read(limit=3)
    assert [m.id for m in taken] == ["m0", "m1", "m2"]
    dead.close()  # died: no acknowledgement, no commit
    with RedisQueue(redis_url, "p1", consumer="new-host-2") as fresh:
        messages = fresh.read()
        assert [m.id for m in messages] == ["m0", "m1", "m2", "m3"]  # pending first, in order
        consumers = _client(redis_url).xinfo_consumers("mmf_stream:p1", "coordinator")
        assert [c["name"] for c in consumers] == [b"new-host-2"]  # the dead one is forgotten
        fresh.acknowledge(messages)
    assert _pending(redis_url) == 0


def test_entries_already_applied_are_acknowledged_and_skipped(redis_url):
    crashed = RedisQueue(redis_url, "p1", consumer="crashed")
    _put(crashed, 3)
    applied = crashed.read()
    crashed.close()  # committed position = applied[1].seq, then died before acknowledging
    with RedisQueue(redis_url, "p1", consumer="next") as fresh:
        assert [m.id for m in fresh.read(after=applied[1].seq)] == ["m2"]
        pending = _client(redis_url).xpending_range("mmf_stream:p1", "coordinator", "-", "+", 10)
        assert [row["message_id"].decode() for row in pending] == [applied[2].seq]
        assert fresh.read(after=applied[2].seq) == [] and _pending(redis_url) == 1  # its commit acknowledges it
    with RedisQueue(redis_url, "p1", consumer="after-another-crash") as third:
        assert third.read(after=applied[2].seq) == [] and _pending(redis_url) == 0


def test_positions_compare_as_numbers_not_text(queue):
    assert parse_entry_id("9-5") < parse_entry_id("10-0") and parse_entry_id("10-2") < parse_entry_id("10-10")
    assert parse_position(None) is None and parse_position(0) is None and parse_position("") is None
    assert parse_position("0-0") is None and parse_position(b"12-3") == (12, 3)
    for bad in (42, "abc", "12", "1-x"):
        with pytest.raises(ValueError, match="stream entry id"):
            parse_position(bad)
    _put(queue, 2)
    messages = queue.read()
    ms_part, _ = parse_entry_id(messages[0].seq)
    earlier = f"{ms_part - 1}-99"  # earlier though larger as text
    assert [m.id for m in queue.read(after=earlier)] == ["m0", "m1"]


def test_depth_is_exact_with_hundreds_of_messages(queue, monkeypatch):
    assert queue.depth() == 0  # no stream, no group
    _put(queue, 150)
    assert queue.depth() == 150  # no group yet: counted
    batch = queue.read(limit=120)  # delivered, not acknowledged
    position = batch[99].seq
    count_after = queue._count_after
    with monkeypatch.context() as patched:  # the group's lag and pending list, no scan of the entries
        patched.setattr(queue, "_count_after", lambda _: pytest.fail("depth scanned the stream"))
        assert queue.depth() == 150 and queue.depth(after=position) == 50
        assert queue.depth(after=batch[-1].seq) == 30
        queue.acknowledge(batch[:100])  # committed through batch[99]
        assert queue.depth(after=position) == 50 == count_after(parse_position(position))
        _put(queue, 200, prefix="n")
        assert queue.depth(after=position) == 250
        rest = queue.read(after=position, limit=1000)
        assert len(rest) == 250
        queue.acknowledge(rest)
        assert queue.depth(after=rest[-1].seq) == 0
    assert queue.depth() == 350 and queue.depth(after=batch[9].seq) == 340  # behind the group: counted


def test_malformed_entries_become_messages_that_decode_dead_letters(queue, redis_url):
    client = _client(redis_url)
    client.xadd("mmf_stream:p1", {"label": b"x"})  # a raw producer: no kind, no payload, no id
    client.xadd("mmf_stream:p1", {"label": b"y", "kind": b"mean", "payload": encode_array(np.zeros(D)),
                                  "colour": b"red"})
    queue.put("z", "mean", encode_array(np.zeros(D)))
    missing, unknown, good = queue.read()
    assert missing.id == missing.seq and missing.kind == "" and missing.payload == b""
    with pytest.raises(BadMessage, match="unknown kind ''"):
        decode(missing, D, "str")
    with pytest.raises(BadMessage, match="unknown field"):
        decode(unknown, D, "str")
    assert decode(good, D, "str").label == "z"
    client.xdel("mmf_stream:p1", good.seq)  # deleted while pending: comes back empty, no crash
    (gone,) = queue.read(after=unknown.seq)
    assert gone.seq == good.seq and gone.kind == ""


def test_messages_survive_a_killed_server(redis_server):
    with RedisQueue(redis_server.url, "p1") as queue:
        _put(queue, 3)
    redis_server.restart()  # SIGKILL, then the same data folder: the AOF (fsync always) holds the puts
    with RedisQueue(redis_server.url, "p1") as queue:
        assert [m.id for m in queue.read()] == ["m0", "m1", "m2"]


def test_a_unix_socket_url(redis_server):
    if not redis_server.unix_socket.exists():
        pytest.skip("the data folder's path is too long for a Unix socket")
    with RedisQueue(f"unix://{redis_server.unix_socket}?db=0", "p1") as queue:
        _put(queue, 1)
        assert [m.id for m in queue.read()] == ["m0"]


def test_submit_and_the_cli_queue_on_redis(project, redis_url, tmp_path, capsys):
    first = ms.submit(project, "ketchup", mean=np.arange(D, dtype=float), queue=redis_url)
    assert ms.submit(project, "ketchup", mean=np.zeros(D), queue=redis_url, message_id=first) == first
    mean = tmp_path / "mean.npy"
    np.save(mean, np.ones(D))
    assert cli.main(["submit", str(project), "--label", "new", "--mean", str(mean), "--queue", redis_url]) == 0
    second = capsys.readouterr().out.strip()
    with open_queue(project, redis_url) as queue:
        assert isinstance(queue, RedisQueue) and queue.stream == f"mmf_stream:{project_id(project)}"
        messages = queue.read()
    assert [m.id for m in messages] == [first, second]
    decoded = [decode(m, D, "str") for m in messages]
    assert [c.label for c in decoded] == ["ketchup", "new"]
    assert np.array_equal(decoded[0].mean, np.arange(D)) and np.array_equal(decoded[1].mean, np.ones(D))


def test_an_unreachable_server_is_a_one_line_error(project, tmp_path, capsys):
    from redis_server import free_port, redis_server_binary

    redis_server_binary()  # redis-py installed (or skip / fail)
    url = f"redis://127.0.0.1:{free_port()}/0"
    with pytest.raises(ConnectionError, match=f"cannot reach Redis at {url}: "):
        ms.submit(project, "x", mean=np.zeros(D), queue=url)
    with RedisQueue(url, "p1") as queue:
        assert queue.check().startswith(f"cannot reach Redis at {url}")
        with pytest.raises(ConnectionError, match="cannot reach Redis"):
            queue.read()
    mean = tmp_path / "mean.npy"
    np.save(mean, np.zeros(D))
    assert cli.main(["submit", str(project), "--label", "x", "--mean", str(mean), "--queue", url]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"cannot reach Redis at {url}" in err and "Traceback" not in err
    assert cli.main(["submit", str(project), "--label", "x", "--mean", str(mean), "--queue", "kafka://h"]) == 2
    assert "unknown queue 'kafka://h'" in capsys.readouterr().err


def test_passwords_stay_out_of_errors_and_bad_urls_are_one_line():
    pytest.importorskip("redis")
    url = "redis://user:s3cret@127.0.0.1:1/0"
    with RedisQueue(url, "p1") as queue:
        with pytest.raises(ConnectionError) as raised:
            queue.read()
    assert "s3cret" not in str(raised.value) and "user:***@127.0.0.1:1" in str(raised.value)
    with pytest.raises(ValueError, match="empty stream= key"):
        RedisQueue("redis://127.0.0.1:1/0?stream=", "p1")


def test_without_redis_py_the_error_says_how_to_install_it(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "redis", None)
    with pytest.raises(ValueError, match="pip install redis"):
        RedisQueue("redis://127.0.0.1:1/0", "p1")


def test_status_on_redis_writes_nothing_in_the_project_or_on_the_server(project, redis_url):
    from mmf_stream.service.status import project_status

    from service_helpers import file_tree as tree

    before = tree(project)
    assert project_status(project, queue=redis_url)["queue_depth"] == 0
    assert tree(project) == before  # no service/project.json
    ms.submit(project, "x", mean=np.zeros(D), queue=redis_url)
    _client(redis_url).delete(f"mmf_stream:{project_id(project)}:identity")  # as a queue made before identities
    keys = sorted(_client(redis_url).keys())
    before = tree(project)
    assert project_status(project, queue=redis_url)["queue_depth"] == 1
    with open_queue(project, redis_url, readonly=True) as reader:
        assert reader.identity() is None and reader.depth() == 1
        with pytest.raises(ValueError, match="opened read-only"):
            reader.read()
    assert sorted(_client(redis_url).keys()) == keys and tree(project) == before
