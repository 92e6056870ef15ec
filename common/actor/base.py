"""The one base class every gitsieve actor derives from.

It owns the process's ZeroMQ context (made on first use, so building an actor and its judge
opens no socket) and the poll loop, the control socket (REP, bound at
``endpoints.control(actor_id)``), the heartbeat (PUSH, connected to the health monitor's
``endpoints.heartbeat``), signal handling and clean shutdown.  Subclasses build their state
(and their judge) in ``__init__``, create their sockets in :meth:`setup` through
:meth:`bind`/:meth:`connect`, register inputs with a dispatch table
``{MessageType: handler}``, and may override :meth:`on_tick`, :meth:`wakeup_in`,
:meth:`queue_depth`, :meth:`extra_status` and :meth:`shutdown`.

Nothing a message, a tick or a descriptor callback raises stops the actor: the error is
counted, logged and shown in status (``errors``, ``last_error``); work lost that way is
found again by the watcher's reconcile against ``git status``.

A layer worker takes its stage's changes with :meth:`take_stage` (see :mod:`.stage`): after
every poll round and at least every heartbeat interval the base announces its credit.
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
from collections import Counter, deque
from typing import Callable

import zmq

from gitsieve.common import config as config_mod
from gitsieve.common.actor.heap import HeapTrim, share_one_malloc_arena
from gitsieve.common.actor.stage import StageFeed, rested
from gitsieve.common.git.gateway import ACTOR_ENV_MARK
from gitsieve.common.protocol import messages
from gitsieve.common.protocol.messages import (
    BadMessage,
    Change,
    ControlReply,
    ControlRequest,
    HealthStatus,
    Heartbeat,
)

log = logging.getLogger(__name__)

_DRAIN_LIMIT = 500  # messages taken from one socket per poll round, so no input starves
# Seconds of handler work per socket per poll round: a busy worker still announces its
# credit, beats and answers its control socket between rounds (liveness apart from work).
ROUND_BUDGET = 0.2
# The same failure of a tick or callback is logged in full at most this often (seconds);
# every occurrence is still counted.
_ERROR_LOG_INTERVAL = 60.0
# Liveness traffic (heartbeats, health verdicts) is not work: an actor that only exchanges
# it is idle, and beats less often.  (The router counts workers' credit announcements as
# liveness itself: it reads them off its ROUTER sockets, not through the dispatch.)
_LIVENESS = (Heartbeat, HealthStatus)
# Seconds a message for a PUSH socket may wait for others to go with it in one bundle
# (messages.bundle); the end of the poll round sends whatever waits.
BUNDLE_WAIT = 0.005


def bundle_due(queued: int, since: float, now: float) -> bool:
    """Whether ``queued`` messages waiting to go bundled, the oldest since ``since``
    (perf_counter), go now: a full bundle, or one that has waited BUNDLE_WAIT."""
    return queued >= messages.MAX_BUNDLED or now - since >= BUNDLE_WAIT


class Outbox:
    """Messages waiting to go bundled, grouped by where they go (a socket, a topic)."""

    def __init__(self):
        self.waiting: dict[object, list] = {}
        self._since = 0.0  # perf_counter() when the oldest of them was added

    def __bool__(self) -> bool:
        return bool(self.waiting)

    def add(self, key: object, message, urgent: bool = False) -> bool:
        """Queue ``message`` for ``key``; True when what waits is due now: ``urgent``, a
        full bundle, or a message that has waited BUNDLE_WAIT."""
        now = time.perf_counter()
        if not self.waiting:
            self._since = now
        queued = self.waiting.setdefault(key, [])
        queued.append(message)
        return urgent or bundle_due(len(queued), self._since, now)

    def take(self) -> dict[object, list]:
        """Everything waiting, by key; the outbox is then empty."""
        waiting, self.waiting = self.waiting, {}
        return waiting
# setproctitle leaves the environment area alone with this set: attribution reads a
# process's mark from /proc/PID/environ.
TITLE_ENV = "SPT_NOENV"


class LatencyWindow:
    """The last ``size`` handling times of one message type, for percentiles in status."""

    def __init__(self, size: int = 1000):
        self.samples: deque[float] = deque(maxlen=size)
        self.count = 0

    def add(self, seconds: float) -> None:
        self.samples.append(seconds)
        self.count += 1

    def summary(self) -> dict:
        ordered = sorted(self.samples)
        if not ordered:
            return {"count": 0}

        def at(fraction: float) -> float:
            return round(ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] * 1000, 3)
        return {"count": self.count, "p50_ms": at(0.5), "p90_ms": at(0.9), "p99_ms": at(0.99),
                "max_ms": round(ordered[-1] * 1000, 3)}


class Actor:
    name = "actor"
    #: control commands beyond the built-in ones: {command: method name}
    control_commands: dict[str, str] = {}

    def __init__(self, config: config_mod.Config, instance: int | None = None):
        self.config = config
        self.instance = instance
        self.actor_id = self.name if instance is None else f"{self.name}-{instance:02d}"
        # Run as ``python -m gitsieve.actors.x`` the module is __main__; name the logger
        # after the actor.
        module = type(self).__module__
        self.log = logging.getLogger(f"gitsieve.actors.{self.name}" if module == "__main__"
                                     else module)
        self.context: zmq.Context | None = None
        self.poller = zmq.Poller()
        self.stats: Counter = Counter()
        self.latency: dict[str, LatencyWindow] = {}
        self.last_error = ""
        self.started = time.time()
        self.state = "starting"
        self.stopping = False
        self._sockets: list[zmq.Socket] = []
        self._inputs: dict[zmq.Socket, dict[type, Callable]] = {}
        self._topic_inputs: set[zmq.Socket] = set()  # inputs of [topic, frame] messages
        # the frame of the message being handled, so a handler can pass it on as it came
        self.handling_frame = b""
        self._fd_handlers: dict[int, Callable[[], float | None]] = {}
        self._resting_fds: dict[int, float] = {}  # fd -> monotonic time it is polled again
        self._control: zmq.Socket | None = None
        self._heartbeat: zmq.Socket | None = None
        self._feed: StageFeed | None = None
        self._feed_sock: zmq.Socket | None = None
        self._next_heartbeat = 0.0
        self._quiet_beats = 0
        self._last_activity: tuple = ()
        self._error_logged: dict[str, float] = {}
        self.heap = HeapTrim()
        self._work_seen = (0, 0)  # (messages in, out) not liveness, at the last round
        self._bundled: set[zmq.Socket] = set()  # PUSH sockets: bursts go bundled
        self._outbox = Outbox()  # messages for the PUSH sockets, waiting to go bundled

    # ----- sockets -------------------------------------------------------------------
    def _socket(self, kind: int, hwm: int) -> zmq.Socket:
        if self.context is None:
            self.context = zmq.Context()
        sock = self.context.socket(kind)
        sock.linger = 0
        sock.sndhwm = hwm
        sock.rcvhwm = hwm
        if kind in (zmq.PUSH, zmq.PUB, zmq.DEALER, zmq.REQ):
            sock.sndtimeo = 2000
        if kind == zmq.PUSH:
            self._bundled.add(sock)
        self._sockets.append(sock)
        return sock

    def bind(self, kind: int, endpoint: str, hwm: int = 100_000) -> zmq.Socket:
        sock = self._socket(kind, hwm)
        path = endpoint[len("ipc://"):] if endpoint.startswith("ipc://") else None
        if path and os.path.exists(path):
            os.unlink(path)  # a stale socket file from a killed predecessor
        sock.bind(endpoint)
        return sock

    def connect(self, kind: int, endpoint: str, hwm: int = 100_000) -> zmq.Socket:
        sock = self._socket(kind, hwm)
        if kind == zmq.SUB:
            sock.setsockopt(zmq.SUBSCRIBE, b"")
        sock.connect(endpoint)
        return sock

    def close(self) -> None:
        """Close every socket and the context (the loop does this when it ends)."""
        self._guarded("send of the last messages", self.flush_outbox)
        for sock in self._sockets:
            sock.close(linger=0)
        self._sockets.clear()
        if self.context is not None:
            self.context.term()
            self.context = None

    def add_input(self, sock: zmq.Socket, handlers: dict[type, Callable]) -> None:
        self._inputs[sock] = handlers
        self.poller.register(sock, zmq.POLLIN)

    def subscribe(self, endpoint: str, topics: tuple[bytes, ...],
                  handlers: dict[type, Callable], hwm: int = 100_000) -> zmq.Socket:
        """A SUB input of ``[topic, frame]`` messages, taking only ``topics`` (prefixes)."""
        sock = self._socket(zmq.SUB, hwm)
        for topic in topics:
            sock.setsockopt(zmq.SUBSCRIBE, topic)
        sock.connect(endpoint)
        self._topic_inputs.add(sock)
        self.add_input(sock, handlers)
        return sock

    def take_stage(self, stage: str, handlers: dict[type, Callable]) -> zmq.Socket:
        """Become one of ``stage``'s workers (see :mod:`.stage`)."""
        sock = self.connect(zmq.DEALER, self.config.endpoints.stage_out(stage))
        self.add_input(sock, handlers)
        self._feed = StageFeed(self.actor_id, self.config.stage_window,
                               self.config.heartbeat_interval)
        self._feed_sock = sock
        return sock

    def _announce(self, now: float) -> None:
        ready = self._feed.due(now) if self._feed is not None else None
        if ready is None:
            return
        try:
            self._feed_sock.send(messages.encode(ready), zmq.NOBLOCK)
        except zmq.Again:  # nothing to send to yet: tried again an interval later
            self.stats["ready_deferred"] += 1
            self._feed.next_announce = now + self._feed.interval
            return
        self._feed.announced_at(ready, now)

    def watch_fd(self, fd: int, callback: Callable[[], float | None]) -> None:
        """Call ``callback`` when ``fd`` is readable.  It may return seconds for which
        ``fd`` is then not polled: what arrives meanwhile waits in the kernel, and the
        callback is called once when the rest is over (a busy source costs one round per
        rest, not one per event).  It returns nothing when it found nothing to read, so a
        source gone quiet is polled again."""
        self._fd_handlers[fd] = callback
        self.poller.register(fd, zmq.POLLIN)

    def _serve_fd(self, fd: int, now: float) -> None:
        """Call ``fd``'s callback (when it is readable, or its rest is over) and rest it,
        or poll it again, as the callback answers."""
        rest = self._guarded(f"descriptor {fd}", self._fd_handlers[fd])
        if rest:
            if fd not in self._resting_fds:
                self.poller.unregister(fd)
            self._resting_fds[fd] = now + rest
        elif self._resting_fds.pop(fd, None) is not None:
            self.poller.register(fd, zmq.POLLIN)

    def send(self, sock: zmq.Socket, message) -> bool:
        """Encode and send; a full or absent peer is counted, never fatal."""
        sent = self._send_frames(sock, [messages.encode(message)], type(message).__name__)
        if sent and isinstance(message, _LIVENESS):
            self.stats["liveness_out"] += 1
        return sent

    def send_change(self, sock: zmq.Socket, change: Change, priority: bool) -> bool:
        """Send a Change into a stage queue (route frame + body); a priority one goes at
        once, with whatever waits for its socket."""
        return self._send_frames(sock, messages.stage_frames(change, priority), "Change",
                                 urgent=priority)

    def _send_frames(self, sock: zmq.Socket, frames: list[bytes], what: str,
                     urgent: bool = False) -> bool:
        """Send one message's frames; to a PUSH socket it waits up to BUNDLE_WAIT (or the
        end of the round) for others to go with it (True: queued; a failed send is counted
        when it happens)."""
        if sock not in self._bundled:
            return self._send_now(sock, frames, what, 1)
        if self._outbox.add(sock, frames, urgent):
            self.flush_outbox()
        return True

    def flush_outbox(self) -> None:
        """Send the messages waiting for PUSH sockets: one bundle per socket (a lone
        message as itself)."""
        for sock, queued in self._outbox.take().items():
            if len(queued) == 1:
                self._send_now(sock, queued[0], "a message", 1)
            else:
                self._send_now(sock, messages.bundle(queued), f"{len(queued)} messages",
                               len(queued))

    def _send_now(self, sock: zmq.Socket, frames: list[bytes], what: str, count: int) -> bool:
        try:
            sock.send_multipart(frames)
        except zmq.Again:
            self.stats["send_dropped"] += count
            self.log.warning("%s: send of %s timed out; dropped", self.actor_id, what)
            return False
        self.stats["messages_out"] += count
        return True

    # ----- hooks -----------------------------------------------------------------------
    def setup(self) -> None:
        """Create sockets and register inputs."""

    def on_tick(self, now: float) -> None:
        """Called after every poll round (now is time.monotonic())."""

    def wakeup_in(self) -> float | None:
        """Seconds until this actor next needs on_tick without input; None: no need."""
        return None

    def queue_depth(self) -> int | None:
        """Work this actor holds and has not passed on (None: it holds none by design)."""
        return None

    def extra_status(self) -> dict:
        return {}

    def shutdown(self) -> None:
        """Release resources before sockets close."""

    # ----- errors and status -------------------------------------------------------------
    def request_stop(self, *_args) -> None:
        self.stopping = True

    def status(self) -> dict:
        return {"name": self.actor_id, "pid": os.getpid(), "state": self.state,
                "uptime": round(time.time() - self.started, 3),
                "messages_in": self.stats["messages_in"],
                "messages_out": self.stats["messages_out"],
                "bad_frames": self.stats["bad_frames"], "errors": self.stats["errors"],
                "last_error": self.last_error, "queue": self.queue_depth(),
                "latency": {name: window.summary() for name, window in self.latency.items()},
                **self.extra_status()}

    def record_error(self, what: str) -> None:
        self.stats["errors"] += 1
        self.last_error = what[:500]

    def _guarded(self, where: str, call: Callable[[], object]) -> object:
        """Run ``call`` and return what it returns; an exception is counted, shown in
        status and logged (in full at most once a minute per place), and the actor lives
        on (None is returned)."""
        try:
            return call()
        except Exception as exc:  # one failing tick must not take the actor down
            self.record_error(f"{where}: {type(exc).__name__}: {exc}")
            now = time.monotonic()
            if now - self._error_logged.get(where, float("-inf")) >= _ERROR_LOG_INTERVAL:
                self._error_logged[where] = now
                self.log.exception("%s: %s failed (counted; the actor goes on)",
                                   self.actor_id, where)
            return None

    # ----- loop ------------------------------------------------------------------------
    def _dispatch(self, sock: zmq.Socket, handlers: dict[type, Callable]) -> int:
        """Handle what ``sock`` holds (up to _DRAIN_LIMIT frames); return how many."""
        taken = 0
        stage = sock is self._feed_sock
        topic = sock in self._topic_inputs
        budget_end = time.perf_counter() + ROUND_BUDGET
        while taken < _DRAIN_LIMIT and time.perf_counter() < budget_end:
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            try:
                if topic:
                    parts = messages.topic_parts(frames)
                elif frames[0] == messages.BUNDLE:
                    parts = messages.unbundle(frames)
                else:
                    parts = (frames,)
            except BadMessage as exc:
                self.stats["messages_in"] += 1
                self.stats["bad_frames"] += 1
                self.log.warning("%s: dropped bad frame: %s", self.actor_id, exc)
                continue
            for frames in parts:
                taken += 1
                self._handle(frames, stage, topic, handlers)
        return taken

    def _handle(self, frames: list[bytes], stage: bool, topic: bool,
                handlers: dict[type, Callable]) -> None:
        """Decode one message's frames and call its handler; a bad one is counted."""
        self.stats["messages_in"] += 1
        try:
            if topic:
                frames = frames[1:]  # [topic, frame] (messages.topic_parts)
            elif len(frames) != 1 and not (stage and len(frames) == 2):
                raise BadMessage(f"{len(frames)} frames, expected 1")
            message = messages.decode(frames[0])
            self.handling_frame = frames[0]
            if len(frames) == 2:
                if not isinstance(message, Change):
                    raise BadMessage(f"a merge frame with {type(message).__name__}")
                # the router merged this change with older ones of the path
                message = messages.with_earliest(message, frames[1])
                self.handling_frame = b""  # no longer the message as it came
            handler = handlers.get(type(message))
            if handler is None:
                raise BadMessage(f"unexpected {type(message).__name__} on this socket")
            if isinstance(message, _LIVENESS):
                self.stats["liveness_in"] += 1
        except BadMessage as exc:
            self.stats["bad_frames"] += 1
            self.log.warning("%s: dropped bad frame: %s", self.actor_id, exc)
            return
        started = time.perf_counter()
        name = type(message).__name__
        self._guarded(f"handler for {name}", lambda: handler(message))
        self.handling_frame = b""
        window = self.latency.get(name)
        if window is None:
            window = self.latency[name] = LatencyWindow()
        window.add(time.perf_counter() - started)

    def _serve_control(self) -> None:
        try:
            frames = self._control.recv_multipart(zmq.NOBLOCK)
        except zmq.Again:
            return
        if self._outbox:  # what this actor has handled is sent before it answers about it
            self.flush_outbox()
        try:
            if len(frames) != 1:
                raise BadMessage(f"{len(frames)} frames, expected 1")
            request = messages.decode(frames[0])
            if not isinstance(request, ControlRequest):
                raise BadMessage(f"expected ControlRequest, got {type(request).__name__}")
            reply = self._control_reply(request)
        except BadMessage as exc:
            self.stats["bad_frames"] += 1
            reply = ControlReply(ok=False, error=f"bad request: {exc}")
        except Exception as exc:  # a failing command answers with its error, never kills
            self.record_error(f"control: {exc}")
            self.log.exception("%s: control command failed", self.actor_id)
            reply = ControlReply(ok=False, error=f"{type(exc).__name__}: {exc}")
        frame = messages.encode(reply)
        if reply.ok:
            try:
                messages.decode(frame)  # as the asker will: an answer it cannot read is lost
            except BadMessage as exc:
                self.stats["control_replies_too_large"] += 1
                frame = messages.encode(ControlReply(
                    ok=False, error=f"the answer exceeds the protocol's limits ({exc}): "
                                    f"ask about fewer paths at once"))
        try:
            self._control.send(frame, zmq.NOBLOCK)
        except zmq.ZMQError as exc:  # the asker vanished: REP still expects a send
            self.stats["control_reply_failures"] += 1
            self.log.warning("%s: control reply not sent: %s", self.actor_id, exc)

    def _control_reply(self, request: ControlRequest) -> ControlReply:
        if request.command == "status":
            return ControlReply(ok=True, data=self.status())
        if request.command == "stop":
            self.request_stop()
            return ControlReply(ok=True, data={"stopping": self.actor_id})
        method = self.control_commands.get(request.command)
        if method is None:
            known = ["status", "stop", *self.control_commands]
            return ControlReply(ok=False, error=f"unknown command {request.command!r}; "
                                f"known: {', '.join(known)}")
        try:
            data = getattr(self, method)(**request.args)
        except TypeError as exc:  # arguments the command does not take
            return ControlReply(ok=False, error=f"bad arguments for {request.command}: {exc}")
        return ControlReply(ok=True, data=data)

    def _beat(self, now: float) -> None:
        if now < self._next_heartbeat:
            return
        # Idle (no message in or out since the last beat, nothing held): beat up to
        # IDLE_FACTOR times less often, and say so, so health's silence check follows.
        stats = self.stats
        activity = (stats["messages_in"] - stats["liveness_in"],
                    stats["messages_out"] - stats["liveness_out"], stats["errors"],
                    self.queue_depth())
        self._quiet_beats = self._quiet_beats + 1 if activity == self._last_activity \
            and not activity[3] else 0
        self._last_activity = activity
        interval = rested(self.config.heartbeat_interval, self._quiet_beats)
        self._next_heartbeat = now + interval
        try:
            self._heartbeat.send(messages.encode(Heartbeat(
                actor=self.actor_id, pid=os.getpid(), sent=time.time(), state=self.state,
                stats=self.status(), interval=interval)), zmq.NOBLOCK)
        except zmq.Again:  # no health monitor listening yet; the next beat tries again
            self.stats["heartbeats_deferred"] += 1

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)
        # The handler only sets a flag; this pipe wakes the poll so stopping is prompt.
        wake_read, wake_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(wake_write, warn_on_full_buffer=False)
        self.watch_fd(wake_read, lambda: os.read(wake_read, 512) and None)
        config_mod.prepare_runtime_dir(self.config)
        self._control = self.bind(zmq.REP, self.config.endpoints.control(self.actor_id), hwm=10)
        self.poller.register(self._control, zmq.POLLIN)
        self._heartbeat = self.connect(zmq.PUSH, self.config.endpoints.heartbeat, hwm=10)
        self._heartbeat.immediate = True
        try:
            self.setup()
            self.state = "running"
            self.log.info("%s started (pid %d)", self.actor_id, os.getpid())
            while not self.stopping:
                self._round()
        finally:
            self.state = "stopping"
            try:
                self.shutdown()
            finally:
                self.close()
                signal.set_wakeup_fd(-1)
                os.close(wake_read)
                os.close(wake_write)
                self.log.info("%s stopped", self.actor_id)
        return 0

    def _round(self) -> None:
        """One poll round: wait for input or the next due time, handle, tick, announce."""
        timeout = self._poll_timeout(time.monotonic())
        try:
            ready = dict(self.poller.poll(int(timeout * 1000) + 1))
        except zmq.ZMQError as exc:
            if exc.errno == zmq.EINTR:
                return
            raise
        woke = time.monotonic()
        for sock in ready:
            if sock is self._control:
                self._serve_control()
            elif sock in self._inputs:
                taken = self._dispatch(sock, self._inputs[sock])
                if self._feed is not None and sock is self._feed_sock:
                    self._feed.received += taken
            elif sock in self._fd_handlers:
                self._serve_fd(sock, woke)
        for fd in [fd for fd, until in self._resting_fds.items() if until <= woke]:
            self._serve_fd(fd, woke)
        now = time.monotonic()
        self._guarded("tick", lambda: self.on_tick(now))
        self.flush_outbox()
        self._announce(now)
        self._beat(now)
        self._trim_heap(now)

    def _poll_timeout(self, now: float) -> float:
        """Seconds until something is due: a beat, the actor's own wake-up, or the stage
        announcement promised to the router.  (After work the announcement is due in one
        heartbeat interval while the beat, stretched by rest, may be ten away: sleeping
        until the beat, a worker the router had just fed was forgotten as silent.)"""
        due = [self._next_heartbeat - now]
        wake = self.wakeup_in()
        if wake is not None:
            due.append(wake)
        if self._feed is not None:
            due.append(self._feed.next_announce - now)
        if self._resting_fds:
            due.append(min(self._resting_fds.values()) - now)
        return max(0.0, min(due))

    def _trim_heap(self, now: float) -> None:
        """Give freed heap back after work; liveness traffic (beats, health verdicts) is
        not work, so an idle actor does not trim again and again."""
        stats = self.stats
        work = (stats["messages_in"] - stats["liveness_in"],
                stats["messages_out"] - stats["liveness_out"])
        if work != self._work_seen:
            self._work_seen = work
            self.heap.worked()
        self.heap.due(now)


class _ActorLabel(logging.Filter):
    """Puts the process's actor id on every record (``%(actor)s``)."""

    label = ""

    def filter(self, record: logging.LogRecord) -> bool:
        record.actor = self.label
        return True


_LABEL = _ActorLabel()
_configured_level: int | None = None


def setup_logging(level: str, actor_id: str) -> None:
    """Log to stderr at ``level``, each line naming ``actor_id``.  An actor forked by the
    runner finds the runner's logging set up at the same level and only relabels it:
    setting a level again walks every logger of every module, and each one touched is a
    page copied out of those the forks share."""
    global _configured_level
    _LABEL.label = actor_id
    number = getattr(logging, level, logging.INFO)
    if _configured_level == number:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_LABEL)
    logging.basicConfig(level=number, handlers=[handler], force=True,
                        format="%(asctime)s %(actor)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("sh").setLevel(logging.WARNING)  # sh logs every command at INFO
    _configured_level = number


def set_title(title: str) -> None:
    """The process title ``ps`` shows, when it can be set without touching the environment
    (``SPT_NOENV``: attribution reads the environment)."""
    if not os.environ.get(TITLE_ENV):
        return
    try:
        import setproctitle
    except ImportError:  # an installation without it: titles are a convenience
        log.debug("setproctitle is not installed; process titles unchanged")
        return
    setproctitle.setproctitle(title)


def main(actor_class: type[Actor], argv: list[str] | None = None) -> int:
    """Entry point shared by ``python -m gitsieve.actors.<name>`` and the runner's forks."""
    if ACTOR_ENV_MARK not in os.environ:
        # Started by hand: run again marked, so attribution knows this process as gitsieve's.
        os.execve(sys.executable, sys.orig_argv,
                  {**os.environ, ACTOR_ENV_MARK: actor_class.name, TITLE_ENV: "1"})
    parser = argparse.ArgumentParser(prog=f"python -m gitsieve.actors.{actor_class.name}")
    config_mod.add_location_arguments(parser)
    parser.add_argument("--instance", type=int, default=None,
                        help="worker number when the actor runs scaled")
    args = parser.parse_args(argv)
    try:
        cfg = config_mod.load_from_arguments(args)
    except config_mod.ConfigError as exc:  # a bad config or a refused runtime directory
        print(f"{actor_class.name}: {exc}", file=sys.stderr)
        return 2
    return run_actor(actor_class, cfg, args.instance)


def run_actor(actor_class: type[Actor], cfg, instance: int | None) -> int:
    """Run one actor on a loaded config: ``main``'s second half, and what the runner's
    forks call with the config the runner loaded (loading it again in each fork would
    copy megabytes of the pages they share)."""
    try:
        actor_id = (actor_class.name if instance is None
                    else f"{actor_class.name}-{instance:02d}")
        setup_logging(cfg.log_level, actor_id)
        set_title(f"gitsieve: {actor_id} {cfg.workspace}")
        share_one_malloc_arena()  # before ZeroMQ's I/O thread: no arena of its own
        return actor_class(cfg, instance).run()
    except config_mod.ConfigError as exc:  # a refused runtime directory
        print(f"{actor_class.name}: {exc}", file=sys.stderr)
        return 2
