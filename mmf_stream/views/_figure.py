"""The MMF graph, the dendrogram baseline and layer comparisons as matplotlib figures."""

from __future__ import annotations

from typing import Any

import numpy as np

from mmf_stream.views._layout import GraphLayout, display_labels, layout

_ROW = 0.55  # vertical distance between members of a level (inches)


def _light(colour: str, amount: float = 0.82) -> tuple[float, float, float]:
    from matplotlib.colors import to_rgb

    r, g, b = to_rgb(colour)
    return (r + (1 - r) * amount, g + (1 - g) * amount, b + (1 - b) * amount)


def _column_width(graph: GraphLayout) -> float:
    """Inches per level: room for the longest label at 8.5 pt plus the links."""
    longest = max((len(node.label) for node in graph.nodes), default=4)
    return max(1.2, 0.085 * (longest + 3) / 0.78 + 0.35)


def draw_graph(graph: GraphLayout, ax: Any, title: str | None = None) -> None:
    """Draw a laid-out MMF graph on a matplotlib axes (units: inches)."""
    from matplotlib.patches import FancyBboxPatch

    width = _column_width(graph)
    half = width * 0.39
    for link in graph.links:
        (c0, r0), (c1, r1) = link.source, link.target
        x0, y0 = c0 * width + half, -r0 * _ROW
        x1, y1 = c1 * width - half, -r1 * _ROW
        xs = np.linspace(0, 1, 24)
        curve_x = x0 + (x1 - x0) * xs
        curve_y = y0 + (y1 - y0) * (3 * xs**2 - 2 * xs**3)
        ax.plot(curve_x, curve_y, color=link.colour, alpha=0.6, linewidth=1.3, zorder=1)
    for node in graph.nodes:
        x, y = node.column * width, -node.row * _ROW
        face = "#fff59d" if node.highlighted else _light(node.colour)
        edge = "#c62828" if node.is_wavelet else node.colour
        ax.add_patch(FancyBboxPatch(
            (x - half, y - 0.16), 2 * half, 0.32, boxstyle="round,pad=0.02,rounding_size=0.08",
            fc=face, ec=edge, lw=1.8 if node.is_wavelet else 1.0, zorder=2,
        ))
        text = ("\u2605 " if node.is_wavelet else "") + node.label
        ax.text(
            x, y, text, ha="center", va="center", fontsize=8.5, zorder=3,
            fontweight="bold" if node.is_wavelet else "normal",
            color="#b71c1c" if node.is_wavelet else "#212121",
        )
    errors = {node.level: node.squared_error for node in graph.nodes}
    for column, number in enumerate(graph.levels):
        ax.text(column * width, 0.62, f"level {number}", ha="center", va="bottom", fontsize=8, color="#424242")
        ax.text(
            column * width, -(graph.order - 1) * _ROW - 0.5, f"e\u00b2 {errors[number]:.2g}",
            ha="center", va="top", fontsize=7, color="#757575",
        )
    ax.set_xlim(-width * 0.5, (len(graph.levels) - 1) * width + width * 0.5)
    ax.set_ylim(-(graph.order - 1) * _ROW - 0.9, 1.0)
    ax.set_aspect("equal")
    ax.axis("off")
    shown = f"levels {graph.levels[0]}\u2013{graph.levels[-1]} of {graph.total_levels}"
    heading = title or "MMF graph"
    ax.set_title(
        f"{heading}: {shown} (order {graph.order}); \u2605 marks each level's wavelet; "
        f"error {graph.error:.4g} (relative {graph.relative_error:.3g}); core {len(graph.core)} classes",
        fontsize=9, loc="left",
    )


def plot(
    factorization: Any,
    *,
    levels: int | None = 30,
    start: int = 1,
    highlight: Any = None,
    index_labels: bool = False,
    title: str | None = None,
    ax: Any = None,
):
    """Draw the MMF graph: one group per level, the wavelet marked, links to earlier groups.

    Parameters
    ----------
    factorization : Factorization
    levels : int or None, default 30
        How many levels to draw (None: all). Large results are paged with ``start``.
    start : int, default 1
        First level drawn.
    highlight : str or sequence of str, optional
        Labels to highlight (an unknown label is an error).
    index_labels : bool
        Name classes by row index when the result has no labels.
    title : str, optional
    ax : matplotlib Axes, optional
        Draw into this axes instead of a new figure.

    Returns
    -------
    matplotlib.figure.Figure
    """
    graph = layout(factorization, levels=levels, start=start, highlight=highlight, index_labels=index_labels)
    if ax is None:
        import matplotlib.pyplot as plt

        width = _column_width(graph)
        fig, ax = plt.subplots(figsize=(min(200.0, max(6.0, width * len(graph.levels) + 1.5)), 1.6 + _ROW * graph.order))
    else:
        fig = ax.figure
    draw_graph(graph, ax, title)
    return fig


def mean_distances(matrix: np.ndarray) -> np.ndarray:
    """Distances between the vectors behind a Gram matrix: ``sqrt(C_ii + C_jj - 2 C_ij)``."""
    diag = np.diag(matrix)
    squared = diag[:, None] + diag[None, :] - 2 * matrix
    np.fill_diagonal(squared, 0.0)
    return np.sqrt(np.clip(0.5 * (squared + squared.T), 0.0, None))


def plot_dendrogram(matrix: np.ndarray, labels: list[str], *, method: str = "average", ax: Any = None):
    """Agglomerative-clustering dendrogram of the classes behind ``matrix`` (the paper's baseline)."""
    from scipy.cluster.hierarchy import dendrogram, linkage
    from scipy.spatial.distance import squareform

    distances = mean_distances(np.asarray(matrix, dtype=np.float64))
    tree = linkage(squareform(distances, checks=False), method=method)
    if ax is None:
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(min(200.0, max(6.0, 0.25 * len(labels))), 3.5))
    else:
        fig = ax.figure
    dendrogram(tree, labels=list(labels), ax=ax, leaf_rotation=90, leaf_font_size=8, color_threshold=None)
    ax.set_title(f"agglomerative clustering ({method} linkage) of the same matrix", fontsize=9, loc="left")
    ax.set_ylabel("distance between class means", fontsize=8)
    return fig


def plot_with_dendrogram(factorization: Any, matrix: np.ndarray, **kwargs: Any):
    """The MMF graph above the dendrogram of the same matrix (the paper's Figure 5 layout)."""
    import matplotlib.pyplot as plt

    graph = layout(
        factorization, levels=kwargs.get("levels", 30), start=kwargs.get("start", 1),
        highlight=kwargs.get("highlight"), index_labels=kwargs.get("index_labels", False),
    )
    width = _column_width(graph)
    names = display_labels(factorization, index_labels=True)
    fig_width = min(200.0, max(8.0, width * len(graph.levels) + 1.5, 0.25 * len(names)))
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(fig_width, 2.2 + _ROW * graph.order + 4.0),
                                      gridspec_kw={"height_ratios": [1.6 + _ROW * graph.order, 4.0]})
    draw_graph(graph, top, kwargs.get("title"))
    plot_dendrogram(matrix, names, ax=bottom)
    fig.tight_layout()
    return fig


def inserted_labels(before: Any, after: Any) -> list[str]:
    """Labels of ``after`` that ``before`` lacks (the inserted classes)."""
    if before.labels is None or after.labels is None:
        raise ValueError("a before/after view needs both results to have labels")
    known = {str(x) for x in before.labels.tolist()}
    new = [str(x) for x in after.labels.tolist() if str(x) not in known]
    missing = known - {str(x) for x in after.labels.tolist()}
    if missing:
        raise ValueError(f"the 'after' result lacks {len(missing)} class(es) of 'before' (e.g. {sorted(missing)[0]!r})")
    if not new:
        raise ValueError("the 'after' result holds no class that 'before' lacks")
    return new


def plot_insertion(before: Any, after: Any, *, levels: int = 20):
    """Before/after view of an insertion: the graphs around where the new classes landed.

    The inserted classes and their tuple partners are highlighted in both.
    """
    import matplotlib.pyplot as plt

    new = inserted_labels(before, after)
    names = [str(x) for x in after.labels.tolist()]
    new_index = {names.index(label) for label in new}
    landing = [lvl.number for lvl in after.levels if lvl.wavelet in new_index]
    focus = min(landing) if landing else after.n_levels
    partners = set(new)
    for lvl in after.levels:
        if new_index & set(lvl.indices.tolist()):
            partners.update(names[i] for i in lvl.indices.tolist())
    known = {str(x) for x in before.labels.tolist()}
    start_after = max(1, min(focus - levels // 2, after.n_levels - levels + 1))
    start_before = max(1, min(start_after, before.n_levels - levels + 1))
    graph_after = layout(after, levels=levels, start=start_after, highlight=sorted(partners))
    graph_before = layout(before, levels=levels, start=start_before, highlight=sorted(partners & known))
    width = max(_column_width(graph_after), _column_width(graph_before))
    fig_width = min(200.0, max(8.0, width * levels + 1.5))
    height = 1.6 + _ROW * after.order
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(fig_width, 2 * height + 0.6))
    draw_graph(graph_before, top, "before")
    shown = ", ".join(new[:5]) + (" ..." if len(new) > 5 else "")
    draw_graph(graph_after, bottom, f"after inserting {shown} (highlighted with their partners)")
    fig.tight_layout()
    return fig
