"""What a batch of checked messages does to a project's classes, worked out before anything is written.

Messages apply in arrival order: a mean or features for a new label adds a
class; for a label the project has (or one added earlier in the batch) it adds
the instances to that class (an update); a removal takes the class out (a
removal of a label that is not there, at that point of the batch, is a dead
letter). The net effect on the store and on the factorization is

* ``knocked_out``: classes of the project the batch removes or updates: they
  leave the factorization (knock-out) and the store (:meth:`Store.replace_classes
  <mmf_stream.store.class_store.Store.replace_classes>`, the last classes filling the
  holes: :func:`~mmf_stream.store.class_store.swap_last_placement`);
* ``appended``: the batch's updated and new classes with their final sums and
  counts, in sorted label order (the store appends them so), inserted into the
  factorization from their means.

A message whose class the store would refuse once the message is added to it
(the class's count beyond :data:`~mmf_stream.common.limits.MAX_CLASS_COUNT`, the
project's instances beyond :data:`~mmf_stream.common.limits.MAX_INSTANCES`, a mean
the store refuses, or, on a cosine-normalised project, a mean of zero length)
is a dead letter, and the class stays as it was before that message: the same
limits as the store's, checked before anything is written, so that a message
never stops the batch (nor every batch after it).

Pure bookkeeping: no I/O beyond the ``read_classes`` callback for the old sums
of updated classes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mmf_stream.common.limits import MAX_INSTANCES, count_problem
from mmf_stream.service.messages import NewClass, mean_problem


@dataclass
class BatchChanges:
    """The net change of one batch (see the module docstring)."""

    knocked_out: list[Any]
    labels: np.ndarray  # appended classes, sorted
    sums: np.ndarray  # (k, D)
    counts: np.ndarray  # (k,)
    #: per applied message id: "added", "updated" or "removed"
    change: dict[str, str] = field(default_factory=dict)
    #: removals of labels that were not there: (seq, id, reason)
    dead: list[tuple[Any, str, str]] = field(default_factory=list)

    @property
    def means(self) -> np.ndarray:
        """The appended classes' means."""
        return self.sums / self.counts[:, None]

    @property
    def only_additions(self) -> bool:
        """Whether the batch only adds new classes (nothing leaves the factorization)."""
        return not self.knocked_out

    @property
    def empty(self) -> bool:
        return not self.knocked_out and not self.labels.size


def class_problem(sums: np.ndarray, count: int, *, normalized: bool = False) -> str | None:
    """Why the store would refuse a class of these sums and count (see the module docstring), or None."""
    problem = count_problem(count)
    if problem:
        return f"the class would have {count} instances: {problem}"
    with np.errstate(over="ignore", invalid="ignore"):
        mean = sums / count
        problem = mean_problem(mean, "the class's mean")
        if problem is None and normalized and not float(np.dot(mean, mean)) > 0.0:
            problem = "the class's mean is the zero vector; the project's classes are cosine-normalised"
    return problem


def plan_batch(messages: list[NewClass], slots: dict[Any, int], dim: int,
               read_classes: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]], *,
               instances: int = 0, normalized: bool = False) -> BatchChanges:
    """The net change of ``messages`` (checked, in arrival order) on a project whose classes are ``slots``
    (label -> slot).

    Parameters
    ----------
    messages : list of NewClass
        The batch's checked messages, in arrival order.
    slots : dict
        The project's classes: label -> slot.
    dim : int
        The project's feature dimension.
    read_classes : callable
        ``read_classes(slots)`` gives ``(sums, counts)`` of stored classes.
    instances : int
        The project's instances before the batch (``Store.n_instances``): a message that takes the
        total beyond :data:`~mmf_stream.common.limits.MAX_INSTANCES` is a dead letter (removals in the
        batch are not subtracted: the bound is checked conservatively).
    normalized : bool
        Whether the project cosine-normalises its classes (``Store.normalize``): a class whose mean
        ends up of zero length is then a dead letter.
    """
    touched = [m.label for m in messages if not m.removal and m.label in slots]
    first_seen = list(dict.fromkeys(touched))
    old_sums, old_counts = read_classes(np.array([slots[label] for label in first_seen], dtype=np.int64))
    old = {label: (old_sums[i], int(old_counts[i])) for i, label in enumerate(first_seen)}
    state: dict[Any, tuple[np.ndarray, int] | None] = {}  # label -> (sums, counts), or None once removed
    change: dict[str, str] = {}
    dead: list[tuple[Any, str, str]] = []
    total = int(instances)  # the project's instances, plus every message applied so far
    for message in messages:
        label = message.label
        if label in state:
            current = state[label]
        else:
            current = old.get(label) if label in slots else None
            if label in slots and current is None:  # a stored class only removed: no sums needed
                current = (np.zeros(dim), 0)
        if message.removal:
            if current is None:
                dead.append((message.seq, message.id, f"no class {label!r} to remove"))
                continue
            state[label] = None
            change[message.id] = "removed"
            continue
        with np.errstate(over="ignore", invalid="ignore"):
            contribution = message.mean * message.count
            after = (contribution, message.count) if current is None else \
                (current[0] + contribution, current[1] + message.count)
        problem = class_problem(*after, normalized=normalized)
        if problem is None and total + message.count > MAX_INSTANCES:
            problem = f"the project would hold more than {MAX_INSTANCES} instances (int64)"
        if problem:
            dead.append((message.seq, message.id, f"class {label!r}: {problem}"))
            continue
        total += message.count
        state[label] = after
        change[message.id] = "added" if current is None and label not in slots else "updated"
    knocked_out = [label for label in state if label in slots]
    # sorted as the store sorts the classes it appends (np.unique's order)
    kept = sorted(label for label, value in state.items() if value is not None)
    labels = np.array(kept) if kept else np.array([])
    sums = np.stack([state[label][0] for label in kept]) if kept else np.zeros((0, dim))
    counts = np.array([state[label][1] for label in kept], dtype=np.int64)
    return BatchChanges(knocked_out=knocked_out, labels=labels, sums=sums, counts=counts, change=change, dead=dead)
