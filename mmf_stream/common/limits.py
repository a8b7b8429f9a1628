"""What a project accepts: bounds on mean magnitudes and instance counts, the label policy; one definition.

The class store refuses what these bounds exclude (``ValueError``), and the
service's coordinator checks every queued message against the same bounds
before its batch (:mod:`mmf_stream.service.messages`,
:mod:`mmf_stream.service.changes`), so a message the store would refuse is a
dead letter instead of an error that stops the service on every restart.
Producers (``ms.submit``) refuse it before it is queued.
"""

from __future__ import annotations

import re
import unicodedata

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


# ----------------------------------------------------------------------------- labels
#: most characters (code points, after NFC normalisation) in a string label: the store keeps string
#: labels in a fixed-width array as wide as its longest label (4 bytes a character on every load)
MAX_LABEL_LENGTH = 256
#: characters no label may hold: Unicode category Cc (C0 and C1 controls, DEL, among them the line
#: breaks of label files) and the line and paragraph separators (categories Zl and Zp: U+2028, U+2029)
FORBIDDEN_LABEL_CHARACTERS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
#: the one spelling of an integer label: an optional minus sign and ASCII digits (no '+', '_', spaces)
INT_LABEL_SYNTAX = re.compile("-?[0-9]+")


def _shown(text: str) -> str:
    """A label as an error message names it (its start, if long)."""
    return repr(text) if len(text) <= 40 else repr(text[:40]) + "..."


def label_problem(text: str) -> str | None:
    """Why a string label is not accepted (empty, a forbidden character, too long), or None.

    ``text`` is checked as given: normalise it first (:func:`normalize_label`).
    """
    if not text.strip():
        return "label is empty"
    bad = FORBIDDEN_LABEL_CHARACTERS.search(text)
    if bad:
        return (f"label {_shown(text)} holds the control character U+{ord(bad.group()):04X}; "
                "labels are one line of printable text")
    if len(text) > MAX_LABEL_LENGTH:
        return f"label {_shown(text)} has {len(text)} characters; at most {MAX_LABEL_LENGTH}"
    return None


def normalize_label(text: str) -> str:
    """The label's one spelling (Unicode NFC: "é" and "e\\u0301" are one class), or a ``ValueError``.

    Raises
    ------
    ValueError
        The label is empty, holds a control character (:data:`FORBIDDEN_LABEL_CHARACTERS`) or
        has more than :data:`MAX_LABEL_LENGTH` characters.
    """
    normal = text if text.isascii() else unicodedata.normalize("NFC", text)
    problem = label_problem(normal)
    if problem:
        raise ValueError(problem)
    return normal


def parse_int_label(text: str) -> int:
    """An integer label written as text, parsed strictly (:data:`INT_LABEL_SYNTAX`, within int64).

    Raises
    ------
    ValueError
        The text is not ``-?[0-9]+`` (``int()`` would also take "+15", "1_2" and " 14 "), or
        the integer is outside int64.
    """
    if not INT_LABEL_SYNTAX.fullmatch(text):
        raise ValueError(f"label {_shown(text)} is not an integer (-?[0-9]+); the project's labels are integers")
    value = int(text) if len(text) <= 40 else INT_LABEL_MAX + 1  # longer than any int64
    problem = int_label_problem(value)
    if problem:
        raise ValueError(problem if len(text) <= 40 else f"label {_shown(text)} is outside the range of "
                         f"integer labels (int64: {INT_LABEL_MIN}..{INT_LABEL_MAX})")
    return value


def normalize_labels(labels: np.ndarray | list[str]) -> tuple[np.ndarray, int | None, str | None]:
    """String labels (an array, or a list: no fixed-width array is made before the lengths are
    checked) in their one spelling (see :func:`normalize_label`), checked as a whole.

    Returns ``(normalised, None, None)``, or ``(labels, index, reason)`` for the first label not
    accepted. Plain ASCII labels within the length bound are checked in one pass, without normalising.
    """
    items = labels.tolist() if isinstance(labels, np.ndarray) else list(labels)
    if not items:
        return np.asarray(labels, dtype=str), None, None
    joined = "".join(items)
    fine = joined.isascii() and max(map(len, items)) <= MAX_LABEL_LENGTH \
        and not FORBIDDEN_LABEL_CHARACTERS.search(joined) and all(text.strip() for text in items)
    if fine:
        return np.asarray(labels, dtype=str), None, None
    normal = []
    for index, text in enumerate(items):
        try:
            normal.append(normalize_label(text))
        except ValueError as error:
            return labels, index, str(error)
    return np.array(normal, dtype=str), None, None
