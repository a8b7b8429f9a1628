"""The factored (class means) side of the mmf-stream command: factorize --means, factorize STORE,
insert into factored results, --schedule, and the warmup command.

Everything runs in-process through ``main([...])`` (a subprocess costs about a second each).
"""

import numpy as np
import pytest
import zarr

import mmf_stream as ms
from mmf_stream.cli import arguments
from mmf_stream.store.class_store import Store, SymmetricCovariance
from mmf_stream.cli import main


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert "Traceback" not in err[0]
    return err[0]


def _forbid_dense(monkeypatch, *, columns: bool = False) -> None:
    """Make every way of reading the store's dense covariance raise."""

    def refuse(*args, **kwargs):
        raise AssertionError("the dense class covariance was formed")

    monkeypatch.setattr(Store, "matrix", refuse)
    monkeypatch.setattr(Store, "covariance", property(refuse))
    monkeypatch.setattr(SymmetricCovariance, "__array__", refuse)
    monkeypatch.setattr(SymmetricCovariance, "__getitem__", refuse)
    if columns:
        monkeypatch.setattr(Store, "columns", refuse)


def _same(a, b) -> None:
    np.testing.assert_array_equal(a.tuples, b.tuples)
    np.testing.assert_array_equal(a.wavelets, b.wavelets)
    np.testing.assert_allclose(a.rotations, b.rotations, rtol=0, atol=1e-12)
    np.testing.assert_allclose(a.diagonal, b.diagonal, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(a.core, b.core)
    assert np.isclose(a.error, b.error, rtol=1e-10, atol=1e-12)


@pytest.fixture
def means(tmp_path):
    """60 class means (D = 12), saved as .npy, with string labels in a text file."""
    M = ms.class_means(60, 12, seed=1)
    np.save(tmp_path / "m.npy", M)
    names = [f"class{i:02d}" for i in range(60)]  # sorted as the store keeps them
    (tmp_path / "names.txt").write_text("\n".join(names) + "\n")
    return M, names


def _store(path, M, names, *, normalize=False) -> Store:
    store = Store.create(path, normalize=normalize)
    store.add_means(M, names)
    return store


# ---------------------------------------------------------------- factorize --means
def test_factorize_means_round_trip(tmp_path, means, capsys):
    M, names = means
    out = tmp_path / "r.zarr"
    assert main(["factorize", "--means", str(tmp_path / "m.npy"), "--order", "3", "--core-size", "6",
                 "--labels", str(tmp_path / "names.txt"), "--seed", "2", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "from class means" in printed and "levels      54" in printed
    loaded = ms.load(out)
    expected = ms.factorize(means=M, order=3, core_size=6, seed=2, labels=names)
    _same(loaded, expected)
    assert loaded.factored and loaded.metadata["input"] == "means"
    assert loaded.metadata["schedule"] == expected.metadata["schedule"] == "greedy"
    assert loaded.labels.tolist() == names
    np.testing.assert_allclose(loaded.insertion_state.final_rows, expected.insertion_state.final_rows, atol=1e-12)
    # the saved result inserts from means alone
    grown = loaded.insert(mean=M[0] + M[1], label="new")
    assert grown.labels[-1] == "new" and grown.size == 61


def test_factorize_means_from_a_zarr_array_and_schedule(tmp_path, means):
    M, _ = means
    array = zarr.create_array(str(tmp_path / "m.zarr"), shape=M.shape, dtype="f8", chunks=(16, 5))
    array[:] = M
    out = tmp_path / "r.zarr"
    assert main(["factorize", "--means", str(tmp_path / "m.zarr"), "-k", "4", "--schedule", "staged",
                 "-o", str(out), "-q"]) == 0
    loaded = ms.load(out)
    expected = ms.factorize(means=M, order=4, schedule="staged")
    assert loaded.metadata["schedule"] == "staged" and loaded.labels is None
    _same(loaded, expected)


def test_schedule_passes_through_for_dense_input(tmp_path):
    C = ms.hierarchical_covariance(64, seed=3)
    np.save(tmp_path / "c.npy", C)
    for schedule in ("greedy", "staged"):
        out = tmp_path / f"{schedule}.zarr"
        assert main(["factorize", str(tmp_path / "c.npy"), "-k", "3", "--core-size", "8", "--schedule", schedule,
                     "-o", str(out), "-q"]) == 0
        loaded = ms.load(out)
        assert loaded.metadata["schedule"] == schedule and not loaded.factored
        assert loaded.metadata["input"] == "matrix"
        _same(loaded, ms.factorize(C, order=3, core_size=8, schedule=schedule))


# ---------------------------------------------------------------- factorize STORE
@pytest.mark.parametrize("normalize", [False, True])
def test_factorize_store_factors_its_means(tmp_path, means, monkeypatch, capsys, normalize):
    M, names = means
    store = _store(tmp_path / "s.zarr", M, names, normalize=normalize)
    _forbid_dense(monkeypatch)
    out = tmp_path / "r.zarr"
    assert main(["factorize", str(store.path), "-k", "3", "-o", str(out)]) == 0
    assert "from class means" in capsys.readouterr().out
    loaded = ms.load(out)
    expected = ms.factorize(Store.open(store.path, mode="r"), order=3)
    _same(loaded, expected)
    assert loaded.factored and loaded.metadata["input"] == "means"
    assert loaded.labels.tolist() == store.labels.tolist()
    # --labels replaces the store's labels; --schedule passes through
    (tmp_path / "other.txt").write_text("\n".join(f"x{i}" for i in range(60)) + "\n")
    assert main(["factorize", str(store.path), "-k", "3", "--labels", str(tmp_path / "other.txt"),
                 "--schedule", "staged", "-o", str(tmp_path / "r2.zarr"), "-q"]) == 0
    relabelled = ms.load(tmp_path / "r2.zarr")
    assert relabelled.labels[0] == "x0" and relabelled.metadata["schedule"] == "staged"
    _same(relabelled, ms.factorize(str(store.path), order=3, schedule="staged"))


def test_factorize_store_equals_the_dense_factorization_of_its_covariance(tmp_path, means):
    M, names = means
    store = _store(tmp_path / "s.zarr", M, names)
    assert main(["factorize", str(store.path), "-k", "3", "-o", str(tmp_path / "r.zarr"), "-q"]) == 0
    factored = ms.load(tmp_path / "r.zarr")
    gram = store.factor() @ store.factor().T
    assert np.isclose(factored.error, np.linalg.norm(gram - factored.reconstruct()), rtol=1e-8)
    assert np.isclose(factored.norm, np.linalg.norm(gram), rtol=1e-10)


# ---------------------------------------------------------------- insert into factored results
def _grown_gram(store: Store, labels) -> np.ndarray:
    slot = {label: i for i, label in enumerate(store.labels.tolist())}
    F = store.factor()[[slot[label] for label in labels]]
    return F @ F.T


@pytest.mark.parametrize("normalize", [False, True])
def test_insert_into_a_factored_result_uses_means_only(tmp_path, means, monkeypatch, capsys, normalize):
    M, names = means
    path = tmp_path / "s.zarr"
    _store(path, M[:54], names[:54], normalize=normalize)
    before, after = tmp_path / "r.zarr", tmp_path / "r2.zarr"
    assert main(["factorize", str(path), "-k", "3", "-o", str(before), "-q"]) == 0
    Store.open(path).add_means(M[54:], names[54:])
    capsys.readouterr()
    _forbid_dense(monkeypatch, columns=True)
    assert main(["insert", str(before), str(path), "-o", str(after)]) == 0
    printed = capsys.readouterr().out
    assert "inserted 6 class(es)" in printed and "class54" in printed
    grown = ms.load(after)
    assert grown.factored and grown.labels.tolist() == names
    monkeypatch.undo()
    store = Store.open(path, mode="r")
    G = _grown_gram(store, grown.labels.tolist())
    assert np.isclose(grown.error, np.linalg.norm(G - grown.reconstruct()), rtol=1e-8, atol=1e-10)
    assert np.isclose(grown.norm, np.linalg.norm(G), rtol=1e-10)
    # the same as inserting the means with the library
    expected = ms.load(before).insert_many(means=store.factor()[54:], labels=names[54:])
    _same(grown, expected)


def test_insert_one_class_and_chosen_labels_into_a_factored_result(tmp_path, means, monkeypatch, capsys):
    M, names = means
    path = tmp_path / "s.zarr"
    _store(path, M[:50], names[:50])
    before = tmp_path / "r.zarr"
    assert main(["factorize", str(path), "-k", "4", "-o", str(before), "-q"]) == 0
    Store.open(path).add_means(M[50:], names[50:])
    _forbid_dense(monkeypatch, columns=True)
    assert main(["insert", str(before), str(path), "--labels", "class57", "-o", str(tmp_path / "one.zarr")]) == 0
    one = ms.load(tmp_path / "one.zarr")
    assert one.labels.tolist() == names[:50] + ["class57"]
    assert main(["insert", str(tmp_path / "one.zarr"), str(path), "--labels", "class52", "class51",
                 "-o", str(tmp_path / "three.zarr")]) == 0
    three = ms.load(tmp_path / "three.zarr")
    assert three.labels.tolist()[-2:] == ["class52", "class51"]
    monkeypatch.undo()
    G = _grown_gram(Store.open(path, mode="r"), three.labels.tolist())
    assert np.isclose(three.error, np.linalg.norm(G - three.reconstruct()), rtol=1e-8, atol=1e-10)
    capsys.readouterr()
    # the checks of the dense path hold for factored results too
    assert main(["insert", str(tmp_path / "three.zarr"), str(path), "--labels", "class57",
                 "-o", str(tmp_path / "x.zarr")]) == 2
    assert "already in the factorization" in _error_line(capsys)
    assert main(["insert", str(before), str(path), "--labels", "nope", "-o", str(tmp_path / "x.zarr")]) == 2
    assert "not in the store" in _error_line(capsys)


def test_insert_into_a_factored_result_refuses_changed_classes(tmp_path, means, capsys):
    M, names = means
    path = tmp_path / "s.zarr"
    _store(path, M[:50], names[:50])
    before = tmp_path / "r.zarr"
    assert main(["factorize", str(path), "-k", "3", "-o", str(before), "-q"]) == 0
    store = Store.open(path)
    store.add_means(M[50:], names[50:])
    store.add_means(M[3] + 1.0, "class03")  # one more instance of a factored class: its mean moves
    capsys.readouterr()
    assert main(["insert", str(before), str(path), "-o", str(tmp_path / "r2.zarr")]) == 2
    message = _error_line(capsys)
    assert "does not hold the classes" in message and "'class03'" in message
    assert not (tmp_path / "r2.zarr").exists()


def test_insert_refuses_a_centred_store_for_factored_results(tmp_path, means, capsys):
    M, names = means
    path = tmp_path / "s.zarr"
    store = Store.create(path, center=True)
    store.add_means(M[:50], names[:50])
    assert main(["factorize", str(path), "-k", "3", "-o", str(tmp_path / "r.zarr"), "-q"]) == 0
    store.add_means(M[50:], names[50:])
    capsys.readouterr()
    assert main(["insert", str(tmp_path / "r.zarr"), str(path), "-o", str(tmp_path / "r2.zarr")]) == 2
    assert "centred" in _error_line(capsys)


def test_insert_into_a_dense_result_still_uses_columns(tmp_path, means, monkeypatch, capsys):
    M, names = means
    path = tmp_path / "s.zarr"
    store = _store(path, M[:54], names[:54])
    np.save(tmp_path / "c.npy", store.factor() @ store.factor().T)
    (tmp_path / "l.txt").write_text("\n".join(names[:54]) + "\n")
    before = tmp_path / "r.zarr"
    assert main(["factorize", str(tmp_path / "c.npy"), "--labels", str(tmp_path / "l.txt"), "-k", "3",
                 "-o", str(before), "-q"]) == 0
    assert not ms.load(before).factored
    store.add_means(M[54:], names[54:])
    _forbid_dense(monkeypatch)  # columns come from the means too
    assert main(["insert", str(before), str(path), "-o", str(tmp_path / "r2.zarr")]) == 0
    grown = ms.load(tmp_path / "r2.zarr")
    assert not grown.factored and grown.labels.tolist() == names
    monkeypatch.undo()
    G = _grown_gram(Store.open(path, mode="r"), names)
    assert np.isclose(grown.error, np.linalg.norm(G - grown.reconstruct()), rtol=1e-8, atol=1e-10)


# ---------------------------------------------------------------- errors
def test_input_and_means_exclude_each_other(tmp_path, means, capsys):
    out = tmp_path / "r.zarr"
    assert main(["factorize", str(tmp_path / "m.npy"), "-o", str(out)]) == 2  # means given as a matrix
    message = _error_line(capsys)
    assert "must be square" in message and "--means" in message
    assert main(["factorize", str(tmp_path / "m.npy"), "--means", str(tmp_path / "m.npy"), "-o", str(out)]) == 2
    assert "exactly one of INPUT" in _error_line(capsys)
    assert main(["factorize", "-o", str(out)]) == 2
    message = _error_line(capsys)
    assert "exactly one of INPUT" in message and "neither" in message
    assert not out.exists()


def test_bad_means_give_one_line_errors(tmp_path, means, capsys):
    M, names = means
    bad = M.copy()
    bad[4, 2] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    np.save(tmp_path / "flat.npy", M[0])
    (tmp_path / "m.txt").write_text("1 2\n")
    _store(tmp_path / "s.zarr", M, names)
    zarr.open_group(str(tmp_path / "group.zarr"), mode="w").attrs["x"] = 1
    out = tmp_path / "r.zarr"
    cases = [
        (["--means", str(tmp_path / "nan.npy")], "non-finite"),
        (["--means", str(tmp_path / "flat.npy")], "must be 2-D"),
        (["--means", str(tmp_path / "missing.npy")], "no such file"),
        (["--means", str(tmp_path / "m.txt")], "unknown means format"),
        (["--means", str(tmp_path / "s.zarr")], "is a class store; give it as INPUT"),
        (["--means", str(tmp_path / "group.zarr")], "must be a Zarr array"),
        (["--means", str(tmp_path / "m.npy"), "--labels", str(tmp_path / "m.txt")], "got 1 labels"),
        (["--means", str(tmp_path / "m.npy"), "-k", "61"], "exceeds"),
    ]
    for args, fragment in cases:
        assert main(["factorize", *args, "-o", str(out)]) == 2, args
        message = _error_line(capsys)
        assert fragment in message, (args, message)
    assert not out.exists()


def test_bad_schedule_is_a_usage_error(tmp_path, means, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["factorize", "--means", str(tmp_path / "m.npy"), "--schedule", "fast", "-o", str(tmp_path / "r")])
    assert stop.value.code == 2
    message = _error_line(capsys)
    assert "--schedule" in message and "invalid choice" in message


# ---------------------------------------------------------------- warmup and the compile notice
def test_warmup_compiles_and_says_how_long(capsys, monkeypatch):
    assert main(["warmup"]) == 0
    captured = capsys.readouterr()
    assert "warm-up done in" in captured.out and " s: the numba kernels are compiled and cached" in captured.out
    from mmf_stream import warmup as _warmup

    monkeypatch.setattr(_warmup, "_WARMUP_SIZE", 80)  # the same kernels, less work
    assert main(["warmup", "--quiet"]) == 0
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


def test_warmup_help_names_install_steps_and_dask_workers(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["warmup", "--help"])
    assert stop.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "install step" in text and "Dask worker image" in text and "--quiet" in text
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "warmup" in capsys.readouterr().out


def test_compile_notice_points_at_warmup(tmp_path, means, monkeypatch, capsys):
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path / "empty-cache"))  # read by the check only
    assert main(["factorize", "--means", str(tmp_path / "m.npy"), "-k", "3", "-o", str(tmp_path / "r.zarr")]) == 0
    err = capsys.readouterr().err
    assert "compiling the numba kernels" in err and "mmf-stream warmup" in err
    assert main(["factorize", "--means", str(tmp_path / "m.npy"), "-k", "3", "-q", "-o", str(tmp_path / "q.zarr")]) == 0
    assert "compiling" not in capsys.readouterr().err
    monkeypatch.undo()  # numba's real cache: both engines' kernels are there by now
    assert arguments.kernels_cached(arguments.FACTORED_KERNEL) and arguments.kernels_cached(arguments.DENSE_KERNEL)
