"""The one interface every queue offers: :class:`QueueBackend`.

The coordinator (the consumer), the producers (``submit``) and ``status``
use a queue only through these members, so a backend is any object that has
them with these meanings. Two implement it:
:class:`~mmf_stream.service.queues.embedded.EmbeddedQueue` (SQLite in the project) and
:class:`~mmf_stream.service.queues.redis_streams.RedisQueue` (Redis Streams);
:func:`~mmf_stream.service.queues.backends.open_queue` picks one from a ``--queue``
value. ``tests/queue_contract.py`` is the behaviour both must show.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from mmf_stream.service.queues.embedded import Message

#: the logger the service and its queues report to (one line per event: ready, batch, refresh, dead letter,
#: lost connection, stop)
LOGGER_NAME = "mmf_stream.service"


@runtime_checkable
class QueueBackend(Protocol):
    """A project's durable queue of new classes (producers put, one coordinator reads).

    Positions are opaque to callers: ``Message.seq`` of the last message
    applied (an int for the embedded queue, a stream entry id for Redis), or
    ``None``/``0`` before the first. Readers keep their own position (the
    coordinator commits it with the factorization); reading does not consume.
    """

    #: how the queue is named in logs, status and the commit log; never contains a secret
    url: str

    def put(self, label: bytes | str, kind: str, payload: bytes, *, message_id: str | None = None,
            extra: dict | None = None) -> str:
        """Append a message, durable when this returns; returns its id.

        A ``message_id`` already queued is not queued again (the earlier
        message stands), so a producer may retry a put whose answer it lost.
        """
        ...

    def read(self, after: Any = None, limit: int = 1000, wait: float = 0.0) -> list[Message]:
        """Up to ``limit`` messages after position ``after``, in arrival order, waiting up to
        ``wait`` seconds for the first one. Messages not yet acknowledged come again."""
        ...

    def acknowledge(self, messages: list[Message]) -> None:
        """The batch holding ``messages`` is committed (called only after the commit)."""
        ...

    def depth(self, after: Any = None) -> int:
        """Messages after position ``after`` (waiting for a consumer there)."""
        ...

    def dead_letter(self, message: Message, reason: str) -> None:
        """Record that ``message`` cannot be applied, and why (once per message)."""
        ...

    def dead_letters(self) -> list[tuple[Any, str, str]]:
        """``(seq, id, reason)`` of every dead letter, in the order they were recorded."""
        ...

    def identity(self) -> str | None:
        """The queue's identity: a string created with the queue, the same for every process
        that opens it and different once it is deleted and created again (a position is
        only meaningful in the queue it came from). None when a reader opens a queue that
        has none yet (readers never create one)."""
        ...

    def check(self) -> str:
        """``"ok"`` when the queue is intact and reachable, else why not (one line)."""
        ...

    def persistence_warning(self) -> str | None:
        """One line when the queue's storage keeps nothing across a restart, else None."""
        ...

    def close(self) -> None:
        """Release the connection (the queue stays)."""
        ...

    def __enter__(self) -> QueueBackend:
        ...

    def __exit__(self, *exc: object) -> None:
        ...
