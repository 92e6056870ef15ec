"""``gitsieve helper``: exact attribution for unprivileged gitsieve instances, run as root.

The helper owns what only root may open (fanotify, the proc connector) and serves what it
sees over a unix stream socket (default ``/run/gitsieve/helper.sock``, mode 0666 in a root
directory of mode 0755) in the protocol of :mod:`.protocol`:

- A client says ``Hello``, then ``Subscribe``s to workspaces.  Its uid comes from
  ``SO_PEERCRED``; it may subscribe only to a directory it owns (checked on the opened
  directory, last component not followed), unless it is root (:func:`open_workspace`).
- Each subscribed workspace gets inode marks on its directories (:class:`gitsieve.common.
  judge.attribution.marks.WorkspaceWatch`, the same class L2 uses as root); writes and name
  operations there are sent to that workspace's subscribers with the writer's lineage as
  the helper knew it when it read the event.  The helper never classifies: each client
  applies its own rules.
- ``Sync`` makes the helper read the client's workspaces' groups at once and answer after
  what they held, so a client can judge a change knowing every write queued before it.
- The proc connector is listened to only while some workspace is subscribed, and lineage
  records are kept only while they could still be a writer's ancestor
  (:class:`gitsieve.common.judge.attribution.lineage.LineageTracker`).
- Nothing a client does can block or stop the helper: every socket is non-blocking, a
  client's unsent bytes are capped (then its events are dropped and it gets an ``Overflow``
  for the gap), bad frames are counted and answered with ``Error``, and a frame announcing
  more than the request limit closes that connection only.
- A ``Heartbeat`` goes to every client each ``heartbeat`` seconds, so a client notices a
  hung helper; a dead one closes the socket.
- Signal handlers only set a flag; on exit the socket file is removed if it is still ours.
"""
from __future__ import annotations

import argparse
import errno
import logging
import os
import select
import signal
import socket
import stat
import struct
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

from gitsieve.common.helper.protocol import (
    MAX_PATH,
    MAX_REQUEST,
    PROTOCOL_VERSION,
    REQUESTS,
    Error,
    ErrorCode,
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
    Unsubscribe,
    Unsubscribed,
    Welcome,
    decode,
    encode,
)
from gitsieve.common.judge.attribution import fanotify as fan
from gitsieve.common.judge.attribution.events import (
    LineageEntry,
    Overflow,
    OverflowSource,
    lineage_entries,
)
from gitsieve.common.judge.attribution.lineage import LineageTracker
from gitsieve.common.judge.attribution.marks import NoCapacity, WorkspaceWatch

log = logging.getLogger(__name__)

HELPER_VERSION = "1.0"
DEFAULT_SOCKET = "/run/gitsieve/helper.sock"
CLIENT_BUFFER = 4 * 1024 * 1024
MAX_CLIENTS = 256
MAX_SUBSCRIPTIONS = 16
HEARTBEAT_INTERVAL = 0.5
_RECV_SIZE = 64 * 1024
_PEERCRED = struct.Struct("=iII")  # struct ucred: pid, uid, gid
_IN = select.POLLIN | select.POLLPRI
_CLOSED = select.POLLHUP | select.POLLERR | select.POLLNVAL


class HelperError(Exception):
    """The helper cannot start (its socket path is unsafe or taken)."""


@dataclass(frozen=True)
class Refusal:
    reason: RefusalReason
    text: str


def open_workspace(path: bytes, uid: int) -> int | Refusal:
    """An fd of the directory ``path`` names if ``uid`` may subscribe to it, else why not.

    The last component is opened with O_NOFOLLOW (a symlink there is refused: the link's
    owner is not the directory's) and the ownership is checked on the opened fd, so the
    directory checked is the directory watched whatever is renamed meanwhile.  Intermediate
    symlinks are followed as the kernel resolves them for anybody; the canonical path the
    helper then uses is read back from the fd.
    """
    if not path.startswith(b"/") or b"\0" in path or len(path) > MAX_PATH:
        return Refusal(RefusalReason.BAD_PATH, "give the workspace as an absolute path")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return Refusal(RefusalReason.NOT_FOUND, f"{os.fsdecode(path)} does not exist")
    except OSError as exc:
        if exc.errno in (errno.ENOTDIR, errno.ELOOP):
            return Refusal(RefusalReason.NOT_A_DIRECTORY,
                           f"{os.fsdecode(path)} is not a directory (a symlink is not "
                           f"followed: subscribe to its target)")
        return Refusal(RefusalReason.NOT_FOUND, f"{os.fsdecode(path)}: {exc.strerror}")
    info = os.fstat(fd)
    if uid != 0 and info.st_uid != uid:
        os.close(fd)
        return Refusal(RefusalReason.NOT_OWNER,
                       f"{os.fsdecode(path)} belongs to uid {info.st_uid}, not to you "
                       f"(uid {uid}): only a workspace's owner (or root) may watch it")
    return fd


@dataclass(eq=False)
class Connection:
    sock: socket.socket
    pid: int
    uid: int
    gid: int
    reader: FrameReader = field(default_factory=lambda: FrameReader(MAX_REQUEST))
    out: bytearray = field(default_factory=bytearray)
    greeted: bool = False
    workspaces: set[int] = field(default_factory=set)
    # set while this client's events are dropped: when dropping began (wall, mono)
    dropping_since: tuple[float, float] | None = None
    dropped: int = 0
    closing: bool = False  # close once ``out`` is sent (after a fatal framing error)

    def describe(self) -> str:
        return f"client pid {self.pid} uid {self.uid}"


class HelperServer:
    """The helper's event loop.  :meth:`serve` runs until :attr:`stop_requested` is set."""

    def __init__(self, socket_path: str = DEFAULT_SOCKET, client_buffer: int = CLIENT_BUFFER,
                 heartbeat: float = HEARTBEAT_INTERVAL, max_clients: int = MAX_CLIENTS):
        self.socket_path = socket_path
        self.client_buffer, self.heartbeat, self.max_clients = (client_buffer, heartbeat,
                                                                max_clients)
        self.stop_requested = False
        self.counters: Counter = Counter()
        self.clients: dict[int, Connection] = {}  # socket fd -> connection
        self.watches: dict[int, WorkspaceWatch] = {}  # workspace id -> watch
        self._watch_keys: dict[tuple[int, int, int], int] = {}  # (dev, ino, uid) -> id
        self._subscribers: dict[int, set[Connection]] = {}
        self._next_workspace = 1
        self.tracker: LineageTracker | None = None
        self._lineage_overflows = 0
        self._lineage_ok = (time.time(), time.monotonic())
        self._handlers: dict[int, Callable[[int], float | None]] = {}
        self._resting: dict[int, float] = {}  # fd -> monotonic time it is polled again
        self._poller = select.poll()
        self._dirty: set[Connection] = set()
        self._next_heartbeat = 0.0
        self._socket_ino = 0
        self.listener = self._listen()
        self._register(self.listener.fileno(), self._accept)

    # ----- the socket --------------------------------------------------------------------
    def _listen(self) -> socket.socket:
        directory = os.path.dirname(self.socket_path) or "."
        os.makedirs(directory, mode=0o755, exist_ok=True)
        info = os.lstat(directory)
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != 0 or info.st_mode & 0o022:
            raise HelperError(f"{directory} must be a directory owned by root and writable "
                              f"by nobody else (it is uid {info.st_uid}, mode "
                              f"{stat.S_IMODE(info.st_mode):o})")
        self._remove_stale()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK
                             | socket.SOCK_CLOEXEC)
        # Bound under a temporary name and renamed into place once connectable by anyone,
        # so no client ever finds the socket with the umask's mode.
        staging = f"{self.socket_path}.{os.getpid()}.new"
        try:
            sock.bind(staging)
            os.chmod(staging, 0o666)
            sock.listen(128)
            os.rename(staging, self.socket_path)
        except OSError:
            sock.close()
            if os.path.lexists(staging):
                os.unlink(staging)
            raise
        self._socket_ino = os.lstat(self.socket_path).st_ino
        return sock

    def _remove_stale(self) -> None:
        try:
            info = os.lstat(self.socket_path)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(info.st_mode):
            raise HelperError(f"{self.socket_path} exists and is not a socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.settimeout(1.0)
        try:
            probe.connect(self.socket_path)
        except OSError:  # nobody listens: a helper that died without cleaning up
            os.unlink(self.socket_path)
            return
        finally:
            probe.close()
        raise HelperError(f"another helper is serving {self.socket_path}")

    def close(self) -> None:
        for conn in list(self.clients.values()):
            self._disconnect(conn, "helper stopping")
        for workspace_id in list(self.watches):
            self._drop_watch(workspace_id)
        self.listener.close()
        try:
            if os.lstat(self.socket_path).st_ino == self._socket_ino:
                os.unlink(self.socket_path)
        except FileNotFoundError:
            log.warning("%s was already removed", self.socket_path)

    # ----- the loop ----------------------------------------------------------------------
    def add_wakeup(self, fd: int) -> None:
        """Poll ``fd`` too and drain it when readable (``signal.set_wakeup_fd``'s pipe: a
        signal then ends the poll at once, and the loop sees the handler's flag)."""
        self._register(fd, lambda _e: _drain_pipe(fd))

    def _register(self, fd: int, handler: Callable[[int], float | None],
                  events: int = _IN) -> None:
        """Call ``handler(events)`` when ``fd`` is ready.  It may return seconds for which
        ``fd`` then rests unpolled; the handler is called again when they are over (and
        returns nothing when it found nothing, so the descriptor is polled again)."""
        self._handlers[fd] = handler
        self._poller.register(fd, events)

    def _rest(self, fd: int, rest: float | None, now: float) -> None:
        """Leave ``fd`` unpolled for ``rest`` seconds (its handler is called when they are
        over), or poll it again."""
        if rest:
            if fd not in self._resting:
                self._poller.unregister(fd)
            self._resting[fd] = now + rest
        elif self._resting.pop(fd, None) is not None:
            self._poller.register(fd, _IN)

    def _unregister(self, fd: int) -> None:
        if self._handlers.pop(fd, None) is not None and self._resting.pop(fd, None) is None:
            self._poller.unregister(fd)

    def serve(self) -> None:
        log.info("helper %s serving %s (pid %d)", HELPER_VERSION, self.socket_path,
                 os.getpid())
        while not self.stop_requested:
            timeout = max(0.0, min([self._next_heartbeat, *self._resting.values()])
                          - time.monotonic())
            ready = self._poller.poll(timeout * 1000)
            woke = time.monotonic()
            due = [(fd, _IN) for fd, until in self._resting.items() if until <= woke]
            for fd, events in ready + due:
                handler = self._handlers.get(fd)
                if handler is not None:  # an earlier handler of this round may have closed it
                    self._rest(fd, handler(events), woke)
            if time.monotonic() >= self._next_heartbeat:
                self._beat()
            self._flush()

    def _drain_watch(self, watch: WorkspaceWatch) -> None:
        self._fan_out(watch, watch.drain_writes())
        self._fan_out(watch, watch.drain_names())
        self._fan_out(watch, watch.drain_backstop())

    def _beat(self) -> None:
        # the backstops are never polled: read them with every heartbeat (and every Sync)
        for watch in self.watches.values():
            self._fan_out(watch, watch.drain_backstop())
        self._next_heartbeat = time.monotonic() + self.heartbeat
        frame = encode(Heartbeat(time.time(), time.monotonic()))
        for conn in self.clients.values():
            if conn.greeted:
                self._queue(conn, frame)

    # ----- clients -----------------------------------------------------------------------
    def _accept(self, _events: int) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except BlockingIOError:
                return
            except OSError as exc:  # EMFILE and the like: the client retries
                log.error("accept: %s", exc)
                self.counters["accept_errors"] += 1
                return
            sock.setblocking(False)
            pid, uid, gid = _PEERCRED.unpack(sock.getsockopt(socket.SOL_SOCKET,
                                                             socket.SO_PEERCRED,
                                                             _PEERCRED.size))
            conn = Connection(sock, pid, uid, gid)
            self.clients[sock.fileno()] = conn
            self._register(sock.fileno(), lambda events, conn=conn: self._on_client(conn,
                                                                                    events))
            self.counters["clients_accepted"] += 1
            if len(self.clients) > self.max_clients:
                self.counters["clients_refused"] += 1
                self._reply(conn, Error(ErrorCode.TOO_MANY_CLIENTS,
                                        f"the helper serves at most {self.max_clients}"))
                conn.closing = True

    def _on_client(self, conn: Connection, events: int) -> None:
        if events & select.POLLOUT:
            self._send(conn)
        if not events & (_IN | _CLOSED) or conn.sock.fileno() < 0:
            return
        try:
            data = conn.sock.recv(_RECV_SIZE)
        except BlockingIOError:
            return
        except OSError as exc:
            self._disconnect(conn, f"receive failed: {exc}")
            return
        if not data:
            self._disconnect(conn, "closed the connection")
            return
        if conn.closing:
            return  # framing was lost: nothing after it is read
        try:
            bodies = conn.reader.feed(data)
        except ProtocolError as exc:
            bodies = []
            self._bad_frame(conn, exc)
            conn.closing = True
        for body in bodies:
            self._handle_frame(conn, body)

    def _handle_frame(self, conn: Connection, body: bytes) -> None:
        try:
            request = decode(body, REQUESTS, MAX_REQUEST)
        except ProtocolError as exc:
            self._bad_frame(conn, exc)
            return
        if not conn.greeted and not isinstance(request, Hello):
            self._bad_frame(conn, ProtocolError(ErrorCode.HELLO_FIRST, "say Hello first"))
            return
        self._DISPATCH[type(request)](self, conn, request)

    def _bad_frame(self, conn: Connection, exc: ProtocolError) -> None:
        self.counters["bad_frames"] += 1
        self.counters[f"bad_frames_{exc.code.name.lower()}"] += 1
        log.warning("%s: %s", conn.describe(), exc)
        self._reply(conn, Error(exc.code, exc.text))

    def _on_hello(self, conn: Connection, hello: Hello) -> None:
        if hello.version != PROTOCOL_VERSION:
            self._reply(conn, Refused(b"", RefusalReason.VERSION,
                                      f"this helper speaks protocol {PROTOCOL_VERSION}, "
                                      f"not {hello.version}"))
            return
        conn.greeted = True
        log.info("%s: hello from %r", conn.describe(), hello.client)
        self._reply(conn, Welcome(PROTOCOL_VERSION, HELPER_VERSION, os.getpid()))

    def _on_subscribe(self, conn: Connection, request: Subscribe) -> None:
        refusal = self._subscribe(conn, request.path)
        if refusal is not None:
            self.counters["subscriptions_refused"] += 1
            log.warning("%s: subscription to %r refused: %s", conn.describe(),
                        os.fsdecode(request.path), refusal.text)
            self._reply(conn, Refused(request.path, refusal.reason, refusal.text))

    def _subscribe(self, conn: Connection, path: bytes) -> Refusal | None:
        if len(conn.workspaces) >= MAX_SUBSCRIPTIONS:
            return Refusal(RefusalReason.TOO_MANY_SUBSCRIPTIONS,
                           f"at most {MAX_SUBSCRIPTIONS} workspaces per connection")
        opened = open_workspace(path, conn.uid)
        if isinstance(opened, Refusal):
            return opened
        info = os.fstat(opened)
        key = (info.st_dev, info.st_ino, conn.uid)
        workspace_id = self._watch_keys.get(key)
        if workspace_id is not None:
            os.close(opened)
        else:
            try:
                workspace_id = self._new_watch(opened, conn.uid, key)
            except NoCapacity as exc:
                return Refusal(RefusalReason.NO_CAPACITY, str(exc))
            except OSError as exc:
                return Refusal(RefusalReason.UNSUPPORTED, f"fanotify: {exc}")
        watch = self.watches[workspace_id]
        conn.workspaces.add(workspace_id)
        self._subscribers[workspace_id].add(conn)
        self.counters["subscriptions"] += 1
        log.info("%s: subscribed to %s (workspace %d, %d directories, %d skipped)",
                 conn.describe(), watch.root, workspace_id, watch.directories(),
                 watch.skipped)
        self._reply(conn, Subscribed(workspace_id, os.fsencode(watch.root),
                                     watch.directories(), watch.skipped))
        return None

    def _new_watch(self, root_fd: int, uid: int, key: tuple[int, int, int]) -> int:
        if self.tracker is None:
            self._start_lineage()
        workspace_id = self._next_workspace
        try:
            watch = WorkspaceWatch(workspace_id, root_fd, uid, self._lineage_of,
                                   on_batch=self._drain_lineage)
        except BaseException:
            if not self.watches:
                self._stop_lineage()
            raise
        self._next_workspace += 1
        self.watches[workspace_id] = watch
        self._watch_keys[key] = workspace_id
        self._subscribers[workspace_id] = set()
        self._register(watch.write_fd, lambda _e, w=watch: self._fan_out(w, w.drain_writes()))
        self._register(watch.name_fd, lambda _e, w=watch: self._fan_out(w, w.drain_names()))
        return workspace_id

    def _on_unsubscribe(self, conn: Connection, request: Unsubscribe) -> None:
        if request.workspace not in conn.workspaces:
            self._reply(conn, Refused(b"", RefusalReason.NOT_SUBSCRIBED,
                                      f"workspace {request.workspace}"))
            return
        self._leave(conn, request.workspace)
        self._reply(conn, Unsubscribed(request.workspace))

    def _on_status(self, conn: Connection, _request: StatusRequest) -> None:
        counters = dict(self.counters)
        counters.update(clients=len(self.clients), workspaces=len(self.watches),
                        lineage_processes=len(self.tracker) if self.tracker else 0,
                        lineage_events=self.tracker.events if self.tracker else 0,
                        fanotify_events=sum(w.events for w in self.watches.values()),
                        marked_directories=sum(w.directories() for w in self.watches.values()))
        self._reply(conn, Status(counters))

    def _on_sync(self, conn: Connection, request: Sync) -> None:
        """Read the client's workspaces' groups now: what they held goes out before the
        reply, and so does the notice of events this client had dropped."""
        for workspace_id in sorted(conn.workspaces):
            self._drain_watch(self.watches[workspace_id])
        if conn.dropping_since is not None:
            self._end_dropping(conn)
        self.counters["syncs"] += 1
        self._reply(conn, Synced(request.token, time.time(), time.monotonic()))

    _DISPATCH = {Hello: _on_hello, Subscribe: _on_subscribe, Unsubscribe: _on_unsubscribe,
                 StatusRequest: _on_status, Sync: _on_sync}

    def _leave(self, conn: Connection, workspace_id: int) -> None:
        conn.workspaces.discard(workspace_id)
        subscribers = self._subscribers.get(workspace_id)
        if subscribers is None:
            return
        subscribers.discard(conn)
        if not subscribers:
            self._drop_watch(workspace_id)

    def _drop_watch(self, workspace_id: int) -> None:
        watch = self.watches.pop(workspace_id)
        del self._subscribers[workspace_id]
        self._watch_keys = {key: wid for key, wid in self._watch_keys.items()
                            if wid != workspace_id}
        for fd in watch.fds():
            self._unregister(fd)
        log.info("workspace %d (%s): last subscriber gone, marks removed", workspace_id,
                 watch.root)
        watch.close()
        if not self.watches:
            self._stop_lineage()

    def _disconnect(self, conn: Connection, why: str) -> None:
        fd = conn.sock.fileno()
        if fd < 0:
            return
        log.info("%s: %s", conn.describe(), why)
        for workspace_id in list(conn.workspaces):
            self._leave(conn, workspace_id)
        self._unregister(fd)
        self.clients.pop(fd, None)
        self._dirty.discard(conn)
        conn.sock.close()

    # ----- sending -----------------------------------------------------------------------
    def _reply(self, conn: Connection, message: Message) -> None:
        """A reply is never dropped, but a client that does not read its replies is cut
        off once it holds twice the event buffer."""
        conn.out += encode(message)
        self._dirty.add(conn)
        if len(conn.out) > 2 * self.client_buffer:
            self._disconnect(conn, "does not read its replies")

    def _queue(self, conn: Connection, frame: bytes) -> None:
        if conn.dropping_since is not None:
            conn.dropped += 1
            self.counters["events_dropped"] += 1
            return
        if len(conn.out) + len(frame) > self.client_buffer:
            self._send(conn)  # what the socket takes now is not held against the client
        if conn.sock.fileno() < 0:
            return
        if len(conn.out) + len(frame) > self.client_buffer:
            conn.dropping_since = (time.time(), time.monotonic())
            conn.dropped = 1
            self.counters["events_dropped"] += 1
            self.counters["client_overflows"] += 1
            log.warning("%s reads too slowly: dropping its events", conn.describe())
            return
        conn.out += frame
        self._dirty.add(conn)

    def _end_dropping(self, conn: Connection) -> None:
        """Tell the client which span's events it lost, and queue its events again."""
        since_wall, since_mono = conn.dropping_since
        conn.dropping_since = None
        conn.out += encode(Overflow(0, OverflowSource.CLIENT_BUFFER, since_wall, since_mono,
                                    time.time(), time.monotonic(), conn.dropped))
        self._dirty.add(conn)

    def _fan_out(self, watch: WorkspaceWatch, messages: list) -> None:
        subscribers = self._subscribers.get(watch.id, ())
        for message in messages:
            if isinstance(message, Overflow):
                self.counters["fanotify_overflows"] += 1
            frame = encode(message)
            for conn in subscribers:
                self._queue(conn, frame)
        self.counters["events_sent"] += len(messages)

    def _flush(self) -> None:
        for conn in list(self._dirty):
            self._send(conn)

    def _send(self, conn: Connection) -> None:
        if conn.sock.fileno() < 0:
            self._dirty.discard(conn)
            return
        while conn.out:
            try:
                sent = conn.sock.send(conn.out)
            except BlockingIOError:
                break
            except OSError as exc:
                self._disconnect(conn, f"send failed: {exc}")
                return
            del conn.out[:sent]
        if conn.dropping_since is not None and len(conn.out) <= self.client_buffer // 2:
            self._end_dropping(conn)
            self._send(conn)
            return
        if conn.out:
            self._poller.modify(conn.sock.fileno(), _IN | select.POLLOUT)
            self._dirty.add(conn)
        else:
            self._poller.modify(conn.sock.fileno(), _IN)
            self._dirty.discard(conn)
            if conn.closing:
                self._disconnect(conn, "closed after a framing error")

    # ----- lineage -----------------------------------------------------------------------
    def _start_lineage(self) -> None:
        self.tracker = LineageTracker()
        self._lineage_overflows = 0
        self._register(self.tracker.fileno(), self._lineage_woke)
        log.info("listening to process events (%d processes known)", len(self.tracker))

    def _stop_lineage(self) -> None:
        if self.tracker is not None:
            self._unregister(self.tracker.fileno())
            self.tracker.close()
            self.tracker = None
            log.info("no workspace subscribed: process events no longer read")

    def _lineage_woke(self, _events: int) -> float | None:
        """The proc connector is readable (or its rest is over): drain it; the seconds it
        then rests unpolled, if it held anything."""
        count = self._drain_lineage()
        return self.tracker.rest_after(count, time.monotonic()) if self.tracker else None

    def _drain_lineage(self) -> int:
        """Read the queued process events; how many there were."""
        if self.tracker is None:
            return 0
        count = self.tracker.drain()
        now = (time.time(), time.monotonic())
        if self.tracker.overflows != self._lineage_overflows:
            self._lineage_overflows = self.tracker.overflows
            self.counters["lineage_overflows"] += 1
            frame = encode(Overflow(0, OverflowSource.LINEAGE, *self._lineage_ok, *now, 0))
            for conn in self.clients.values():
                if conn.workspaces:
                    self._queue(conn, frame)
        self._lineage_ok = now
        return count

    def _lineage_of(self, pid: int) -> tuple[LineageEntry, ...]:
        return lineage_entries(self.tracker.chain(pid))


# ----- the command -----------------------------------------------------------------------
ROOT_ONLY = ("helper must run as root (fanotify needs CAP_SYS_ADMIN and the proc connector "
             "CAP_NET_ADMIN); an unprivileged gitsieve connects to it instead")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--socket", default=DEFAULT_SOCKET, help="socket path "
                        f"(default {DEFAULT_SOCKET})")
    parser.add_argument("--client-buffer", type=int, default=CLIENT_BUFFER,
                        help="unsent bytes kept per client before its events are dropped")
    parser.add_argument("--heartbeat", type=float, default=HEARTBEAT_INTERVAL,
                        help="seconds between heartbeats")
    parser.add_argument("--log-level", default="INFO",
                        choices=("DEBUG", "INFO", "WARNING", "ERROR"))


def run(args: argparse.Namespace) -> int:
    """Serve until SIGTERM, SIGINT or SIGHUP (exit 0); a socket path that is unsafe or
    served by another helper: one line, exit 1.  The caller checked for root."""
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s gitsieve-helper %(levelname)s %(message)s")
    try:
        fan.libc()
        server = HelperServer(args.socket, args.client_buffer, args.heartbeat)
    except (HelperError, OSError) as exc:
        print(f"gitsieve helper: {exc}", file=sys.stderr)
        return 1

    def request_stop(_signum, _frame):
        server.stop_requested = True

    wakeup_read, wakeup_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wakeup_write)
    server.add_wakeup(wakeup_read)
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, request_stop)
    try:
        server.serve()
    finally:
        server.close()
        signal.set_wakeup_fd(-1)
        os.close(wakeup_read)
        os.close(wakeup_write)
        log.info("helper stopped")
    return 0


def _drain_pipe(fd: int) -> None:
    try:
        while os.read(fd, 512):
            continue
    except BlockingIOError:
        return
