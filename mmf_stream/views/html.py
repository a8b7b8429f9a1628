"""The interactive MMF graph: one self-contained HTML file (no network access).

Zoom (wheel) and pan (drag), hover a class for its level, tuple partners and the
error its level added, search labels, and show only the first N levels. Links
read as in the figure (:func:`~mmf_stream.views.figure.draw_graph`): a curve
between nearby columns of one row, else two labelled ports, re-placed whenever
the browser re-wraps the levels into rows. Labels
are user data: every label is escaped in the markup (``html.escape``) and in the
embedded JSON (``<``, ``>``, ``&`` as ``\\u`` escapes), and the script only ever
assigns ``textContent``.
"""

from __future__ import annotations

import html
import json
import os
from pathlib import Path
from typing import Any

from mmf_stream.views.figure import _PORT_LINE, _PORT_PAD, MAX_CURVE_SPAN, port_tag_ems, port_tag_font
from mmf_stream.views.layout import GraphLayout, display_labels, first_difference, layout, shorten

#: page geometry (CSS pixels at zoom 1): gap between level columns (half of it
#: on each side of a level's boxes: room for a curve, or for the labelled ports
#: of two boxes facing each other across it), distance between members of a
#: level, room above a level's first member and below its last
_COL_PAD = 48
_ROW_H = 34
_HEAD = 34
_FOOT = 30
_CHAR_W = 7.2  # width of one label character at 12 px
#: smallest and largest zoom the page opens (and refits) at: 0.84 keeps the
#: 12 px labels at 10 px or more; content that does not fit at it is wrapped
#: to the stage's width and panned vertically
MIN_FIT_SCALE = 0.84
MAX_FIT_SCALE = 1.5

_STYLE = """
body { font-family: system-ui, -apple-system, 'Segoe UI', sans-serif; margin: 0; color: #212121; }
header { padding: 10px 16px; border-bottom: 1px solid #ddd; display: flex; gap: 16px; align-items: center; flex-wrap: wrap; }
header h1 { font-size: 16px; margin: 0; font-weight: 600; }
header .meta { font-size: 13px; color: #555; }
header label { font-size: 13px; }
input { font-size: 13px; padding: 3px 6px; }
#stage { position: relative; width: 100vw; height: calc(100vh - 140px); min-height: 240px; overflow: hidden; cursor: grab; background: #fafafa; }
#stage.dragging { cursor: grabbing; }
svg#graph { width: 100%; height: 100%; user-select: none; display: block; }
.node rect { stroke-width: 1.2; }
.node text { font-size: 12px; dominant-baseline: middle; text-anchor: middle; pointer-events: none; }
.node.wavelet rect { stroke: #c62828; stroke-width: 2.2; }
.node.wavelet text { font-weight: 700; fill: #b71c1c; }
.node.highlight rect { fill: #fff59d !important; }
.node.match rect { stroke: #000; stroke-width: 3; }
.node:hover rect { stroke-width: 3; }
.link { fill: none; stroke-opacity: 0.5; stroke-width: 1.5; }
.port line { stroke-width: 1.6; }
.port rect { fill: #fff; stroke-width: 0.8; }
.port text { dominant-baseline: central; text-anchor: middle; pointer-events: none; }
.levelhead { font-size: 11px; fill: #616161; text-anchor: middle; }
.level.first-difference .frame { fill: none; stroke: #c62828; stroke-width: 2; stroke-dasharray: 6 3; }
.level.first-difference .levelhead { fill: #c62828; font-weight: 700; }
#tip { position: absolute; pointer-events: none; background: #263238; color: #fff; font-size: 12px;
       padding: 6px 8px; border-radius: 4px; max-width: 360px; display: none; white-space: pre-line;
       overflow-wrap: anywhere; z-index: 2; }
#dendrogram { padding: 8px 16px; border-top: 1px solid #ddd; }
#dendrogram svg { max-width: 100%; height: auto; max-height: 460px; }
"""

_SCRIPT = r"""
(function () {
  'use strict';
  var data = JSON.parse(document.getElementById('mmf-data').textContent);
  var svg = document.getElementById('graph');
  var viewport = document.getElementById('viewport');
  var stage = document.getElementById('stage');
  var tip = document.getElementById('tip');
  var geo = data.geometry, PAD = 16;
  var scale = 1, tx = PAD, ty = PAD, drag = null;
  var groups = Array.prototype.slice.call(svg.querySelectorAll('.level'));
  var links = Array.prototype.slice.call(svg.querySelectorAll('.link'));
  // each link's two labelled ports: [out of the source box, into the target box]
  var ports = links.map(function () { return [null, null]; });
  svg.querySelectorAll('.port').forEach(function (port) {
    ports[Number(port.getAttribute('data-link'))][port.getAttribute('data-end') === 'out' ? 0 : 1] = port;
  });
  var limit = document.getElementById('limit');
  function apply() { viewport.setAttribute('transform', 'translate(' + tx + ',' + ty + ') scale(' + scale + ')'); }
  function shown() {
    var n = Math.floor(Number(limit.value));
    return n >= 1 ? Math.min(n, data.levels.length) : data.levels.length;
  }
  // a port at (x, y), a box's edge: its line runs dir (+1 right, -1 left) into
  // the column gap and its tag (the other end's level number) follows it,
  // inside the half of the gap next to the box
  function placePort(port, x, y, dir) {
    var line = port.querySelector('line'), tag = port.querySelector('rect'), number = port.querySelector('text');
    var end = x + dir * geo.portLine, left = dir > 0 ? end : end - geo.tagWidth;
    line.setAttribute('x1', x); line.setAttribute('x2', end); line.setAttribute('y1', y); line.setAttribute('y2', y);
    tag.setAttribute('x', left); tag.setAttribute('y', y - geo.tagHeight / 2);
    number.setAttribute('x', left + geo.tagWidth / 2); number.setAttribute('y', y);
  }
  // lay the first n levels out in rows and zoom so that they fill the stage
  // with readable labels: the number of levels a row is the one giving the
  // largest zoom; below the smallest readable zoom the rows take the stage's
  // width and the page is panned vertically. A link is a curve when its ends
  // are in one row at most maxCurveSpan columns apart, else two labelled ports
  // (as in the figure); links into hidden levels are hidden
  function arrange() {
    var n = shown(), width = stage.clientWidth - 2 * PAD, height = stage.clientHeight - 2 * PAD;
    var best = 1, bestScale = 0;
    for (var per = 1; per <= n; per++) {
      var s = Math.min(width / (per * geo.column), height / (Math.ceil(n / per) * geo.band), geo.maxScale);
      if (s > bestScale + 1e-9) { best = per; bestScale = s; }
    }
    if (bestScale < geo.minScale) {
      bestScale = geo.minScale; best = Math.max(1, Math.floor(width / (geo.column * geo.minScale)));
    }
    best = Math.ceil(n / Math.ceil(n / best));
    var half = (geo.column - geo.box) / 2;
    function left(c) { return (c % best) * geo.column + half; }
    function top(c) { return Math.floor(c / best) * geo.band + geo.head; }
    groups.forEach(function (group) {
      var c = Number(group.getAttribute('data-column'));
      group.setAttribute('transform', 'translate(' + left(c) + ',' + top(c) + ')');
    });
    links.forEach(function (path, i) {
      var c0 = Number(path.getAttribute('data-source')), r0 = Number(path.getAttribute('data-source-row'));
      var c1 = Number(path.getAttribute('data-column')), r1 = Number(path.getAttribute('data-row'));
      var x0 = left(c0) + geo.box, y0 = top(c0) + r0 * geo.row, x1 = left(c1), y1 = top(c1) + r1 * geo.row, mid = (x0 + x1) / 2;
      var wrapped = Math.floor(c0 / best) !== Math.floor(c1 / best), ported = wrapped || c1 - c0 > geo.maxCurveSpan;
      var shownLink = c1 < n;
      path.classList.toggle('wrapped', wrapped);
      path.classList.toggle('ported', ported);
      path.style.display = shownLink && !ported ? '' : 'none';
      path.setAttribute('d', 'M' + x0 + ',' + y0 + ' C' + mid + ',' + y0 + ' ' + mid + ',' + y1 + ' ' + x1 + ',' + y1);
      placePort(ports[i][0], x0, y0, 1);
      placePort(ports[i][1], x1, y1, -1);
      ports[i].forEach(function (port) { port.style.display = shownLink && ported ? '' : 'none'; });
    });
    var rows = Math.ceil(n / best);
    scale = bestScale;
    tx = PAD + Math.max(0, (width - best * geo.column * scale) / 2);
    ty = PAD + Math.max(0, (height - rows * geo.band * scale) / 2);
    apply();
  }
  stage.addEventListener('wheel', function (event) {
    event.preventDefault();
    var rect = svg.getBoundingClientRect();
    var mx = event.clientX - rect.left, my = event.clientY - rect.top;
    var factor = event.deltaY < 0 ? 1.15 : 1 / 1.15;
    var next = Math.min(8, Math.max(0.05, scale * factor));
    tx = mx - (mx - tx) * next / scale; ty = my - (my - ty) * next / scale; scale = next; apply();
  }, { passive: false });
  stage.addEventListener('mousedown', function (event) { drag = [event.clientX - tx, event.clientY - ty]; stage.classList.add('dragging'); });
  window.addEventListener('mouseup', function () { drag = null; stage.classList.remove('dragging'); });
  window.addEventListener('mousemove', function (event) {
    if (drag) { tx = event.clientX - drag[0]; ty = event.clientY - drag[1]; apply(); }
  });
  document.getElementById('reset').addEventListener('click', arrange);
  window.addEventListener('resize', arrange);
  // the tooltip stays inside the stage: flipped to the left of / above the pointer near the edges
  function placeTip(event) {
    var rect = stage.getBoundingClientRect(), gap = 14;
    var x = event.clientX - rect.left, y = event.clientY - rect.top;
    var w = tip.offsetWidth, h = tip.offsetHeight;
    var left = x + gap + w <= rect.width ? x + gap : x - gap - w;
    var top = y + gap + h <= rect.height ? y + gap : y - gap - h;
    tip.style.left = Math.max(0, Math.min(left, rect.width - w)) + 'px';
    tip.style.top = Math.max(0, Math.min(top, rect.height - h)) + 'px';
  }
  var nodes = svg.querySelectorAll('.node');
  nodes.forEach(function (element) {
    var info = data.nodes[Number(element.getAttribute('data-node'))];
    element.addEventListener('mouseenter', function (event) {
      tip.textContent = info.label + (info.wavelet ? '  (wavelet)' : '') + '\nlevel ' + info.level +
        '\npartners: ' + info.partners.join(', ') + '\nerror added by the level: ' + info.error.toPrecision(4);
      tip.style.display = 'block';
      placeTip(event);
    });
    element.addEventListener('mousemove', placeTip);
    element.addEventListener('mouseleave', function () { tip.style.display = 'none'; });
  });
  var search = document.getElementById('search'), found = document.getElementById('found');
  function runSearch(center) {
    var query = search.value.trim().toLowerCase(), first = null, count = 0;
    nodes.forEach(function (element) {
      var info = data.nodes[Number(element.getAttribute('data-node'))];
      var hit = query.length > 0 && info.label.toLowerCase().indexOf(query) >= 0 && !element.closest('.level').hidden;
      element.classList.toggle('match', hit);
      if (hit) { count += 1; if (!first) { first = element; } }
    });
    found.textContent = query ? count + ' found' : '';
    if (center && first) {
      var box = first.getBoundingClientRect(), rect = svg.getBoundingClientRect();
      tx += rect.width / 2 - (box.left - rect.left + box.width / 2);
      ty += rect.height / 2 - (box.top - rect.top + box.height / 2); apply();
    }
  }
  search.addEventListener('input', function () { runSearch(false); });
  search.addEventListener('keydown', function (event) { if (event.key === 'Enter') { runSearch(true); } });
  function applyLimit() {
    var n = shown();
    groups.forEach(function (group) {
      group.hidden = Number(group.getAttribute('data-column')) >= n;
      group.style.display = group.hidden ? 'none' : '';
    });
    arrange();
    runSearch(false);
  }
  limit.addEventListener('input', applyLimit);
  applyLimit();
  document.body.setAttribute('data-ready', 'yes');
})();
"""


def _json_for_script(value: Any) -> str:
    """JSON that cannot close its <script> element or open markup."""
    text = json.dumps(value, ensure_ascii=False)
    return text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")


def _box_width(graph: GraphLayout) -> float:
    longest = max((len(shorten(node.label)) for node in graph.nodes), default=4)
    return max(60.0, _CHAR_W * (longest + 2) + 12)


def _port_geometry(graph: GraphLayout) -> dict[str, float]:
    """A labelled port's sizes (CSS pixels at zoom 1), as the figure's :func:`~mmf_stream.views.figure.port_font`.

    Its line is :data:`~mmf_stream.views.figure._PORT_LINE` of the column gap;
    its tag (the other end's level number, padded) fits in the rest of the half
    of the gap next to its box, so the ports of two boxes facing each other
    across a gap never meet and no tag reaches a box.
    """
    line = _PORT_LINE * _COL_PAD
    room = 0.5 * _COL_PAD - line - 1.0  # 1 px between the tag and the middle of the gap
    font = port_tag_font(room, graph, 0.8 * 12)
    return {"portLine": round(line, 2), "tagFont": round(font, 2),
            "tagWidth": round(font * port_tag_ems(graph), 2), "tagHeight": round(font * (1 + 2 * _PORT_PAD), 2)}


def _svg(graph: GraphLayout, marked_level: int | None = None) -> str:
    """The graph's level groups (local coordinates), links and ports; the page's script places them in rows."""
    esc = html.escape
    box_w = _box_width(graph)
    col_w = box_w + _COL_PAD
    band = _HEAD + (graph.order - 1) * _ROW_H + _FOOT
    per_row = max(1, min(len(graph.levels), 12))  # a sane arrangement before the script runs
    port = _port_geometry(graph)

    def origin(column: int) -> tuple[float, float]:
        return (column % per_row) * col_w + _COL_PAD / 2, (column // per_row) * band + _HEAD

    parts: list[str] = ['<g class="links">']
    ports: list[str] = ['<g class="ports">']
    columns: dict[int, list[str]] = {c: [] for c in range(len(graph.levels))}
    for i, link in enumerate(graph.links):
        (c0, r0), (c1, r1) = link.source, link.target
        (ox0, oy0), (ox1, oy1) = origin(c0), origin(c1)
        x0, y0, x1, y1 = ox0 + box_w, oy0 + r0 * _ROW_H, ox1, oy1 + r1 * _ROW_H
        mid = (x0 + x1) / 2
        colour = esc(link.colour)
        parts.append(
            f'<path class="link" data-link="{i}" data-source="{c0}" data-source-row="{r0}" data-column="{c1}" data-row="{r1}" '
            f'stroke="{colour}" d="M{x0:.1f},{y0:.1f} C{mid:.1f},{y0:.1f} {mid:.1f},{y1:.1f} {x1:.1f},{y1:.1f}"/>'
        )
        # the two labelled ports, placed (and shown where the link is not a curve) by the script
        for end, number in (("out", graph.levels[c1]), ("in", graph.levels[c0])):
            ports.append(
                f'<g class="port" data-link="{i}" data-end="{end}" style="display:none">'
                f'<line stroke="{colour}"/><rect width="{port["tagWidth"]}" height="{port["tagHeight"]}" '
                f'rx="{port["tagHeight"] / 3:.2f}" stroke="{colour}"/>'
                f'<text fill="{colour}" font-size="{port["tagFont"]}">{number}</text></g>'
            )
    for i, node in enumerate(graph.nodes):
        y = node.row * _ROW_H
        classes = "node" + (" wavelet" if node.is_wavelet else "") + (" highlight" if node.highlighted else "")
        text = ("\u2605 " if node.is_wavelet else "") + shorten(node.label)
        columns[node.column].append(
            f'<g class="{classes}" data-node="{i}" aria-label="{esc(node.label)}"><rect x="0" y="{y - 12:.1f}" width="{box_w:.1f}" height="24" rx="6" '
            f'fill="{esc(node.colour)}22" stroke="{esc(node.colour)}"/>'
            f'<text x="{box_w / 2:.1f}" y="{y:.1f}">{esc(text)}</text></g>'
        )
    parts.append("</g>")
    ports.append("</g>")
    bottom = (graph.order - 1) * _ROW_H
    for column, number in enumerate(graph.levels):
        x, y = origin(column)
        marked = number == marked_level
        heading = f"level {number}" + (" \u00b7 first difference" if marked else "")
        head = f'<text class="levelhead" x="{box_w / 2:.1f}" y="-22">{heading}</text>'
        frame = (f'<rect class="frame" x="-6" y="-34" width="{box_w + 12:.1f}" height="{bottom + 50:.1f}" rx="8"/>'
                 if marked else "")
        parts.append(
            f'<g class="level{" first-difference" if marked else ""}" data-level="{number}" data-column="{column}" '
            f'transform="translate({x:.1f},{y:.1f})">{frame}{head}{"".join(columns[column])}</g>'
        )
    return "".join(parts + ports)


def render_html(
    graph: GraphLayout,
    *,
    title: str = "MMF graph",
    dendrogram_svg: str | None = None,
    marked_level: int | None = None,
    note: str = "",
) -> str:
    """The page as a string (see :func:`to_html`); ``marked_level`` is framed as the first difference."""
    esc = html.escape
    box_w = _box_width(graph)
    data = {
        "levels": graph.levels,
        "firstDifference": marked_level,
        "geometry": {
            "box": box_w, "column": box_w + _COL_PAD, "row": _ROW_H, "head": _HEAD,
            "band": _HEAD + (graph.order - 1) * _ROW_H + _FOOT, "minScale": MIN_FIT_SCALE, "maxScale": MAX_FIT_SCALE,
            "maxCurveSpan": MAX_CURVE_SPAN, **_port_geometry(graph),
        },
        "nodes": [
            {"label": n.label, "level": n.level, "partners": n.partners, "error": n.squared_error, "wavelet": n.is_wavelet}
            for n in graph.nodes
        ],
    }
    meta = (
        f"levels {graph.levels[0]}\u2013{graph.levels[-1]} of {graph.total_levels} \u00b7 order {graph.order} \u00b7 "
        f"error {graph.error:.4g} (relative {graph.relative_error:.3g}) \u00b7 core: {len(graph.core)} classes \u00b7 "
        "\u2605 marks each level's wavelet" + (f" \u00b7 {note}" if note else "")
    )
    dendrogram = f'<section id="dendrogram">{dendrogram_svg}</section>' if dendrogram_svg else ""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:">
<title>{esc(title)}</title><style>{_STYLE}</style></head>
<body>
<header><h1>{esc(title)}</h1><span class="meta">{esc(meta)}</span>
<label>search <input id="search" type="search" placeholder="label"></label><span id="found" class="meta"></span>
<label>first <input id="limit" type="number" min="1" max="{len(graph.levels)}" value="{len(graph.levels)}" style="width:5em"> levels</label>
<button id="reset" type="button">reset view</button></header>
<div id="stage"><svg id="graph" xmlns="http://www.w3.org/2000/svg"><g id="viewport">{_svg(graph, marked_level)}</g></svg><div id="tip"></div></div>
{dendrogram}
<script type="application/json" id="mmf-data">{_json_for_script(data)}</script>
<script>{_SCRIPT}</script>
</body></html>
"""


def to_html(
    factorization: Any,
    path: str | os.PathLike | None = None,
    *,
    levels: int | None = None,
    start: int = 1,
    highlight: Any = None,
    index_labels: bool = False,
    title: str = "MMF graph",
    matrix: Any = None,
    before: Any = None,
    matrix_label: str = "the same matrix",
) -> str:
    """Write the interactive MMF graph as one self-contained HTML file.

    Parameters
    ----------
    factorization : Factorization
    path : path, optional
        Where to write the page; the HTML is returned either way.
    levels, start, highlight, index_labels
        As for :func:`mmf_stream.views.plot` (all levels by default).
    title : str
    matrix : array, optional
        With it, the agglomerative-clustering dendrogram of the same matrix is
        drawn below the graph.
    before : Factorization, optional
        The result before an insertion: the inserted classes are highlighted,
        the page says which they are, and the first level at which the two
        graphs differ is framed (a before/after view); the title gives the
        inserted classes' calibrated novelty (:func:`~mmf_stream.views.novelty`,
        on ``matrix`` when given, else on the reconstruction).
    matrix_label : str
        What ``matrix`` is, for the dendrogram's title.

    The page opens with the levels wrapped into rows and zoomed to fill the
    window with readable labels (at least :data:`MIN_FIT_SCALE`); the "first N
    levels" control and "reset view" refit it. A link whose ends fall in
    different rows at the window's width, or that skips more than
    :data:`~mmf_stream.views.figure.MAX_CURVE_SPAN` columns, is two labelled
    ports as in the figure: a short line out of the earlier box tagged with the
    later level's number and one into the later box tagged with the earlier
    level's, each inside the half of the column gap next to its box; other
    links are curves. Labels are shortened on the boxes; the tooltip shows the
    full text and stays inside the window.

    Returns
    -------
    str
        The page.
    """
    if before is not None:
        from mmf_stream.views.figure import inserted_labels

        new = inserted_labels(before, factorization)
        highlight = sorted(set(highlight or []) | set(new))
        title = f"{title}: after inserting {', '.join(new[:5])}{' ...' if len(new) > 5 else ''} (highlighted)"
        from mmf_stream.views.compare import novelty_note

        scored = novelty_note(factorization, new, matrix=matrix)
        title += f"; {scored}" if scored else ""
        marked_level = first_difference(before, factorization)
        note = ("the graphs differ from level {} on (framed)".format(marked_level) if marked_level is not None
                else "the graphs agree level by level")
    else:
        marked_level, note = None, ""
    graph = layout(factorization, levels=levels, start=start, highlight=highlight, index_labels=index_labels)
    dendrogram_svg = None
    if matrix is not None:
        import io
        import warnings

        import matplotlib
        import matplotlib.pyplot as plt
        import numpy as np

        from mmf_stream.views.figure import _TITLES_ATTR, _svg_with_titles, plot_dendrogram

        names = display_labels(factorization, index_labels=True)
        fig = plot_dendrogram(np.asarray(matrix), names, matrix_label=matrix_label)
        buffer = io.StringIO()
        with warnings.catch_warnings(), matplotlib.rc_context({"svg.fonttype": "none"}):
            warnings.filterwarnings("ignore", message=r"Glyph \d+ .*missing from")
            fig.savefig(buffer, format="svg", bbox_inches="tight")
        plt.close(fig)
        text = _svg_with_titles(buffer.getvalue(), getattr(fig, _TITLES_ATTR, {}))
        dendrogram_svg = text[text.index("<svg") :]
    page = render_html(graph, title=title, dendrogram_svg=dendrogram_svg, marked_level=marked_level, note=note)
    if path is not None:
        Path(path).write_text(page, encoding="utf-8")
    return page
