"""Views of an MMF: the graph as a figure or an interactive page, the dendrogram
baseline, and comparisons between factorizations (layers)."""

from __future__ import annotations

from mmf_stream.views._compare import Comparison, compare, plot_comparison
from mmf_stream.views._figure import (
    inserted_labels,
    mean_distances,
    plot,
    plot_dendrogram,
    plot_insertion,
    plot_with_dendrogram,
)
from mmf_stream.views._html import to_html
from mmf_stream.views._layout import GraphLayout, layout

__all__ = [
    "Comparison",
    "GraphLayout",
    "compare",
    "layout",
    "mean_distances",
    "plot",
    "plot_comparison",
    "plot_dendrogram",
    "plot_insertion",
    "plot_with_dendrogram",
    "to_html",
]
