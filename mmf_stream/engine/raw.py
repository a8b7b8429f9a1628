"""Plain containers the engines return: the levels and H, and the insertion state."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class RawFactorization:
    """Arrays produced by an engine (original indices)."""

    tuples: np.ndarray  # (L, k) int64
    wavelets: np.ndarray  # (L,) int64
    rotations: np.ndarray  # (L, k, k) float64
    level_errors: np.ndarray  # (L,) float64: squared Frobenius error of each level
    diagonal: np.ndarray  # (m,) float64: diagonal of the final compression
    core: np.ndarray  # (d,) int64
    core_block: np.ndarray  # (d, d) float64


@dataclass
class Snapshot:
    """The compression when ``indices`` were still active, after ``level`` levels.

    Dense results keep ``block`` (the active block of the compression, n x n);
    factored results keep ``rows`` (the rotated class means of the active
    indices, n x D): the block is ``rows @ rows.T``.
    """

    level: int
    indices: np.ndarray
    block: np.ndarray | None = None
    rows: np.ndarray | None = None

    @property
    def size(self) -> int:
        return int(self.indices.shape[0])

    @property
    def nbytes(self) -> int:
        data = self.block if self.block is not None else self.rows
        return int(self.indices.nbytes + (0 if data is None else data.nbytes))


@dataclass
class InsertionState:
    """What incremental MMF needs besides the levels (docs/math.md, section 6).

    Attributes
    ----------
    snapshots : list of Snapshot
        Shallowest first.
    final_rows : ndarray of shape (m, D) or None
        Factored results: every index's rotated class mean after all levels
        (a wavelet's row is final once it is removed). A new class with mean
        ``mu`` couples to wavelet ``s`` by ``final_rows[s] @ mu``.
    """

    snapshots: list[Snapshot] = field(default_factory=list)
    final_rows: np.ndarray | None = None

    @property
    def factored(self) -> bool:
        return self.final_rows is not None
