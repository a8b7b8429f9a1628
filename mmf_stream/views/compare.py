"""Comparing the MMF graphs of several factorizations of the same classes (e.g. layers)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
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
        least ``threshold``).
    """

    names: list[str]
    depths: np.ndarray
    class_overlap: np.ndarray
    pair_overlap: np.ndarray
    wavelet_order: np.ndarray
    saturated: list[bool]
    threshold: float

    def table(self) -> str:
        """A plain-text report."""
        first = int(self.depths[0])
        lines = [
            f"{'layers':<34} {'classes@' + str(first):>11} {'pairs@' + str(first):>9} "
            f"{'classes@' + str(int(self.depths[-1])):>11} {'wavelet order':>13}  saturated"
        ]
        for p in range(len(self.names) - 1):
            pair = f"{self.names[p]} -> {self.names[p + 1]}"
            lines.append(
                f"{pair:<34} {self.class_overlap[p, 0]:>11.2f} {self.pair_overlap[p, 0]:>9.2f} "
                f"{self.class_overlap[p, -1]:>11.2f} {self.wavelet_order[p]:>13.2f}  {'YES' if self.saturated[p] else 'no'}"
            )
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


def compare(results: Sequence[Any], names: Sequence[str] | None = None, *, levels: int | None = None,
            threshold: float = 0.8) -> Comparison:
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
    """
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
    return Comparison(list(names), depths, class_overlap, pair_overlap, wavelet_order, saturated, threshold)


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
