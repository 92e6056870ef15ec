"""The router's stage queues against a real router process: credit-based hand-out to
workers (``Ready``), the queue depth it reports, priority, and departed workers."""
from __future__ import annotations

import time

import pytest
import zmq

from conftest import Unbundled, stage_reader, wait_for
from gitsieve.common import config as config_mod
from gitsieve.common.actor import control
from gitsieve.common.protocol import messages
from gitsieve.common.protocol.messages import Change, Ready
from gitsieve.common.protocol.states import ChangeKind


def change(path: str, seq: int) -> Change:
    return Change(path=path, kind=ChangeKind.WRITE, seq=seq, epoch=1.0, observed=1.0)


def queued(path: str, seq: int, priority: bool = False) -> list[bytes]:
    """A change as producers send it into a stage queue: route frame + body."""
    return messages.stage_frames(change(path, seq), priority)


@pytest.fixture
def router(workspace, actors):
    # Silent workers are forgotten after 5 heartbeat intervals: 2.5 s here.
    workspace.config("[runtime]\nheartbeat_interval = 0.5\n")
    cfg = workspace.load()
    actors("router", workspace.root)
    context = zmq.Context()
    producer = context.socket(zmq.PUSH)
    producer.linger = 0
    producer.connect(cfg.endpoints.stage_in("l2"))
    yield cfg, context, producer
    context.destroy(linger=0)


def stage_status(cfg, stage="l2") -> dict:
    return control.request(cfg, "router", "status", timeout=5).data["stages"][stage]


def receive(sock, count: int) -> list[Change]:
    got = []
    while len(got) < count:
        assert sock.poll(5000), f"only {len(got)} of {count} changes arrived"
        got.append(messages.decode(sock.recv()))
    return got


def test_a_worker_never_holds_more_than_its_window_and_the_rest_is_counted(router):
    cfg, context, producer = router
    worker = stage_reader(context, cfg, "l2", window=5)
    for seq in range(1, 51):
        producer.send_multipart(queued(f"f{seq:02d}", seq))
    wait_for(lambda: stage_status(cfg)["backlog"] == 45, 10, message="45 queued")
    assert stage_status(cfg)["workers"] == {"test-l2": {"in_flight": 5, "credit": 0}}
    assert [c.path for c in receive(worker, 5)] == [f"f{n:02d}" for n in range(1, 6)]
    assert not worker.poll(300), "more than the window was sent"
    # Taking them and saying so brings the next five, in order.
    worker.announce(received=5)
    assert [c.path for c in receive(worker, 5)] == [f"f{n:02d}" for n in range(6, 11)]
    wait_for(lambda: stage_status(cfg)["backlog"] == 40, 10, message="40 queued")
    status = control.request(cfg, "router", "status", timeout=5).data
    assert status["queue"] == 40


def test_workers_share_by_credit_and_a_departed_worker_gets_nothing_more(router):
    cfg, context, producer = router
    first = stage_reader(context, cfg, "l2", window=4, name="first")
    second = stage_reader(context, cfg, "l2", window=4, name="second")
    wait_for(lambda: len(stage_status(cfg)["workers"]) == 2, 10, message="two workers")
    for seq in range(1, 21):
        producer.send_multipart(queued(f"f{seq:02d}", seq))
    wait_for(lambda: stage_status(cfg)["backlog"] == 12, 10, message="12 queued")
    taken_first = receive(first, 4)
    receive(second, 4)
    # The first worker goes away holding 4 changes; the second takes all that is left.
    first.close(linger=0)
    taken, rest = 4, []
    while taken < 16:
        second.announce(received=taken)
        batch = receive(second, 4)
        rest += batch
        taken += len(batch)
    assert not second.poll(300)
    assert {c.path for c in rest}.isdisjoint(c.path for c in taken_first)
    assert stage_status(cfg)["backlog"] == 0
    # The departed worker is forgotten once silent, its 4 changes counted as lost.
    second.announce(received=taken)
    wait_for(lambda: stage_status(cfg)["lost"] == 4, 10, message="first forgotten")
    # the one figure the health monitor passes on to the watcher
    assert control.request(cfg, "router", "status", timeout=5).data["changes_lost"] == 4
    assert list(stage_status(cfg)["workers"]) == ["second"]


def test_allow_area_changes_overtake_the_queue(router):
    cfg, context, producer = router
    for seq in range(1, 11):
        producer.send_multipart(queued(f"slow{seq}", seq))
    producer.send_multipart(queued("urgent", 11, priority=True))
    wait_for(lambda: stage_status(cfg)["backlog"] == 11, 10, message="all queued")
    worker = stage_reader(context, cfg, "l2", window=1)
    assert receive(worker, 1)[0].path == "urgent"


def test_a_bad_credit_frame_is_counted_and_the_queue_keeps_working(router):
    cfg, context, producer = router
    rogue = context.socket(zmq.DEALER)
    rogue.linger = 0
    rogue.connect(cfg.endpoints.stage_out("l2"))
    rogue.send(b"garbage")
    rogue.send(messages.encode(change("not-credit", 1)))
    worker = stage_reader(context, cfg, "l2", window=2)
    producer.send_multipart(queued("a", 2))
    assert receive(worker, 1)[0].path == "a"
    wait_for(lambda: control.request(cfg, "router", "status", timeout=5).data["bad_frames"]
             == 2, 10, message="both bad frames counted")
    producer.send_multipart(queued("b", 3))
    worker.announce(received=1)
    assert receive(worker, 1)[0].path == "b"


def test_a_storm_on_few_paths_queues_each_path_once_with_its_earliest_observation(router):
    cfg, context, producer = router
    for round_ in range(50):  # 500 changes of 10 paths
        for index in range(10):
            producer.send_multipart(messages.stage_frames(
                Change(path=f"agent/{index}", kind=ChangeKind.WRITE, seq=round_ * 10 + index,
                       epoch=1.0, observed=100.0 + round_), priority=False))
    wait_for(lambda: stage_status(cfg)["replaced"] == 490, 10, message="490 merged")
    assert stage_status(cfg)["backlog"] == 10
    worker = stage_reader(context, cfg, "l2", window=100)
    sock = Unbundled(worker.sock)
    got = []
    while len(got) < 10:
        assert sock.poll(5000)
        got.append(sock.recv_multipart())
    assert not sock.poll(300)
    for frames in got:
        body, earliest = frames
        change = messages.with_earliest(messages.decode(body), earliest)
        assert change.seq >= 490 and change.observed == 100.0  # newest body, first seen


def test_an_older_change_arriving_late_never_replaces_the_newer_one(router):
    """Two L2 workers judge a path's two changes in parallel; the older can reach L3's queue
    last.  It replaced the newer one there: a file's "still open for writing" change
    outlived its close, and the person's edit waited for the open-file bound or a
    reconcile (40 s in test_gauntlet_without_helper)."""
    cfg, context, producer = router
    opened = Change(path="notes/edit.md", kind=ChangeKind.WRITE, seq=200, epoch=1.0,
                    observed=100.0, open_since=5.0)
    closed = Change(path="notes/edit.md", kind=ChangeKind.WRITE, seq=201, epoch=1.0,
                    observed=100.1)
    producer.send_multipart(messages.stage_frames(closed, priority=False))
    producer.send_multipart(messages.stage_frames(opened, priority=False))
    wait_for(lambda: stage_status(cfg)["replaced"] == 1, 10, message="merged")
    worker = stage_reader(context, cfg, "l2", window=10)
    assert worker.sock.poll(5000)
    body, earliest = worker.sock.recv_multipart()
    got = messages.with_earliest(messages.decode(body), earliest)
    assert (got.seq, got.open_since, got.observed) == (201, 0.0, 100.0)
    assert not worker.sock.poll(300)
    assert stage_status(cfg)["late"] == 1


def test_a_path_not_seen_lately_overtakes_a_storm_of_hot_paths(router):
    cfg, context, producer = router
    worker = stage_reader(context, cfg, "l2", window=1)
    producer.send_multipart(queued("hot", 1))
    assert receive(worker, 1)[0].path == "hot"
    for seq in range(2, 12):  # hot again while the worker is busy: waits in the hot lane
        producer.send_multipart(queued("hot", seq))
        producer.send_multipart(queued(f"hot-{seq}", seq))
    producer.send_multipart(queued("person/edit.txt", 50))
    wait_for(lambda: stage_status(cfg)["backlog"] == 12, 10, message="all queued")
    worker.announce(received=1)
    # cold paths (first seen) in arrival order, the re-queued hot path last
    paths = []
    for taken in range(2, 14):
        paths.append(receive(worker, 1)[0].path)
        worker.announce(received=taken)
    assert paths[-1] == "hot" and paths.index("person/edit.txt") < paths.index("hot")


def test_a_persons_edit_overtakes_a_burst_of_new_files_in_another_area(router):
    """Unprivileged, no layer has named the agent yet: every change is first seen (cold).
    Areas take turns, so the edit does not wait behind the burst's 200 changes."""
    cfg, context, producer = router
    worker = stage_reader(context, cfg, "l2", window=1)
    for seq in range(1, 201):
        producer.send_multipart(queued(f"agent_out/run/out{seq:04d}.json", seq))
    producer.send_multipart(queued("notes.md", 500))
    wait_for(lambda: stage_status(cfg)["backlog"] == 200, 10, message="all queued")
    paths = []
    for taken in range(1, 5):
        paths.append(receive(worker, 1)[0].path)
        worker.announce(received=taken)
    assert "notes.md" in paths[:3], paths
    # the burst itself stays in order
    agent = [p for p in paths if p != "notes.md"]
    assert agent == sorted(agent)


def test_areas_take_turns_within_a_lane_and_keep_their_own_order():
    from gitsieve.common.actor.stage import StageQueue
    from gitsieve.common.judge.areas import area_of
    assert (area_of(b"a/b/c"), area_of(b"top.txt"), area_of(b".claude/x")) == \
        (b"a", b"", b".claude")
    queue = StageQueue("l3")
    for number in range(3):
        queue.put(f"burst/{number}".encode(), b"1", False, 1.0, 0.0)
    queue.put(b"src/main.py", b"1", False, 1.0, 0.0)
    queue.put(b"README.md", b"1", False, 1.0, 0.0)
    queue.put(b"burst/0", b"2", False, 1.0, 0.0, order=(1.0, 9))  # merged in its place
    served = []
    while (head := queue.next()) is not None:
        served.append((head[0], head[1].body))
        queue.taken(head[0], 10.0)
    assert served == [(b"burst/0", b"2"), (b"src/main.py", b"1"), (b"README.md", b"1"),
                      (b"burst/1", b"1"), (b"burst/2", b"1")]
    assert queue.backlog() == 0 and not queue.cold.areas
    # a priority change of a waiting path moves it to the urgent lane, ahead of the rest
    queue.put(b"burst/9", b"1", False, 1.0, 100.0)
    queue.put(b"docs/x", b"1", False, 1.0, 100.0)
    queue.put(b"docs/x", b"2", True, 1.0, 100.0, order=(1.0, 2))
    assert queue.next()[0] == b"docs/x" and (len(queue.urgent), len(queue.cold)) == (1, 1)


def test_the_router_remembers_only_the_paths_forwarded_within_the_hot_window():
    """Which paths were forwarded lately only matters for HOT_WINDOW seconds, but the
    router kept the last 100,000 of each stage: an agent's storm of new files held about
    20 MiB a stage there.  Older ones count as cold, as before."""
    from gitsieve.common.actor.stage import HOT_WINDOW, StageQueue
    queue = StageQueue("l2")
    for number in range(1000):  # forwarded over 10 s, a storm of new files
        path, now = f"storm/f{number:04d}".encode(), number / 100
        queue.put(path, b"1", False, now, now)
        queue.taken(path, now)
    assert len(queue.recent) <= HOT_WINDOW * 100 + 1
    newest = 999 / 100
    assert all(newest - forwarded <= HOT_WINDOW for forwarded in queue.recent.values())
    queue.put(b"storm/f0000", b"2", False, newest, newest)  # forgotten: cold again
    queue.put(b"storm/f0999", b"2", False, newest, newest)  # just forwarded: hot
    assert queue.cold.get(b"storm/f0000") and queue.normal.get(b"storm/f0999")


def test_the_backlog_cap_drops_and_counts(monkeypatch):
    from gitsieve.common.actor import stage as stage_mod
    monkeypatch.setattr(stage_mod, "MAX_BACKLOG", 2)
    queue = stage_mod.StageQueue("l2")
    assert queue.put(b"a", b"1", False, 1.0, 0.0) and queue.put(b"b", b"1", False, 1.0, 0.0)
    assert queue.put(b"a", b"2", True, 0.5, 0.0)  # a waiting path is replaced, never dropped
    assert not queue.put(b"c", b"1", False, 1.0, 0.0)
    assert queue.status()["dropped"] == 1 and queue.backlog() == 2
    path, waiting = queue.next()
    assert (path, waiting.body, waiting.observed, waiting.merged) == (b"a", b"2", 0.5, True)


def test_a_router_hearing_only_credit_announcements_rests(workspace, actors):
    """Workers' Ready counted as work: at rest the router beat every interval and woke every
    second, where every other actor beats ten times less often (fails before)."""
    workspace.config("[runtime]\nheartbeat_interval = 0.1\n")
    cfg = workspace.load()
    config_mod.prepare_runtime_dir(cfg)
    context = zmq.Context()
    try:
        beats = context.socket(zmq.PULL)  # the health monitor's end
        beats.linger = 0
        beats.bind(cfg.endpoints.heartbeat)
        actors("router", workspace.root)
        worker = context.socket(zmq.DEALER)
        worker.linger = 0
        worker.connect(cfg.endpoints.stage_out("l2"))
        intervals = []
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and max(intervals, default=0) < 0.5:
            worker.send(messages.encode(Ready(worker="l2-01", received=0, window=128,
                                              interval=0.1)))
            while beats.poll(50):
                beat = messages.decode(beats.recv())
                if beat.actor == "router":
                    intervals.append(beat.interval)
        assert max(intervals) >= 0.5, intervals  # five quiet beats in a row
        assert stage_status(cfg)["workers"], "the credit was taken all along"
    finally:
        context.destroy(linger=0)
