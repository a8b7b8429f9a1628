"""MMF graph views: layout, figures, the interactive page (in a real browser), comparisons."""

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import mmf_stream as ms
from mmf_stream.views import layout

import matplotlib

matplotlib.use("Agg")

XSS = "<img src=x onerror=alert(1)>"
NAMES = ["bread", "bun", "bagel", "fries", "chips", "ketchup", "mustard", "salad", "lettuce", "soda", "cola", XSS]


@pytest.fixture(scope="module")
def food():
    C = ms.hierarchical_covariance(12, seed=0)
    return C, ms.factorize(C, order=3, labels=NAMES)


def test_layout_matches_levels(food):
    _, f = food
    graph = layout(f)
    assert graph.levels == list(range(1, f.n_levels + 1))
    assert len(graph.nodes) == f.n_levels * f.order
    for node in graph.nodes:
        level = f.levels[node.level - 1]
        assert node.index == level.indices[node.row]
        assert node.is_wavelet == (node.index == level.wavelet)
        assert sorted(node.partners + [node.label]) == sorted(NAMES[i] for i in level.indices)
    # a link for every class that reappears, from its previous level
    expected = 0
    for number, level in enumerate(f.levels[1:], start=2):
        expected += sum(any(i in earlier.indices for earlier in f.levels[: number - 1]) for i in level.indices)
    assert len(graph.links) == expected
    for link in graph.links:
        source = next(n for n in graph.nodes if (n.column, n.row) == link.source)
        target = next(n for n in graph.nodes if (n.column, n.row) == link.target)
        assert source.index == target.index and source.column < target.column
        assert not source.is_wavelet  # a wavelet takes no part in later levels


def test_layout_pages_and_highlights(food):
    _, f = food
    graph = layout(f, levels=3, start=4, highlight=["ketchup"])
    assert graph.levels == [4, 5, 6]
    assert {n.label for n in graph.nodes if n.highlighted} <= {"ketchup"}
    with pytest.raises(ValueError, match="unknown label 'ketchp' in highlight; did you mean 'ketchup'"):
        layout(f, highlight=["ketchp"])
    with pytest.raises(ValueError, match="start must be a level between 1 and 10"):
        layout(f, start=11)
    unlabeled = ms.factorize(ms.hierarchical_covariance(8), order=3)
    with pytest.raises(ValueError, match="no class labels"):
        layout(unlabeled)
    assert layout(unlabeled, index_labels=True).nodes[0].label.isdigit()


def test_figures_hold_labels(food, tmp_path):
    C, f = food
    matplotlib.rcParams["svg.fonttype"] = "none"
    fig = f.plot(highlight=["ketchup"])
    ms.views.save_figure(fig, tmp_path / "g.svg")
    ms.views.save_figure(fig, tmp_path / "g.png")
    svg = (tmp_path / "g.svg").read_text()
    for name in NAMES[:-1]:
        assert f">{name}<" in svg or f"\u2605 {name}<" in svg
    assert "<title>&lt;img src=x onerror=alert(1)&gt;</title>" in svg and XSS not in svg
    assert (tmp_path / "g.png").stat().st_size > 10_000
    both = ms.views.plot_with_dendrogram(f, C, levels=5)
    assert len(both.axes) == 2


def test_html_escapes_labels_everywhere(food):
    _, f = food
    page = ms.views.to_html(f)
    assert XSS not in page
    assert "&lt;img src=x onerror=alert(1)&gt;" in page  # shown as text in the SVG
    assert "\\u003cimg src=x onerror=alert(1)\\u003e" in page  # and inert in the embedded JSON
    assert "http://" not in page.replace("http://www.w3.org/2000/svg", "")  # nothing fetched
    assert "https://" not in page


def test_dendrogram_distances():
    means = np.array([[0.0, 0.0], [3.0, 4.0], [0.0, 1.0]])
    C = means @ means.T
    d = ms.views.mean_distances(C)
    np.testing.assert_allclose(d, [[0, 5, 1], [5, 0, np.sqrt(18)], [1, np.sqrt(18), 0]])


def test_compare_layers_and_saturation():
    C = ms.hierarchical_covariance(60, seed=0)
    labels = [f"class{i}" for i in range(60)]
    a = ms.factorize(C, order=3, labels=labels)
    same = ms.factorize(C * 2.0, order=3, labels=labels)  # a scaled copy composes identically
    shuffle = np.random.default_rng(0).permutation(60)
    other = ms.factorize(ms.hierarchical_covariance(60, seed=9), order=3, labels=labels)
    permuted = ms.factorize(C[np.ix_(shuffle, shuffle)], order=3, labels=[labels[i] for i in shuffle])
    comparison = ms.views.compare([a, same, other], ["a", "same", "other"])
    assert comparison.saturated == [True, False]
    np.testing.assert_allclose(comparison.class_overlap[0], 1.0)
    assert comparison.class_overlap[1, 0] < 0.6
    assert "YES" in comparison.table()
    # labels, not row positions, are matched
    assert ms.views.compare([a, permuted]).class_overlap[0, 0] > 0.5
    with pytest.raises(ValueError, match="different classes"):
        ms.views.compare([a, ms.factorize(C, order=3, labels=[f"x{i}" for i in range(60)])])
    with pytest.raises(ValueError, match="at least two"):
        ms.views.compare([a])
    fig = ms.views.plot_comparison(comparison)
    assert len(fig.axes) == 2


def _chromium():
    return shutil.which("chromium") or shutil.which("chromium-browser")


def test_page_in_a_headless_browser(food, tmp_path):
    """Loads with no console errors, shows the labels, runs no label as code; hover and search work."""
    if not _chromium():
        if os.environ.get("MMF_STREAM_REQUIRE_BROWSER"):
            pytest.fail("chromium is required (MMF_STREAM_REQUIRE_BROWSER is set) but not installed")
        pytest.skip("chromium is not installed (scripts/test.sh installs it)")
    from playwright.sync_api import sync_playwright

    C, f = food
    page_path = tmp_path / "graph.html"
    ms.views.to_html(f, page_path, matrix=C, highlight=["ketchup"])
    problems, dialogs = [], []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=_chromium(),
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 700})
            page.on("console", lambda m: problems.append(m.text) if m.type in ("error", "warning") else None)
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
            page.goto(page_path.as_uri())
            page.wait_for_selector("body[data-ready=yes]", timeout=10_000)
            texts = page.locator(".node text").all_text_contents()
            for name in NAMES:
                assert any(t.endswith(ms.views.shorten(name)) for t in texts), name
            assert page.locator("img").count() == 0  # the label stayed text
            page.locator(".node").nth(4).hover()
            tip = page.inner_text("#tip")
            node = layout(f).nodes[4]
            assert node.label in tip and f"level {node.level}" in tip and node.partners[0] in tip
            page.fill("#search", "ketch")
            assert page.inner_text("#found") == f"{sum(n.label == 'ketchup' for n in layout(f).nodes)} found"
            page.fill("#limit", "2")
            visible = page.locator(".level:visible").count()
            assert visible == 2
            page.mouse.wheel(0, -300)  # zoom does not break anything
            assert "scale(" in page.get_attribute("#viewport", "transform")
            assert page.locator("#dendrogram svg").count() == 1
        finally:
            browser.close()
    assert problems == [] and dialogs == []


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "mmf_stream.cli", *map(str, args)], capture_output=True, text=True)


def test_show_and_compare_commands(food, tmp_path):
    C, f = food
    f.save(tmp_path / "food.zarr")
    np.save(tmp_path / "C.npy", C)
    for name in ("g.svg", "g.png", "g.html"):
        done = _cli("show", tmp_path / "food.zarr", "--out", tmp_path / name, "--highlight", "ketchup", "soda")
        assert done.returncode == 0, done.stderr
        assert (tmp_path / name).stat().st_size > 5_000
    assert "ketchup" in (tmp_path / "g.svg").read_text()
    done = _cli("show", tmp_path / "food.zarr", "-o", tmp_path / "d.png", "--compare", "dendrogram", "--matrix", tmp_path / "C.npy")
    assert done.returncode == 0 and (tmp_path / "d.png").stat().st_size > 10_000
    g = ms.factorize(C * 3, order=3, labels=NAMES)
    g.save(tmp_path / "scaled.zarr")
    done = _cli("compare", tmp_path / "food.zarr", tmp_path / "scaled.zarr", "--names", "L1", "L2", "--out", tmp_path / "c.png")
    assert done.returncode == 0, done.stderr
    assert "L1 -> L2" in done.stdout and "saturation" in done.stdout and (tmp_path / "c.png").exists()


def test_show_bad_inputs(food, tmp_path):
    _, f = food
    f.save(tmp_path / "food.zarr")
    ms.factorize(ms.hierarchical_covariance(8), order=3).save(tmp_path / "plain.zarr")
    cases = [
        (("show", tmp_path / "missing.zarr", "-o", tmp_path / "x.svg"), "no such file"),
        (("show", tmp_path / "plain.zarr", "-o", tmp_path / "x.svg"), "no class labels"),
        (("show", tmp_path / "food.zarr", "-o", tmp_path / "x.svg", "--highlight", "ketchp"), "did you mean 'ketchup'"),
        (("show", tmp_path / "food.zarr", "-o", tmp_path / "x.txt"), "--out must end in"),
        (("compare", tmp_path / "food.zarr", tmp_path / "plain.zarr"), "no class labels"),
    ]
    for args, fragment in cases:
        done = _cli(*args)
        assert done.returncode == 2 and "Traceback" not in done.stderr
        assert fragment in done.stderr.strip().splitlines()[-1]
    assert _cli("show", tmp_path / "plain.zarr", "-o", tmp_path / "x.svg", "--index-labels").returncode == 0


# ---------------------------------------------------------------- issue 8 (views)
def _png_size(path):
    from PIL import Image

    with Image.open(path) as image:
        return image.size


@pytest.fixture(scope="module")
def classes300():
    C = ms.hierarchical_covariance(300, seed=1)
    return ms.factorize(C, order=3, labels=[f"class_{i}" for i in range(300)])


def test_whole_result_of_300_classes_reads_on_one_page(classes300, tmp_path):
    """Levels wrap into rows: every level on one page of sane size and aspect ratio."""
    fig = ms.views.plot(classes300)
    title = fig.axes[-1].get_title(loc="left")
    assert f"levels 1\u2013{classes300.n_levels} of {classes300.n_levels}" in title
    ms.views.save_figure(fig, tmp_path / "g.png")
    width, height = _png_size(tmp_path / "g.png")
    assert width <= 3_500 and height <= 3_500, (width, height)  # was 17,093 x 145
    assert 0.5 <= width / height <= 2.5, (width, height)
    labels = [t for t in fig.axes[0].texts if t.get_text().endswith("class_7")]
    assert labels and labels[0].get_fontsize() >= 5.5  # still readable


def test_large_result_draws_an_overview_and_one_page(food, monkeypatch, tmp_path):
    """A request for more levels than a page holds draws one page plus an overview of all levels."""
    from mmf_stream.views import figure as _figure

    monkeypatch.setattr(_figure, "LEVELS_PER_PAGE", 4)
    _, f = food
    fig = ms.views.plot(f, levels=5000)
    assert len(fig.axes) == 2  # overview above the page
    assert "overview: all 10 levels" in fig.axes[0].get_title(loc="left")
    assert "levels 1\u20134 of 10 (page 1 of 3)" in fig.axes[1].get_title(loc="left")
    fig = ms.views.plot(f, start=5)
    assert "levels 5\u20138 of 10 (page 2 of 3)" in fig.axes[1].get_title(loc="left")


def test_long_labels_are_shortened_with_the_full_text_in_the_svg_title(tmp_path):
    from mmf_stream.common.limits import MAX_LABEL_LENGTH

    long_names = [f"{i}-" + "x" * (MAX_LABEL_LENGTH - 3) for i in range(12)]  # the longest labels accepted
    f = ms.factorize(ms.hierarchical_covariance(12, seed=0), order=3, labels=long_names)
    fig = ms.views.plot(f)
    drawn = [t.get_text() for t in fig.axes[0].texts if "x" in t.get_text()]
    assert drawn and max(map(len, drawn)) <= ms.views.MAX_LABEL_CHARS + 2
    ms.views.save_figure(fig, tmp_path / "g.svg")
    ms.views.save_figure(fig, tmp_path / "g.png")
    svg = (tmp_path / "g.svg").read_text()
    for name in long_names:
        assert f"<title>{name}</title>" in svg
    width, height = _png_size(tmp_path / "g.png")
    assert width <= 2_500 and height <= 2_500, (width, height)  # was 116,095 px wide


def test_dendrogram_of_many_classes_is_truncated(classes300, tmp_path):
    C = ms.hierarchical_covariance(300, seed=1)
    names = [f"class_{i}" for i in range(300)]
    fig = ms.views.plot_dendrogram(C, names)
    ticks = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert len(ticks) <= ms.views.figure.DENDROGRAM_MAX_LEAVES
    assert any(t.startswith("(") for t in ticks)  # contracted branches say how many classes they hold
    assert "of 300 classes" in fig.axes[0].get_title(loc="left")
    assert fig.get_size_inches()[0] <= ms.views.figure.MAX_PAGE_WIDTH


def test_cjk_labels_get_a_font_or_one_warning(tmp_path):
    import warnings

    from mmf_stream.views import figure as _figure

    _figure._warned_fonts.clear()
    names = ["面包", "汉堡", "薯条", "番茄酱", "芥末", "沙拉", "生菜", "汽水", "可乐", "咖啡", "茶", "水"]
    f = ms.factorize(ms.hierarchical_covariance(12, seed=0), order=3, labels=names)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for name in ("a.png", "b.png"):
            fig = ms.views.plot(f)
            ms.views.save_figure(fig, tmp_path / name)
    messages = [str(w.message) for w in caught]
    assert not any("Glyph" in m for m in messages), messages[:3]
    fonts = ms.views.label_fonts(names)
    if fonts is not None and len(fonts) > 1 and not any("no installed font" in m for m in messages):
        return  # a CJK font is installed and used as the fallback
    assert sum("no installed font" in m for m in messages) == 1, messages


def test_composition_colours_do_not_run_out():
    f = ms.factorize(ms.hierarchical_covariance(77, seed=1), order=3, labels=[f"c{i}" for i in range(77)])
    graph = layout(f, levels=40)
    colours = {node.colour for node in graph.nodes}
    assert len(colours) >= 15, len(colours)  # was at most 10, mostly the first blue
    top = max(colours, key=lambda c: sum(n.colour == c for n in graph.nodes))
    assert sum(n.colour == top for n in graph.nodes) <= len(graph.nodes) // 4
    generated = [ms.views.composition_colour(i) for i in range(400)]
    assert len(set(generated)) == 400
    # a level that continues exactly one earlier composition keeps its colour
    by_column = {}
    for node in graph.nodes:
        by_column.setdefault(node.column, node.colour)
    for column in range(1, len(graph.levels)):
        sources = {by_column[link.source[0]] for link in graph.links if link.target[0] == column}
        if len(sources) == 1:
            assert by_column[column] in sources


@pytest.fixture(scope="module")
def insertion():
    C = ms.hierarchical_covariance(60, seed=3)
    labels = [f"c{i}" for i in range(60)]
    before = ms.factorize(C[:40, :40], order=3, labels=labels[:40])
    after = before.insert_many(C[:, 40:], labels=labels[40:])
    return before, after, labels[40:]


def test_before_after_view_marks_the_first_differing_level(insertion, tmp_path):
    from matplotlib.colors import to_rgba

    before, after, new = insertion
    first = ms.views.first_difference(before, after)
    expected = next(
        n for n, (a, b) in enumerate(zip(before.levels, after.levels), start=1)
        if set(a.labels.tolist()) != set(b.labels.tolist()) or a.wavelet_label != b.wavelet_label
    )
    assert first == expected
    fig = ms.views.plot_insertion(before, after)
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    titles = [ax.get_title(loc="left") for ax in fig.axes]
    assert texts.count("first difference") == 2  # framed in both graphs
    assert all(f"differ from level {first}" in title for title in titles)
    assert all(f"levels {max(1, first - 2)}\u2013" in title for title in titles)
    # only the inserted classes are highlighted, not every partner
    yellow = to_rgba("#fff59d")
    marked = sum(tuple(p.get_facecolor()) == yellow for p in fig.axes[1].patches)
    shown = layout(after, levels=20, start=max(1, first - 2))
    assert marked == sum(node.label in new for node in shown.nodes)
    assert marked < len(shown.nodes) // 2
    page = ms.views.to_html(after, before=before)
    assert f'class="level first-difference" data-level="{first}"' in page
    assert f"differ from level {first}" in page


def _rect(page, selector):
    return page.evaluate(
        "s => { const r = document.querySelector(s).getBoundingClientRect();"
        " return {left: r.left, top: r.top, right: r.right, bottom: r.bottom, width: r.width, height: r.height}; }",
        selector,
    )


def test_page_fits_refits_and_keeps_its_tooltip_inside(tmp_path):
    """97 levels: opens at a readable zoom filling the stage; "first N" refits; the tooltip stays inside."""
    if not _chromium():
        if os.environ.get("MMF_STREAM_REQUIRE_BROWSER"):
            pytest.fail("chromium is required (MMF_STREAM_REQUIRE_BROWSER is set) but not installed")
        pytest.skip("chromium is not installed (scripts/test.sh installs it)")
    from playwright.sync_api import sync_playwright

    f = ms.factorize(ms.hierarchical_covariance(99, seed=4), order=3,
                     labels=[f"a rather long class name {i}" for i in range(99)])
    assert f.n_levels == 97
    page_path = tmp_path / "graph.html"
    ms.views.to_html(f, page_path)
    scale_js = "() => document.getElementById('viewport').transform.baseVal.consolidate().matrix.a"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=_chromium(), args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 800})
            page.goto(page_path.as_uri())
            page.wait_for_selector("body[data-ready=yes]", timeout=10_000)
            stage, content = _rect(page, "#stage"), _rect(page, "#viewport")
            scale = page.evaluate(scale_js)
            assert 12 * scale >= 10, scale  # labels at 10 px or more (was 6 px)
            # no empty band: the content spans the stage's width or its height
            assert content["width"] >= 0.8 * stage["width"] or content["bottom"] >= stage["bottom"] - 40, content
            assert content["left"] >= stage["left"] - 1
            # "first N levels" refits the view at once
            page.fill("#limit", "6")
            refit = page.evaluate(scale_js)
            content = _rect(page, "#viewport")
            assert refit > scale
            assert content["left"] >= stage["left"] - 1 and content["right"] <= stage["right"] + 1
            assert content["top"] >= stage["top"] - 1 and content["bottom"] <= stage["bottom"] + 1
            assert content["width"] >= 0.8 * stage["width"] or content["height"] >= 0.8 * stage["height"]
            # tooltip at the right edge: drag a node to the edge and hover it
            node = page.locator(".level:visible .node").last
            box = node.bounding_box()
            page.mouse.move(box["x"] + 2, box["y"] + 2)
            page.mouse.down()
            page.mouse.move(stage["right"] - box["width"] + 2, box["y"] + 2, steps=4)
            page.mouse.up()
            box = node.bounding_box()
            page.mouse.move(box["x"] + box["width"] - 3, box["y"] + box["height"] / 2)
            page.mouse.move(box["x"] + box["width"] - 2, box["y"] + box["height"] / 2)
            tip = _rect(page, "#tip")
            assert page.is_visible("#tip")
            assert tip["right"] <= stage["right"] + 1 and tip["left"] >= stage["left"] - 1, (tip, stage)
            assert tip["bottom"] <= stage["bottom"] + 1
            assert "a rather long class name" in page.inner_text("#tip")
        finally:
            browser.close()


# ---------------------------------------------------------------- labelled ports in the page
#: per link after arrange(): its columns, whether the browser drew its ends in different rows,
#: the curve's visibility, its visible ports (their text, line, tag and number rectangles), the
#: boxes at its ends and every visible box (client pixels), and the column gap at the zoom
_LINKS_JS = """() => {
  const geo = JSON.parse(document.getElementById('mmf-data').textContent).geometry;
  const scale = document.getElementById('viewport').transform.baseVal.consolidate().matrix.a;
  const box = e => { const r = e.getBoundingClientRect(); return [r.left, r.top, r.right, r.bottom]; };
  const shown = e => getComputedStyle(e).display !== 'none' && e.getClientRects().length > 0;
  const groups = {};
  document.querySelectorAll('.level').forEach(g => { groups[g.getAttribute('data-column')] = g; });
  const rowOf = c => groups[c].transform.baseVal.consolidate().matrix.f;
  const nodeBox = (c, r) => box([...groups[c].querySelectorAll('.node rect')]
    .find(rect => Math.abs(rect.y.baseVal.value - (r * geo.row - 12)) < 0.01));
  const links = [...document.querySelectorAll('.link')].map(path => {
    const c0 = path.getAttribute('data-source'), c1 = path.getAttribute('data-column');
    const ports = [...document.querySelectorAll('.port[data-link="' + path.getAttribute('data-link') + '"]')]
      .filter(shown).map(p => ({end: p.getAttribute('data-end'), text: p.textContent.trim(),
        line: box(p.querySelector('line')), tag: box(p.querySelector('rect')), number: box(p.querySelector('text'))}));
    return {c0: Number(c0), c1: Number(c1), wrapped: rowOf(c0) !== rowOf(c1), curve: shown(path), ports,
      source: nodeBox(c0, Number(path.getAttribute('data-source-row'))),
      target: nodeBox(c1, Number(path.getAttribute('data-row')))};
  });
  return {links, gap: (geo.column - geo.box) * scale,
    boxes: [...document.querySelectorAll('.node rect')].filter(shown).map(box)};
}"""


def _overlap(a, b, slack=0.5):
    return a[0] < b[2] - slack and b[0] < a[2] - slack and a[1] < b[3] - slack and b[1] < a[3] - slack


def _check_ports(state, levels):
    """Every wrapped (or long) link is two ports tagged with the other end's level, each in its own gap."""
    from mmf_stream.views.figure import MAX_CURVE_SPAN

    gap, boxes, tol = state["gap"], state["boxes"], 1.0
    tags = []
    for link in state["links"]:
        ported = link["wrapped"] or link["c1"] - link["c0"] > MAX_CURVE_SPAN
        if not ported:
            assert link["curve"] and link["ports"] == [], link  # a curve, no visible tag
            continue
        assert not link["curve"], link
        ends = {port["end"]: port for port in link["ports"]}
        assert len(link["ports"]) == 2 and set(ends) == {"out", "in"}, link
        assert ends["out"]["text"] == str(levels[link["c1"]]), link
        assert ends["in"]["text"] == str(levels[link["c0"]]), link
        # the gap right of the source box and the gap left of the target box
        spans = {"out": (link["source"][2], link["source"][2] + gap), "in": (link["target"][0] - gap, link["target"][0])}
        touches = {"out": (link["source"][2], 0), "in": (link["target"][0], 2)}
        for end, port in ends.items():
            lo, hi = spans[end]
            at, side = touches[end]
            assert abs(port["line"][side] - at) <= tol, (end, port, link)  # the line starts at its box
            for part in ("line", "tag", "number"):
                assert lo - tol <= port[part][0] and port[part][2] <= hi + tol, (end, part, port, lo, hi)
            assert all(port["tag"][i] - tol <= port["number"][i] <= port["tag"][i + 2] + tol for i in (0, 1)), port
            assert port["number"][2] <= port["tag"][2] + tol, port  # the number fits its tag
            for part in ("tag", "number"):
                assert not any(_overlap(port[part], b) for b in boxes), (end, part, port)
            tags.append(port["tag"])
    for i, a in enumerate(tags):  # the ports of two boxes facing each other across a gap never meet
        assert not any(_overlap(a, b) for b in tags[i + 1:]), a
    return sum(link["wrapped"] for link in state["links"])


def test_page_draws_wrapped_links_as_labelled_ports(food, tmp_path):
    """Links whose ends the browser wraps to different rows (or that skip columns) are labelled ports,
    re-placed on every re-arrange (resize, reset, "first N levels"); links in one row stay curves."""
    if not _chromium():
        if os.environ.get("MMF_STREAM_REQUIRE_BROWSER"):
            pytest.fail("chromium is required (MMF_STREAM_REQUIRE_BROWSER is set) but not installed")
        pytest.skip("chromium is not installed (scripts/test.sh installs it)")
    from playwright.sync_api import sync_playwright

    _, f = food
    levels = layout(f).levels
    page_path = tmp_path / "graph.html"
    ms.views.to_html(f, page_path)
    problems = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=_chromium(), args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 700})
            page.on("console", lambda m: problems.append(m.text) if m.type in ("error", "warning") else None)
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.goto(page_path.as_uri())
            page.wait_for_selector("body[data-ready=yes]", timeout=10_000)
            state = page.evaluate(_LINKS_JS)
            assert _check_ports(state, levels) >= 3  # rows of 4 levels: several links wrap
            assert any(not link["wrapped"] and not link["ports"] for link in state["links"])  # and curves remain
            # one row: nothing wraps, the tags of the links that wrapped are hidden; long links stay ports
            page.set_viewport_size({"width": 2600, "height": 400})
            page.wait_for_function("() => document.querySelector('.level[data-column=\"9\"]')"
                                   ".transform.baseVal.consolidate().matrix.f < 40")
            wide = page.evaluate(_LINKS_JS)
            assert _check_ports(wide, levels) == 0
            assert sum(bool(link["ports"]) for link in wide["links"]) < sum(bool(link["ports"]) for link in state["links"])
            # narrow: more rows, the tags follow their boxes
            page.set_viewport_size({"width": 640, "height": 900})
            page.wait_for_function("() => document.querySelector('.level[data-column=\"9\"]')"
                                   ".transform.baseVal.consolidate().matrix.f > 400")
            narrow = page.evaluate(_LINKS_JS)
            assert _check_ports(narrow, levels) > _check_ports(state, levels)
            # zoom and drag, then reset: the same arrangement as before the zoom
            page.mouse.wheel(0, -300)
            page.mouse.move(300, 400)
            page.mouse.down()
            page.mouse.move(200, 300, steps=3)
            page.mouse.up()
            page.click("#reset")
            assert page.evaluate(_LINKS_JS) == narrow
            # the first 5 levels only: links into hidden levels show neither curve nor tags
            page.fill("#limit", "5")
            first = page.evaluate(_LINKS_JS)
            _check_ports({**first, "links": [link for link in first["links"] if link["c1"] < 5]}, levels)
            assert all(not link["curve"] and not link["ports"] for link in first["links"] if link["c1"] >= 5)
        finally:
            browser.close()
    assert problems == []
