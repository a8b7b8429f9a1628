"""The Redis Streams queue: new classes waiting for the coordinator, on a Redis server (issue 11).

A project's messages are the entries of one stream, by default
``mmf_stream:<project id>`` (``?stream=KEY`` in the URL names another). Any
number of producers may put at once; a put returns once the server has the
entry (durable on its disk when the server runs with ``appendonly yes`` and
``appendfsync always``). The fields of an entry are those of an embedded
message (:class:`~mmf_stream.service.queues.embedded.Message`): ``id``, ``label``
(bytes), ``kind``, ``payload`` (``.npy`` bytes), ``extra`` (JSON) and
``submitted`` (Unix time).

Keys, for a stream key ``K``:

* ``K``: the messages; the consumer group ``coordinator`` reads it;
* ``K:ids:<message id>``: the message ids already queued (a put of a queued id
  adds nothing: the check and the append are one server-side script);
* ``K:dead``: the dead letters (fields ``seq``, ``id``, ``reason``, ``at``), and
  ``K:dead:seen:<entry id>``, the entries already dead-lettered;
* ``K:identity``: the queue's identity (a UUID), set if absent by the first
  put (in the same script) or the first writer that asks for it; a server that
  lost its data (or a deleted stream and identity) gets a new one.

The coordinator's committed position is the id of the last entry it applied
(``"<ms>-<seq>"``, compared numerically). :meth:`RedisQueue.read` first takes
over every entry delivered to the group but never acknowledged (a consumer
that died; only one coordinator per project runs) and acknowledges those at or
before the position (applied already: the coordinator stopped between its
commit and the acknowledgement); every read delivers its own pending entries
after the position before new ones. A first read from a position behind what
the group acknowledged (the project restored from a backup) rewinds the
group, so every entry after it comes again.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
import uuid
from typing import Any, Callable
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from mmf_stream.service.queues.embedded import Message
from mmf_stream.service.queues.protocol import LOGGER_NAME

#: the consumer group of the coordinators
DEFAULT_GROUP = "coordinator"
#: the stream key's prefix (the project id follows)
STREAM_PREFIX = "mmf_stream:"
#: seconds to wait for a TCP connection to the server
CONNECT_TIMEOUT = 5.0
#: entries fetched per round trip while scanning (claiming, counting)
SCAN_COUNT = 500

#: seconds a lost connection is retried before an operation fails ("cannot reach Redis")
RECONNECT_SECONDS = 60.0
#: the environment variable that overrides :data:`RECONNECT_SECONDS` (seconds; 0: never retry)
RECONNECT_ENV = "MMF_STREAM_REDIS_RECONNECT_SECONDS"
#: the first wait before retrying a lost connection; each next wait doubles, up to the maximum
RECONNECT_FIRST_DELAY = 0.1
#: the longest wait between two retries of a lost connection
RECONNECT_MAX_DELAY = 5.0
#: the environment variables holding the password (used when the URL has none), in order
PASSWORD_ENV = "REDIS_PASSWORD"
PASSWORD_FILE_ENV = "REDIS_PASSWORD_FILE"

#: the identity key's suffix (after the stream key)
IDENTITY_SUFFIX = ":identity"
#: the fields a producer writes
FIELDS = ("id", "label", "kind", "payload", "extra", "submitted")

# KEYS: stream, id guard, identity. ARGV: id, label, kind, payload, extra, submitted, new identity.
# The guard and the entry are written together or not at all; the queue has an identity once it has an entry.
_PUT = """
redis.call('SET', KEYS[3], ARGV[7], 'NX')
if redis.call('SET', KEYS[2], '1', 'NX') then
    return redis.call('XADD', KEYS[1], '*', 'id', ARGV[1], 'label', ARGV[2], 'kind', ARGV[3],
                      'payload', ARGV[4], 'extra', ARGV[5], 'submitted', ARGV[6])
end
return false
"""

# KEYS: stream, dead stream, guard. ARGV: group, seq, id, reason, at.
_DEAD_LETTER = """
if redis.call('SET', KEYS[3], '1', 'NX') then
    redis.call('XADD', KEYS[2], '*', 'seq', ARGV[2], 'id', ARGV[3], 'reason', ARGV[4], 'at', ARGV[5])
end
redis.pcall('XACK', KEYS[1], ARGV[1], ARGV[2])
return 1
"""

EntryId = tuple[int, int]


def parse_entry_id(value: Any) -> EntryId:
    """The ``(milliseconds, sequence)`` of a stream entry id such as ``"1732671234567-5"``.

    Raises
    ------
    ValueError
        ``value`` is not a complete entry id.
    """
    text = value.decode("ascii", "replace") if isinstance(value, bytes) else str(value)
    ms, sep, seq = text.partition("-")
    if sep and ms.isdigit() and seq.isdigit():
        return int(ms), int(seq)
    raise ValueError(f"{value!r} is not a Redis stream entry id ('<milliseconds>-<sequence>')")


def parse_position(after: Any) -> EntryId | None:
    """The committed position ``after`` as an entry id, or None when nothing was applied.

    ``None``, ``0``, ``""`` and ``"0-0"`` mean nothing applied; otherwise an
    entry id string (or bytes).
    """
    if after is None or (isinstance(after, (int, str, bytes)) and not isinstance(after, bool)
                         and after in (0, "", b"", "0", b"0")):
        return None
    if isinstance(after, int) and not isinstance(after, bool):
        raise ValueError(f"position {after!r} is an embedded queue's sequence number, not a Redis stream entry id")
    position = parse_entry_id(after)
    return None if position == (0, 0) else position


def format_entry_id(entry: EntryId) -> str:
    """``"<ms>-<seq>"`` of an entry id."""
    return f"{entry[0]}-{entry[1]}"


def redact(url: str) -> str:
    """``url`` with its password (if any) replaced by ``***``, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def public_url(url: str) -> str:
    """``url`` without its password (the user name stays): what may be printed and stored."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    user = f"{parts.username}@" if parts.username else ""
    return urlunsplit(parts._replace(netloc=f"{user}{host}"))


def password_from_environment() -> str | None:
    """The password in ``REDIS_PASSWORD``, else in the file ``REDIS_PASSWORD_FILE`` names, else None.

    Raises
    ------
    ValueError
        ``REDIS_PASSWORD_FILE`` names a file that cannot be read, or an empty one.
    """
    password = os.environ.get(PASSWORD_ENV)
    if password:
        return password
    name = os.environ.get(PASSWORD_FILE_ENV)
    if not name:
        return None
    try:
        password = Path(name).read_text(encoding="utf-8").rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as error:
        reason = getattr(error, "strerror", None) or error
        raise ValueError(f"{PASSWORD_FILE_ENV}={name}: cannot read the password ({reason})") from None
    if not password:
        raise ValueError(f"{PASSWORD_FILE_ENV}={name}: the file is empty")
    return password


def reconnect_seconds_from_environment() -> float:
    """:data:`RECONNECT_SECONDS`, or the seconds in :data:`RECONNECT_ENV` (a one-line ValueError if bad)."""
    text = os.environ.get(RECONNECT_ENV, "").strip()
    if not text:
        return RECONNECT_SECONDS
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not seconds >= 0 or seconds == float("inf"):
        raise ValueError(f"{RECONNECT_ENV}={text!r}: give seconds, a finite number >= 0")
    return seconds


def split_url(url: str) -> tuple[str, str | None]:
    """The URL for redis-py (``stream`` query parameter removed) and that stream key (None if absent).

    Raises
    ------
    ValueError
        An empty or repeated ``stream`` parameter.
    """
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    streams = [value for name, value in query if name == "stream"]
    if len(streams) > 1:
        raise ValueError(f"queue URL {redact(url)} names the stream more than once")
    if streams and not streams[0]:
        raise ValueError(f"queue URL {redact(url)} has an empty stream= key")
    if not streams:
        return url, None
    rest = urlencode([(name, value) for name, value in query if name != "stream"])
    base = url.partition("?")[0]  # not urlunsplit: it turns unix:///path into unix:/path
    return (f"{base}?{rest}" if rest else base), streams[0]


def _redis_module():
    """redis-py, or a one-line ValueError saying how to install it."""
    try:
        import redis
    except ImportError:
        raise ValueError("the Redis queue needs the redis package: pip install redis "
                         "(or pip install 'mmf_stream[redis]')") from None
    return redis


def _text(value: Any, default: str = "") -> str:
    if value is None:
        return default
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _number(value: Any) -> float:
    try:
        return float(_text(value, "0"))
    except ValueError:
        return 0.0


def _extra(fields: dict[bytes, bytes]) -> str:
    """The message's ``extra`` JSON, with any other (unknown) top-level fields folded in as text,
    so that :func:`~mmf_stream.service.messages.decode` names them (and dead-letters the message)."""
    extra = _text(fields.get(b"extra"), "{}")
    others = {_text(name): _text(value) for name, value in fields.items() if _text(name) not in FIELDS}
    if not others:
        return extra
    try:
        parsed = json.loads(extra or "{}")
    except ValueError:
        return extra  # garbage stays garbage: decode rejects it
    if not isinstance(parsed, dict):
        return extra
    return json.dumps({**others, **parsed})


def to_message(entry_id: Any, fields: dict[bytes, bytes] | None) -> Message:
    """The :class:`~mmf_stream.service.queues.embedded.Message` of a stream entry; never raises.

    Missing fields become empty (the coordinator dead-letters such a message
    with the reason); a missing message id becomes the entry id.
    """
    fields = fields or {}
    seq = _text(entry_id)
    return Message(
        seq=seq,
        id=_text(fields.get(b"id")) or seq,
        label=bytes(fields.get(b"label", b"")),
        kind=_text(fields.get(b"kind")),
        payload=bytes(fields.get(b"payload", b"")),
        extra=_extra(fields),
        submitted=_number(fields.get(b"submitted")),
    )


def default_consumer() -> str:
    """This process's consumer name: ``<hostname>-<pid>``."""
    return f"{socket.gethostname()}-{os.getpid()}"


class RedisQueue:
    """A project's queue on a Redis server (see the module docstring); the consumer interface of
    :class:`~mmf_stream.service.queues.embedded.EmbeddedQueue`. Use as a context manager or ``close()``.

    Parameters
    ----------
    url : str
        ``redis://[[USER]:PASSWORD@]HOST:PORT/DB``, ``rediss://...`` (TLS) or
        ``unix:///PATH/redis.sock?db=DB``; an optional query parameter
        ``stream=KEY`` names the stream (default ``mmf_stream:<project_id>``).
    project_id : str or None
        The project's stable id (:func:`~mmf_stream.service.queues.backends.project_id`);
        None only for a reader of a project that has none yet (nothing was
        queued on the default stream: it reads as empty).
    group : str, optional
        The consumer group (default ``"coordinator"``).
    consumer : str, optional
        This consumer's name in the group (default ``<hostname>-<pid>``).
    readonly : bool
        A reader (``status``): writes nothing to the server (no identity is
        created), and does not retry a lost connection; ``put``, ``read``,
        ``acknowledge`` and ``dead_letter`` raise ValueError.
    reconnect_seconds : float, optional
        How long a lost connection is retried (default: :data:`RECONNECT_ENV`,
        else :data:`RECONNECT_SECONDS`; 0: not at all).
    log : callable, optional
        Called with the line saying the connection was lost, and the one saying
        it is back (default: warnings of the ``mmf_stream.service`` logger).

    Raises
    ------
    ValueError
        redis-py is not installed, or the URL is not a Redis URL.
    """

    def __init__(self, url: str, project_id: str | None, *, group: str = DEFAULT_GROUP,
                 consumer: str | None = None, readonly: bool = False, reconnect_seconds: float | None = None,
                 log: Callable[[str], None] | None = None) -> None:
        #: the URL without its password: what the coordinator records and status prints
        self.url = public_url(url)
        self._shown = redact(url)  # for messages: "***" where the password is
        self.readonly = bool(readonly)
        if self.readonly:
            self.reconnect_seconds = 0.0
        elif reconnect_seconds is None:
            self.reconnect_seconds = reconnect_seconds_from_environment()
        else:
            self.reconnect_seconds = max(0.0, float(reconnect_seconds))
        self._log = log or logging.getLogger(LOGGER_NAME).warning
        self._reached = False  # whether a call has succeeded: only a connection once made is retried
        redis = _redis_module()
        self._errors = redis.exceptions
        client_url, stream = split_url(url)
        if not stream and not project_id and not self.readonly:
            raise ValueError(f"queue URL {self._shown}: a writer needs the project id or a stream= key")
        # no stream for a reader of a project without an id: nothing was ever queued for it
        self.stream = stream or (f"{STREAM_PREFIX}{project_id}" if project_id else "")
        self.dead_stream = f"{self.stream}:dead"
        self.identity_key = f"{self.stream}{IDENTITY_SUFFIX}"
        self.group = group
        self.consumer = consumer or default_consumer()
        options: dict[str, Any] = {"socket_connect_timeout": CONNECT_TIMEOUT}
        if urlsplit(client_url).password is None:
            password = password_from_environment()
            if password is not None:
                options["password"] = password
        try:
            self._client = redis.Redis.from_url(client_url, **options)
        except ValueError as error:
            raise ValueError(f"bad Redis URL {self._shown}: {error}") from None
        self._put = self._client.register_script(_PUT)
        self._dead = self._client.register_script(_DEAD_LETTER)
        self._claimed = False  # whether the first read took over the group's pending entries

    # -- errors ------------------------------------------------------------------------------------

    def _check_writable(self) -> None:
        if self.readonly:
            raise ValueError(f"the queue {self._shown} was opened read-only")

    def _call(self, function, *args: Any, **kwargs: Any) -> Any:
        """``function(*args, **kwargs)``, with redis-py's errors turned into one-line errors naming the URL,
        and a lost connection retried (exponential backoff) for :attr:`reconnect_seconds`."""
        lost_at: float | None = None
        delay = RECONNECT_FIRST_DELAY
        while True:
            try:
                result = function(*args, **kwargs)
            except (self._errors.ConnectionError, self._errors.TimeoutError) as error:
                now = time.monotonic()
                if not self._reached or self.reconnect_seconds <= 0:
                    raise ConnectionError(f"cannot reach Redis at {self._shown}: {error}") from None
                if lost_at is None:
                    lost_at = now
                    self._log(f"lost the connection to Redis at {self._shown} ({error}); retrying for up to "
                              f"{self.reconnect_seconds:g} s")
                left = lost_at + self.reconnect_seconds - now
                if left <= 0:
                    raise ConnectionError(f"cannot reach Redis at {self._shown}: {error} (retried for "
                                          f"{self.reconnect_seconds:g} s)") from None
                time.sleep(min(delay, left))
                delay = min(2 * delay, RECONNECT_MAX_DELAY)
                continue
            except self._errors.RedisError as error:
                raise ValueError(f"Redis at {self._shown}: {error}") from None
            if lost_at is not None:
                self._log(f"reconnected to Redis at {self._shown} after {time.monotonic() - lost_at:.1f} s")
            self._reached = True
            return result

    # -- producers ---------------------------------------------------------------------------------

    def put(self, label: bytes | str, kind: str, payload: bytes, *, message_id: str | None = None,
            extra: dict | None = None) -> str:
        """Append a message; returns its id. An id already queued is not queued again.

        Parameters
        ----------
        label : bytes or str
            The class's label (a str is stored as UTF-8).
        kind : str
            ``"mean"`` or ``"features"`` (not checked here: the consumer checks).
        payload : bytes
            The array as ``.npy`` bytes (:func:`~mmf_stream.service.queues.embedded.encode_array`).
        message_id : str, optional
            The message's id (default: a fresh UUID).
        extra : dict, optional
            Other fields, stored as JSON.

        Returns
        -------
        str
            The message id.
        """
        self._check_writable()
        message_id = message_id or uuid.uuid4().hex
        if isinstance(label, str):
            label = label.encode("utf-8")
        keys = [self.stream, f"{self.stream}:ids:{message_id}", self.identity_key]
        values = [message_id, label, kind, payload, json.dumps(extra or {}), repr(time.time()), uuid.uuid4().hex]
        self._call(self._put, keys=keys, args=values)
        return message_id

    # -- the consumer ------------------------------------------------------------------------------

    def _ensure_group(self) -> None:
        """Create the consumer group (reading from the stream's start) unless it exists."""
        try:
            self._client.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except self._errors.ResponseError as error:
            if "BUSYGROUP" not in str(error):
                raise

    def _claim_pending(self) -> None:
        """Take over every entry delivered to the group and not acknowledged (any consumer's)."""
        start = "0-0"
        while True:
            cursor, _, *_ = self._client.xautoclaim(self.stream, self.group, self.consumer, 0, start,
                                                    count=SCAN_COUNT)
            start = _text(cursor)
            if start == "0-0":
                break
        self._forget_idle_consumers()

    def _forget_idle_consumers(self) -> None:
        """Remove the group's other consumers that hold no entries (dead coordinators)."""
        for consumer in self._client.xinfo_consumers(self.stream, self.group):
            name = _text(consumer.get("name"))
            if name != self.consumer and int(consumer.get("pending", 0)) == 0:
                self._client.xgroup_delconsumer(self.stream, self.group, name)

    def _behind(self, position: EntryId | None, info: dict | None) -> bool:
        """Whether the first entry after ``position`` was delivered and acknowledged (the
        coordinator's position went back, e.g. its project was restored from a backup);
        ``info``: the group's XINFO GROUPS entry."""
        start = "-" if position is None else f"({format_entry_id(position)}"
        first = self._client.xrange(self.stream, start, "+", count=1)
        if not first or info is None:
            return False
        entry = _text(first[0][0])
        if parse_entry_id(entry) > parse_entry_id(info.get("last-delivered-id") or "0-0"):
            return False  # not delivered yet
        return not self._client.xpending_range(self.stream, self.group, entry, entry, 1)

    def _rewind(self, position: EntryId | None) -> None:
        """Deliver every entry after ``position`` again: drop the pending ones after it (they come
        again, in order) and move the group's last delivered id back to ``position``."""
        start = "-" if position is None else f"({format_entry_id(position)}"
        while True:
            rows = self._client.xpending_range(self.stream, self.group, start, "+", SCAN_COUNT)
            if not rows:
                break
            self._client.xack(self.stream, self.group, *[row["message_id"] for row in rows])
        self._client.xgroup_setid(self.stream, self.group, format_entry_id(position or (0, 0)))

    def _acknowledge_applied(self, position: EntryId | None) -> None:
        """Acknowledge the pending entries at or before ``position`` (the coordinator committed them
        and stopped before acknowledging)."""
        if position is None:
            return
        while True:
            rows = self._client.xpending_range(self.stream, self.group, "-", format_entry_id(position), SCAN_COUNT)
            if not rows:
                break
            self._client.xack(self.stream, self.group, *[row["message_id"] for row in rows])

    def _prepare(self, position: EntryId | None) -> None:
        """Group created and, on the first read (``position``: the committed position), the dead
        consumers' pending entries taken over, those already applied acknowledged, and the group
        rewound to ``position`` if it is ahead of it."""
        if not self._claimed:
            self._ensure_group()
            self._claim_pending()
            self._acknowledge_applied(position)
            if self._behind(position, self._group_info()):
                self._rewind(position)
            self._claimed = True

    def _group_read(self, start: str, count: int, block_ms: int | None) -> list[tuple[bytes, dict]]:
        """XREADGROUP from ``start`` (``"0"``-like: own pending entries; ``">"``: new ones)."""
        try:
            reply = self._client.xreadgroup(self.group, self.consumer, {self.stream: start}, count=count,
                                            block=block_ms)
        except self._errors.ResponseError as error:
            if "NOGROUP" not in str(error):
                raise
            self._ensure_group()  # the stream or group was deleted under us
            reply = self._client.xreadgroup(self.group, self.consumer, {self.stream: start}, count=count)
        return list(reply[0][1]) if reply else []

    def _keep_after(self, entries: list[tuple[bytes, dict]], position: EntryId | None) -> list[Message]:
        """The entries after ``position`` as messages; those at or before it (new to the group yet
        applied: the group was recreated or moved) are acknowledged."""
        applied = [entry_id for entry_id, _ in entries
                   if position is not None and parse_entry_id(entry_id) <= position]
        if applied:
            self._client.xack(self.stream, self.group, *applied)
        return [to_message(entry_id, fields) for entry_id, fields in entries
                if position is None or parse_entry_id(entry_id) > position]

    def _read_pending(self, position: EntryId | None, limit: int) -> list[Message]:
        """Own delivered-but-unacknowledged entries after ``position``, oldest first (those at or
        before it stay pending: their batch may not be committed yet)."""
        messages: list[Message] = []
        start = format_entry_id(position or (0, 0))
        while len(messages) < limit:
            entries = self._group_read(start, limit - len(messages), None)
            if not entries:
                break
            messages.extend(self._keep_after(entries, position))
            start = _text(entries[-1][0])
        return messages

    def _read_new(self, position: EntryId | None, limit: int, deadline: float,
                  messages: list[Message]) -> list[Message]:
        """Append never-delivered entries to ``messages`` (up to ``limit`` in all), blocking until
        ``deadline`` only while ``messages`` is empty."""
        while len(messages) < limit:
            block_ms = None
            if not messages:
                remaining = deadline - time.monotonic()
                block_ms = int(remaining * 1000) if remaining >= 0.001 else None
            entries = self._group_read(">", limit - len(messages), block_ms)
            if not entries:
                break
            messages.extend(self._keep_after(entries, position))
        return messages

    def read(self, after: Any = None, limit: int = 1000, wait: float = 0.0) -> list[Message]:
        """Up to ``limit`` messages after the committed position ``after``, in stream order, waiting
        up to ``wait`` seconds for the first one.

        Parameters
        ----------
        after : str, optional
            The id of the last entry applied (``Message.seq``); None, 0 or ``""``
            when nothing was applied.
        limit : int
            At most this many messages.
        wait : float
            Seconds to block for a new entry when none is waiting.

        Returns
        -------
        list of Message
            With ``seq`` the entry id. Reading again before :meth:`acknowledge`
            returns the same messages first (they stay pending).

        Notes
        -----
        The first read of a ``RedisQueue`` takes ``after`` as the committed
        position: it takes over the entries pending with any consumer,
        acknowledges those at or before ``after`` (applied already), and, if
        the group acknowledged entries after ``after`` (a project restored from
        a backup), rewinds the group so that every entry after ``after`` comes
        again. Later reads only skip the entries at or before ``after`` (it may
        be the last message of a batch still being gathered; :meth:`acknowledge`
        follows its commit) and expect it to move only forward.
        """
        self._check_writable()  # a group read moves the group
        position = parse_position(after)
        if limit < 1:
            return []
        deadline = time.monotonic() + max(0.0, float(wait))

        def work() -> list[Message]:
            self._prepare(position)
            return self._read_new(position, limit, deadline, self._read_pending(position, limit))

        return self._call(work)

    def acknowledge(self, messages: list[Message]) -> None:
        """Acknowledge ``messages`` (after their batch is committed): they leave the pending list."""
        self._check_writable()
        ids = [m.seq for m in messages if isinstance(m.seq, (str, bytes))]
        for start in range(0, len(ids), SCAN_COUNT):
            self._call(self._client.xack, self.stream, self.group, *ids[start:start + SCAN_COUNT])

    # -- depth -------------------------------------------------------------------------------------

    def _group_info(self) -> dict | None:
        for info in self._client.xinfo_groups(self.stream) if self._client.exists(self.stream) else []:
            if _text(info.get("name")) == self.group:
                return info
        return None

    def _pending_after(self, position: EntryId | None) -> int:
        """Entries pending in the group (any consumer) after ``position``."""
        summary = self._client.xpending(self.stream, self.group)
        total = int(summary.get("pending") or 0)
        if total == 0 or position is None or parse_entry_id(summary["min"]) > position:
            return total
        if parse_entry_id(summary["max"]) <= position:
            return 0
        count, start = 0, f"({format_entry_id(position)}"
        while True:
            rows = self._client.xpending_range(self.stream, self.group, start, "+", SCAN_COUNT)
            count += len(rows)
            if len(rows) < SCAN_COUNT:
                return count
            start = f"({_text(rows[-1]['message_id'])}"

    def _count_after(self, position: EntryId | None) -> int:
        """Entries after ``position``, counted by scanning them (reads every entry after it)."""
        if position is None:
            return int(self._client.xlen(self.stream))
        count, start = 0, f"({format_entry_id(position)}"
        while True:
            entries = self._client.xrange(self.stream, start, "+", count=SCAN_COUNT)
            count += len(entries)
            if len(entries) < SCAN_COUNT:
                return count
            start = f"({_text(entries[-1][0])}"

    def _depth(self, position: EntryId | None) -> int:
        info = self._group_info()
        lag = None if info is None else info.get("lag")
        if info is not None and lag is not None:
            delivered = parse_entry_id(info.get("last-delivered-id") or "0-0")
            if (position is None or delivered >= position) and not self._behind(position, info):
                return int(lag) + self._pending_after(position)
        return self._count_after(position)

    def depth(self, after: Any = None) -> int:
        """Messages after the committed position ``after`` (not yet applied).

        Cost: with the group in place, the group's lag (entries never
        delivered) plus the pending entries after ``after`` (a few round trips,
        plus a scan of the pending list's ids when ``after`` falls inside it).
        Without the group, when the lag is unknown (entries were deleted), or
        when entries after ``after`` were acknowledged (a position behind the
        group's), every entry after ``after`` is read and counted (XRANGE in
        pages of 500, payloads included).
        """
        position = parse_position(after)
        if not self.stream:  # a reader of a project without an id: nothing queued, if the server answers
            self._call(self._client.ping)
            return 0
        return int(self._call(self._depth, position))

    # -- dead letters ------------------------------------------------------------------------------

    def dead_letter(self, message: Message, reason: str) -> None:
        """Record that ``message`` cannot be applied, and why (once per entry), and acknowledge it."""
        self._check_writable()
        seq = _text(message.seq)
        keys = [self.stream, self.dead_stream, f"{self.dead_stream}:seen:{seq}"]
        self._call(self._dead, keys=keys, args=[self.group, seq, message.id, str(reason), repr(time.time())])

    def dead_letters(self) -> list[tuple[str, str, str]]:
        """``(seq, id, reason)`` of every dead letter, in the order they were recorded."""
        if not self.stream:
            return []
        entries = self._call(self._client.xrange, self.dead_stream, "-", "+")
        return [(_text(f.get(b"seq")), _text(f.get(b"id")), _text(f.get(b"reason"))) for _, f in entries]

    # -- the rest ----------------------------------------------------------------------------------

    def identity(self) -> str | None:
        """The queue's identity, the key ``<stream>:identity`` (created here, ``SET NX``, if absent;
        see :meth:`QueueBackend.identity <mmf_stream.service.queues.protocol.QueueBackend.identity>`).
        One or two round trips. A reader creates none: None when there is none."""
        if not self.stream:
            return None

        def work() -> str | None:
            if not self.readonly:
                self._client.set(self.identity_key, uuid.uuid4().hex, nx=True)
            value = self._client.get(self.identity_key)
            return None if value is None else _text(value)

        return self._call(work)

    def check(self) -> str:
        """``"ok"`` when the server answers PING, else why not (one line)."""
        try:
            self._call(self._client.ping)
        except (ConnectionError, ValueError) as error:
            return str(error)
        return "ok"

    def persistence_warning(self) -> str | None:
        """One line when the server persists nothing (``appendonly no`` and no ``save`` points: a
        restart loses every queued message), else None; None too when the server refuses ``CONFIG``
        (an ACL, a renamed command)."""
        try:
            settings = {**self._call(self._client.config_get, "appendonly"),
                        **self._call(self._client.config_get, "save")}
        except ValueError:
            return None
        settings = {_text(name): _text(value) for name, value in settings.items()}
        if settings.get("appendonly") != "no" or settings.get("save", "").strip():
            return None
        return (f"warning: Redis at {self._shown} persists nothing (appendonly no, no save points): a restart of "
                "the server loses every queued message; run it with --appendonly yes (and --appendfsync always "
                "to lose none)")

    def close(self) -> None:
        """Close the connections."""
        self._client.close()

    def __enter__(self) -> RedisQueue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"RedisQueue({self._shown!r}, stream={self.stream!r}, group={self.group!r})"
