"""The wire protocol between ``gitsieve helper`` (root) and unprivileged gitsieve instances.

A frame is a 4-byte big-endian length and a msgpack array ``[type, field, ...]``: the
fields of one of the frozen dataclasses below (the events are :mod:`gitsieve.common.judge.
attribution.events`'), in declaration order (enums as their ints, paths as bytes so any file
name survives, a lineage as an array of arrays).  Every frame is decoded with explicit
limits (frame size, string, bytes, array and map lengths, no ext types) and checked field by
field against the dataclass's types; what does not fit raises :class:`ProtocolError` with
an :class:`ErrorCode`, which the helper counts and answers with an ``Error``, never with a
crash.

The first request is ``Hello``; a different ``version`` is answered ``Refused(VERSION)``.
``Sync`` is a barrier: the helper reads its groups for the client's workspaces and sends
what they held before ``Synced``, so a client knows every write queued before it asked.
Pure logic: no sockets here (:mod:`.server` and :mod:`.client` own those).
"""
from __future__ import annotations

import enum
import struct
import typing
from dataclasses import dataclass, fields

import msgpack

from gitsieve.common.judge.attribution.events import (
    MAX_CGROUP,
    MAX_CMDLINE,
    MAX_LINEAGE,
    LineageEntry,
    NameOp,
    Overflow,
    Unmarked,
    Write,
)

PROTOCOL_VERSION = 1
HEADER = struct.Struct("!I")
# A request is a path and a few ints; an event carries a lineage of up to MAX_LINEAGE
# processes, each with a command line cut to MAX_CMDLINE characters.
MAX_REQUEST = 64 * 1024
MAX_PATH = 4096
MAX_TEXT = 1024
MAX_EVENT = 2 * 1024 * 1024
MAX_COUNTERS = 64
_INT64 = (-(1 << 63), (1 << 63) - 1)


class ProtocolError(ValueError):
    def __init__(self, code: "ErrorCode", text: str):
        super().__init__(f"{code.describe()}: {text}")
        self.code, self.text = code, text


class MessageType(enum.IntEnum):
    HELLO = 1
    WELCOME = 2
    SUBSCRIBE = 3
    SUBSCRIBED = 4
    REFUSED = 5
    UNSUBSCRIBE = 6
    UNSUBSCRIBED = 7
    STATUS_REQUEST = 8
    STATUS = 9
    ERROR = 10
    SYNC = 11
    SYNCED = 12
    WRITE = 20
    NAME_OP = 21
    OVERFLOW = 22
    UNMARKED = 23
    HEARTBEAT = 24


class RefusalReason(enum.IntEnum):
    VERSION = 1                 # Hello with a protocol version this helper does not speak
    NOT_OWNER = 2               # the workspace's top directory is not the client's
    NOT_A_DIRECTORY = 3         # it is a file, or its last component is a symlink
    NOT_FOUND = 4
    BAD_PATH = 5                # not absolute, NUL, too long
    NO_CAPACITY = 6             # fanotify groups or marks exhausted (sysctl fs.fanotify.*)
    TOO_MANY_SUBSCRIPTIONS = 7  # per client
    NOT_SUBSCRIBED = 8          # Unsubscribe of a workspace id the client does not hold
    UNSUPPORTED = 9             # the filesystem or kernel refuses fanotify's FID mode

    def describe(self) -> str:
        return {RefusalReason.VERSION: "protocol version not supported",
                RefusalReason.NOT_OWNER: "the workspace's top directory is not yours",
                RefusalReason.NOT_A_DIRECTORY: "not a directory (or a symlink to one)",
                RefusalReason.NOT_FOUND: "no such directory",
                RefusalReason.BAD_PATH: "not an absolute path",
                RefusalReason.NO_CAPACITY: "the helper is out of fanotify groups or marks",
                RefusalReason.TOO_MANY_SUBSCRIPTIONS: "too many subscriptions",
                RefusalReason.NOT_SUBSCRIBED: "not subscribed to that workspace",
                RefusalReason.UNSUPPORTED: "fanotify cannot watch this filesystem"}[self]


class ErrorCode(enum.IntEnum):
    FRAME_TOO_LARGE = 1  # the connection is closed after this one: framing is lost
    BAD_FRAME = 2        # not a msgpack array with an int type first
    UNKNOWN_TYPE = 3
    BAD_FIELDS = 4       # wrong count or types of fields
    NOT_A_REQUEST = 5    # a helper-to-client type sent to the helper
    HELLO_FIRST = 6
    TOO_MANY_CLIENTS = 7

    def describe(self) -> str:
        return self.name.lower().replace("_", " ")


# ----- messages ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Hello:
    version: int
    client: str  # a name for the helper's log ("gitsieve l2 /home/ann/notes")


@dataclass(frozen=True)
class Welcome:
    version: int
    helper_version: str
    pid: int


@dataclass(frozen=True)
class Subscribe:
    path: bytes


@dataclass(frozen=True)
class Subscribed:
    workspace: int  # the id events of this workspace carry
    path: bytes     # the top directory as the helper resolved it
    directories: int
    skipped: int    # directories not watched: not the client's and not world-readable


@dataclass(frozen=True)
class Refused:
    path: bytes
    reason: RefusalReason
    text: str


@dataclass(frozen=True)
class Unsubscribe:
    workspace: int


@dataclass(frozen=True)
class Unsubscribed:
    workspace: int


@dataclass(frozen=True)
class StatusRequest:
    pass


@dataclass(frozen=True)
class Status:
    counters: dict[str, int]


@dataclass(frozen=True)
class Error:
    code: ErrorCode
    text: str


@dataclass(frozen=True)
class Sync:
    """Send what your groups hold for my workspaces, then ``Synced`` with the same token."""

    token: int


@dataclass(frozen=True)
class Synced:
    token: int
    wall: float  # when the helper read its groups: every write queued before is sent
    mono: float


@dataclass(frozen=True)
class Heartbeat:
    wall: float
    mono: float


Message = typing.Union[Hello, Welcome, Subscribe, Subscribed, Refused, Unsubscribe,
                       Unsubscribed, StatusRequest, Status, Error, Sync, Synced, Write,
                       NameOp, Overflow, Unmarked, Heartbeat]
_LINEAGE_FIELDS = tuple(f.name for f in fields(LineageEntry))
TYPE_OF: dict[type, MessageType] = {
    Hello: MessageType.HELLO, Welcome: MessageType.WELCOME,
    Subscribe: MessageType.SUBSCRIBE, Subscribed: MessageType.SUBSCRIBED,
    Refused: MessageType.REFUSED, Unsubscribe: MessageType.UNSUBSCRIBE,
    Unsubscribed: MessageType.UNSUBSCRIBED, StatusRequest: MessageType.STATUS_REQUEST,
    Status: MessageType.STATUS, Error: MessageType.ERROR, Sync: MessageType.SYNC,
    Synced: MessageType.SYNCED, Write: MessageType.WRITE,
    NameOp: MessageType.NAME_OP, Overflow: MessageType.OVERFLOW,
    Unmarked: MessageType.UNMARKED, Heartbeat: MessageType.HEARTBEAT}
CLASS_OF = {kind: cls for cls, kind in TYPE_OF.items()}
REQUESTS = frozenset({MessageType.HELLO, MessageType.SUBSCRIBE, MessageType.UNSUBSCRIBE,
                      MessageType.STATUS_REQUEST, MessageType.SYNC})
REPLIES_AND_EVENTS = frozenset(MessageType) - REQUESTS


# ----- encoding ---------------------------------------------------------------------------
def _plain(value):
    if isinstance(value, tuple):  # a lineage: tuple of LineageEntry (astuple deep-copies)
        return [[getattr(entry, name) for name in _LINEAGE_FIELDS] for entry in value]
    return value


def encode(message: Message) -> bytes:
    """One frame: length header and body."""
    body = msgpack.packb([TYPE_OF[type(message)],
                          *(_plain(getattr(message, f.name)) for f in fields(message))],
                         use_bin_type=True)
    return HEADER.pack(len(body)) + body


# ----- decoding ---------------------------------------------------------------------------
def _bad(text: str) -> ProtocolError:
    return ProtocolError(ErrorCode.BAD_FIELDS, text)


def _int(value, name: str) -> int:
    if type(value) is not int or not _INT64[0] <= value <= _INT64[1]:
        raise _bad(f"{name}: expected an integer")
    return value


def _float(value, name: str) -> float:
    if type(value) not in (int, float):
        raise _bad(f"{name}: expected a number")
    return float(value)


def _bool(value, name: str) -> bool:
    if type(value) is not bool:
        raise _bad(f"{name}: expected a boolean")
    return value


def _str(limit: int):
    def check(value, name: str) -> str:
        if type(value) is not str or len(value) > limit:
            raise _bad(f"{name}: expected text of at most {limit} characters")
        return value
    return check


def _bytes(limit: int):
    def check(value, name: str) -> bytes:
        if type(value) is not bytes or len(value) > limit:
            raise _bad(f"{name}: expected bytes, at most {limit}")
        return value
    return check


def _enum(kind: type[enum.IntEnum]):
    def check(value, name: str):
        try:
            return kind(_int(value, name))
        except ValueError:
            raise _bad(f"{name}: {value!r} is no {kind.__name__}") from None
    return check


def _lineage(value, name: str) -> tuple[LineageEntry, ...]:
    if type(value) is not list or len(value) > MAX_LINEAGE:
        raise _bad(f"{name}: expected at most {MAX_LINEAGE} processes")
    return tuple(_build(LineageEntry, item, f"{name}[{n}]") for n, item in enumerate(value))


def _counters(value, name: str) -> dict[str, int]:
    if type(value) is not dict or len(value) > MAX_COUNTERS:
        raise _bad(f"{name}: expected a map of counters")
    return {_str(MAX_TEXT)(key, name): _int(count, f"{name}.{key}")
            for key, count in value.items()}


# Field checks by declared type, and the few fields whose limit differs from the type's.
_BY_TYPE = {int: _int, float: _float, bool: _bool, str: _str(MAX_TEXT),
            bytes: _bytes(MAX_PATH), dict[str, int]: _counters,
            tuple[LineageEntry, ...]: _lineage}
_BY_FIELD = {(LineageEntry, "cmdline"): _str(MAX_CMDLINE),
             (LineageEntry, "cgroup"): _str(MAX_CGROUP),
             (Write, "identity"): _bytes(MAX_TEXT)}


def _checks_of(cls) -> tuple[tuple[str, typing.Callable], ...]:
    hints = typing.get_type_hints(cls)
    found = []
    for field in fields(cls):
        declared = hints[field.name]
        check = _BY_FIELD.get((cls, field.name))
        if check is None:
            check = (_enum(declared) if isinstance(declared, type)
                     and issubclass(declared, enum.IntEnum) else _BY_TYPE[declared])
        found.append((field.name, check))
    return tuple(found)


_CHECKS = {cls: _checks_of(cls) for cls in (*CLASS_OF.values(), LineageEntry)}


def _build(cls, values, where: str):
    checks = _CHECKS[cls]
    if type(values) is not list or len(values) != len(checks):
        raise _bad(f"{where}: expected {len(checks)} fields")
    return cls(*(check(value, f"{where}.{name}")
                 for (name, check), value in zip(checks, values)))


def _limits(max_frame: int) -> dict:
    # unpackb's buffer is the frame itself, already bounded by FrameReader
    return {"max_str_len": max_frame,
            "max_bin_len": max_frame, "max_array_len": max(MAX_LINEAGE, 16),
            "max_map_len": MAX_COUNTERS, "max_ext_len": 0}


def decode(body: bytes, accepted: frozenset[MessageType],
           max_frame: int = MAX_EVENT) -> Message:
    """The message in one frame's ``body``; ProtocolError when it is not one of
    ``accepted``'s types with well-typed fields."""
    try:
        values = msgpack.unpackb(body, raw=False, use_list=True, strict_map_key=True,
                                 **_limits(max_frame))
    except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError,
            msgpack.StackError) as exc:
        raise ProtocolError(ErrorCode.BAD_FRAME, f"not msgpack: {exc}") from None
    if type(values) is not list or not values or type(values[0]) is not int:
        raise ProtocolError(ErrorCode.BAD_FRAME, "expected [type, fields...]")
    try:
        kind = MessageType(values[0])
    except ValueError:
        raise ProtocolError(ErrorCode.UNKNOWN_TYPE, f"type {values[0]}") from None
    if kind not in accepted:
        raise ProtocolError(ErrorCode.NOT_A_REQUEST, f"{kind.name} not accepted here")
    return _build(CLASS_OF[kind], values[1:], kind.name)


class FrameReader:
    """Splits a byte stream into frame bodies; raises ProtocolError(FRAME_TOO_LARGE) as soon
    as a header announces more than ``max_frame`` (the stream cannot be resynchronised)."""

    def __init__(self, max_frame: int):
        self.max_frame = max_frame
        self._buffer = bytearray()

    def __len__(self) -> int:
        return len(self._buffer)

    def feed(self, data: bytes) -> list[bytes]:
        self._buffer += data
        bodies = []
        while len(self._buffer) >= HEADER.size:
            size = HEADER.unpack_from(self._buffer)[0]
            if size > self.max_frame:
                raise ProtocolError(ErrorCode.FRAME_TOO_LARGE,
                                    f"frame of {size} bytes (limit {self.max_frame})")
            end = HEADER.size + size
            if len(self._buffer) < end:
                break
            bodies.append(bytes(self._buffer[HEADER.size:end]))
            del self._buffer[:end]
        return bodies
