"""What a consumer accepts from a queue: a checked new class, or a reason to dead-letter the message.

Producers that go through :func:`mmf_stream.submit` are checked before they
queue, but a queue is open to any producer (a raw SQLite or Redis client), so
the coordinator checks every message again with :func:`decode`. A message it
cannot apply goes to the dead-letter area with the reason
(:meth:`EmbeddedQueue.dead_letter <mmf_stream.service.queues.embedded.EmbeddedQueue.dead_letter>`)
and the service carries on.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass

import numpy as np

from mmf_stream.common.limits import count_problem, means_overflow, normalize_label, parse_int_label
from mmf_stream.service.queues.embedded import KINDS, Message

#: largest payload a message may carry (bytes); larger ones are dead-lettered
MAX_PAYLOAD_BYTES = 256 * 2**20
#: the fields a message may carry beside label, kind and payload
KNOWN_FIELDS = ("count",)


class BadMessage(ValueError):
    """A message the coordinator cannot apply; ``str(error)`` is the dead letter's reason."""


@dataclass(frozen=True)
class NewClass:
    """A checked message: a class's label and its mean (features already averaged), or a removal
    (``mean`` None, ``count`` 0)."""

    seq: int | str  # the message's position in its queue (Message.seq)
    id: str
    label: str | int
    mean: np.ndarray | None  # (D,); None: remove the class
    count: int  # instances behind the mean (0 for a removal)

    @property
    def removal(self) -> bool:
        """Whether the message removes its class (``ms.submit(..., remove=True)``)."""
        return self.mean is None


def _label(raw: bytes, label_kind: str | None) -> str | int:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BadMessage("label is not UTF-8 text") from None
    if not text.strip():
        raise BadMessage("label is empty")
    try:  # the label policy of mmf_stream.common.limits: strict integers; NFC, printable, bounded text
        return parse_int_label(text) if label_kind == "int" else normalize_label(text)
    except ValueError as error:
        raise BadMessage(str(error)) from None


def mean_problem(mean: np.ndarray, what: str = "mean") -> str | None:
    """Why the store would refuse a class of this mean (non-finite, or entries whose products overflow:
    :func:`mmf_stream.common.limits.means_overflow`), or None."""
    if not np.isfinite(mean).all():
        return f"{what} has non-finite entries (NaN or Inf)"
    largest = float(np.max(np.abs(mean))) if mean.size else 0.0
    if means_overflow(largest, mean.shape[-1]):
        return (f"{what} entries reach {largest:.3g}: the covariance entries (products of means) would overflow; "
                "rescale the features")
    return None


def _array(message: Message) -> np.ndarray:
    if len(message.payload) > MAX_PAYLOAD_BYTES:
        raise BadMessage(f"payload is {len(message.payload)} bytes; at most {MAX_PAYLOAD_BYTES}")
    try:
        array = np.load(io.BytesIO(message.payload), allow_pickle=False)
    except Exception as error:  # noqa: BLE001 - any unreadable payload is a reason, not a crash
        raise BadMessage(f"payload is not a .npy array ({type(error).__name__})") from None
    if not isinstance(array, np.ndarray) or array.dtype == object or not np.issubdtype(array.dtype, np.number) \
            or np.iscomplexobj(array):
        raise BadMessage(f"payload does not hold real numbers (dtype {getattr(array, 'dtype', '?')})")
    return array.astype(np.float64)


def decode(message: Message, dim: int, label_kind: str | None) -> NewClass:
    """The new class a message carries, checked against the project (``dim`` features,
    labels of ``label_kind``: ``"int"``, ``"str"`` or None for a project without classes yet).

    Raises
    ------
    BadMessage
        With the reason: unknown kind or fields, a label that is not UTF-8,
        empty, or not accepted by the label policy (an integer project's label
        not ``-?[0-9]+`` within int64; a control character or more than
        ``MAX_LABEL_LENGTH`` characters; the label is returned in NFC), a payload that is too large, unreadable,
        of the wrong shape or dimension, or not finite, a count beyond
        :data:`~mmf_stream.common.limits.MAX_CLASS_COUNT`, or a mean whose entries
        the store refuses (:func:`mean_problem`).
    """
    if message.kind not in KINDS:
        raise BadMessage(f"unknown kind {message.kind!r} (known: {', '.join(KINDS)})")
    try:
        extra = json.loads(message.extra or "{}")
    except ValueError:
        raise BadMessage("extra fields are not JSON") from None
    if not isinstance(extra, dict):
        raise BadMessage("extra fields are not a JSON object")
    unknown = sorted(set(extra) - set(KNOWN_FIELDS))
    if unknown:
        raise BadMessage(f"unknown field(s) {', '.join(map(repr, unknown))} (known: {', '.join(KNOWN_FIELDS)})")
    label = _label(message.label, label_kind)
    if message.kind == "remove":
        if message.payload:
            raise BadMessage(f"a removal carries no payload, got {len(message.payload)} bytes")
        if extra:
            raise BadMessage("a removal carries no fields")
        return NewClass(seq=message.seq, id=message.id, label=label, mean=None, count=0)
    array = _array(message)
    want = 1 if message.kind == "mean" else 2
    if array.ndim != want or array.size == 0:
        raise BadMessage(f"{message.kind} has shape {array.shape}; expected {'(D,)' if want == 1 else '(n, D)'}")
    if array.shape[-1] != dim:
        raise BadMessage(f"{message.kind} has {array.shape[-1]} features; the project's classes have D = {dim}")
    if not np.isfinite(array).all():
        raise BadMessage(f"{message.kind} has non-finite entries (NaN or Inf)")
    count = extra.get("count", 1 if message.kind == "mean" else array.shape[0])
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise BadMessage(f"count must be a positive integer, got {count!r}")
    problem = count_problem(count)
    if problem:
        raise BadMessage(problem)
    with np.errstate(over="ignore", invalid="ignore"):
        mean = array if message.kind == "mean" else array.mean(axis=0)
    problem = mean_problem(mean, "mean" if message.kind == "mean" else "the features' mean")
    if problem:
        raise BadMessage(problem)
    return NewClass(seq=message.seq, id=message.id, label=label, mean=mean, count=int(count))
