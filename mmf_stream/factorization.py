"""The factorization: the result object (:class:`Factorization`, its :class:`Level` s, insertion and
removal reports). :mod:`mmf_stream.api` makes one (``factorize``, ``load``)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mmf_stream import validation as V
from mmf_stream.store.fingerprint import extend, probe_vector
from mmf_stream.store.result_format import StoredFactorization, save_factorization
from mmf_stream.engine import insertion as I
from mmf_stream.engine import kernels as K
from mmf_stream.engine import knockout as KO
from mmf_stream.engine.options import EngineOptions, resolve_options
from mmf_stream.engine.raw import InsertionState, RawFactorization

@dataclass
class InsertionReport:
    """What an insertion did.

    Attributes
    ----------
    labels : list
        Labels (or indices) of the inserted classes.
    indices : list of int
        Their row indices in the new factorization.
    cut_level : int
        Levels ``1..cut_level`` were kept; later levels were recomputed.
    repaired : bool
        Whether the tail was re-run from the shallowest snapshot.
    changed_levels : int
        Number of levels (after the cut) whose tuple differs from before.
    wavelet_levels : list of int or None
        For each inserted index, the level at which it became a wavelet
        (None: it is in the core).
    partners : list of list
        For each inserted index, the other members of its wavelet level's tuple
        (the classes it is composed with).
    error_added : float
        New error minus old error (Frobenius; may be negative after a repair).
    novelty : list of float
        For each inserted index, in [0, 1]: how late it becomes a wavelet
        among the recomputed levels (``(level - cut) / (levels - cut)``; 1 for
        the core). Classes composed of existing ones become wavelets early
        (low novelty); distinct classes survive to the last levels or the core
        (high novelty).
    drift : float
        Energy dropped in kept levels above the shallow cut since the last batch
        factorization, relative to the error^2; a batch refresh is advisable
        above about 0.05.
    """

    labels: list
    indices: list[int]
    cut_level: int
    repaired: bool
    changed_levels: int
    wavelet_levels: list[int | None]
    partners: list[list]
    error_added: float
    novelty: list[float] = field(default_factory=list)
    drift: float = 0.0


@dataclass
class RemovalReport:
    """What a knock-out (:meth:`Factorization.remove`) did.

    Attributes
    ----------
    labels : list
        Labels (or indices) of the removed classes.
    indices : list of int
        Their indices in the factorization they were removed from.
    first_level : int
        Levels ``1..first_level`` kept their tuples and rotations.
    cut_level : int
        Levels after this one (old numbering) were recomputed, as for an insertion.
    modified_levels : int
        Levels whose rotation changed (including the dropped ones).
    dropped_levels : int
        Levels before the cut that disappeared (no member left).
    rotation_only : int
        Levels before the cut whose wavelet was removed: they stay as rotations of their remaining
        members, without a wavelet (:attr:`Level.wavelet` is None), so that every later level
        still sees the rows it was chosen for. Includes the woken levels.
    woken : int
        Wavelets before the cut whose error the removal raised most, taken back into the recomputed
        levels (their levels became rotation-only; ``EngineOptions.removal_wake_budget``).
    error_change : float
        New error minus old error (Frobenius).
    """

    labels: list
    indices: list[int]
    first_level: int
    modified_levels: int
    dropped_levels: int
    cut_level: int
    rotation_only: int
    error_change: float
    woken: int = 0


def _check_new_labels(factorization: Any, labels: Any, count: int) -> np.ndarray | None:
    if factorization.labels is None:
        if labels is not None:
            raise ValueError("this factorization has no labels; insert without labels")
        return None
    if labels is None:
        raise ValueError("this factorization has labels; give a label for each new class")
    new = V.labels_for(labels, count)
    if (new.dtype.kind == "U") != (factorization.labels.dtype.kind == "U"):
        raise TypeError("new labels must be of the same kind (int or str) as the existing ones")
    clash = set(new.tolist()) & set(factorization.labels.tolist())
    if clash:
        raise ValueError(f"label {sorted(clash)[0]!r} is already in the factorization")
    return np.concatenate([factorization.labels, new])


def _split_columns(columns: Any, diagonals: Any, size: int) -> tuple[np.ndarray, np.ndarray]:
    array = np.asarray(columns, dtype=np.float64)
    if array.ndim == 1:
        array = array[:, None]
    if array.ndim != 2:
        raise ValueError(f"columns must be 2-D (size x b or (size + b) x b), got shape {array.shape}")
    count = array.shape[1]
    if count < 1:
        raise ValueError("columns holds no new index")
    if array.shape[0] == size + count:
        if diagonals is not None:
            given = np.asarray(diagonals, dtype=np.float64)
            if given.shape != (count, count) or not np.allclose(given, array[size:]):
                raise ValueError("columns already holds the block among the new indices; leave diagonals out")
        old, block = array[:size], array[size:]
    elif array.shape[0] == size:
        if diagonals is None:
            raise ValueError(f"give the {count} x {count} block among the new indices (diagonals)")
        block = np.asarray(diagonals, dtype=np.float64)
        if block.ndim == 1 and block.shape == (1,):
            block = block.reshape(1, 1)
        if block.shape != (count, count):
            raise ValueError(f"diagonals must be the {count} x {count} block among the new indices, got shape {block.shape}")
        old = array
    else:
        raise ValueError(f"columns must have {size} rows (or {size + count} with the new block), got {array.shape[0]}")
    if not (np.all(np.isfinite(old)) and np.all(np.isfinite(block))):
        raise ValueError("new columns have non-finite entries (NaN or Inf)")
    asymmetry = np.max(np.abs(block - block.T)) if count > 1 else 0.0
    if asymmetry > 1e-8 * max(1.0, np.max(np.abs(block))):
        raise ValueError(f"the block among the new indices is not symmetric (largest asymmetry {asymmetry:.3g})")
    return np.ascontiguousarray(old), 0.5 * (block + block.T)


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
    wavelet : int or None
        The index ``s_l`` that becomes a wavelet here and takes no part in
        later levels; None for a *rotation-only* level, whose wavelet class
        was removed (:meth:`Factorization.remove`): it still rotates its
        remaining members and drops nothing.
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
    wavelet: int | None
    rotation: np.ndarray
    squared_error: float
    labels: np.ndarray | None = None

    @property
    def wavelet_label(self):
        """Label of the wavelet index (``None`` without labels or without a wavelet)."""
        if self.labels is None or self.wavelet is None:
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
        insertion_state: InsertionState | None = None,
    ) -> None:
        self._raw = raw
        self.order = int(order)
        self.size = int(raw.diagonal.shape[0])
        self.norm = float(norm)
        self.labels = labels
        self.metadata = dict(metadata or {})
        self.insertion_state = insertion_state if insertion_state is not None else InsertionState()
        self._levels: tuple[Level, ...] | None = None

    @property
    def factored(self) -> bool:
        """Whether this result was made from class means (``C = M M'``): it inserts from means."""
        return self.metadata.get("input") == "means" or self.insertion_state.factored

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
                    wavelet=int(self._raw.wavelets[i]) if self._raw.wavelets[i] >= 0 else None,
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
        """The :class:`~mmf_stream.store.fingerprint.Fingerprint` of the factored matrix
        (its diagonal and a fixed random probe ``C r``), used to check that a
        class store still holds the factored classes before inserting; None for
        results saved by versions without it."""
        return self.metadata.get("fingerprint")

    # -------------------------------------------------------------- insertion
    @property
    def insertion_report(self):
        """The :class:`InsertionReport` of the insertion that made this result (None for batch)."""
        return self.metadata.get("insertion_report")

    def insert(self, column: Any = None, diagonal: float | None = None, label: Any = None, *, mean: Any = None,
               repair: bool | None = None, options: EngineOptions | dict | None = None) -> Factorization:
        """Factorization of ``[[C, column], [column', diagonal]]`` (incremental MMF).

        ``self`` is not modified. The result's :attr:`insertion_report` says
        which levels changed, where the new index landed, the error it added
        and its novelty.

        Parameters
        ----------
        column : array of shape (size,)
            Couplings of the new class with the existing ones (dense results).
        diagonal : float
            Its own entry (for a class covariance: ``||mu_new||^2``).
        label : optional
            Its label (required when the factorization has labels).
        mean : array of shape (D,), optional
            Factored results (made from class means): the new class's mean
            alone; ``column`` and ``diagonal`` are then left out.
        repair : bool, optional
            Re-run the levels from the shallow snapshot (costlier, lower error).
            By default every :meth:`repair_interval`-th insertion does.
        options : EngineOptions or dict, optional
            Policy numbers (:class:`~mmf_stream.engine.EngineOptions`).
        """
        labels = None if label is None else [label]
        if mean is not None:
            if column is not None or diagonal is not None:
                raise ValueError("give either mean= (factored results) or column and diagonal, not both")
            vector = np.asarray(mean)
            if vector.ndim != 1:
                raise ValueError(f"mean must be 1-D (one class), got shape {vector.shape}")
            return self.insert_many(means=vector[None, :], labels=labels, repair=repair, options=options)
        if column is None or diagonal is None:
            raise ValueError("give the new column and diagonal (or mean= for a factored result)")
        column_array = np.asarray(column, dtype=np.float64) if np.ndim(column) else None
        if column_array is None or column_array.ndim != 1:
            raise ValueError(f"column must be 1-D with {self.size} entries")
        return self.insert_many(
            column_array[:, None], np.array([[float(np.asarray(diagonal, dtype=np.float64))]]), labels,
            repair=repair, options=options,
        )

    def insert_many(
        self, columns: Any = None, diagonals: Any = None, labels: Sequence[Any] | None = None, *,
        means: Any = None, repair: bool | None = None, options: EngineOptions | dict | None = None,
    ) -> Factorization:
        """Insert ``b`` new indices in one pass.

        Parameters
        ----------
        columns : array of shape (size + b, b) or (size, b)
            The new columns (dense results). With ``size + b`` rows, the last
            ``b`` rows are the ``b x b`` block among the new indices.
        diagonals : array of shape (b, b), optional
            The block among the new indices, when ``columns`` has ``size`` rows
            (a length-``b`` vector is accepted only for ``b = 1``).
        labels : sequence of length b, optional
            Required when the factorization has labels.
        means : array of shape (b, D), optional
            Factored results: the new classes' means alone (instead of columns).
        repair : bool, optional
            Force (True) or skip (False) re-running from the shallow snapshot;
            by default it runs for blocks of :meth:`repair_interval` or more
            and every :meth:`repair_interval` insertions.
        options : EngineOptions or dict, optional
            Policy numbers (:class:`~mmf_stream.engine.EngineOptions`).
        """
        opts = resolve_options(options if options is not None else self.metadata.get("options"))
        state = self.insertion_state
        if not state.snapshots:
            version = self.metadata.get("format_version")
            where = f" (loaded from format version {version})" if version is not None and version < 2 else ""
            raise ValueError(
                f"this factorization has no insertion state{where}; factor the matrix again "
                "with this version (factorize(..., incremental=True)) to insert into it"
            )
        seed = int(self.metadata.get("seed") or 0)
        if means is not None:
            if columns is not None or diagonals is not None:
                raise ValueError("give either means= (factored results) or columns, not both")
            if not state.factored:
                raise ValueError("this factorization was made from a dense matrix; insert columns, not means "
                                 "(factor the class means with factorize(means=...) to insert means)")
            new_rows = V.means_matrix(means)
            if new_rows.shape[1] != state.final_rows.shape[1]:
                raise ValueError(f"means must have {state.final_rows.shape[1]} features (the factored means' D), "
                                 f"got {new_rows.shape[1]}")
            count = new_rows.shape[0]
            all_labels = _check_new_labels(self, labels, count)
            shallow = self._shallow(repair, count, opts)
            raw, new_state, cut_level, old = I.insert_means(self._raw, state, self.order, new_rows,
                                                            shallow=shallow, seed=seed, options=opts)
            # the couplings with the old classes in the original basis (norm, fingerprint): Q' (M_L mu)
            K.apply_rotations(old, self._raw.tuples, self._raw.rotations, True)
            block = new_rows @ new_rows.T
        else:
            if state.factored:
                raise ValueError("this factorization was made from class means; insert with mean=/means=")
            if columns is None:
                raise ValueError("give the new columns (or means= for a factored result)")
            old, block = _split_columns(columns, diagonals, self.size)
            count = old.shape[1]
            all_labels = _check_new_labels(self, labels, count)
            shallow = self._shallow(repair, count, opts)
            raw, new_state, cut_level = I.insert_dense(self._raw, state, self.order, old, block, shallow=shallow,
                                                       seed=seed, options=opts)
        return self._grown(raw, new_state, cut_level, old, block, all_labels, shallow, count)

    def remove(self, labels: Sequence[Any], *, new_index: Any = None, matrix: Any = None,
               repair: bool = False, options: EngineOptions | dict | None = None) -> Factorization:
        """Factorization without the classes ``labels`` (knock-out).

        An exact MMF of the remaining covariance, as cheap as an insertion:
        the levels from the deepest snapshot on are recomputed; before it,
        every level that did not involve a removed class keeps its tuple and
        rotation, a level that held one keeps its wavelet with a rotation
        chosen afresh on its remaining members, and a level whose wavelet was
        removed becomes a rotation-only level (:attr:`Level.wavelet` is None;
        docs/math.md, section 10). The stated error is the exact
        reconstruction error (docs/math.md, sections 2 and 4). ``self`` is not
        modified.

        Parameters
        ----------
        labels : sequence
            Labels of the classes to remove (indices when the factorization
            has no labels). Distinct, and every one present.
        new_index : array of int of shape (size,), optional
            Where each old index goes (-1 exactly at the removed ones, the
            others a permutation of ``0..size-len(labels)-1``). Default: the
            remaining indices keep their relative order. The service passes the
            class store's placement (the last classes fill the holes).
        matrix : array-like (size x size), optional
            Dense results only: the matrix that was factored (a dense result
            does not keep the entries the knock-out needs).
        repair : bool
            Recompute the levels from the shallow (repair) snapshot instead of
            the deepest one: costlier, lower error.
        options : EngineOptions or dict, optional
            Policy numbers (:class:`~mmf_stream.engine.EngineOptions`).

        Returns
        -------
        Factorization
            Of ``size - len(labels)`` classes; ``metadata["removal_report"]``
            says what changed (first level touched, levels modified and dropped).
        """
        removed = self._indices_of(labels)
        if self.size - removed.shape[0] < self.order:
            raise ValueError(f"removing {removed.shape[0]} classes leaves {self.size - removed.shape[0]}, "
                             f"fewer than the order {self.order}")
        if new_index is None:
            new_index = KO.compact_index(self.size, removed)
        new_index = KO.check_index(new_index, self.size, removed)
        state = self.insertion_state
        if not state.snapshots:
            raise ValueError("this factorization has no insertion state; factor it again with this version "
                             "to remove from it")
        opts = resolve_options(options if options is not None else self.metadata.get("options"))
        seed = int(self.metadata.get("seed") or 0)
        if state.factored:
            if matrix is not None:
                raise ValueError("this factorization was made from class means: remove without matrix=")
            raw, new_state, info = KO.remove_means(self._raw, state, self.order, removed, new_index, shallow=bool(repair),
                                                  seed=seed, options=opts)
            # ||C'||^2 = ||C||^2 - 2 sum_x ||C[:, x]||^2 + sum_{x, y} C[x, y]^2, C[:, x] = M m_x and ||M m_x|| = ||F m_x||
            couplings = state.final_rows @ info.removed_means.T
            inner = info.removed_means @ info.removed_means.T
            norm2 = self.norm**2 - 2.0 * float(np.sum(couplings**2)) + float(np.sum(inner**2))
        else:
            if matrix is None:
                raise ValueError("a dense factorization does not keep what a knock-out needs: "
                                 "pass the factored matrix as matrix=")
            work = V.symmetric_matrix(matrix)
            if work.shape[0] != self.size:
                raise ValueError(f"matrix must be {self.size} x {self.size} (the factored matrix), "
                                 f"got {work.shape[0]} x {work.shape[1]}")
            raw, new_state, info = KO.remove_dense(self._raw, state, self.order, removed, new_index, work,
                                                  shallow=bool(repair), seed=seed, options=opts)
            keep = np.flatnonzero(new_index >= 0)
            norm2 = float(np.sum(work[np.ix_(keep, keep)] ** 2))
        kept = np.flatnonzero(new_index >= 0)
        labels_after = None
        if self.labels is not None:
            labels_after = np.empty(kept.shape[0], dtype=self.labels.dtype)
            labels_after[new_index[kept]] = self.labels[kept]
        result = Factorization(
            raw,
            order=self.order,
            norm=float(np.sqrt(max(norm2, 0.0))),
            labels=labels_after,
            metadata={k: v for k, v in self.metadata.items() if k not in ("insertion_report", "removal_report")},
            insertion_state=new_state,
        )
        result.metadata["fingerprint"] = self._fingerprint_after_removal(result, new_index, matrix)
        names = [self._name(i) for i in removed.tolist()]
        result.metadata["removal_report"] = RemovalReport(
            labels=names, indices=removed.tolist(), first_level=int(info.first_level),
            modified_levels=int(info.modified_levels), dropped_levels=int(info.dropped_levels),
            cut_level=int(info.cut_level), rotation_only=int(info.rotation_only),
            error_change=result.error - self.error, woken=int(info.woken),
        )
        return result

    def _name(self, index: int) -> Any:
        return int(index) if self.labels is None else self.labels[index].item()

    def _indices_of(self, labels: Any) -> np.ndarray:
        """Indices of distinct ``labels`` (indices themselves when there are no labels)."""
        if isinstance(labels, (str, bytes)) or np.ndim(labels) == 0:
            raise TypeError("labels must be a sequence of labels (one label: pass [label])")
        items = list(labels)
        if not items:
            raise ValueError("give at least one label to remove")
        if self.labels is None:
            if not all(isinstance(x, (int, np.integer)) and not isinstance(x, bool) for x in items):
                raise TypeError("this factorization has no labels: give the indices to remove")
            indices = np.array(items, dtype=np.int64)
            bad = indices[(indices < 0) | (indices >= self.size)]
            if bad.size:
                raise ValueError(f"no class {int(bad[0])} to remove (indices are 0..{self.size - 1})")
        else:
            position = {label: i for i, label in enumerate(self.labels.tolist())}
            missing = [x for x in items if (x.item() if isinstance(x, np.generic) else x) not in position]
            if missing:
                raise ValueError(f"no class {missing[0]!r} to remove")
            indices = np.array([position[x.item() if isinstance(x, np.generic) else x] for x in items],
                               dtype=np.int64)
        if np.unique(indices).shape[0] != indices.shape[0]:
            raise ValueError("labels to remove must be distinct")
        return np.sort(indices)

    def _fingerprint_after_removal(self, result: Factorization, new_index: np.ndarray, matrix: Any):
        fingerprint = self.fingerprint
        if fingerprint is None:
            return None
        kept = np.flatnonzero(new_index >= 0)
        diagonal = np.empty(kept.shape[0])
        diagonal[new_index[kept]] = fingerprint.diagonal[kept]
        probe = probe_vector(kept.shape[0])
        if matrix is not None:
            work = V.symmetric_matrix(matrix)
            order = np.empty(kept.shape[0], dtype=np.int64)
            order[new_index[kept]] = kept
            product = work[np.ix_(order, order)] @ probe
        else:  # C = Q^T F F^T Q in the original basis (F: final rows)
            rows = result.insertion_state.final_rows
            rotated = probe.copy()[:, None]
            K.apply_rotations(rotated, result._raw.tuples, result._raw.rotations, False)
            product = rows @ (rows.T @ rotated)
            K.apply_rotations(product, result._raw.tuples, result._raw.rotations, True)
            product = product[:, 0]
        return type(fingerprint)(diagonal=diagonal, probe=np.asarray(product, dtype=np.float64),
                                 scale=float(diagonal.max()) if diagonal.size else 0.0)

    def repair_interval(self, options: EngineOptions | dict | None = None) -> int:
        """Insertions between repairs by default: ``options.repair_every``, or more on large
        results, so that a repair costs at most ``options.repair_budget`` levels per
        insertion (0: never)."""
        opts = resolve_options(options if options is not None else self.metadata.get("options"))
        if opts.repair_every == 0:
            return 0
        snapshots = self.insertion_state.snapshots
        shallow = snapshots[0].size if snapshots else 0
        return max(opts.repair_every, -(-shallow // opts.repair_budget))

    def _shallow(self, repair: bool | None, count: int, options: EngineOptions) -> bool:
        if repair is not None:
            return bool(repair)
        every = self.repair_interval(options)
        since = int(self.metadata.get("since_repair", 0)) + count
        return every > 0 and (count >= every or since >= every)

    def _grown(self, raw, state, cut_level, old, block, all_labels, shallow, count) -> Factorization:
        size = self.size
        since = int(self.metadata.get("since_repair", 0)) + count
        new_norm = float(np.sqrt(self.norm**2 + 2.0 * np.sum(old**2) + np.sum(block**2)))
        extras = raw.level_errors[:cut_level] - self._raw.level_errors[:cut_level]
        shallow_cut = state.snapshots[0].level if state.snapshots else cut_level
        drift = float(self.metadata.get("drift", 0.0)) + float(np.sum(extras[: min(cut_level, shallow_cut)]))
        fingerprint = self.metadata.get("fingerprint")
        result = Factorization(
            raw,
            order=self.order,
            norm=new_norm,
            labels=all_labels,
            metadata={
                **{k: v for k, v in self.metadata.items() if k != "insertion_report"},
                "since_repair": 0 if shallow else since,
                "drift": drift,
                "fingerprint": None if fingerprint is None else extend(fingerprint, old, block),
            },
            insertion_state=state,
        )
        new_ids = list(range(size, size + count))
        wavelet_level = {int(s): level + 1 for level, s in enumerate(raw.wavelets.tolist())}
        names = (lambda idx: all_labels[idx].item()) if all_labels is not None else (lambda idx: int(idx))
        levels, partners, novelty = [], [], []
        for index in new_ids:
            level = wavelet_level.get(index)
            levels.append(level)
            if level is None:
                partners.append([names(i) for i in result.core.tolist() if i != index])
                novelty.append(1.0)
            else:
                partners.append([names(i) for i in raw.tuples[level - 1].tolist() if i != index])
                novelty.append((level - cut_level) / max(1, result.n_levels - cut_level))
        result.metadata["insertion_report"] = InsertionReport(
            labels=[names(i) for i in new_ids],
            indices=new_ids,
            cut_level=cut_level,
            repaired=bool(shallow),
            changed_levels=I.changed_levels(self._raw, raw, cut_level),
            wavelet_levels=levels,
            partners=partners,
            error_added=result.error - self.error,
            novelty=novelty,
            drift=drift / max(result.error**2, 1e-300),
        )
        return result

    # --------------------------------------------------------------- storage
    @classmethod
    def from_stored(cls, stored: StoredFactorization) -> Factorization:
        """The factorization that :func:`~mmf_stream.store.result_format.load_stored` (or a project's
        generation) read."""
        return cls(stored.raw, order=stored.order, norm=stored.norm, labels=stored.labels, metadata=stored.metadata,
                   insertion_state=stored.insertion_state)

    def save(self, path: str | os.PathLike, *, overwrite: bool = False) -> None:
        """Write the factorization as a Zarr group (layout in ``docs/format.md``).

        The group is written beside ``path`` and moved into place at the end,
        so an interrupted save never leaves a half-written result at ``path``.
        """
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
