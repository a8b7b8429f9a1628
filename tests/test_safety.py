"""Data safety of results and of the CLI (issue 8): what --overwrite may replace,
atomic saves, complete reads, the insert fingerprint, and one-line errors."""

import os
import subprocess
import sys
import warnings

import numpy as np
import pytest

import mmf_stream as ms
from mmf_stream import api as F
from mmf_stream.store.fingerprint import mismatches, of_matrix, probe_vector
from mmf_stream.cli import main

from matrix_helpers import random_symmetric


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


@pytest.fixture
def npy(tmp_path):
    path = tmp_path / "c.npy"
    np.save(path, random_symmetric(12, seed=4))
    return path


# ------------------------------------------------------------ --overwrite (1)
def test_overwrite_refuses_a_directory_mmf_stream_did_not_write(tmp_path, npy, capsys):
    thesis = tmp_path / "d" / "thesis.tex"
    thesis.parent.mkdir()
    thesis.write_text("x")
    assert main(["factorize", str(npy), "-k", "4", "-o", str(thesis.parent), "--overwrite", "-q"]) == 2
    assert "not an mmf_stream result or store" in _error_line(capsys)
    assert thesis.read_text() == "x"
    features, labels = tmp_path / "f.npy", tmp_path / "l.txt"
    np.save(features, np.ones((3, 2)))
    labels.write_text("a\nb\na\n")
    assert main(["covariance", str(features), str(labels), "-o", str(thesis.parent), "--overwrite"]) == 2
    assert "not an mmf_stream result or store" in _error_line(capsys)
    assert thesis.read_text() == "x"
    # a plain file is never replaced either
    assert main(["factorize", str(npy), "-k", "4", "-o", str(thesis), "--overwrite", "-q"]) == 2
    assert thesis.read_text() == "x"


def test_overwrite_replaces_only_the_same_kind(tmp_path, npy, capsys):
    out = tmp_path / "r.zarr"
    assert main(["factorize", str(npy), "-k", "4", "-o", str(out), "-q"]) == 0
    assert main(["factorize", str(npy), "-k", "3", "-o", str(out), "--overwrite", "-q"]) == 0
    assert ms.load(out).order == 3
    store = ms.Store.create(tmp_path / "s.zarr")
    store.add_means(np.eye(4), ["a", "b", "c", "d"])
    assert main(["factorize", str(tmp_path / "s.zarr"), "-k", "2", "-o", str(tmp_path / "s.zarr"),
                 "--overwrite", "-q"]) == 2
    assert "is a class-store, not a factorization" in _error_line(capsys)
    assert ms.Store.open(tmp_path / "s.zarr").size == 4
    with pytest.raises(ValueError, match="not an mmf_stream result"):
        (tmp_path / "plain").mkdir()
        (tmp_path / "plain" / "keep.txt").write_text("keep")
        ms.load(out).save(tmp_path / "plain", overwrite=True)
    assert (tmp_path / "plain" / "keep.txt").exists()


# -------------------------------------------------------------- atomic save (4)
def _save_in_child(path, order, env):
    code = (
        "import sys, numpy as np, mmf_stream as ms\n"
        "C = np.load(sys.argv[1]); f = ms.factorize(C, order=int(sys.argv[3]))\n"
        "f.save(sys.argv[2], overwrite=True)\n"
    )
    return subprocess.run([sys.executable, "-c", code, str(path[0]), str(path[1]), str(order)],
                          env={**os.environ, **env}, capture_output=True, text=True)


def test_kill_between_the_two_renames_loses_nothing(tmp_path, npy):
    out = tmp_path / "r.zarr"
    before = ms.factorize(np.load(npy), order=4)
    before.save(out)
    done = _save_in_child((npy, out), 3, {"MMF_STREAM_NO_EXCHANGE": "1", "MMF_STREAM_CRASH_AT": "save-between-renames"})
    assert done.returncode == 17, done.stderr
    assert not out.exists()  # the crash came between the renames...
    restored = ms.load(out)  # ...and the old result comes back
    assert restored.order == 4 and out.exists()
    np.testing.assert_array_equal(restored.rotations, before.rotations)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".r.zarr")]
    # a later save (two-rename path) completes and leaves nothing beside it
    done = _save_in_child((npy, out), 3, {"MMF_STREAM_NO_EXCHANGE": "1"})
    assert done.returncode == 0, done.stderr
    assert ms.load(out).order == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.npy", "r.zarr"]


def test_killed_save_leaves_the_old_result_and_its_staging_is_cleaned(tmp_path, npy, monkeypatch):
    out = tmp_path / "r.zarr"
    f = ms.factorize(np.load(npy), order=4)
    f.save(out)
    f.save(out, overwrite=True)  # the one-step exchange where available
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.npy", "r.zarr"]
    dead = tmp_path / ".r.zarr.tmp-999999999-abcdef01"  # a staging dir of a process that is gone
    dead.mkdir()
    f.save(out, overwrite=True)
    assert not dead.exists()


# ----------------------------------------------------------- complete reads (6)
def test_missing_chunk_of_a_result_is_refused(tmp_path, npy, capsys):
    out = tmp_path / "r.zarr"
    ms.factorize(np.load(npy), order=4).save(out)
    chunk = next((out / "rotations" / "c").rglob("*"))
    while chunk.is_dir():
        chunk = next(chunk.iterdir())
    chunk.unlink()
    with pytest.raises(ValueError, match=r"rotations is incomplete: chunk c/\S+ is missing"):
        ms.load(out)
    assert main(["info", str(out)]) == 2
    assert "incomplete" in _error_line(capsys)


def test_zero_chunks_are_written_so_zero_arrays_load(tmp_path):
    C = np.diag(np.arange(1.0, 9.0))  # diagonal: every level error is 0 (an all-zero array)
    f = ms.factorize(C, order=3)
    assert np.all(f.level_errors == 0)
    f.save(tmp_path / "r.zarr")
    np.testing.assert_array_equal(ms.load(tmp_path / "r.zarr").level_errors, f.level_errors)


def test_truncated_chunk_is_a_one_line_error(tmp_path, npy):
    out = tmp_path / "r.zarr"
    ms.factorize(np.load(npy), order=4).save(out)
    chunk = next(p for p in (out / "rotations").rglob("*") if p.is_file() and p.name != "zarr.json")
    chunk.write_bytes(chunk.read_bytes()[:7])
    with pytest.raises(ValueError, match="is corrupt"):
        ms.load(out)


# ------------------------------------------------------ insert fingerprint (5)
def test_fingerprint_travels_and_extends_exactly(tmp_path):
    C = random_symmetric(60, seed=5)
    f = ms.factorize(C[:50, :50], order=4)
    np.testing.assert_allclose(f.fingerprint.probe, C[:50, :50] @ probe_vector(50))
    g = f.insert_many(C[:, 50:])
    expected = of_matrix(C)
    np.testing.assert_allclose(g.fingerprint.diagonal, expected.diagonal)
    np.testing.assert_allclose(g.fingerprint.probe, expected.probe, rtol=1e-12, atol=1e-12)
    assert mismatches(g.fingerprint, np.diag(C).copy(), C @ probe_vector(60)).size == 0
    g.save(tmp_path / "g.zarr")
    loaded = ms.load(tmp_path / "g.zarr").fingerprint
    np.testing.assert_array_equal(loaded.probe, g.fingerprint.probe)
    changed = C.copy()
    changed[7, :] *= 1.001
    changed[:, 7] *= 1.001
    assert mismatches(loaded, np.diag(changed).copy(), changed @ probe_vector(60)).tolist() == [7]
    changed[7, 7] = C[7, 7]  # same diagonal, another row: the probe still sees it
    assert mismatches(loaded, np.diag(changed).copy(), changed @ probe_vector(60)).size > 0
    incremental = ms.factorize_incremental(C, order=4, initial_size=40)
    np.testing.assert_allclose(incremental.fingerprint.probe, expected.probe)


def _store_from(path, features, labels):
    store = ms.Store.create(path)
    store.add_classes(features, np.array(labels))
    return store


def test_insert_refuses_a_store_whose_factored_classes_changed(tmp_path, capsys):
    rng = np.random.default_rng(1)
    names = [f"k{i}" for i in range(30)]
    centres = rng.normal(size=(30, 6))
    codes = np.repeat(np.arange(30), 20)
    features = centres[codes] + 0.2 * rng.normal(size=(codes.size, 6))
    labels = [names[i] for i in codes]
    old = codes < 25
    store = _store_from(tmp_path / "s.zarr", features[old], [x for x, o in zip(labels, old) if o])
    result = tmp_path / "r.zarr"
    assert main(["factorize", str(tmp_path / "s.zarr"), "-k", "3", "-o", str(result), "-q"]) == 0
    # an unrelated store with the same labels
    other = _store_from(tmp_path / "other.zarr", rng.normal(size=(codes.size, 6)), labels)
    assert other.size == 30
    assert main(["insert", str(result), str(tmp_path / "other.zarr"), "-o", str(tmp_path / "x.zarr")]) == 2
    message = _error_line(capsys)
    assert "does not hold the classes" in message and "25 of 25 differ" in message
    # new classes and an update of 3 known ones
    update = np.isin(codes, [2, 5, 9]) & (rng.random(codes.size) < 0.5)
    store.add_classes(np.vstack([features[~old], features[update] + 1.0]),
                      np.array([x for x, o in zip(labels, old) if not o] + [labels[i] for i in np.flatnonzero(update)]))
    assert main(["insert", str(result), str(tmp_path / "s.zarr"), "-o", str(tmp_path / "x.zarr")]) == 2
    message = _error_line(capsys)
    assert "3 of 25 differ ('k2', 'k5', 'k9'" in message
    assert not (tmp_path / "x.zarr").exists()
    # a faithful store inserts (the fingerprint of plain appends matches)
    fresh = _store_from(tmp_path / "fresh.zarr", features[old], [x for x, o in zip(labels, old) if o])
    fresh.add_classes(features[~old], np.array([x for x, o in zip(labels, old) if not o]))
    assert main(["insert", str(result), str(tmp_path / "fresh.zarr"), "-o", str(tmp_path / "ok.zarr")]) == 0
    out = capsys.readouterr().out
    assert "inserted 5 class(es)" in out
    grown = ms.load(tmp_path / "ok.zarr")
    slot = {label: i for i, label in enumerate(fresh.labels.tolist())}
    order = [slot[x] for x in grown.labels.tolist()]
    C = np.asarray(fresh.covariance)[np.ix_(order, order)]
    assert np.isclose(grown.error, np.linalg.norm(C - grown.reconstruct()))


# ------------------------------------------------------- one-line errors (misc)
def test_labels_file_with_a_byte_order_mark(tmp_path):
    path = tmp_path / "l.txt"
    path.write_bytes("\ufeffk0\nk1\n".encode("utf-8"))
    assert ms.read_labels(path).tolist() == ["k0", "k1"]
    csv = tmp_path / "l.csv"
    csv.write_bytes("\ufeffk0,x\nk1,y\n".encode("utf-8"))
    assert ms.read_labels(csv).tolist() == ["k0", "k1"]


def test_garbage_and_object_npy_files_say_what_they_are(tmp_path):
    (tmp_path / "g.npy").write_bytes(b"not numpy at all")
    with pytest.raises(ValueError, match="is not a .npy file") as info:
        ms.read_matrix(tmp_path / "g.npy")
    assert "allow_pickle" not in str(info.value)
    np.save(tmp_path / "o.npy", np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match="holds Python objects") as info:
        ms.read_matrix(tmp_path / "o.npy")
    assert "allow_pickle" not in str(info.value)


def test_values_whose_squares_overflow_are_refused():
    C = random_symmetric(10, seed=2) * 1e300
    with pytest.raises(ValueError, match="rescale"):
        ms.factorize(C, order=3)
    ms.factorize(random_symmetric(10, seed=2) * 1e140, order=3)  # large but safe


@pytest.mark.parametrize(
    "argv, option",
    [
        (["factorize", "X", "--seed", "-1", "-o", "o"], "--seed"),
        (["factorize", "X", "--order", "1", "-o", "o"], "--order"),
        (["info", "X", "--levels", "-3"], "--levels"),
        (["covariance", "F", "L", "-o", "o", "--max-per-class", "0"], "--max-per-class"),
        (["demo", "--size", "abc"], "--size"),
    ],
)
def test_integer_options_name_themselves(argv, option, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert option in _error_line(capsys)


@pytest.fixture
def small_store(tmp_path, capsys):
    """A 3-class store made by the CLI from 4 rows; returns (features, labels, store) paths."""
    features, labels = tmp_path / "f.npy", tmp_path / "l.txt"
    np.save(features, np.arange(12.0).reshape(4, 3))
    labels.write_text("a\nb\na\nc\n")
    out = tmp_path / "s.zarr"
    assert main(["covariance", str(features), str(labels), "-o", str(out)]) == 0
    capsys.readouterr()
    return features, labels, out


def test_append_with_a_conflicting_option_is_refused(small_store, capsys):
    features, labels, out = small_store
    assert main(["covariance", str(features), str(labels), "-o", str(out), "--append", "--center"]) == 2
    assert "--center conflicts" in _error_line(capsys)
    assert ms.Store.open(out).n_instances == 4


def test_failed_first_append_leaves_no_store(tmp_path, monkeypatch, capsys):
    features, labels = tmp_path / "f.npy", tmp_path / "l.txt"
    np.save(features, np.ones((3, 2)))
    labels.write_text("a\nb\na\n")

    def broken(self, *args, **kwargs):
        raise RuntimeError("kernel failed")

    monkeypatch.setattr(ms.Store, "add_classes", broken)
    assert main(["covariance", str(features), str(labels), "-o", str(tmp_path / "s.zarr")]) == 1
    assert "internal error: RuntimeError: kernel failed" in _error_line(capsys)
    assert not (tmp_path / "s.zarr").exists()


def test_float16_features_make_a_store(tmp_path, capsys):
    features, labels = tmp_path / "f.npy", tmp_path / "l.txt"
    data = np.random.default_rng(0).normal(size=(40, 5)).astype(np.float16)
    np.save(features, data)
    labels.write_text("\n".join("ab"[i % 2] for i in range(40)) + "\n")
    assert main(["covariance", str(features), str(labels), "-o", str(tmp_path / "s.zarr")]) == 0
    store = ms.Store.open(tmp_path / "s.zarr")
    np.testing.assert_allclose(store.means[0], data[::2].astype(np.float64).mean(axis=0))


def test_exhaustive_search_warns_before_a_long_run(monkeypatch, capsys):
    monkeypatch.setattr(F, "EXHAUSTIVE_WARN_SECONDS", 0.0)
    C = random_symmetric(8, seed=1)
    with pytest.warns(UserWarning, match="exhaustive search scores"):
        ms.factorize(C, order=3, candidates="exhaustive")
    monkeypatch.setattr(F, "EXHAUSTIVE_WARN_SECONDS", 1e9)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ms.factorize(C, order=3, candidates="exhaustive")


def test_first_run_says_kernels_are_compiling(tmp_path, npy, monkeypatch, capsys):
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path / "empty-cache"))  # read by the check only
    assert main(["factorize", str(npy), "-k", "3", "-o", str(tmp_path / "r.zarr")]) == 0
    assert "compiling the numba kernels" in capsys.readouterr().err
    monkeypatch.delenv("NUMBA_CACHE_DIR")
    assert main(["factorize", str(npy), "-k", "3", "-o", str(tmp_path / "r2.zarr")]) == 0
    assert "compiling" not in capsys.readouterr().err


def test_lock_timeout_option_names_the_holder(small_store, capsys):
    from mmf_stream.store.class_store import _WriterLock

    features, labels, out = small_store
    held = _WriterLock(out)
    held.acquire(1.0)
    try:
        assert main(["covariance", str(features), str(labels), "-o", str(out), "--append",
                     "--lock-timeout", "0.2"]) == 2
    finally:
        held.release()
    message = _error_line(capsys)
    assert f"pid {os.getpid()}" in message and "gave up after 0.2 s" in message
    assert ms.Store.open(out).n_instances == 4
    assert main(["covariance", str(features), str(labels), "-o", str(out), "--append"]) == 0
    assert ms.Store.open(out).n_instances == 8


def test_covariance_streams_with_a_progress_bar_on_a_terminal(tmp_path, capsys, monkeypatch):
    from contextlib import contextmanager

    from mmf_stream.cli import matrices as cli
    from mmf_stream.common import progress as _progress
    from mmf_stream.store import class_covariance as _covariance

    counted = []
    real_progress = cli.progress

    @contextmanager
    def counting(total, desc, **kwargs):
        with real_progress(total, desc, **kwargs) as update:
            def both(n):
                counted.append(n)
                update(n)
            yield both

    monkeypatch.setattr(cli, "progress", counting)
    monkeypatch.setattr(_progress, "is_interactive", lambda: True)
    monkeypatch.setattr(_covariance, "_BLOCK_BYTES", 4096)  # several blocks from a small file
    features, labels = tmp_path / "f.npy", tmp_path / "l.txt"
    data = np.random.default_rng(0).normal(size=(3000, 4))
    np.save(features, data)
    labels.write_text("\n".join(f"k{i % 7}" for i in range(3000)) + "\n")
    assert main(["covariance", str(features), str(labels), "-o", str(tmp_path / "s.zarr")]) == 0
    err = capsys.readouterr().err
    assert "covariance:" in err and "/3.00k" in err  # the bar is shown, with the total
    assert len(counted) > 5 and sum(counted) == 3000  # advanced block by block over every row
    store = ms.Store.open(tmp_path / "s.zarr")
    np.testing.assert_allclose(store.means[0], data[::7].mean(axis=0))
    monkeypatch.setattr(_progress, "is_interactive", lambda: False)
    assert main(["covariance", str(features), str(labels), "-o", str(tmp_path / "t.zarr")]) == 0
    assert "covariance" not in capsys.readouterr().err  # quiet off a terminal


def test_failed_overwrite_keeps_the_old_store(small_store, tmp_path, capsys):
    features, labels, out = small_store
    bad = np.ones((4, 3))
    bad[2, 1] = np.nan
    np.save(tmp_path / "bad.npy", bad)
    assert main(["covariance", str(tmp_path / "bad.npy"), str(labels), "-o", str(out), "--overwrite"]) == 2
    assert "non-finite" in _error_line(capsys)
    kept = ms.Store.open(out)
    assert kept.n_instances == 4 and kept.labels.tolist() == ["a", "b", "c"]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".s.zarr")) == []
    np.save(tmp_path / "new.npy", np.full((4, 3), 2.0))
    assert main(["covariance", str(tmp_path / "new.npy"), str(labels), "-o", str(out), "--overwrite"]) == 0
    np.testing.assert_array_equal(ms.Store.open(out).means, np.full((3, 3), 2.0))


def test_features_whose_covariance_would_overflow_are_refused(tmp_path, capsys):
    features, labels = tmp_path / "f.npy", tmp_path / "l.txt"
    np.save(features, np.full((4, 3), 1e200))
    labels.write_text("a\nb\na\nc\n")
    assert main(["covariance", str(features), str(labels), "-o", str(tmp_path / "s.zarr")]) == 2
    assert "rescale the features" in _error_line(capsys)
    assert not (tmp_path / "s.zarr").exists()


def test_staging_directories_are_recognised_by_their_exact_name(tmp_path, npy):
    out = tmp_path / "r.zarr"
    f = ms.factorize(np.load(npy), order=4)
    keep = [tmp_path / ".r.zarr.tmp-999999999-notours", tmp_path / ".r.zarr.tmp-mine"]
    for path in keep:
        path.mkdir()
    dead = tmp_path / ".r.zarr.tmp-999999999-0123abcd"
    dead.mkdir()
    f.save(out)
    assert not dead.exists() and all(path.exists() for path in keep)
