"""The MMF graph, the dendrogram baseline and layer comparisons as matplotlib figures.

The graph's levels are wrapped into rows so that a whole result of a few
hundred classes reads on one page, sized to its content; a larger result is
drawn as an overview of every level above one page of at most
:data:`LEVELS_PER_PAGE` levels (page through with ``start``). Labels longer
than :data:`~mmf_stream.views.layout.MAX_LABEL_CHARS` are shortened in the
drawing; :func:`save_figure` keeps the full text in the SVG ``<title>`` of each
label (a tooltip in browsers) and bounds the figure's size in pixels.
"""

from __future__ import annotations

import html
import io
import math
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mmf_stream.views.layout import (
    GraphLayout,
    display_labels,
    first_difference,
    layout,
    shorten,
)

#: most levels one graph figure draws; a larger request is cut to this many
#: and the figure adds an overview of every level (page on with ``start``)
LEVELS_PER_PAGE = 300
#: a row of levels no wider than this (inches) is drawn unwrapped
PAGE_WIDTH = 16.0
#: widest row of levels (inches) when levels are wrapped: 4,400 px at the default 110 dpi, so that
#: a page of 300 levels of order 5 is about as wide as it is high instead of a tall wall
MAX_PAGE_WIDTH = 40.0
#: width / height the wrapped graph aims for
PAGE_ASPECT = 1.4
#: gap between level columns at full size (inches): room for a link's curve, or for the two
#: labelled ports (see :func:`draw_graph`) of boxes facing each other across it
COLUMN_GAP = 0.8
#: links that stay in one row but skip more than this many columns are drawn as labelled ports
#: too (a curve that passes behind the boxes of the columns it skips cannot be followed)
MAX_CURVE_SPAN = 1
#: levels drawn at full size (8.5 pt labels); more levels shrink the drawing ...
FULL_SIZE_LEVELS = 40
#: ... linearly down to DENSEST_SCALE of full size at this many levels
DENSEST_LEVELS = 200
#: smallest drawing scale (6 pt labels)
DENSEST_SCALE = 0.7
#: most leaves a dendrogram draws; more are truncated as SciPy's ``truncate_mode="lastp"``
DENDROGRAM_MAX_LEAVES = 80
#: height of the dendrogram's axes below a graph (inches)
DENDROGRAM_HEIGHT = 3.2
#: room above the highest and below the lowest merge drawn, as a fraction of their range: the
#: dendrogram's axis spans its merges, not 0 to the top (classes that are all far apart would
#: leave most of a 0-based axis empty)
DENDROGRAM_MARGIN = 0.06
#: resolution bounds for saved raster figures (dots per inch)
MIN_DPI, MAX_DPI = 10, 1200
#: largest saved figure, in pixels per side and in total
MAX_SIDE_PIXELS = 32_000
MAX_PIXELS = 120_000_000
#: height of the overview panel drawn above a page of a large result (inches)
OVERVIEW_HEIGHT = 1.5
#: levels of context shown before the first difference in a before/after view
INSERTION_CONTEXT = 2

_LABEL_PT = 8.5  # label size at full scale (points)
_ROW = 0.44  # vertical distance between members of a level at full scale (inches)
_BOX_H = 0.32  # height of a class box at full scale (inches)
_BOX_PAD = 0.02  # the rounded box's pad around that (inches; the box drawn is this much larger)
_HEAD = 0.62  # room above a level's first member: its heading (inches at full scale)
_FOOT = 0.5  # room below its last member: its error (inches at full scale)
_TITLES_ATTR = "_mmf_stream_titles"  # figure attribute: SVG element id -> full text
_warned_fonts: set[str] = set()


# ---------------------------------------------------------------------- fonts
_charmaps: dict[str, set[int]] = {}


def _charmap(path: str) -> set[int]:
    if path not in _charmaps:
        from matplotlib import ft2font

        try:
            _charmaps[path] = set(ft2font.FT2Font(path).get_charmap())
        except (OSError, RuntimeError, ValueError):
            _charmaps[path] = set()
    return _charmaps[path]


_CJK_HINTS = ("cjk", "noto sans sc", "noto sans jp", "wenquanyi", "droid sans fallback", "unifont", "ipa", "takao",
              "ukai", "uming", "nanum", "source han", "ar pl")


def label_fonts(labels: list[str]) -> list[str] | None:
    """Font families that draw every character of ``labels`` (None: the default does).

    When the default sans-serif font lacks some characters (CJK labels, for
    example) the installed font covering most of them is added as a fallback.
    If no font covers them all, one warning says so (once per missing set of
    characters per process) and matplotlib's per-glyph warnings are silenced
    by :func:`save_figure`.
    """
    wanted = {ord(ch) for label in labels for ch in label if ord(ch) > 0x24F}
    if not wanted:
        return None
    from matplotlib import font_manager

    default_path = font_manager.findfont(font_manager.FontProperties(family=["sans-serif"]))
    default_name = font_manager.get_font(default_path).family_name
    missing = wanted - _charmap(default_path)
    if not missing:
        return None
    candidates = sorted(
        {entry.fname: entry.name for entry in font_manager.fontManager.ttflist}.items(),
        key=lambda item: not any(hint in item[1].lower() for hint in _CJK_HINTS),
    )
    best, best_covered = None, 0
    for path, name in candidates:
        covered = len(missing & _charmap(path))
        if covered > best_covered:
            best, best_covered = name, covered
            if covered == len(missing):
                break
    if best_covered < len(missing):
        key = "".join(sorted(chr(c) for c in missing))[:40]
        if key not in _warned_fonts:
            _warned_fonts.add(key)
            example = chr(min(missing))
            warnings.warn(
                f"no installed font has {len(missing)} character(s) of the labels (e.g. {example!r}); they are drawn "
                "as boxes in PNG/PDF (SVG text keeps them); install a font such as fonts-noto-cjk",
                UserWarning,
                stacklevel=3,
            )
    return [default_name] + ([best] if best else [])


# ------------------------------------------------------------------- geometry
@dataclass
class Geometry:
    """Sizes (inches) of a wrapped graph drawing."""

    scale: float  # 1: full size
    col_w: float  # per level column (box and gap)
    row_h: float  # between members of a level
    head: float  # above a level's first member (the "level n" heading)
    band_h: float  # per row of levels
    per_row: int  # levels per row
    rows: int
    width: float
    height: float
    box_w: float = 0.0  # a class box's width (0: the older 78% of the column)

    @property
    def font(self) -> float:
        return _LABEL_PT * self.scale

    @property
    def box_width(self) -> float:
        return self.box_w or 0.78 * self.col_w

    @property
    def gap(self) -> float:
        """Free room between the boxes of neighbouring columns (inches)."""
        return self.col_w - self.box_width - 2 * _BOX_PAD


def drawing_scale(levels: int) -> float:
    """Scale of the drawing for ``levels`` levels (1 up to :data:`FULL_SIZE_LEVELS`)."""
    if levels <= FULL_SIZE_LEVELS:
        return 1.0
    t = min(1.0, (levels - FULL_SIZE_LEVELS) / (DENSEST_LEVELS - FULL_SIZE_LEVELS))
    return 1.0 - t * (1.0 - DENSEST_SCALE)


def geometry(graph: GraphLayout, *, per_row: int | None = None, longest: int | None = None) -> Geometry:
    """Column, row and page sizes for ``graph``, levels wrapped into rows.

    One row when it fits in :data:`PAGE_WIDTH`; otherwise as many levels per
    row as make the page about :data:`PAGE_ASPECT` wide for its height, at
    most :data:`MAX_PAGE_WIDTH` wide, the rows filled evenly.
    """
    n = max(1, len(graph.levels))
    scale = drawing_scale(n)
    if longest is None:
        longest = max((len(shorten(node.label)) for node in graph.nodes), default=4)
    box_w = scale * max(0.85, 0.085 * (longest + 3) + 0.27)
    col_w = box_w + 2 * _BOX_PAD + scale * COLUMN_GAP
    row_h = _ROW * scale
    head = _HEAD * scale
    band_h = head + (graph.order - 1) * row_h + _FOOT * scale
    if per_row is None:
        if n * col_w <= PAGE_WIDTH:
            per_row = n
        else:
            per_row = math.ceil(math.sqrt(n * band_h * PAGE_ASPECT / col_w))
            per_row = max(1, min(per_row, int(MAX_PAGE_WIDTH // col_w), n))
            per_row = math.ceil(n / math.ceil(n / per_row))  # even rows
    per_row = max(1, min(int(per_row), n))
    rows = math.ceil(n / per_row)
    return Geometry(scale, col_w, row_h, head, band_h, per_row, rows, per_row * col_w, rows * band_h, box_w)


def _light(colour: str, amount: float = 0.82) -> tuple[float, float, float]:
    from matplotlib.colors import to_rgb

    r, g, b = to_rgb(colour)
    return (r + (1 - r) * amount, g + (1 - g) * amount, b + (1 - b) * amount)


def _add_title(fig: Any, artist: Any, text: str) -> None:
    titles = getattr(fig, _TITLES_ATTR, None)
    if titles is None:
        titles = {}
        setattr(fig, _TITLES_ATTR, titles)
    gid = f"mmf-label-{len(titles)}"
    artist.set_gid(gid)
    titles[gid] = text


def port_tag_ems(graph: GraphLayout) -> float:
    """Width of a labelled port's tag in ems: the largest level number and the tag's pad on both sides."""
    return _DIGIT_EMS * len(str(max(graph.levels, default=1))) + 2 * _PORT_PAD


def port_tag_font(room: float, graph: GraphLayout, largest: float, slack: float = 0.0) -> float:
    """Font size of a port's tag that fits ``room`` (the same unit), at most ``largest``, at least 3
    (``slack``: ems kept free beside the tag)."""
    return max(3.0, min(largest, room / (port_tag_ems(graph) + slack)))


def port_font(g: Geometry, graph: GraphLayout) -> float:
    """Size (points) of the level numbers on labelled ports: what fits in half a column gap."""
    room = 72.0 * (0.5 * g.gap - _PORT_LINE * g.gap - 0.03 * g.scale)  # points for the tag
    return port_tag_font(room, graph, 0.8 * g.font, slack=0.2)


_PORT_LINE = 0.12  # a port's line, as a fraction of the gap; its number follows it, in a tag
_PORT_PAD = 0.25  # the tag's pad around the number (fraction of its font size)
_DIGIT_EMS = 0.64  # a digit's width (fraction of the font size)


def link_routes(graph: GraphLayout, g: Geometry) -> tuple[list[int], list[int]]:
    """Which links are drawn as a curve and which as two labelled ports (indices into ``graph.links``).

    A link is a curve when both its ends lie in one row of levels at most
    :data:`MAX_CURVE_SPAN` columns apart; otherwise (it wraps to a later row,
    or would cross the boxes of many columns) it is a pair of ports.
    """
    curves, ports = [], []
    for i, link in enumerate(graph.links):
        (c0, _), (c1, _) = link.source, link.target
        same_row = c0 // g.per_row == c1 // g.per_row
        (curves if same_row and c1 - c0 <= MAX_CURVE_SPAN else ports).append(i)
    return curves, ports


def draw_graph(
    graph: GraphLayout,
    ax: Any,
    title: str | None = None,
    *,
    layout_geometry: Geometry | None = None,
    marked_level: int | None = None,
    page: str = "",
) -> None:
    """Draw a laid-out MMF graph on a matplotlib axes (units: inches), levels wrapped into rows.

    A link carries a class from one level to the next level it takes part in.
    It is drawn as a curve from the right edge of the class's box to the left
    edge of its box at the later level when both are in one row and close
    (:func:`link_routes`); otherwise as two *labelled ports*: a short line out
    of the earlier box with the later level's number, and one into the later
    box with the earlier level's number. Every port touches only its own box,
    and the class's label is the same at both ends, so a reader finds the
    other end by its level heading; nothing points at an unrelated box.

    Parameters
    ----------
    graph : GraphLayout
    ax : matplotlib Axes
    title : str, optional
        Heading (default "MMF graph").
    layout_geometry : Geometry, optional
        Sizes to draw with (default :func:`geometry` of ``graph``).
    marked_level : int, optional
        A level to frame in red and label "first difference" (before/after views).
    page : str
        Added to the heading (e.g. "page 1 of 17").
    """
    from matplotlib.collections import LineCollection
    from matplotlib.patches import FancyBboxPatch, Rectangle

    g = layout_geometry or geometry(graph)
    fonts = label_fonts([node.label for node in graph.nodes])
    font_kw = {"fontfamily": fonts} if fonts else {}
    half = g.box_width / 2
    edge = half + _BOX_PAD  # from a box's centre to its drawn left/right edge
    box_h = _BOX_H * g.scale
    levels = graph.levels

    def place(column: int) -> tuple[float, float]:
        row, slot = divmod(column, g.per_row)
        return slot * g.col_w, -row * g.band_h - g.head

    def centre(column: int, row: int) -> tuple[float, float]:
        x, y = place(column)
        return x, y - row * g.row_h

    curve_ids, port_ids = link_routes(graph, g)
    xs = np.linspace(0, 1, 24)
    ease = 3 * xs**2 - 2 * xs**3
    curves, curve_colours = [], []
    for i in curve_ids:
        link = graph.links[i]
        (x0, y0), (x1, y1) = centre(*link.source), centre(*link.target)
        x0, x1 = x0 + edge, x1 - edge
        curves.append(np.column_stack([x0 + (x1 - x0) * xs, y0 + (y1 - y0) * ease]))
        curve_colours.append(link.colour)
    if curves:
        ax.add_collection(LineCollection(curves, colors=curve_colours, alpha=0.6, linewidths=1.3 * g.scale, zorder=1),
                          autolim=False)
    stubs, stub_colours = [], []
    line = _PORT_LINE * g.gap
    number_size = port_font(g, graph)
    for i in port_ids:
        link = graph.links[i]
        (x0, y0), (x1, y1) = centre(*link.source), centre(*link.target)
        out_x, in_x = x0 + edge, x1 - edge
        stubs += [[(out_x, y0), (out_x + line, y0)], [(in_x - line, y1), (in_x, y1)]]
        stub_colours += [link.colour, link.colour]
        tag = {"boxstyle": f"round,pad={_PORT_PAD}", "fc": "white", "ec": link.colour, "lw": 0.6 * g.scale}
        shift = (_PORT_PAD + 0.05) * number_size / 72.0  # the tag's pad (and its rim) starts at the line's end
        ax.text(out_x + line + shift, y0, str(levels[link.target[0]]), ha="left", va="center", fontsize=number_size,
                color=link.colour, zorder=3, bbox=tag)
        ax.text(in_x - line - shift, y1, str(levels[link.source[0]]), ha="right", va="center", fontsize=number_size,
                color=link.colour, zorder=3, bbox=dict(tag))
    if stubs:
        ax.add_collection(LineCollection(stubs, colors=stub_colours, linewidths=1.6 * g.scale, zorder=1),
                          autolim=False)
    fig = ax.figure
    for node in graph.nodes:
        x, y = centre(node.column, node.row)
        face = "#fff59d" if node.highlighted else _light(node.colour)
        edge_colour = "#c62828" if node.is_wavelet else node.colour
        ax.add_artist(FancyBboxPatch(  # add_artist: the limits are set below, no per-patch update
            (x - half, y - box_h / 2), 2 * half, box_h,
            boxstyle=f"round,pad={_BOX_PAD},rounding_size={0.08 * g.scale:.3f}",
            fc=face, ec=edge_colour, lw=(1.8 if node.is_wavelet else 1.0) * g.scale, zorder=2,
        ))
        text = ("\u2605 " if node.is_wavelet else "") + shorten(node.label)
        artist = ax.text(
            x, y, text, ha="center", va="center", fontsize=g.font, zorder=3,
            fontweight="bold" if node.is_wavelet else "normal",
            color="#b71c1c" if node.is_wavelet else "#212121", **font_kw,
        )
        _add_title(fig, artist, node.label)
    errors = {node.level: node.squared_error for node in graph.nodes}
    for column, number in enumerate(levels):
        bx, by = place(column)
        ax.text(bx, by + 0.3 * g.scale, f"level {number}", ha="center", va="bottom", fontsize=8 * g.scale,
                color="#424242")
        ax.text(bx, by - (graph.order - 1) * g.row_h - 0.26 * g.scale, f"e\u00b2 {errors[number]:.2g}",
                ha="center", va="top", fontsize=7 * g.scale, color="#757575")
        if number == marked_level:
            top = by + 0.58 * g.scale
            bottom = by - (graph.order - 1) * g.row_h - 0.24 * g.scale
            ax.add_artist(Rectangle((bx - 0.48 * g.col_w, bottom), 0.96 * g.col_w, top - bottom, fill=False,
                                    ec="#c62828", lw=1.6, ls="--", zorder=4))
            ax.text(bx, top + 0.04, "first difference", ha="center", va="bottom", fontsize=7.5 * max(g.scale, 0.85),
                    color="#c62828", fontweight="bold", zorder=4)
    ax.set_xlim(-g.col_w * 0.5, g.width - g.col_w * 0.5)
    ax.set_ylim(-g.height, 0.15)
    ax.set_aspect("equal")
    ax.axis("off")
    shown = f"levels {levels[0]}\u2013{levels[-1]} of {graph.total_levels}"
    heading = title or "MMF graph"
    wrapped = f"; {g.per_row} levels a row" if g.rows > 1 else ""
    first_line = f"{heading}: {shown}{(' (' + page + ')') if page else ''} (order {graph.order}{wrapped})"
    second_line = (f"\u2605 marks each level's wavelet; error {graph.error:.4g} (relative {graph.relative_error:.3g}); "
                   f"core {len(graph.core)} classes")
    if port_ids:
        second_line += ("; a number beside a box: the class goes on to (right) or comes from (left) that level, "
                        "in the same box label")
    # one line when it fits over the drawing (about 0.075 inch a character at 9 pt), else two
    joined = len(first_line) + len(second_line) + 2
    text = f"{first_line}; {second_line}" if joined * 0.075 <= g.width + 0.5 else f"{first_line}\n{second_line}"
    ax.set_title(text, fontsize=9, loc="left")


def draw_overview(factorization: Any, graph: GraphLayout, ax: Any) -> None:
    """Every level of a large result: the error each adds and the pages, the drawn page shaded."""
    errors = np.asarray(factorization.level_errors, dtype=np.float64)
    total = len(errors)
    numbers = np.arange(1, total + 1)
    share = np.cumsum(errors) / max(float(errors.sum()), 1e-300)
    ax.fill_between(numbers, share, step="mid", color="#90a4ae", alpha=0.5, lw=0)
    ax.plot(numbers, share, color="#455a64", lw=1.0)
    first, last = graph.levels[0], graph.levels[-1]
    ax.axvspan(first - 0.5, last + 0.5, color="#ff7043", alpha=0.35, lw=0)
    for boundary in range(1, total + 1, LEVELS_PER_PAGE):
        ax.axvline(boundary - 0.5, color="#9e9e9e", lw=0.6, ls=":")
    ax.set_xlim(0.5, total + 0.5)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("level", fontsize=8)
    ax.set_ylabel("share of error\u00b2", fontsize=8)
    ax.tick_params(labelsize=7)
    pages = math.ceil(total / LEVELS_PER_PAGE)
    ax.set_title(
        f"overview: all {total} levels (cumulative share of the error\u00b2); shaded: levels {first}\u2013{last} "
        f"drawn below; dotted: pages of {LEVELS_PER_PAGE} levels ({pages} pages, start = 1, "
        f"{1 + LEVELS_PER_PAGE}, {1 + 2 * LEVELS_PER_PAGE}, ...)",
        fontsize=8, loc="left",
    )


def _page_text(graph: GraphLayout) -> str:
    if len(graph.levels) >= graph.total_levels:
        return ""
    if (graph.levels[0] - 1) % LEVELS_PER_PAGE == 0 and len(graph.levels) <= LEVELS_PER_PAGE:
        page = (graph.levels[0] - 1) // LEVELS_PER_PAGE + 1
        return f"page {page} of {math.ceil(graph.total_levels / LEVELS_PER_PAGE)}"
    return ""


def _page_levels(levels: int | None) -> int:
    if levels is None:
        return LEVELS_PER_PAGE
    if isinstance(levels, bool) or int(levels) < 1:
        raise ValueError(f"levels must be at least 1, got {levels}")
    return min(int(levels), LEVELS_PER_PAGE)


def plot(
    factorization: Any,
    *,
    levels: int | None = None,
    start: int = 1,
    highlight: Any = None,
    index_labels: bool = False,
    title: str | None = None,
    ax: Any = None,
    overview: bool | None = None,
):
    """Draw the MMF graph: one group per level, the wavelet marked, links to earlier groups.

    Levels are wrapped into rows, and the figure is sized to its content (see
    :func:`geometry`): a whole result of a few hundred classes reads on one
    page. Labels longer than ``MAX_LABEL_CHARS`` are shortened in the drawing
    (:func:`save_figure` keeps the full text as SVG ``<title>``).

    Parameters
    ----------
    factorization : Factorization
    levels : int or None, default None
        How many levels to draw: all from ``start`` by default, at most
        :data:`LEVELS_PER_PAGE` (a larger request is cut to one page).
    start : int, default 1
        First level drawn (page through large results: 1, 301, 601, ...).
    highlight : str or sequence of str, optional
        Labels to highlight (an unknown label is an error).
    index_labels : bool
        Name classes by row index when the result has no labels.
    title : str, optional
    ax : matplotlib Axes, optional
        Draw into this axes instead of a new figure (no overview).
    overview : bool, optional
        Draw an overview of every level above the page (default: when the
        figure does not show every level).

    Returns
    -------
    matplotlib.figure.Figure
    """
    graph = layout(factorization, levels=_page_levels(levels), start=start, highlight=highlight,
                   index_labels=index_labels)
    page = _page_text(graph)
    if ax is not None:
        draw_graph(graph, ax, title, page=page)
        return ax.figure
    g = geometry(graph)
    with_overview = (len(graph.levels) < graph.total_levels) if overview is None else bool(overview)
    panels = [_graph_panel(g)]
    if with_overview:
        panels.insert(0, Panel(max(6.0, g.width - 0.6), OVERVIEW_HEIGHT, above=0.35, below=0.55, left=0.9))
    fig, axes = stacked_figure(panels)
    if with_overview:
        draw_overview(factorization, graph, axes[0])
    draw_graph(graph, axes[-1], title, layout_geometry=g, page=page)
    return fig


@dataclass
class Panel:
    """One axes of a figure stacked top to bottom (inches): its size, the room above and below, its left edge."""

    width: float
    height: float
    above: float = 0.5
    below: float = 0.1
    left: float = 0.3


def _graph_panel(g: Geometry) -> Panel:
    # the graph's axes is exactly its drawing (equal aspect, no blank band); room above for a 2-line title
    return Panel(g.width, g.height + 0.15, above=0.6, below=0.1)


def stacked_figure(panels: list[Panel]) -> tuple[Any, list[Any]]:
    """A figure holding ``panels`` top to bottom, each axes at its size in inches."""
    import matplotlib.pyplot as plt

    width = max(panel.left + panel.width for panel in panels) + 0.3
    height = sum(panel.above + panel.height + panel.below for panel in panels)
    fig = plt.figure(figsize=(width, height))
    axes, top = [], height
    for panel in panels:
        top -= panel.above
        bottom = top - panel.height
        axes.append(fig.add_axes((panel.left / width, bottom / height, panel.width / width, panel.height / height)))
        top = bottom - panel.below
    return fig, axes


# ------------------------------------------------------------------ dendrogram
def mean_distances(matrix: np.ndarray) -> np.ndarray:
    """Distances between the vectors behind a Gram matrix: ``sqrt(C_ii + C_jj - 2 C_ij)``."""
    diag = np.diag(matrix)
    squared = diag[:, None] + diag[None, :] - 2 * matrix
    np.fill_diagonal(squared, 0.0)
    return np.sqrt(np.clip(0.5 * (squared + squared.T), 0.0, None))


def _condensed_distances(matrix: np.ndarray) -> np.ndarray:
    """The upper triangle of :func:`mean_distances`, row by row (SciPy's condensed form)."""
    matrix = np.asarray(matrix, dtype=np.float64)
    diag = np.diag(matrix)
    rows, cols = np.triu_indices(matrix.shape[0], k=1)
    squared = diag[rows] + diag[cols] - (matrix[rows, cols] + matrix[cols, rows])
    return np.sqrt(np.clip(squared, 0.0, None))


def dendrogram_width(leaves: int) -> float:
    """Inches for a dendrogram of ``leaves`` leaves (after truncation)."""
    return min(MAX_PAGE_WIDTH, max(6.0, 0.17 * leaves + 1.2))


def dendrogram_limits(heights: Any) -> tuple[float, float]:
    """y-limits that fit merge ``heights``: lowest to highest, :data:`DENDROGRAM_MARGIN` of the range beyond.

    Never below 0 (distances); a single height (or none) gets a margin of its own size's fraction.
    """
    values = np.asarray(heights, dtype=np.float64)
    if values.size == 0:
        return 0.0, 1.0
    low, high = float(values.min()), float(values.max())
    span = high - low if high > low else max(abs(high), 1.0)
    margin = DENDROGRAM_MARGIN * span
    return max(0.0, low - margin), high + margin


def plot_dendrogram(
    matrix: np.ndarray,
    labels: list[str],
    *,
    method: str = "average",
    ax: Any = None,
    matrix_label: str = "the same matrix",
    max_leaves: int = DENDROGRAM_MAX_LEAVES,
):
    """Agglomerative-clustering dendrogram of the classes behind ``matrix`` (the paper's baseline).

    Parameters
    ----------
    matrix : ndarray of shape (m, m)
        Gram matrix of the class vectors (distances ``sqrt(C_ii + C_jj - 2 C_ij)``).
    labels : list of str
    method : str
        SciPy linkage method.
    ax : matplotlib Axes, optional
    matrix_label : str
        What ``matrix`` is, for the title ("the same matrix", "the reconstruction M(C)").
    max_leaves : int
        With more classes, only the last ``max_leaves`` merges are drawn
        (SciPy's ``truncate_mode="lastp"``; a leaf "(n)" is a branch of n classes).
    """
    from scipy.cluster.hierarchy import dendrogram, linkage

    from mmf_stream.common.progress import progress

    labels = [str(x) for x in labels]
    m = len(labels)
    with progress(3, "dendrogram", unit="step") as update:
        condensed = _condensed_distances(matrix)
        update(1)
        tree = linkage(condensed, method=method)
        del condensed
        update(1)
        truncated = m > max_leaves
        leaves = max_leaves if truncated else m
        if ax is None:
            import matplotlib.pyplot as plt

            fig, ax = plt.subplots(figsize=(dendrogram_width(leaves), 3.5))
        else:
            fig = ax.figure
        fonts = label_fonts(labels)
        short = [shorten(label) for label in labels]
        options = {"truncate_mode": "lastp", "p": max_leaves, "show_contracted": True} if truncated else {}
        drawn = dendrogram(tree, labels=short, ax=ax, leaf_rotation=90, leaf_font_size=8 if leaves <= 60 else 7,
                           color_threshold=None, **options)
        ax.set_ylim(*dendrogram_limits([d[1] for d in drawn["dcoord"]]))
        leaf_names = {s: full for s, full in zip(short, labels)}
        for tick in ax.get_xticklabels():
            if fonts:
                tick.set_fontfamily(fonts)
            full = leaf_names.get(tick.get_text())
            if full is not None:
                _add_title(fig, tick, full)
        update(1)
    note = (f"; the last {len(drawn['leaves'])} branches of {m} classes, (n): n classes" if truncated else "")
    ax.set_title(f"agglomerative clustering ({method} linkage) of {matrix_label}{note}", fontsize=9, loc="left")
    ax.set_ylabel("distance between class means", fontsize=8)
    return fig


def plot_with_dendrogram(factorization: Any, matrix: np.ndarray, **kwargs: Any):
    """The MMF graph above the dendrogram of ``matrix`` (the paper's Figure 5 layout).

    Keyword arguments: ``levels``, ``start``, ``highlight``, ``index_labels``
    and ``title`` as for :func:`plot`; ``matrix_label`` and ``max_leaves`` as
    for :func:`plot_dendrogram`.
    """
    graph = layout(
        factorization, levels=_page_levels(kwargs.get("levels")), start=kwargs.get("start", 1),
        highlight=kwargs.get("highlight"), index_labels=kwargs.get("index_labels", False),
    )
    g = geometry(graph)
    names = display_labels(factorization, index_labels=True)
    max_leaves = int(kwargs.get("max_leaves", DENDROGRAM_MAX_LEAVES))
    leaves_w = max(8.0, g.width - 0.6, dendrogram_width(min(len(names), max_leaves)))
    fig, (top, bottom) = stacked_figure([
        _graph_panel(g), Panel(leaves_w, DENDROGRAM_HEIGHT, above=0.45, below=1.7, left=0.9),
    ])
    draw_graph(graph, top, kwargs.get("title"), layout_geometry=g, page=_page_text(graph))
    plot_dendrogram(matrix, names, ax=bottom, matrix_label=kwargs.get("matrix_label", "the same matrix"),
                    max_leaves=max_leaves)
    return fig


# ------------------------------------------------------------------- insertion
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


def plot_insertion(before: Any, after: Any, *, levels: int = 20, matrix: Any = None):
    """Before/after view of an insertion, from just before the level where the graphs start to differ.

    Only the inserted classes are highlighted (in the 'after' graph); the
    first level at which the two graphs differ (:func:`first_difference`) is
    framed in red in both and named in the titles.

    Parameters
    ----------
    before, after : Factorization
        Labelled results; ``after`` holds every class of ``before`` and more.
    levels : int
        Levels drawn in each graph (at most :data:`LEVELS_PER_PAGE`).
    matrix : array of shape (after.size, after.size), optional
        The factored matrix after the insertion, for the inserted classes'
        calibrated novelty in the title (:func:`~mmf_stream.views.novelty`;
        default: the reconstruction of ``after``). Left out of the title when
        there are too few classes to calibrate against.
    """
    from mmf_stream.views.compare import novelty_note

    new = inserted_labels(before, after)
    levels = _page_levels(levels)
    first = first_difference(before, after)
    focus = first if first is not None else 1
    start_after = max(1, min(focus - INSERTION_CONTEXT, after.n_levels - levels + 1))
    start_before = max(1, min(start_after, before.n_levels - levels + 1))
    graph_after = layout(after, levels=levels, start=start_after, highlight=new)
    graph_before = layout(before, levels=levels, start=start_before)
    longest = max((len(shorten(n.label)) for n in graph_after.nodes + graph_before.nodes), default=4)
    wide = graph_after if len(graph_after.levels) >= len(graph_before.levels) else graph_before
    g = geometry(wide, longest=longest)
    g_before = geometry(graph_before, per_row=g.per_row, longest=longest)
    g_after = geometry(graph_after, per_row=g.per_row, longest=longest)
    where = (f"the graphs differ from level {first} on (framed)" if first is not None
             else "the graphs agree level by level")
    fig, (top, bottom) = stacked_figure([_graph_panel(g_before), _graph_panel(g_after)])
    draw_graph(graph_before, top, f"before ({where})", layout_geometry=g_before, marked_level=first)
    shown = ", ".join(new[:5]) + (f" and {len(new) - 5} more" if len(new) > 5 else "")
    scored = novelty_note(after, new, matrix=matrix)
    scored = f"; {scored}" if scored else ""
    draw_graph(graph_after, bottom, f"after inserting {shown} (highlighted){scored}; {where}",
               layout_geometry=g_after, marked_level=first)
    return fig


# ---------------------------------------------------------------------- saving
def check_figure_size(fig: Any, dpi: float) -> tuple[int, int]:
    """The figure's size in pixels at ``dpi``; a ValueError when out of bounds.

    Bounds: :data:`MIN_DPI` .. :data:`MAX_DPI` dots per inch, at most
    :data:`MAX_SIDE_PIXELS` per side and :data:`MAX_PIXELS` in total.
    """
    if not MIN_DPI <= dpi <= MAX_DPI:
        raise ValueError(f"dpi must be between {MIN_DPI} and {MAX_DPI}, got {dpi:g}")
    width, height = (float(v) * dpi for v in fig.get_size_inches())
    if max(width, height) > MAX_SIDE_PIXELS or width * height > MAX_PIXELS:
        raise ValueError(
            f"the figure would be {width:,.0f} x {height:,.0f} pixels at {dpi:g} dpi (limits: {MAX_SIDE_PIXELS:,} "
            f"per side, {MAX_PIXELS:,} in all); lower the dpi or draw fewer levels"
        )
    return round(width), round(height)


def _svg_with_titles(svg: str, titles: dict[str, str]) -> str:
    def add(match: re.Match) -> str:
        text = titles.get(match.group(1))
        return match.group(0) if text is None else f"{match.group(0)}\n  <title>{html.escape(text)}</title>"

    return re.sub(r'<g id="(mmf-label-\d+)">', add, svg)


def save_figure(fig: Any, path: str | os.PathLike, *, dpi: float = 110) -> None:
    """Save a view's figure (.svg, .png, .pdf, ...) with its size bounded (:func:`check_figure_size`).

    In SVG output, text stays text and every class label drawn by the views
    carries its full text as a ``<title>`` (a tooltip in browsers), even where
    the drawing shortens it. Matplotlib's per-glyph "missing from font"
    warnings are silenced (:func:`label_fonts` warns once instead).
    """
    import matplotlib

    check_figure_size(fig, dpi)
    path = Path(path)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Glyph \d+ .*missing from")
        if path.suffix.lower() == ".svg":
            buffer = io.StringIO()
            with matplotlib.rc_context({"svg.fonttype": "none"}):
                fig.savefig(buffer, format="svg", dpi=dpi, bbox_inches="tight")
            path.write_text(_svg_with_titles(buffer.getvalue(), getattr(fig, _TITLES_ATTR, {})), encoding="utf-8")
        else:
            fig.savefig(path, dpi=dpi, bbox_inches="tight")
