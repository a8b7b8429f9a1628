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
