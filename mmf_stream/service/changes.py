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

Pure bookkeeping: no I/O beyond the ``read_classes`` callback for the old sums
of updated classes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mmf_stream.service.messages import NewClass


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


def plan_batch(messages: list[NewClass], slots: dict[Any, int], dim: int,
               read_classes: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]) -> BatchChanges:
    """The net change of ``messages`` (checked, in arrival order) on a project whose classes are ``slots``
    (label -> slot); ``read_classes(slots)`` gives ``(sums, counts)`` of stored classes."""
    touched = [m.label for m in messages if not m.removal and m.label in slots]
    first_seen = list(dict.fromkeys(touched))
    old_sums, old_counts = read_classes(np.array([slots[label] for label in first_seen], dtype=np.int64))
    old = {label: (old_sums[i], int(old_counts[i])) for i, label in enumerate(first_seen)}
    state: dict[Any, tuple[np.ndarray, int] | None] = {}  # label -> (sums, counts), or None once removed
    change: dict[str, str] = {}
    dead: list[tuple[Any, str, str]] = []
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
        contribution = message.mean * message.count
        if current is None:
            state[label] = (contribution, message.count)
            change[message.id] = "added" if label not in slots else "updated"
        else:
            state[label] = (current[0] + contribution, current[1] + message.count)
            change[message.id] = "updated"
    knocked_out = [label for label in state if label in slots]
    # sorted as the store sorts the classes it appends (np.unique's order)
    kept = sorted(label for label, value in state.items() if value is not None)
    labels = np.array(kept) if kept else np.array([])
    sums = np.stack([state[label][0] for label in kept]) if kept else np.zeros((0, dim))
    counts = np.array([state[label][1] for label in kept], dtype=np.int64)
    return BatchChanges(knocked_out=knocked_out, labels=labels, sums=sums, counts=counts, change=change, dead=dead)
