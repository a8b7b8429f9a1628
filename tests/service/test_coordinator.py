"""The coordinator (mmf-stream serve), project generations, status, and crash recovery (issue 11)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import mmf_stream as ms
from mmf_stream.cli import main
from mmf_stream.service.coordinator import Coordinator, ServeOptions, refresh_outcome
from mmf_stream.store.generations import Project
from mmf_stream.service.queues.embedded import EmbeddedQueue, encode_array
from mmf_stream.service.status import project_status
from service_helpers import (
    DIM,
    INITIAL,
    check_applied_once,
    check_exact,
    env,
    expected_labels,
    make_project,
    run_coordinator,
    start_coordinator,
    start_producer,
)


def _serve(project, **options):
    coordinator = Coordinator(project, ServeOptions(order=4, **options), log=lambda line: None).start()
    try:
        coordinator.run(idle_exit=0.3)
    finally:
        coordinator.close()


def _means(count, seed=1):
    return np.abs(np.random.default_rng(seed).normal(size=(count, DIM))) + 0.1


def test_serve_factorizes_then_folds_in_new_classes_exactly(tmp_path):
    project = make_project(tmp_path / "p")
    _serve(project)  # no factorization yet: the coordinator makes one
    first = ms.load(project)
    assert first.size == INITIAL and first.order == 4
    means = _means(30)
    for i, mean in enumerate(means):
        ms.submit(project, f"n{i}", mean=mean)
    _serve(project, batch_max=7, refresh_growth=0, refresh_drift=1e9, catch_up_fraction=0)
    store, f = check_exact(project)
    assert store.size == INITIAL + 30
    assert set(store.labels[INITIAL:].tolist()) == {f"n{i}" for i in range(30)}
    reasons = _reasons(project)  # one factorization, then insertions (no batch run)
    assert reasons[0] == "factorize" and set(reasons[1:]) == {"batch"} and len(reasons) >= 1 + 30 // 7
    status = project_status(project)
    assert status["applied"] == 30 and status["queue_depth"] == 0 and status["dead_letters"] == 0
    assert status["classes"] == status["factorized"] == INITIAL + 30
    assert status["refreshes"] == 0


def _reasons(project):
    with Project(project) as log:
        return [row[0] for row in log._db.execute("SELECT reason FROM generations ORDER BY number")]


@pytest.mark.parametrize("backlog, batch_max", [(12, 8), (40, 8), (40, 256)])
def test_a_long_backlog_is_caught_up_by_one_batch_run(tmp_path, backlog, batch_max):
    """A backlog >= catch_up_fraction of the classes (longer than a batch: the rest of the queue is
    read too): one batch run of the whole project, with batch quality (its error is the batch run's),
    instead of chunks of insertions. A backlog below the fraction is inserted."""
    project = make_project(tmp_path / "p")
    _serve(project)
    for i, mean in enumerate(_means(backlog)):
        ms.submit(project, f"n{i}", mean=mean)
    _serve(project, batch_max=batch_max, refresh_growth=0, refresh_drift=1e9, catch_up_fraction=0.5)
    store, f = check_exact(project)
    assert store.size == INITIAL + backlog and set(store.labels[INITIAL:].tolist()) == {f"n{i}" for i in range(backlog)}
    reasons = _reasons(project)
    if backlog >= 0.5 * INITIAL:  # 40 waiting, 60 classes: caught up in one generation
        assert reasons == ["factorize", "catch-up"]
        status = project_status(project)
        assert status["error_vs_batch"] == pytest.approx(1.0) and status["refreshes"] == 1
        with Project(project) as log:
            assert log.current().counters["batch_error"] == f.error  # the factorization is the batch run
    else:  # 12 waiting, below half of 60: inserted, a batch of 8 then 4
        assert reasons == ["factorize", "batch", "batch"]
        assert project_status(project)["refreshes"] == 0


def test_generations_write_only_what_changed(tmp_path):
    project = make_project(tmp_path / "p", size=400)
    _serve(project)
    layers = tmp_path / "p" / "service" / "layers"
    before = {p.name for p in layers.iterdir()}
    with Project(project) as log:
        first = log.current()
    ms.submit(project, "new", mean=_means(1)[0])
    _serve(project, refresh_growth=0, refresh_drift=1e9)
    with Project(project) as log:
        second = log.current()
    f = ms.load(project)
    assert second.number == first.number + 1
    for name in ("tuples", "rotations", "final_rows"):  # the base layer is shared, the change is an overlay
        assert second.layout[name]["layers"][0] == first.layout[name]["layers"][0]
        assert len(second.layout[name]["layers"]) == len(first.layout[name]["layers"]) + 1
    written = {p.name for p in layers.iterdir()} - before
    rows = sum(np.load(layers / name)["rows"].size for name in written if "-final_rows-" in name)
    assert 0 < rows < f.size / 2, rows  # the rows an insertion changed, not all of them
    assert ms.load(project).error == f.error


def test_readers_never_fail_during_commits(tmp_path):
    project = make_project(tmp_path / "p")
    _serve(project)
    for i, mean in enumerate(_means(40)):
        ms.submit(project, f"n{i}", mean=mean)
    failures, sizes, done = [], [], threading.Event()

    def read():
        while not done.is_set():
            try:
                sizes.append(ms.load(project).size)
                ms.Store.open(project, mode="r")
            except Exception as error:  # noqa: BLE001 - the test collects them
                failures.append(error)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        _serve(project, batch_max=1, batch_wait=0.0, catch_up_fraction=0)
    finally:
        done.set()
        reader.join()
    assert failures == []
    assert sizes == sorted(sizes) and sizes[-1] == INITIAL + 40 and len(set(sizes)) >= 2


def test_every_bad_message_is_dead_lettered_and_the_next_good_one_applied(tmp_path):
    project = make_project(tmp_path / "p")
    _serve(project)
    good = encode_array(_means(1)[0])
    bad = [
        ("d1", "mean", encode_array(np.ones(DIM + 1)), {}, "features; the project's classes have D"),
        ("d2", "mean", encode_array(np.full(DIM, np.nan)), {}, "non-finite"),
        ("d3", "mean", encode_array(np.array([1.0] * (DIM - 1) + [np.inf])), {}, "non-finite"),
        (b"\xff\xfe", "mean", good, {}, "not UTF-8"),
        ("  ", "mean", good, {}, "label is empty"),
        ("d4", "mean", b"not npy", {}, "not a .npy array"),
        ("d5", "mean", good, {"colour": "red"}, "unknown field"),
        ("d6", "vector", good, {}, "unknown kind"),
    ]
    with EmbeddedQueue.of_project(project) as queue:
        for number, (label, kind, payload, extra, _) in enumerate(bad):
            queue.put(label, kind, payload, message_id=f"bad{number}", extra=extra)
            queue.put(f"ok{number}", "mean", encode_array(_means(1, seed=number)[0]), message_id=f"ok{number}")
    _serve(project, batch_max=3)
    status = project_status(project)
    assert status["dead_letters"] == len(bad)
    reasons = {d["id"]: d["reason"] for d in status["recent_dead_letters"]}
    for number, (*_, expected) in enumerate(bad):
        assert expected in reasons[f"bad{number}"], (expected, reasons[f"bad{number}"])
    store, _ = check_exact(project)
    assert {f"ok{i}" for i in range(len(bad))} <= set(store.labels.tolist())
    assert status["applied"] == len(bad)
    with EmbeddedQueue.of_project(project) as queue:
        assert {mid for _, mid, _ in queue.dead_letters()} == {f"bad{i}" for i in range(len(bad))}


def test_oversized_payload_is_dead_lettered(tmp_path, monkeypatch):
    from mmf_stream.service import messages

    project = make_project(tmp_path / "p")
    _serve(project)
    monkeypatch.setattr(messages, "MAX_PAYLOAD_BYTES", 200)
    with EmbeddedQueue.of_project(project) as queue:
        queue.put("big", "features", encode_array(np.ones((10, DIM))), message_id="big")
        queue.put("fine", "mean", encode_array(np.ones(DIM)), message_id="fine")
    _serve(project)
    status = project_status(project)
    assert [d["id"] for d in status["recent_dead_letters"]] == ["big"]
    assert "payload is" in status["recent_dead_letters"][0]["reason"]
    assert "fine" in ms.Store.open(project, "r").labels.tolist()


def test_a_known_label_updates_its_class_and_the_factorization(tmp_path):
    project = make_project(tmp_path / "p")
    _serve(project)
    store = ms.Store.open(project, "r")
    slot = store.labels.tolist().index("c3")
    old_mean, old_count = store.means[slot].copy(), int(store.counts[slot])
    features = _means(4, seed=9)
    ms.submit(project, "c3", features=features)
    _serve(project)
    store, f = check_exact(project)
    assert store.labels.tolist()[-1] == "c3", "an updated class is knocked out and inserted again, at the end"
    assert store.size == INITIAL and int(store.counts[-1]) == old_count + 4
    np.testing.assert_allclose(store.means[-1], (old_mean * old_count + features.sum(axis=0)) / (old_count + 4))
    assert project_status(project)["refreshes"] == 0 and _reasons(project)[-1] == "batch"  # no batch run


def test_removals_and_updates_apply_in_arrival_order_and_stay_exact(tmp_path):
    project = make_project(tmp_path / "p")
    _serve(project)
    store = ms.Store.open(project, "r")
    c3 = int(store.counts[store.labels.tolist().index("c3")])
    fresh = _means(3, seed=12)
    ids = [
        ms.submit(project, "c1", remove=True),
        ms.submit(project, "c3", mean=fresh[0]),  # an update: instances add up
        ms.submit(project, "n0", mean=fresh[1]),
        ms.submit(project, "n0", remove=True),  # added, then removed in the same batch
        ms.submit(project, "ghost", remove=True),  # not there: a dead letter
        ms.submit(project, "c5", remove=True),
        ms.submit(project, "c5", mean=fresh[2]),  # removed, then a new class of the same label
        ms.submit(project, "c1", remove=True),  # already removed above: a dead letter
    ]
    _serve(project, refresh_drift=1e9, catch_up_fraction=0)  # no batch run: the changes alone
    store, f = check_exact(project)
    labels = store.labels.tolist()
    assert store.size == INITIAL - 1 and "c1" not in labels and "n0" not in labels and "ghost" not in labels
    assert int(store.counts[labels.index("c3")]) == c3 + 1 and int(store.counts[labels.index("c5")]) == 1
    np.testing.assert_allclose(store.means[labels.index("c5")], fresh[2])
    status = project_status(project)
    assert status["dead_letters"] == 2 and status["refreshes"] == 0
    reasons = sorted(d["reason"] for d in status["recent_dead_letters"])
    assert reasons == ["no class 'c1' to remove", "no class 'ghost' to remove"]
    with Project(project) as log:
        change = dict(log._db.execute("SELECT id, change FROM applied").fetchall())
    assert [change[i] for i in ids[:4]] == ["removed", "updated", "added", "removed"]
    assert change[ids[5]] == "removed" and change[ids[6]] == "updated" and ids[4] not in change
    assert _reasons(project)[-1] == "batch"


def test_a_project_can_start_empty(tmp_path):
    project = tmp_path / "p"
    ms.Store.create(project)
    for i, mean in enumerate(_means(2)):
        ms.submit(project, f"n{i}", mean=mean)
    _serve(project)  # two classes: too few for order 4, stored without a factorization
    assert ms.Store.open(project, "r").size == 2
    with pytest.raises(ValueError, match="without a factorization yet"):
        ms.load(project)
    for i, mean in enumerate(_means(10, seed=3)):
        ms.submit(project, f"m{i}", mean=mean)
    _serve(project)
    store, f = check_exact(project)
    assert store.size == f.size == 12


def test_features_are_averaged(tmp_path):
    project = make_project(tmp_path / "p")
    features = _means(5, seed=4)
    ms.submit(project, "avg", features=features)
    _serve(project)
    store, _ = check_exact(project)
    slot = store.labels.tolist().index("avg")
    np.testing.assert_allclose(store.means[slot], features.mean(axis=0))
    assert int(store.counts[slot]) == 5


def test_refresh_runs_in_the_background_and_replays(tmp_path):
    project = make_project(tmp_path / "p", size=200)
    _serve(project)
    for i, mean in enumerate(_means(40, seed=5)):
        ms.submit(project, f"n{i}", mean=mean)
    coordinator = Coordinator(project, ServeOptions(order=4, batch_max=4, refresh_growth=0.05,
                                                       catch_up_fraction=0),
                              log=lambda line: None).start()
    try:
        coordinator.run(idle_exit=0.5)
        coordinator._finish_refresh(wait=True)
    finally:
        coordinator.close()
    _, f = check_exact(project)
    status = project_status(project)
    assert status["refreshes"] >= 1 and status["classes"] == 240 == f.size
    with Project(project) as log:
        assert log.events("refresh")
    assert "refresh" in _reasons(project)


def test_a_finished_refresh_replays_in_steps_between_batches(tmp_path, monkeypatch):
    """The classes that arrived while a refresh ran are replayed into it a step at a time between
    batches (not all inside the swap commit), then it is swapped in or discarded, and the project stays exact."""
    import concurrent.futures

    from mmf_stream.service import coordinator as coordinator_module

    monkeypatch.setattr(coordinator_module, "REPLAY_STEP", 4)
    project = make_project(tmp_path / "p", size=200)
    _serve(project)
    means = _means(40, seed=6)
    for i in range(12):  # 6% growth: a refresh starts
        ms.submit(project, f"n{i}", mean=means[i])
    lines = []
    c = Coordinator(project, ServeOptions(order=4, batch_max=4, batch_wait=0.0, catch_up_fraction=0,
                                          refresh_growth=0.05, refresh_drift=1e9), log=lines.append).start()
    try:
        while c._refresh is None:
            assert c.step() > 0
        refresh = c._refresh
        real, gate = refresh.future, concurrent.futures.Future()
        refresh.future = gate  # the batch run "finishes" only when the test says so
        snapshot = refresh.size
        for i in range(12, 40):
            ms.submit(project, f"n{i}", mean=means[i])
        while c.step():  # the batches go on while the refresh runs
            pass
        assert ms.Store.open(project, mode="r").size == 240 and c._refresh is refresh
        gate.set_result(real.result())
        sizes = []
        while c._refresh is not None:
            c.step()
            if refresh.replayed is not None:
                sizes.append(refresh.replayed.size)
    finally:
        c.close()
    steps = sorted(set(sizes))
    assert steps[0] <= snapshot + 4 and steps[-1] == 240 and len(steps) >= (240 - snapshot) // 4
    assert all(b - a <= 4 for a, b in zip(steps, steps[1:]))  # REPLAY_STEP at a time, nothing arriving
    assert any(line.startswith(("refresh committed", "refresh discarded")) for line in lines), lines
    check_exact(project)


def test_refresh_outcome():
    """A refresh is swapped in when it is not worse; one spoilt by the classes replayed into it is retried
    (on the current classes, nothing to replay once the queue is idle); one worse with nothing replayed
    (insertions beat batch) is discarded for good: retrying it would loop forever."""
    assert refresh_outcome(1.0, 1.0, replayed=50) == "swap"
    assert refresh_outcome(0.9, 1.0, replayed=0) == "swap"
    assert refresh_outcome(1.1, 1.0, replayed=50) == "retry"
    assert refresh_outcome(1.1, 1.0, replayed=0) == "discard"


@pytest.mark.parametrize("fold_in", ["insertion", "catch-up"])
@pytest.mark.parametrize("point, settled", [("service-prepared", "dropped"),
                                            ("service-store-committed", "committed"),
                                            ("service-committed", None)])
def test_a_crash_at_each_commit_step_is_recovered(tmp_path, point, settled, fold_in):
    project = make_project(tmp_path / "p")
    _serve(project)
    for i, mean in enumerate(_means(5)):
        ms.submit(project, f"n-{i}", mean=mean, message_id=f"n-{i}")
    fraction = "0" if fold_in == "insertion" else "0.05"  # 5 waiting > a batch of 2, and >= 5% of 60 classes
    crashed = run_coordinator(project, "--batch-max", "2", "--catch-up-fraction", fraction,
                              extra_env={"MMF_STREAM_CRASH_AT": point})
    assert crashed.returncode == 17, crashed.stderr
    with Project(project) as log:
        assert (log.pending() is not None) == (settled is not None)
        crashed_in = log.pending() or log.current()
        assert crashed_in.reason == ("batch" if fold_in == "insertion" else "catch-up")
    done = run_coordinator(project, "--idle-exit", "0.5")
    assert done.returncode == 0, done.stderr
    if settled:
        assert f"was {settled}" in done.stderr
    check_applied_once(project, {"n": 5})


@pytest.mark.parametrize("backend", ["embedded", "redis"])
def test_kill_9_at_random_moments_applies_every_class_once(tmp_path, request, backend):
    queue = "embedded" if backend == "embedded" else request.getfixturevalue("redis_url")
    project = make_project(tmp_path / "p")
    producers = {f"p{k}": 200 for k in range(4)}
    running = [start_producer(project, name, count, pause=0.15, queue=queue) for name, count in producers.items()]
    rng = np.random.default_rng(11)
    serve = ["--order", "4", "--batch-max", "16", "--batch-wait", "0.05", "--queue", queue]
    for _ in range(20):
        coordinator = start_coordinator(project, *serve)
        time.sleep(rng.uniform(0.8, 3.5))  # from start-up (kernels warmed up) to mid-batch: the kill lands anywhere
        coordinator.kill()
        coordinator.wait(timeout=60)
        coordinator.stdout.close()
        coordinator.stderr.close()
    for producer in running:
        _, err = producer.communicate(timeout=120)
        assert producer.returncode == 0, err
    done = run_coordinator(project, *serve, "--idle-exit", "1")
    assert done.returncode == 0, done.stderr
    check_applied_once(project, producers)
    status = project_status(project)
    assert status["queue_depth"] == 0 and status["applied"] == 800


MUTATOR = r"""
import sys, time
import numpy as np
import mmf_stream as ms
project, removals, updates = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = np.random.default_rng(5)
for i in range(removals):  # the id names the change: a retried message cannot apply twice
    ms.submit(project, f"c{i}", remove=True, message_id=f"remove-c{i}")
    ms.submit(project, f"c{removals + i}", mean=np.abs(rng.normal(size=DIM)) + 0.1,
              message_id=f"update-c{removals + i}")
    time.sleep(rng.uniform(0, 0.3))
""".replace("DIM", str(DIM))


def test_kill_9_during_removals_and_updates_applies_each_change_once(tmp_path):
    """Additions, removals and updates from three processes while the coordinator is killed at random:
    afterwards each change is applied once and the factorization is an exact MMF of the store."""
    project = make_project(tmp_path / "p")
    producers = {"a0": 80, "a1": 80}
    running = [start_producer(project, name, count, pause=0.2) for name, count in producers.items()]
    changes = 20
    running.append(subprocess.Popen([sys.executable, "-c", MUTATOR, str(project), str(changes), str(changes)],
                                    env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    rng = np.random.default_rng(12)
    serve = ["--order", "4", "--batch-max", "8", "--batch-wait", "0.05", "--catch-up-fraction", "0"]
    for _ in range(8):
        coordinator = start_coordinator(project, *serve)
        time.sleep(rng.uniform(0.8, 3.0))
        coordinator.kill()
        coordinator.wait(timeout=60)
        coordinator.stdout.close()
        coordinator.stderr.close()
    for process in running:
        _, err = process.communicate(timeout=180)
        assert process.returncode == 0, err
    done = run_coordinator(project, *serve, "--idle-exit", "1")
    assert done.returncode == 0, done.stderr
    store, _ = check_exact(project)
    labels = store.labels.tolist()
    want = (expected_labels(producers) | {f"c{i}" for i in range(INITIAL)}) - {f"c{i}" for i in range(changes)}
    assert len(labels) == len(set(labels)) and set(labels) == want
    counts = dict(zip(labels, store.counts.tolist()))
    assert all(counts[f"c{i}"] == 2 for i in range(changes, 2 * changes)), "an update applied twice or never"
    assert all(count == 1 for label, count in counts.items() if not label.startswith("c"))
    with Project(project) as log:
        ids = [mid for _, mid, _, _, _ in log.applied()]
        assert len(ids) == len(set(ids)) == 160 + 2 * changes and log.pending() is None


def test_eight_producers_at_once(tmp_path):
    project = make_project(tmp_path / "p")
    producers = {f"q{k}": 200 for k in range(8)}
    coordinator = start_coordinator(project, "--order", "4", "--batch-wait", "0.05")
    running = [start_producer(project, name, count, pause=0.0) for name, count in producers.items()]
    for producer in running:
        _, err = producer.communicate(timeout=120)
        assert producer.returncode == 0, err
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        status = project_status(project)
        if status["applied"] == 1600:
            break
        time.sleep(0.5)
    coordinator.send_signal(signal.SIGTERM)
    _, err = coordinator.communicate(timeout=60)
    assert coordinator.returncode == 0, err
    check_applied_once(project, producers)


def test_sigterm_finishes_the_batch_and_a_second_coordinator_refuses(tmp_path):
    project = make_project(tmp_path / "p")
    _serve(project)
    # a queue that takes >= 60 s to drain (1 s pause per batch of 4): the second coordinator and
    # SIGTERM land long before it is empty, even on a slow, loaded CI machine
    total = 240
    for i, mean in enumerate(_means(total)):
        ms.submit(project, f"n{i}", mean=mean, message_id=f"n{i}")
    coordinator = start_coordinator(project, "--batch-max", "4", "--batch-wait", "0.3", "--catch-up-fraction", "0",
                                    extra_env={"MMF_STREAM_SERVICE_PAUSE": "1"})
    deadline = time.monotonic() + 60
    while project_status(project)["applied"] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    second = run_coordinator(project, timeout=60)
    assert second.returncode == 2
    assert second.stderr.count("\n") == 1 and "another coordinator" in second.stderr
    coordinator.send_signal(signal.SIGTERM)
    _, err = coordinator.communicate(timeout=60)
    assert coordinator.returncode == 0, err
    with Project(project) as log:
        assert log.pending() is None
        applied = log.counters()["applied"]
    assert 0 < applied < total  # it stopped early, after a whole batch
    store, _ = check_exact(project)
    assert store.size == INITIAL + applied
    assert project_status(project)["queue_depth"] == total - applied


def test_cli_status_json_and_errors(tmp_path, capsys):
    project = make_project(tmp_path / "p")
    ms.submit(project, "x", mean=_means(1)[0])
    assert main(["status", str(project), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["queue_depth"] == 1 and status["applied"] == 0 and status["dead_letters"] == 0
    assert main(["serve", str(project), "--idle-exit", "0.3", "--order", "4"]) == 0
    capsys.readouterr()
    assert main(["status", str(project)]) == 0
    assert "applied      1" in capsys.readouterr().out
    for argv in (["serve", str(tmp_path / "missing")], ["status", str(tmp_path / "missing")],
                 ["serve", str(project), "--queue", "kafka://x"], ["serve", str(project), "--order", "3"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("mmf-stream: error:"), err
    with pytest.raises(SystemExit):
        main(["serve", str(project), "--batch-max", "0"])
