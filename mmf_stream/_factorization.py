"""The factorization object and the public ``factorize`` entry point."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mmf_stream import _kernels as K
from mmf_stream import _validation as V
from mmf_stream._engine import RawFactorization, greedy_factorize
from mmf_stream._fingerprint import of_matrix

CANDIDATE_METHODS = ("neighbors", "exhaustive")
#: exhaustive search refuses to score more tuples than this (over all levels)
EXHAUSTIVE_MAX_TUPLES = 2_000_000
#: exhaustive search warns when its estimated time exceeds this many seconds
EXHAUSTIVE_WARN_SECONDS = 10.0
#: measured cost of scoring one k-tuple exhaustively (2-core machine): a fixed part in
#: seconds, plus a part in seconds per k**3 (k = 5: 0.4 ms, k = 8: 0.7 ms a tuple)
EXHAUSTIVE_SECONDS_PER_TUPLE = 2e-4
EXHAUSTIVE_SECONDS_PER_K3 = 1e-6


def _check_exhaustive_cost(size: int, order: int, n_levels: int) -> None:
    """Refuse exhaustive searches that cannot finish; warn before long ones."""
    import warnings
    from math import comb

    scorings = sum(comb(size - level, order) for level in range(n_levels))
    if scorings > EXHAUSTIVE_MAX_TUPLES:
        raise ValueError(
            f"exhaustive search would score {scorings:,} tuples; use candidates='neighbors' "
            "for matrices of this size"
        )
    seconds = scorings * (EXHAUSTIVE_SECONDS_PER_TUPLE + order**3 * EXHAUSTIVE_SECONDS_PER_K3)
    if seconds > EXHAUSTIVE_WARN_SECONDS:
        warnings.warn(
            f"exhaustive search scores {scorings:,} tuples of {order}: about {seconds:.0f} s "
            "(candidates='neighbors' takes well under a second)",
            stacklevel=3,
        )


@dataclass(frozen=True)
class Level:
    """One level of an MMF: the rotation ``Q_l`` and the wavelet it removes.

    Attributes
    ----------
    number : int
        Position of the level, starting at 1.
    indices : ndarray of shape (k,)
        The tuple ``t_l`` (original row indices of the matrix) in the order of
        the rotation's rows and columns.
    wavelet : int
        The index ``s_l`` that becomes a wavelet here and takes no part in
        later levels.
    rotation : ndarray of shape (k, k)
        The orthogonal block ``O_l`` (determinant +1): ``C_l = Q_l C_{l-1} Q_l'``.
    squared_error : float
        ``2 r_l^2``, the squared Frobenius error this level contributes; the
        levels' values sum to ``error ** 2``.
    labels : ndarray or None
        Labels of ``indices`` when the factorization has labels.
    """

    number: int
    indices: np.ndarray
    wavelet: int
    rotation: np.ndarray
    squared_error: float
    labels: np.ndarray | None = None

    @property
    def wavelet_label(self):
        """Label of the wavelet index (``None`` without labels)."""
        if self.labels is None:
            return None
        return self.labels[list(self.indices).index(self.wavelet)]


class Factorization:
    """A multiresolution matrix factorization ``C ~ Q' H Q``.

    ``Q = Q_L ... Q_1`` is a product of ``k``-point rotations and ``H`` keeps
    the diagonal of the final compression and its dense core block. Create one
    with :func:`mmf_stream.factorize` or :func:`mmf_stream.load`.

    Attributes
    ----------
    order : int
        ``k``, the number of indices each rotation mixes.
    size : int
        ``m``, the side of the factored matrix.
    levels : tuple of Level
        The levels in the order they were applied.
    core : ndarray of int
        Indices of the core (sorted).
    core_block : ndarray of shape (d, d)
        ``H`` restricted to the core.
    diagonal : ndarray of shape (m,)
        The diagonal of ``H``.
    error : float
        Exact ``||C - M(C)||_F``.
    norm : float
        ``||C||_F`` of the factored matrix.
    labels : ndarray or None
        One label per index, when given.
    """

    def __init__(
        self,
        raw: RawFactorization,
        *,
        order: int,
        norm: float,
        labels: np.ndarray | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        self._raw = raw
        self.order = int(order)
        self.size = int(raw.diagonal.shape[0])
        self.norm = float(norm)
        self.labels = labels
        self.metadata = dict(metadata or {})
        self._levels: tuple[Level, ...] | None = None

    # ------------------------------------------------------------------ arrays
    @property
    def tuples(self) -> np.ndarray:
        """``(L, k)`` array of every level's tuple."""
        return self._raw.tuples

    @property
    def wavelets(self) -> np.ndarray:
        """``(L,)`` array of every level's wavelet index."""
        return self._raw.wavelets

    @property
    def rotations(self) -> np.ndarray:
        """``(L, k, k)`` array of every level's rotation block."""
        return self._raw.rotations

    @property
    def level_errors(self) -> np.ndarray:
        """``(L,)`` squared Frobenius error contributed by each level."""
        return self._raw.level_errors

    @property
    def diagonal(self) -> np.ndarray:
        return self._raw.diagonal

    @property
    def core(self) -> np.ndarray:
        return self._raw.core

    @property
    def core_block(self) -> np.ndarray:
        return self._raw.core_block

    @property
    def n_levels(self) -> int:
        return int(self._raw.wavelets.shape[0])

    @property
    def levels(self) -> tuple[Level, ...]:
        if self._levels is None:
            self._levels = tuple(
                Level(
                    number=i + 1,
                    indices=self._raw.tuples[i],
                    wavelet=int(self._raw.wavelets[i]),
                    rotation=self._raw.rotations[i],
                    squared_error=float(self._raw.level_errors[i]),
                    labels=None if self.labels is None else self.labels[self._raw.tuples[i]],
                )
                for i in range(self.n_levels)
            )
        return self._levels

    @property
    def error(self) -> float:
        """Exact Frobenius error ``||C - M(C)||_F``."""
        return float(np.sqrt(max(float(np.sum(self._raw.level_errors)), 0.0)))

    @property
    def relative_error(self) -> float:
        """``||C - M(C)||_F / ||C||_F`` (0 for a zero matrix)."""
        return self.error / self.norm if self.norm > 0 else 0.0

    # ---------------------------------------------------------------- algebra
    def _rows(self, values: Any, name: str) -> tuple[np.ndarray, bool]:
        array = np.array(values, dtype=np.float64, copy=True)
        if array.ndim not in (1, 2) or array.shape[0] != self.size:
            raise ValueError(
                f"{name} must have {self.size} rows (shape ({self.size},) or ({self.size}, p)), "
                f"got shape {array.shape}"
            )
        if not np.all(np.isfinite(array)):
            raise ValueError(f"{name} has non-finite entries")
        vector = array.ndim == 1
        return (array.reshape(self.size, -1) if vector else np.ascontiguousarray(array)), vector

    def transform(self, x: Any) -> np.ndarray:
        """Wavelet transform ``Q x = Q_L ... Q_1 x`` of a vector or of the columns of a matrix."""
        rows, vector = self._rows(x, "x")
        K.apply_rotations(rows, self._raw.tuples, self._raw.rotations, False)
        return rows[:, 0] if vector else rows

    def inverse_transform(self, y: Any) -> np.ndarray:
        """Inverse wavelet transform ``Q' y = Q_1' ... Q_L' y``."""
        rows, vector = self._rows(y, "y")
        K.apply_rotations(rows, self._raw.tuples, self._raw.rotations, True)
        return rows[:, 0] if vector else rows

    def compressed(self) -> np.ndarray:
        """The dense ``H``: diagonal plus core block (``m x m``; small ``m`` only)."""
        h = np.zeros((self.size, self.size))
        h[np.arange(self.size), np.arange(self.size)] = self._raw.diagonal
        h[np.ix_(self._raw.core, self._raw.core)] = self._raw.core_block
        return h

    def reconstruct(self) -> np.ndarray:
        """The dense approximation ``M(C) = Q' H Q`` (``m x m``; small ``m`` only)."""
        approx = self.compressed()
        K.apply_rotations(approx, self._raw.tuples, self._raw.rotations, True)
        approx = np.ascontiguousarray(approx.T)
        K.apply_rotations(approx, self._raw.tuples, self._raw.rotations, True)
        return 0.5 * (approx + approx.T)

    @property
    def fingerprint(self):
        """The :class:`~mmf_stream._fingerprint.Fingerprint` of the factored matrix
        (its diagonal and a fixed random probe ``C r``), used to check that a
        class store still holds the factored classes before inserting; None for
        results saved by versions without it."""
        return self.metadata.get("fingerprint")

    # -------------------------------------------------------------- insertion
    @property
    def insertion_report(self):
        """The :class:`InsertionReport` of the insertion that made this result (None for batch)."""
        return self.metadata.get("insertion_report")

    def insert(self, column: Any, diagonal: float, label: Any = None, *, repair: bool | None = None) -> Factorization:
        """Factorization of ``[[C, column], [column', diagonal]]`` (incremental MMF).

        ``self`` is not modified. The result's :attr:`insertion_report` says
        which levels changed, where the new index landed, the error it added
        and its novelty.

        Parameters
        ----------
        column : array of shape (size,)
            Couplings of the new class with the existing ones.
        diagonal : float
            Its own entry (for a class covariance: ``||mu_new||^2``).
        label : optional
            Its label (required when the factorization has labels).
        repair : bool, optional
            Re-run the levels from the shallow snapshot (costlier, lower error).
            By default every ``repair_every``-th insertion does (see module
            :mod:`mmf_stream._incremental`).
        """
        column_array = np.asarray(column, dtype=np.float64) if np.ndim(column) else None
        if column_array is None or column_array.ndim != 1:
            raise ValueError(f"column must be 1-D with {self.size} entries")
        return self.insert_many(
            column_array[:, None], np.array([[float(np.asarray(diagonal, dtype=np.float64))]]),
            None if label is None else [label], repair=repair,
        )

    def insert_many(
        self, columns: Any, diagonals: Any = None, labels: Sequence[Any] | None = None, *, repair: bool | None = None
    ) -> Factorization:
        """Insert ``b`` new indices in one pass.

        Parameters
        ----------
        columns : array of shape (size + b, b) or (size, b)
            The new columns. With ``size + b`` rows, the last ``b`` rows are the
            ``b x b`` block among the new indices.
        diagonals : array of shape (b, b), optional
            The block among the new indices, when ``columns`` has ``size`` rows
            (a length-``b`` vector is accepted only for ``b = 1``).
        labels : sequence of length b, optional
            Required when the factorization has labels.
        repair : bool, optional
            Force (True) or skip (False) re-running from the shallow snapshot;
            by default it runs for blocks of 10 or more and every 10 insertions.
        """
        from mmf_stream._incremental import REPAIR_EVERY, build_insertion

        return build_insertion(self, columns, diagonals, labels, repair=repair, repair_every=REPAIR_EVERY)

    # --------------------------------------------------------------- storage
    def save(self, path: str | os.PathLike, *, overwrite: bool = False) -> None:
        """Write the factorization as a Zarr group (layout in ``docs/format.md``).

        The group is written beside ``path`` and moved into place at the end,
        so an interrupted save never leaves a half-written result at ``path``.
        """
        from mmf_stream._store import save_factorization

        save_factorization(self, path, overwrite=overwrite)

    def plot(self, **kwargs: Any):
        """The MMF graph as a matplotlib figure (see :func:`mmf_stream.views.plot`)."""
        from mmf_stream.views import plot

        return plot(self, **kwargs)

    def summary(self, levels: int = 10) -> str:
        """A short text report: sizes, error and the first ``levels`` levels."""
        lines = [
            f"size        {self.size}",
            f"order       {self.order}",
            f"levels      {self.n_levels}",
            f"core size   {self.core.shape[0]}",
            f"error       {self.error:.6g} (relative {self.relative_error:.4g}, ||C||_F = {self.norm:.6g})",
            f"labels      {'yes' if self.labels is not None else 'no'}",
        ]
        shown = min(levels, self.n_levels)
        if shown:
            lines.append(f"first {shown} levels (* marks the wavelet):")
            width = len(str(shown))
            for level in self.levels[:shown]:
                names = level.labels if level.labels is not None else level.indices
                members = "  ".join(
                    ("*" if idx == level.wavelet else "") + str(name)
                    for idx, name in zip(level.indices, names)
                )
                lines.append(
                    f"  {level.number:>{width}}: {members}    (squared error {level.squared_error:.3g})"
                )
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (
            f"<Factorization size={self.size} order={self.order} levels={self.n_levels} "
            f"core={self.core.shape[0]} error={self.error:.6g} relative_error={self.relative_error:.4g}>"
        )


def factorize(
    C: Any,
    order: int = 5,
    core_size: int | None = None,
    seed: int = 0,
    *,
    labels: Sequence[Any] | np.ndarray | None = None,
    candidates: str = "neighbors",
    symmetry_tolerance: float = 1e-8,
    progress: Callable[[int], None] | None = None,
    incremental: bool = True,
) -> Factorization:
    """Multiresolution matrix factorization of a symmetric matrix.

    Parameters
    ----------
    C : array-like, Zarr array, SciPy sparse matrix, or path
        The symmetric ``m x m`` matrix. A path is read with
        :func:`mmf_stream.read_matrix` (``.npy``, Zarr, Matrix Market).
    order : int, default 5
        ``k``, the number of indices each rotation mixes (2 <= k <= m).
    core_size : int, optional
        Size ``d`` of the dense core; ``m - d`` levels are computed. Defaults
        to ``order - 1`` (full depth).
    seed : int, default 0
        Seed for tie-breaking; results are deterministic for a given seed.
    labels : sequence, optional
        One unique label (int or str) per row; travels with the result.
    candidates : {"neighbors", "exhaustive"}
        ``"neighbors"``: every active index is a pivot whose tuple is itself
        and its most strongly coupled active neighbours, candidates cached
        across levels. ``"exhaustive"``: every k-subset of the active set at
        every level (tiny matrices only).
    symmetry_tolerance : float, default 1e-8
        Largest accepted ``|C - C'|`` relative to ``max |C|``.
    progress : callable, optional
        Called with the number of levels finished since its last call.
    incremental : bool, default True
        Keep the insertion state (snapshots of the compression at about 30%
        and 6% of the size, about 10% of the matrix's memory) so that
        :meth:`Factorization.insert` can extend the result.

    Returns
    -------
    Factorization

    Raises
    ------
    ValueError, TypeError
        On invalid input (see :mod:`mmf_stream._validation`).
    """
    if isinstance(C, (str, os.PathLike)):
        from mmf_stream._io import read_matrix

        C = read_matrix(C)
    V.check_choice("candidates", candidates, CANDIDATE_METHODS)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an integer, got {type(seed).__name__}")
    work = V.symmetric_matrix(C, tolerance=symmetry_tolerance)
    size = work.shape[0]
    order, core_size = V.order_and_core(order, core_size, size)
    labels_array = V.labels_for(labels, size)
    n_levels = size - core_size
    if candidates == "exhaustive":
        _check_exhaustive_cost(size, order, n_levels)
    norm = float(np.linalg.norm(work))
    fingerprint = of_matrix(work)  # before the engine consumes ``work``
    from mmf_stream._incremental import snapshot_sizes

    raw = greedy_factorize(
        work, order, n_levels, candidates=candidates, seed=int(seed), progress=progress,
        snapshot_sizes=snapshot_sizes(size, order, core_size) if incremental else (),
    )
    del work
    return Factorization(
        raw,
        order=order,
        norm=norm,
        labels=labels_array,
        metadata={"seed": int(seed), "candidates": candidates, "fingerprint": fingerprint},
    )
