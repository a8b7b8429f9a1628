"""Kernels checked against explicit dense linear algebra."""

import numpy as np
import pytest

from mmf_stream.engine import kernels as K

from matrix_helpers import random_symmetric


@pytest.mark.parametrize("k", [1, 2, 3, 4, 5, 8])
def test_small_eigh_matches_numpy(k):
    rng = np.random.default_rng(k)
    for _ in range(20):
        a = rng.normal(size=(k, k))
        a = a + a.T
        values, vectors = K.small_eigh(a)
        np.testing.assert_allclose(values, np.linalg.eigvalsh(a), atol=1e-10)
        np.testing.assert_allclose(vectors @ np.diag(values) @ vectors.T, a, atol=1e-10)
        np.testing.assert_allclose(vectors.T @ vectors, np.eye(k), atol=1e-12)


@pytest.mark.parametrize("k", [2, 3, 4, 5, 9])
def test_tuple_gram_and_block(k):
    matrix = random_symmetric(30, seed=k)
    t = np.random.default_rng(k).choice(30, size=k, replace=False)
    np.testing.assert_allclose(K.tuple_gram(matrix, t), matrix[t] @ matrix[t].T, rtol=1e-12)
    np.testing.assert_array_equal(K.tuple_block(matrix, t), matrix[np.ix_(t, t)])


def _energy(gram, block, o):
    return o @ gram @ o - (o @ block @ o) ** 2


def test_wavelet_direction_never_worse_than_jacobi_and_stationary():
    rng = np.random.default_rng(0)
    for trial in range(30):
        matrix = random_symmetric(20, seed=trial, rank=6)
        t = rng.choice(20, size=4, replace=False)
        gram, block = matrix[t] @ matrix[t].T, matrix[np.ix_(t, t)]
        values, vectors = np.linalg.eigh(block)
        jacobi = min(_energy(gram, block, vectors[:, i]) for i in range(4))
        o, energy = K.wavelet_direction(gram, block, 4, 100)
        assert np.isclose(np.linalg.norm(o), 1.0)
        assert np.isclose(energy, _energy(gram, block, o), rtol=1e-9, atol=1e-12)
        assert energy <= jacobi + 1e-12
        # stationary point of the quartic: (G - 2 (o'Ao) A) o is parallel to o
        grad = (gram - 2 * (o @ block @ o) * block) @ o
        assert np.linalg.norm(grad - (grad @ o) * o) < 1e-5 * max(1.0, np.linalg.norm(grad))


def test_wavelet_direction_finds_global_minimum_for_pairs():
    """For k = 2 the sphere is a circle: compare with a dense sweep."""
    rng = np.random.default_rng(1)
    angles = np.linspace(0, np.pi, 20001)
    circle = np.stack([np.cos(angles), np.sin(angles)])
    for trial in range(20):
        matrix = random_symmetric(12, seed=100 + trial, rank=4)
        t = rng.choice(12, size=2, replace=False)
        gram, block = matrix[t] @ matrix[t].T, matrix[np.ix_(t, t)]
        sweep = np.einsum("ia,ij,ja->a", circle, gram, circle) - np.einsum("ia,ij,ja->a", circle, block, circle) ** 2
        _, energy = K.wavelet_direction(gram, block, 2, 200)
        assert energy <= sweep.min() + 1e-6 * max(1.0, abs(sweep.min()))


@pytest.mark.parametrize("k", [2, 3, 4, 6])
def test_rotation_from_wavelet(k):
    rng = np.random.default_rng(k)
    block = rng.normal(size=(k, k))
    block = block + block.T
    o = rng.normal(size=k)
    o /= np.linalg.norm(o)
    rotation, pos = K.rotation_from_wavelet(o, block)
    np.testing.assert_allclose(rotation @ rotation.T, np.eye(k), atol=1e-12)
    assert np.isclose(np.linalg.det(rotation), 1.0)
    assert pos == np.argmax(np.abs(o))
    assert np.allclose(rotation[pos], o) or np.allclose(rotation[pos], -o)
    rotated = rotation @ block @ rotation.T
    others = [i for i in range(k) if i != pos]
    sub = rotated[np.ix_(others, others)]
    np.testing.assert_allclose(sub - np.diag(np.diag(sub)), 0, atol=1e-10)


def test_rotate_and_write_rows_equal_dense_conjugation():
    matrix = random_symmetric(15, seed=4)
    t = np.array([7, 2, 11])
    q = np.eye(15)
    o, _ = np.linalg.qr(np.random.default_rng(2).normal(size=(3, 3)))
    q[np.ix_(t, t)] = o
    expected = q @ matrix @ q.T
    new_rows = K.rotate_tuple_rows(matrix[t].copy(), t, o)
    np.testing.assert_allclose(new_rows, expected[t], atol=1e-12)
    # written block by block, as workers holding row blocks would
    out = matrix.copy()
    for start in range(0, 15, 4):
        block = out[start : start + 4]
        K.write_tuple_rows(block, start, t, new_rows)
    np.testing.assert_allclose(out, expected, atol=1e-12)


def test_nearest_neighbours_matches_sort():
    rng = np.random.default_rng(5)
    row = rng.normal(size=40)
    scale = rng.uniform(0.5, 2, size=40)
    active = rng.uniform(size=40) > 0.3
    pivot = int(np.flatnonzero(active)[0])
    got = K.nearest_neighbours(row, scale, active, pivot, 4)
    score = np.abs(row) * scale
    candidates = [j for j in np.argsort(-score, kind="stable") if active[j] and j != pivot]
    np.testing.assert_array_equal(got, candidates[:4])


def test_candidate_downdate_is_exact():
    """Down-dated Gram of a disjoint tuple equals the Gram recomputed after removal."""
    matrix = random_symmetric(12, seed=6)
    active = np.ones(12, dtype=bool)
    tuples = np.array([[0, 1, 2], [3, 4, 5], [6, 7, 8], [9, 10, 11]])
    grams = np.stack([matrix[t] @ matrix[t].T for t in tuples])
    directions = np.tile(np.array([1.0, 0.0, 0.0]), (4, 1))
    scores = np.array([_energy(g, matrix[np.ix_(t, t)], d) for g, t, d in zip(grams, tuples, directions)])
    stale = np.zeros(12, dtype=bool)
    # a level on tuple (3, 4, 5) whose wavelet is 4 (identity rotation for simplicity)
    winner = np.array([3, 4, 5])
    column = matrix[:, 4].copy()
    K.candidate_downdate(tuples, grams, directions, scores, active, stale, winner, column)
    reduced = matrix.copy()
    reduced[4, :] = 0
    reduced[:, 4] = 0
    for p in (0, 2, 3):
        t = tuples[p]
        np.testing.assert_allclose(grams[p], reduced[t] @ reduced[t].T, atol=1e-12)
        assert np.isclose(scores[p], _energy(grams[p], reduced[np.ix_(t, t)], directions[p]))
    assert stale[1] and not stale[[0, 2, 3]].any()


def test_compact_square_in_place():
    matrix = np.arange(49, dtype=float).reshape(7, 7)
    keep = np.array([1, 2, 5])
    buffer = matrix.copy().reshape(-1)
    side = K.compact_square(buffer, 7, keep)
    np.testing.assert_array_equal(buffer[: side * side].reshape(side, side), matrix[np.ix_(keep, keep)])


def test_max_asymmetry_reports_worst_entry():
    matrix = random_symmetric(6, seed=1)
    matrix[1, 4] += 0.5
    worst, i, j, largest, finite = K.max_asymmetry(matrix)
    assert (i, j) == (1, 4) and np.isclose(worst, 0.5) and finite
    matrix[2, 2] = np.nan
    assert not K.max_asymmetry(matrix)[4]


def test_pool_lists_orders_by_average_linkage():
    """Entry 3 is third nearest to the pivot but near entry 1, which comes first: it goes second."""
    cos = np.array([[1.0, 0.9, 0.85, 0.8],
                    [0.9, 1.0, 0.1, 0.9],
                    [0.85, 0.1, 1.0, 0.1],
                    [0.8, 0.9, 0.1, 1.0]])
    scale = np.array([2.0, 1.0, 3.0, 0.5])  # a block's scale does not matter: cosines are pooled
    block = cos * np.outer(scale, scale)
    block[0, 2] = block[2, 0] = -block[0, 2]  # nor its sign
    matrix = np.zeros((6, 6))
    matrix[np.ix_([4, 0, 1, 5], [4, 0, 1, 5])] = block  # pivot 4, list entries 0, 1, 5
    lists = np.array([[0, 1, 5, -1]])
    K.pool_lists(K.list_blocks(matrix, np.array([4]), lists), lists, np.array([0]))
    assert lists.tolist() == [[0, 5, 1, -1]]  # padding stays at the end
    one = np.array([[0, -1, -1, -1]])
    K.pool_lists(K.list_blocks(matrix, np.array([4]), one), one, np.array([0]))
    assert one.tolist() == [[0, -1, -1, -1]]
