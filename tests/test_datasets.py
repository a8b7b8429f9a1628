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
