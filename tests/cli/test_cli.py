"""The mmf-stream command end to end."""

import os
import subprocess
import sys

import numpy as np
import scipy.io

import mmf_stream as ms
from mmf_stream.cli import main

from matrix_helpers import random_symmetric


def _run(*args, cwd=None):
    """The installed console script in a subprocess (what a user types)."""
    return subprocess.run(
        [sys.executable, "-m", "mmf_stream.cli", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )


def test_factorize_then_info_end_to_end(tmp_path):
    C = random_symmetric(20, seed=1)
    np.save(tmp_path / "c.npy", C)
    (tmp_path / "labels.txt").write_text("\n".join(f"class {i}" for i in range(20)) + "\n")
    out = tmp_path / "r.zarr"
    done = _run("factorize", tmp_path / "c.npy", "--order", 4, "--core-size", 5, "--labels",
                tmp_path / "labels.txt", "--seed", 2, "--out", out)
    assert done.returncode == 0, done.stderr
    assert "levels      15" in done.stdout and "class" in done.stdout
    result = ms.load(out)
    expected = ms.factorize(C, order=4, core_size=5, seed=2)
    np.testing.assert_array_equal(result.tuples, expected.tuples)
    assert result.labels[0] == "class 0"
    info = _run("info", out, "--levels", 3)
    assert info.returncode == 0
    assert f"{result.error:.6g}" in info.stdout and "first 3 levels" in info.stdout
    assert "*class" in info.stdout  # wavelet marked, with its label


def test_factorize_matrix_market_sparse(tmp_path):
    C = ms.karate_laplacian()
    import scipy.sparse

    scipy.io.mmwrite(tmp_path / "k.mtx", scipy.sparse.coo_matrix(C), symmetry="symmetric")
    assert main(["factorize", str(tmp_path / "k.mtx"), "-k", "4", "--core-size", "6", "-o", str(tmp_path / "k.zarr"), "-q"]) == 0
    assert np.isclose(ms.load(tmp_path / "k.zarr").error, ms.factorize(C, order=4, core_size=6).error)


def test_demo_runs_and_saves(tmp_path, capsys):
    assert main(["demo", "--size", "200", "--out", str(tmp_path / "d.zarr")]) == 0
    out = capsys.readouterr().out
    assert "first 8 levels" in out and "inside one leaf" in out
    assert ms.load(tmp_path / "d.zarr").size == 200


def _assert_clean_error(done, *fragments):
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_bad_inputs_give_one_line_errors(tmp_path):
    np.save(tmp_path / "rect.npy", np.ones((3, 4)))
    asym = random_symmetric(5)
    asym[0, 1] += 1
    np.save(tmp_path / "asym.npy", asym)
    nan = random_symmetric(5)
    nan[1, 1] = np.nan
    np.save(tmp_path / "nan.npy", nan)
    np.save(tmp_path / "ok.npy", random_symmetric(6))
    (tmp_path / "corrupt.npy").write_bytes(b"garbage")
    (tmp_path / "three.txt").write_text("a\nb\nc\n")
    out = tmp_path / "o.zarr"
    cases = [
        (("factorize", tmp_path / "rect.npy", "--out", out), "must be square"),
        (("factorize", tmp_path / "asym.npy", "--order", 2, "--out", out), "not symmetric"),
        (("factorize", tmp_path / "nan.npy", "--order", 2, "--out", out), "non-finite"),
        (("factorize", tmp_path / "ok.npy", "--order", 1, "--out", out), "--order/-k: must be at least 2"),
        (("factorize", tmp_path / "ok.npy", "--order", 7, "--out", out), "exceeds the matrix size"),
        (("factorize", tmp_path / "ok.npy", "--order", 3, "--core-size", 9, "--out", out), "core_size must be between"),
        (("factorize", tmp_path / "missing.npy", "--out", out), "no such file"),
        (("factorize", tmp_path / "corrupt.npy", "--out", out), "is not a .npy file"),
        (("factorize", tmp_path / "ok.npy", "--order", 2, "--labels", tmp_path / "three.txt", "--out", out), "got 3 labels"),
        (("info", tmp_path / "ok.npy"), "not a Zarr group"),
        (("info", tmp_path / "nothing.zarr"), "no such file"),
        (("factorize", tmp_path / "ok.npy", "--order", "two", "--out", out), "expected an integer"),
    ]
    for args, fragment in cases:
        _assert_clean_error(_run(*args), fragment)
    assert not out.exists()


def test_existing_output_is_not_overwritten(tmp_path):
    np.save(tmp_path / "ok.npy", random_symmetric(6))
    out = tmp_path / "r.zarr"
    assert main(["factorize", str(tmp_path / "ok.npy"), "-k", "2", "-o", str(out), "-q"]) == 0
    before = ms.load(out).tuples.copy()
    np.save(tmp_path / "other.npy", random_symmetric(6, seed=5))
    done = _run("factorize", tmp_path / "other.npy", "-k", "2", "-o", out)
    _assert_clean_error(done, "already exists")
    np.testing.assert_array_equal(ms.load(out).tuples, before)
    assert main(["factorize", str(tmp_path / "other.npy"), "-k", "2", "-o", str(out), "-q", "--overwrite"]) == 0
    expected = ms.factorize(np.load(tmp_path / "other.npy"), order=2)
    np.testing.assert_array_equal(ms.load(out).tuples, expected.tuples)


def test_help_lists_subcommands():
    done = _run("--help")
    assert done.returncode == 0
    for name in ("factorize", "info", "demo", "insert", "warmup"):
        assert name in done.stdout


def test_covariance_command_builds_a_store(tmp_path):
    rng = np.random.default_rng(0)
    features = rng.normal(size=(90, 4)).astype(np.float32)
    names = rng.choice(["bread", "bun", "fries", "ketchup"], size=90)
    np.save(tmp_path / "f.npy", features)
    (tmp_path / "l.txt").write_text("\n".join(names) + "\n")
    out = tmp_path / "s.zarr"
    done = _run("covariance", tmp_path / "f.npy", tmp_path / "l.txt", "--out", out, "--normalize")
    assert done.returncode == 0, done.stderr
    assert "4 classes added" in done.stdout
    store = ms.Store.open(out)
    assert store.normalize and sorted(store.labels.tolist()) == ["bread", "bun", "fries", "ketchup"]
    expected = ms.class_covariance(features, names)
    order = np.argsort(store.labels)
    np.testing.assert_allclose(np.asarray(store.covariance)[np.ix_(order, order)], expected.matrix, rtol=1e-6)
    # appending the same data again updates the classes (counts double, means unchanged)
    again = _run("covariance", tmp_path / "f.npy", tmp_path / "l.txt", "--out", out, "--append")
    assert again.returncode == 0 and "0 classes added, 4 updated" in again.stdout
    assert ms.Store.open(out).n_instances == 180
    info = _run("info", out)
    assert info.returncode == 0 and "classes     4" in info.stdout and "instances   180" in info.stdout
    # an existing store is never replaced silently
    _assert_clean_error(_run("covariance", tmp_path / "f.npy", tmp_path / "l.txt", "--out", out), "already exists")


def test_covariance_command_bad_input(tmp_path):
    np.save(tmp_path / "f.npy", np.ones((5, 3)))
    (tmp_path / "four.txt").write_text("a\nb\nc\nd\n")
    (tmp_path / "five.txt").write_text("a\nb\nc\nd\ne\n")
    bad = np.ones((5, 3))
    bad[1, 1] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    out = tmp_path / "s.zarr"
    _assert_clean_error(_run("covariance", tmp_path / "f.npy", tmp_path / "four.txt", "-o", out), "got 4 labels for 5 feature rows")
    assert not out.exists()
    _assert_clean_error(_run("covariance", tmp_path / "nan.npy", tmp_path / "five.txt", "-o", out), "non-finite")
    assert not out.exists()
    _assert_clean_error(_run("covariance", tmp_path / "missing.npy", tmp_path / "five.txt", "-o", out), "no such file")
    assert _run("covariance", tmp_path / "f.npy", tmp_path / "five.txt", "-o", out).returncode == 0
    np.save(tmp_path / "wide.npy", np.ones((5, 4)))
    _assert_clean_error(
        _run("covariance", tmp_path / "wide.npy", tmp_path / "five.txt", "-o", out, "--append"), "dimension 4"
    )
    assert ms.Store.open(out).n_instances == 5


def test_insert_command_streams_new_classes_from_a_store(tmp_path):
    rng = np.random.default_rng(0)
    names = [f"class{i}" for i in range(14)]
    centres = rng.normal(size=(14, 8))
    labels = rng.integers(0, 14, 420)
    features = centres[labels] + 0.3 * rng.normal(size=(420, 8))
    first = labels < 12
    np.save(tmp_path / "f1.npy", features[first])
    (tmp_path / "l1.txt").write_text("\n".join(names[i] for i in labels[first]) + "\n")
    np.save(tmp_path / "f2.npy", features[~first])
    (tmp_path / "l2.txt").write_text("\n".join(names[i] for i in labels[~first]) + "\n")
    store, before, after = tmp_path / "s.zarr", tmp_path / "r.zarr", tmp_path / "r2.zarr"
    assert _run("covariance", tmp_path / "f1.npy", tmp_path / "l1.txt", "-o", store).returncode == 0
    assert _run("factorize", store, "-k", 3, "-o", before, "-q").returncode == 0  # from the class means
    assert ms.load(before).factored
    _assert_clean_error(_run("insert", before, store, "-o", after), "holds no class that the result lacks")
    assert _run("covariance", tmp_path / "f2.npy", tmp_path / "l2.txt", "-o", store, "--append").returncode == 0
    done = _run("insert", before, store, "-o", after)
    assert done.returncode == 0, done.stderr
    assert "inserted 2 class(es)" in done.stdout and "class12" in done.stdout
    grown = ms.load(after)
    opened = ms.Store.open(store)
    slot = {label: i for i, label in enumerate(opened.labels.tolist())}
    order = [slot[label] for label in grown.labels.tolist()]
    C = np.asarray(opened.covariance)[np.ix_(order, order)]
    assert np.isclose(grown.error, np.linalg.norm(C - grown.reconstruct()))
    _assert_clean_error(_run("insert", before, store, "--labels", "nope", "-o", tmp_path / "x.zarr"), "not in the store")
    _assert_clean_error(_run("insert", before, store, "-o", after), "already exists")


def test_covariance_from_class_means(tmp_path, capsys):
    """`covariance --means M LABELS`: one class per row, duplicates refused (they would merge)."""
    rng = np.random.default_rng(7)
    means = rng.normal(size=(30, 5))
    np.save(tmp_path / "m.npy", means)
    (tmp_path / "l.txt").write_text("\n".join(f"k{i}" for i in range(30)) + "\n")
    (tmp_path / "dup.txt").write_text("\n".join(f"k{i % 29}" for i in range(30)) + "\n")
    out = tmp_path / "p"
    assert main(["covariance", "--means", str(tmp_path / "m.npy"), str(tmp_path / "l.txt"), "--out", str(out)]) == 0
    assert "30 classes added" in capsys.readouterr().out
    store = ms.Store.open(out, mode="r")
    order = [int(x[1:]) for x in store.labels.tolist()]
    np.testing.assert_allclose(store.means, means[order], rtol=1e-15)
    assert store.counts.tolist() == [1] * 30 and not (out / "covariance").exists()
    bad = [
        (["--means", "m.npy", "dup.txt", "--out", "q"], "'k0' appears 2 times"),
        (["--means", "m.npy", "--out", "q"], "give one positional argument, LABELS"),
        (["--means", "m.npy", "m.npy", "l.txt", "--out", "q"], "give one positional argument, LABELS"),
        (["--means", "m.npy", "l.txt", "--out", "q", "--max-per-class", "2"], "--max-per-class"),
        (["m.npy", "--out", "q"], "give FEATURES and LABELS"),
    ]
    for args, message in bad:
        code = main(["covariance", *[str(tmp_path / a) if a.endswith((".npy", ".txt")) or a == "q" else a
                                     for a in args]])
        err = capsys.readouterr().err
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, (args, err)
        assert not (tmp_path / "q").exists()


def test_covariance_dense_covariance_option(tmp_path, capsys):
    features = np.random.default_rng(8).normal(size=(60, 4))
    np.save(tmp_path / "f.npy", features)
    (tmp_path / "l.txt").write_text("\n".join(str(i % 12) for i in range(60)) + "\n")
    args = [str(tmp_path / "f.npy"), str(tmp_path / "l.txt")]
    assert main(["covariance", *args, "--out", str(tmp_path / "d"), "--dense-covariance"]) == 0
    assert "covariance stored" in capsys.readouterr().out and (tmp_path / "d" / "covariance").is_dir()
    assert main(["covariance", *args, "--out", str(tmp_path / "s")]) == 0
    capsys.readouterr()
    np.testing.assert_allclose(np.asarray(ms.Store.open(tmp_path / "s", mode="r").covariance),
                               np.asarray(ms.Store.open(tmp_path / "d", mode="r").covariance), rtol=1e-12)
    code = main(["covariance", *args, "--out", str(tmp_path / "s"), "--append", "--dense-covariance"])
    assert code == 2 and "computes its covariance from the means" in capsys.readouterr().err
    assert ms.Store.open(tmp_path / "s", mode="r").n_instances == 60


def test_factorize_neighbour_rule_option(tmp_path):
    M, _ = ms.datasets.planted_tree(2, 5, 16, seed=0)
    np.save(tmp_path / "m.npy", M)
    for rule in ("energy", "faithful"):
        out = tmp_path / f"{rule}.zarr"
        done = _run("factorize", "--means", tmp_path / "m.npy", "--order", 3, "--neighbours", rule, "--out", out,
                    "--quiet")
        assert done.returncode == 0, done.stderr
        result = ms.load(out)
        assert result.metadata["options"].neighbours == rule
        expected = ms.factorize(means=M, order=3, options={"neighbours": rule})
        np.testing.assert_array_equal(result.tuples, expected.tuples)
    done = _run("factorize", "--means", tmp_path / "m.npy", "--neighbours", "cosine", "--out", tmp_path / "x.zarr")
    assert done.returncode == 2 and "Traceback" not in done.stderr and "--neighbours" in done.stderr
