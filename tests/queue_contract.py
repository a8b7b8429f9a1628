"""The behaviour every queue backend shows (like ``zarr.testing.store.StoreTests``).

:class:`QueueContract` holds the tests; a backend's test module subclasses it
once (``class TestEmbeddedQueueContract(QueueContract)``) and gives the
``queue_url`` fixture (the ``--queue`` value naming a fresh queue) and
:meth:`QueueContract.delete_queue`. Every queue is opened with
:func:`~mmf_stream.service.queues.backends.open_queue`, as the service opens it.
"""

from __future__ import annotations

import inspect
import multiprocessing
import threading
import time

import numpy as np
import pytest

import mmf_stream as ms
from mmf_stream.service.queues.backends import open_queue
from mmf_stream.service.messages import BadMessage, decode
from mmf_stream.service.queues.embedded import encode_array
from mmf_stream.service.queues.protocol import QueueBackend

from service_helpers import small_project

#: the feature dimension of the contract's projects
D = 6


def put_numbered(queue, count: int, prefix: str = "m") -> list[str]:
    """Put ``count`` messages ``<prefix>0``.. (their ids are their labels)."""
    return [queue.put(f"{prefix}{i}", "mean", encode_array(np.full(D, float(i))), message_id=f"{prefix}{i}")
            for i in range(count)]


def _produce(project: str, url: str, producer: int, count: int) -> list[str]:
    import mmf_stream as ms

    return [ms.submit(project, f"p{producer}-{i}", mean=np.full(D, producer + i / 100.0), queue=url)
            for i in range(count)]


class QueueContract:
    """The tests; subclasses provide the ``queue_url`` fixture and :meth:`delete_queue`."""

    @pytest.fixture
    def queue_url(self) -> str:
        raise NotImplementedError("a backend's subclass gives the queue_url fixture")

    def delete_queue(self, project, queue_url: str) -> None:
        """Delete the queue and everything in it (as an operator might)."""
        raise NotImplementedError

    @pytest.fixture
    def project(self, tmp_path):
        return small_project(tmp_path / "project.zarr", D)

    @pytest.fixture
    def backend_queue(self, project, queue_url):
        with open_queue(project, queue_url) as queue:
            yield queue

    # -- the interface -----------------------------------------------------------------------------

    def test_it_is_a_queue_backend_with_the_protocols_signatures(self, backend_queue):
        assert isinstance(backend_queue, QueueBackend)
        members = [name for name, value in vars(QueueBackend).items()
                   if callable(value) and not name.startswith("_") or name in ("__enter__", "__exit__")]
        assert {"put", "read", "acknowledge", "depth", "dead_letter", "dead_letters", "check", "close"} <= set(members)
        for name in members:
            wanted = inspect.signature(getattr(QueueBackend, name))
            given = inspect.signature(getattr(type(backend_queue), name))
            assert [(p.name, p.kind) for p in given.parameters.values()] == \
                   [(p.name, p.kind) for p in wanted.parameters.values()], name
        assert isinstance(backend_queue.url, str)

    # -- producers and the consumer ----------------------------------------------------------------

    def test_put_then_read_in_order_with_every_field(self, backend_queue):
        first = backend_queue.put("ketchup", "mean", encode_array(np.arange(D, dtype=float)), extra={"count": 3})
        second = backend_queue.put(b"17", "features", encode_array(np.ones((2, D))))
        messages = backend_queue.read()
        assert [m.id for m in messages] == [first, second]
        assert messages[0].label == b"ketchup" and messages[0].kind == "mean" and messages[0].extra == '{"count": 3}'
        assert np.array_equal(messages[0].array(), np.arange(D))
        assert messages[1].label == b"17" and messages[1].kind == "features"
        assert np.array_equal(messages[1].array(), np.ones((2, D)))
        assert abs(messages[0].submitted - time.time()) < 60
        assert backend_queue.depth() == 2 and backend_queue.depth(after=messages[0].seq) == 1
        assert backend_queue.check() == "ok"

    def test_a_message_id_put_twice_is_stored_once(self, backend_queue):
        backend_queue.put("x", "mean", encode_array(np.zeros(D)), message_id="m-1")
        backend_queue.put("x", "mean", encode_array(np.ones(D)), message_id="m-1")  # a retry after a lost answer
        messages = backend_queue.read()
        assert len(messages) == 1 and np.array_equal(messages[0].array(), np.zeros(D))
        assert backend_queue.depth() == 1

    def test_read_after_a_position_skips_what_was_applied(self, backend_queue):
        put_numbered(backend_queue, 5)
        messages = backend_queue.read()
        backend_queue.acknowledge(messages[:2])
        assert [m.id for m in backend_queue.read(after=messages[1].seq)] == ["m2", "m3", "m4"]
        assert backend_queue.depth(after=messages[1].seq) == 3
        assert backend_queue.read(after=messages[4].seq) == [] and backend_queue.depth(after=messages[4].seq) == 0

    def test_reading_again_before_the_acknowledgement_returns_the_same_messages_then_new_ones(self, backend_queue):
        put_numbered(backend_queue, 3)
        first = backend_queue.read()
        put_numbered(backend_queue, 2, prefix="n")
        again = backend_queue.read()
        assert [m.id for m in again] == ["m0", "m1", "m2", "n0", "n1"] and again[:3] == first
        backend_queue.acknowledge(again)
        assert backend_queue.read(after=again[-1].seq) == []

    def test_read_waits_for_a_message(self, backend_queue, project, queue_url):
        start = time.monotonic()
        assert backend_queue.read(wait=0.3) == []
        assert 0.25 <= time.monotonic() - start < 3

        def put_later() -> None:
            with open_queue(project, queue_url) as producer:
                put_numbered(producer, 1)

        timer = threading.Timer(0.2, put_later)
        timer.start()
        try:
            start = time.monotonic()
            messages = backend_queue.read(wait=5)
        finally:
            timer.join()
        assert [m.id for m in messages] == ["m0"] and time.monotonic() - start < 4

    def test_dead_letters_are_recorded_once_with_the_reason(self, backend_queue):
        backend_queue.put("x", "median", encode_array(np.zeros(D)))
        backend_queue.put("good", "features", encode_array(np.ones((4, D))))
        bad, good = backend_queue.read()
        with pytest.raises(BadMessage) as raised:
            decode(bad, D, "str")
        backend_queue.dead_letter(bad, str(raised.value))
        backend_queue.dead_letter(bad, "again")  # recorded once
        assert backend_queue.dead_letters() == [
            (bad.seq, bad.id, "unknown kind 'median' (known: mean, features, remove)")]
        decoded = decode(good, D, "str")
        assert decoded.label == "good" and decoded.count == 4 and decoded.seq == good.seq

    def test_concurrent_producers_lose_nothing_and_keep_their_order(self, project, queue_url):
        with multiprocessing.get_context("spawn").Pool(4) as pool:
            ids = pool.starmap(_produce, [(str(project), queue_url, producer, 25) for producer in range(4)])
        with open_queue(project, queue_url) as queue:
            messages = queue.read(limit=10_000)
            assert queue.depth() == 100 and queue.check() == "ok"
        assert sorted(m.id for m in messages) == sorted(i for batch in ids for i in batch)
        for producer in range(4):  # each producer's messages arrive in the order it sent them
            labels = [m.label.decode() for m in messages if m.label.startswith(f"p{producer}-".encode())]
            assert labels == [f"p{producer}-{i}" for i in range(25)]

    def test_submit_queues_on_it(self, project, queue_url):
        first = ms.submit(project, "ketchup", mean=np.arange(D, dtype=float), queue=queue_url)
        assert ms.submit(project, "ketchup", mean=np.zeros(D), queue=queue_url, message_id=first) == first
        with open_queue(project, queue_url) as queue:
            (message,) = queue.read()
        assert message.id == first and np.array_equal(decode(message, D, "str").mean, np.arange(D))

    # -- identity ----------------------------------------------------------------------------------

    def test_the_identity_is_stable_across_opens_and_new_after_the_queue_is_recreated(self, project, queue_url):
        with open_queue(project, queue_url) as queue:
            put_numbered(queue, 2)
            first = queue.identity()
            assert isinstance(first, str) and first
            assert queue.identity() == first
        with open_queue(project, queue_url) as again:
            assert again.identity() == first
        self.delete_queue(project, queue_url)  # the reproduction: the queue deleted, then submitted to again
        ms.submit(project, "after", mean=np.zeros(D), queue=queue_url)
        with open_queue(project, queue_url) as recreated:
            assert [m.label for m in recreated.read()] == [b"after"]  # sequence numbers start again...
            assert recreated.identity() not in (None, first)  # ...in a queue that says it is another one

    def test_producers_racing_to_create_the_queue_agree_on_its_identity(self, project, queue_url):
        for _ in range(2):
            self.delete_queue(project, queue_url)
            start = time.time() + 2.0  # every worker is up by then: they open at once
            with multiprocessing.get_context("spawn").Pool(4) as pool:
                seen = pool.starmap(_identity_at, [(str(project), queue_url, start)] * 4)
            with open_queue(project, queue_url) as queue:
                assert set(seen) == {queue.identity()} and None not in seen
                assert queue.depth() == 4


def _identity_at(project: str, url: str, start: float) -> str | None:
    """At ``start`` (Unix time), open the queue as a producer, put one message, and say its identity."""
    import os

    time.sleep(max(0.0, start - time.time()))
    with open_queue(project, url) as queue:
        queue.put("x", "mean", encode_array(np.zeros(D)), message_id=f"racer-{os.getpid()}")
        return queue.identity()
