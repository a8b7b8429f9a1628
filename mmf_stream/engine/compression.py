"""Compressions: what the level loops work on, behind one interface.

A compression holds the current ``C_l`` of docs/math.md, section 1 over
*positions* (the level loop maps positions to original indices) and answers
what the loop asks:

``block(t)``, ``gram(t)``
    a tuple's ``k x k`` block ``C[t, t]`` and its Gram over the active set
    ``C[t, S] C[S, t]``;
``rebuild(pivots, ...)``
    neighbour candidates of pivots (the pivot and its most strongly coupled
    active positions), scored, written into the candidate cache;
``rotate(t, rotation, pos)``
    apply a level; returns the wavelet, its diagonal, its exact squared row
    energy over the active set and its rotated column (for cache down-dates);
``remove(s, column)``
    take the wavelet out of the active set;
``compact(keep)``, ``active_block()``, ``snapshot(level)``; ``index`` maps
positions to original indices.

Staged runs also ask for ``features()`` (rows to cluster), ``cluster_inputs``
(a cluster's ``A`` and ``P``) and ``apply_stage`` (every cluster's levels, in
a fixed order, with each wavelet's exact row energy), and ``prepare_greedy``
before the final greedy levels.

Implementations:

* :class:`DenseCompression`: an ``m x m`` buffer, any symmetric matrix.
* :class:`FactoredCompression`: ``C = M M'`` from class means ``M`` (m x D),
  docs/math.md, section 9: rotations act on rows of ``M``, ``W = M_S' M_S``
  loses one rank-one term per wavelet; ``C`` is never formed.
* :class:`GramCompression`: one staged cluster, ``A`` and ``P`` explicit.
"""

from __future__ import annotations

import numpy as np

from mmf_stream.engine import gram_kernels as GK
from mmf_stream.engine import kernels as K
from mmf_stream.engine import row_blocks as P
from mmf_stream.engine.options import DEFAULT_OPTIONS
from mmf_stream.engine.raw import Snapshot

#: factored candidates are rebuilt in batches of this many pivots (bounds the
#: ``batch x m`` coupling rows held at once)
_PIVOT_BATCH = 256
#: rows per block when rows are moved or sketched in place (bounds the temporary copies)
_COMPACT_BLOCK = 65536


class DenseCompression:
    """The whole compression as a dense ``m x m`` buffer (consumed in place)."""

    factored = False

    def __init__(self, matrix: np.ndarray) -> None:
        self._buffer = matrix.reshape(-1)
        self.matrix = matrix
        self.n = matrix.shape[0]
        self.active = np.ones(self.n, dtype=np.bool_)
        self.energy = K.row_energies(matrix)
        self.index = np.arange(self.n, dtype=np.int64)  # position -> original index

    # ------------------------------------------------------------ greedy loop
    def block(self, t: np.ndarray) -> np.ndarray:
        return K.tuple_block(self.matrix, t)

    def gram(self, t: np.ndarray) -> np.ndarray:
        return K.tuple_gram(self.matrix, t)

    def rebuild(self, pivots, k, tuples, grams, directions, scores, iterations, exclude=None) -> None:
        """Neighbour candidates of ``pivots`` (energy rule; positions ``exclude`` are not neighbours
        unless too few others are active)."""
        _rebuild_dense(self.matrix, K.neighbour_scale(self.energy, exclude), self.active, pivots, k, tuples, grams,
                       directions, scores, iterations)

    def identity_lists(self, pivots: np.ndarray, count: int) -> np.ndarray:
        """Per pivot, the ``count`` active positions of largest ``|C[p, j]| / sqrt(C[j, j])``,
        in pooled order (:func:`~mmf_stream.engine.kernels.pool_lists`)."""
        scale = K.neighbour_scale(np.where(self.active, np.diagonal(self.matrix), 0.0))
        out = np.empty((pivots.shape[0], count), dtype=np.int64)
        for start in range(0, pivots.shape[0], _PIVOT_BATCH):
            batch = pivots[start : start + _PIVOT_BATCH]
            lists = K.identity_lists(self.matrix[batch], scale, self.active, batch, count)
            K.pool_lists(K.list_blocks(self.matrix, batch, lists), lists, np.arange(batch.shape[0]))
            out[start : start + batch.shape[0]] = lists
        return out

    def tuple_inputs(self, tuples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Each tuple's Gram over the active set and its block."""
        return K.dense_tuple_inputs(self.matrix, tuples)

    def rotate(self, t, rotation, pos):
        return _apply_level(self.matrix, self.energy, self.active, t, rotation, pos)

    def remove(self, s: int, column: np.ndarray) -> None:
        K.remove_index(self.matrix, self.energy, self.active, s)

    def compact(self, keep: np.ndarray) -> None:
        self.n = K.compact_square(self._buffer, self.n, keep)
        self.matrix = self._buffer[: self.n * self.n].reshape(self.n, self.n)
        self.energy = self.energy[keep]
        self.index = self.index[keep]
        self.active = np.ones(self.n, dtype=np.bool_)

    def active_block(self) -> np.ndarray:
        live = np.flatnonzero(self.active)
        return self.matrix[np.ix_(live, live)].copy()

    def snapshot(self, level: int) -> Snapshot:
        return Snapshot(level, self.index[self.active].copy(), block=self.active_block())

    def prepare_greedy(self, explicit_max: int) -> None:
        """Before greedy levels: fresh row energies (``explicit_max`` is for factored compressions)."""
        self.energy = K.row_energies(self.matrix)

    # ---------------------------------------------------------------- stages
    def features(self, width: int, rng: np.random.Generator) -> np.ndarray:
        sketch = rng.standard_normal((self.n, width))
        if self.active.all():  # the usual case (stages compact): no copy of the matrix
            return P.stable_matmul(self.matrix, sketch)
        sketch[~self.active] = 0.0
        return P.stable_matmul(self.matrix[self.active], sketch)

    def cluster_inputs(self, members: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return P.dense_cluster_inputs(self.matrix[members], members)

    def apply_stage(self, groups: list[np.ndarray], results: list) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Apply a stage's levels (clusters in the given order) and take its wavelets out.

        The rotations act on rows, then on columns row by row (each row stays
        in cache): ``Q C Q'`` in O(k^2 m) per level, computed exactly as the
        Dask engine computes it on its blocks of rows. Every wavelet's exact
        row energy follows from the result (docs/math.md, section 4). The wavelets' rows and columns are left in place: the
        caller compacts right after. Returns ``(tuples, wavelets, diagonal,
        squared row energy)`` in positions, in the recorded order.
        """
        tuples = np.concatenate([group[result.tuples] for group, result in zip(groups, results)])
        rotations = np.concatenate([result.rotations for result in results])
        wavelets = np.concatenate([group[result.wavelets] for group, result in zip(groups, results)])
        K.apply_rotations(self.matrix, tuples, rotations, False)
        GK.rotate_columns(self.matrix, tuples, rotations)
        recorded = np.arange(wavelets.shape[0], dtype=np.int64)
        diagonal, row_energy = GK.ordered_row_energy(self.matrix, wavelets, recorded, self.active, wavelets)
        self.active[wavelets] = False
        return tuples, wavelets, diagonal, row_energy


class FactoredCompression:
    """``C = M M'`` from the rows of ``M`` (class means, m x D); ``C`` is never formed.

    With at most ``explicit_max`` positions (the end of a staged run, small
    inputs) the compression also holds ``A = X X'`` and ``P = X W X'`` for its
    rows ``X`` (a :class:`GramCompression`), so that a level costs O(k n + n^2)
    instead of rebuilding coupling rows through ``W`` (O(n D) a candidate).
    """

    factored = True

    def __init__(self, means: np.ndarray, explicit_max: int = 0, gram_block: int = DEFAULT_OPTIONS.gram_block) -> None:
        self.rows = means  # consumed: rotated in place
        self.n = means.shape[0]
        self.active = np.ones(self.n, dtype=np.bool_)
        self.index = np.arange(self.n, dtype=np.int64)  # position -> original index
        #: every original index's row once it left the active set (its final row). Until the first
        #: compaction this is the working buffer itself (position == original index): a row that
        #: leaves is already where its final row goes, so no second m x D array is held
        self.final_rows = means
        self.explicit_max = explicit_max
        self.explicit: GramCompression | None = None
        self._maybe_explicit()
        if self.explicit is None:
            self.inner = P.blocked_gram(means, gram_block)  # W = M_S' M_S
            self.energy = np.einsum("ij,ij->i", means @ self.inner, means)

    def _maybe_explicit(self) -> None:
        """Hold ``A = X X'`` and ``P = X W X' = A A`` (every row active) once small enough."""
        if self.explicit is None and self.n <= self.explicit_max and bool(self.active.all()):
            block = self.rows @ self.rows.T
            self.explicit = GramCompression(block, block @ block)
            self.active = self.explicit.active
            self.energy = self.explicit.energy

    def block(self, t: np.ndarray) -> np.ndarray:
        if self.explicit is not None:
            return self.explicit.block(t)
        x = self.rows[t]
        return x @ x.T

    def gram(self, t: np.ndarray) -> np.ndarray:
        if self.explicit is not None:
            return self.explicit.gram(t)
        x = self.rows[t]
        return x @ self.inner @ x.T

    def rebuild(self, pivots, k, tuples, grams, directions, scores, iterations, exclude=None) -> None:
        if self.explicit is not None:
            self.explicit.rebuild(pivots, k, tuples, grams, directions, scores, iterations, exclude)
            return
        pivots = np.asarray(pivots, dtype=np.int64)
        scale = K.neighbour_scale(self.energy, exclude)
        for start in range(0, pivots.shape[0], _PIVOT_BATCH):
            batch = pivots[start : start + _PIVOT_BATCH]
            coupling = self.rows[batch] @ self.rows.T
            chosen = GK.neighbour_tuples(coupling, scale, self.active, batch, k)
            x = self.rows[chosen]  # (b, k, D)
            blocks = np.ascontiguousarray(x @ x.transpose(0, 2, 1))
            batch_grams = np.ascontiguousarray((x @ self.inner) @ x.transpose(0, 2, 1))
            batch_directions = np.empty((batch.shape[0], k))
            batch_scores = np.empty(batch.shape[0])
            GK.score_candidates(batch_grams, blocks, iterations, batch_directions, batch_scores)
            tuples[batch] = chosen
            grams[batch] = batch_grams
            directions[batch] = batch_directions
            scores[batch] = batch_scores

    def identity_lists(self, pivots: np.ndarray, count: int) -> np.ndarray:
        """Per pivot, the ``count`` active positions of largest cosine ``|x_p . x_j| / (|x_p| |x_j|)``,
        in pooled order (:func:`~mmf_stream.engine.kernels.pool_lists`)."""
        if self.explicit is not None:
            return self.explicit.identity_lists(pivots, count)
        norms = np.where(self.active, np.einsum("ij,ij->i", self.rows, self.rows), 0.0)
        scale = K.neighbour_scale(norms)
        out = np.empty((pivots.shape[0], count), dtype=np.int64)
        for start in range(0, pivots.shape[0], _PIVOT_BATCH):
            batch = pivots[start : start + _PIVOT_BATCH]
            lists = K.identity_lists(self.rows[batch] @ self.rows.T, scale, self.active, batch, count)
            members = np.concatenate([batch[:, None], np.where(lists >= 0, lists, batch[:, None])], axis=1)
            x = self.rows[members]  # (b, count + 1, D)
            K.pool_lists(x @ x.transpose(0, 2, 1), lists, np.arange(batch.shape[0]))
            out[start : start + batch.shape[0]] = lists
        return out

    def tuple_inputs(self, tuples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Each tuple's Gram over the active set and its block."""
        if self.explicit is not None:
            return self.explicit.tuple_inputs(tuples)
        x = self.rows[tuples]  # (b, k, D)
        blocks = np.ascontiguousarray(x @ x.transpose(0, 2, 1))
        grams = np.ascontiguousarray((x @ self.inner) @ x.transpose(0, 2, 1))
        return grams, blocks

    def rotate(self, t, rotation, pos):
        self.rows[t] = rotation @ self.rows[t]
        if self.explicit is not None:
            return self.explicit.rotate(t, rotation, pos)
        x = self.rows[t]
        self.energy[t] = np.einsum("ij,ij->i", x @ self.inner, x)
        s = int(t[pos])
        row = self.rows[s]
        diagonal = float(row @ row)
        row_energy = float(self.energy[s]) - diagonal * diagonal
        column = self.rows @ row
        column[~self.active] = 0.0
        return s, diagonal, max(row_energy, 0.0), column

    @property
    def _shares_final(self) -> bool:
        """The working rows are still the final rows' buffer (no compaction yet)."""
        return self.rows is self.final_rows

    def _leave(self, positions: int | np.ndarray, rows: np.ndarray) -> None:
        """Record ``rows`` (the rows at ``positions``) as final and clear them from the working rows."""
        if self._shares_final:  # already in place; inactive rows are never read
            return
        self.final_rows[self.index[positions]] = rows
        self.rows[positions] = 0.0

    def remove(self, s: int, column: np.ndarray) -> None:
        row = self.rows[s].copy()
        self._leave(s, row)
        if self.explicit is not None:  # P is down-dated instead; W is recomputed when needed
            self.explicit.remove(s, column)
            return
        self.inner -= np.outer(row, row)
        self.active[s] = False
        self.energy -= column * column
        np.maximum(self.energy, 0.0, out=self.energy)
        self.energy[s] = 0.0

    def compact(self, keep: np.ndarray) -> None:
        if self._shares_final:
            self.rows = self.rows[keep]  # a new buffer: the old one keeps the final rows
        else:  # in place: ``keep`` is increasing, so each row moves down or stays
            count = keep.shape[0]
            for start in range(0, count, _COMPACT_BLOCK):
                stop = min(count, start + _COMPACT_BLOCK)
                self.rows[start:stop] = self.rows[keep[start:stop]]
            self.rows = self.rows[:count]
        self.index = self.index[keep]
        self.n = keep.shape[0]
        if self.explicit is not None:
            self.explicit.compact(keep)
            self.active = self.explicit.active
            self.energy = self.explicit.energy
            return
        self.energy = self.energy[keep]
        self.active = np.ones(self.n, dtype=np.bool_)
        self._maybe_explicit()

    def active_block(self) -> np.ndarray:
        x = self.rows[self.active]
        return x @ x.T

    def snapshot(self, level: int) -> Snapshot:
        return Snapshot(level, self.index[self.active].copy(), rows=self.rows[self.active].copy())

    def prepare_greedy(self, explicit_max: int) -> None:
        """Before greedy levels: fresh ``W`` and energies; explicit ``A``, ``P`` if at most
        ``explicit_max`` positions are active."""
        if self.explicit is not None:
            return
        if int(np.count_nonzero(self.active)) <= explicit_max:
            if not self.active.all():
                self.compact(np.flatnonzero(self.active))
            self.explicit_max = max(self.explicit_max, explicit_max)
            self._maybe_explicit()
            return
        live = self.rows[self.active]
        self.inner = live.T @ live
        self.energy = np.einsum("ij,ij->i", self.rows @ self.inner, self.rows)
        self.energy[~self.active] = 0.0

    # ---------------------------------------------------------------- stages
    def features(self, width: int, rng: np.random.Generator) -> np.ndarray:
        live = np.flatnonzero(self.active)
        if self.rows.shape[1] <= width:
            return self.rows[live]
        sketch = rng.standard_normal((self.rows.shape[1], width))
        out = np.empty((live.shape[0], width))
        for start in range(0, live.shape[0], _COMPACT_BLOCK):  # blocks: no copy of every active row
            stop = min(live.shape[0], start + _COMPACT_BLOCK)
            out[start:stop] = P.stable_matmul(self.rows[live[start:stop]], sketch)  # rows independent of the others
        return out

    def cluster_inputs(self, members: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return P.factored_cluster_inputs(self.rows[members], self.inner)

    def apply_stage(self, groups: list[np.ndarray], results: list) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Apply a stage's levels cluster by cluster (in the given order) and take its wavelets out.

        Returns ``(tuples, wavelets, diagonal, squared row energy)`` in positions, in the recorded order.
        """
        parts = [self._apply_cluster(group, result) for group, result in zip(groups, results)]
        return tuple(np.concatenate(values) for values in zip(*parts))

    def _apply_cluster(self, members: np.ndarray, result):
        wavelets = members[result.wavelets]
        tuples = members[result.tuples]
        if not wavelets.shape[0]:
            return tuples, wavelets, np.empty(0), np.empty(0)
        mixing = result.mixing(members.shape[0])
        diagonal, row_energy = self.apply_cluster(members, mixing, wavelets)
        return tuples, wavelets, diagonal, row_energy

    def apply_cluster(self, members: np.ndarray, mixing: np.ndarray, wavelets: np.ndarray):
        """Rows ``members`` mixed by ``mixing`` (the cluster's ``Q_q ... Q_1``), then its
        wavelets leave; returns their diagonal and exact squared row energies."""
        self.rows[members] = P.stable_matmul(mixing, self.rows[members])
        x = self.rows[wavelets]
        energies = P.wavelet_energies(x, self.inner)
        inner = P.stable_gram(x)
        diagonal = np.diagonal(inner).copy()
        self.inner -= P.stable_cogram(x)
        self._leave(wavelets, x)
        self.active[wavelets] = False
        return diagonal, _sequential_row_energy(energies, inner)


class GramCompression:
    """One staged cluster: ``A = C[c, c]`` and ``P = C[c, S] C[S, c]`` held explicitly."""

    factored = False

    def __init__(self, block: np.ndarray, gram: np.ndarray) -> None:
        self.matrix = np.ascontiguousarray(block, dtype=np.float64)
        self.gram_matrix = np.ascontiguousarray(gram, dtype=np.float64)
        self.n = self.matrix.shape[0]
        self.active = np.ones(self.n, dtype=np.bool_)
        self.energy = np.maximum(np.diagonal(self.gram_matrix).copy(), 0.0)
        self.index = np.arange(self.n, dtype=np.int64)

    def block(self, t: np.ndarray) -> np.ndarray:
        return K.tuple_block(self.matrix, t)

    def gram(self, t: np.ndarray) -> np.ndarray:
        return K.tuple_block(self.gram_matrix, t)

    def rebuild(self, pivots, k, tuples, grams, directions, scores, iterations, exclude=None) -> None:
        GK.rebuild_from_gram(self.matrix, self.gram_matrix, K.neighbour_scale(self.energy, exclude), self.active,
                             np.asarray(pivots, np.int64), k, tuples, grams, directions, scores, iterations)

    def identity_lists(self, pivots: np.ndarray, count: int) -> np.ndarray:
        """Per pivot, the ``count`` active positions of largest ``|A[p, j]| / sqrt(A[j, j])``,
        in pooled order (:func:`~mmf_stream.engine.kernels.pool_lists`)."""
        scale = K.neighbour_scale(np.where(self.active, np.diagonal(self.matrix), 0.0))
        pivots = np.asarray(pivots, dtype=np.int64)
        lists = K.identity_lists(self.matrix[pivots], scale, self.active, pivots, count)
        K.pool_lists(K.list_blocks(self.matrix, pivots, lists), lists, np.arange(pivots.shape[0]))
        return lists

    def tuple_inputs(self, tuples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Each tuple's Gram over the active set and its block."""
        return GK.gram_tuple_inputs(self.matrix, self.gram_matrix, tuples)

    def rotate(self, t, rotation, pos):
        new_rows = GK.rotate_symmetric(self.matrix, t, rotation)
        GK.rotate_symmetric(self.gram_matrix, t, rotation)
        for a in range(t.shape[0]):
            self.energy[t[a]] = max(self.gram_matrix[t[a], t[a]], 0.0)
        s = int(t[pos])
        diagonal = float(self.matrix[s, s])
        row_energy = float(self.gram_matrix[s, s]) - diagonal * diagonal
        return s, diagonal, max(row_energy, 0.0), new_rows[pos].copy()

    def remove(self, s: int, column: np.ndarray) -> None:
        GK.remove_from_gram(self.matrix, self.gram_matrix, self.energy, self.active, s, column)

    def compact(self, keep: np.ndarray) -> None:
        self.matrix = np.ascontiguousarray(self.matrix[np.ix_(keep, keep)])
        self.gram_matrix = np.ascontiguousarray(self.gram_matrix[np.ix_(keep, keep)])
        self.energy = self.energy[keep]
        self.index = self.index[keep]
        self.n = keep.shape[0]
        self.active = np.ones(self.n, dtype=np.bool_)

    def active_block(self) -> np.ndarray:
        live = np.flatnonzero(self.active)
        return self.matrix[np.ix_(live, live)].copy()


def _sequential_row_energy(energies: np.ndarray, inner: np.ndarray) -> np.ndarray:
    """Exact ``r_i^2`` of wavelets removed in order ``0..q-1`` (docs/math.md, section 4).

    ``energies[i]`` is the squared norm of wavelet ``i``'s row over the active
    set before any of them left; ``inner[i, j] = C[s_i, s_j]``. Wavelet ``i``
    leaves after ``0..i-1``, so its row energy excludes those columns and itself.
    """
    lower = np.tril(inner * inner)
    return np.maximum(energies - lower.sum(axis=1), 0.0)


# ----------------------------------------------------------------- dense kernels
from numba import njit  # noqa: E402


@njit(cache=True, inline="always")
def _build_candidate(matrix, scale, active, pivot, k, starts, max_iter):
    neighbours = K.nearest_neighbours(matrix[pivot], scale, active, pivot, k - 1)
    t = np.empty(k, dtype=np.int64)
    t[0] = pivot
    for i in range(k - 1):  # loops, not array assignment: much less to compile
        t[1 + i] = neighbours[i]
    gram = K.tuple_gram(matrix, t)
    block = K.tuple_block(matrix, t)
    direction, energy = K.wavelet_direction(gram, block, starts, max_iter)
    return t, gram, direction, max(energy, 0.0)


@njit(cache=True)
def _rebuild_dense(matrix, scale, active, pivots, k, tuples, grams, directions, scores, iterations):
    for p in pivots:
        # int64, not literal, arguments: wavelet_direction is compiled once
        t, gram, direction, value = _build_candidate(matrix, scale, active, p, k, np.int64(1), np.int64(iterations))
        for a in range(k):
            tuples[p, a] = t[a]
            directions[p, a] = direction[a]
            for b in range(k):
                grams[p, a, b] = gram[a, b]
        scores[p] = value


@njit(cache=True)
def _apply_level(matrix, energy, active, t, rotation, pos):
    """Rotate tuple ``t``; return (wavelet position, its diagonal, its squared row
    energy over the active set, its rotated column)."""
    old_rows = np.empty((t.shape[0], matrix.shape[1]))
    for a in range(t.shape[0]):
        for j in range(matrix.shape[1]):
            old_rows[a, j] = matrix[t[a], j]
    new_rows = K.rotate_tuple_rows(old_rows, t, rotation)
    K.write_tuple_rows(matrix, 0, t, new_rows)
    K.update_row_energy(energy, old_rows, new_rows, t, active)
    s = t[pos]
    row = new_rows[pos]
    total = 0.0
    for j in range(row.shape[0]):
        if active[j] and j != s:
            total += row[j] * row[j]
    return s, row[s], total, row.copy()
