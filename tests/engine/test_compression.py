"""Dense and factored compressions: the same MMF, and the engine's compressions checked directly.

Dense vs factored results are compared *up to the sign gauge*: when two
candidates describe the same tuple (pivot p with neighbour q, or pivot q with
neighbour p), their scores are mathematically equal and rounding decides
which one is taken. The tuple's rows then come in a different order and the
non-wavelet rows of the rotation may change sign (``O -> D O`` with ``D`` a
diagonal of +-1), so ``Q_dense = D Q_factored``. Everything that does not
depend on that gauge must agree: the tuples as sets, the wavelets, every
level's error, the diagonal of ``H``, ``|Q x|`` and the reconstruction.
The last levels of a full-depth run are genuine ties (with ``k`` active, every
direction has error 0), so the comparisons keep a core of a few times ``k``.
"""

import numpy as np
import pytest

import mmf_stream as ms
from mmf_stream.engine import staged as staged_module
from mmf_stream.engine.compression import DenseCompression, FactoredCompression, GramCompression

from matrix_helpers import check_valid as _check_valid

#: options that make staged runs happen on small matrices
SMALL_STAGES = dict(cluster_size=32, greedy_below=40)


def _counting_map():
    """A ``map_clusters`` that runs the tasks in turn and records each stage's task count."""
    stages = []

    def run(function, tasks):
        tasks = list(tasks)
        stages.append(len(tasks))
        return [function(task) for task in tasks]

    return run, stages


def _gaussian_means(seed: int, shape=(150, 12)) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=shape)


def _assert_same_mmf(dense, factored, C):
    """Two factorizations of the same C agree up to the sign gauge (see the module docstring)."""
    assert dense.n_levels == factored.n_levels and dense.size == factored.size
    for level, (a, b) in enumerate(zip(dense.levels, factored.levels)):
        assert set(a.indices.tolist()) == set(b.indices.tolist()), f"level {level + 1}: tuples differ"
        assert a.wavelet == b.wavelet, f"level {level + 1}: wavelets differ"
        # the wavelet direction (row of O for the wavelet) over the original indices; an
        # earlier gauge sign flips single coordinates of the current basis, so compare |o|
        va = dict(zip(a.indices.tolist(), a.rotation[list(a.indices).index(a.wavelet)]))
        vb = dict(zip(b.indices.tolist(), b.rotation[list(b.indices).index(b.wavelet)]))
        ua = np.array([va[i] for i in sorted(va)])
        ub = np.array([vb[i] for i in sorted(vb)])
        assert np.abs(np.abs(ua) - np.abs(ub)).max() < 1e-6, f"level {level + 1}: directions differ"
    scale = max(dense.level_errors.max(), 1e-300)
    np.testing.assert_allclose(dense.level_errors, factored.level_errors, rtol=1e-6, atol=1e-7 * scale)
    assert dense.error == pytest.approx(factored.error, rel=1e-8)
    np.testing.assert_array_equal(dense.core, factored.core)
    np.testing.assert_allclose(dense.diagonal, factored.diagonal, rtol=1e-7, atol=1e-7 * np.abs(C).max())
    np.testing.assert_allclose(np.abs(dense.core_block), np.abs(factored.core_block), atol=1e-7 * np.abs(C).max())
    x = np.random.default_rng(1).normal(size=(dense.size, 3))
    np.testing.assert_allclose(np.abs(dense.transform(x)), np.abs(factored.transform(x)), atol=1e-6)
    np.testing.assert_allclose(dense.reconstruct(), factored.reconstruct(), atol=1e-7 * np.abs(C).max())


# --------------------------------------------------------- dense vs factored


@pytest.mark.parametrize("seed,order,core", [(0, 3, 8), (1, 4, 10), (2, 5, 14)])
def test_greedy_dense_and_factored_agree(seed, order, core):
    M = _gaussian_means(seed)
    C = M @ M.T
    dense = ms.factorize(C, order=order, core_size=core, schedule="greedy")
    factored = ms.factorize(means=M, order=order, core_size=core, schedule="greedy")
    assert dense.metadata["schedule"] == factored.metadata["schedule"] == "greedy"
    assert factored.metadata["input"] == "means" and factored.factored and not dense.factored
    _assert_same_mmf(dense, factored, C)
    _check_valid(factored, C)
    assert factored.norm == pytest.approx(np.linalg.norm(C), rel=1e-12)


def test_greedy_dense_and_factored_agree_full_depth_exact():
    """Full depth: the error agrees (the last levels are ties, so only the total is compared)."""
    M = _gaussian_means(3, (120, 30))
    C = M @ M.T
    dense = ms.factorize(C, order=4, schedule="greedy")
    factored = ms.factorize(means=M, order=4, schedule="greedy")
    assert factored.core.shape == (3,)
    _check_valid(factored, C)
    assert dense.error == pytest.approx(factored.error, rel=1e-6)
    # all but the last two levels are the same tuples
    for a, b in zip(dense.levels[:-2], factored.levels[:-2]):
        assert set(a.indices.tolist()) == set(b.indices.tolist()) and a.wavelet == b.wavelet


@pytest.mark.parametrize("order,core", [(3, 8), (4, 10)])
def test_staged_one_cluster_dense_and_factored_agree(order, core):
    """A cluster as large as the matrix: the stage machinery of both compressions agrees."""
    M = _gaussian_means(0)
    C = M @ M.T
    options = dict(cluster_size=160, greedy_below=40)
    run_dense, dense_stages = _counting_map()
    run_factored, factored_stages = _counting_map()
    dense = ms.factorize(C, order=order, core_size=core, schedule="staged", options=options,
                         map_clusters=run_dense)
    factored = ms.factorize(means=M, order=order, core_size=core, schedule="staged", options=options,
                            map_clusters=run_factored)
    assert dense_stages == factored_stages and len(dense_stages) >= 2 and set(dense_stages) == {1}
    assert dense.metadata["schedule"] == factored.metadata["schedule"] == "staged"
    _assert_same_mmf(dense, factored, C)
    _check_valid(dense, C)
    _check_valid(factored, C)


@pytest.mark.parametrize("order,core", [(3, 8), (4, 10)])
def test_staged_same_partition_dense_and_factored_agree(monkeypatch, order, core):
    """Several clusters a stage. Dense and factored runs cluster different features (a
    random sketch ``C R`` vs the means themselves), so the partition is fixed here
    (consecutive positions); with the same clusters every stage must agree."""

    def consecutive(features, cluster_size, rng):
        n = features.shape[0]
        return [np.arange(start, min(n, start + cluster_size)) for start in range(0, n, cluster_size)]

    monkeypatch.setattr(staged_module, "partition", consecutive)
    M = _gaussian_means(0)
    C = M @ M.T
    run_dense, dense_stages = _counting_map()
    run_factored, factored_stages = _counting_map()
    dense = ms.factorize(C, order=order, core_size=core, schedule="staged", options=SMALL_STAGES,
                         map_clusters=run_dense)
    factored = ms.factorize(means=M, order=order, core_size=core, schedule="staged", options=SMALL_STAGES,
                            map_clusters=run_factored)
    assert dense_stages == factored_stages and dense_stages[0] == 5  # 150 rows in clusters of 32
    _assert_same_mmf(dense, factored, C)
    _check_valid(factored, C)


def test_staged_dense_and_factored_both_exact_with_their_own_clusters():
    M = _gaussian_means(4)
    C = M @ M.T
    dense = ms.factorize(C, order=4, core_size=10, schedule="staged", options=SMALL_STAGES)
    factored = ms.factorize(means=M, order=4, core_size=10, schedule="staged", options=SMALL_STAGES)
    _check_valid(dense, C)
    _check_valid(factored, C)
    assert 0.8 < dense.error / factored.error < 1.25


# ------------------------------------------------------- compressions directly


class _Reference:
    """The explicit ``C_l`` and active set ``S`` the compressions must agree with."""

    def __init__(self, C: np.ndarray, active=None) -> None:
        self.C = C.copy()
        self.active = np.ones(C.shape[0], dtype=bool) if active is None else active.copy()

    def block(self, t):
        return self.C[np.ix_(t, t)]

    def gram(self, t):
        rows = self.C[np.ix_(t, np.flatnonzero(self.active))]
        return rows @ rows.T

    def rotate(self, t, rotation):
        q = np.eye(self.C.shape[0])
        q[np.ix_(t, t)] = rotation
        self.C = q @ self.C @ q.T

    def row_energy(self, s):
        """``sum_{j in S, j != s} C_l[s, j]^2``."""
        others = self.active.copy()
        others[s] = False
        return float(np.sum(self.C[s, others] ** 2))


def _random_rotation(rng, k):
    q, r = np.linalg.qr(rng.normal(size=(k, k)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[0] = -q[0]
    return np.ascontiguousarray(q)


def _check_against(compression, reference, rng, k, positions_to_index, scale, steps=3):
    """``block``/``gram`` for random active tuples agree with the reference."""
    live = np.flatnonzero(compression.active)
    for _ in range(steps):
        t = np.sort(rng.choice(live, size=k, replace=False)).astype(np.int64)
        original = positions_to_index[t]
        np.testing.assert_allclose(compression.block(t), reference.block(original), atol=1e-10 * scale)
        np.testing.assert_allclose(compression.gram(t), reference.gram(original), atol=1e-10 * scale**2)


def _exercise(compression, reference, rng, k=4, levels=6, compact=True):
    """A few levels (random tuple, random rotation, wavelet out), checking everything."""
    scale = np.abs(reference.C).max()
    index = compression.index
    _check_against(compression, reference, rng, k, compression.index, scale)
    for level in range(levels):
        live = np.flatnonzero(compression.active)
        t = rng.choice(live, size=k, replace=False).astype(np.int64)
        rotation = _random_rotation(rng, k)
        pos = int(rng.integers(k))
        original = compression.index[t]
        reference.rotate(original, rotation)
        s, diagonal, row_energy, column = compression.rotate(t, rotation, pos)
        assert s == t[pos]
        assert diagonal == pytest.approx(reference.C[original[pos], original[pos]], rel=1e-10, abs=1e-10 * scale)
        expected = reference.row_energy(original[pos])
        assert row_energy == pytest.approx(expected, rel=1e-9, abs=1e-10 * scale**2)
        # the returned column is C_l[:, s] over the active positions
        live_index = compression.index[live]
        np.testing.assert_allclose(np.asarray(column)[live], reference.C[live_index, original[pos]],
                                   atol=1e-10 * scale)
        compression.remove(s, column)
        reference.active[original[pos]] = False
        assert not compression.active[s]
        np.testing.assert_array_equal(reference.active[compression.index], compression.active)
        # the cached row energies over the active set (neighbour search) follow too
        live = np.flatnonzero(compression.active)
        energy = np.asarray(compression.energy)[live]
        exact = np.array([np.sum(reference.C[i, reference.active] ** 2) for i in compression.index[live]])
        np.testing.assert_allclose(energy, exact, rtol=1e-8, atol=1e-9 * scale**2)
        _check_against(compression, reference, rng, k, compression.index, scale)
    if compact:
        keep = np.flatnonzero(compression.active)
        compression.compact(keep)
        assert compression.n == keep.shape[0] and compression.active.all()
        np.testing.assert_array_equal(compression.index, index[keep])
        _check_against(compression, reference, rng, k, compression.index, scale)
        live = compression.index
        np.testing.assert_allclose(compression.active_block(), reference.C[np.ix_(live, live)], atol=1e-10 * scale)
    return reference


def test_dense_compression_block_gram_rotate_remove():
    rng = np.random.default_rng(0)
    M = rng.normal(size=(30, 8))
    C = M @ M.T
    compression = DenseCompression(C.copy())
    _exercise(compression, _Reference(C), rng)


def test_dense_compression_indefinite_matrix():
    """Any symmetric matrix, not only a Gram."""
    rng = np.random.default_rng(5)
    X = rng.normal(size=(25, 25))
    C = X + X.T
    _exercise(DenseCompression(C.copy()), _Reference(C), rng, k=3, levels=8)


@pytest.mark.parametrize("explicit_max", [0, 1000])
def test_factored_compression_block_gram_rotate_remove(explicit_max):
    rng = np.random.default_rng(1)
    M = rng.normal(size=(30, 8))
    C = M @ M.T
    compression = FactoredCompression(M.copy(), explicit_max=explicit_max)
    assert (compression.explicit is not None) == (explicit_max >= 30)
    reference = _exercise(compression, _Reference(C), rng)
    # every wavelet's final row is its rotated mean: final_rows final_rows' is C_l on them
    removed = np.flatnonzero(~reference.active)
    rows = compression.final_rows[removed]
    np.testing.assert_allclose(rows @ rows.T, reference.C[np.ix_(removed, removed)], atol=1e-10 * np.abs(C).max())
    # the rows still held are the rotated means of the active indices
    live = compression.index[compression.active]
    held = compression.rows[compression.active]
    np.testing.assert_allclose(held @ held.T, reference.C[np.ix_(live, live)], atol=1e-10 * np.abs(C).max())


def test_factored_compression_gram_is_over_active_set_wide_means():
    """D > m: ``W = M_S' M_S`` must lose exactly the wavelets' rows."""
    rng = np.random.default_rng(2)
    M = rng.normal(size=(20, 40))
    C = M @ M.T
    _exercise(FactoredCompression(M.copy(), explicit_max=0), _Reference(C), rng, k=3, levels=8)


def test_factored_compression_becomes_explicit_on_compaction():
    rng = np.random.default_rng(3)
    M = rng.normal(size=(30, 8))
    C = M @ M.T
    compression = FactoredCompression(M.copy(), explicit_max=25)
    assert compression.explicit is None
    reference = _exercise(compression, _Reference(C), rng, levels=6, compact=True)
    assert compression.explicit is not None  # 24 left after compaction
    _exercise(compression, reference, rng, levels=4, compact=False)


def test_gram_compression_is_a_cluster_of_the_whole_active_set():
    """A staged cluster holds ``A = C[c, c]`` and ``P = C[c, S] C[S, c]`` with ``S`` the
    whole active set: rotations and wavelets inside the cluster keep ``P[t, t]`` equal
    to the exact Gram over ``S`` (docs/math.md, section 4)."""
    rng = np.random.default_rng(4)
    M = rng.normal(size=(40, 10))
    C = M @ M.T
    members = np.sort(rng.choice(40, size=16, replace=False))
    compression = GramCompression(C[np.ix_(members, members)], C[members] @ C[:, members])
    compression.index = members.copy()  # positions -> original indices, for the checks
    _exercise(compression, _Reference(C), rng, levels=7)


def test_gram_compression_other_clusters_rotations_do_not_change_its_gram():
    """Rotations inside another cluster preserve P (inner products of rows)."""
    rng = np.random.default_rng(6)
    M = rng.normal(size=(24, 6))
    C = M @ M.T
    ours, theirs = np.arange(12), np.arange(12, 24)
    compression = GramCompression(C[np.ix_(ours, ours)], C[ours] @ C[:, ours])
    reference = _Reference(C)
    t_other = rng.choice(theirs, size=4, replace=False)
    reference.rotate(t_other, _random_rotation(rng, 4))
    t = np.array([0, 3, 5, 9], dtype=np.int64)
    np.testing.assert_allclose(compression.gram(t), reference.gram(t), atol=1e-9 * np.abs(C).max() ** 2)
    np.testing.assert_allclose(compression.block(t), reference.block(t), atol=1e-10 * np.abs(C).max())


def test_factored_final_rows_reuse_the_working_buffer():
    """A factored run holds one m x D array, not two: the final rows are written into the consumed
    working buffer (a second m x D array was 2 GB of the peak at 1,000,000 x 256), and the result
    is exact."""
    import mmf_stream as ms
    from mmf_stream.engine.schedule import factor_means

    means = ms.class_means(3000, 96, seed=4)
    work = means.copy()
    raw, state = factor_means(work, 4, 3000 - 8, schedule="staged", seed=0,
                              options=ms.EngineOptions(greedy_below=256), snapshot_sizes=(600,))
    assert np.shares_memory(state.final_rows, work)
    fresh = ms.factorize(means=means, order=4, core_size=8, options=dict(greedy_below=256))
    np.testing.assert_array_equal(state.final_rows, fresh.insertion_state.final_rows)
    # the final rows are the rotated means: Q M, so their Gram is M's
    np.testing.assert_allclose(state.final_rows.T @ state.final_rows, means.T @ means, rtol=1e-9, atol=1e-6)
