"""Matrices to factor: a synthetic hierarchical covariance and graph Laplacians.

Everything here is generated or comes from packages' bundled data; nothing is
downloaded.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["hierarchical_covariance", "karate_laplacian", "grid_laplacian"]


def hierarchical_covariance(
    size: int,
    *,
    branching: int = 4,
    depth: int = 3,
    scales: Sequence[float] = (1.0, 0.5, 0.25),
    noise: float = 0.1,
    dim: int = 256,
    seed: int = 0,
    return_leaves: bool = False,
):
    """Covariance of points drawn around a tree of Gaussian centres.

    The root's ``branching`` children are centres drawn from
    ``N(0, scales[0]^2 I_dim)``; each child of a centre at depth ``l`` adds
    ``N(0, scales[l]^2 I_dim)``, down to ``branching ** depth`` leaves. Each of
    the ``size`` points is a uniformly chosen leaf plus ``N(0, noise^2 I_dim)``;
    the rows come in random order, and ``C = X X' / dim``.

    Parameters
    ----------
    size : int
        Number of points (rows of ``C``).
    branching, depth : int
        Shape of the tree of centres.
    scales : sequence of float
        Standard deviation of the offset added at each depth (length ``depth``).
    noise : float
        Standard deviation of the point around its leaf centre.
    dim : int
        Dimension of the points (``C`` has rank at most ``dim``).
    seed : int
        Seed of the random generator.
    return_leaves : bool
        Also return, per row, the path of the leaf through the tree as an
        ``(size, depth)`` integer array (column ``l`` is the branch taken at
        depth ``l``).

    Returns
    -------
    C : ndarray of shape (size, size)
        The covariance, float64, symmetric positive semi-definite.
    leaves : ndarray of shape (size, depth), optional
        Only with ``return_leaves``.
    """
    if size < 1:
        raise ValueError(f"size must be at least 1, got {size}")
    if branching < 1 or depth < 1:
        raise ValueError("branching and depth must be at least 1")
    if len(scales) != depth:
        raise ValueError(f"scales needs one value per depth ({depth}), got {len(scales)}")
    rng = np.random.default_rng(seed)
    centres = np.zeros((1, dim))
    for scale in scales:
        offsets = rng.normal(scale=scale, size=(centres.shape[0] * branching, dim))
        centres = np.repeat(centres, branching, axis=0) + offsets
    leaf = rng.integers(0, centres.shape[0], size=size)
    points = centres[leaf] + rng.normal(scale=noise, size=(size, dim))
    order = rng.permutation(size)
    points = points[order]
    leaf = leaf[order]
    covariance = points @ points.T / dim
    covariance = 0.5 * (covariance + covariance.T)
    if not return_leaves:
        return covariance
    paths = np.empty((size, depth), dtype=np.int64)
    remainder = leaf.copy()
    for level in range(depth - 1, -1, -1):
        paths[:, level] = remainder % branching
        remainder //= branching
    return covariance, paths


def karate_laplacian(normalized: bool = False) -> np.ndarray:
    """Laplacian ``D - A`` of Zachary's karate club (34 nodes, unweighted edges).

    With ``normalized``, ``I - D^-1/2 A D^-1/2``. Uses networkx's bundled graph.
    """
    import networkx as nx

    graph = nx.karate_club_graph()
    if normalized:
        return nx.normalized_laplacian_matrix(graph, weight=None).toarray().astype(np.float64)
    return nx.laplacian_matrix(graph, weight=None).toarray().astype(np.float64)


def grid_laplacian(rows: int = 32, cols: int | None = None) -> np.ndarray:
    """Combinatorial Laplacian ``D - A`` of a ``rows x cols`` grid graph (4-neighbour)."""
    cols = rows if cols is None else cols
    if rows < 1 or cols < 1:
        raise ValueError("grid sides must be at least 1")
    n = rows * cols
    laplacian = np.zeros((n, n))
    index = np.arange(n).reshape(rows, cols)
    pairs = [
        (index[:, :-1].ravel(), index[:, 1:].ravel()),
        (index[:-1, :].ravel(), index[1:, :].ravel()),
    ]
    for a, b in pairs:
        laplacian[a, b] = -1.0
        laplacian[b, a] = -1.0
    laplacian[np.arange(n), np.arange(n)] = -laplacian.sum(axis=1)
    return laplacian
