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
    from mmf_stream.common import progress as _progress

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


# --- item 18.8: --compare dendrogram --matrix must be the matrix that was factorized -------------------------------

SHUFFLED = ["weighing scale", "salt shaker", "kettle", "apple", "mug", "zebra", "bowl", "lamp", "clock", "fern"]


def _labels_array(group, labels):
    group.create_array("labels", shape=(len(labels),), dtype=str)[:] = np.array(labels)


@pytest.fixture(scope="module")
def store_result(tmp_path_factory):
    """A result factored from a class store (classes sorted by label) and the matrix in the input's order."""
    folder = tmp_path_factory.mktemp("store_result")
    means = np.random.default_rng(8).standard_normal((len(SHUFFLED), 6))
    store = ms.Store.create(folder / "s.zarr")
    store.add_means(means, labels=SHUFFLED)
    assert cli.main(["factorize", str(folder / "s.zarr"), "-o", str(folder / "r.zarr"), "--order", "3", "-q"]) == 0
    original = means @ means.T  # rows in the order of SHUFFLED
    np.save(folder / "original.npy", original)
    ordered = np.argsort(SHUFFLED)  # the store's (sorted) order
    np.save(folder / "sorted.npy", original[np.ix_(ordered, ordered)])
    import zarr

    group = zarr.open_group(str(folder / "cov.zarr"), mode="w")
    group.create_array("covariance", data=original)
    _labels_array(group, SHUFFLED)
    return folder, original


def _drawn(monkeypatch):
    """Record the matrix and labels the dendrogram is drawn from."""
    seen = {}
    original = ms.views.plot_with_dendrogram

    def record(result, matrix, **kwargs):
        seen["matrix"], seen["labels"] = np.asarray(matrix), [str(x) for x in result.labels]
        return original(result, matrix, **kwargs)

    monkeypatch.setattr(ms.views, "plot_with_dendrogram", record)
    return seen


def test_dendrogram_refuses_a_matrix_in_another_row_order(store_result, tmp_path, capsys):
    folder, _ = store_result
    _fails(capsys, ["show", folder / "r.zarr", "-o", tmp_path / "d.svg", "--compare", "dendrogram",
                    "--matrix", folder / "original.npy"], "is not the matrix")
    assert not (tmp_path / "d.svg").exists()


def test_dendrogram_accepts_the_factored_matrix(store_result, tmp_path, capsys, monkeypatch):
    folder, original = store_result
    seen = _drawn(monkeypatch)
    assert cli.main(["show", str(folder / "r.zarr"), "-o", str(tmp_path / "d.svg"), "--compare", "dendrogram",
                     "--matrix", str(folder / "sorted.npy")]) == 0
    where = [SHUFFLED.index(name) for name in seen["labels"]]
    np.testing.assert_allclose(seen["matrix"], original[np.ix_(where, where)])
    capsys.readouterr()


@pytest.mark.parametrize("name", ["s.zarr", "cov.zarr"])
def test_dendrogram_reorders_a_matrix_that_has_labels(store_result, tmp_path, capsys, monkeypatch, name):
    folder, original = store_result
    seen = _drawn(monkeypatch)
    assert cli.main(["show", str(folder / "r.zarr"), "-o", str(tmp_path / "d.svg"), "--compare", "dendrogram",
                     "--matrix", str(folder / name)]) == 0, capsys.readouterr().err
    where = [SHUFFLED.index(name) for name in seen["labels"]]
    np.testing.assert_allclose(seen["matrix"], original[np.ix_(where, where)], atol=1e-12)
    capsys.readouterr()


def test_dendrogram_names_the_missing_label(store_result, tmp_path, capsys):
    folder, original = store_result
    import zarr

    group = zarr.open_group(str(tmp_path / "other.zarr"), mode="w")
    group.create_array("covariance", data=original)
    _labels_array(group, SHUFFLED[:-1] + ["dog"])
    _fails(capsys, ["show", folder / "r.zarr", "-o", tmp_path / "d.svg", "--compare", "dendrogram",
                    "--matrix", tmp_path / "other.zarr"], "'fern'")


def test_matrix_check_reads_a_sample_of_rows_at_large_m():
    """At large m the probe is checked on PROBE_CHECK_ROWS rows; a permutation of a matrix with a
    constant diagonal (cosine similarities: the diagonal check cannot see it) is still found."""
    from mmf_stream.store.fingerprint import PROBE_CHECK_ROWS, matrix_mismatches, of_means, probe_rows, reordered

    size = 4 * PROBE_CHECK_ROWS
    means = np.random.default_rng(1).standard_normal((size, 8))
    means /= np.linalg.norm(means, axis=1, keepdims=True)
    fingerprint = of_means(means)
    C = means @ means.T
    assert probe_rows(size).shape == (PROBE_CHECK_ROWS,)
    assert matrix_mismatches(fingerprint, C).size == 0
    swap = np.random.default_rng(2).permutation(size)
    moved = matrix_mismatches(fingerprint, C[np.ix_(swap, swap)])
    assert moved.size > PROBE_CHECK_ROWS // 2 and not reordered(fingerprint, np.ones(size))
    with pytest.raises(ValueError, match="fingerprint is for"):
        matrix_mismatches(fingerprint, C[:-1, :-1])
