"""A fingerprint of the matrix a factorization was made from.

Inserting new classes into a saved factorization only makes sense if the
classes it factored are still the ones in the store: if an append updated some
of them, or the store is another one with the same labels, the reported error
would be silently wrong. A result therefore keeps, per factored index ``i``,

* ``diagonal[i] = C[i, i]`` and
* ``probe[i] = (C r)[i]`` for a fixed pseudo-random vector ``r`` (entries in
  [-1, 1), the same for every result: :func:`probe_vector`),

which together pin every row of ``C`` down up to rounding (O(m) numbers; the
check costs one product with ``C``, or ``M (M' r)`` from class means). An
insertion extends both exactly (:func:`extend`), so the fingerprint of a grown
result is that of the grown matrix.

A dense matrix at hand is checked against a fingerprint by
:func:`matrix_mismatches`: its whole diagonal (O(m), and a matrix with its rows
in another order has its diagonal entries moved) and the probe entries of at
most :data:`PROBE_CHECK_ROWS` rows (a fixed sample at large m: O(m) work per
checked row, not the O(m^2) of a whole product with ``C``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: seed of the probe vector (changing it invalidates every stored fingerprint)
PROBE_SEED = 0x6D6D66
#: relative tolerance of the check, times ``m * max|C|`` (rounding of ``C r`` is
#: about ``1e-16 m max|C|``; a changed class moves its row far more)
FINGERPRINT_RTOL = 1e-9
#: rows of a dense matrix whose probe entry ``(C r)[i]`` :func:`matrix_mismatches`
#: checks: every row up to this many, above a fixed sample of this many (a changed
#: or reordered row also moves the probe entry of every row, through its column)
PROBE_CHECK_ROWS = 512


def probe_vector(size: int) -> np.ndarray:
    """The probe ``r`` of length ``size`` (a prefix of every longer probe)."""
    return 2.0 * np.random.default_rng(PROBE_SEED).random(size) - 1.0


@dataclass(frozen=True)
class Fingerprint:
    """``diagonal`` and ``probe`` (both length m) of the factored matrix, and ``scale = max|C|``."""

    diagonal: np.ndarray
    probe: np.ndarray
    scale: float

    @property
    def size(self) -> int:
        return int(self.diagonal.shape[0])


def of_matrix(matrix: np.ndarray) -> Fingerprint:
    """Fingerprint of a dense symmetric matrix."""
    size = matrix.shape[0]
    return Fingerprint(
        diagonal=np.ascontiguousarray(np.diag(matrix), dtype=np.float64).copy(),
        probe=np.asarray(matrix @ probe_vector(size), dtype=np.float64),
        scale=max(float(matrix.max()), -float(matrix.min())) if size else 0.0,  # no m x m temporary
    )


def of_means(means: np.ndarray) -> Fingerprint:
    """Fingerprint of ``C = M M'`` from the rows of ``M`` (``C`` is not formed)."""
    size = means.shape[0]
    diagonal = np.einsum("ij,ij->i", means, means)
    return Fingerprint(
        diagonal=diagonal,
        probe=means @ (means.T @ probe_vector(size)),
        scale=float(diagonal.max()) if size else 0.0,  # |C_ij| <= sqrt(C_ii C_jj) for a Gram matrix
    )


def extend(fingerprint: Fingerprint, old: np.ndarray, block: np.ndarray) -> Fingerprint:
    """Fingerprint of ``[[C, old], [old', block]]`` from that of ``C``."""
    size, count = old.shape
    r = probe_vector(size + count)
    head, tail = r[:size], r[size:]
    return Fingerprint(
        diagonal=np.concatenate([fingerprint.diagonal, np.diag(block)]),
        probe=np.concatenate([fingerprint.probe + old @ tail, old.T @ head + block @ tail]),
        scale=max(fingerprint.scale, float(np.max(np.abs(old), initial=0.0)), float(np.max(np.abs(block)))),
    )


def mismatches(fingerprint: Fingerprint, diagonal: np.ndarray, probe: np.ndarray,
               rows: np.ndarray | None = None) -> np.ndarray:
    """Indices where the matrix at hand differs from the fingerprinted one (empty: same matrix).

    ``diagonal`` and ``probe`` are ``C[i, i]`` and ``(C r)[i]`` of the matrix at
    hand (rows in the factorization's index order). Indices whose diagonal
    entry moved are returned when there are any (they name the changed
    classes); otherwise those whose probe entry moved. With ``rows`` (sorted
    indices), ``probe`` holds the probe entries of those rows only.
    """
    size = fingerprint.size
    rows = np.arange(size) if rows is None else np.asarray(rows, dtype=np.int64)
    if diagonal.shape != (size,) or probe.shape != rows.shape:
        raise ValueError(f"fingerprint is for {size} classes, got {diagonal.shape[0]}")
    scale = max(fingerprint.scale, float(np.max(np.abs(diagonal), initial=0.0)), np.finfo(np.float64).tiny)
    diagonal_moved = np.abs(diagonal - fingerprint.diagonal) > FINGERPRINT_RTOL * scale
    if diagonal_moved.any():  # a changed class moves its own diagonal entry: name those
        return np.flatnonzero(diagonal_moved)
    # same diagonal: a change of one row also moves every probe entry through its column
    probe_moved = np.abs(probe - fingerprint.probe[rows]) > FINGERPRINT_RTOL * max(size, 1) * scale
    return rows[probe_moved]


def probe_rows(size: int, count: int = PROBE_CHECK_ROWS) -> np.ndarray:
    """The rows whose probe entry :func:`matrix_mismatches` checks: all of them up to
    ``count``, else a fixed sorted sample of ``count`` (the same for every call)."""
    if size <= count:
        return np.arange(size)
    return np.sort(np.random.default_rng(PROBE_SEED).choice(size, size=count, replace=False))


def matrix_mismatches(fingerprint: Fingerprint, matrix: np.ndarray, *, rows: int = PROBE_CHECK_ROWS) -> np.ndarray:
    """Indices where a dense matrix differs from the fingerprinted one (empty: the same matrix).

    Parameters
    ----------
    fingerprint : Fingerprint
        Of the factored matrix.
    matrix : ndarray of shape (m, m)
        The matrix at hand, rows in the factorization's index order (an
        in-memory or memory-mapped array).
    rows : int
        Probe entries checked (:func:`probe_rows`); the diagonal is checked whole.

    Returns
    -------
    ndarray of int
        As :func:`mismatches`: the indices whose diagonal entry moved, else the
        checked rows whose probe entry moved.

    Raises
    ------
    ValueError
        If ``matrix`` is not ``m x m`` for the fingerprint's ``m``.
    """
    size = fingerprint.size
    if tuple(matrix.shape) != (size, size):
        raise ValueError(f"fingerprint is for {size} classes, got a matrix of shape {tuple(matrix.shape)}")
    picked = probe_rows(size, rows)
    # the factored matrix is the symmetric part (C + C')/2 of the input: its rows are half row plus column
    lines = (np.asarray(matrix[picked], dtype=np.float64) + np.asarray(matrix[:, picked], dtype=np.float64).T) / 2
    diagonal = np.asarray(np.diagonal(matrix), dtype=np.float64)
    return mismatches(fingerprint, diagonal, lines @ probe_vector(size), rows=picked)


def reordered(fingerprint: Fingerprint, diagonal: np.ndarray) -> bool:
    """Whether ``diagonal`` holds the fingerprinted diagonal's entries in another order (and
    not in this one): the mark of a matrix with its rows and columns permuted."""
    scale = max(fingerprint.scale, np.finfo(np.float64).tiny)
    same_values = diagonal.shape == fingerprint.diagonal.shape and bool(np.all(
        np.abs(np.sort(diagonal) - np.sort(fingerprint.diagonal)) <= FINGERPRINT_RTOL * scale))
    return same_values and bool(np.any(np.abs(diagonal - fingerprint.diagonal) > FINGERPRINT_RTOL * scale))
