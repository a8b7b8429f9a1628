"""Generated and bundled matrices."""

import numpy as np
import pytest

import mmf_stream as ms


def test_hierarchical_covariance_shape_and_structure():
    C, leaves = ms.hierarchical_covariance(500, seed=4, return_leaves=True)
    assert C.shape == (500, 500) and leaves.shape == (500, 3)
    np.testing.assert_array_equal(C, C.T)
    assert np.linalg.eigvalsh(C).min() > -1e-9
    assert np.linalg.matrix_rank(C) <= 256
    leaf = leaves @ np.array([16, 4, 1])
    normed = C / np.sqrt(np.outer(np.diag(C), np.diag(C)))
    same = normed[leaf[:, None] == leaf[None, :]].mean()
    sibling_branch = normed[(leaves[:, None, 0] == leaves[None, :, 0]) & (leaves[:, None, 1] != leaves[None, :, 1])].mean()
    other = normed[leaves[:, None, 0] != leaves[None, :, 0]].mean()
    assert same > sibling_branch > other  # correlation falls with tree distance
    np.testing.assert_array_equal(C, ms.hierarchical_covariance(500, seed=4))


def test_hierarchical_covariance_arguments():
    with pytest.raises(ValueError, match="one value per depth"):
        ms.hierarchical_covariance(10, depth=2)
    with pytest.raises(ValueError, match="size must be at least 1"):
        ms.hierarchical_covariance(0)


def test_laplacians():
    grid = ms.grid_laplacian(4, 5)
    assert grid.shape == (20, 20)
    np.testing.assert_allclose(grid.sum(axis=1), 0)
    assert grid[0, 0] == 2 and grid[6, 6] == 4
    karate = ms.karate_laplacian()
    assert karate.shape == (34, 34) and karate.trace() == 2 * 78
    np.testing.assert_allclose(karate.sum(axis=1), 0)
    normalized = ms.karate_laplacian(normalized=True)
    np.testing.assert_allclose(np.diag(normalized), 1)


def _top_share(C):
    """Share of ``||C||_F^2`` held by the top eigenvalue."""
    eigenvalues = np.linalg.eigvalsh(C)
    return eigenvalues[-1] ** 2 / np.sum(eigenvalues**2)


def test_class_means_shape_dtype_non_negative():
    M = ms.datasets.class_means(300, 64, seed=1)
    assert M.shape == (300, 64) and M.dtype == np.float64 and M.flags.c_contiguous
    assert M.min() >= 0 and (M == 0).any() and (M > 0).mean() > 0.5  # ReLU: zeros, mostly active
    assert "class_means" in ms.datasets.__all__
    M, leaves = ms.datasets.class_means(5, 3, seed=1, depth=2, scales=(1.0, 0.5), return_leaves=True)
    assert M.shape == (5, 3) and leaves.shape == (5, 2) and leaves.dtype == np.int64
    assert leaves.min() >= 0 and leaves.max() < 4
    assert ms.datasets.class_means(1, 1).shape == (1, 1)


def test_class_means_deterministic_per_seed():
    a, leaves_a = ms.datasets.class_means(200, 32, seed=7, return_leaves=True)
    b, leaves_b = ms.datasets.class_means(200, 32, seed=7, return_leaves=True)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(leaves_a, leaves_b)
    np.testing.assert_array_equal(a, ms.datasets.class_means(200, 32, seed=7))
    assert not np.array_equal(a, ms.datasets.class_means(200, 32, seed=8))
    assert not np.array_equal(a, ms.datasets.class_means(200, 32))  # default seed 0


def test_class_means_common_direction():
    M = ms.datasets.class_means(400, 128, seed=3)
    C = M @ M.T
    # uncentred: entrywise positive, one direction (close to the constant vector) holds most of ||C||_F
    assert C.min() > 0
    assert _top_share(C) > 0.9
    top = np.linalg.eigh(C)[1][:, -1]
    assert abs(top.sum()) / np.sqrt(len(top)) > 0.95
    # a centred matrix with the same hierarchy fails both checks
    centred = M - M.mean(axis=0)
    assert (centred @ centred.T).min() < 0 and _top_share(centred @ centred.T) < 0.6
    hierarchical = ms.hierarchical_covariance(400, seed=3)
    assert hierarchical.min() < 0 and _top_share(hierarchical) < 0.6
    # the shared offset makes the common direction: without it, it is weaker
    no_offset = ms.datasets.class_means(400, 128, seed=3, offset=0.0)
    assert _top_share(C) > _top_share(no_offset @ no_offset.T)


def test_class_means_planted_hierarchy():
    M, leaves = ms.datasets.class_means(400, 128, seed=3, return_leaves=True)
    centred = M - M.mean(axis=0)
    norms = np.linalg.norm(centred, axis=1)
    correlation = centred @ centred.T / np.outer(norms, norms)
    leaf = leaves @ np.array([16, 4, 1])
    off_diagonal = ~np.eye(len(M), dtype=bool)
    same_leaf = correlation[(leaf[:, None] == leaf[None, :]) & off_diagonal].mean()
    same_branch = correlation[(leaves[:, None, 0] == leaves[None, :, 0]) & (leaves[:, None, 1] != leaves[None, :, 1])].mean()
    other_branch = correlation[leaves[:, None, 0] != leaves[None, :, 0]].mean()
    assert same_leaf > same_branch > other_branch
    assert same_leaf > 0.9 and other_branch < 0


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"m": 0, "D": 4}, ValueError, "m must be at least 1"),
        ({"m": 4, "D": 0}, ValueError, "D must be at least 1"),
        ({"m": 4.0, "D": 4}, TypeError, "m must be an integer"),
        ({"m": True, "D": 4}, TypeError, "m must be an integer"),
        ({"m": 4, "D": "4"}, TypeError, "D must be an integer"),
        ({"m": 4, "D": 4, "seed": 1.5}, TypeError, "seed must be an integer"),
        ({"m": 4, "D": 4, "seed": -1}, ValueError, "seed must be at least 0"),
        ({"m": 4, "D": 4, "branching": 0}, ValueError, "branching must be at least 1"),
        ({"m": 4, "D": 4, "depth": 2}, ValueError, "one value per depth"),
        ({"m": 4, "D": 4, "scales": 1.0}, TypeError, "scales must be a sequence"),
        ({"m": 4, "D": 4, "scales": (1.0, -0.5, 0.25)}, ValueError, "scales entry must be finite and non-negative"),
        ({"m": 4, "D": 4, "noise": float("nan")}, ValueError, "noise must be finite and non-negative"),
        ({"m": 4, "D": 4, "offset": -1.0}, ValueError, "offset must be finite and non-negative"),
        ({"m": 4, "D": 4, "offset": "1"}, TypeError, "offset must be a real number"),
    ],
)
def test_class_means_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        ms.datasets.class_means(**kwargs)
