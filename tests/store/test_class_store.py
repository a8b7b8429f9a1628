"""The class store: appends equal a recompute, updates, crash consistency, bad input."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import zarr

import mmf_stream as ms


def _recompute(features, labels, store):
    """Class covariance from scratch, in the store's slot order."""
    full = ms.class_covariance(features, labels)
    position = {label: i for i, label in enumerate(full.labels.tolist())}
    order = [position[label] for label in store.labels.tolist()]
    return full.matrix[np.ix_(order, order)], full.means[order], full.counts[order]


def test_appends_and_updates_equal_a_recompute(tmp_path):
    rng = np.random.default_rng(0)
    features = rng.normal(size=(400, 12))
    labels = rng.integers(0, 30, size=400)
    store = ms.Store.create(tmp_path / "s.zarr")
    for start in range(0, 400, 57):  # batches mixing new and known classes
        report = store.add_classes(features[start : start + 57], labels[start : start + 57])
        assert set(report["added"]) | set(report["updated"]) == set(labels[start : start + 57].tolist())
    matrix, means, counts = _recompute(features, labels, store)
    np.testing.assert_allclose(np.asarray(store.covariance), matrix, atol=1e-12)
    np.testing.assert_allclose(store.means, means, atol=1e-13)
    np.testing.assert_array_equal(store.counts, counts)
    assert store.n_instances == 400 and store.size == 30 and store.dim == 12
    reopened = ms.Store.open(tmp_path / "s.zarr", mode="r")
    np.testing.assert_allclose(np.asarray(reopened.covariance), matrix, atol=1e-12)
    np.testing.assert_array_equal(reopened.labels, store.labels)


def test_string_labels_add_means_and_views(tmp_path):
    store = ms.Store.create(tmp_path / "s.zarr", center=True, normalize=True)
    rng = np.random.default_rng(1)
    means = rng.normal(size=(6, 4))
    names = ["bread", "bun", "fries", "ketchup", "salad", "soda"]
    store.add_means(means[:4], names[:4], counts=[1, 2, 3, 4])
    store.add_means(means[4], "salad", counts=5)
    store.add_means(means[5:], names[5:], counts=6)
    assert store.labels.tolist() == names
    M = means
    np.testing.assert_allclose(np.asarray(store.covariance), M @ M.T, atol=1e-12)
    view = store.covariance
    np.testing.assert_allclose(view[1:5, 0:3], (M @ M.T)[1:5, 0:3], atol=1e-12)
    np.testing.assert_allclose(view[4], (M @ M.T)[4], atol=1e-12)
    np.testing.assert_allclose(view[:, 2], (M @ M.T)[:, 2], atol=1e-12)
    assert np.isclose(view[0, 5], (M @ M.T)[0, 5])
    counts = np.array([1, 2, 3, 4, 5, 6])
    expected = ms.store.class_covariance.covariance_from_means(M, counts, center=True, normalize=True)
    np.testing.assert_allclose(store.matrix(), expected, atol=1e-12)
    np.testing.assert_allclose(store.matrix(center=False, normalize=False), M @ M.T, atol=1e-12)


def test_factorize_reads_a_store_with_labels(tmp_path):
    from mmf_stream.cli import main

    rng = np.random.default_rng(2)
    features = rng.normal(size=(200, 6))
    labels = rng.choice(list("abcdefghij"), size=200)
    store = ms.Store.create(tmp_path / "s.zarr")
    store.add_classes(features, labels)
    assert main(["factorize", str(tmp_path / "s.zarr"), "-k", "3", "-o", str(tmp_path / "r.zarr"), "-q"]) == 0
    result = ms.load(tmp_path / "r.zarr")
    np.testing.assert_array_equal(result.labels, store.labels)
    expected = ms.factorize(np.asarray(store.covariance), order=3)
    assert np.isclose(result.error, expected.error)


def test_bad_input_leaves_store_unchanged(tmp_path):
    store = ms.Store.create(tmp_path / "s.zarr")
    store.add_classes(np.ones((4, 3)), [1, 1, 2, 2])
    before = (np.asarray(store.covariance).copy(), store.labels.copy(), store.n_instances)
    cases = [
        (lambda: store.add_classes(np.ones((4, 5)), [3, 3, 4, 4]), ValueError, "dimension 5, the store holds dimension 3"),
        (lambda: store.add_classes(np.ones((4, 3)), ["a", "b", "c", "d"]), TypeError, "labels are ints"),
        (lambda: store.add_classes(np.full((2, 3), np.inf), [7, 8]), ValueError, "non-finite"),
        (lambda: store.add_classes(np.ones((3, 3)), [7, 8]), ValueError, "got 2 labels for 3 feature rows"),
        (lambda: store.add_means(np.ones((2, 3)), [7, 8], counts=0), ValueError, "counts must be at least 1"),
    ]
    for call, error, message in cases:
        with pytest.raises(error, match=message):
            call()
    reopened = ms.Store.open(tmp_path / "s.zarr")
    np.testing.assert_array_equal(np.asarray(reopened.covariance), before[0])
    np.testing.assert_array_equal(reopened.labels, before[1])
    assert reopened.n_instances == before[2]


def test_open_errors(tmp_path):
    with pytest.raises(ValueError, match="no such file"):
        ms.Store.open(tmp_path / "missing")
    zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    with pytest.raises(ValueError, match="not an mmf_stream class store"):
        ms.Store.open(tmp_path / "g.zarr")
    ms.Store.create(tmp_path / "s.zarr")
    with pytest.raises(ValueError, match="already exists"):
        ms.Store.create(tmp_path / "s.zarr")
    readonly = ms.Store.open(tmp_path / "s.zarr", mode="r")
    with pytest.raises(ValueError, match="read-only"):
        readonly.add_means(np.ones(3), [1])


_WRITER = r"""
import sys
import numpy as np
import mmf_stream as ms
store = ms.Store.open(sys.argv[1])
rng = np.random.default_rng(int(sys.argv[2]))
for step in range(int(sys.argv[3])):
    labels = rng.integers(0, 60, size=40)
    store.add_classes(rng.normal(size=(40, 8)), labels)
    print(step, flush=True)
"""


def _writer(path, seed, steps, crash_at=None):
    env = {**os.environ}
    if crash_at:
        env["MMF_STREAM_CRASH_AT"] = crash_at
    return subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(path), str(seed), str(steps)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )


def _assert_consistent(path):
    store = ms.Store.open(path)
    means = store.means
    np.testing.assert_allclose(np.asarray(store.covariance), means @ means.T, atol=1e-10)
    np.testing.assert_allclose(store.sums / store.counts[:, None], means, atol=1e-12)
    assert store.counts.sum() == store.n_instances
    assert len(set(store.labels.tolist())) == store.size
    assert not list((path / "journal").iterdir())
    return store


@pytest.mark.parametrize("point", ["journal-written", "journal-named", "mid-apply"])
def test_writer_dying_at_each_point_leaves_a_consistent_store(tmp_path, point):
    path = tmp_path / "s.zarr"
    store = ms.Store.create(path)
    store.add_classes(np.random.default_rng(9).normal(size=(100, 8)), np.arange(100) % 50)
    before = store.n_instances
    proc = _writer(path, 1, 3, crash_at=point)
    proc.wait(timeout=120)
    assert proc.returncode == 17  # it died at the crash point
    recovered = _assert_consistent(path)
    if point == "journal-written":  # not yet committed: the old state
        assert recovered.n_instances == before
    else:  # committed in the journal: replayed on open
        assert recovered.n_instances == before + 40


def test_killed_writer_then_reopen(tmp_path):
    path = tmp_path / "s.zarr"
    ms.Store.create(path).add_classes(np.ones((2, 8)), [0, 1])
    for seed, delay in ((3, 0.8), (4, 1.5)):
        proc = _writer(path, seed, 10_000)
        proc.stdout.readline()  # it is writing
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        store = _assert_consistent(path)
        assert store.n_instances > 2


# ---------------------------------------------------- means as the source of truth


def _disk_bytes(path):
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def test_the_store_keeps_means_and_derives_the_covariance(tmp_path):
    """No m x m array on disk; the covariance view is M M' (exactly symmetric, any block equals
    that block of the whole), as NumPy and as a lazy Dask array; factorizing it is unchanged."""
    rng = np.random.default_rng(3)
    means = rng.normal(size=(300, 16))
    store = ms.Store.create(tmp_path / "s.zarr")
    store.add_means(means, [f"c{i:03d}" for i in range(300)])
    assert not store.dense_covariance and not (tmp_path / "s.zarr" / "covariance").exists()
    dense = ms.Store.create(tmp_path / "d.zarr", dense_covariance=True)
    dense.add_means(means, [f"c{i:03d}" for i in range(300)])
    assert dense.dense_covariance and (tmp_path / "d.zarr" / "covariance").is_dir()
    assert _disk_bytes(tmp_path / "s.zarr") < _disk_bytes(tmp_path / "d.zarr") / 2
    reopened = ms.Store.open(tmp_path / "s.zarr", mode="r")
    view = reopened.covariance
    full = np.asarray(view)
    np.testing.assert_allclose(full, means @ means.T, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(full, np.asarray(dense.covariance), rtol=1e-12, atol=1e-12)
    assert np.array_equal(full, full.T)
    assert np.array_equal(view[17:90, 5:260], full[17:90, 5:260]) and view[4, 250] == full[4, 250]
    np.testing.assert_array_equal(view[7], full[7])
    lazy = view.to_dask(chunks=64)
    assert lazy.shape == (300, 300) and lazy.chunks[0][0] == 64
    assert np.array_equal(lazy.compute(), full)
    np.testing.assert_array_equal(dense.covariance.to_dask(chunks=100).compute(), np.asarray(dense.covariance))
    np.testing.assert_allclose(reopened.matrix(normalize=True), dense.matrix(normalize=True), rtol=1e-9, atol=1e-14)
    a, b = ms.factorize(reopened, order=4), ms.factorize(means=means, order=4)
    np.testing.assert_array_equal(a.tuples, b.tuples)
    assert a.error == pytest.approx(b.error, rel=1e-12)
    with pytest.raises(TypeError, match="integers and slices"):
        view[[1, 2]]


def test_dense_covariance_follows_updates_and_can_be_dropped(tmp_path):
    path = tmp_path / "d.zarr"
    store = ms.Store.create(path, dense_covariance=True)
    rng = np.random.default_rng(4)
    store.add_means(rng.normal(size=(40, 6)), np.arange(40))
    store.add_means(rng.normal(size=(3, 6)), [2, 41, 39])  # two updates, one append
    np.testing.assert_allclose(np.asarray(store.covariance), store.means @ store.means.T, atol=1e-12)
    before = np.asarray(store.covariance)
    store.drop_dense_covariance()
    assert not (path / "covariance").exists()
    reopened = ms.Store.open(path)
    assert not reopened.dense_covariance and type(reopened.covariance).__name__ == "GramCovariance"
    np.testing.assert_allclose(np.asarray(reopened.covariance), before, rtol=1e-12, atol=1e-12)
    reopened.add_means(np.ones(6), [99])  # appends no longer write a covariance
    assert not (path / "covariance").exists() and ms.Store.open(path, mode="r").size == 42
    with pytest.raises(ValueError, match="read-only"):
        ms.Store.open(path, mode="r").drop_dense_covariance()


def test_format_version_1_stores_open_grow_and_drop_their_covariance(tmp_path):
    """A store written before the means became the source of truth (format 1: always a covariance)."""
    path = tmp_path / "old.zarr"
    rng = np.random.default_rng(5)
    ms.Store.create(path, dense_covariance=True).add_means(rng.normal(size=(30, 4)), np.arange(30))
    group = zarr.open_group(str(path), mode="r+")
    meta = dict(group.attrs["mmf_stream"])
    del meta["dense_covariance"]
    meta["format_version"] = 1
    group.attrs["mmf_stream"] = meta
    store = ms.Store.open(path)
    assert store.dense_covariance and store.size == 30
    store.add_means(rng.normal(size=(2, 4)), [7, 30])
    np.testing.assert_allclose(np.asarray(ms.Store.open(path, mode="r").covariance), store.means @ store.means.T,
                               atol=1e-12)
    ms.factorize(ms.Store.open(path, mode="r"), order=3)
    store.drop_dense_covariance()
    meta = zarr.open_group(str(path), mode="r").attrs["mmf_stream"]
    assert meta["format_version"] == 2 and meta["dense_covariance"] is False
    assert ms.Store.open(path, mode="r").size == 31


def test_read_metadata_reads_one_file(tmp_path, monkeypatch):
    from mmf_stream.store.class_store import read_metadata

    path = tmp_path / "s.zarr"
    ms.Store.create(path).add_means(np.ones((3, 5)), ["a", "b", "c"])
    monkeypatch.setattr(zarr, "open_group", lambda *a, **k: pytest.fail("opened the group"))
    meta = read_metadata(path)
    assert (meta["dim"], meta["size"], meta["center"]) == (5, 3, False)
    (tmp_path / "plain").mkdir()
    with pytest.raises(ValueError, match="is not a class store"):
        read_metadata(tmp_path / "plain")


# ---------------------------------------------------------------- removal


@pytest.mark.parametrize("dense", [False, True])
def test_remove_classes_fills_holes_from_the_end(tmp_path, dense):
    rng = np.random.default_rng(11)
    means = rng.normal(size=(12, 4))
    labels = [f"k{i:02d}" for i in range(12)]
    store = ms.Store.create(tmp_path / "s.zarr", dense_covariance=dense)
    store.add_means(means, labels, counts=np.arange(1, 13))
    report = store.remove_classes(["k03", "k10", "k00"])
    assert report["removed"] == ["k03", "k10", "k00"] and report["moved"] == {"k09": 0, "k11": 3}
    reopened = ms.Store.open(tmp_path / "s.zarr", mode="r")
    expected = [labels[i] for i in (9, 1, 2, 11, 4, 5, 6, 7, 8)]
    assert reopened.labels.tolist() == expected and reopened.size == 9
    keep = [int(x[1:]) for x in expected]
    np.testing.assert_allclose(reopened.means, means[keep], rtol=1e-15)
    assert reopened.counts.tolist() == [k + 1 for k in keep]
    assert reopened.n_instances == sum(k + 1 for k in keep)
    np.testing.assert_allclose(np.asarray(reopened.covariance), means[keep] @ means[keep].T, atol=1e-12)
    # remove, then append in one commit: an updated class moves to the end
    store.replace_classes(remove=["k05"], means=[np.ones(4), np.zeros(4)], labels=["k05", "new"], counts=[3, 2])
    again = ms.Store.open(tmp_path / "s.zarr", mode="r")
    assert again.labels.tolist()[-2:] == ["k05", "new"] and again.labels.tolist()[5] == "k08"
    assert again.counts.tolist()[-2:] == [3, 2] and again.means[-2].tolist() == [1.0] * 4
    np.testing.assert_allclose(np.asarray(again.covariance), again.means @ again.means.T, atol=1e-12)
    store.remove_classes("new")  # the last slot: nothing moves
    assert ms.Store.open(tmp_path / "s.zarr", mode="r").labels.tolist()[-1] == "k05"


def test_bad_removals_leave_the_store_untouched(tmp_path):
    store = ms.Store.create(tmp_path / "s.zarr")
    store.add_means(np.eye(4), [1, 2, 3, 4])
    generation = store.generation
    for labels, error, match in [([9], ValueError, "has no class 9"), ([2, 2], ValueError, "given twice"),
                                 ([1.5], TypeError, "integers or strings")]:
        with pytest.raises(error, match=match):
            store.remove_classes(labels)
    with pytest.raises(ValueError, match="already in"):
        store.replace_classes(remove=[1], means=np.ones((1, 4)), labels=[2])
    reopened = ms.Store.open(tmp_path / "s.zarr", mode="r")
    assert reopened.generation == generation and reopened.labels.tolist() == [1, 2, 3, 4]


def test_a_writer_killed_mid_removal_leaves_a_consistent_store(tmp_path):
    path = tmp_path / "s.zarr"
    means = np.random.default_rng(12).normal(size=(40, 3))
    ms.Store.create(path).add_means(means, np.arange(40))
    script = (
        "import sys, mmf_stream as ms\n"
        "ms.Store.open(sys.argv[1]).remove_classes([0, 5, 39, 17])\n"
    )
    env = {**os.environ, "MMF_STREAM_CRASH_AT": "mid-apply"}
    done = subprocess.run([sys.executable, "-c", script, str(path)], env=env, capture_output=True, timeout=120)
    assert done.returncode == 17, done.stderr
    store = ms.Store.open(path, mode="r")  # completes the committed removal
    assert store.size == 36 and sorted(store.labels.tolist()) == sorted(set(range(40)) - {0, 5, 17, 39})
    np.testing.assert_allclose(store.means, means[store.labels], rtol=1e-15)
