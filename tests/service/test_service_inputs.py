"""Whatever a producer sends, ingestion goes on (issue 18): a message the store would refuse is a dead letter,
the batch's other messages are applied, and producers refuse it first where they can tell."""

from __future__ import annotations

import re

import numpy as np
import pytest

import mmf_stream as ms
from mmf_stream.common.limits import MAX_CLASS_COUNT, MAX_INSTANCES
from mmf_stream.cli import main
from mmf_stream.service.changes import plan_batch
from mmf_stream.service.coordinator import Coordinator, ServeOptions
from mmf_stream.service.messages import NewClass
from mmf_stream.service.queues.embedded import EmbeddedQueue, encode_array

DIM = 4
#: classes of the test projects (a few more than the order)
SIZE = 8


def _project(path, labels=None, **create):
    labels = [f"c{i}" for i in range(SIZE)] if labels is None else labels
    store = ms.Store.create(path, **create)
    store.add_means(np.abs(np.random.default_rng(0).normal(size=(len(labels), DIM))) + 0.1, labels=labels)
    return path


def _coordinator(project):
    return Coordinator(project, ServeOptions(order=3, batch_wait=0.0, catch_up_fraction=0, refresh_growth=0,
                                             refresh_drift=1e9), log=lambda line: None).start()


def _good(seed):
    return encode_array(np.abs(np.random.default_rng(seed).normal(size=DIM)) + 0.1)


def _dead(project):
    with EmbeddedQueue.of_project(project) as queue:
        return {mid: reason for _, mid, reason in queue.dead_letters()}


#: (label, kind, payload, extra, a message before it in the same batch, words of the dead letter's reason)
POISON = {
    "huge mean": ("x", "mean", encode_array(np.full(DIM, 1e160)), {}, None, "entries reach 1e+160"),
    "huge features' mean": ("x", "features", encode_array(np.full((2, DIM), 1e100)), {}, None,
                            "features' mean entries reach"),
    "features whose mean overflows": ("x", "features", encode_array(np.full((4, DIM), 1e308)), {}, None,
                                      "non-finite"),
    "count 2**70": ("x", "mean", _good(1), {"count": 2**70}, None, "exceeds the most instances of one class"),
    "count 2**62": ("x", "mean", _good(1), {"count": 2**62}, None, "exceeds the most instances of one class"),
    "two counts over the limit together": ("x", "mean", _good(1), {"count": 2**52 + 1},
                                           ("x", {"count": 2**52 + 1}), "would have 9007199254740994 instances"),
    "a count over the limit with the stored one": ("c1", "mean", _good(1), {"count": MAX_CLASS_COUNT}, None,
                                                   "class 'c1': the class would have 9007199254740993 instances"),
}


@pytest.mark.parametrize("case", sorted(POISON))
def test_a_poison_message_is_dead_lettered_and_the_rest_of_the_batch_applied(tmp_path, case):
    label, kind, payload, extra, before, reason = POISON[case]
    project = _project(tmp_path / "p")
    coordinator = _coordinator(project)
    try:
        with EmbeddedQueue.of_project(project) as queue:
            queue.put("g1", "mean", _good(2), message_id="g1")
            if before is not None:
                queue.put(before[0], "mean", _good(3), message_id="before", extra=before[1])
            queue.put(label, kind, payload, message_id="poison", extra=extra)
            queue.put("g2", "mean", _good(4), message_id="g2")
        assert coordinator.step() == 3 + (before is not None)
        dead = _dead(project)
        assert list(dead) == ["poison"] and reason in dead["poison"], dead
        labels = ms.Store.open(project, "r").labels.tolist()
        assert {"g1", "g2"} <= set(labels) and (before is None or before[0] in labels)
        ms.submit(project, "g3", mean=np.ones(DIM))  # the coordinator keeps going
        assert coordinator.step() == 1
    finally:
        coordinator.close()
    store = ms.Store.open(project, "r")
    assert "g3" in store.labels.tolist() and ms.load(project).size == store.size


def test_an_integer_label_beyond_int64_is_dead_lettered(tmp_path):
    project = _project(tmp_path / "p", labels=list(range(SIZE)))
    coordinator = _coordinator(project)
    try:
        with EmbeddedQueue.of_project(project) as queue:
            queue.put("100", "mean", _good(2), message_id="g1")
            queue.put("999999999999999999999999999999", "mean", _good(3), message_id="poison")
            queue.put("-9223372036854775808", "mean", _good(4), message_id="g2")  # int64's smallest: fine
        assert coordinator.step() == 3
        assert "outside the range of integer labels" in _dead(project)["poison"]
        ms.submit(project, 101, mean=np.ones(DIM))
        assert coordinator.step() == 1
    finally:
        coordinator.close()
    assert {100, -(2**63), 101} <= set(ms.Store.open(project, "r").labels.tolist())


def test_a_class_whose_mean_ends_up_zero_on_a_normalised_project_is_dead_lettered(tmp_path):
    project = _project(tmp_path / "p", normalize=True)
    coordinator = _coordinator(project)
    mean = np.ones(DIM)
    try:
        with EmbeddedQueue.of_project(project) as queue:
            queue.put("z", "mean", encode_array(mean), message_id="z1")
            queue.put("z", "mean", encode_array(-mean), message_id="z2")  # z's mean is now zero
            queue.put("g", "mean", _good(2), message_id="g")
        assert coordinator.step() == 3
        assert "zero vector" in _dead(project)["z2"] and list(_dead(project)) == ["z2"]
    finally:
        coordinator.close()
    store = ms.Store.open(project, "r")
    np.testing.assert_allclose(store.means[store.labels.tolist().index("z")], mean)


def test_a_message_that_takes_the_projects_instances_beyond_int64_is_dead_lettered():
    def message(mid, label, count):
        return NewClass(seq=mid, id=str(mid), label=label, mean=np.ones(2), count=count)

    changes = plan_batch([message(1, "a", 1), message(2, "b", 2), message(3, "c", 1)], {}, 2,
                         lambda slots: (np.zeros((0, 2)), np.zeros(0, np.int64)), instances=MAX_INSTANCES - 2)
    assert changes.labels.tolist() == ["a", "c"] and changes.counts.tolist() == [1, 1]
    assert [mid for _, mid, _ in changes.dead] == ["2"] and "more than" in changes.dead[0][2]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"label": "x", "mean": np.full(DIM, 1e160)}, "mean entries reach 1e+160"),
        ({"label": "x", "features": np.full((3, DIM), 1e100)}, "features' mean entries reach"),
        ({"label": "x", "features": np.full((4, DIM), 1e308)}, "features' mean has non-finite"),
    ],
)
def test_producers_refuse_means_the_store_would_refuse(tmp_path, kwargs, match):
    project = _project(tmp_path / "p")
    with pytest.raises(ValueError, match=re.escape(match)):
        ms.submit(project, **kwargs)
    with EmbeddedQueue.of_project(project) as queue:
        assert queue.depth() == 0


@pytest.mark.parametrize(("label", "match"), [("999999999999999999999999999999", "outside the range"),
                                              ("x", "not an integer")])
def test_producers_refuse_labels_an_integer_project_would_refuse(tmp_path, capsys, label, match):
    project = _project(tmp_path / "p", labels=list(range(SIZE)))
    with pytest.raises(ValueError, match=match):
        ms.submit(project, label, mean=np.ones(DIM))
    with pytest.raises(ValueError, match=match):
        ms.submit(project, int(label) if label.isdigit() else label, mean=np.ones(DIM))
    np.save(tmp_path / "m.npy", np.ones(DIM))
    capsys.readouterr()
    assert main(["submit", str(project), "--label", label, "--mean", str(tmp_path / "m.npy")]) == 2
    err = capsys.readouterr().err
    assert match in err and len(err.strip().splitlines()) == 1
    with EmbeddedQueue.of_project(project) as queue:
        assert queue.depth() == 0


def test_the_cli_producer_refuses_a_huge_mean(tmp_path, capsys):
    project = _project(tmp_path / "p")
    np.save(tmp_path / "m.npy", np.full(DIM, 1e160))
    assert main(["submit", str(project), "--label", "x", "--mean", str(tmp_path / "m.npy")]) == 2
    err = capsys.readouterr().err
    assert "entries reach 1e+160" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("counts", [2**70, MAX_CLASS_COUNT + 1])
def test_the_store_refuses_counts_beyond_the_limit_with_a_value_error(tmp_path, counts):
    store = ms.Store.open(_project(tmp_path / "p"), "r+")
    before = (store.labels.copy(), store.counts.copy(), store.n_instances)
    with pytest.raises(ValueError, match="count"):
        store.add_means(np.ones(DIM), labels="new", counts=counts)
    with pytest.raises(ValueError, match="count"):
        store.replace_classes(means=np.ones((1, DIM)), labels=["new"], counts=counts)
    with pytest.raises(ValueError, match="count"):
        store.replace_classes(sums=np.ones((1, DIM)), labels=["new"], counts=counts)
    store.add_means(np.ones(DIM), labels="big", counts=MAX_CLASS_COUNT)
    with pytest.raises(ValueError, match="9007199254740993"):  # the class's count with its stored one
        store.add_means(np.ones(DIM), labels="big", counts=1)
    reopened = ms.Store.open(tmp_path / "p", "r")
    assert reopened.counts[-1] == MAX_CLASS_COUNT and reopened.labels.tolist()[:-1] == before[0].tolist()
    assert reopened.n_instances == before[2] + MAX_CLASS_COUNT
