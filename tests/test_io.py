"""Readers for matrices and labels."""

import numpy as np
import pytest
import scipy.io
import scipy.sparse
import zarr

import mmf_stream as ms

from matrix_helpers import random_symmetric


def test_read_npy_mtx_dense_sparse_and_zarr(tmp_path):
    C = random_symmetric(9, seed=1)
    np.save(tmp_path / "c.npy", C)
    scipy.io.mmwrite(tmp_path / "dense.mtx", C)
    sparse = scipy.sparse.coo_matrix(np.where(np.abs(C) > 0.2, C, 0))
    scipy.io.mmwrite(tmp_path / "sparse.mtx", sparse, symmetry="symmetric")
    array = zarr.create_array(str(tmp_path / "c.zarr"), shape=C.shape, dtype="f8", chunks=(4, 4))
    array[...] = C
    np.testing.assert_array_equal(ms.read_matrix(tmp_path / "c.npy"), C)
    np.testing.assert_allclose(ms.read_matrix(tmp_path / "dense.mtx"), C)
    np.testing.assert_allclose(ms.read_matrix(tmp_path / "sparse.mtx"), sparse.toarray())
    np.testing.assert_array_equal(np.asarray(ms.read_matrix(tmp_path / "c.zarr")), C)
    ref = ms.factorize(C, order=3).error
    for name in ("c.npy", "dense.mtx", "c.zarr"):
        assert np.isclose(ms.factorize(tmp_path / name, order=3).error, ref)


def test_read_zarr_group_with_covariance(tmp_path):
    C = random_symmetric(6, seed=2)
    group = zarr.open_group(str(tmp_path / "store.zarr"), mode="w")
    group.create_array("covariance", shape=C.shape, dtype="f8")[...] = C
    np.testing.assert_array_equal(np.asarray(ms.read_matrix(tmp_path / "store.zarr")), C)


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("bad.npy", b"not a numpy file", "is not a .npy file"),
        ("bad.mtx", b"%%MatrixMarket nonsense\n1 2\n", "cannot read"),
        ("bad.csv", b"1,2\n", "unknown matrix format"),
    ],
)
def test_read_matrix_errors(tmp_path, name, content, message):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(ValueError, match=message):
        ms.read_matrix(tmp_path / name)


def test_read_matrix_missing_and_result_group(tmp_path):
    with pytest.raises(ValueError, match="no such file"):
        ms.read_matrix(tmp_path / "nope.npy")
    ms.factorize(random_symmetric(5), order=2).save(tmp_path / "r.zarr")
    with pytest.raises(ValueError, match="factorization result, not a matrix"):
        ms.read_matrix(tmp_path / "r.zarr")


def test_read_labels(tmp_path):
    (tmp_path / "l.txt").write_text("bread\nketchup\n fries \n\n")
    np.testing.assert_array_equal(ms.read_labels(tmp_path / "l.txt"), ["bread", "ketchup", "fries"])
    (tmp_path / "l.csv").write_text('"a, b",x\nc,y\n')
    np.testing.assert_array_equal(ms.read_labels(tmp_path / "l.csv"), ["a, b", "c"])
    np.save(tmp_path / "l.npy", np.arange(3))
    np.testing.assert_array_equal(ms.read_labels(tmp_path / "l.npy"), [0, 1, 2])
    (tmp_path / "gap.txt").write_text("a\n\nb\n")
    with pytest.raises(ValueError, match="line 2 is empty"):
        ms.read_labels(tmp_path / "gap.txt")
    with pytest.raises(ValueError, match="unknown labels format"):
        ms.read_labels(tmp_path / "gap.json") if (tmp_path / "gap.json").write_text("[]") else None
