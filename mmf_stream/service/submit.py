"""Producers: put a new class (label + mean, or label + features to average) on a project's queue.

The queue is the project's embedded one (the default) or a Redis Stream
(``queue="redis://HOST:PORT/DB"``); see :mod:`mmf_stream.service.queues.backends`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from mmf_stream.service.queues.backends import check_queue_url, open_queue
from mmf_stream.common.limits import normalize_label, parse_int_label
from mmf_stream.service.messages import MAX_PAYLOAD_BYTES, mean_problem
from mmf_stream.service.queues.embedded import encode_array


def _project(project: str | os.PathLike) -> tuple[Path, int | None, str | None]:
    """The project's path, feature dimension and label kind, from its metadata file alone, or a one-line error.

    A producer reads nothing that grows with the project (no array, no chunk
    check, no lock): the coordinator checks every message again anyway.
    """
    from mmf_stream.store.class_store import read_metadata

    path = Path(project)
    try:
        meta = read_metadata(path)
    except ValueError:
        raise ValueError(f"{path} is not a project (a class store written by 'mmf-stream covariance ... --out')") \
            from None
    if meta.get("center"):
        raise ValueError(f"{path} is centred (center=True): the service does not serve centred projects, whose "
                         "every class changes when one is added; submit to a project made without --center")
    dim, kind = meta.get("dim"), meta.get("label_kind")
    return (path, dim if isinstance(dim, int) and not isinstance(dim, bool) else None,
            kind if kind in ("int", "str") else None)


def _label(label: Any, label_kind: str | None = None) -> str:
    """The label as the message carries it (text), refused as the coordinator would refuse it."""
    if isinstance(label, (bool, np.bool_)) or not isinstance(label, (str, int, np.integer)):
        raise TypeError(f"label must be a string or an integer, got {type(label).__name__}")
    text = str(label)
    if not text.strip():
        raise ValueError("label is empty")
    if label_kind == "int":
        return str(parse_int_label(text))
    return normalize_label(text)  # the label policy: NFC, printable, bounded length


def _payload(mean: Any, features: Any, dim: int | None) -> tuple[str, np.ndarray]:
    if (mean is None) == (features is None):
        raise ValueError("give exactly one of mean= or features=")
    kind, value = ("mean", mean) if mean is not None else ("features", features)
    array = np.asarray(value)
    if array.dtype == object or not np.issubdtype(array.dtype, np.number) or np.iscomplexobj(array):
        raise TypeError(f"{kind} must hold real numbers, got dtype {array.dtype}")
    array = array.astype(np.float64)
    want = 1 if kind == "mean" else 2
    if array.ndim != want or array.size == 0:
        shape = "(D,)" if kind == "mean" else "(n, D)"
        raise ValueError(f"{kind} must have shape {shape}, got {array.shape}")
    if dim is not None and array.shape[-1] != dim:
        raise ValueError(f"{kind} has {array.shape[-1]} features; the project's classes have D = {dim}")
    if not np.isfinite(array).all():
        raise ValueError(f"{kind} has non-finite entries (NaN or Inf)")
    with np.errstate(over="ignore", invalid="ignore"):
        mean = array if kind == "mean" else array.mean(axis=0)
    problem = mean_problem(mean, "mean" if kind == "mean" else "the features' mean")
    if problem:  # the coordinator would dead-letter it: the store refuses such a class
        raise ValueError(problem)
    if array.nbytes > MAX_PAYLOAD_BYTES:
        raise ValueError(f"{kind} is {array.nbytes} bytes; a message carries at most {MAX_PAYLOAD_BYTES}")
    return kind, array


def submit(project: str | os.PathLike, label: Any, mean: Any = None, features: Any = None, queue: str | None = None,
           *, message_id: str | None = None, remove: bool = False) -> str:
    """Queue a new class (or a change to one) for the project's coordinator; returns the message id.

    Parameters
    ----------
    project : path
        The project: a class store (``mmf-stream covariance ... --out PROJECT``).
    label : str or int
        The class's label (the label policy, docs/service.md: at most
        ``MAX_LABEL_LENGTH`` characters, no control characters, queued in
        Unicode NFC; on an integer-labelled project ``-?[0-9]+`` within
        int64). A label the project already has updates that class
        (its instances are added to the class's; the coordinator knocks the
        class out of the factorization and inserts it again).
    mean : array of shape (D,), optional
        The class mean.
    features : array of shape (n, D), optional
        Instances of the class, averaged by the coordinator (give ``mean`` or ``features``).
    queue : str, optional
        Where to queue: None, ``""`` or ``"embedded"`` (default) is the
        project's embedded queue (``PROJECT/queue/messages.sqlite``, durable
        when this returns); ``redis://HOST:PORT/DB`` (or ``rediss://``,
        ``unix://``; ``?stream=KEY`` names the stream, by default
        ``mmf_stream:<project id>``) is a Redis Stream (on the server when this
        returns; durable as the server's ``appendfsync`` makes it).
    message_id : str, optional
        The message's id (default: a fresh UUID). Submitting the same id again
        queues nothing new: retry freely after a lost answer.
    remove : bool
        Remove the class ``label`` from the project instead (give neither
        ``mean`` nor ``features``). The coordinator knocks it out of the
        factorization and the store; a label the project does not have then
        is dead-lettered with the reason.

    Returns
    -------
    str
        The message id.

    Raises
    ------
    ValueError, TypeError
        A project that is not a class store, a label or array that is not
        valid for it (shape, dimension, NaN/Inf, size, a mean whose entries
        the store refuses, an integer project's label that is not an int64
        integer), an unknown queue, or a Redis queue without the ``redis``
        package.
    ConnectionError
        The Redis server cannot be reached (the message names the URL).
    """
    path, dim, label_kind = _project(project)
    text = _label(label, label_kind)
    if not isinstance(remove, (bool, np.bool_)):
        raise TypeError(f"remove must be True or False, got {type(remove).__name__}")
    if remove:
        if mean is not None or features is not None:
            raise ValueError("a removal takes no mean= or features=")
        kind, payload = "remove", b""
    else:
        kind, array = _payload(mean, features, dim)
        payload = encode_array(array)
    check_queue_url(queue)
    if message_id is not None and (not isinstance(message_id, str) or not message_id.strip()):
        raise ValueError("message_id must be a non-empty string")
    with open_queue(path, queue) as target:
        return target.put(text, kind, payload, message_id=message_id)
