"""The project's generations (store/generations.py): copy-on-write layers that stay few and small."""

import numpy as np

from mmf_stream.store import generations as G
from mmf_stream.store.generations import Project, _Cached


def _versions(base: int, commits: int, appended: int, touched: int, width: int = 3, seed: int = 0):
    """An array growing by ``appended`` rows a commit, with ``touched`` fixed rows changing each time."""
    rng = np.random.default_rng(seed)
    data = rng.standard_normal((base, width))
    hot = rng.choice(base, size=touched, replace=False)
    for _ in range(commits):
        data = np.vstack([data, rng.standard_normal((appended, width))])
        data[hot] = rng.standard_normal((touched, width))
        yield data.copy()


def test_tiered_overlays_read_back_and_stay_few_and_small(tmp_path):
    """A growing array written 200 times: every generation reads back exactly; the overlays stay
    about log2 of the rows in number and the rows written stay near the rows that changed (writing
    the array whole every few commits, as before, wrote 130,000 rows here)."""
    (tmp_path / "p").mkdir()
    written, seen = 0, set()
    with Project(tmp_path / "p") as project:
        for number, data in enumerate(_versions(base=5000, commits=200, appended=2, touched=5), start=1):
            spec = project._write_array(number, "x", data)
            for layer in set(spec["layers"]) - seen:
                written += np.load(project._layers / layer)["rows"].size
            seen |= set(spec["layers"])
            np.testing.assert_array_equal(project._read_array("x", spec), data)
            assert len(spec["layers"]) == len(spec["counts"]) <= 2 + int(np.log2(data.shape[0]))
            project._cache = _Cached({"x": data}, {"x": spec})
        assert spec["counts"][0] == 5002  # the base (the first version) was never written again
    changed = 200 * 7  # rows appended or changed, over all commits
    assert written - 5002 < 12 * changed, written


def test_a_base_is_written_again_when_most_rows_changed(tmp_path):
    (tmp_path / "p").mkdir()
    with Project(tmp_path / "p") as project:
        data = np.arange(40.0).reshape(20, 2)
        spec = project._write_array(1, "x", data)
        project._cache = _Cached({"x": data}, {"x": spec})
        changed = data.copy()
        changed[:15] += 1.0  # 75% of the rows: above MAX_OVERLAY_FRACTION
        again = project._write_array(2, "x", changed)
        assert len(again["layers"]) == 1 and again["layers"][0] != spec["layers"][0]
        np.testing.assert_array_equal(project._read_array("x", again), changed)
        assert G.MAX_OVERLAY_FRACTION < 0.75


def test_layouts_without_counts_still_grow(tmp_path):
    """A layout written before tiers (no "counts") reads and takes overlays."""
    (tmp_path / "p").mkdir()
    with Project(tmp_path / "p") as project:
        data = np.arange(40.0).reshape(20, 2)
        spec = project._write_array(1, "x", data)
        del spec["counts"]
        project._cache = _Cached({"x": data}, {"x": spec})
        grown = np.vstack([data, [[1.0, 2.0]]])
        again = project._write_array(2, "x", grown)
        assert again["layers"][0] == spec["layers"][0] and len(again["layers"]) == 2
        np.testing.assert_array_equal(project._read_array("x", again), grown)
