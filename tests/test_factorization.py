"""The batch engine through the public API: exactness, structure, determinism."""

import itertools

import numpy as np
import pytest

import mmf_stream as ms

from matrix_helpers import check_valid as _check_valid, planted_blocks, random_symmetric


@pytest.mark.parametrize("order", [2, 3, 4, 5, 8])
def test_error_equals_reconstruction_and_invariants(order):
    C = random_symmetric(40, seed=order, rank=12)
    f = ms.factorize(C, order=order, core_size=10)
    assert f.n_levels == 30 and f.core.shape == (10,)
    _check_valid(f, C)


def test_default_core_is_full_depth():
    C = random_symmetric(20, seed=1)
    f = ms.factorize(C, order=4)
    assert f.core.shape[0] == 3 and f.n_levels == 17
    _check_valid(f, C)


def test_relative_error_and_norm():
    C = ms.karate_laplacian()
    f = ms.factorize(C, order=4, core_size=6)
    assert np.isclose(f.norm, np.linalg.norm(C))
    assert np.isclose(f.relative_error, f.error / np.linalg.norm(C))
    _check_valid(f, C)


def test_wavelet_diagonal_and_core_match_transform():
    """Q C Q' carries H's diagonal and core block; the rest is the dropped error."""
    C = random_symmetric(25, seed=8, rank=9)
    f = ms.factorize(C, order=3, core_size=5)
    compressed = f.transform(f.transform(C).T).T  # Q C Q'
    np.testing.assert_allclose(np.diag(compressed), f.diagonal, atol=1e-10)
    np.testing.assert_allclose(compressed[np.ix_(f.core, f.core)], f.core_block, atol=1e-10)
    dropped = compressed - f.compressed()
    assert np.isclose(np.linalg.norm(dropped), f.error, rtol=1e-8)


def test_transform_round_trip_vectors_and_matrices():
    C = random_symmetric(30, seed=2)
    f = ms.factorize(C, order=4, core_size=6)
    rng = np.random.default_rng(0)
    x = rng.normal(size=30)
    np.testing.assert_allclose(f.inverse_transform(f.transform(x)), x, atol=1e-12)
    X = rng.normal(size=(30, 5))
    np.testing.assert_allclose(f.transform(f.inverse_transform(X)), X, atol=1e-12)
    assert np.isclose(np.linalg.norm(f.transform(x)), np.linalg.norm(x))
    with pytest.raises(ValueError, match="30 rows"):
        f.transform(np.ones(29))


def test_deterministic_for_a_seed():
    C = ms.hierarchical_covariance(150, seed=3)
    a = ms.factorize(C, order=4, core_size=20, seed=7)
    b = ms.factorize(C.copy(), order=4, core_size=20, seed=7)
    np.testing.assert_array_equal(a.tuples, b.tuples)
    np.testing.assert_array_equal(a.rotations, b.rotations)
    assert a.error == b.error


def test_input_is_not_modified():
    C = random_symmetric(20, seed=4)
    before = C.copy()
    ms.factorize(C, order=3)
    np.testing.assert_array_equal(C, before)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_planted_blocks_rotations_never_mix_blocks(seed):
    C, membership = planted_blocks(blocks=6, block_size=12, seed=seed)
    f = ms.factorize(C, order=4, core_size=12)
    _check_valid(f, C)
    for level in f.levels:
        for row in level.rotation:
            support = membership[level.indices][np.abs(row) > 1e-8]
            assert len(set(support.tolist())) == 1, f"level {level.number} mixes blocks"
    # while a block still couples its members, its levels stay inside it
    coupled = [lvl for lvl in f.levels if lvl.squared_error > 1e-10]
    assert len(coupled) > 30
    assert all(len(set(membership[lvl.indices].tolist())) == 1 for lvl in coupled)


def test_hierarchical_covariance_first_levels_join_same_leaf():
    C, leaves = ms.hierarchical_covariance(300, dim=512, seed=1, return_leaves=True)
    f = ms.factorize(C, order=3, core_size=60)
    leaf = leaves @ np.array([16, 4, 1])
    first = f.levels[:20]
    # by chance a 3-tuple lies in one of 64 leaves with probability about 1 / 4096
    assert sum(len(set(leaf[level.indices])) == 1 for level in first) >= 15


def _greedy_optimum(A, active, order):
    """Smallest level error over all tuples, by dense sampling of the sphere (k=2)."""
    angles = np.linspace(0, np.pi, 4001)
    best = np.inf
    for t in itertools.combinations(active, order):
        t = list(t)
        rows = A[t][:, active]
        gram, block = rows @ rows.T, A[np.ix_(t, t)]
        for angle in angles:
            o = np.array([np.cos(angle), np.sin(angle)])
            best = min(best, o @ gram @ o - (o @ block @ o) ** 2)
    return best


def test_exhaustive_mode_finds_the_greedy_optimum_at_every_level():
    C = random_symmetric(8, seed=11, rank=5)
    f = ms.factorize(C, order=2, core_size=3, candidates="exhaustive")
    _check_valid(f, C)
    A = C.copy()
    active = list(range(8))
    for level in f.levels:
        optimum = _greedy_optimum(A, active, 2)
        assert level.squared_error / 2 <= optimum + 1e-6 * max(1.0, optimum)
        # replay the level to get the next compression
        q = np.eye(8)
        q[np.ix_(level.indices, level.indices)] = level.rotation
        A = q @ A @ q.T
        active.remove(level.wavelet)


def test_exhaustive_is_at_least_as_good_on_the_first_level():
    C = random_symmetric(10, seed=12, rank=4)
    exhaustive = ms.factorize(C, order=3, core_size=5, candidates="exhaustive")
    greedy = ms.factorize(C, order=3, core_size=5)
    assert exhaustive.levels[0].squared_error <= greedy.levels[0].squared_error + 1e-12


def test_exhaustive_refuses_large_problems():
    with pytest.raises(ValueError, match="exhaustive search would score"):
        ms.factorize(random_symmetric(200), order=4, candidates="exhaustive")


def test_labels_travel_with_levels():
    C = random_symmetric(10, seed=5)
    labels = [f"class{i}" for i in range(10)]
    f = ms.factorize(C, order=3, core_size=4, labels=labels)
    for level in f.levels:
        assert list(level.labels) == [labels[i] for i in level.indices]
        assert level.wavelet_label == labels[level.wavelet]
    assert "class" in f.summary()


def test_zero_matrix_and_diagonal_matrix_have_no_error():
    f = ms.factorize(np.zeros((6, 6)), order=2)
    assert f.error == 0 and f.relative_error == 0
    D = np.diag(np.arange(1.0, 9.0))
    f = ms.factorize(D, order=3, core_size=2)
    assert f.error < 1e-12
    np.testing.assert_allclose(f.reconstruct(), D, atol=1e-12)


def test_karate_and_grid_beat_reference_errors():
    """Reference errors (issue 2) of a C++ MMF on the same settings, times 0.8."""
    karate = ms.factorize(ms.karate_laplacian(), order=4, core_size=6)
    assert karate.error <= 0.8 * 5.89
    grid = ms.factorize(ms.grid_laplacian(32), order=4, core_size=128)
    assert grid.error <= 0.8 * 53.96


def test_accepts_float32_lists_and_sparse():
    import scipy.sparse

    C = random_symmetric(12, seed=9)
    ref = ms.factorize(C, order=3, core_size=4)
    f_list = ms.factorize(C.tolist(), order=3, core_size=4)
    f_sparse = ms.factorize(scipy.sparse.csr_matrix(C), order=3, core_size=4)
    assert np.isclose(f_list.error, ref.error) and np.isclose(f_sparse.error, ref.error)
    f32 = ms.factorize(C.astype(np.float32), order=3, core_size=4)
    _check_valid(f32, C.astype(np.float32).astype(np.float64))
