"""Data safety of the class store (issue 8): one writer at a time, recovery by
any opener, complete reads, corruption refused in one line, batched updates."""

import json
import os
import subprocess
import sys
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

import mmf_stream as ms
from mmf_stream.store import class_store as _class_store

ROOT = Path(__file__).resolve().parents[2]


def _env(**extra):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.update({key: str(value) for key, value in extra.items()})
    return env


# integer-valued features: sums are exact whatever order batches are added in
_APPENDER = r"""
import sys, time
from pathlib import Path
import numpy as np
import mmf_stream as ms
path, seed, steps, go = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4])
store = ms.Store.open(path)
print("ready", flush=True)
while not go.exists():
    time.sleep(0.01)
for features, labels in ms_batches(seed, steps):
    store.add_classes(features, labels)
"""

_BATCHES = r"""
import numpy as np
def ms_batches(seed, steps):
    rng = np.random.default_rng(seed)
    for step in range(steps):
        labels = rng.integers(0, 40, size=30) + 1000 * seed   # classes of this writer
        labels[:5] = rng.integers(0, 20, size=5)             # classes both writers update
        yield rng.integers(-4, 5, size=(30, 6)).astype(np.float64), labels
"""


def _batches(seed, steps):
    scope = {}
    exec(_BATCHES, scope)
    return scope["ms_batches"](seed, steps)


def _by_label(store):
    labels = store.labels.tolist()
    return {label: (int(c), s.tolist()) for label, c, s in zip(labels, store.counts, store.sums)}


def test_two_writer_processes_serialise_to_the_sequential_result(tmp_path):
    path, go = tmp_path / "s.zarr", tmp_path / "go"
    ms.Store.create(path).add_classes(np.ones((20, 6)), np.arange(20))
    procs = [
        subprocess.Popen([sys.executable, "-c", _BATCHES + _APPENDER, str(path), str(seed), "15", str(go)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
        for seed in (1, 2)
    ]
    for proc in procs:
        assert proc.stdout.readline().strip() == "ready"
    go.touch()
    for proc in procs:
        assert proc.wait(timeout=120) == 0, proc.stderr.read()
    sequential = ms.Store.create(tmp_path / "seq.zarr")
    sequential.add_classes(np.ones((20, 6)), np.arange(20))
    for seed in (1, 2):
        for features, labels in _batches(seed, 15):
            sequential.add_classes(features, labels)
    store = ms.Store.open(path, mode="r")
    assert store.size == sequential.size and store.n_instances == sequential.n_instances
    assert _by_label(store) == _by_label(sequential)
    means = store.means
    np.testing.assert_allclose(np.asarray(store.covariance), means @ means.T, atol=1e-10)


_PAUSED = r"""
import sys
import numpy as np
import mmf_stream as ms
store = ms.Store.open(sys.argv[1])
store.add_classes(np.full((4, 6), 2.0), [0, 1, 50, 51])
"""


def _paused_writer(path, point, seconds):
    return subprocess.Popen(
        [sys.executable, "-c", _PAUSED, str(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=_env(MMF_STREAM_PAUSE_AT=point, MMF_STREAM_PAUSE_SECONDS=seconds),
    )


def _wait_for(condition, timeout=60):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_open_during_a_live_write_keeps_its_journal_and_waits_for_it(tmp_path):
    path = tmp_path / "s.zarr"
    ms.Store.create(path).add_classes(np.ones((20, 6)), np.arange(20))
    proc = _paused_writer(path, "journal-written", 3)
    _wait_for(lambda: list((path / "journal").glob("2.npz")))
    ms.Store.open(path, mode="r+", lock_timeout=0.1)  # must not take the writer's journal as an orphan
    assert (path / "journal" / "2.npz").exists()
    with pytest.raises(ValueError, match=r"locked by another writer \(pid \d+ on .* since .*\)"):
        ms.Store.open(path, mode="r+", lock_timeout=0.1).add_means(np.ones(6), [99])
    assert proc.wait(timeout=60) == 0, proc.stderr.read()
    store = ms.Store.open(path, mode="r")
    assert store.size == 22 and store.n_instances == 24
    means = store.means
    np.testing.assert_allclose(np.asarray(store.covariance), means @ means.T, atol=1e-12)


def test_reader_waits_for_a_write_in_progress(tmp_path):
    path = tmp_path / "s.zarr"
    ms.Store.create(path).add_classes(np.ones((20, 6)), np.arange(20))
    proc = _paused_writer(path, "journal-named", 2)
    _wait_for(lambda: json.loads((path / "zarr.json").read_text())["attributes"]["mmf_stream"]["pending"])
    with pytest.raises(ValueError, match="locked by another writer"):
        ms.Store.open(path, mode="r", lock_timeout=0.1)
    store = ms.Store.open(path, mode="r", lock_timeout=60)  # waits, then reads the committed state
    assert store.size == 22 and store.n_instances == 24
    assert proc.wait(timeout=60) == 0


def _crashing_writer(path, point, script=_PAUSED):
    proc = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True,
                          env=_env(MMF_STREAM_CRASH_AT=point), timeout=120)
    assert proc.returncode == 17, proc.stderr


@pytest.mark.parametrize("point", ["journal-named", "array-created-labels", "array-created-means"])
def test_crash_during_the_first_append_recovers(tmp_path, point):
    path = tmp_path / "s.zarr"
    ms.Store.create(path)
    _crashing_writer(path, point)
    store = ms.Store.open(path)
    assert store.labels.tolist() == [0, 1, 50, 51] and store.n_instances == 4
    np.testing.assert_allclose(np.asarray(store.covariance), np.full((4, 4), 24.0))


def test_reader_completes_a_dead_writers_commit(tmp_path):
    path = tmp_path / "s.zarr"
    ms.Store.create(path).add_classes(np.ones((20, 6)), np.arange(20))
    _crashing_writer(path, "mid-apply")
    store = ms.Store.open(path, mode="r")  # no mode='r+' advice: it just works
    assert store.size == 22 and store.n_instances == 24
    means = store.means
    np.testing.assert_allclose(np.asarray(store.covariance), means @ means.T, atol=1e-12)
    assert not list((path / "journal").iterdir())


def test_unrecoverable_reader_gets_one_line_without_python_advice(tmp_path, monkeypatch):
    path = tmp_path / "s.zarr"
    ms.Store.create(path).add_classes(np.ones((20, 6)), np.arange(20))
    _crashing_writer(path, "journal-named")

    def read_only(*args, **kwargs):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(_class_store, "_open_lock_file", read_only)
    with pytest.raises(ValueError) as info:
        ms.Store.open(path, mode="r")
    message = str(info.value)
    assert "\n" not in message and "mode=" not in message and "unfinished write" in message


def _small_store(path, classes=70, dim=5):
    rng = np.random.default_rng(0)
    store = ms.Store.create(path, dense_covariance=True)  # the covariance's chunks are checked too
    store.add_classes(rng.normal(size=(3 * classes, dim)), np.arange(3 * classes) % classes)
    return store


@pytest.mark.parametrize("array, chunk", [("covariance", "c/1/0"), ("labels", "c/0"), ("means", "c/0/0")])
def test_missing_chunk_is_refused(tmp_path, array, chunk):
    path = tmp_path / "s.zarr"
    _small_store(path)
    (path / array / Path(chunk)).unlink()
    with pytest.raises(ValueError, match=rf"{array} is incomplete: chunk {chunk} is missing"):
        ms.Store.open(path, mode="r")
    with pytest.raises(ValueError, match="is incomplete"):
        ms.read_matrix(path)


def test_zero_chunks_are_stored(tmp_path):
    path = tmp_path / "s.zarr"
    store = ms.Store.create(path)
    store.add_means(np.zeros((40, 3)), np.arange(40))  # an all-zero covariance
    ms.Store.open(path, mode="r")  # complete, although every value equals the fill value


def test_corruption_is_one_line_and_leaves_the_store_untouched(tmp_path):
    path = tmp_path / "s.zarr"
    _small_store(path)
    chunk = path / "sums" / "c" / "0" / "0"
    chunk.write_bytes(chunk.read_bytes()[:20])
    before = {p: p.read_bytes() for p in path.rglob("*") if p.is_file()}
    with pytest.raises(ValueError, match=r"s\.zarr is corrupt: cannot read sums"):
        ms.Store.open(path).add_classes(np.ones((2, 5)), [3, 4])
    after = {p: p.read_bytes() for p in path.rglob("*") if p.is_file() and p.name != "writer.lock"}
    assert after == {p: b for p, b in before.items() if p.name != "writer.lock"}


def _edit_meta(path, **changes):
    meta_file = path / "zarr.json"
    meta = json.loads(meta_file.read_text())
    meta["attributes"]["mmf_stream"].update(changes)
    meta_file.write_text(json.dumps(meta))


def test_structure_is_checked_on_open(tmp_path):
    import shutil

    path = tmp_path / "s.zarr"
    _small_store(path)
    _edit_meta(path, size=500)
    with pytest.raises(ValueError, match=r"is corrupt: size 500 is larger than capacity 70"):
        ms.Store.open(path)
    _edit_meta(path, size=70, generation="x")
    with pytest.raises(ValueError, match="is corrupt: generation"):
        ms.Store.open(path)
    _edit_meta(path, generation=1)
    ms.Store.open(path)
    shutil.rmtree(path / "counts")
    with pytest.raises(ValueError, match="is corrupt: array 'counts' is missing"):
        ms.Store.open(path)


def test_create_overwrite_replaces_only_a_store(tmp_path):
    plain = tmp_path / "mine"
    plain.mkdir()
    (plain / "thesis.tex").write_text("precious")
    with pytest.raises(ValueError, match="refusing to replace it"):
        ms.Store.create(plain, overwrite=True)
    assert (plain / "thesis.tex").read_text() == "precious"
    _small_store(tmp_path / "s.zarr")
    assert ms.Store.create(tmp_path / "s.zarr", overwrite=True).size == 0


def test_updates_write_each_covariance_chunk_once(tmp_path, monkeypatch):
    """Updating k classes costs one read-modify-write per touched chunk, not per class."""
    path = tmp_path / "s.zarr"
    rng = np.random.default_rng(3)
    store = ms.Store.create(path)
    store.add_classes(rng.normal(size=(600, 4)), np.arange(600) % 300)
    writes = []
    original = zarr.storage.LocalStore.set

    async def counting(self, key, value):
        writes.append(key)
        return await original(self, key, value)

    monkeypatch.setattr(zarr.storage.LocalStore, "set", counting)
    labels = np.concatenate([np.arange(0, 300, 2), np.arange(300, 450)])  # 150 updated, 150 new
    store.add_classes(rng.normal(size=(300, 4)), labels)
    covariance_chunks = [key for key in writes if key.startswith("covariance/c/")]
    assert len(covariance_chunks) <= 450 // 32 + 1  # one band of 32 rows = one chunk here
    assert len(covariance_chunks) == len(set(covariance_chunks))
    means = store.means
    np.testing.assert_allclose(np.asarray(ms.Store.open(path, mode="r").covariance), means @ means.T, atol=1e-12)


@pytest.mark.parametrize("center, normalize", [(False, False), (True, False), (False, True), (True, True)])
def test_matvec_diagonal_and_columns_from_the_means(tmp_path, center, normalize):
    path = tmp_path / "s.zarr"
    rng = np.random.default_rng(4)
    store = ms.Store.create(path, center=center, normalize=normalize)
    store.add_classes(rng.normal(size=(90, 7)) + 1, np.arange(90) % 30)
    dense = store.matrix()
    r = rng.normal(size=20)
    np.testing.assert_allclose(store.matvec(r, size=20), dense[:20, :20] @ r, atol=1e-10)
    np.testing.assert_allclose(store.matvec(np.ones(30)), dense @ np.ones(30), atol=1e-10)
    np.testing.assert_allclose(store.diagonal(), np.diag(dense), atol=1e-12)
    np.testing.assert_allclose(store.diagonal(size=5), np.diag(dense)[:5], atol=1e-12)
    np.testing.assert_allclose(store.columns([3, 7]), dense[:, [3, 7]], atol=1e-12)
    np.testing.assert_allclose(store.columns([29], rows=[1, 2, 29]), dense[[1, 2, 29]][:, [29]], atol=1e-12)
    plain = store.matrix(center=False, normalize=False)
    np.testing.assert_allclose(store.matvec(r, size=20, center=False, normalize=False), plain[:20, :20] @ r,
                               atol=1e-10)
    with pytest.raises(ValueError, match="has 30 classes"):
        store.matvec(np.ones(31))


@pytest.mark.parametrize("dense", [True, False])
def test_a_reader_never_mixes_generations(tmp_path, dense):
    path = tmp_path / "s.zarr"
    writer = ms.Store.create(path, dense_covariance=dense)
    writer.add_means(np.eye(4), [0, 1, 2, 3])
    reader = ms.Store.open(path, mode="r")
    writer.add_means(np.ones(4), [4])  # an append: rows past the reader's size
    np.testing.assert_array_equal(reader.means, np.eye(4))
    assert reader.size == 4 and np.asarray(reader.covariance).shape == (4, 4)
    writer.add_means(np.full(4, 2.0), [1])  # rewrites class 1 in place
    if dense:  # the stored covariance would mix generations: refused
        with pytest.raises(ValueError, match="changed while it was read"):
            np.asarray(reader.covariance)
    else:  # computed from the means this reader holds: its own generation, whole
        np.testing.assert_array_equal(np.asarray(reader.covariance), np.eye(4))
    fresh = ms.Store.open(path, mode="r")
    writer.add_means(np.full(4, 3.0), [2])
    with pytest.raises(ValueError, match="changed while it was read"):
        fresh.means  # nothing read yet: reading now would mix generations
    reader.refresh()
    assert reader.size == 5 and reader.means[1].tolist() == [1.0, 1.5, 1.0, 1.0]
    np.testing.assert_allclose(reader.matrix(), reader.means @ reader.means.T)


def test_truncated_covariance_chunk_is_refused_on_open(tmp_path):
    path = tmp_path / "s.zarr"
    _small_store(path)
    chunk = path / "covariance" / "c" / "1" / "0"
    chunk.write_bytes(chunk.read_bytes()[:100])
    with pytest.raises(ValueError, match=r"is corrupt: covariance chunk c/1/0 has 100 bytes, expected 1048576"):
        ms.Store.open(path, mode="r")


def test_waiting_writer_never_locks_a_replaced_store(tmp_path):
    import threading

    from mmf_stream.store.class_store import StoreLockedError, _WriterLock

    path = tmp_path / "s.zarr"
    ms.Store.create(path).add_means(np.eye(3), [1, 2, 3])
    waiting = ms.Store.open(path, lock_timeout=1.0)
    old = _WriterLock(path)
    old.acquire(5.0)
    outcome = {}

    def append():
        try:
            waiting.add_means(np.ones(3), 99)
            outcome["wrote"] = True
        except StoreLockedError:
            outcome["wrote"] = False

    thread = threading.Thread(target=append)
    thread.start()
    time.sleep(0.3)  # the appender now waits on the old lock file
    shutil.rmtree(path)  # the store is replaced while it waits
    ms.Store.create(path).add_means(np.eye(3), [7, 8, 9])
    new = _WriterLock(path)
    assert new.acquire(0.0, wait=False)
    old.release()
    thread.join(5.0)
    new.release()
    assert outcome == {"wrote": False}  # it did not write while the new store's lock was held
    assert ms.Store.open(path).labels.tolist() == [7, 8, 9]


def test_reader_accepts_arrays_a_writer_has_already_grown(tmp_path):
    path = tmp_path / "s.zarr"
    store = ms.Store.create(path)
    store.add_means(np.eye(3), [1, 2, 3])
    group = zarr.open_group(str(path), mode="r+")
    capacity = group.attrs["mmf_stream"]["capacity"]
    for name in ("labels", "counts"):
        group[name].resize((2 * capacity,))  # grown, capacity not yet committed
    assert ms.Store.open(path, mode="r").labels.tolist() == [1, 2, 3]
    group["counts"].resize((capacity // 2,))
    with pytest.raises(ValueError, match="array 'counts' has shape"):
        ms.Store.open(path, mode="r")


def test_stores_and_results_from_before_every_chunk_was_written_still_open(tmp_path):
    path = tmp_path / "s.zarr"
    ms.Store.create(path, dense_covariance=True).add_means(np.eye(3), [1, 2, 3])
    group = zarr.open_group(str(path), mode="r+")
    meta = dict(group.attrs["mmf_stream"])
    del meta["every_chunk_written"]
    group.attrs["mmf_stream"] = meta
    for chunk in (path / "covariance" / "c").rglob("*"):
        if chunk.is_file():
            chunk.unlink()  # as an older version left an all-zero chunk unwritten
    np.testing.assert_array_equal(np.asarray(ms.Store.open(path, mode="r").covariance), np.zeros((3, 3)))
    result = tmp_path / "r.zarr"
    ms.factorize(np.diag(np.arange(1.0, 9.0)), order=3).save(result)
    group = zarr.open_group(str(result), mode="r+")
    meta = dict(group.attrs["mmf_stream"])
    del meta["every_chunk_written"]
    group.attrs["mmf_stream"] = meta
    for chunk in (result / "level_errors" / "c").rglob("*"):
        chunk.unlink()
    assert np.all(ms.load(result).level_errors == 0)
