"""`mmf-stream show` and `compare`: argument checks before any work, overwrite, bounds, progress.

Run in-process through ``mmf_stream.cli.main`` (fast; no subprocess per case).
"""

import numpy as np
import pytest

import mmf_stream as ms
from mmf_stream import cli

NAMES = [f"class{i}" for i in range(12)]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("views_cli")
    C = ms.hierarchical_covariance(12, seed=0)
    ms.factorize(C, order=3, labels=NAMES).save(folder / "a.zarr")
    ms.factorize(C * 2, order=3, labels=NAMES).save(folder / "b.zarr")
    np.save(folder / "C.npy", C)
    return folder


def _fails(capsys, args, fragment):
    code = cli.main([str(a) for a in args])
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 2, captured
    assert len(lines) == 1 and "Traceback" not in captured.err, captured.err
    assert fragment in lines[0], lines[0]
    return captured


def test_show_and_compare_refuse_an_existing_out_before_any_work(saved, tmp_path, capsys):
    existing = tmp_path / "g.png"
    existing.write_bytes(b"keep me")
    # a missing result would fail later: the existing --out is reported first
    _fails(capsys, ["show", tmp_path / "missing.zarr", "-o", existing], "already exists (use --overwrite")
    _fails(capsys, ["show", saved / "a.zarr", "-o", existing], "already exists")
    captured = _fails(capsys, ["compare", saved / "a.zarr", saved / "b.zarr", "-o", existing], "already exists")
    assert captured.out == ""  # the table is not printed before the error
    assert existing.read_bytes() == b"keep me"
    assert cli.main(["show", str(saved / "a.zarr"), "-o", str(existing), "--overwrite"]) == 0
    assert existing.read_bytes()[:4] == b"\x89PNG"
    assert cli.main(["compare", str(saved / "a.zarr"), str(saved / "b.zarr"), "-o", str(existing), "--overwrite"]) == 0


def test_compare_checks_out_before_printing_the_table(saved, tmp_path, capsys):
    captured = _fails(capsys, ["compare", saved / "a.zarr", saved / "b.zarr", "--out", tmp_path / "c.txt"],
                      "--out must end in .svg, .png or .pdf")
    assert captured.out == ""
    assert not (tmp_path / "c.txt").exists()


@pytest.mark.parametrize("value", ["5", "0", "-0.2", "1.5"])
def test_compare_threshold_is_an_overlap(saved, capsys, value):
    _fails(capsys, ["compare", saved / "a.zarr", saved / "b.zarr", "--threshold", value], "--threshold is an overlap in (0, 1]")


def test_compare_threshold_one_is_accepted(saved, capsys):
    assert cli.main(["compare", str(saved / "a.zarr"), str(saved / "b.zarr"), "--threshold", "1"]) == 0
    assert "saturation" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("option", "value", "fragment"),
    [
        ("--start", "-1", "--start must be at least 1"),
        ("--start", "0", "--start must be at least 1"),
        ("--start", "99", "--start 99 is past the last level (10)"),
        ("--levels", "0", "--levels must be at least 1"),
        ("--levels", "-3", "--levels must be at least 1"),
        ("--dpi", "100000", "--dpi must be between 10 and 1200"),
        ("--dpi", "0", "--dpi must be between 10 and 1200"),
    ],
)
def test_show_bounds(saved, tmp_path, capsys, option, value, fragment):
    _fails(capsys, ["show", saved / "a.zarr", "-o", tmp_path / "g.png", option, value], fragment)
    assert not (tmp_path / "g.png").exists()


def test_compare_levels_at_least_one(saved, capsys):
    _fails(capsys, ["compare", saved / "a.zarr", saved / "b.zarr", "--levels", "0"], "--levels must be at least 1")


def test_figure_pixel_size_is_bounded():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(100, 60))
    try:
        with pytest.raises(ValueError, match="pixels at 1200 dpi"):
            ms.views.check_figure_size(fig, 1200)
        with pytest.raises(ValueError, match="dpi must be between"):
            ms.views.check_figure_size(fig, 100_000)
        assert ms.views.check_figure_size(fig, 100) == (10_000, 6_000)
    finally:
        plt.close(fig)


def test_dendrogram_title_says_which_matrix(saved, tmp_path, capsys):
    assert cli.main(["show", str(saved / "a.zarr"), "-o", str(tmp_path / "r.svg"), "--compare", "dendrogram"]) == 0
    svg = (tmp_path / "r.svg").read_text()
    assert "reconstruction M(C)" in svg and "of the same matrix" not in svg
    assert cli.main(["show", str(saved / "a.zarr"), "-o", str(tmp_path / "c.svg"), "--compare", "dendrogram",
                     "--matrix", str(saved / "C.npy")]) == 0
    svg = (tmp_path / "c.svg").read_text()
    assert "of the factored matrix C (C.npy)" in svg and "reconstruction" not in svg
    capsys.readouterr()


def test_show_reports_progress_on_a_terminal(saved, tmp_path, capsys, monkeypatch):
    from mmf_stream import _progress

    monkeypatch.setattr(_progress, "is_interactive", lambda: True)
    assert cli.main(["show", str(saved / "a.zarr"), "-o", str(tmp_path / "g.png"), "--compare", "dendrogram",
                     "--matrix", str(saved / "C.npy")]) == 0
    err = capsys.readouterr().err
    assert "layout" in err and "dendrogram" in err
    monkeypatch.setattr(_progress, "is_interactive", lambda: False)
    assert cli.main(["show", str(saved / "a.zarr"), "-o", str(tmp_path / "h.png")]) == 0
    assert capsys.readouterr().err == ""  # silent off a terminal


def test_show_says_how_to_page_on(saved, tmp_path, capsys):
    assert cli.main(["show", str(saved / "a.zarr"), "-o", str(tmp_path / "g.png"), "--levels", "4"]) == 0
    out = capsys.readouterr().out
    assert "drew levels 1\u20134 of 10" in out and "--start 5" in out
