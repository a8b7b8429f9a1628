"""The paper's analyses as calibrated numbers: the layer trajectory (with a permutation null) and the
novelty of a new class (against the classes already there)."""

import numpy as np
import pytest

import mmf_stream as ms
from mmf_stream import cli

M, D = 200, 64
LABELS = [f"c{i}" for i in range(M)]


@pytest.fixture(scope="module")
def means():
    return ms.class_means(M, D, seed=0, branching=6, depth=3)


@pytest.fixture(scope="module")
def layers(means):
    """Three planted layers: b keeps a's compositions (a little noise), c shuffles which class is which."""
    rng = np.random.default_rng(5)
    a = ms.factorize(means=means, order=5, labels=LABELS)
    b = ms.factorize(means=means + 0.005 * rng.standard_normal(means.shape), order=5, labels=LABELS)
    c = ms.factorize(means=means[rng.permutation(M)], order=5, labels=LABELS)
    return a, b, c


# ------------------------------------------------------------------ trajectory
def test_trajectory_detects_where_compositions_change(layers):
    comparison = ms.views.compare(list(layers), ["a", "b", "c"], null_draws=200)
    # a -> b: the same compositions, far beyond what relabelled graphs share
    assert comparison.change[0] < 0.5
    assert comparison.pair_overlap[0, 0] > 10 * comparison.null_overlap[0]
    assert comparison.overlap_p[0] <= 1 / 201 + 1e-12
    # b -> c: the compositions changed as much as between unrelated graphs
    assert comparison.change[1] > 0.9
    assert comparison.overlap_p[1] > 0.01  # one draw of the null itself (the spread: the next test)
    np.testing.assert_allclose(comparison.change, 1 - comparison.pair_overlap[:, 0])
    table = comparison.table()
    assert "change" in table and "null" in table and "200 draws" in table


def test_trajectory_null_is_calibrated(means):
    """Unrelated layers (classes relabelled at random) get p-values spread over (0, 1], not small ones."""
    base = ms.factorize(means=means, order=5, labels=LABELS)
    pvalues = []
    for seed in range(8):
        shuffled = means[np.random.default_rng(100 + seed).permutation(M)]
        other = ms.factorize(means=shuffled, order=5, labels=LABELS)
        pvalues.append(ms.views.compare([base, other], null_draws=100, seed=seed).overlap_p[0])
    pvalues = np.array(pvalues)
    assert np.count_nonzero(pvalues < 0.05) <= 2, pvalues
    assert 0.2 < pvalues.mean() < 0.8, pvalues


def test_permutation_overlap_checks_and_bounds():
    first = {(0, 1), (2, 3)}
    mean, p = ms.views.permutation_overlap(first, first, 50, draws=99)
    assert p == pytest.approx(1 / 100) and mean < 0.2
    with pytest.raises(ValueError, match="at least 1"):
        ms.views.permutation_overlap(first, first, 50, draws=0)
    with pytest.raises(ValueError, match="null_draws"):
        ms.views.compare([ms.factorize(means=np.eye(6) + 0.1, order=2, labels=list("abcdef"))] * 2, null_draws=0)


# ------------------------------------------------------------------ novelty
def _inserted(means, vector, name):
    before = ms.factorize(means=means, order=5, labels=LABELS)
    after = before.insert(mean=vector, label=name)
    grown = np.vstack([means, vector])
    return before, after, grown @ grown.T


def test_novelty_separates_a_novel_class_from_a_composed_one(means):
    rng = np.random.default_rng(1)
    composed = 0.5 * (means[3] + means[150]) + 1e-3 * rng.standard_normal(D)
    novel = rng.standard_normal(D)
    novel *= np.linalg.norm(means[0]) / np.linalg.norm(novel)
    _, after_c, C_c = _inserted(means, composed, "composed")
    _, after_n, C_n = _inserted(means, novel, "novel")
    low = ms.views.novelty(after_c, ["composed"], matrix=C_c)
    high = ms.views.novelty(after_n, ["novel"], matrix=C_n)
    assert low.score[0] < 0.01 and low.percentile[0] < 10 and low.p_value[0] > 0.5
    assert {"c3", "c150"} <= set(low.partners[0])  # the composition it was made of
    assert high.score[0] > 0.5 and high.percentile[0] >= 95 and high.p_value[0] <= 0.05
    assert low.reference == high.reference == M
    assert "percentile" in high.table()


def test_novelty_of_existing_classes_is_spread_over_the_reference(means):
    """Calibration: classes drawn from the reference itself land anywhere in it, not at its top."""
    f = ms.factorize(means=means, order=5, labels=LABELS)
    picked = [LABELS[i] for i in np.random.default_rng(3).choice(M, 30, replace=False)]
    found = ms.views.novelty(f, picked, matrix=means @ means.T)
    assert 25 < found.percentile.mean() < 75, found.percentile
    assert np.count_nonzero(found.p_value < 0.05) <= 5


def test_novelty_bad_input(means):
    f = ms.factorize(means=means, order=5, labels=LABELS)
    with pytest.raises(ValueError, match="unknown label"):
        ms.views.novelty(f, ["nope"])
    with pytest.raises(ValueError, match="at least one"):
        ms.views.novelty(f, [])
    with pytest.raises(ValueError, match="matrix must be"):
        ms.views.novelty(f, ["c1"], matrix=np.eye(3))
    with pytest.raises(ValueError, match="folds"):
        ms.views.novelty(f, ["c1"], folds=1)


def test_before_after_view_names_the_calibrated_novelty(means):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    novel = np.random.default_rng(1).standard_normal(D) * np.linalg.norm(means[0]) / np.sqrt(D)
    before, after, C = _inserted(means, novel, "novel")
    fig = ms.views.plot_insertion(before, after, levels=10, matrix=C)
    try:
        titles = " ".join(ax.get_title(loc="left") for ax in fig.axes)
        assert "novelty" in titles and "percentile" in titles
    finally:
        plt.close(fig)
    page = ms.views.to_html(after, before=before, matrix=C)
    assert "novelty 0." in page and "100th percentile" in page


# ------------------------------------------------------------------ CLI
def test_compare_command_reports_trajectory_and_novelty(layers, means, tmp_path, capsys):
    a, b, _ = layers
    a.save(tmp_path / "a.zarr")
    b.save(tmp_path / "b.zarr")
    np.save(tmp_path / "C.npy", means @ means.T)
    code = cli.main(["compare", str(tmp_path / "b.zarr"), str(tmp_path / "a.zarr"), "--null-draws", "50",
                     "--novelty", "c7", "--matrix", str(tmp_path / "C.npy")])  # the matrix of the last, a
    captured = capsys.readouterr()
    assert code == 0, captured.err
    out = captured.out
    assert "change" in out and "50 draws" in out and "novelty in a" in out and "c7" in out
    for args, fragment in [(["--null-draws", "0"], "--null-draws must be at least 1"),
                           (["--matrix", str(tmp_path / "C.npy")], "--matrix is used with --novelty"),
                           (["--novelty", "nope"], "unknown label")]:
        code = cli.main(["compare", str(tmp_path / "a.zarr"), str(tmp_path / "b.zarr"), *args])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and fragment in err[0], err
