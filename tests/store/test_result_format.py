"""Saving and loading factorizations (Zarr group, format version 1)."""

import json

import numpy as np
import pytest
import zarr

import mmf_stream as ms

from matrix_helpers import random_symmetric


@pytest.fixture
def result():
    C = random_symmetric(30, seed=1)
    return ms.factorize(C, order=4, core_size=5, labels=[f"c{i}" for i in range(30)], seed=3)


def _assert_same(a, b):
    for name in ("tuples", "wavelets", "rotations", "level_errors", "diagonal", "core", "core_block"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert a.order == b.order and a.size == b.size and a.norm == b.norm and a.error == b.error
    if a.labels is None:
        assert b.labels is None
    else:
        np.testing.assert_array_equal(a.labels, b.labels)
        assert a.labels.dtype.kind == b.labels.dtype.kind


def test_round_trip_is_exact(tmp_path, result):
    result.save(tmp_path / "r.zarr")
    loaded = ms.load(tmp_path / "r.zarr")
    _assert_same(result, loaded)
    np.testing.assert_array_equal(result.reconstruct(), loaded.reconstruct())
    assert loaded.metadata["seed"] == 3


def test_round_trip_integer_labels_and_no_labels(tmp_path):
    C = random_symmetric(12, seed=2)
    with_ints = ms.factorize(C, order=3, labels=np.arange(100, 112))
    with_ints.save(tmp_path / "ints.zarr")
    loaded = ms.load(tmp_path / "ints.zarr")
    _assert_same(with_ints, loaded)
    assert loaded.labels.dtype == np.int64
    plain = ms.factorize(C, order=3)
    plain.save(tmp_path / "plain.zarr")
    _assert_same(plain, ms.load(tmp_path / "plain.zarr"))


def test_layout_is_documented_format(tmp_path, result):
    result.save(tmp_path / "r.zarr")
    group = zarr.open_group(str(tmp_path / "r.zarr"), mode="r")
    meta = group.attrs["mmf_stream"]
    assert meta["format"] == "factorization" and meta["format_version"] == ms.FORMAT_VERSION
    assert meta["n_levels"] == 25 and meta["core_size"] == 5 and meta["order"] == 4
    assert group["tuples"].shape == (25, 4) and group["tuples"].dtype == np.int64
    assert group["rotations"].shape == (25, 4, 4) and group["core_block"].shape == (5, 5)
    assert np.isclose(meta["error"], result.error)


def test_refuses_to_overwrite_unless_asked(tmp_path, result):
    target = tmp_path / "r.zarr"
    result.save(target)
    with pytest.raises(ValueError, match="already exists"):
        result.save(target)
    other = ms.factorize(random_symmetric(10, seed=9), order=2)
    other.save(target, overwrite=True)
    assert ms.load(target).size == 10
    assert [p.name for p in tmp_path.iterdir()] == ["r.zarr"]  # no staging left behind


def test_failed_save_leaves_existing_result_intact(tmp_path, result, monkeypatch):
    target = tmp_path / "r.zarr"
    result.save(target)
    other = ms.factorize(random_symmetric(10, seed=9), order=2)
    original = zarr.Group.create_array

    def failing(self, name, **kwargs):
        if name == "core_block":
            raise OSError("disk full")
        return original(self, name, **kwargs)

    monkeypatch.setattr(zarr.Group, "create_array", failing)
    with pytest.raises(OSError, match="disk full"):
        other.save(target, overwrite=True)
    monkeypatch.undo()
    _assert_same(result, ms.load(target))
    assert [p.name for p in tmp_path.iterdir()] == ["r.zarr"]


def test_load_errors(tmp_path, result):
    with pytest.raises(ValueError, match="no such file"):
        ms.load(tmp_path / "missing.zarr")
    (tmp_path / "notzarr").mkdir()
    with pytest.raises(ValueError, match="not a Zarr group|not an mmf_stream"):
        ms.load(tmp_path / "notzarr")
    zarr.open_group(str(tmp_path / "other.zarr"), mode="w").attrs["x"] = 1
    with pytest.raises(ValueError, match="not an mmf_stream factorization"):
        ms.load(tmp_path / "other.zarr")


def test_load_rejects_other_format_version(tmp_path, result):
    result.save(tmp_path / "r.zarr")
    group = zarr.open_group(str(tmp_path / "r.zarr"), mode="r+")
    meta = dict(group.attrs["mmf_stream"])
    meta["format_version"] = 0
    group.attrs["mmf_stream"] = meta
    with pytest.raises(ValueError, match="format version 0"):
        ms.load(tmp_path / "r.zarr")


def test_load_detects_corruption(tmp_path, result):
    result.save(tmp_path / "r.zarr")
    path = tmp_path / "r.zarr"
    # a missing array
    import shutil

    shutil.rmtree(path / "rotations")
    with pytest.raises(ValueError, match="corrupt"):
        ms.load(path)
    # a wrong shape recorded
    result.save(tmp_path / "s.zarr")
    meta_file = tmp_path / "s.zarr" / "zarr.json"
    meta = json.loads(meta_file.read_text())
    meta["attributes"]["mmf_stream"]["n_levels"] = 7
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="corrupt"):
        ms.load(tmp_path / "s.zarr")
