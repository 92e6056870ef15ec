"""Bursts travel bundled: what an actor sends to one PUSH socket within BUNDLE_WAIT (or a
poll round) goes as one ZeroMQ message, and so does what the router hands one worker in a
round.  Every receiver takes a bundle's messages one by one, and a malformed bundle is a
bad frame, counted and survived."""
from __future__ import annotations

import struct
import time

import pytest
import zmq

from conftest import stage_reader, wait_for
from gitsieve.common.actor import control
from gitsieve.common.actor.base import Actor
from gitsieve.common.protocol import messages
from gitsieve.common.protocol.messages import BadMessage, Change
from gitsieve.common.protocol.states import Action, ChangeKind


def change(path: str, seq: int) -> Change:
    return Change(path=path, kind=ChangeKind.WRITE, seq=seq, epoch=1.0, observed=100.0 + seq)


# ----- the wire ------------------------------------------------------------------------
def test_a_bundle_gives_back_each_message_with_its_own_frames():
    queued = [messages.stage_frames(change("a", 1), False), [b"one frame"],
              [b"r", b"", messages.earliest_frame(5.0)]]
    frames = messages.bundle(queued)
    # one ZeroMQ message of four parts, however many messages it carries
    assert len(frames) == 4 and frames[0] == messages.BUNDLE
    assert frames[1] == bytes([2, 1, 3])
    assert messages.unbundle(frames) == queued


def _sizes(*sizes: int) -> bytes:
    return struct.pack(f"<{len(sizes)}I", *sizes)


@pytest.mark.parametrize("frames", [
    [messages.BUNDLE],                                               # no counts
    [messages.BUNDLE, b"", b"", b""],                                # no message
    [messages.BUNDLE, bytes([2]), _sizes(1), b"a"],                  # fewer sizes than counted
    [messages.BUNDLE, bytes([1]), _sizes(1, 1), b"ab"],              # more
    [messages.BUNDLE, bytes([1]), _sizes(1) + b"\0", b"a"],          # a size cut short
    [messages.BUNDLE, bytes([1]), _sizes(2), b"a"],                  # payload shorter than sizes
    [messages.BUNDLE, bytes([1]), _sizes(1), b"ab"],                 # longer
    [messages.BUNDLE, bytes([1]), _sizes(2 ** 32 - 1), b"a"],        # a size past the payload
    [messages.BUNDLE, bytes([0, 1]), _sizes(1), b"a"],               # a message of no frame
    [messages.BUNDLE, bytes([4]), _sizes(1, 1, 1, 1), b"abcd"],      # frames a message never has
    [messages.BUNDLE, bytes([1] * (messages.MAX_BUNDLED + 1)),
     _sizes(*[1] * (messages.MAX_BUNDLED + 1)), b"x" * (messages.MAX_BUNDLED + 1)],  # too many
    [messages.BUNDLE, bytes([1]), _sizes(1), b"a", b"extra"],        # a part too many
    [messages.BUNDLE, bytes([1]), b"x"],                             # the old layout
], ids=["no-counts", "empty", "short", "long", "cut-size", "short-payload", "long-payload",
        "huge-size", "zero", "four", "too-many", "five-parts", "three-parts"])
def test_a_malformed_bundle_is_refused(frames):
    with pytest.raises(BadMessage):
        messages.unbundle(frames)


def test_no_message_and_no_route_frame_starts_like_a_bundle():
    assert messages.encode(change("a", 1))[:1] != messages.BUNDLE[:1]
    route = messages.stage_frames(change("a", 1), True)[0]
    assert route[:1] == b"\1" and messages.BUNDLE[:1] not in (b"\0", b"\1")


def test_a_published_bundle_keeps_its_topic_and_gives_back_each_frame():
    assert messages.published(b"dP", [b"one"]) == [b"dP", b"one"]
    frames = messages.published(b"dP", [b"one", b"two", b"three"])
    assert frames[0] == b"dP" and frames[1] == messages.BUNDLE  # a SUB filters on frame 0
    assert messages.topic_parts(frames) == [[b"dP", b"one"], [b"dP", b"two"],
                                            [b"dP", b"three"]]
    assert messages.topic_parts([b"d", b"x"]) == [[b"d", b"x"]]


@pytest.mark.parametrize("frames", [
    [b"d"], [b"d", b"x", b"y"],                            # not [topic, frame]
    [b"d", *messages.bundle([[b"a", b"b"]])],              # a message of two frames
    [b"d", messages.BUNDLE, bytes([1, 1]), _sizes(1), b"a"],  # counts off
], ids=["one-frame", "three-frames", "two-frame-part", "short"])
def test_a_malformed_published_message_is_refused(frames):
    with pytest.raises(BadMessage):
        messages.topic_parts(frames)


# ----- an actor's sending half ---------------------------------------------------------
class _Sender(Actor):
    name = "bundle-test"


@pytest.fixture
def sender(workspace):
    actor = _Sender(workspace.load())
    endpoint = f"ipc://{workspace.root}/bundle.sock"
    pull = actor._socket(zmq.PULL, 1000)
    pull.bind(endpoint)
    push = actor.connect(zmq.PUSH, endpoint)
    yield actor, push, pull
    actor.close()


def received(pull) -> list[list[bytes]]:
    """Each ZeroMQ message that arrived (a bundle as its frames)."""
    got = []
    while pull.poll(500):
        got.append(pull.recv_multipart())
    return got


def test_a_burst_to_one_socket_goes_as_one_bundle_and_is_counted_per_message(sender):
    actor, push, pull = sender
    sent = [messages.stage_frames(change(f"agent/{n}", n), False) for n in range(20)]
    for frames in sent:
        assert actor._send_frames(push, frames, "Change")
    assert not pull.poll(50)  # waiting for the end of the round
    actor.flush_outbox()
    arrived = received(pull)
    assert len(arrived) == 1 and messages.unbundle(arrived[0]) == sent
    assert actor.stats["messages_out"] == 20


def test_a_lone_message_goes_as_itself_and_a_priority_change_goes_at_once(sender):
    actor, push, pull = sender
    actor._send_frames(push, [messages.encode(change("a", 1))], "Change")
    actor.flush_outbox()
    assert received(pull) == [[messages.encode(change("a", 1))]]
    waiting = messages.stage_frames(change("agent/x", 2), False)
    person = change("notes/mine.md", 3)
    actor._send_frames(push, waiting, "Change")
    actor.send_change(push, person, priority=True)  # nothing waits for the round's end
    arrived = received(pull)
    assert [messages.unbundle(frames) for frames in arrived] == [
        [waiting, messages.stage_frames(person, True)]]


def test_a_message_waits_no_longer_than_the_bundle_wait(sender, monkeypatch):
    actor, push, pull = sender
    clock = [1000.0]
    monkeypatch.setattr("gitsieve.common.actor.base.time.perf_counter", lambda: clock[0])
    actor._send_frames(push, [b"first"], "x")
    clock[0] += 0.004
    actor._send_frames(push, [b"second"], "x")
    assert not pull.poll(50)
    clock[0] += 0.002  # the first has now waited past BUNDLE_WAIT: both go
    actor._send_frames(push, [b"third"], "x")
    assert [messages.unbundle(frames) for frames in received(pull)] == [
        [[b"first"], [b"second"], [b"third"]]]


# ----- receivers -----------------------------------------------------------------------
def connected(context, kind: int, endpoint: str) -> zmq.Socket:
    sock = context.socket(kind)
    sock.linger = 0
    if kind == zmq.SUB:
        sock.setsockopt(zmq.SUBSCRIBE, b"")
    sock.connect(endpoint)
    return sock


def test_the_router_queues_each_change_of_a_bundle_and_counts_a_bad_one(workspace, actors):
    """A producer's burst arrives as one bundle: each change is queued, and what the router
    hands one worker in a round goes back out as a bundle the worker takes one by one."""
    workspace.config("[runtime]\nheartbeat_interval = 0.5\n")
    cfg = workspace.load()
    actors("router", workspace.root)
    context = zmq.Context()
    try:
        producer = connected(context, zmq.PUSH, cfg.endpoints.stage_in("l2"))
        producer.send_multipart([messages.BUNDLE, bytes([2]), b"route only"])
        sent = [change(f"agent/{n}", n) for n in range(30)]
        producer.send_multipart(messages.bundle(
            [messages.stage_frames(each, False) for each in sent]))
        wait_for(lambda: control.request(cfg, "router", "status", timeout=5).data[
            "stages"]["l2"]["backlog"] == 30, 10, message="the bundle's 30 changes queued")
        assert control.request(cfg, "router", "status", timeout=5).data["bad_frames"] == 1
        worker = stage_reader(context, cfg, "l2", window=100)
        got = []
        while len(got) < 30:
            assert worker.poll(5000), f"only {len(got)} of 30 arrived"
            got.append(messages.decode(worker.recv()))
        assert sorted(c.path for c in got) == sorted(c.path for c in sent)
    finally:
        context.destroy(linger=0)


def test_the_debouncer_takes_each_decision_of_a_bundle_and_counts_a_bad_bundle(
        workspace, actors):
    cfg = workspace.load()
    actors("debouncer", workspace.root)
    context = zmq.Context()
    try:
        push = connected(context, zmq.PUSH, cfg.endpoints.decisions)
        feed = connected(context, zmq.SUB, cfg.endpoints.feed)
        wait_for(lambda: control.known_actors(cfg) and _status(cfg) is not None, 10)
        time.sleep(0.3)  # the subscription reaches the publisher
        push.send_multipart([messages.BUNDLE, bytes([1, 1]), b"only one"])
        decisions = [messages.decide(change(f"docs/{n}.md", n), True,
                                     Action.ALLOW, ()) for n in range(5)]
        push.send_multipart(messages.bundle([[messages.encode(d)] for d in decisions]))
        wait_for(lambda: _status(cfg)["messages_in"] >= 5, 10,
                 message="the bundle's five decisions taken")
        status = _status(cfg)
        assert status["bad_frames"] == 1 and status["errors"] == 0
        published = []
        while len(published) < 5 and feed.poll(5000):
            published += [messages.decode(frame).path
                          for _topic, frame in messages.topic_parts(feed.recv_multipart())]
        assert published == [d.path for d in decisions]  # on the live feed, in order
    finally:
        context.destroy(linger=0)


def _status(cfg) -> dict | None:
    try:
        return control.request(cfg, "debouncer", "status", timeout=2).data
    except control.Unreachable:
        return None
