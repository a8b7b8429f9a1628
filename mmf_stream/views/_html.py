"""The interactive MMF graph: one self-contained HTML file (no network access).

Zoom (wheel) and pan (drag), hover a class for its level, tuple partners and the
error its level added, search labels, and show only the first N levels. Labels
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

from mmf_stream.views._layout import GraphLayout, display_labels, layout

_COL_PAD = 36
_ROW_H = 34
_TOP = 56
_CHAR_W = 7.2

_STYLE = """
body { font-family: system-ui, -apple-system, 'Segoe UI', sans-serif; margin: 0; color: #212121; }
header { padding: 10px 16px; border-bottom: 1px solid #ddd; display: flex; gap: 16px; align-items: center; flex-wrap: wrap; }
header h1 { font-size: 16px; margin: 0; font-weight: 600; }
header .meta { font-size: 13px; color: #555; }
header label { font-size: 13px; }
input { font-size: 13px; padding: 3px 6px; }
#stage { position: relative; width: 100vw; height: calc(100vh - 140px); min-height: 240px; overflow: hidden; cursor: grab; background: #fafafa; }
#stage.dragging { cursor: grabbing; }
svg { width: 100%; height: 100%; user-select: none; }
.node rect { stroke-width: 1.2; }
.node text { font-size: 12px; dominant-baseline: middle; text-anchor: middle; pointer-events: none; }
.node.wavelet rect { stroke: #c62828; stroke-width: 2.2; }
.node.wavelet text { font-weight: 700; fill: #b71c1c; }
.node.highlight rect { fill: #fff59d !important; }
.node.match rect { stroke: #000; stroke-width: 3; }
.node:hover rect { stroke-width: 3; }
.link { fill: none; stroke-opacity: 0.5; stroke-width: 1.5; }
.levelhead { font-size: 11px; fill: #616161; text-anchor: middle; }
#tip { position: absolute; pointer-events: none; background: #263238; color: #fff; font-size: 12px;
       padding: 6px 8px; border-radius: 4px; max-width: 360px; display: none; white-space: pre-line; }
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
  var scale = 1, tx = 20, ty = 10, drag = null;
  function apply() { viewport.setAttribute('transform', 'translate(' + tx + ',' + ty + ') scale(' + scale + ')'); }
  function fit() {
    var box = viewport.getBBox(), width = stage.getBoundingClientRect().width - 40;
    scale = box.width > width ? Math.max(0.5, width / box.width) : 1; tx = 20; ty = 10; apply();
  }
  fit();
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
  document.getElementById('reset').addEventListener('click', fit);
  var nodes = svg.querySelectorAll('.node');
  nodes.forEach(function (element) {
    var info = data.nodes[Number(element.getAttribute('data-node'))];
    element.addEventListener('mouseenter', function (event) {
      tip.textContent = info.label + (info.wavelet ? '  (wavelet)' : '') + '\nlevel ' + info.level +
        '\npartners: ' + info.partners.join(', ') + '\nerror added by the level: ' + info.error.toPrecision(4);
      tip.style.display = 'block';
    });
    element.addEventListener('mousemove', function (event) {
      var rect = stage.getBoundingClientRect();
      tip.style.left = (event.clientX - rect.left + 14) + 'px'; tip.style.top = (event.clientY - rect.top + 14) + 'px';
    });
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
      var box = first.getBBox(), rect = svg.getBoundingClientRect();
      tx = rect.width / 2 - (box.x + box.width / 2) * scale; ty = rect.height / 2 - (box.y + box.height / 2) * scale; apply();
    }
  }
  search.addEventListener('input', function () { runSearch(false); });
  search.addEventListener('keydown', function (event) { if (event.key === 'Enter') { runSearch(true); } });
  var limit = document.getElementById('limit');
  function applyLimit() {
    var n = Number(limit.value) || data.levels.length;
    svg.querySelectorAll('.level').forEach(function (group) {
      group.hidden = Number(group.getAttribute('data-column')) >= n;
      group.style.display = group.hidden ? 'none' : '';
    });
    svg.querySelectorAll('.link').forEach(function (path) {
      path.style.display = Number(path.getAttribute('data-column')) >= n ? 'none' : '';
    });
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


def _svg(graph: GraphLayout) -> str:
    esc = html.escape
    longest = max((len(node.label) for node in graph.nodes), default=4)
    box_w = max(60.0, _CHAR_W * (longest + 2) + 12)
    col_w = box_w + _COL_PAD
    parts: list[str] = ['<g class="links">']
    columns: dict[int, list[str]] = {c: [] for c in range(len(graph.levels))}
    for link in graph.links:
        (c0, r0), (c1, r1) = link.source, link.target
        x0, y0 = c0 * col_w + box_w, _TOP + r0 * _ROW_H
        x1, y1 = c1 * col_w, _TOP + r1 * _ROW_H
        mid = (x0 + x1) / 2
        parts.append(
            f'<path class="link" data-column="{c1}" stroke="{esc(link.colour)}" '
            f'd="M{x0:.1f},{y0:.1f} C{mid:.1f},{y0:.1f} {mid:.1f},{y1:.1f} {x1:.1f},{y1:.1f}"/>'
        )
    for i, node in enumerate(graph.nodes):
        x, y = node.column * col_w, _TOP + node.row * _ROW_H
        classes = "node" + (" wavelet" if node.is_wavelet else "") + (" highlight" if node.highlighted else "")
        text = ("\u2605 " if node.is_wavelet else "") + node.label
        columns[node.column].append(
            f'<g class="{classes}" data-node="{i}"><rect x="{x:.1f}" y="{y - 12:.1f}" width="{box_w:.1f}" height="24" rx="6" '
            f'fill="{esc(node.colour)}22" stroke="{esc(node.colour)}"/>'
            f'<text x="{x + box_w / 2:.1f}" y="{y:.1f}">{esc(text)}</text></g>'
        )
    parts.append("</g>")
    for column, number in enumerate(graph.levels):
        head = f'<text class="levelhead" x="{column * col_w + box_w / 2:.1f}" y="{_TOP - 26}">level {number}</text>'
        parts.append(f'<g class="level" data-level="{number}" data-column="{column}">{head}{"".join(columns[column])}</g>')
    return "".join(parts)


def render_html(graph: GraphLayout, *, title: str = "MMF graph", dendrogram_svg: str | None = None) -> str:
    """The page as a string (see :func:`to_html`)."""
    esc = html.escape
    data = {
        "levels": graph.levels,
        "nodes": [
            {"label": n.label, "level": n.level, "partners": n.partners, "error": n.squared_error, "wavelet": n.is_wavelet}
            for n in graph.nodes
        ],
    }
    meta = (
        f"levels {graph.levels[0]}\u2013{graph.levels[-1]} of {graph.total_levels} \u00b7 order {graph.order} \u00b7 "
        f"error {graph.error:.4g} (relative {graph.relative_error:.3g}) \u00b7 core: {len(graph.core)} classes \u00b7 "
        "\u2605 marks each level's wavelet"
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
<div id="stage"><svg id="graph" xmlns="http://www.w3.org/2000/svg"><g id="viewport">{_svg(graph)}</g></svg><div id="tip"></div></div>
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
        The result before an insertion: the inserted classes are highlighted
        and the page says which they are (a before/after view).

    Returns
    -------
    str
        The page.
    """
    if before is not None:
        from mmf_stream.views._figure import inserted_labels

        new = inserted_labels(before, factorization)
        highlight = sorted(set(highlight or []) | set(new))
        title = f"{title}: after inserting {', '.join(new[:5])}{' ...' if len(new) > 5 else ''} (highlighted)"
    graph = layout(factorization, levels=levels, start=start, highlight=highlight, index_labels=index_labels)
    dendrogram_svg = None
    if matrix is not None:
        import io

        import matplotlib.pyplot as plt
        import numpy as np

        from mmf_stream.views._figure import plot_dendrogram

        names = display_labels(factorization, index_labels=True)
        fig = plot_dendrogram(np.asarray(matrix), names)
        buffer = io.StringIO()
        fig.savefig(buffer, format="svg", bbox_inches="tight")
        plt.close(fig)
        text = buffer.getvalue()
        dendrogram_svg = text[text.index("<svg") :]
    page = render_html(graph, title=title, dendrogram_svg=dendrogram_svg)
    if path is not None:
        Path(path).write_text(page, encoding="utf-8")
    return page
