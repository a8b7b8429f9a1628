"""Factored results (class means, C = M M'): insertion from a mean, save/load, the new entry points."""

import numpy as np
import pytest

import mmf_stream as ms

from matrix_helpers import check_valid as _check_valid

SMALL_STAGES = dict(cluster_size=32, greedy_below=40)


def _assert_exact(f, M):
    """``f`` is an exact MMF of ``M M'``: error vs reconstruction, norm, and every invariant."""
    C = M @ M.T
    _check_valid(f, C)
    assert f.norm == pytest.approx(np.linalg.norm(C), rel=1e-10)
    H = f.compressed()
    assert f.error**2 == pytest.approx(np.linalg.norm(C) ** 2 - np.linalg.norm(H) ** 2, rel=1e-7,
                                       abs=1e-9 * np.linalg.norm(C) ** 2)


def _same_levels(a, b):
    np.testing.assert_array_equal(a.tuples, b.tuples)
    np.testing.assert_array_equal(a.wavelets, b.wavelets)
    np.testing.assert_array_equal(a.rotations, b.rotations)
    np.testing.assert_array_equal(a.level_errors, b.level_errors)
    np.testing.assert_array_equal(a.diagonal, b.diagonal)
    np.testing.assert_array_equal(a.core_block, b.core_block)
    assert a.error == b.error


def _check_report(g, f, new_labels):
    """The insertion report of ``g = f.insert...(new classes)``."""
    report = g.insertion_report
    count = len(new_labels)
    assert report.labels == list(new_labels)
    assert report.indices == list(range(f.size, f.size + count))
    assert 0 <= report.cut_level <= f.n_levels
    assert report.error_added == pytest.approx(g.error - f.error, abs=1e-9 * max(1.0, g.error))
    assert 0 <= report.changed_levels <= g.n_levels - report.cut_level
    assert len(report.wavelet_levels) == len(report.partners) == len(report.novelty) == count
    names = (lambda i: g.labels[i].item()) if g.labels is not None else int
    for index, level, partners, novelty in zip(report.indices, report.wavelet_levels, report.partners,
                                               report.novelty):
        assert 0.0 <= novelty <= 1.0
        if level is None:
            assert index in g.core.tolist() and novelty == 1.0
            assert sorted(map(str, partners)) == sorted(str(names(i)) for i in g.core if i != index)
        else:
            assert report.cut_level < level <= g.n_levels  # kept levels never take a new index
            assert g.wavelets[level - 1] == index
            assert sorted(map(str, partners)) == sorted(str(names(i)) for i in g.tuples[level - 1] if i != index)
    # the kept levels are the old ones, unchanged
    cut = report.cut_level
    np.testing.assert_array_equal(g.tuples[:cut], f.tuples[:cut])
    np.testing.assert_array_equal(g.rotations[:cut], f.rotations[:cut])
    assert np.all(g.level_errors[:cut] >= f.level_errors[:cut] - 1e-9 * max(1.0, f.level_errors.max()))


# ------------------------------------------------------------------ insertion


@pytest.mark.parametrize("schedule,options", [("greedy", None), ("staged", SMALL_STAGES)])
@pytest.mark.parametrize("repair", [None, True, False])
def test_insert_mean_is_exact(schedule, options, repair):
    M = ms.class_means(201, 16, seed=1)
    labels = [f"c{i}" for i in range(200)]
    f = ms.factorize(means=M[:200], order=4, core_size=10, schedule=schedule, options=options, labels=labels)
    assert f.factored and f.metadata["schedule"] == schedule
    before = f.tuples.copy(), f.rotations.copy(), f.error
    g = f.insert(mean=M[200], label="new-and-longer-label", repair=repair)
    _assert_exact(g, M)
    assert g.size == 201 and g.factored and g.order == 4
    assert g.core.shape == (10,) and g.n_levels == 191
    assert list(g.labels) == labels + ["new-and-longer-label"]
    assert g.insertion_report.repaired is (repair is True)
    _check_report(g, f, ["new-and-longer-label"])
    # the original is not modified
    np.testing.assert_array_equal(f.tuples, before[0])
    np.testing.assert_array_equal(f.rotations, before[1])
    assert f.error == before[2] and f.size == 200 and f.insertion_report is None


def test_repair_re_runs_from_the_shallow_snapshot():
    M = ms.class_means(201, 16, seed=2)
    f = ms.factorize(means=M[:200], order=4, core_size=10)
    plain = f.insert(mean=M[200], repair=False)
    repaired = f.insert(mean=M[200], repair=True)
    assert repaired.insertion_report.cut_level < plain.insertion_report.cut_level
    assert repaired.metadata["since_repair"] == 0 and plain.metadata["since_repair"] == 1
    _assert_exact(plain, M)
    _assert_exact(repaired, M)


def test_insert_many_means_is_exact():
    M = ms.class_means(205, 16, seed=3)
    f = ms.factorize(means=M[:200], order=4, core_size=10, labels=range(200))
    g = f.insert_many(means=M[200:], labels=range(200, 205))
    _assert_exact(g, M)
    assert g.size == 205 and g.core.shape == (10,) and g.n_levels == 195
    np.testing.assert_array_equal(g.labels, np.arange(205))
    _check_report(g, f, list(range(200, 205)))
    assert g.insertion_report.repaired is False  # 5 < repair_every
    # one pass vs one at a time: both exact MMFs of the same matrix
    h = f
    for i in range(200, 205):
        h = h.insert(mean=M[i], label=i)
        _assert_exact(h, M[: i + 1])
    assert h.metadata["since_repair"] == 5


def test_insert_many_of_repair_every_or_more_repairs():
    M = ms.class_means(112, 12, seed=4)
    f = ms.factorize(means=M[:100], order=4, core_size=8)
    g = f.insert_many(means=M[100:])
    assert g.insertion_report.repaired is True
    _assert_exact(g, M)


def test_sequential_inserts_repair_every_few():
    M = ms.class_means(149, 12, seed=3)
    f = ms.factorize(means=M[:140], order=4, core_size=8, options=dict(repair_every=3))
    repaired = []
    for i in range(140, 149):
        f = f.insert(mean=M[i])
        repaired.append(f.insertion_report.repaired)
    assert repaired == [False, False, True] * 3
    _assert_exact(f, M)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("repair", [False, True])
def test_dense_and_factored_insertion_agree(seed, repair):
    """The same classes inserted as columns (dense result) or means (factored result)."""
    M = np.random.default_rng(seed).normal(size=(156, 12))
    C = M @ M.T
    factored = ms.factorize(means=M[:150], order=4, core_size=10).insert_many(means=M[150:], repair=repair)
    dense = ms.factorize(C[:150, :150], order=4, core_size=10).insert_many(C[:150, 150:], C[150:, 150:],
                                                                             repair=repair)
    assert factored.insertion_report.cut_level == dense.insertion_report.cut_level
    for a, b in zip(dense.levels, factored.levels):
        assert set(a.indices.tolist()) == set(b.indices.tolist()) and a.wavelet == b.wavelet
    np.testing.assert_allclose(factored.level_errors, dense.level_errors, rtol=1e-6,
                               atol=1e-7 * dense.level_errors.max())
    assert factored.error == pytest.approx(dense.error, rel=1e-8)
    _assert_exact(factored, M)


def test_insert_into_wide_means_and_unusual_means():
    rng = np.random.default_rng(0)
    M = rng.normal(size=(34, 100))  # D > m
    f = ms.factorize(means=M[:30], order=4, labels=range(30))
    _assert_exact(f.insert_many(means=M[30:], labels=range(30, 34)), M)
    # a class orthogonal to every other, and a zero class
    M = np.zeros((32, 9))
    M[:30, :8] = rng.normal(size=(30, 8))
    M[30, 8] = 2.0
    f = ms.factorize(means=M[:30], order=3, core_size=5)
    g = f.insert(mean=M[30])
    _assert_exact(g, M[:31])
    _assert_exact(g.insert(mean=M[31]), M)
    # a duplicate of an existing class (C becomes singular) and a list as the mean
    M = ms.class_means(40, 6, seed=8)
    M[39] = M[3]
    f = ms.factorize(means=M[:39], order=3)
    _assert_exact(f.insert(mean=M[39].tolist()), M)


def test_insert_into_a_small_result_re_runs_the_whole_batch():
    """Small results keep the whole matrix as their snapshot."""
    M = ms.class_means(12, 5, seed=2)
    f = ms.factorize(means=M[:10], order=3)
    assert [snap.level for snap in f.insertion_state.snapshots] == [0]
    g = f.insert(mean=M[10]).insert(mean=M[11])
    _assert_exact(g, M)
    assert g.core.shape == (2,)


# --------------------------------------------------------- insertion errors


@pytest.fixture(scope="module")
def labelled():
    M = ms.class_means(31, 8, seed=1)
    labels = [f"c{i}" for i in range(30)]
    factored = ms.factorize(means=M[:30], order=3, labels=labels)
    dense = ms.factorize(M[:30] @ M[:30].T, order=3, labels=labels)
    return M, factored, dense


def test_insert_mean_into_dense_result_is_refused(labelled):
    M, _, dense = labelled
    with pytest.raises(ValueError, match="dense matrix.*insert columns"):
        dense.insert(mean=M[30], label="x")
    with pytest.raises(ValueError, match="dense matrix"):
        dense.insert_many(means=M[30:], labels=["x"])


def test_insert_column_into_factored_result_is_refused(labelled):
    M, factored, _ = labelled
    column, diagonal = M[:30] @ M[30], float(M[30] @ M[30])
    with pytest.raises(ValueError, match="class means.*mean="):
        factored.insert(column, diagonal, label="x")
    with pytest.raises(ValueError, match="class means"):
        factored.insert_many(column[:, None], np.array([[diagonal]]), labels=["x"])
    with pytest.raises(ValueError, match="not both"):
        factored.insert(column, diagonal, label="x", mean=M[30])


@pytest.mark.parametrize("mean,error,match", [
    (np.ones(7), ValueError, "8 features"),
    (np.ones(9), ValueError, "8 features"),
    (np.full(8, np.nan), ValueError, "non-finite"),
    (np.array([1.0, np.inf, 0, 0, 0, 0, 0, 0]), ValueError, "non-finite"),
    (np.ones((1, 8)), ValueError, "1-D"),
    (np.array(["a"] * 8), TypeError, "real numbers"),
])
def test_bad_mean_is_refused(labelled, mean, error, match):
    _, factored, _ = labelled
    with pytest.raises(error, match=match):
        factored.insert(mean=mean, label="x")


def test_bad_means_for_insert_many_are_refused(labelled):
    _, factored, _ = labelled
    with pytest.raises(ValueError, match="8 features"):
        factored.insert_many(means=np.ones((2, 5)), labels=["x", "y"])
    with pytest.raises(ValueError, match="no classes"):
        factored.insert_many(means=np.ones((0, 8)), labels=[])
    with pytest.raises(ValueError, match="labels"):
        factored.insert_many(means=np.ones((2, 8)), labels=["x"])


def test_insert_labels_are_checked(labelled):
    M, factored, _ = labelled
    with pytest.raises(ValueError, match="give a label"):
        factored.insert(mean=M[30])
    with pytest.raises(ValueError, match="already"):
        factored.insert(mean=M[30], label="c3")
    with pytest.raises(TypeError, match="same kind"):
        factored.insert(mean=M[30], label=3)
    unlabelled = ms.factorize(means=M[:30], order=3)
    with pytest.raises(ValueError, match="no labels"):
        unlabelled.insert(mean=M[30], label="x")


def test_insert_without_insertion_state_is_refused():
    M = ms.class_means(31, 8, seed=1)
    f = ms.factorize(means=M[:30], order=3, incremental=False)
    with pytest.raises(ValueError, match="no insertion state"):
        f.insert(mean=M[30])


# ------------------------------------------------------------------ save/load


def test_save_load_round_trip_and_insert_identically(tmp_path):
    import zarr

    M = ms.class_means(203, 16, seed=5)
    labels = [f"k{i}" for i in range(200)]
    f = ms.factorize(means=M[:200], order=4, core_size=10, labels=labels, options=dict(repair_every=2))
    path = tmp_path / "result.zarr"
    f.save(path)
    meta = zarr.open_group(str(path), mode="r").attrs["mmf_stream"]
    assert meta["format"] == "factorization"
    assert meta["format_version"] == ms.FORMAT_VERSION == 3
    assert meta["input"] == "means"
    assert meta["options"]["repair_every"] == 2
    loaded = ms.load(path)
    assert loaded.factored and loaded.metadata["input"] == "means"
    assert loaded.metadata["format_version"] == 3
    assert loaded.metadata["options"] == f.metadata["options"]
    _same_levels(loaded, f)
    np.testing.assert_array_equal(loaded.labels, f.labels)
    np.testing.assert_array_equal(loaded.insertion_state.final_rows, f.insertion_state.final_rows)
    assert loaded.norm == f.norm
    # inserting into the loaded result is inserting into the in-memory one
    a = f.insert(mean=M[200], label="x")
    b = loaded.insert(mean=M[200], label="x")
    _same_levels(a, b)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert a.insertion_report == b.insertion_report
    _assert_exact(b, M[:201])
    # the options travel: the second insertion repairs in both (repair_every=2)
    a2, b2 = a.insert(mean=M[201], label="y"), b.insert(mean=M[201], label="y")
    assert a2.insertion_report.repaired and b2.insertion_report.repaired
    _same_levels(a2, b2)
    # an inserted result saves, loads and inserts identically too
    path2 = tmp_path / "grown.zarr"
    a2.save(path2)
    c = ms.load(path2)
    assert c.metadata["since_repair"] == a2.metadata["since_repair"]
    _same_levels(c.insert(mean=M[202], label="z"), a2.insert(mean=M[202], label="z"))
    _assert_exact(c.insert(mean=M[202], label="z"), M)


def test_save_load_staged_factored_result(tmp_path):
    M = ms.class_means(161, 12, seed=6)
    f = ms.factorize(means=M[:160], order=4, core_size=8, schedule="staged", options=SMALL_STAGES)
    f.save(tmp_path / "staged.zarr")
    loaded = ms.load(tmp_path / "staged.zarr")
    assert loaded.metadata["schedule"] == "staged"
    _same_levels(loaded, f)
    _same_levels(loaded.insert(mean=M[160]), f.insert(mean=M[160]))


def test_save_load_factored_result_without_insertion_state(tmp_path):
    M = ms.class_means(30, 8, seed=1)
    f = ms.factorize(means=M, order=3, incremental=False)
    f.save(tmp_path / "plain.zarr")
    loaded = ms.load(tmp_path / "plain.zarr")
    _same_levels(loaded, f)
    assert loaded.factored and f.factored
    with pytest.raises(ValueError, match="no insertion state"):
        loaded.insert(mean=M[0])


# ------------------------------------------------------- entry point checks


M_GOOD = np.abs(np.random.default_rng(0).normal(size=(6, 4)))


def _with(value):
    bad = M_GOOD.copy()
    bad[2, 1] = value
    return bad


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(means=_with(np.nan)), ValueError, "non-finite"),
    (dict(means=_with(np.inf)), ValueError, "non-finite"),
    (dict(means=np.zeros((5, 0))), ValueError, "D = 0"),
    (dict(means=np.zeros((0, 5))), ValueError, "no classes"),
    (dict(means=M_GOOD[:3], order=5), ValueError, "order 5 exceeds"),
    (dict(means=M_GOOD[:1], order=2), ValueError, "exceeds"),
    (dict(means=M_GOOD[0]), ValueError, "2-D"),
    (dict(means=M_GOOD[None]), ValueError, "2-D"),
    (dict(means=M_GOOD, labels=["a", "b", "c"]), ValueError, "3 labels"),
    (dict(means=M_GOOD, labels=list(range(7))), ValueError, "7 labels"),
    (dict(means=M_GOOD, labels=[0, 0, 1, 2, 3, 4]), ValueError, "unique"),
    (dict(C=M_GOOD @ M_GOOD.T, means=M_GOOD), ValueError, "either C or means"),
    (dict(), TypeError, "needs a matrix C or class means"),
    (dict(means=[["a", "b"], ["c", "d"]], order=2), TypeError, "real numbers"),
    (dict(means=M_GOOD.astype(complex)), TypeError, "real"),
    (dict(means=M_GOOD * 1e80), ValueError, "overflow"),
    (dict(means=M_GOOD, core_size=6), ValueError, "core_size"),
    (dict(means=M_GOOD, schedule="fast"), ValueError, "schedule"),
    (dict(means=M_GOOD, options=dict(cluster_size=4)), ValueError, "cluster_size"),
])
def test_bad_input_for_factored_entry_points(kwargs, error, match):
    kwargs = {"order": 3, **kwargs}
    with pytest.raises(error, match=match):
        ms.factorize(**kwargs)


def test_factorize_means_accepts_lists_ints_and_zero_classes():
    M = ms.class_means(20, 5, seed=4)
    ref = ms.factorize(means=M, order=3, core_size=4)
    assert ms.factorize(means=M.tolist(), order=3, core_size=4).error == pytest.approx(ref.error, rel=1e-12)
    ints = (10 * M).astype(np.int64)
    _assert_exact(ms.factorize(means=ints, order=3, core_size=4), ints.astype(float))
    zero = ms.factorize(means=np.zeros((10, 4)), order=3)
    assert zero.error == 0.0 and zero.relative_error == 0.0


def test_factorize_means_does_not_modify_its_input():
    M = ms.class_means(60, 8, seed=2)
    before = M.copy()
    ms.factorize(means=M, order=4, schedule="greedy")
    ms.factorize(means=M, order=4, schedule="staged", options=SMALL_STAGES)
    np.testing.assert_array_equal(M, before)


# ------------------------------------------------------------------ stores


def test_factorize_store_with_one_class_is_refused(tmp_path):
    store = ms.Store.create(tmp_path / "one")
    with pytest.raises(ValueError, match="0 class"):
        ms.factorize(store, order=2)
    store.add_means(np.ones((1, 4)), ["a"])
    with pytest.raises(ValueError, match="1 class"):
        ms.factorize(store, order=2)
    with pytest.raises(ValueError, match="1 class"):
        ms.factorize(str(tmp_path / "one"), order=2)


def test_factorize_store_equals_factorize_its_means(tmp_path):
    M = ms.class_means(40, 6, seed=3)
    store = ms.Store.create(tmp_path / "project")
    store.add_means(M, [f"k{i:02d}" for i in range(40)])
    f = ms.factorize(store, order=3, core_size=5)
    g = ms.factorize(means=store.factor(), order=3, core_size=5)
    _same_levels(f, g)
    assert f.factored and f.metadata["input"] == "means"
    np.testing.assert_array_equal(f.labels, store.labels)
    assert g.labels is None
    # by path, and with labels given explicitly
    h = ms.factorize(str(tmp_path / "project"), order=3, core_size=5)
    _same_levels(h, f)
    np.testing.assert_array_equal(h.labels, store.labels)
    own = ms.factorize(store, order=3, core_size=5, labels=range(40))
    np.testing.assert_array_equal(own.labels, np.arange(40))
    _assert_exact(f, store.factor())
    # the result inserts a new class from its mean
    mu = ms.class_means(41, 6, seed=3)[40]
    grown = f.insert(mean=mu, label="new")
    _assert_exact(grown, np.vstack([store.factor(), mu]))
    assert grown.labels[-1] == "new"


def test_factorize_centred_store_factors_the_centred_covariance(tmp_path):
    M = ms.class_means(40, 6, seed=7)
    store = ms.Store.create(tmp_path / "centred", center=True)
    store.add_means(M, list(range(40)), counts=np.arange(1, 41))
    f = ms.factorize(store, order=3, core_size=5)
    C = store.matrix()
    _check_valid(f, C)
    assert f.norm == pytest.approx(np.linalg.norm(C), rel=1e-10)


# -------------------------------------------------------- incremental stream


def test_factorize_incremental_repair_every_has_an_effect():
    C = ms.hierarchical_covariance(100, seed=0)
    never = ms.factorize_incremental(C, order=3, repair_every=0, refresh_drift=None)
    default = ms.factorize_incremental(C, order=3, refresh_drift=None)
    assert never.metadata["repairs"] == 0
    assert default.metadata["repairs"] >= 3  # 50 insertions, a repair every 10
    assert not np.array_equal(never.tuples, default.tuples)
    assert never.error != default.error
    for f in (never, default):
        _check_valid(f, C)
    with pytest.raises(ValueError, match="repair_every"):
        ms.factorize_incremental(C, order=3, repair_every=-1)


def test_repair_interval_grows_with_the_shallow_snapshot():
    M = ms.class_means(280, 8, seed=3)
    f = ms.factorize(means=M[:200], order=4)
    shallow = f.insertion_state.snapshots[0].size
    assert f.repair_interval() == 10  # small result: options.repair_every
    assert f.repair_interval({"repair_budget": 2}) == max(10, -(-shallow // 2)) > 10
    assert f.repair_interval({"repair_every": 0}) == 0
    options = {"repair_budget": 2}
    g, since, first = f, 0, None
    for i in range(200, 280):
        expected = since + 1 >= g.repair_interval(options)
        g = g.insert(mean=M[i], options=options)
        assert g.insertion_report.repaired == expected
        since = 0 if expected else since + 1
        if expected and first is None:
            first = i - 200 + 1
    assert first is not None and first > 10  # later than repair_every alone would repair
