"""Matrices to factor: a synthetic hierarchical covariance, class means and graph Laplacians.

Everything here is generated or comes from packages' bundled data; nothing is
downloaded.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["hierarchical_covariance", "class_means", "planted_tree", "karate_laplacian", "grid_laplacian"]


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
    centres = _centre_tree(rng, dim, branching, scales)
    leaf = rng.integers(0, centres.shape[0], size=size)
    points = centres[leaf] + rng.normal(scale=noise, size=(size, dim))
    order = rng.permutation(size)
    points = points[order]
    leaf = leaf[order]
    covariance = np.empty((size, size))
    for start in range(0, size, _SYMMETRIZE_BLOCK):  # row blocks: OpenBLAS's syrk crashes near m = 32,000
        np.matmul(points[start : start + _SYMMETRIZE_BLOCK], points.T, out=covariance[start : start + _SYMMETRIZE_BLOCK])
    covariance /= dim
    _symmetrize_in_place(covariance)
    if not return_leaves:
        return covariance
    return covariance, _leaf_paths(leaf, depth, branching)


def _centre_tree(rng: np.random.Generator, dim: int, branching: int, scales) -> np.ndarray:
    """Leaf centres of a tree: each depth adds ``N(0, scale^2 I)`` to ``branching`` children of every centre."""
    centres = np.zeros((1, dim))
    for scale in scales:
        offsets = rng.normal(scale=scale, size=(centres.shape[0] * branching, dim))
        centres = np.repeat(centres, branching, axis=0) + offsets
    return centres


def _leaf_paths(leaf: np.ndarray, depth: int, branching: int) -> np.ndarray:
    """Per row, the branch taken at each depth to reach its leaf (``(n, depth)``)."""
    paths = np.empty((leaf.shape[0], depth), dtype=np.int64)
    remainder = leaf.copy()
    for level in range(depth - 1, -1, -1):
        paths[:, level] = remainder % branching
        remainder //= branching
    return paths


#: rows per block of the in-place symmetrisation (bounds its temporaries to 2 x block x m)
_SYMMETRIZE_BLOCK = 512


def _symmetrize_in_place(matrix: np.ndarray) -> None:
    """``matrix <- (matrix + matrix') / 2`` block by block, without an m x m temporary."""
    n = matrix.shape[0]
    for start in range(0, n, _SYMMETRIZE_BLOCK):
        stop = min(start + _SYMMETRIZE_BLOCK, n)
        average = 0.5 * (matrix[start:stop, start:] + matrix[start:, start:stop].T)
        matrix[start:stop, start:] = average
        matrix[start:, start:stop] = average.T


def _integer(name: str, value, minimum: int) -> int:
    """``value`` as an int, with a one-line TypeError/ValueError when it is not an integer >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value}")
    return int(value)


def _non_negative(name: str, value) -> float:
    """``value`` as a float, with a one-line TypeError/ValueError when it is not a finite real >= 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    if not np.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be finite and non-negative, got {value}")
    return float(value)


def class_means(
    m: int,
    D: int,
    *,
    seed: int = 0,
    branching: int = 4,
    depth: int = 3,
    scales: Sequence[float] = (1.0, 0.5, 0.25),
    noise: float = 0.1,
    offset: float = 1.0,
    return_leaves: bool = False,
):
    """Class means like those of post-ReLU features: a tree of centres, a shared offset, ReLU.

    The centres are drawn as in :func:`hierarchical_covariance`: the root's
    ``branching`` children are drawn from ``N(0, scales[0]^2 I_D)``; each child
    of a centre at depth ``l`` adds ``N(0, scales[l]^2 I_D)``, down to
    ``branching ** depth`` leaves. Each of the ``m`` classes is a uniformly
    chosen leaf plus ``N(0, noise^2 I_D)`` (classes come in random order). A
    shared positive offset ``b`` (one vector for all classes, entries
    ``offset * U(0.5, 1.5)``) is added and the result passed through a ReLU::

        M[i] = max(0, leaf_centre(i) + noise_i + b)

    so every entry is ``>= 0`` (about a fifth are exactly 0 with the defaults),
    as the per-class averages of post-ReLU features are.

    What ``C = M @ M.T`` looks like: it is the *uncentred* class covariance
    (second-moment matrix) of the classes, entrywise positive, symmetric
    positive semi-definite and of rank at most ``D``. The mean class
    ``mu = M.mean(axis=0)`` is far from 0, so ``C`` is dominated by a common
    direction, ``C ~ m ||mu||^2 u u'`` with ``u`` close to the constant
    vector ``1 / sqrt(m)``: with the defaults the top eigenvalue holds about
    95% of ``||C||_F^2``. The hierarchy lives in the remainder: after centring
    (``(M - mu) @ (M - mu).T``) classes of the same leaf are the most strongly
    coupled, then classes sharing a branch, as in
    :func:`hierarchical_covariance`. With ``offset=0`` the common direction
    comes from the ReLU alone and is weaker.

    Parameters
    ----------
    m : int
        Number of classes (rows of ``M``), at least 1.
    D : int
        Feature dimension (columns of ``M``), at least 1.
    seed : int, default 0
        Seed of the random generator; the result is deterministic for a seed.
    branching, depth : int, default 4, 3
        Shape of the tree of centres (``branching ** depth`` leaves).
    scales : sequence of float, default (1.0, 0.5, 0.25)
        Standard deviation of the offset added at each depth (length ``depth``).
    noise : float, default 0.1
        Standard deviation of a class mean around its leaf centre.
    offset : float, default 1.0
        Mean entry of the shared positive offset vector added before the ReLU
        (its entries are drawn from ``offset * U(0.5, 1.5)``); 0 for none.
    return_leaves : bool, default False
        Also return, per class, the path of its leaf through the tree as an
        ``(m, depth)`` integer array (column ``l`` is the branch taken at
        depth ``l``).

    Returns
    -------
    M : ndarray of shape (m, D)
        The class means, float64, all entries ``>= 0``.
    leaves : ndarray of shape (m, depth), optional
        Only with ``return_leaves``.

    Raises
    ------
    TypeError
        If ``m``, ``D``, ``seed``, ``branching`` or ``depth`` is not an integer,
        or ``noise``, ``offset`` or a scale is not a real number.
    ValueError
        If ``m``, ``D``, ``branching`` or ``depth`` is below 1, ``scales`` does
        not have ``depth`` entries, or ``noise``, ``offset`` or a scale is
        negative or not finite.

    Examples
    --------
    >>> M = class_means(100, 32, seed=0)
    >>> M.shape, bool((M >= 0).all())
    ((100, 32), True)
    """
    m = _integer("m", m, 1)
    D = _integer("D", D, 1)
    seed = _integer("seed", seed, 0)
    branching = _integer("branching", branching, 1)
    depth = _integer("depth", depth, 1)
    if isinstance(scales, (str, bytes)) or not isinstance(scales, Sequence | np.ndarray):
        raise TypeError(f"scales must be a sequence of numbers, got {type(scales).__name__}")
    if len(scales) != depth:
        raise ValueError(f"scales needs one value per depth ({depth}), got {len(scales)}")
    scales = [_non_negative("scales entry", scale) for scale in scales]
    noise = _non_negative("noise", noise)
    offset = _non_negative("offset", offset)
    rng = np.random.default_rng(seed)
    centres = _centre_tree(rng, D, branching, scales)
    shared = offset * rng.uniform(0.5, 1.5, size=D)
    leaf = rng.integers(0, centres.shape[0], size=m)
    means = centres[leaf]
    means += rng.normal(scale=noise, size=(m, D))
    means += shared
    np.maximum(means, 0.0, out=means)
    if not return_leaves:
        return means
    return means, _leaf_paths(leaf, depth, branching)


def planted_tree(
    depth: int = 4,
    branching: int = 6,
    D: int = 256,
    *,
    seed: int = 0,
    decay: float = 0.6,
    noise: float = 0.0,
    offset: float = 1.0,
    relu: bool = True,
):
    """Class means on a planted tree: one class per leaf, classes shuffled.

    The tree has ``branching ** depth`` leaves. Each child of a node at depth
    ``l`` (the root is depth 0) adds ``N(0, decay^(2l) I_D / D)`` to its
    parent's centre, so the branches of one parent are about ``decay`` times
    as far apart as the parent from its siblings. A class is its leaf's centre
    plus ``N(0, noise^2 I_D / D)``, plus a shared positive offset (one vector
    for all classes, entries ``offset * U(0.5, 1.5) / sqrt(D)``), passed
    through a ReLU when ``relu`` (post-ReLU-like means: entries ``>= 0``).

    Parameters
    ----------
    depth, branching : int, default 4, 6
        Shape of the tree (1,296 classes by default).
    D : int, default 256
        Feature dimension.
    seed : int, default 0
    decay : float, default 0.6
        Ratio of the offsets' scales from one depth to the next (0 < decay).
    noise : float, default 0.0
        Scale of each class's own offset from its leaf centre, relative to the
        root's children's offsets.
    offset : float, default 1.0
        Size of the shared positive offset relative to the root's children's
        offsets (0 for none).
    relu : bool, default True

    Returns
    -------
    M : ndarray of shape (branching ** depth, D)
    paths : ndarray of shape (branching ** depth, depth)
        Per class, the branch taken at each depth; two classes' lowest common
        ancestor has the depth of their longest common prefix.
    """
    depth = _integer("depth", depth, 1)
    branching = _integer("branching", branching, 2)
    D = _integer("D", D, 1)
    seed = _integer("seed", seed, 0)
    decay = _non_negative("decay", decay)
    noise = _non_negative("noise", noise)
    offset = _non_negative("offset", offset)
    if decay == 0.0:
        raise ValueError("decay must be positive")
    rng = np.random.default_rng(seed)
    unit = 1.0 / np.sqrt(D)
    centres = _centre_tree(rng, D, branching, [unit * decay**level for level in range(depth)])
    size = centres.shape[0]
    means = centres + rng.normal(scale=noise * unit, size=(size, D))
    means += offset * unit * rng.uniform(0.5, 1.5, size=D)
    if relu:
        np.maximum(means, 0.0, out=means)
    order = rng.permutation(size)
    return means[order], _leaf_paths(order, depth, branching)


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
