"""Every message type round-trips through msgpack; malformed frames are rejected cleanly,
and an actor counts and survives them."""
import dataclasses

import msgpack
import pytest
import zmq

from conftest import stage_reader
from gitsieve.common.actor import control
from gitsieve.common.protocol import messages
from gitsieve.common.protocol.messages import (
    BadMessage,
    Batch,
    Change,
    CommitReport,
    ControlReply,
    ControlRequest,
    Decision,
    HealthStatus,
    Heartbeat,
    Ready,
)

SAMPLES = [
    Change(path="dir with space/é.txt", kind="write", seq=7, epoch=1.5, observed=2.5,
           source="reconcile", priority=True,
           trail=({"layer": "L1", "verdict": "ANALYZE", "reason": "ANALYZE:x"},)),
    Decision(path="a", kind="delete", seq=1, epoch=1.0, observed=2.0, commit=True,
             action="ALLOW", trail=({"layer": "L1"},)),
    Batch(batch_id=3, paths=("a", "b/c"), observed=(1.0, 2.0), created=3.0),
    CommitReport(batch_ids=(1, 2), paths=("a",), commit="ab" * 20, pushed=True, error="",
                 finished=4.0, held=("x",)),
    CommitReport(batch_ids=(), paths=(), commit=None, pushed=False, error="boom", finished=1.0),
    HealthStatus(ok=False, reasons=("merge in progress",), free_mb=12.5, operation="merge",
                 checked=9.0, actors={"watcher": {"pid": 1}}),
    Ready(worker="l2-01", received=12, window=256),
    Heartbeat(actor="l2-01", pid=42, sent=1.0, state="running", stats={"messages_in": 3}),
    ControlRequest(command="status", args={"path": "a"}),
    ControlReply(ok=False, data={}, error="nope"),
]


@pytest.mark.parametrize("message", SAMPLES, ids=lambda m: type(m).__name__)
def test_round_trip(message):
    assert messages.decode(messages.encode(message)) == message


def test_every_message_type_has_a_sample():
    assert {type(m) for m in SAMPLES} == set(messages.MESSAGE_TYPES.values())


@pytest.mark.parametrize("frame, reason", [
    (b"", "undecodable"),
    (b"\xc1", "undecodable"),
    (messages.encode(SAMPLES[0])[:-4], "undecodable"),
    (msgpack.packb({"a": 1}), "envelope"),
    (msgpack.packb([99, "Change", {}]), "protocol version"),
    (msgpack.packb([1, "NoSuchType", {}]), "unknown message type"),
    (msgpack.packb([1, "Batch", [1, 2]]), "not a map"),
    (msgpack.packb([1, "Change", {"path": "a"}]), "missing field"),
    (msgpack.packb([1, "ControlRequest", {"command": 5}]), "expected str"),
    (msgpack.packb([1, "ControlRequest", {"command": "x", "evil": 1}]), "unknown fields"),
    (msgpack.packb([1, "Batch", {"batch_id": True, "paths": [], "observed": [],
                                 "created": 1.0}]), "integer"),
    (msgpack.packb([1, "Batch", {"batch_id": 1, "paths": [1], "observed": [],
                                 "created": 1.0}]), "expected str"),
])
def test_malformed_frames_raise_bad_message(frame, reason):
    with pytest.raises(BadMessage, match=reason):
        messages.decode(frame)


@pytest.mark.parametrize("path", ["", "/etc/passwd", "../x", "a/../../b", "a\0b"])
@pytest.mark.parametrize("kind", [Change, Decision])
def test_unsafe_paths_are_bad_messages(kind, path):
    sample = next(m for m in SAMPLES if type(m) is kind)
    frame = messages.encode(dataclasses.replace(sample, path=path))
    with pytest.raises(BadMessage):
        messages.decode(frame)


@pytest.mark.parametrize("path", ["a", "dir/a b.json", "..hidden", "a/..b", "weird\nname"])
def test_safe_odd_paths_pass(path):
    change = dataclasses.replace(SAMPLES[0], path=path)
    assert messages.decode(messages.encode(change)) == change


def test_negative_credit_is_a_bad_message():
    frame = msgpack.packb([messages.PROTOCOL_VERSION, "Ready",
                           {"worker": "l2-01", "received": -1, "window": 8}])
    with pytest.raises(BadMessage, match="negative"):
        messages.decode(frame)


def test_unknown_change_kind_is_a_bad_message():
    with pytest.raises(BadMessage, match="unknown kind"):
        messages.decode(messages.encode(dataclasses.replace(SAMPLES[0], kind="chmod")))


def test_size_limits_are_enforced():
    with pytest.raises(BadMessage, match="exceeds"):
        messages.decode(b"\x00" * (messages.MAX_FRAME_BYTES + 1))
    huge_string = msgpack.packb([1, "ControlRequest", {"command": "x" * (2 * 1024 * 1024)}])
    with pytest.raises(BadMessage):
        messages.decode(huge_string)


def test_encode_refuses_non_messages():
    with pytest.raises(TypeError):
        messages.encode({"not": "a message"})


def test_actor_counts_bad_frames_and_keeps_working(workspace, actors):
    """A real router process gets garbage on a pipeline socket and on its control socket."""
    cfg = workspace.load()
    actors("router", workspace.root)
    context = zmq.Context.instance()
    push = context.socket(zmq.PUSH)
    push.linger = 0
    push.connect(cfg.endpoints.stage_in("l1"))
    pull = stage_reader(context, cfg, "l1")
    try:
        for frame in (b"garbage", msgpack.packb([1, "Nope", {}]),
                      messages.encode(SAMPLES[2])):  # a valid message of the wrong type
            push.send(frame)
        push.send_multipart([b"two", b"frames"])
        push.send(messages.encode(SAMPLES[0]))
        assert pull.poll(10_000), "router stopped forwarding after bad frames"
        assert messages.decode(pull.recv()) == SAMPLES[0]
        status = control.request(cfg, "router", "status", timeout=5).data
        assert status["bad_frames"] == 4
        assert status["state"] == "running"
        # garbage on the control socket gets an error reply, not a dead actor
        req = context.socket(zmq.REQ)
        req.linger = 0
        req.connect(cfg.endpoints.control("router"))
        req.send(b"\x93\x01")
        assert req.poll(5000)
        reply = messages.decode(req.recv())
        assert not reply.ok and "bad request" in reply.error
        req.close()
        assert control.request(cfg, "router", "nosuch", timeout=5).ok is False
    finally:
        push.close()
        pull.close()
