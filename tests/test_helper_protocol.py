"""The helper protocol (common.helper.protocol) as pure logic: every message round-trips, and every malformed frame
is refused with the right ErrorCode (no sockets)."""
from __future__ import annotations

import msgpack
import pytest

from gitsieve.common.helper.protocol import (
    CLASS_OF,
    HEADER,
    MAX_EVENT,
    MAX_REQUEST,
    REPLIES_AND_EVENTS,
    REQUESTS,
    Error,
    ErrorCode,
    FrameReader,
    Heartbeat,
    Hello,
    MessageType,
    ProtocolError,
    RefusalReason,
    Refused,
    Status,
    StatusRequest,
    Subscribe,
    Subscribed,
    Sync,
    Synced,
    Unsubscribe,
    Unsubscribed,
    Welcome,
    decode,
    encode,
)
from gitsieve.common.judge.attribution.events import (
    MAX_LINEAGE,
    LineageEntry,
    NameOp,
    Op,
    Overflow,
    OverflowSource,
    Unmarked,
    Write,
)

LINEAGE = (LineageEntry(42, 1, "python3 agent.py", 1000, "0::/user.slice", False, False,
                        False),
           LineageEntry(1, 0, "/sbin/init", 0, "0::/init.scope", False, False, False))
EXAMPLES = [
    Hello(1, "gitsieve l2"), Welcome(1, "1.0", 77), Subscribe(b"/home/ann/notes"),
    Subscribed(3, b"/home/ann/notes", 12, 1), Refused(b"/x", RefusalReason.NOT_OWNER, "no"),
    Unsubscribe(3), Unsubscribed(3), StatusRequest(), Status({"bad_frames": 2}),
    Error(ErrorCode.BAD_FIELDS, "x"), Sync(7), Synced(7, 1.5, 2.5),
    Write(3, b"a/\xffname", Op.CLOSE_WRITE, 42, 1.5, 2.5, b"\x01" * 21, LINEAGE),
    NameOp(3, b"dir", Op.CREATE, 42, 1.5, 2.5, True, LINEAGE),
    Overflow(0, OverflowSource.CLIENT_BUFFER, 1.0, 2.0, 3.0, 4.0, 17),
    Unmarked(3, b"new/file", 1.0, 2.0), Heartbeat(1.0, 2.0)]


def test_every_message_type_has_an_example():
    assert {type(m) for m in EXAMPLES} == set(CLASS_OF.values())


@pytest.mark.parametrize("message", EXAMPLES, ids=lambda m: type(m).__name__)
def test_round_trip(message):
    reader = FrameReader(MAX_EVENT)
    [body] = reader.feed(encode(message))
    assert decode(body, frozenset(MessageType)) == message


def test_frames_split_anywhere_are_reassembled():
    stream = b"".join(encode(m) for m in EXAMPLES)
    reader = FrameReader(MAX_EVENT)
    bodies = []
    for start in range(0, len(stream), 7):
        bodies += reader.feed(stream[start:start + 7])
    assert [decode(b, frozenset(MessageType)) for b in bodies] == EXAMPLES
    assert len(reader) == 0


def test_a_frame_over_the_limit_is_refused_from_its_header():
    reader = FrameReader(MAX_REQUEST)
    with pytest.raises(ProtocolError) as caught:
        reader.feed(HEADER.pack(MAX_REQUEST + 1))
    assert caught.value.code is ErrorCode.FRAME_TOO_LARGE


def body(value) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


@pytest.mark.parametrize("raw, code", [
    (b"\xc1", ErrorCode.BAD_FRAME),                       # never valid msgpack
    (body([1, 1, "x"]) + b"trailing", ErrorCode.BAD_FRAME),
    (body({"type": 1}), ErrorCode.BAD_FRAME),
    (body([]), ErrorCode.BAD_FRAME),
    (body(["1", 1]), ErrorCode.BAD_FRAME),
    (body([999]), ErrorCode.UNKNOWN_TYPE),
    (body([int(MessageType.WELCOME), 1, "1.0", 5]), ErrorCode.NOT_A_REQUEST),
    (body([int(MessageType.HELLO), "1", "x"]), ErrorCode.BAD_FIELDS),
    (body([int(MessageType.HELLO), True, "x"]), ErrorCode.BAD_FIELDS),   # bool is no int
    (body([int(MessageType.HELLO), 1]), ErrorCode.BAD_FIELDS),
    (body([int(MessageType.HELLO), 1, "x", "extra"]), ErrorCode.BAD_FIELDS),
    (body([int(MessageType.HELLO), (1 << 64) - 1, "x"]), ErrorCode.BAD_FIELDS),
    (body([int(MessageType.SUBSCRIBE), "/as/text"]), ErrorCode.BAD_FIELDS),
    (body([int(MessageType.SUBSCRIBE), b"/" * 5000]), ErrorCode.BAD_FIELDS),
    (body([int(MessageType.UNSUBSCRIBE), 2.5]), ErrorCode.BAD_FIELDS),
    (body([int(MessageType.SYNC), "7"]), ErrorCode.BAD_FIELDS),
    (body([int(MessageType.SYNCED), 7, 1.0, 2.0]), ErrorCode.NOT_A_REQUEST),
    (body([1] * 1000), ErrorCode.BAD_FRAME),                 # array over the limit
    (msgpack.packb(msgpack.ExtType(1, b"x")), ErrorCode.BAD_FRAME),
])
def test_malformed_requests_are_refused_with_a_code(raw, code):
    with pytest.raises(ProtocolError) as caught:
        decode(raw, REQUESTS, MAX_REQUEST)
    assert caught.value.code is code


def test_an_enum_value_out_of_range_is_a_field_error():
    write = encode(Write(1, b"p", Op.WRITE, 1, 1.0, 1.0, b"", ()))
    values = msgpack.unpackb(write[HEADER.size:])
    values[3] = 99  # op
    with pytest.raises(ProtocolError) as caught:
        decode(body(values), REPLIES_AND_EVENTS)
    assert caught.value.code is ErrorCode.BAD_FIELDS and "Op" in caught.value.text


def test_a_lineage_longer_than_the_limit_is_refused():
    long = tuple(LINEAGE[0] for _ in range(MAX_LINEAGE + 1))
    raw = encode(Write(1, b"p", Op.WRITE, 1, 1.0, 1.0, b"", long))[HEADER.size:]
    with pytest.raises(ProtocolError):
        decode(raw, REPLIES_AND_EVENTS)
