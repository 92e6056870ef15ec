"""The router's stage queues against a real router process: credit-based hand-out to
workers (``Ready``), the queue depth it reports, priority, and departed workers."""
from __future__ import annotations

import pytest
import zmq

from conftest import stage_reader, wait_for
from gitsieve.common.actor import control
from gitsieve.common.protocol import messages
from gitsieve.common.protocol.messages import Change
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
