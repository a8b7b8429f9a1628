"""When the coordinator re-runs batch MMF: pure functions of a generation's counters (no I/O)."""

from __future__ import annotations

from typing import Any


def drift(error: float, size: int, counters: dict[str, Any]) -> float:
    """How much the squared error per class exceeds the last batch run's (0 right after one).

    Insertions keep the old levels, so each new class adds error the levels
    were not chosen for; a batch run re-chooses them. ``counters`` are a
    generation's (``batch_error``, ``batch_classes``).
    """
    base_error, base_size = counters.get("batch_error"), counters.get("batch_classes")
    if not base_error or not base_size or not size:
        return 0.0
    return max(0.0, (error**2 / size) / (base_error**2 / base_size) - 1.0)


def growth(size: int, counters: dict[str, Any]) -> float:
    """Classes added since the last batch run, as a fraction of its size."""
    base_size = counters.get("batch_classes")
    return 0.0 if not base_size else size / base_size - 1.0


def refresh_outcome(refreshed_error: float, current_error: float, replayed: int) -> str:
    """What a finished refresh becomes: ``"swap"`` (committed: its error, after the replay of the
    ``replayed`` classes that arrived while it ran, is not above the current factorization's),
    ``"retry"`` (discarded, and a new refresh of the current classes starts at the next check: the
    replayed insertions spoilt it, and one without them is expected to do better), or ``"discard"``
    (discarded with nothing replayed: the insertions beat batch MMF; its batch run becomes the drift
    and growth baseline, so it is not retried until those pass their thresholds again)."""
    if refreshed_error <= current_error:
        return "swap"
    return "retry" if replayed > 0 else "discard"
