"""Every message type round-trips through msgpack, typed trails and the route frame too;
malformed frames are rejected cleanly, and an actor counts and survives them."""
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
    Route,
    RuleMatch,
)
from gitsieve.common.protocol.states import (
    Action,
    ChangeKind,
    Content,
    L1Reason,
    L2Reason,
    L3Reason,
    Mode,
    ProcessAction,
    Technique,
    Writer,
)
from gitsieve.common.protocol.trail import ContentStep, PatternStep, ProcessStep, Suspect

SAMPLES = [
    Change(path="dir with space/é.txt", kind=ChangeKind.WRITE, seq=7, epoch=1.5, observed=2.5,
           source="reconcile", rule=RuleMatch(Action.ANALYZE, 4, "ANALYZE:x (line 4)"),
           trail=(PatternStep(Action.ANALYZE, L1Reason.RULE, "ANALYZE:x (line 4)"),)),
    Decision(path="a", kind=ChangeKind.DELETE, seq=1, epoch=1.0, observed=2.0, commit=True,
             action=Action.ALLOW, trail=(PatternStep(Action.ALLOW, L1Reason.DEFAULT),)),
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


V = messages.PROTOCOL_VERSION


@pytest.mark.parametrize("frame, reason", [
    (b"", "undecodable"),
    (b"\xc1", "undecodable"),
    (messages.encode(SAMPLES[0])[:-4], "undecodable"),
    (msgpack.packb({"a": 1}), "envelope"),
    (msgpack.packb([99, "Change", {}]), "protocol version"),
    (msgpack.packb([1, "Change", {}]), "protocol version"),  # version 1 is gone
    (msgpack.packb([V, "NoSuchType", {}]), "unknown message type"),
    (msgpack.packb([V, "Batch", [1, 2]]), "expected a map"),
    (msgpack.packb([V, "Change", {"path": "a"}]), "missing field"),
    (msgpack.packb([V, "ControlRequest", {"command": 5}]), "expected str"),
    (msgpack.packb([V, "ControlRequest", {"command": "x", "evil": 1}]), "unknown fields"),
    (msgpack.packb([V, "Batch", {"batch_id": True, "paths": [], "observed": [],
                                 "created": 1.0}]), "integer"),
    (msgpack.packb([V, "Batch", {"batch_id": 1, "paths": [1], "observed": [],
                                 "created": 1.0}]), "expected str"),
])
def test_malformed_frames_raise_bad_message(frame, reason):
    with pytest.raises(BadMessage, match=reason):
        messages.decode(frame)


@pytest.mark.parametrize("path", ["", "/etc/passwd", "../x", "a/../../b", "a\0b",
                                  "a/" + "x" * 256])
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
    with pytest.raises(BadMessage, match="'chmod' is not a ChangeKind"):
        messages.decode(messages.encode(dataclasses.replace(SAMPLES[0], kind="chmod")))


def test_size_limits_are_enforced():
    with pytest.raises(BadMessage, match="exceeds"):
        messages.decode(b"\x00" * (messages.MAX_FRAME_BYTES + 1))
    huge_string = msgpack.packb([V, "ControlRequest", {"command": "x" * (2 * 1024 * 1024)}])
    with pytest.raises(BadMessage):
        messages.decode(huge_string)


def test_encode_refuses_non_messages():
    with pytest.raises(TypeError):
        messages.encode({"not": "a message"})


# ----- typed trails ---------------------------------------------------------------------------
FULL_TRAIL = (
    PatternStep(Action.ANALYZE, L1Reason.RULE, "ANALYZE:x (line 4)", learned=True),
    ProcessStep(Writer.SYSTEM, L2Reason.IDENTIFIED, Mode.FANOTIFY, technique=Technique.FANOTIFY,
                pid=42, cmdline="agent --run", confidence=0.9, ancestor_pid=7,
                ancestor_cmdline="claude-autonomous", matched_by="claude-.*",
                did=ProcessAction.MOVED_INTO_PLACE, writes=3, writes_until=12.5,
                io_suspects=(Suspect(43, "indexer"), Suspect(44, "odd \udcff name")),
                repeated=True),
    ContentStep(Content.USER, L3Reason.JSON_CHANGED, masked="ab" * 20),
)
# The enum-typed fields of each step type.
ENUM_FIELDS = {
    PatternStep: {"action": Action, "reason": L1Reason},
    ProcessStep: {"verdict": Writer, "reason": L2Reason, "mode": Mode, "technique": Technique,
                  "did": ProcessAction},
    ContentStep: {"verdict": Content, "reason": L3Reason},
}


def _with_trail(kind, trail):
    sample = next(m for m in SAMPLES if type(m) is kind)
    return dataclasses.replace(sample, trail=trail)


@pytest.mark.parametrize("kind", [Change, Decision])
def test_typed_trail_round_trip(kind):
    message = _with_trail(kind, FULL_TRAIL)
    frame = messages.encode(message)
    decoded = messages.decode(frame)
    assert decoded == message
    # typed all the way down: equal strings are not enough (StrEnum == str)
    assert [type(step) for step in decoded.trail] == [PatternStep, ProcessStep, ContentStep]
    for step in decoded.trail:
        for name, enum_type in ENUM_FIELDS[type(step)].items():
            assert type(getattr(step, name)) is enum_type, name
    suspects = decoded.trail[1].io_suspects
    assert type(suspects) is tuple and [type(s) for s in suspects] == [Suspect, Suspect]
    assert suspects[1].cmdline == "odd \udcff name"  # not UTF-8: survives the trip
    assert type(decoded.trail[1].writes_until) is float
    # on the wire a step is [layer, {field: plain value}]
    wire = msgpack.unpackb(frame, raw=False, unicode_errors="surrogateescape")[2]["trail"]
    assert [layer for layer, _ in wire] == ["L1", "L2", "L3"]
    assert wire[0][1] == {"action": "ANALYZE", "reason": "rule", "detail": "ANALYZE:x (line 4)",
                          "learned": True}
    assert wire[1][1]["did"] == "moved into place" and wire[1][1]["technique"] == "fanotify"
    assert wire[1][1]["io_suspects"] == [{"pid": 43, "cmdline": "indexer"},
                                         {"pid": 44, "cmdline": "odd \udcff name"}]


@pytest.mark.parametrize("step", FULL_TRAIL, ids=lambda step: type(step).__name__)
def test_every_enum_value_of_every_step_field_round_trips(step):
    for name, enum_type in ENUM_FIELDS[type(step)].items():
        for value in enum_type:
            message = _with_trail(Change, (dataclasses.replace(step, **{name: value}),))
            decoded = messages.decode(messages.encode(message))
            assert decoded == message
            assert type(getattr(decoded.trail[0], name)) is enum_type


def test_optional_step_fields_round_trip_as_none():
    bare = ProcessStep(Writer.UNKNOWN, L2Reason.NO_WRITER_SEEN, Mode.PSUTIL)
    assert (bare.technique, bare.pid, bare.did, bare.writes_until, bare.io_suspects) == (
        None, None, None, None, ())
    for step in (bare, ContentStep(Content.SYSTEM, L3Reason.VOLATILE_TOKENS)):
        message = _with_trail(Decision, (step,))
        assert messages.decode(messages.encode(message)) == message


L2_WIRE = {"verdict": "SYSTEM", "reason": "identified", "mode": "fanotify"}


def _frame_with_trail(kind, trail_wire) -> bytes:
    body = msgpack.unpackb(messages.encode(_with_trail(kind, ())), raw=False)[2]
    body["trail"] = trail_wire
    return msgpack.packb([V, kind.__name__, body])


@pytest.mark.parametrize("trail, reason", [
    # enum values that are not members (or members of another enum)
    ([["L1", {"action": "MAYBE", "reason": "rule"}]], "'MAYBE' is not a Action"),
    ([["L1", {"action": "ALLOW", "reason": "because"}]], "'because' is not a L1Reason"),
    ([["L3", {"verdict": "UNKNOWN", "reason": "new-file"}]], "'UNKNOWN' is not a Content"),
    ([["L3", {"verdict": "USER", "reason": "rule"}]], "'rule' is not a L3Reason"),
    ([["L2", {**L2_WIRE, "mode": "inotify"}]], "'inotify' is not a Mode"),
    ([["L2", {**L2_WIRE, "technique": "guess"}]], "technique"),
    ([["L2", {**L2_WIRE, "did": "chmod"}]], "did"),
    ([["L1", {"action": 1, "reason": "rule"}]], "expected a Action value"),
    # unknown layers and misshapen steps
    ([["L9", {"action": "ALLOW", "reason": "rule"}]], "unknown trail layer 'L9'"),
    ([[5, {}]], "unknown trail layer"),
    ([{"layer": "L1", "verdict": "ALLOW"}], r"a trail step is \[layer, fields\]"),  # old dicts
    ([["L1"]], r"a trail step is \[layer, fields\]"),
    ([["L1", ["ALLOW", "rule"]]], "expected a map"),
    ([["L1", {"action": "ALLOW"}]], "missing field 'reason'"),
    ([["L1", {"action": "ALLOW", "reason": "rule", "evil": 1}]], "unknown fields"),
    ({"L1": {}}, "expected a list"),
    # fields of the wrong type
    ([["L1", {"action": "ALLOW", "reason": "rule", "learned": "yes"}]], "expected bool"),
    ([["L1", {"action": "ALLOW", "reason": "rule", "detail": 5}]], "expected str"),
    ([["L2", {**L2_WIRE, "pid": "42"}]], "pid"),
    ([["L2", {**L2_WIRE, "pid": True}]], "pid"),
    ([["L2", {**L2_WIRE, "confidence": True}]], "expected a number"),
    ([["L2", {**L2_WIRE, "writes": 1.5}]], "expected int"),
    ([["L3", {"verdict": "USER", "reason": "new-file", "masked": 5}]], "masked"),
    # nested Suspect tuples
    ([["L2", {**L2_WIRE, "io_suspects": {"pid": 1}}]], "expected a list"),
    ([["L2", {**L2_WIRE, "io_suspects": [{"pid": "1", "cmdline": "x"}]}]], "expected int"),
    ([["L2", {**L2_WIRE, "io_suspects": [{"pid": 1}]}]], "missing field 'cmdline'"),
    ([["L2", {**L2_WIRE, "io_suspects": [[1, "x"]]}]], "expected a map"),
])
@pytest.mark.parametrize("kind", [Change, Decision])
def test_bad_trail_steps_are_bad_messages(kind, trail, reason):
    good = messages.decode(_frame_with_trail(kind, [["L2", L2_WIRE]]))  # the frame is sound
    assert good.trail == (ProcessStep(Writer.SYSTEM, L2Reason.IDENTIFIED, Mode.FANOTIFY),)
    with pytest.raises(BadMessage, match=reason):
        messages.decode(_frame_with_trail(kind, trail))


def test_a_bad_rule_match_is_a_bad_message():
    body = msgpack.unpackb(messages.encode(SAMPLES[0]), raw=False)[2]
    for rule in ({"action": "MAYBE", "line": 4, "text": "x"},
                 {"action": "ALLOW", "line": "4", "text": "x"},
                 {"action": "ALLOW", "line": 4}, "ALLOW:x"):
        body["rule"] = rule
        with pytest.raises(BadMessage, match="Change.rule"):
            messages.decode(msgpack.packb([V, "Change", body]))


# ----- the route frame ----------------------------------------------------------------------
@pytest.mark.parametrize("priority", [True, False])
@pytest.mark.parametrize("path", ["a", "dir with space/é.txt", "bad\udcffname", "x/" * 100 + "y"])
def test_stage_frames_carry_a_route_and_the_change(priority, path):
    change = dataclasses.replace(SAMPLES[0], path=path)
    route_frame, body = messages.stage_frames(change, priority)
    raw_path = path.encode("utf-8", "surrogateescape")
    route = Route(priority, raw_path, change.observed, change.epoch, change.seq)
    assert route.order == (change.epoch, change.seq)
    assert route_frame == route.encode()
    assert route_frame[:1] == (b"\1" if priority else b"\0")
    assert route_frame.endswith(raw_path)
    assert Route.decode(route_frame) == route
    assert messages.decode(body) == change
    assert Route.decode(bytearray(route_frame)) == route


def test_longest_route_frame_passes():
    longest = Route(False, b"x" * messages.PATH_MAX, 1.5, 3.0, 2 ** 64 - 1).encode()
    assert Route.decode(longest) == Route(False, b"x" * messages.PATH_MAX, 1.5, 3.0, 2 ** 64 - 1)


@pytest.mark.parametrize("frame", [
    b"",
    b"\x02" + bytes(24) + b"a",                # not a priority byte
    b"a/b",                                     # a path without its priority byte
    b"\x01" + bytes(24),                        # no path
    b"\x01" + bytes(8) + b"a",                  # the frame before it carried the order
    b"\x01" + bytes(24) + b"x" * (messages.PATH_MAX + 1),  # longer than any path
    b"\x01" + b"\x7f\xf0" + bytes(22) + b"a",  # observed is infinite
    b"\x01" + bytes(8) + b"\xff\xf0" + bytes(14) + b"a",  # epoch is -infinity
    messages.encode(SAMPLES[0]),                # a message body where the route belongs
], ids=["empty", "bad-priority", "no-priority", "no-path", "no-order", "too-long", "infinite",
        "bad-epoch", "body"])
def test_bad_route_frames_are_bad_messages(frame):
    with pytest.raises(BadMessage, match="route frame"):
        Route.decode(frame)


def test_a_merged_change_keeps_the_earliest_observation():
    change = dataclasses.replace(SAMPLES[0], observed=100.0)
    assert messages.with_earliest(change, messages.earliest_frame(40.0)).observed == 40.0
    assert messages.with_earliest(change, messages.earliest_frame(140.0)) == change
    with pytest.raises(BadMessage):
        messages.with_earliest(change, b"short")


@pytest.mark.parametrize("message", SAMPLES, ids=lambda m: type(m).__name__)
def test_evolve_is_dataclasses_replace(message):
    """The hot-path copy equals dataclasses.replace, on the wire too, and leaves the
    original alone."""
    name = dataclasses.fields(message)[0].name
    value = getattr(message, name)
    changed = messages.evolve(message, **{name: value})
    assert changed == dataclasses.replace(message, **{name: value})
    assert changed is not message and messages.encode(changed) == messages.encode(message)
    if isinstance(message, Change):
        step = PatternStep(Action.BLOCK, L1Reason.RULE, "BLOCK:x")
        moved = messages.evolve(message, trail=(step,), observed=1.0)
        assert moved == dataclasses.replace(message, trail=(step,), observed=1.0)
        assert message.trail != (step,) and message.observed == 2.5
        assert messages.decode(messages.encode(moved)) == moved


def test_evolve_refuses_a_field_the_class_has_not():
    with pytest.raises(TypeError, match="no field colour"):
        messages.evolve(SAMPLES[0], colour="red")


def test_a_route_frame_is_not_a_message():
    with pytest.raises(BadMessage):
        messages.decode(Route(True, b"a").encode())


# ----- batch paths ----------------------------------------------------------------------------
@pytest.mark.parametrize("path, reason", [
    ("/etc/passwd", "absolute path"),
    ("../x", "leaves the workspace"),
    ("a/../b", "leaves the workspace"),
    ("a/..", "leaves the workspace"),
    ("a/" + "x" * 256, "too long"),
    ("é" * 128, "too long"),  # 128 characters, but 256 bytes
    ("x/" * 2048 + "y", "too long"),  # short components, over PATH_MAX in all
    ("", "empty"),
    ("a\0b", "NUL"),
])
def test_batch_with_an_invalid_path_is_a_bad_message(path, reason):
    batch = Batch(batch_id=1, paths=("ok", path), observed=(1.0, 2.0), created=3.0)
    with pytest.raises(BadMessage, match=reason):
        messages.decode(messages.encode(batch))


@pytest.mark.parametrize("path", ["x" * 255, "é" * 127, "d/" + "x" * 255, "..x/a..b"])
def test_batch_paths_at_the_limits_pass(path):
    batch = Batch(batch_id=1, paths=(path,), observed=(1.0,), created=3.0)
    assert messages.decode(messages.encode(batch)) == batch


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
        # a change travels as [route, body]: one frame alone is bad, whatever it holds
        for frame in (b"garbage", msgpack.packb([V, "Nope", {}]),
                      messages.encode(SAMPLES[2])):  # a valid message of the wrong type
            push.send(frame)
        push.send_multipart([b"two", b"frames"])  # no route frame
        push.send_multipart([b"\x02a", messages.encode(SAMPLES[0])])  # a bad priority byte
        push.send_multipart([*messages.stage_frames(SAMPLES[0], False), b"extra"])
        push.send_multipart(messages.stage_frames(SAMPLES[0], priority=True))
        assert pull.poll(10_000), "router stopped forwarding after bad frames"
        assert messages.decode(pull.recv()) == SAMPLES[0]
        status = control.request(cfg, "router", "status", timeout=5).data
        assert status["bad_frames"] == 6
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
