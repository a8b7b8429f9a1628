"""Figures that read at 300 levels: bounded size, no overlaps, every link traceable, a fitted dendrogram.

Everything is measured on the drawn matplotlib artists (data coordinates, inches), not on the
renderer's own bookkeeping, so the tests hold whatever way the figure is built.
"""

import numpy as np
import pytest

import mmf_stream as ms
from mmf_stream.views import layout

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.collections import LineCollection  # noqa: E402
from matplotlib.patches import FancyBboxPatch  # noqa: E402

WORDS = ["tench", "goldfish", "great white shark", "tiger shark", "hammerhead", "electric ray", "stingray",
         "cock", "hen", "ostrich", "brambling", "goldfinch", "house finch", "junco", "indigo bunting"]
TOL = 0.03  # inches: how close a link's end must be to the edge of its box


def _labels(m):
    """ImageNet-like labels: a WordNet id and a name (shortened to 20 characters in the drawing)."""
    return [f"n{1440764 + 97 * i:08d} {WORDS[i % len(WORDS)]}" for i in range(m)]


def _result(m, order=5, seed=0):
    means = ms.class_means(m, 32, seed=seed, branching=6, depth=3)
    return ms.factorize(means=means, order=order, labels=_labels(m))


@pytest.fixture(scope="module")
def classes300():
    return _result(300)


@pytest.fixture(scope="module")
def drawn120():
    """120 classes at order 5: 116 levels wrapped into several rows, drawn once."""
    f = _result(120, seed=1)
    fig = ms.views.plot(f)
    fig.canvas.draw()
    yield f, fig
    plt.close(fig)


# --------------------------------------------------------------------------- helpers
def _boxes(ax):
    """(bbox in data coordinates, label, level) of every class box; level from the heading above it."""
    inverse = ax.transData.inverted()
    heads = [(t.get_position(), int(t.get_text().split()[1])) for t in ax.texts
             if t.get_text().startswith("level ")]
    found = []
    for patch in ax.patches:
        if not isinstance(patch, FancyBboxPatch):
            continue
        box = patch.get_window_extent().transformed(inverse)
        cx, cy = (box.x0 + box.x1) / 2, (box.y0 + box.y1) / 2
        texts = [t for t in ax.texts if box.x0 <= t.get_position()[0] <= box.x1
                 and box.y0 <= t.get_position()[1] <= box.y1 and not t.get_text().startswith("level ")]
        assert len(texts) == 1, [t.get_text() for t in texts]
        label = texts[0].get_text().removeprefix("\u2605 ")
        above = [(pos, number) for pos, number in heads if abs(pos[0] - cx) < 1e-6 and pos[1] > cy]
        level = min(above, key=lambda item: item[0][1] - cy)[1]
        found.append((box, label, level))
    return found


def _distance(point, box):
    dx = max(box.x0 - point[0], 0.0, point[0] - box.x1)
    dy = max(box.y0 - point[1], 0.0, point[1] - box.y1)
    return float(np.hypot(dx, dy))


def _on_edge(point, box):
    """The point lies on the box's left or right edge (within TOL)."""
    x, y = point
    return (box.y0 - TOL <= y <= box.y1 + TOL) and (abs(x - box.x0) <= TOL or abs(x - box.x1) <= TOL)


def _segments(ax):
    lines = []
    for collection in ax.collections:
        if isinstance(collection, LineCollection):
            lines += [np.asarray(s) for s in collection.get_segments() if len(s) >= 2]
    return lines


# --------------------------------------------------------------------------- sizes
def test_300_levels_of_order_5_are_not_a_wall(classes300):
    """The issue's case: 300 levels of order 5, ImageNet-like labels (was 2,173 x 5,553 px)."""
    fig = ms.views.plot(classes300, levels=300)
    try:
        width, height = ms.views.check_figure_size(fig, 110)
        assert width <= 5_000 and height <= 5_000, (width, height)
        assert width * height <= 20_000_000, (width, height)
        assert 0.7 <= width / height <= 2.0, (width, height)
        labels = [t for t in fig.axes[-1].texts if "n0" in t.get_text()]
        assert labels and min(t.get_fontsize() for t in labels) >= 5.5
    finally:
        plt.close(fig)


# --------------------------------------------------------------------------- overlaps
def test_boxes_do_not_overlap(drawn120):
    _, fig = drawn120
    boxes = np.array([[b.x0, b.y0, b.x1, b.y1] for b, _, _ in _boxes(fig.axes[-1])])
    assert len(boxes) == 116 * 5
    x0, y0, x1, y1 = (boxes[:, i] for i in range(4))
    overlap = ((np.minimum(x1[:, None], x1[None]) - np.maximum(x0[:, None], x0[None]) > 1e-9)
               & (np.minimum(y1[:, None], y1[None]) - np.maximum(y0[:, None], y0[None]) > 1e-9))
    np.fill_diagonal(overlap, False)
    assert not overlap.any(), np.argwhere(overlap)[:3]


def test_texts_do_not_overlap_each_other_or_other_boxes(drawn120):
    """Every drawn text (labels, headings, errors, link ports) has its own room after drawing."""
    _, fig = drawn120
    ax = fig.axes[-1]
    renderer = fig.canvas.get_renderer()
    texts = [t for t in ax.texts if t.get_text().strip()]
    extents = np.array([[e.x0, e.y0, e.x1, e.y1] for e in (t.get_window_extent(renderer) for t in texts)])
    x0, y0, x1, y1 = (extents[:, i] for i in range(4))
    overlap = ((np.minimum(x1[:, None], x1[None]) - np.maximum(x0[:, None], x0[None]) > 0.5)
               & (np.minimum(y1[:, None], y1[None]) - np.maximum(y0[:, None], y0[None]) > 0.5))
    np.fill_diagonal(overlap, False)
    pairs = [(texts[i].get_text(), texts[j].get_text()) for i, j in np.argwhere(overlap)[:3]]
    assert not overlap.any(), pairs
    # a text lies inside at most one box: its own label's (ports and headings in none)
    boxes = [p.get_window_extent(renderer) for p in ax.patches if isinstance(p, FancyBboxPatch)]
    for text, (a, b, c, d) in zip(texts, extents):
        inside = [box for box in boxes if min(c, box.x1) - max(a, box.x0) > 0.5 and min(d, box.y1) - max(b, box.y0) > 0.5]
        assert len(inside) <= 1, text.get_text()
        if inside:
            box = inside[0]
            assert box.x0 - 0.5 <= a and c <= box.x1 + 0.5, text.get_text()  # a label stays inside its box


# --------------------------------------------------------------------------- links
def test_every_link_ends_on_the_boxes_it_connects(drawn120):
    """A link drawn as a line touches exactly the two boxes of the class it carries; a link that
    wraps to a later row is two labelled ports, each touching its own box, naming the other end's
    level, and nearer its own box than any other (it points at no unrelated class)."""
    _check_links(*drawn120)


def test_link_check_rejects_a_planted_misleading_line():
    """The check above can fail: a line from a box into its neighbouring column's box, and one
    crossing behind a box, are both caught."""
    f = _result(40, seed=1)
    fig = ms.views.plot(f)
    try:
        fig.canvas.draw()
        _check_links(f, fig)  # the real figure passes
        ax = fig.axes[-1]
        (a, *_), (b, *_) = _boxes(ax)[0], _boxes(ax)[5 * 2]  # level 1 row 0, level 3 row 0
        y = (a.y0 + a.y1) / 2
        for planted in ([(a.x1, y), (b.x0 - 0.01, y)],  # ends next to an unrelated box: a false link
                        [(a.x1, y), ((a.x1 + b.x0) / 2, y), (b.x1, y)]):  # runs behind the level-2 box
            extra = LineCollection([planted])
            ax.add_collection(extra)
            with pytest.raises(AssertionError):
                _check_links(f, fig)
            extra.remove()
    finally:
        plt.close(fig)


def _check_links(f, fig):
    ax = fig.axes[-1]
    boxes = _boxes(ax)
    graph = layout(f, levels=300)
    by_position = {(n.column, n.row): n for n in graph.nodes}
    expected = {(by_position[k.source].level, by_position[k.target].level, ms.views.shorten(by_position[k.source].label))
                for k in graph.links}
    texts = [t for t in ax.texts if t.get_text().strip()]
    extents = np.array([[b.x0, b.y0, b.x1, b.y1] for b, _, _ in boxes])
    text_extents = [_data_extent(ax, t) for t in texts]
    joined, ports_out, ports_in = set(), set(), set()
    for segment in _segments(ax):
        start, end = segment[0], segment[-1]
        inner = segment[1:-1]  # a line runs in the gaps between boxes, never behind one
        crossed = ((inner[:, None, 0] > extents[None, :, 0] + TOL) & (inner[:, None, 0] < extents[None, :, 2] - TOL)
                   & (inner[:, None, 1] > extents[None, :, 1] + TOL) & (inner[:, None, 1] < extents[None, :, 3] - TOL))
        assert not crossed.any(), (start, end, [boxes[j][1] for j in np.flatnonzero(crossed.any(axis=0))])
        at_start = [item for item in boxes if _on_edge(start, item[0])]
        at_end = [item for item in boxes if _on_edge(end, item[0])]
        assert at_start or at_end, (start, end)  # no line floats free of every box
        if at_start and at_end:
            (_, label0, level0), (_, label1, level1) = at_start[0], at_end[0]
            key = (min(level0, level1), max(level0, level1), label0)
            assert label0 == label1 and key in expected, key
            joined.add(key)
            continue
        own, free = (at_start[0], end) if at_start else (at_end[0], start)
        box, label, level = own
        nearest = min(boxes, key=lambda item: _distance(free, item[0]))
        assert nearest[0] is box, f"the port of {label!r} (level {level}) ends nearer {nearest[1]!r}"
        closest = min(range(len(texts)), key=lambda k: _distance(free, text_extents[k]))
        tag = texts[closest]
        assert _distance(free, text_extents[closest]) <= TOL * 3, (label, level)
        numbers = [int(s) for s in "".join(ch if ch.isdigit() else " " for ch in tag.get_text()).split()]
        outgoing = [key for key in expected if key[0] == level and key[2] == label and key[1] in numbers]
        incoming = [key for key in expected if key[1] == level and key[2] == label and key[0] in numbers]
        assert outgoing or incoming, (label, level, tag.get_text())
        (ports_out if outgoing else ports_in).update(outgoing or incoming)
    assert joined | (ports_out & ports_in) == expected
    assert ports_out  # the figure does wrap links across rows
    assert not (joined & ports_out)


def _data_extent(ax, text):
    return text.get_window_extent(ax.figure.canvas.get_renderer()).transformed(ax.transData.inverted())


# --------------------------------------------------------------------------- dendrogram
def _merge_heights(C, max_leaves):
    from scipy.cluster.hierarchy import linkage
    from scipy.spatial.distance import squareform

    tree = linkage(squareform(ms.views.mean_distances(C), checks=False), method="average")
    heights = tree[:, 2]
    return heights[-(max_leaves - 1):] if C.shape[0] > max_leaves else heights


@pytest.mark.parametrize("m", [60, 300])
def test_dendrogram_axis_fits_its_heights(m):
    """The y-axis spans the drawn merges (lowest to highest) plus a margin, not 0 to the top."""
    means = ms.class_means(m, 32, seed=2, branching=6, depth=3, noise=0.4)
    C = means @ means.T
    fig = ms.views.plot_dendrogram(C, [f"c{i}" for i in range(m)])
    try:
        low, high = fig.axes[0].get_ylim()
        heights = _merge_heights(C, ms.views.figure.DENDROGRAM_MAX_LEAVES)
        span = heights.max() - heights.min()
        margin = ms.views.figure.DENDROGRAM_MARGIN * span
        assert heights.min() > 2 * margin  # the planted case: most of a 0-based axis would be empty
        assert heights.min() - margin - 1e-9 <= low <= heights.min(), (low, heights.min())
        assert heights.max() <= high <= heights.max() + margin + 1e-9, (high, heights.max())
    finally:
        plt.close(fig)
