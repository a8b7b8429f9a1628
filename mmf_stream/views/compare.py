"""Comparing the MMF graphs of several factorizations of the same classes (e.g. layers)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
import warnings
from typing import Any

import numpy as np


@dataclass
class Comparison:
    """Level-by-level similarity of consecutive factorizations.

    Attributes
    ----------
    names : list of str
        One name per factorization (e.g. the layer).
    depths : ndarray of shape (n_depths,)
        Level counts ``n`` at which the graphs are compared.
    class_overlap : ndarray of shape (pairs, n_depths)
        For consecutive pairs, the Jaccard overlap of the sets of classes that
        take part in the first ``n`` levels.
    pair_overlap : ndarray of shape (pairs, n_depths)
        Jaccard overlap of the sets of class pairs that share a tuple in the
        first ``n`` levels (the compositions themselves).
    wavelet_order : ndarray of shape (pairs,)
        Spearman correlation of the level at which each class becomes a
        wavelet (classes in the core count as after the last level).
    saturated : list of bool
        Consecutive pairs whose first levels compose the same classes
        (``class_overlap`` and ``pair_overlap`` at the first depth both at
        least ``threshold``): the paper's saturation, the sign that the
        later layer adds no new compositions and can go.
    threshold : float
        The overlap used for ``saturated``.
    change : ndarray of shape (pairs,)
        The layer trajectory: ``1 - pair_overlap`` at the first depth, how much
        the compositions change from one result to the next (0: the same
        tuples, 1: none shared).
    null_overlap : ndarray of shape (pairs,)
        Mean ``pair_overlap`` at the first depth when the second result's
        classes are relabelled at random (permutation null model,
        ``null_draws`` draws): the overlap two unrelated graphs of these
        shapes reach by chance.
    overlap_p : ndarray of shape (pairs,)
        Permutation p-value of the observed ``pair_overlap`` at the first
        depth: ``(1 + #draws at least as high) / (1 + null_draws)``. Small:
        the two results share compositions beyond chance; near 1: the
        compositions changed as much as between unrelated graphs.
    null_draws : int
        Permutations drawn for ``null_overlap`` and ``overlap_p``.
    """

    names: list[str]
    depths: np.ndarray
    class_overlap: np.ndarray
    pair_overlap: np.ndarray
    wavelet_order: np.ndarray
    saturated: list[bool]
    threshold: float
    change: np.ndarray | None = None
    null_overlap: np.ndarray | None = None
    overlap_p: np.ndarray | None = None
    null_draws: int = 0

    def table(self) -> str:
        """A plain-text report."""
        first = int(self.depths[0])
        lines = [
            f"{'layers':<34} {'classes@' + str(first):>11} {'pairs@' + str(first):>9} "
            f"{'classes@' + str(int(self.depths[-1])):>11} {'wavelet order':>13} {'change':>7} {'null':>6} "
            f"{'p':>7}  saturated"
        ]
        for p in range(len(self.names) - 1):
            pair = f"{self.names[p]} -> {self.names[p + 1]}"
            change = self.change[p] if self.change is not None else 1.0 - self.pair_overlap[p, 0]
            null = f"{self.null_overlap[p]:>6.2f}" if self.null_overlap is not None else f"{'-':>6}"
            pval = f"{self.overlap_p[p]:>7.3g}" if self.overlap_p is not None else f"{'-':>7}"
            lines.append(
                f"{pair:<34} {self.class_overlap[p, 0]:>11.2f} {self.pair_overlap[p, 0]:>9.2f} "
                f"{self.class_overlap[p, -1]:>11.2f} {self.wavelet_order[p]:>13.2f} {change:>7.2f} {null} {pval}  "
                f"{'YES' if self.saturated[p] else 'no'}"
            )
        if self.null_draws:
            lines.append(f"change = 1 - pairs@{first}; null: pairs@{first} of randomly relabelled graphs "
                         f"({self.null_draws} draws); p: chance of an overlap at least as high under that null")
        return "\n".join(lines)


def _jaccard(a: set, b: set) -> float:
    union = a | b
    return len(a & b) / len(union) if union else 1.0


def _aligned(results: Sequence[Any]) -> list[np.ndarray]:
    """Per result, a map from its row index to the position of its label in the first result."""
    for i, result in enumerate(results):
        if result.labels is None:
            raise ValueError(f"result {i + 1} has no class labels; comparisons match classes by label")
    reference = [str(x) for x in results[0].labels.tolist()]
    position = {label: i for i, label in enumerate(reference)}
    maps = []
    for i, result in enumerate(results):
        labels = [str(x) for x in result.labels.tolist()]
        if set(labels) != set(reference):
            missing = sorted(set(reference) ^ set(labels))[:3]
            raise ValueError(f"result {i + 1} has different classes from result 1 (e.g. {', '.join(missing)})")
        maps.append(np.array([position[label] for label in labels]))
    return maps


def permutation_overlap(first: set, second: set, size: int, *, draws: int = 200,
                        seed: int = 0) -> tuple[float, float]:
    """Mean Jaccard overlap of two sets of class pairs when ``second``'s classes are relabelled at random, and the
    permutation p-value of the observed overlap.

    Parameters
    ----------
    first, second : set of (int, int)
        Class pairs (``a < b``) among ``size`` classes.
    size : int
        Number of classes.
    draws : int
        Random relabellings (at least 1).
    seed : int
        Seed of the permutations (the result is reproducible).

    Returns
    -------
    (float, float)
        The null model's mean overlap and ``(1 + #draws at least as high as observed) / (1 + draws)``.
    """
    if isinstance(draws, bool) or int(draws) < 1:
        raise ValueError(f"null draws must be at least 1, got {draws}")
    observed = _jaccard(first, second)
    if not second:
        return observed, 1.0
    rng = np.random.default_rng(seed)
    pairs = np.array(sorted(second), dtype=np.int64)
    keys = {a * size + b for a, b in first}
    overlaps = np.empty(int(draws))
    for d in range(int(draws)):
        relabel = rng.permutation(size)
        a, b = relabel[pairs[:, 0]], relabel[pairs[:, 1]]
        moved = np.minimum(a, b) * size + np.maximum(a, b)
        shared = len(keys.intersection(moved.tolist()))
        overlaps[d] = shared / (len(keys) + len(pairs) - shared)
    return float(overlaps.mean()), float((1 + np.count_nonzero(overlaps >= observed - 1e-12)) / (1 + int(draws)))


def compare(results: Sequence[Any], names: Sequence[str] | None = None, *, levels: int | None = None,
            threshold: float = 0.8, null_draws: int = 200, seed: int = 0) -> Comparison:
    """Compare the MMF graphs of factorizations of the same classes, level by level.

    Parameters
    ----------
    results : sequence of Factorization
        At least two, with the same set of labels (orders may differ).
    names : sequence of str, optional
    levels : int, optional
        Deepest level compared (default: the fewest levels of any result).
    threshold : float
        Overlap at which consecutive results are flagged as saturated.
    null_draws : int, default 200
        Random relabellings for the permutation null model of the layer
        trajectory (:func:`permutation_overlap`); the smallest p-value it can
        report is ``1 / (1 + null_draws)``.
    seed : int, default 0
        Seed of those relabellings.
    """
    if isinstance(null_draws, bool) or not isinstance(null_draws, (int, np.integer)) or null_draws < 1:
        raise ValueError(f"null_draws must be a whole number of at least 1, got {null_draws!r}")
    if len(results) < 2:
        raise ValueError("compare needs at least two results")
    names = [f"result {i + 1}" for i in range(len(results))] if names is None else [str(n) for n in names]
    maps = _aligned(results)
    deepest = min(r.n_levels for r in results) if levels is None else min(int(levels), *(r.n_levels for r in results))
    if deepest < 1:
        raise ValueError("levels must be at least 1")
    first = max(1, min(deepest, results[0].size // 10 or 1))
    depths = np.unique(np.linspace(first, deepest, num=min(deepest - first + 1, 12)).round().astype(int))
    classes, pairs, wavelet_levels = [], [], []
    for result, mapping in zip(results, maps):
        seen, co = set(), set()
        per_depth_classes, per_depth_pairs = [], []
        for number, level in enumerate(result.levels[:deepest], start=1):
            members = sorted(int(mapping[i]) for i in level.indices)
            seen.update(members)
            co.update((a, b) for a_i, a in enumerate(members) for b in members[a_i + 1 :])
            if number in set(depths.tolist()):
                per_depth_classes.append(set(seen))
                per_depth_pairs.append(set(co))
        classes.append(per_depth_classes)
        pairs.append(per_depth_pairs)
        order = np.full(result.size, result.n_levels + 1.0)
        has = np.asarray(result.wavelets) >= 0  # rotation-only levels (a knock-out's) leave no class
        order[mapping[np.asarray(result.wavelets)[has]]] = np.flatnonzero(has) + 1.0
        wavelet_levels.append(order)
    n_pairs = len(results) - 1
    class_overlap = np.array([[_jaccard(classes[p][d], classes[p + 1][d]) for d in range(len(depths))] for p in range(n_pairs)])
    pair_overlap = np.array([[_jaccard(pairs[p][d], pairs[p + 1][d]) for d in range(len(depths))] for p in range(n_pairs)])
    from scipy.stats import spearmanr

    wavelet_order = np.array([spearmanr(wavelet_levels[p], wavelet_levels[p + 1]).statistic for p in range(n_pairs)])
    saturated = [bool(class_overlap[p, 0] >= threshold and pair_overlap[p, 0] >= threshold) for p in range(n_pairs)]
    nulls = [permutation_overlap(pairs[p][0], pairs[p + 1][0], results[0].size, draws=int(null_draws), seed=seed + p)
             for p in range(n_pairs)]
    return Comparison(list(names), depths, class_overlap, pair_overlap, wavelet_order, saturated, threshold,
                      change=1.0 - pair_overlap[:, 0], null_overlap=np.array([n[0] for n in nulls]),
                      overlap_p=np.array([n[1] for n in nulls]), null_draws=int(null_draws))




@dataclass
class Novelty:
    """How much each of some classes adds beyond compositions of the others, calibrated against the rest.

    Attributes
    ----------
    labels : list
        The classes asked about.
    score : ndarray of shape (n,)
        Fraction of the class's energy that the best composition of
        ``order - 1`` other classes (orthogonal matching pursuit) does not
        explain. 0: the class is a combination of existing classes; 1:
        orthogonal to all of them.
    percentile : ndarray of shape (n,)
        Percentage of the reference classes (every class not asked about,
        scored the same way in the same result) whose score is lower.
    p_value : ndarray of shape (n,)
        ``(1 + #reference classes scoring at least as high) / (1 + #reference)``:
        small when the class is more novel than the classes already there.
    partners : list of list
        The classes of each one's best composition.
    reference : int
        Number of reference classes.
    """

    labels: list
    score: np.ndarray
    percentile: np.ndarray
    p_value: np.ndarray
    partners: list[list]
    reference: int

    def table(self) -> str:
        """A plain-text report."""
        lines = [f"{'class':<30} {'novelty':>8} {'percentile':>10} {'p':>7}  partners"]
        for i, label in enumerate(self.labels):
            shown = ", ".join(map(str, self.partners[i][:4])) + (" ..." if len(self.partners[i]) > 4 else "")
            lines.append(f"{str(label):<30} {self.score[i]:>8.3f} {self.percentile[i]:>10.1f} "
                         f"{self.p_value[i]:>7.3g}  {shown}")
        lines.append("novelty: energy no composition of other classes explains (partners: the one found); "
                     f"percentile and p against the other "
                     f"{self.reference} classes of the same result")
        return "\n".join(lines)


#: folds of the reference classes when each is scored against the others (leave-a-fold-out)
NOVELTY_FOLDS = 10


def composition_residuals(gram: Any, targets: Sequence[int], dictionary: Sequence[int],
                          atoms: int) -> tuple[np.ndarray, list[list[int]]]:
    """Fraction of each target's energy that no composition of ``atoms`` dictionary classes explains.

    The composition is found by orthogonal matching pursuit on the Gram matrix
    (scikit-learn's :func:`~sklearn.linear_model.orthogonal_mp_gram`): the
    residual ``||x_t - sum_j w_j x_j||^2 / ||x_t||^2`` of the best ``atoms``-term
    combination it picks.

    Parameters
    ----------
    gram : array of shape (size, size)
        Gram matrix of the classes (``C_ij = <x_i, x_j>``).
    targets, dictionary : sequence of int
        Classes scored, and classes they may be composed of (disjoint).
    atoms : int
        Most classes in a composition (at least 1).

    Returns
    -------
    (ndarray, list of list of int)
        Residual fractions in [0, 1] and, per target, the dictionary classes used.
    """
    try:
        from sklearn.linear_model import orthogonal_mp_gram
    except ImportError as exc:  # pragma: no cover - exercised without the extra
        raise ImportError("novelty needs scikit-learn: pip install 'mmf-stream[analyses]'") from exc
    C = np.asarray(gram, dtype=np.float64)
    targets, dictionary = np.asarray(targets, dtype=np.int64), np.asarray(dictionary, dtype=np.int64)
    atoms = max(1, min(int(atoms), dictionary.size))
    G = C[np.ix_(dictionary, dictionary)]
    Xy = C[np.ix_(dictionary, targets)]
    own = np.diag(C)[targets]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "orthogonal matching pursuit ended prematurely": an exact fit
        W = np.asarray(orthogonal_mp_gram(G, Xy, n_nonzero_coefs=atoms, copy_Gram=True, copy_Xy=True))
    W = W.reshape(dictionary.size, targets.size)
    residual = own - 2.0 * np.einsum("dt,dt->t", W, Xy) + np.einsum("dt,dt->t", W, G @ W)
    scores = np.where(own > 0, np.clip(residual / np.where(own > 0, own, 1.0), 0.0, 1.0), 0.0)
    used = [dictionary[np.flatnonzero(W[:, t])].tolist() for t in range(targets.size)]
    return scores, used


def novelty(result: Any, labels: Sequence[Any], matrix: Any = None, *, atoms: int | None = None,
            folds: int = NOVELTY_FOLDS) -> Novelty:
    """Whether classes add information beyond compositions of the existing ones (e.g. classes just inserted).

    Each asked class is scored by :func:`composition_residuals` against all
    the other classes (the reference); each reference class is scored the same
    way against the reference classes outside its fold, which calibrates the
    score: a class composed of existing ones scores near 0 (low percentile),
    a class unlike anything there near 1 (high percentile, small p-value).

    Parameters
    ----------
    result : Factorization
        A labelled result holding the classes.
    labels : sequence
        The classes to score (at least one; the rest are the reference).
    matrix : array of shape (size, size), optional
        The factored Gram matrix (default: the result's reconstruction).
    atoms : int, optional
        Classes in a composition (default: the result's order minus one, the
        partners a class has in one MMF level).
    folds : int, default :data:`NOVELTY_FOLDS`
        Folds of the reference when scoring it (at least 2).
    """
    if result.labels is None:
        raise ValueError("novelty names classes by label; this result has no labels")
    if isinstance(folds, bool) or not isinstance(folds, (int, np.integer)) or folds < 2:
        raise ValueError(f"folds must be a whole number of at least 2, got {folds!r}")
    names = [str(x) for x in result.labels.tolist()]
    position = {name: i for i, name in enumerate(names)}
    asked = [str(x) for x in ([labels] if isinstance(labels, str) else list(labels))]
    if not asked:
        raise ValueError("novelty needs at least one class label")
    unknown = [x for x in asked if x not in position]
    if unknown:
        raise ValueError(f"unknown label {unknown[0]!r} for novelty")
    chosen = list(dict.fromkeys(position[x] for x in asked))
    rest = np.setdiff1d(np.arange(result.size), chosen)
    if rest.size < 2 * folds:
        raise ValueError(f"novelty needs at least {2 * folds} other classes to calibrate against, got {rest.size}")
    C = result.reconstruct() if matrix is None else np.asarray(matrix, dtype=np.float64)
    if C.shape != (result.size, result.size):
        raise ValueError(f"matrix must be {result.size} x {result.size} (the result's classes), got {C.shape}")
    k = result.order - 1 if atoms is None else int(atoms)
    if k < 1:
        raise ValueError(f"atoms must be at least 1, got {k}")
    own, used = composition_residuals(C, chosen, rest, k)
    reference = np.empty(rest.size)
    fold_of = np.arange(rest.size) % int(folds)
    for f in range(int(folds)):
        inside = fold_of == f
        reference[inside] = composition_residuals(C, rest[inside], rest[~inside], k)[0]
    percentile = 100.0 * np.array([np.count_nonzero(reference < s) for s in own]) / reference.size
    p_value = np.array([(1 + np.count_nonzero(reference >= s - 1e-12)) / (1 + reference.size) for s in own])
    return Novelty([result.labels[i].item() for i in chosen], own, percentile, p_value,
                   [[names[j] for j in u] for u in used], int(rest.size))


#: fewest classes besides the inserted ones for a before/after view to state their novelty
NOVELTY_MIN_REFERENCE = 2 * NOVELTY_FOLDS


def novelty_note(after: Any, new: Sequence[Any], matrix: Any = None, *, shown: int = 3) -> str:
    """``"novelty 0.80 (100th percentile, p 0.005), ..."`` for the first ``shown`` inserted classes ("" when
    there are too few other classes to calibrate against, :data:`NOVELTY_MIN_REFERENCE`)."""
    if not new or after.size - len(new) < NOVELTY_MIN_REFERENCE:
        return ""
    found = novelty(after, list(new), matrix=matrix)
    parts = [f"{found.score[i]:.2f} ({found.percentile[i]:.0f}th percentile, p {found.p_value[i]:.2g})"
             for i in range(min(shown, len(new)))]
    return "novelty " + ", ".join(parts) + (" ..." if len(new) > shown else "")

def plot_comparison(comparison: Comparison):
    """Overlap against depth for each consecutive pair."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharey=True)
    for p in range(len(comparison.names) - 1):
        label = f"{comparison.names[p]} \u2192 {comparison.names[p + 1]}" + (" (saturated)" if comparison.saturated[p] else "")
        axes[0].plot(comparison.depths, comparison.class_overlap[p], marker="o", label=label)
        axes[1].plot(comparison.depths, comparison.pair_overlap[p], marker="o", label=label)
    axes[0].set_title("classes in the first n levels (Jaccard)", fontsize=9)
    axes[1].set_title("class pairs sharing a tuple in the first n levels (Jaccard)", fontsize=9)
    for ax in axes:
        ax.set_xlabel("first n levels")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("overlap")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    return fig
