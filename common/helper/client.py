"""The unprivileged side of ``gitsieve helper``: connect, verify it is root, subscribe,
read attributed writes in a poll loop, and survive a helper restart.

Trust: a helper that is not root could call the person's writes SYSTEM and silently stop
their syncing, so before anything is believed the client checks that the socket file is
root's, that its directory is root's and writable by nobody else (a stale or planted
socket is ignored with one warning), and, after connecting, that ``SO_PEERCRED`` names
uid 0 (which no unprivileged process can fake).  A socket that exists but does not answer
``Hello`` within ``timeout`` gives one warning and :class:`HelperUnavailable`: the caller
falls back to its own technique.

Gaps: whenever the client cannot vouch for having seen every write it reports a
:class:`Gap`, opened (``until_mono`` None) when the helper is lost (closed connection, or
no heartbeat for ``dead_after`` seconds) and closed when it is back and every workspace is
subscribed again.  With the helper's ``Overflow`` and ``Unmarked`` events these are the
times and paths whose writes the caller must call UNKNOWN, never the person's.
"""
from __future__ import annotations

import enum
import logging
import os
import socket
import stat
import struct
import time
from dataclasses import dataclass
from typing import Union

from gitsieve.common.helper.protocol import (
    MAX_EVENT,
    PROTOCOL_VERSION,
    REPLIES_AND_EVENTS,
    Error,
    FrameReader,
    Heartbeat,
    Hello,
    Message,
    ProtocolError,
    RefusalReason,
    Refused,
    Status,
    StatusRequest,
    Subscribe,
    Subscribed,
    Sync,
    Synced,
    Welcome,
    decode,
    encode,
)
from gitsieve.common.judge.attribution.events import NameOp, Overflow, Unmarked, Write

log = logging.getLogger(__name__)

DEFAULT_SOCKET = "/run/gitsieve/helper.sock"
CONNECT_TIMEOUT = 1.0
# The helper beats every 0.5 s: four missed beats and it is taken for dead.
DEAD_AFTER = 2.0
# Reconnection attempts: after this, doubling up to the cap (a hung helper's socket accepts
# and then never answers, and each attempt waits ``timeout`` for its Hello).
RECONNECT_EVERY = 0.5
RECONNECT_CAP = 8.0
_PEERCRED = struct.Struct("=iII")
_RECV_SIZE = 256 * 1024


class HelperUnavailable(Exception):
    """No trustworthy helper answers at the socket; the caller falls back."""


class SubscriptionRefused(Exception):
    def __init__(self, reason: RefusalReason, text: str):
        super().__init__(f"{reason.describe()}: {text}")
        self.reason, self.text = reason, text


class GapReason(enum.Enum):
    CONNECTION_LOST = "the helper closed the connection"
    HELPER_SILENT = "no heartbeat from the helper"
    BAD_STREAM = "the helper sent an unreadable frame"

    def describe(self) -> str:
        return self.value


@dataclass(frozen=True)
class Gap:
    """Writes from ``since`` until ``until`` (None: still going on) were not seen, in every
    workspace of this client."""

    since_wall: float
    since_mono: float
    until_wall: float | None
    until_mono: float | None
    reason: GapReason


Event = Union[Write, NameOp, Overflow, Unmarked, Gap]


def check_socket_owner(path: str) -> None:
    """HelperUnavailable unless ``path`` is a socket of root's in a directory of root's that
    nobody else may write to (where nobody but root could have put it)."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        raise HelperUnavailable(f"no helper socket at {path}") from None
    if not stat.S_ISSOCK(info.st_mode):
        raise HelperUnavailable(f"{path} is not a socket")
    if info.st_uid != 0:
        raise HelperUnavailable(f"{path} is owned by uid {info.st_uid}, not root: ignored "
                                f"(a helper that is not root cannot be trusted)")
    directory = os.path.dirname(os.path.abspath(path))
    parent = os.lstat(directory)
    if parent.st_uid != 0 or parent.st_mode & 0o022:
        raise HelperUnavailable(f"{directory} (uid {parent.st_uid}, mode "
                                f"{stat.S_IMODE(parent.st_mode):o}) could be written by "
                                f"others: {path} ignored")


class HelperClient:
    """One connection to the helper.  Usage::

        client = HelperClient()
        client.connect()                      # HelperUnavailable: fall back
        client.subscribe("/home/ann/notes")   # SubscriptionRefused: fall back
        ... poll client.fileno() (if >= 0) with timeout client.wakeup_in() ...
        for event in client.read_events(): ...
    """

    def __init__(self, socket_path: str = DEFAULT_SOCKET, timeout: float = CONNECT_TIMEOUT,
                 name: str = "gitsieve", dead_after: float = DEAD_AFTER,
                 reconnect_every: float = RECONNECT_EVERY):
        self.socket_path, self.timeout, self.name = socket_path, timeout, name
        self.dead_after, self.reconnect_every = dead_after, reconnect_every
        self.sock: socket.socket | None = None
        self.welcome: Welcome | None = None
        self.paths: dict[str, int] = {}  # subscribed path -> its current workspace id
        self.workspaces: dict[int, str] = {}
        self.bad_frames = 0
        self.reconnects = 0
        self._reader = FrameReader(MAX_EVENT)
        self._pending: list[Event] = []
        self._last_heard = time.monotonic()
        self._lost: tuple[float, float] | None = None  # when the open gap began
        self._lost_reason = GapReason.CONNECTION_LOST
        self._next_attempt = 0.0
        self._backoff = reconnect_every
        self._warned = False
        self._token = 0

    # ----- connecting --------------------------------------------------------------------
    def connect(self) -> Welcome:
        """Connect and greet; HelperUnavailable (logged once as a warning unless there is
        simply no socket: the caller says what it does instead) when no trustworthy helper
        answers in time."""
        try:
            return self._connect()
        except HelperUnavailable as exc:
            if os.path.lexists(self.socket_path):  # there, but unusable: worth a warning
                log.warning("attribution helper not used: %s", exc)
            raise

    def _connect(self) -> Welcome:
        check_socket_owner(self.socket_path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.socket_path)
            pid, uid, _ = _PEERCRED.unpack(sock.getsockopt(socket.SOL_SOCKET,
                                                           socket.SO_PEERCRED,
                                                           _PEERCRED.size))
            if uid != 0:
                raise HelperUnavailable(f"the process serving {self.socket_path} (pid "
                                        f"{pid}) runs as uid {uid}, not root: ignored")
            self.sock, self._reader = sock, FrameReader(MAX_EVENT)
            sock.sendall(encode(Hello(PROTOCOL_VERSION, self.name)))
            reply = self._await_reply(time.monotonic() + self.timeout)
        except (OSError, HelperUnavailable) as exc:
            sock.close()
            self.sock = None
            if isinstance(exc, HelperUnavailable):
                raise
            if isinstance(exc, socket.timeout):
                raise HelperUnavailable(f"{self.socket_path} did not answer within "
                                        f"{self.timeout:g} s") from None
            raise HelperUnavailable(f"{self.socket_path}: {exc.strerror or exc}") from None
        if not isinstance(reply, Welcome):
            self._drop_socket()
            raise HelperUnavailable(f"helper refused the greeting: {_describe(reply)}")
        sock.setblocking(False)
        self.welcome = reply
        self._last_heard = time.monotonic()
        return reply

    def _await_reply(self, deadline: float) -> Message:
        """The next reply (not an event) on the blocking socket; events meanwhile are kept
        for :meth:`read_events`."""
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise socket.timeout("no reply")
            self.sock.settimeout(remaining)
            data = self.sock.recv(_RECV_SIZE)
            if not data:
                raise HelperUnavailable("the helper closed the connection")
            for message in self._decode(data):
                if isinstance(message, (Welcome, Subscribed, Refused, Error, Status, Synced)):
                    return message
                if not isinstance(message, Heartbeat):
                    self._pending.append(message)

    def _request(self, message: Message) -> Message:
        if self.sock is None:
            raise HelperUnavailable("not connected to the helper")
        self.sock.setblocking(True)
        try:
            self.sock.sendall(encode(message))
            return self._await_reply(time.monotonic() + self.timeout)
        except (OSError, HelperUnavailable) as exc:
            if self._lost is None:  # was connected: the gap starts now, reported next read
                silent = isinstance(exc, socket.timeout)
                self._pending.append(self._lose(GapReason.HELPER_SILENT if silent
                                                else GapReason.CONNECTION_LOST))
            else:  # a reconnection attempt failed: the open gap goes on
                self._drop_socket()
            raise HelperUnavailable(f"helper lost during a request: {exc}") from None
        finally:
            if self.sock is not None:
                self.sock.setblocking(False)

    def subscribe(self, workspace: str | os.PathLike) -> Subscribed:
        path = os.path.abspath(workspace)
        reply = self._request(Subscribe(os.fsencode(path)))
        if isinstance(reply, Refused):
            raise SubscriptionRefused(reply.reason, reply.text)
        if not isinstance(reply, Subscribed):
            raise HelperUnavailable(f"unexpected reply to Subscribe: {_describe(reply)}")
        self.paths[path] = reply.workspace
        self.workspaces[reply.workspace] = path
        return reply

    def sync(self) -> Synced:
        """A barrier: every write the helper's groups held when it answers has arrived (kept
        for :meth:`read_events`).  HelperUnavailable when the helper is lost meanwhile (the
        gap is then reported by the next :meth:`read_events`)."""
        self._token += 1
        reply = self._request(Sync(self._token))
        if not isinstance(reply, Synced) or reply.token != self._token:
            raise HelperUnavailable(f"unexpected reply to Sync: {_describe(reply)}")
        return reply

    def status(self) -> dict[str, int]:
        reply = self._request(StatusRequest())
        if not isinstance(reply, Status):
            raise HelperUnavailable(f"unexpected reply to Status: {_describe(reply)}")
        return reply.counters

    def close(self) -> None:
        self._drop_socket()

    def _drop_socket(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    # ----- the poll loop -----------------------------------------------------------------
    @property
    def connected(self) -> bool:
        return self.sock is not None

    def fileno(self) -> int:
        """The socket to poll for input; -1 while disconnected (poll on the timeout)."""
        return self.sock.fileno() if self.sock is not None else -1

    def wakeup_in(self) -> float:
        """Seconds until :meth:`read_events` must run even without input (to notice a silent
        helper, or to try reconnecting)."""
        now = time.monotonic()
        if self.sock is None:
            return max(0.0, self._next_attempt - now)
        return max(0.0, self._last_heard + self.dead_after - now)

    def read_events(self) -> list[Event]:
        """What arrived, without blocking; reconnects when it is time to."""
        events, self._pending = self._pending, []
        if self.sock is None:
            if time.monotonic() >= self._next_attempt:
                events.extend(self._reconnect())
            return events
        while self.sock is not None:
            try:
                data = self.sock.recv(_RECV_SIZE)
            except BlockingIOError:
                break
            except OSError as exc:
                log.warning("helper connection failed: %s", exc)
                events.append(self._lose(GapReason.CONNECTION_LOST))
                return events
            if not data:
                events.append(self._lose(GapReason.CONNECTION_LOST))
                return events
            try:
                events.extend(m for m in self._decode(data) if not isinstance(m, Heartbeat))
            except HelperUnavailable:
                events.append(self._lose(GapReason.BAD_STREAM))
                return events
        if time.monotonic() - self._last_heard > self.dead_after:
            events.append(self._lose(GapReason.HELPER_SILENT))
        return events

    def _decode(self, data: bytes) -> list[Message]:
        self._last_heard = time.monotonic()
        try:
            bodies = self._reader.feed(data)
        except ProtocolError as exc:
            raise HelperUnavailable(str(exc)) from None
        messages = []
        for body in bodies:
            try:
                messages.append(decode(body, REPLIES_AND_EVENTS, MAX_EVENT))
            except ProtocolError as exc:  # one unreadable frame; the stream is still framed
                self.bad_frames += 1
                log.warning("helper sent a bad frame: %s", exc)
        return messages

    def _lose(self, reason: GapReason) -> Gap:
        wall_now, mono_now = time.time(), time.monotonic()
        # Writes since the last thing heard may not have been sent: the gap starts there.
        since_mono = min(self._last_heard, mono_now)
        since_wall = wall_now - (mono_now - since_mono)
        self._lost = (since_wall, since_mono)
        self._drop_socket()
        self._next_attempt = mono_now
        log.warning("attribution helper lost (%s): writes from now on are unknown until it "
                    "is back", reason.describe())
        self._warned = False
        self._lost_reason = reason
        return Gap(since_wall, since_mono, None, None, reason)

    def _reconnect(self) -> list[Event]:
        self._next_attempt = time.monotonic() + self._backoff
        self._backoff = min(self._backoff * 2, RECONNECT_CAP)
        try:
            self._connect()
            for path in list(self.paths):
                self.subscribe(path)
        except (HelperUnavailable, SubscriptionRefused) as exc:
            self._drop_socket()
            if not self._warned:
                log.warning("attribution helper not back yet: %s", exc)
                self._warned = True
            return []
        self.reconnects += 1
        self._backoff = self.reconnect_every
        self.workspaces = {wid: path for path, wid in self.paths.items()}
        since_wall, since_mono = self._lost
        self._lost = None
        log.info("attribution helper back (pid %d)", self.welcome.pid)
        return [Gap(since_wall, since_mono, time.time(), time.monotonic(), self._lost_reason)]


def _describe(message: Message) -> str:
    if isinstance(message, Refused):
        return f"{message.reason.describe()}: {message.text}"
    if isinstance(message, Error):
        return f"{message.code.describe()}: {message.text}"
    return type(message).__name__
