"""The label policy (issue 18): every way a label enters refuses the same labels and spells the rest one way."""

from __future__ import annotations

import re
import sys
import unicodedata

import numpy as np
import pytest

import mmf_stream as ms
from mmf_stream.common.limits import FORBIDDEN_LABEL_CHARACTERS, MAX_LABEL_LENGTH
from mmf_stream.cli import main
from mmf_stream.service.coordinator import Coordinator, ServeOptions
from mmf_stream.service.messages import BadMessage, decode
from mmf_stream.service.queues.embedded import EmbeddedQueue, Message, encode_array

DIM = 4
SIZE = 8
NFC, NFD = "caf\u00e9", "cafe\u0301"  # one label, two spellings

#: string labels no entry point accepts, and words of the reason
BAD_LABELS = {
    "newline": ("a\nb", "control character U+000A"),
    "carriage return": ("a\rb", "control character U+000D"),
    "tab": ("a\tb", "control character U+0009"),
    "NUL": ("a\x00b", "control character U+0000"),
    "C1 next line": ("a\x85b", "control character U+0085"),
    "line separator": ("a\u2028b", "control character U+2028"),
    "paragraph separator": ("a\u2029b", "control character U+2029"),
    "too long": ("x" * (MAX_LABEL_LENGTH + 1), f"has {MAX_LABEL_LENGTH + 1} characters; at most {MAX_LABEL_LENGTH}"),
    "100,000 characters": ("y" * 100_000, "has 100000 characters"),
}
#: integer labels written loosely (Python's int() takes all of them), and words of the reason
BAD_INTS = {
    "underscore": ("1_2", "is not an integer"),
    "plus": ("+15", "is not an integer"),
    "spaces": (" 14 ", "is not an integer"),
    "trailing newline": ("14\n", "is not an integer"),
    "Arabic-Indic digits": ("\u0661\u0662", "is not an integer"),
    "beyond int64": ("9223372036854775808", "outside the range"),
    "far beyond int64": ("9" * 5000, "outside the range"),
}


def _project(path, labels=None):
    labels = [f"c{i}" for i in range(SIZE)] if labels is None else labels
    store = ms.Store.create(path)
    store.add_means(np.abs(np.random.default_rng(0).normal(size=(len(labels), DIM))) + 0.1, labels=labels)
    return path


def _message(label: str | bytes) -> Message:
    raw = label.encode("utf-8") if isinstance(label, str) else label
    return Message(1, "m", raw, "mean", encode_array(np.ones(DIM)), "{}", 0.0)


def test_the_forbidden_characters_are_exactly_categories_cc_zl_and_zp():
    wanted = {chr(c) for c in range(sys.maxunicode + 1) if unicodedata.category(chr(c)) in ("Cc", "Zl", "Zp")}
    found = {chr(c) for c in range(sys.maxunicode + 1) if FORBIDDEN_LABEL_CHARACTERS.fullmatch(chr(c))}
    assert found == wanted


# ----------------------------------------------------------------------------- refusals, per entry point
@pytest.mark.parametrize("case", sorted(BAD_LABELS))
def test_the_producer_refuses_a_bad_label(tmp_path, case):
    label, reason = BAD_LABELS[case]
    project = _project(tmp_path / "p")
    with pytest.raises(ValueError, match=re.escape(reason)):
        ms.submit(project, label, mean=np.ones(DIM))
    with EmbeddedQueue.of_project(project) as queue:
        assert queue.depth() == 0


@pytest.mark.parametrize("case", sorted(BAD_INTS))
def test_the_producer_refuses_a_loose_integer_label(tmp_path, case, capsys):
    label, reason = BAD_INTS[case]
    project = _project(tmp_path / "p", labels=list(range(SIZE)))
    with pytest.raises(ValueError, match=re.escape(reason)):
        ms.submit(project, label, mean=np.ones(DIM))
    np.save(tmp_path / "m.npy", np.ones(DIM))
    assert main(["submit", str(project), "--label", label, "--mean", str(tmp_path / "m.npy")]) == 2
    err = capsys.readouterr().err
    assert reason in err and len(err.strip().splitlines()) == 1
    with EmbeddedQueue.of_project(project) as queue:
        assert queue.depth() == 0


@pytest.mark.parametrize("case", sorted(BAD_LABELS))
def test_the_coordinator_dead_letters_a_bad_label(case):
    label, reason = BAD_LABELS[case]
    with pytest.raises(BadMessage, match=re.escape(reason)):
        decode(_message(label), DIM, "str")
    with pytest.raises(BadMessage, match=re.escape(reason)):
        decode(_message(label), DIM, None)  # a project without classes yet


@pytest.mark.parametrize("case", sorted(BAD_INTS))
def test_the_coordinator_dead_letters_a_loose_integer_label(case):
    label, reason = BAD_INTS[case]
    with pytest.raises(BadMessage, match=re.escape(reason)):
        decode(_message(label), DIM, "int")


@pytest.mark.parametrize("case", sorted(BAD_LABELS))
def test_the_store_refuses_a_bad_label_and_stays_unchanged(tmp_path, case):
    label, reason = BAD_LABELS[case]
    store = ms.Store.open(_project(tmp_path / "p"), "r+")
    before = store.labels.tolist()
    calls = [
        lambda: store.add_means(np.ones(DIM), labels=label),
        lambda: store.add_means(np.ones((2, DIM)), labels=["fine", label]),
        lambda: store.add_classes(np.ones((3, DIM)), np.array(["fine", label, "fine"])),
        lambda: store.replace_classes(means=np.ones((1, DIM)), labels=[label]),
        lambda: ms.Store.create(tmp_path / f"new{len(label)}").add_means(np.ones(DIM), labels=[label]),
    ]
    for call in calls:
        with pytest.raises(ValueError, match=re.escape(reason)):
            call()
    assert ms.Store.open(tmp_path / "p", "r").labels.tolist() == before


def test_the_store_refuses_integer_labels_beyond_int64(tmp_path):
    store = ms.Store.open(_project(tmp_path / "p", labels=list(range(SIZE))), "r+")
    for labels in ([2**63], [10**30], np.array([2**63], dtype=np.uint64)):
        with pytest.raises(ValueError, match="outside the range of integer labels"):
            store.add_means(np.ones((1, DIM)), labels=labels)
    assert store.labels.tolist() == list(range(SIZE))


@pytest.mark.parametrize("case", sorted(BAD_LABELS))
def test_factorize_refuses_a_bad_label(case):
    label, reason = BAD_LABELS[case]
    with pytest.raises(ValueError, match=re.escape(reason)):
        ms.factorize(np.eye(4), order=3, labels=["a", "b", label, "d"])


def test_factorize_takes_two_spellings_of_one_label_as_one():
    with pytest.raises(ValueError, match="labels must be unique"):
        ms.factorize(np.eye(4), order=3, labels=["a", NFC, NFD, "d"])
    assert ms.factorize(np.eye(4), order=3, labels=["a", "b", NFD, "d"]).labels.tolist()[2] == NFC
    with pytest.raises(ValueError, match="outside the range"):
        ms.factorize(np.eye(4), order=3, labels=[1, 2, 3, 2**64])


#: a label file's text (with a bad label on line 3) per case, and its suffix
FILE_CASES = {case: label for case, (label, _) in BAD_LABELS.items() if "\n" not in label and "\r" not in label}


@pytest.mark.parametrize("case", sorted(FILE_CASES))
def test_label_files_name_the_line_of_a_bad_label(tmp_path, capsys, case):
    label, reason = BAD_LABELS[case]
    labels = tmp_path / "labels.txt"
    labels.write_text(f"a\nb\n{label}\nc\n", encoding="utf-8")
    features = tmp_path / "f.npy"
    np.save(features, np.ones((4, DIM)))
    with pytest.raises(ValueError, match=re.escape("line 3: ") + ".*" + re.escape(reason)):
        ms.read_labels(labels)
    capsys.readouterr()
    assert main(["covariance", str(features), str(labels), "-o", str(tmp_path / "s.zarr")]) == 2
    err = capsys.readouterr().err
    assert "line 3" in err and reason in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "s.zarr").exists()
    np.save(tmp_path / "c.npy", np.eye(4))
    assert main(["factorize", str(tmp_path / "c.npy"), "-k", "3", "--labels", str(labels), "-o",
                 str(tmp_path / "r.zarr"), "-q"]) == 2
    err = capsys.readouterr().err
    assert "line 3" in err and len(err.strip().splitlines()) == 1


def test_label_files_name_the_line_of_a_quoted_newline_and_the_row_of_an_npy_label(tmp_path):
    csv = tmp_path / "labels.csv"
    csv.write_text('a\nb\n"c\nd"\ne\n', encoding="utf-8")
    with pytest.raises(ValueError, match="labels.csv: line 4: label 'c\\\\nd' holds the control character U\\+000A"):
        ms.read_labels(csv)
    npy = tmp_path / "labels.npy"
    np.save(npy, np.array(["a", "b\u2028"]))
    with pytest.raises(ValueError, match="labels.npy: row 1: .* U\\+2028"):
        ms.read_labels(npy)


def test_label_files_come_back_in_nfc(tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text(f"{NFD}\nb\n", encoding="utf-8")
    assert ms.read_labels(labels).tolist() == [NFC, "b"]
    assert ms.read_labels(tmp_path / "labels.txt").dtype.itemsize // 4 <= MAX_LABEL_LENGTH


def test_the_longest_accepted_label_and_strict_integers_pass(tmp_path):
    longest = "z" * MAX_LABEL_LENGTH
    store = ms.Store.open(_project(tmp_path / "p"), "r+")
    store.add_means(np.ones(DIM), labels=longest)
    assert store.labels.tolist()[-1] == longest
    for text, value in (("-5", -5), ("0", 0), ("007", 7), ("9223372036854775807", 2**63 - 1)):
        assert decode(_message(text), DIM, "int").label == value


# ----------------------------------------------------------------------------- one spelling, one class
def test_two_spellings_are_one_class_in_the_store(tmp_path):
    store = ms.Store.open(_project(tmp_path / "p"), "r+")
    assert store.add_means(np.ones(DIM), labels=NFD) == {"added": [NFC], "updated": []}
    assert store.add_means(np.ones(DIM), labels=NFC) == {"added": [], "updated": [NFC]}
    report = store.add_classes(np.ones((2, DIM)), np.array([NFC, NFD]))
    assert report == {"added": [], "updated": [NFC]}
    assert store.labels.tolist().count(NFC) == 1 and int(store.counts[-1]) == 4
    with pytest.raises(ValueError, match="unique"):
        store.add_means(np.ones((2, DIM)), labels=[NFC, NFD])


def test_two_spellings_update_one_class_through_the_service(tmp_path):
    project = _project(tmp_path / "p", labels=[f"c{i}" for i in range(SIZE - 1)] + [NFC])
    coordinator = Coordinator(project, ServeOptions(order=3, batch_wait=0.0, catch_up_fraction=0,
                                                    refresh_growth=0, refresh_drift=1e9),
                              log=lambda line: None).start()
    try:
        with EmbeddedQueue.of_project(project) as queue:
            queue.put(NFD, "mean", encode_array(np.ones(DIM)), message_id="raw")  # a raw producer's spelling
        ms.submit(project, NFD, mean=np.ones(DIM), message_id="submitted")
        with EmbeddedQueue.of_project(project) as queue:
            queue.put("c1\n", "mean", encode_array(np.ones(DIM)), message_id="newline")
        assert coordinator.step() == 3
        with EmbeddedQueue.of_project(project) as queue:
            dead = {mid: reason for _, mid, reason in queue.dead_letters()}
        assert list(dead) == ["newline"] and "control character" in dead["newline"]
    finally:
        coordinator.close()
    store = ms.Store.open(project, "r")
    assert store.labels.tolist().count(NFC) == 1 and NFD not in store.labels.tolist()
    assert int(store.counts[store.labels.tolist().index(NFC)]) == 3
    assert ms.load(project).labels.tolist() == store.labels.tolist()


def test_a_loose_integer_label_does_not_update_a_class_through_the_service(tmp_path):
    project = _project(tmp_path / "p", labels=list(range(20)))
    coordinator = Coordinator(project, ServeOptions(order=3, batch_wait=0.0, catch_up_fraction=0,
                                                    refresh_growth=0, refresh_drift=1e9),
                              log=lambda line: None).start()
    try:
        with EmbeddedQueue.of_project(project) as queue:
            for number, label in enumerate(["1_2", "+15", " 14 ", "16"]):
                queue.put(label, "mean", encode_array(np.ones(DIM)), message_id=f"m{number}")
        assert coordinator.step() == 4
        with EmbeddedQueue.of_project(project) as queue:
            assert [mid for _, mid, _ in queue.dead_letters()] == ["m0", "m1", "m2"]
    finally:
        coordinator.close()
    store = ms.Store.open(project, "r")
    counts = dict(zip(store.labels.tolist(), store.counts.tolist()))
    assert counts[12] == counts[15] == counts[14] == 1 and counts[16] == 2


# ----------------------------------------------------------------------------- stores made before the policy
def test_a_store_with_labels_stored_before_the_policy_stays_usable(tmp_path, monkeypatch):
    import mmf_stream.store.class_covariance as covariance

    old = ["x\ny", "w" * 300] + [f"c{i}" for i in range(SIZE)]
    with monkeypatch.context() as patch:  # a store written before the policy existed
        patch.setattr(covariance, "normalize_labels", lambda labels: (np.asarray(labels, dtype=str), None, None))
        _project(tmp_path / "p", labels=old)
    store = ms.Store.open(tmp_path / "p", "r+")
    assert sorted(store.labels.tolist()) == sorted(old)
    f = ms.factorize(store, order=3)
    assert sorted(f.labels.tolist()) == sorted(old)
    store.add_means(np.ones(DIM), labels="new")
    store.remove_classes(["x\ny"])
    assert "x\ny" not in ms.Store.open(tmp_path / "p", "r").labels.tolist()


@pytest.mark.parametrize("case", sorted(BAD_LABELS))
def test_insert_refuses_a_bad_label_and_takes_nfc(case):
    label, reason = BAD_LABELS[case]
    f = ms.factorize(means=np.random.default_rng(0).normal(size=(6, DIM)), order=3, labels=list("abcdef"))
    with pytest.raises(ValueError, match=re.escape(reason)):
        f.insert(mean=np.ones(DIM), label=label)
    assert f.insert(mean=np.ones(DIM), label=NFD).labels.tolist()[-1] == NFC
