"""Incremental MMF: exact results, quality against batch, reports, bad input."""

import numpy as np
import pytest
import zarr

import mmf_stream as ms

from matrix_helpers import check_valid as _check_valid


@pytest.fixture(scope="module")
def grown():
    C = ms.hierarchical_covariance(260, seed=2)
    return C, ms.factorize(C[:220, :220], order=4, labels=[f"c{i}" for i in range(220)])


def test_single_insertions_are_exact_valid_mmfs(grown):
    C, f = grown
    g = f
    for i in range(220, 232):
        g = g.insert(C[:i, i], C[i, i], label=f"c{i}")
        assert g.size == i + 1 and g.core.shape == (3,)
    _check_valid(g, C[:232, :232])
    report = g.insertion_report
    assert report.labels == ["c231"] and report.indices == [231]
    level = report.wavelet_levels[0]
    if level is None:
        assert 231 in g.core
    else:
        assert g.levels[level - 1].wavelet == 231
        assert sorted(report.partners[0]) == sorted(g.labels[i] for i in g.levels[level - 1].indices if i != 231)
    assert 0.0 <= report.novelty[0] <= 1.0


def test_insert_many_is_exact_and_close_to_batch(grown):
    C, f = grown
    g = f.insert_many(C[:, 220:], labels=[f"c{i}" for i in range(220, 260)])
    _check_valid(g, C)
    assert g.insertion_report.repaired
    batch = ms.factorize(C, order=4)
    assert g.error <= 1.15 * batch.error
    same = f.insert_many(C[:220, 220:], C[220:, 220:], labels=[f"c{i}" for i in range(220, 260)])
    np.testing.assert_array_equal(same.tuples, g.tuples)


def test_stream_quality_against_batch():
    C = ms.hierarchical_covariance(600, seed=3)
    f = ms.factorize(C[:500, :500], order=5)
    for i in range(500, 550):
        f = f.insert(C[:i, i], C[i, i])
    batch = ms.factorize(C[:550, :550], order=5)
    _check_valid(f, C[:550, :550])
    assert f.error <= 1.15 * batch.error


def test_zero_column_adds_no_error_and_keeps_levels(grown):
    C, f = grown
    g = f.insert(np.zeros(f.size), 2.0, label="unrelated", repair=False)
    assert g.error == pytest.approx(f.error, rel=1e-12, abs=1e-12)
    for old, new in zip(f.levels, g.levels):
        assert set(old.indices.tolist()) == set(new.indices.tolist())
    assert g.insertion_report.error_added == pytest.approx(0.0, abs=1e-9)


def test_insertion_never_modifies_the_original(grown):
    C, f = grown
    before = (f.tuples.copy(), f.rotations.copy(), f.error, f.size, [s.block.copy() for s in f.insertion_state.snapshots])
    f.insert(C[:220, 225], C[225, 225], label="c225")
    f.insert_many(C[:, 220:], labels=[f"c{i}" for i in range(220, 260)])
    np.testing.assert_array_equal(f.tuples, before[0])
    np.testing.assert_array_equal(f.rotations, before[1])
    assert f.error == before[2] and f.size == before[3]
    for snap, old in zip(f.insertion_state.snapshots, before[4]):
        np.testing.assert_array_equal(snap.block, old)


def test_factorize_incremental_matches_the_matrix():
    C = ms.hierarchical_covariance(200, seed=4)
    f = ms.factorize_incremental(C, order=4, initial_size=150, seed=1)
    _check_valid(f, C)
    assert f.size == 200 and f.core.shape == (3,)
    again = ms.factorize_incremental(C, order=4, initial_size=150, seed=1)
    np.testing.assert_array_equal(f.tuples, again.tuples)  # deterministic
    assert f.error <= 1.3 * ms.factorize(C, order=4).error


def test_save_load_then_insert(grown, tmp_path):
    C, f = grown
    f.save(tmp_path / "f.zarr")
    loaded = ms.load(tmp_path / "f.zarr")
    a = f.insert(C[:220, 220], C[220, 220], label="c220")
    b = loaded.insert(C[:220, 220], C[220, 220], label="c220")
    np.testing.assert_array_equal(a.tuples, b.tuples)
    assert a.error == b.error


def test_novelty_separates_copies_from_distinct_classes():
    C = ms.hierarchical_covariance(300, seed=5, noise=0.05)
    f = ms.factorize(C[:299, :299], order=4)
    copy_of = 7
    duplicate = C[:299, copy_of] * 1.0
    composed = f.insert(duplicate, C[copy_of, copy_of] * 1.0001, repair=True)
    distinct_vector = np.zeros(299)
    distinct = f.insert(distinct_vector, 50.0, repair=True)
    assert composed.insertion_report.novelty[0] < distinct.insertion_report.novelty[0]
    assert distinct.insertion_report.novelty[0] > 0.9


def test_bad_input(grown, tmp_path):
    C, f = grown
    with pytest.raises(ValueError, match="column must be 1-D with 220 entries"):
        f.insert(np.ones((2, 2)), 1.0, label="x")
    with pytest.raises(ValueError, match="must have 220 rows"):
        f.insert(np.ones(219), 1.0, label="x")
    with pytest.raises(ValueError, match="non-finite"):
        f.insert(np.full(220, np.nan), 1.0, label="x")
    with pytest.raises(ValueError, match="non-finite"):
        f.insert(np.ones(220), np.inf, label="x")
    with pytest.raises(ValueError, match="'c3' is already in the factorization"):
        f.insert(C[:220, 230], C[230, 230], label="c3")
    with pytest.raises(ValueError, match="give a label"):
        f.insert(C[:220, 230], C[230, 230])
    with pytest.raises(ValueError, match="not symmetric"):
        f.insert_many(np.ones((220, 2)), np.array([[1.0, 0.0], [5.0, 1.0]]), labels=["x", "y"])
    plain = ms.factorize(C[:50, :50], order=4, incremental=False)
    with pytest.raises(ValueError, match="no insertion state"):
        plain.insert(C[:50, 60], C[60, 60])
    # a result saved in format version 1 (no insertion state) loads, but cannot grow
    plain.save(tmp_path / "v1.zarr")
    group = zarr.open_group(str(tmp_path / "v1.zarr"), mode="r+")
    meta = dict(group.attrs["mmf_stream"])
    meta["format_version"] = 1
    group.attrs["mmf_stream"] = meta
    old = ms.load(tmp_path / "v1.zarr")
    with pytest.raises(ValueError, match="format version 1"):
        old.insert(C[:50, 60], C[60, 60])


def test_before_after_views(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    from mmf_stream.cli import main

    C = ms.hierarchical_covariance(40, seed=0)
    labels = [f"c{i}" for i in range(40)]
    before = ms.factorize(C[:39, :39], order=3, labels=labels[:39])
    after = before.insert(C[:39, 39], C[39, 39], label="c39")
    assert ms.views.inserted_labels(before, after) == ["c39"]
    fig = ms.views.plot_insertion(before, after, levels=10)
    assert len(fig.axes) == 2
    page = ms.views.to_html(after, before=before)
    assert "after inserting c39" in page
    before.save(tmp_path / "before.zarr")
    after.save(tmp_path / "after.zarr")
    out = tmp_path / "ba.svg"
    assert main(["show", str(tmp_path / "after.zarr"), "--before", str(tmp_path / "before.zarr"), "-o", str(out)]) == 0
    assert "c39" in out.read_text()
    with pytest.raises(ValueError, match="lacks 1 class"):
        ms.views.plot_insertion(after, before)
    with pytest.raises(ValueError, match="holds no class"):
        ms.views.plot_insertion(before, before)


def test_insert_is_deterministic(grown):
    C, f = grown
    a = f.insert(C[:220, 240], C[240, 240], label="c240", repair=True)
    b = f.insert(C[:220, 240], C[240, 240], label="c240", repair=True)
    np.testing.assert_array_equal(a.tuples, b.tuples)
    np.testing.assert_array_equal(a.rotations, b.rotations)
    assert a.insertion_report == b.insertion_report


def test_insertion_keeps_a_larger_core():
    C = ms.hierarchical_covariance(160, seed=6)
    f = ms.factorize(C[:150, :150], order=4, core_size=20)
    g = f
    for i in range(150, 156):
        g = g.insert(C[:i, i], C[i, i])
    assert g.core.shape == (20,) and g.n_levels == 136
    _check_valid(g, C[:156, :156])
    h = f.insert(np.zeros(150), 1.0)
    assert h.core.shape == (20,) and h.error == pytest.approx(f.error)
