"""Test matrices and the invariants every MMF must satisfy (shared by the test folders)."""

import numpy as np


def random_symmetric(size: int, seed: int = 0, rank: int | None = None) -> np.ndarray:
    """A random symmetric positive semi-definite matrix with a spread spectrum."""
    rng = np.random.default_rng(seed)
    factors = rng.normal(size=(size, rank or size))
    return factors @ factors.T / (rank or size)


def planted_blocks(blocks: int, block_size: int, seed: int = 0):
    """Block-diagonal covariance (random dense PSD blocks, rows shuffled).

    Returns the matrix and each row's block. Rotations inside a block keep
    the matrix block diagonal, so any tuple that mixes blocks is a mistake of
    the candidate search, not a tie.
    """
    rng = np.random.default_rng(seed)
    size = blocks * block_size
    membership = np.repeat(np.arange(blocks), block_size)
    matrix = np.zeros((size, size))
    for b in range(blocks):
        rows = slice(b * block_size, (b + 1) * block_size)
        factors = rng.normal(size=(block_size, 3 * block_size)) + rng.normal(size=(1, 3 * block_size))
        matrix[rows, rows] = factors @ factors.T / (3 * block_size)
    order = rng.permutation(size)
    return matrix[np.ix_(order, order)], membership[order]


def check_valid(f, C):
    """Every invariant an MMF must satisfy."""
    reconstruction_error = np.linalg.norm(C - f.reconstruct())
    assert np.isclose(f.error, reconstruction_error, rtol=1e-7, atol=1e-9 * max(1, np.linalg.norm(C)))
    assert np.isclose(np.sum(f.level_errors), reconstruction_error**2, rtol=1e-6, atol=1e-12 * max(1.0, np.linalg.norm(C) ** 2))
    for level in f.levels:
        np.testing.assert_allclose(level.rotation @ level.rotation.T, np.eye(f.order), atol=1e-10)
        assert np.isclose(np.linalg.det(level.rotation), 1.0)
        assert len(set(level.indices.tolist())) == f.order
        assert level.wavelet in level.indices
    assert len(set(f.wavelets.tolist())) == f.n_levels
    assert not set(f.wavelets.tolist()) & set(f.core.tolist())
    assert sorted(f.wavelets.tolist() + f.core.tolist()) == list(range(f.size))
    # a wavelet takes no part in later levels
    for i, level in enumerate(f.levels):
        for later in f.levels[i + 1 :]:
            assert level.wavelet not in later.indices
