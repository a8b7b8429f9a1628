"""Which queue a ``--queue`` value names, and the project's stable id.

``None``, ``""`` or ``"embedded"``: the project's embedded SQLite queue
(:class:`~mmf_stream.service.queues.embedded.EmbeddedQueue`). ``redis://HOST:PORT/DB``
(or ``rediss://``): a Redis Stream (:class:`~mmf_stream.service.queues.redis_streams.RedisQueue`),
by default the stream ``mmf_stream:<project id>``, so producers and the
coordinator of one project agree on it wherever the project is mounted.

Every backend offers the same interface,
:class:`~mmf_stream.service.queues.protocol.QueueBackend` (its docstrings say
what each member guarantees; ``tests/queue_contract.py`` tests both backends
against it):

* ``put(label, kind, payload, *, message_id=None, extra=None) -> id`` (a
  message id that was already queued is not queued again);
* ``read(after, limit, wait) -> [Message]``: messages after the committed
  position ``after`` (``Message.seq``; an int for the embedded queue, a stream
  entry id for Redis; ``None`` or ``0`` before the first), in arrival order;
* ``acknowledge(messages)``: called only after their batch is committed;
* ``depth(after)``, ``dead_letter(message, reason)``, ``dead_letters()``,
  ``check()``, ``close()``, ``url`` and the context manager.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

from mmf_stream.service.queues.embedded import EmbeddedQueue
from mmf_stream.service.queues.protocol import QueueBackend
from mmf_stream.store.generations import SERVICE_DIR

#: the service's folder inside a project
#: the file holding the project's id
PROJECT_ID_FILE = "project.json"
#: URL schemes served by Redis Streams
REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


def project_id(project: str | os.PathLike, *, create: bool = True) -> str | None:
    """The project's stable id (created once, atomically, the first time a writer asks for it).

    ``create=False`` (readers): None when the project has none yet, and nothing is written.
    """
    folder = Path(project) / SERVICE_DIR
    path = folder / PROJECT_ID_FILE
    try:
        return str(json.loads(path.read_text())["id"])
    except FileNotFoundError:
        if not create:
            return None
    folder.mkdir(exist_ok=True)
    staging = folder / f".{PROJECT_ID_FILE}.{uuid.uuid4().hex[:8]}"
    staging.write_text(json.dumps({"id": uuid.uuid4().hex}))
    try:
        os.link(staging, path)  # fails if another process created it first: theirs stands
    except FileExistsError:
        pass
    finally:
        staging.unlink(missing_ok=True)
    return str(json.loads(path.read_text())["id"])


def is_embedded(url: str | None) -> bool:
    """Whether ``url`` names the project's embedded queue."""
    return url in (None, "", "embedded")


def check_queue_url(url: Any) -> str | None:
    """``url`` if it names a known queue, else a one-line ValueError."""
    if is_embedded(url):
        return None
    if isinstance(url, str) and url.startswith(REDIS_SCHEMES):
        return url
    raise ValueError(f"unknown queue {url!r}: use 'embedded' (the default) or a redis:// URL")


def open_queue(project: str | os.PathLike, url: str | None = None, *, readonly: bool = False) -> QueueBackend:
    """The queue ``url`` names for ``project`` (see the module docstring).

    Parameters
    ----------
    project : path
        The project.
    url : str, optional
        ``None``/``"embedded"`` or a Redis URL.
    readonly : bool
        For readers (``status``): nothing is created or written, neither in the
        project (no queue database, no ``service/project.json``) nor on a Redis
        server; a queue that does not exist yet reads as empty. Lost Redis
        connections are not retried (a reader reports them at once).
    """
    url = check_queue_url(url)
    if url is None:
        return EmbeddedQueue.of_project(project, readonly=readonly)
    from mmf_stream.service.queues.redis_streams import RedisQueue

    return RedisQueue(url, project_id(project, create=not readonly), readonly=readonly)
