"""What a project accepts: bounds on mean magnitudes and instance counts, one definition for every check.

The class store refuses what these bounds exclude (``ValueError``), and the
service's coordinator checks every queued message against the same bounds
before its batch (:mod:`mmf_stream.service.messages`,
:mod:`mmf_stream.service.changes`), so a message the store would refuse is a
dead letter instead of an error that stops the service on every restart.
Producers (``ms.submit``) refuse it before it is queued.
"""

from __future__ import annotations

import numpy as np

#: largest accepted |C_ij|: MMF sums squared entries, and float64 overflows near 1e308
MAX_ABS_ENTRY = 1e150
#: most instances behind one class: float64 holds every count up to 2**53 exactly, so
#: ``means = sums / counts`` divides by the count itself; with the mean bound of
#: :func:`means_overflow`, ``sums = means * counts`` then stays finite
MAX_CLASS_COUNT = 2**53
#: most instances in a project (all classes together): the store keeps the total as an int64
MAX_INSTANCES = 2**63 - 1
#: smallest and largest integer label: the store keeps integer labels as int64
INT_LABEL_MIN, INT_LABEL_MAX = -(2**63), 2**63 - 1


def means_overflow(largest: float, dim: int) -> bool:
    """Whether means whose largest |entry| is ``largest`` in ``dim`` features give covariance
    entries (dot products of two means, ``<= largest**2 * dim``) beyond :data:`MAX_ABS_ENTRY`."""
    return bool(largest * largest * max(int(dim), 1) > MAX_ABS_ENTRY)


def count_problem(count: int) -> str | None:
    """Why ``count`` (the instances behind one class) is not accepted, or None if it is."""
    if count < 1:
        return f"count must be at least 1, got {count}"
    if count > MAX_CLASS_COUNT:
        return f"count {count} exceeds the most instances of one class, {MAX_CLASS_COUNT} (2**53)"
    return None


def counts_problem(counts: np.ndarray) -> str | None:
    """Why an array of class counts is not accepted (see :func:`count_problem`), or None."""
    if not counts.size:
        return None
    low, high = int(counts.min()), int(counts.max())
    return count_problem(low) or count_problem(high)


def int_label_problem(value: int) -> str | None:
    """Why an integer label is not accepted (outside :data:`INT_LABEL_MIN`..:data:`INT_LABEL_MAX`), or None."""
    if not INT_LABEL_MIN <= value <= INT_LABEL_MAX:
        return f"label {value} is outside the range of integer labels (int64: {INT_LABEL_MIN}..{INT_LABEL_MAX})"
    return None
