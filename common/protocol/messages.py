"""The whole gitsieve protocol: one frozen dataclass per message, one versioned envelope.

Wire format: a msgpack array ``[PROTOCOL_VERSION, type_name, {field: value}]``.
:func:`decode` enforces explicit size limits before and during unpacking and checks
every field's type; anything off raises :class:`BadMessage`, which actors count and drop.
"""
import dataclasses
import types
import typing
from dataclasses import dataclass, field

import msgpack

PROTOCOL_VERSION = 1
MAX_FRAME_BYTES = 8 * 1024 * 1024
_UNPACK_LIMITS = dict(max_str_len=1024 * 1024, max_bin_len=1024 * 1024,
                      max_array_len=262_144, max_map_len=4096, max_ext_len=0)


class BadMessage(ValueError):
    """A frame that is not a valid message of this protocol version."""


# Change kinds seen by the pipeline.
WRITE, DELETE = "write", "delete"


@dataclass(frozen=True)
class Change:
    """A path that may have changed; travels watcher -> L1 -> L2 -> L3, gathering its trail.

    ``seq`` grows per watcher run (``epoch`` tells runs apart), so a later layer can
    tell a stale change from a newer one for the same path.
    ``trail`` holds one dict per layer: {"layer", "verdict", "reason", ...evidence}.
    """

    path: str
    kind: str
    seq: int
    epoch: float
    observed: float
    source: str = "inotify"
    priority: bool = False
    trail: tuple = ()


@dataclass(frozen=True)
class Decision:
    """A layer's final word on a change, sent to the debouncer."""

    path: str
    kind: str
    seq: int
    epoch: float
    observed: float
    commit: bool
    action: str
    trail: tuple = ()


@dataclass(frozen=True)
class Batch:
    """Paths whose quiet period is over, debouncer -> executor. ``observed`` parallels paths."""

    batch_id: int
    paths: tuple[str, ...]
    observed: tuple[float, ...]
    created: float
    # Paths committed only because the content layer saw a change by an unknown writer:
    # the executor re-checks them against HEAD right before committing (see Debouncer).
    recheck: tuple[str, ...] = ()


@dataclass(frozen=True)
class CommitReport:
    """Executor's outcome for work it did, published to whoever listens."""

    batch_ids: tuple[int, ...]
    paths: tuple[str, ...]
    commit: str | None
    pushed: bool
    error: str
    finished: float
    held: tuple[str, ...] = ()


@dataclass(frozen=True)
class Ready:
    """A layer worker's credit, worker -> router (the Paranoid Pirate's READY, with flow
    control): it has taken ``received`` changes since it started and may hold ``window``
    not yet taken, so the router sends it at most ``window - (sent - received)`` more."""

    worker: str
    received: int
    window: int


@dataclass(frozen=True)
class HealthStatus:
    ok: bool
    reasons: tuple[str, ...]
    free_mb: float
    operation: str
    checked: float
    actors: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Heartbeat:
    actor: str
    pid: int
    sent: float
    state: str
    stats: dict = field(default_factory=dict)


@dataclass(frozen=True)
class ControlRequest:
    command: str
    args: dict = field(default_factory=dict)


@dataclass(frozen=True)
class ControlReply:
    ok: bool
    data: dict = field(default_factory=dict)
    error: str = ""


def bad_path_reason(path: str) -> str | None:
    """Why ``path`` is not a workspace-relative path an actor may touch, or None if it is."""
    if not path or "\0" in path:
        return "empty or NUL in path"
    if path.startswith("/"):
        return "absolute path"
    if ".." in path.split("/"):
        return "path leaves the workspace"
    return None


def _check_change(message) -> None:
    if message.kind not in (WRITE, DELETE):
        raise BadMessage(f"{type(message).__name__}: unknown kind {message.kind!r}")
    reason = bad_path_reason(message.path)
    if reason:
        raise BadMessage(f"{type(message).__name__}: {reason}: {message.path!r}")


def _check_ready(message: Ready) -> None:
    if message.received < 0 or message.window < 0:
        raise BadMessage(f"Ready: negative count ({message.received}, {message.window})")


# Checks beyond field types, applied to every decoded message of the type.
_VALIDATORS = {Change: _check_change, Decision: _check_change, Ready: _check_ready}

MESSAGE_TYPES = {cls.__name__: cls for cls in (
    Change, Decision, Batch, CommitReport, Ready, HealthStatus, Heartbeat, ControlRequest,
    ControlReply)}
_HINTS = {cls: typing.get_type_hints(cls) for cls in MESSAGE_TYPES.values()}


def encode(message) -> bytes:
    if type(message) not in _HINTS:
        raise TypeError(f"not a protocol message: {message!r}")
    body = {f.name: getattr(message, f.name) for f in dataclasses.fields(message)}
    # surrogateescape: file names need not be UTF-8 on Linux, and must survive the trip.
    return msgpack.packb([PROTOCOL_VERSION, type(message).__name__, body], use_bin_type=True,
                         unicode_errors="surrogateescape")


def _coerce(value, hint, name: str):
    """Check ``value`` against a field annotation; return it (lists become tuples)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(hint):
            try:
                return _coerce(value, option, name)
            except BadMessage:
                continue
        raise BadMessage(f"field {name!r}: {type(value).__name__} not allowed")
    if hint is type(None):
        if value is None:
            return None
        raise BadMessage(f"field {name!r}: expected None")
    if origin is tuple or hint is tuple:
        if not isinstance(value, (list, tuple)):
            raise BadMessage(f"field {name!r}: expected a list")
        args = typing.get_args(hint)
        if args and args[-1] is Ellipsis:
            return tuple(_coerce(item, args[0], name) for item in value)
        return tuple(value)
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise BadMessage(f"field {name!r}: expected a number")
        return float(value)
    if hint is int and isinstance(value, bool):
        raise BadMessage(f"field {name!r}: expected an integer")
    if not isinstance(value, hint):
        raise BadMessage(f"field {name!r}: expected {hint.__name__}, got {type(value).__name__}")
    return value


def decode(frame: bytes):
    """Decode one frame into its message object, or raise BadMessage."""
    if not isinstance(frame, (bytes, bytearray, memoryview)):
        raise BadMessage("frame is not bytes")
    if len(frame) > MAX_FRAME_BYTES:
        raise BadMessage(f"frame of {len(frame)} bytes exceeds {MAX_FRAME_BYTES}")
    try:
        envelope = msgpack.unpackb(frame, raw=False, strict_map_key=True,
                                   unicode_errors="surrogateescape", **_UNPACK_LIMITS)
    except Exception as exc:  # msgpack raises several unrelated types for bad input
        raise BadMessage(f"undecodable frame: {type(exc).__name__}: {exc}") from None
    if not isinstance(envelope, list) or len(envelope) != 3:
        raise BadMessage("envelope is not [version, type, body]")
    version, name, body = envelope
    if version != PROTOCOL_VERSION:
        raise BadMessage(f"protocol version {version!r}, expected {PROTOCOL_VERSION}")
    cls = MESSAGE_TYPES.get(name) if isinstance(name, str) else None
    if cls is None:
        raise BadMessage(f"unknown message type {name!r}")
    if not isinstance(body, dict):
        raise BadMessage("message body is not a map")
    hints = _HINTS[cls]
    unknown = set(body) - set(hints)
    if unknown:
        raise BadMessage(f"{name}: unknown fields {sorted(map(str, unknown))}")
    values = {}
    for f in dataclasses.fields(cls):
        if f.name in body:
            values[f.name] = _coerce(body[f.name], hints[f.name], f"{name}.{f.name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise BadMessage(f"{name}: missing field {f.name!r}")
    message = cls(**values)
    validate = _VALIDATORS.get(cls)
    if validate:
        validate(message)
    return message
