"""How faithfully an MMF graph follows a known hierarchy: tuple partners scored by tree depth.

A class's *partners* in a factorization are the other members of the first
level whose tuple contains it. On classes whose place in a tree is known
(a path of branches from the root, one per depth), a partner pair scores the
depth of the pair's lowest common ancestor: 0 for classes under different
children of the root, ``depth - 1`` for siblings (leaves of one parent). The
*fidelity* is the mean over classes of their partners' mean score.

The same score reads a dendrogram: a class's partners there are its ``k - 1``
nearest leaves (smallest cophenetic distance), the reading a user makes of a
dendrogram drawn instead of the MMF graph.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["first_partners", "dendrogram_partners", "tree_fidelity", "lca_depth"]


def lca_depth(paths: np.ndarray, i: np.ndarray | int, j: np.ndarray | int) -> np.ndarray:
    """Depth of the lowest common ancestor of classes ``i`` and ``j`` (number of shared leading branches)."""
    a = np.atleast_2d(paths[i])
    b = np.atleast_2d(paths[j])
    same = np.cumprod(a == b, axis=1)
    return same.sum(axis=1)


def first_partners(tuples: np.ndarray, size: int) -> list[np.ndarray]:
    """Per class, the other members of the first tuple that contains it (empty if none does).

    Parameters
    ----------
    tuples : ndarray of shape (levels, k)
        The levels' tuples in level order (``Factorization.tuples``).
    size : int
        Number of classes.
    """
    tuples = np.asarray(tuples, dtype=np.int64)
    partners: list[np.ndarray] = [np.empty(0, dtype=np.int64)] * size
    seen = np.zeros(size, dtype=bool)
    for t in tuples:
        for member in t:
            if not seen[member]:
                seen[member] = True
                partners[member] = t[t != member].copy()
    return partners


def dendrogram_partners(points: np.ndarray, count: int, method: str = "average",
                        metric: str = "cosine") -> list[np.ndarray]:
    """Per row of ``points``, its ``count`` nearest leaves in a SciPy dendrogram of the rows.

    ``method`` and ``metric`` are those of :func:`scipy.cluster.hierarchy.linkage`
    (``"ward"`` needs ``metric="euclidean"``). Ties in cophenetic distance are
    broken by the rows' Euclidean distance, then by index.
    """
    from scipy.cluster.hierarchy import cophenet, linkage
    from scipy.spatial.distance import pdist, squareform

    points = np.asarray(points, dtype=np.float64)
    if method == "ward":
        tree = linkage(points, method="ward")
    else:
        tree = linkage(pdist(points, metric=metric), method=method)
    cophenetic = squareform(cophenet(tree))
    plain = squareform(pdist(points))
    size = points.shape[0]
    out = []
    for i in range(size):
        order = np.lexsort((np.arange(size), plain[i], cophenetic[i]))
        order = order[order != i]
        out.append(order[:count])
    return out


def tree_fidelity(partners: list[np.ndarray], paths: Any) -> float:
    """Mean over classes (those with partners) of their partners' mean LCA depth in the tree ``paths``.

    Parameters
    ----------
    partners : list of integer arrays
        Per class, its partners (:func:`first_partners`, :func:`dendrogram_partners`).
    paths : array-like of shape (m, depth)
        Per class, the branch taken at each depth (e.g. ``return_leaves=True``
        of :func:`mmf_stream.datasets.planted_tree`).
    """
    paths = np.asarray(paths)
    scores = []
    for i, others in enumerate(partners):
        if len(others):
            scores.append(float(lca_depth(paths, np.full(len(others), i), np.asarray(others)).mean()))
    if not scores:
        raise ValueError("no class has partners")
    return float(np.mean(scores))
