"""Views of an MMF: the graph as a figure or an interactive page, the dendrogram
baseline, and comparisons between factorizations (layers)."""

from __future__ import annotations

from mmf_stream.views.compare import (
    Comparison,
    Novelty,
    compare,
    composition_residuals,
    novelty,
    permutation_overlap,
    plot_comparison,
)
from mmf_stream.views.figure import (
    LEVELS_PER_PAGE,
    check_figure_size,
    inserted_labels,
    label_fonts,
    mean_distances,
    plot,
    plot_dendrogram,
    plot_insertion,
    plot_with_dendrogram,
    save_figure,
)
from mmf_stream.views.html import to_html
from mmf_stream.views.layout import (
    MAX_LABEL_CHARS,
    GraphLayout,
    composition_colour,
    first_difference,
    layout,
    shorten,
)

__all__ = [
    "LEVELS_PER_PAGE",
    "MAX_LABEL_CHARS",
    "Comparison",
    "Novelty",
    "GraphLayout",
    "check_figure_size",
    "compare",
    "composition_colour",
    "composition_residuals",
    "first_difference",
    "inserted_labels",
    "label_fonts",
    "layout",
    "mean_distances",
    "novelty",
    "permutation_overlap",
    "plot",
    "plot_comparison",
    "plot_dendrogram",
    "plot_insertion",
    "plot_with_dendrogram",
    "save_figure",
    "shorten",
    "to_html",
]
