"""Class covariance (equation 7) from NumPy, Zarr and Dask features."""

import numpy as np
import pytest
import zarr

import mmf_stream as ms
from mmf_stream.store import class_covariance as class_covariance_module


def _literal(features, labels):
    """The paper's double sum, written out literally."""
    classes = np.unique(labels)
    out = np.zeros((classes.size, classes.size))
    for a, ca in enumerate(classes):
        for b, cb in enumerate(classes):
            rows_a, rows_b = features[labels == ca], features[labels == cb]
            total = sum(float(x @ y) for x in rows_a for y in rows_b)
            out[a, b] = total / (len(rows_a) * len(rows_b))
    return classes, out


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(120, 5))
    labels = rng.choice(["cat", "dog", "bread", "bun"], size=120)
    return features, labels


def test_equals_literal_double_sum(data):
    features, labels = data
    result = ms.class_covariance(features, labels)
    classes, literal = _literal(features, labels)
    np.testing.assert_array_equal(result.labels, classes)
    np.testing.assert_allclose(result.matrix, literal, rtol=1e-10)
    np.testing.assert_array_equal(result.counts, [np.sum(labels == c) for c in classes])
    np.testing.assert_allclose(result.means, [features[labels == c].mean(axis=0) for c in classes])


def test_center_and_normalize(data):
    features, labels = data
    classes, _ = _literal(features, labels)
    centred = features - features.mean(axis=0)
    _, literal = _literal(centred, labels)
    np.testing.assert_allclose(ms.class_covariance(features, labels, center=True).matrix, literal, atol=1e-12)
    cosine = ms.class_covariance(features, labels, center=True, normalize=True).matrix
    d = np.sqrt(np.diag(literal))
    np.testing.assert_allclose(cosine, literal / np.outer(d, d), atol=1e-12)
    np.testing.assert_allclose(np.diag(cosine), 1)


def test_zarr_and_dask_inputs_stream_in_blocks(data, tmp_path, monkeypatch):
    import dask.array as da

    features, labels = data
    monkeypatch.setattr(class_covariance_module, "_BLOCK_BYTES", 7 * 5 * 4)  # force many small blocks
    array = zarr.create_array(str(tmp_path / "f.zarr"), shape=features.shape, dtype="f4", chunks=(7, 5))
    array[...] = features.astype(np.float32)
    expected = ms.class_covariance(features.astype(np.float32), labels).matrix
    np.testing.assert_allclose(ms.class_covariance(array, labels).matrix, expected, rtol=1e-12)
    lazy = da.from_array(features.astype(np.float32), chunks=(11, 5))
    np.testing.assert_allclose(ms.class_covariance(lazy, labels).matrix, expected, rtol=1e-12)


def test_integer_features_and_labels():
    features = np.arange(12).reshape(6, 2)
    result = ms.class_covariance(features, [3, 1, 3, 1, 2, 2])
    np.testing.assert_array_equal(result.labels, [1, 2, 3])
    np.testing.assert_allclose(result.means[0], features[[1, 3]].mean(axis=0))


def test_max_per_class_samples_deterministically(data):
    features, labels = data
    a = ms.class_covariance(features, labels, max_per_class=5, seed=1)
    b = ms.class_covariance(features, labels, max_per_class=5, seed=1)
    c = ms.class_covariance(features, labels, max_per_class=5, seed=2)
    assert (a.counts == 5).all()
    np.testing.assert_array_equal(a.matrix, b.matrix)
    assert not np.array_equal(a.matrix, c.matrix)
    # the sampled means are those of the rows the seeded mask keeps, 5 per class
    unique, codes = class_covariance_module.encode_labels(labels, len(labels))
    keep = class_covariance_module.sample_mask(codes, unique.size, 5, 1)
    assert np.bincount(codes[keep]).tolist() == [5] * unique.size
    for i in range(unique.size):
        np.testing.assert_allclose(a.means[i], features[keep & (codes == i)].mean(axis=0))
    big = ms.class_covariance(features, labels, max_per_class=10_000)
    np.testing.assert_allclose(big.matrix, ms.class_covariance(features, labels).matrix)


def test_bad_input():
    features = np.ones((4, 3))
    with pytest.raises(ValueError, match="got 3 labels for 4 feature rows"):
        ms.class_covariance(features, [1, 2, 3])
    bad = features.copy()
    bad[2, 1] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        ms.class_covariance(bad, [1, 2, 3, 4])
    with pytest.raises(ValueError, match="must be 2-D"):
        ms.class_covariance(np.ones(4), [1, 2, 3, 4])
    with pytest.raises(TypeError, match="real numbers"):
        ms.class_covariance(np.array([["a"]] * 4), [1, 2, 3, 4])
    with pytest.raises(ValueError, match="max_per_class must be at least 1"):
        ms.class_covariance(features, [1, 2, 3, 4], max_per_class=0)
    with pytest.raises(ValueError, match="features are empty"):
        ms.class_covariance(np.ones((0, 3)), [])
    with pytest.raises(ValueError, match="zero vector"):
        ms.class_covariance(np.zeros((4, 3)), [1, 1, 2, 2], normalize=True)


@pytest.mark.parametrize("dtype", ["f2", ">f8", "i1", "u2", "?", "f4"])
def test_any_real_dtype_is_upcast_per_block(dtype, tmp_path, monkeypatch):
    rng = np.random.default_rng(5)
    features = rng.integers(0, 2, size=(50, 3)).astype(dtype)
    labels = rng.integers(0, 4, size=50)
    expected = ms.class_covariance(features.astype(np.float64), labels).matrix
    np.testing.assert_allclose(ms.class_covariance(features, labels).matrix, expected, rtol=1e-12)
    monkeypatch.setattr(class_covariance_module, "_BLOCK_BYTES", 64)
    array = zarr.create_array(str(tmp_path / "f.zarr"), shape=features.shape, dtype=features.dtype.newbyteorder("="),
                              chunks=(7, 3))
    array[...] = features
    np.testing.assert_allclose(ms.class_covariance(array, labels).matrix, expected, rtol=1e-12)
    store = ms.Store.create(tmp_path / "s.zarr")
    store.add_classes(features, labels)
    np.testing.assert_allclose(np.asarray(store.covariance), expected, rtol=1e-12)


@pytest.mark.parametrize("values", [np.array([["a", "b"]] * 4), np.full((4, 2), 1 + 1j), np.full((4, 2), None)])
def test_non_numeric_features_are_refused_in_one_line(values):
    with pytest.raises(TypeError, match="features must be real numbers") as info:
        ms.class_covariance(values, [1, 2, 3, 4])
    assert "\n" not in str(info.value)
