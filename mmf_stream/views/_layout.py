"""Layout of the MMF graph: one column per level, links to earlier groups.

Pure Python/NumPy; the matplotlib and HTML renderers draw the same layout.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: colours (Tableau 10, as in matplotlib) cycled over compositions
PALETTE = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
    "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
)


@dataclass
class Node:
    """One member of one level's tuple."""

    level: int  # 1-based level number
    column: int  # 0-based column in the drawing
    row: int  # 0-based position inside the level's group
    index: int  # row index of the class in the matrix
    label: str
    is_wavelet: bool
    partners: list[str]
    squared_error: float
    colour: str
    highlighted: bool = False


@dataclass
class Link:
    """A class carried from an earlier level's group to a later one."""

    source: tuple[int, int]  # (column, row)
    target: tuple[int, int]
    colour: str


@dataclass
class GraphLayout:
    levels: list[int]  # level numbers shown, in column order
    order: int
    nodes: list[Node] = field(default_factory=list)
    links: list[Link] = field(default_factory=list)
    total_levels: int = 0
    core: list[str] = field(default_factory=list)
    error: float = 0.0
    relative_error: float = 0.0


def display_labels(factorization: Any, index_labels: bool = False) -> list[str]:
    """One string per class; a clear error for results without labels."""
    if factorization.labels is None:
        if not index_labels:
            raise ValueError(
                "this result has no class labels (factorize with labels / --labels), "
                "or ask for row numbers as names (index_labels=True / --index-labels)"
            )
        return [str(i) for i in range(factorization.size)]
    return [str(x) for x in factorization.labels.tolist()]


def resolve_highlight(names: list[str], highlight: Any) -> set[int]:
    """Indices of the highlighted labels; unknown labels are an error naming close matches."""
    if not highlight:
        return set()
    import difflib

    position = {name: i for i, name in enumerate(names)}
    chosen = set()
    for item in [highlight] if isinstance(highlight, str) else list(highlight):
        key = str(item)
        if key not in position:
            close = difflib.get_close_matches(key, names, n=3)
            hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
            raise ValueError(f"unknown label {key!r} in highlight{hint}")
        chosen.add(position[key])
    return chosen


def layout(
    factorization: Any,
    *,
    levels: int | None = None,
    start: int = 1,
    highlight: Any = None,
    index_labels: bool = False,
) -> GraphLayout:
    """Lay out levels ``start .. start + levels - 1`` of the MMF graph."""
    names = display_labels(factorization, index_labels)
    total = factorization.n_levels
    if not isinstance(start, (int, np.integer)) or not 1 <= start <= max(total, 1):
        raise ValueError(f"start must be a level between 1 and {total}, got {start}")
    count = total - start + 1 if levels is None else int(levels)
    if count < 1:
        raise ValueError(f"levels must be at least 1, got {levels}")
    shown = list(range(start, min(total, start + count - 1) + 1))
    marked = resolve_highlight(names, highlight)

    # compositions: a level joins the compositions of the earlier levels its
    # members came through (union-find); it takes the colour of the oldest one,
    # so compositions keep their colour as they grow
    parent = list(range(len(shown)))

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    last_seen: dict[int, tuple[int, int]] = {}
    pending_links: list[tuple[tuple[int, int], tuple[int, int]]] = []
    level_colour: list[str] = []
    colour_of_root: dict[int, str] = {}
    for column, number in enumerate(shown):
        level = factorization.levels[number - 1]
        roots = set()
        for row, index in enumerate(level.indices.tolist()):
            if index in last_seen:
                source = last_seen[index]
                roots.add(find(source[0]))
                pending_links.append((source, (column, row)))
            last_seen[index] = (column, row)
        if roots:
            oldest = min(roots)
            colour = colour_of_root[oldest]
            for root in roots:
                parent[root] = oldest
            parent[column] = oldest
        else:
            colour = PALETTE[len(colour_of_root) % len(PALETTE)]
            colour_of_root[column] = colour
        level_colour.append(colour)

    graph = GraphLayout(
        levels=shown,
        order=factorization.order,
        total_levels=total,
        core=[names[i] for i in factorization.core.tolist()],
        error=factorization.error,
        relative_error=factorization.relative_error,
    )
    for column, number in enumerate(shown):
        level = factorization.levels[number - 1]
        members = level.indices.tolist()
        colour = level_colour[column]
        for row, index in enumerate(members):
            graph.nodes.append(
                Node(
                    level=number,
                    column=column,
                    row=row,
                    index=index,
                    label=names[index],
                    is_wavelet=index == level.wavelet,
                    partners=[names[j] for j in members if j != index],
                    squared_error=level.squared_error,
                    colour=colour,
                    highlighted=index in marked,
                )
            )
    for source, target in pending_links:
        graph.links.append(Link(source=source, target=target, colour=level_colour[source[0]]))
    return graph
