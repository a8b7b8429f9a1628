"""Layout of the MMF graph: one column per level, links to earlier groups.

Pure Python/NumPy; the matplotlib and HTML renderers draw the same layout (and
wrap its columns into rows, see :func:`wrap`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: the first composition colours (Tableau 10, as in matplotlib); later
#: compositions get further distinct hues from :func:`composition_colour`
PALETTE = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
    "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
)

#: longest label drawn in full; longer ones are shortened with an ellipsis in
#: the drawing (the full text stays in the SVG ``<title>`` and the page's tooltip)
MAX_LABEL_CHARS = 20

_GOLDEN_ANGLE = 0.381966  # fraction of the hue circle between consecutive generated colours


def composition_colour(number: int) -> str:
    """Colour of the ``number``-th composition (0-based); never runs out.

    The first ten are :data:`PALETTE`; after them hues step by the golden
    angle, with three alternating saturation/lightness pairs, so neighbouring
    numbers differ clearly and no two of the first few hundred coincide.
    """
    if number < len(PALETTE):
        return PALETTE[number]
    import colorsys

    k = number - len(PALETTE)
    hue = (0.07 + k * _GOLDEN_ANGLE) % 1.0
    lightness, saturation = ((0.42, 0.65), (0.55, 0.55), (0.33, 0.75))[k % 3]
    r, g, b = colorsys.hls_to_rgb(hue, lightness, saturation)
    return "#{:02x}{:02x}{:02x}".format(round(r * 255), round(g * 255), round(b * 255))


def shorten(label: str, limit: int = MAX_LABEL_CHARS) -> str:
    """``label`` cut to at most ``limit`` characters: its start and end around an ellipsis.

    The end is kept too because labels often differ only there (``n01440764
    tench``, ``layer3.block2.conv1``).
    """
    label = " ".join(label.split()) if ("\n" in label or "\t" in label) else label
    if len(label) <= limit:
        return label
    head = max(1, (2 * (limit - 1)) // 3)
    tail = max(0, limit - 1 - head)
    return label[:head] + "\u2026" + (label[-tail:] if tail else "")


def wrap(count: int, per_row: int) -> list[tuple[int, int]]:
    """(row, slot) of each of ``count`` columns laid out ``per_row`` to a row."""
    per_row = max(1, int(per_row))
    return [(c // per_row, c % per_row) for c in range(count)]


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
    composition: int = 0  # number of the composition the level belongs to (its colour)


@dataclass
class Link:
    """A class carried from an earlier level's group to a later one."""

    source: tuple[int, int]  # (column, row)
    target: tuple[int, int]
    colour: str


@dataclass
class GraphLayout:
    """The levels shown, their nodes and links, and the result's summary numbers."""

    levels: list[int]  # level numbers shown, in column order
    order: int
    nodes: list[Node] = field(default_factory=list)
    links: list[Link] = field(default_factory=list)
    total_levels: int = 0
    core: list[str] = field(default_factory=list)
    error: float = 0.0
    relative_error: float = 0.0
    compositions: int = 0  # number of distinct compositions (colours) among the levels shown


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
    """Lay out levels ``start .. start + levels - 1`` of the MMF graph.

    Parameters
    ----------
    factorization : Factorization
    levels : int, optional
        How many levels (at least 1; default: all from ``start``).
    start : int, default 1
        First level (1-based, at most the number of levels).
    highlight : str or sequence of str, optional
        Labels to highlight (an unknown label is an error naming close matches).
    index_labels : bool
        Name classes by row index when the result has no labels.

    Returns
    -------
    GraphLayout
        Colours: each level continuing exactly one earlier composition (through
        the classes it shares with it) keeps that composition's colour; a level
        that joins several compositions, or none, starts a new composition with
        a new colour (:func:`composition_colour`), so merges stand out level
        after level instead of everything ending in the oldest colour.
    """
    from mmf_stream.common.progress import progress

    names = display_labels(factorization, index_labels)
    total = factorization.n_levels
    if isinstance(start, bool) or not isinstance(start, (int, np.integer)) or not 1 <= start <= max(total, 1):
        raise ValueError(f"start must be a level between 1 and {total}, got {start}")
    if levels is not None and (isinstance(levels, bool) or int(levels) < 1):
        raise ValueError(f"levels must be at least 1, got {levels}")
    count = total - start + 1 if levels is None else int(levels)
    shown = list(range(start, min(total, start + count - 1) + 1))
    marked = resolve_highlight(names, highlight)
    tuples = np.asarray(factorization.tuples)
    wavelets = np.asarray(factorization.wavelets).tolist()
    errors = np.asarray(factorization.level_errors, dtype=np.float64).tolist()

    last_seen: dict[int, tuple[int, int]] = {}
    pending_links: list[tuple[tuple[int, int], tuple[int, int]]] = []
    level_composition: list[int] = []
    compositions = 0
    graph = GraphLayout(
        levels=shown,
        order=factorization.order,
        total_levels=total,
        core=[names[i] for i in factorization.core.tolist()],
        error=factorization.error,
        relative_error=factorization.relative_error,
    )
    with progress(len(shown), "layout", unit="level") as update:
        for column, number in enumerate(shown):
            members = tuples[number - 1].tolist()
            joined = set()
            for row, index in enumerate(members):
                if index in last_seen:
                    source = last_seen[index]
                    joined.add(level_composition[source[0]])
                    pending_links.append((source, (column, row)))
                last_seen[index] = (column, row)
            if len(joined) == 1:
                composition = joined.pop()
            else:
                composition = compositions
                compositions += 1
            level_composition.append(composition)
            colour = composition_colour(composition)
            wavelet = wavelets[number - 1]
            member_names = [names[j] for j in members]
            for row, index in enumerate(members):
                graph.nodes.append(
                    Node(
                        level=number,
                        column=column,
                        row=row,
                        index=index,
                        label=member_names[row],
                        is_wavelet=index == wavelet,
                        partners=member_names[:row] + member_names[row + 1 :],
                        squared_error=errors[number - 1],
                        colour=colour,
                        highlighted=index in marked,
                        composition=composition,
                    )
                )
            if column % 256 == 255:
                update(256)
        update(len(shown) % 256)
    graph.compositions = len(set(level_composition))
    for source, target in pending_links:
        graph.links.append(
            Link(source=source, target=target, colour=composition_colour(level_composition[source[0]]))
        )
    return graph


def _level_keys(factorization: Any) -> list[tuple[frozenset, str]]:
    names = [str(x) for x in factorization.labels.tolist()]
    return [
        (frozenset(names[i] for i in row), names[int(w)] if w >= 0 else "")  # "": a rotation-only level
        for row, w in zip(np.asarray(factorization.tuples).tolist(), np.asarray(factorization.wavelets).tolist())
    ]


def first_difference(before: Any, after: Any) -> int | None:
    """First level at which two labelled results' graphs differ (None: identical).

    Levels are compared by their classes' labels (the tuple as a set and the
    wavelet), so row order does not matter; a level present in only one
    result counts as a difference.
    """
    if before.labels is None or after.labels is None:
        raise ValueError("comparing graphs level by level needs both results to have labels")
    a, b = _level_keys(before), _level_keys(after)
    for number, (x, y) in enumerate(zip(a, b), start=1):
        if x != y:
            return number
    return None if len(a) == len(b) else min(len(a), len(b)) + 1
