"""The one base class every gitsieve actor derives from.

It owns the process's ZeroMQ context and the poll loop, the control socket (REP, bound at
``endpoints.control(actor_id)``), the heartbeat (PUSH, connected to the health monitor's
``endpoints.heartbeat``), signal handling and clean shutdown.  Subclasses create their
sockets in :meth:`setup` through :meth:`bind`/:meth:`connect`, register inputs with a
dispatch table ``{MessageType: handler}``, and may override :meth:`on_tick`,
:meth:`wakeup_in`, :meth:`extra_status` and :meth:`shutdown`.

A layer worker takes its stage's changes with :meth:`take_stage`: a DEALER connected to
the router's ``endpoints.stage_out(stage)``, fed by credit.  After every poll round (its
changes handled, ``on_tick`` run) and at least every heartbeat interval (so a restarted
router learns of it), the base sends ``Ready(received, window)``; the router never lets
more than ``[workers] stage_window`` changes wait in the worker.
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
from gitsieve.common.git.gateway import ACTOR_ENV_MARK
from gitsieve.common.protocol import messages
from gitsieve.common.protocol.messages import (
    BadMessage,
    ControlReply,
    ControlRequest,
    Heartbeat,
    Ready,
)

log = logging.getLogger(__name__)

_DRAIN_LIMIT = 500  # messages taken from one socket per poll round, so no input starves


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


class StageFeed:
    """The worker's end of a stage queue: what it took, what it last told the router."""

    def __init__(self, sock: zmq.Socket):
        self.sock = sock
        self.received = 0
        self.announced = -1
        self.next_announce = 0.0


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
        self.context = zmq.Context()
        self.poller = zmq.Poller()
        self.stats: Counter = Counter()
        self.latency: dict[str, LatencyWindow] = {}
        self.last_error = ""
        self.started = time.time()
        self.state = "starting"
        self.stopping = False
        self._sockets: list[zmq.Socket] = []
        self._inputs: dict[zmq.Socket, dict[type, Callable]] = {}
        self._fd_handlers: dict[int, Callable[[], None]] = {}
        self._control = None
        self._heartbeat = None
        self._feed: StageFeed | None = None
        self._next_heartbeat = 0.0

    # ----- sockets -------------------------------------------------------------------
    def _socket(self, kind: int, hwm: int) -> zmq.Socket:
        sock = self.context.socket(kind)
        sock.linger = 0
        sock.sndhwm = hwm
        sock.rcvhwm = hwm
        if kind in (zmq.PUSH, zmq.PUB, zmq.DEALER, zmq.REQ):
            sock.sndtimeo = 2000
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

    def add_input(self, sock: zmq.Socket, handlers: dict[type, Callable]) -> None:
        self._inputs[sock] = handlers
        self.poller.register(sock, zmq.POLLIN)

    def take_stage(self, stage: str, handlers: dict[type, Callable]) -> zmq.Socket:
        """Become one of ``stage``'s workers (see the module docstring)."""
        sock = self.connect(zmq.DEALER, self.config.endpoints.stage_out(stage))
        self.add_input(sock, handlers)
        self._feed = StageFeed(sock)
        return sock

    def _announce(self, now: float) -> None:
        """Tell the router how many changes this worker took, when that changed or a
        heartbeat interval passed."""
        feed = self._feed
        if feed is None or (feed.received == feed.announced and now < feed.next_announce):
            return
        ready = Ready(worker=self.actor_id, received=feed.received,
                      window=self.config.stage_window)
        try:
            feed.sock.send(messages.encode(ready), zmq.NOBLOCK)
        except zmq.Again:  # nothing to send to yet: the next round tries again
            return
        feed.announced = feed.received
        feed.next_announce = now + self.config.heartbeat_interval

    def watch_fd(self, fd: int, callback: Callable[[], None]) -> None:
        self._fd_handlers[fd] = callback
        self.poller.register(fd, zmq.POLLIN)

    def send(self, sock: zmq.Socket, message) -> bool:
        """Encode and send; a full or absent peer is counted, never fatal."""
        try:
            sock.send(messages.encode(message))
        except zmq.Again:
            self.stats["send_dropped"] += 1
            self.log.warning("%s: send of %s timed out; dropped", self.actor_id,
                             type(message).__name__)
            return False
        self.stats["messages_out"] += 1
        return True

    # ----- hooks -----------------------------------------------------------------------
    def setup(self) -> None:
        """Create sockets and register inputs."""

    def on_tick(self, now: float) -> None:
        """Called after every poll round (now is time.monotonic())."""

    def wakeup_in(self) -> float | None:
        """Seconds until this actor next needs on_tick without input; None: no need."""
        return None

    def extra_status(self) -> dict:
        return {}

    def shutdown(self) -> None:
        """Release resources before sockets close."""

    # ----- loop ------------------------------------------------------------------------
    def request_stop(self, *_args) -> None:
        self.stopping = True

    def status(self) -> dict:
        return {"name": self.actor_id, "pid": os.getpid(), "state": self.state,
                "uptime": round(time.time() - self.started, 3),
                "messages_in": self.stats["messages_in"],
                "messages_out": self.stats["messages_out"],
                "bad_frames": self.stats["bad_frames"], "errors": self.stats["errors"],
                "last_error": self.last_error,
                "latency": {name: window.summary() for name, window in self.latency.items()},
                **self.extra_status()}

    def record_error(self, what: str) -> None:
        self.stats["errors"] += 1
        self.last_error = what[:500]

    def _dispatch(self, sock: zmq.Socket, handlers: dict[type, Callable]) -> int:
        """Handle what ``sock`` holds (up to _DRAIN_LIMIT frames); return how many."""
        taken = 0
        while taken < _DRAIN_LIMIT:
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            taken += 1
            self.stats["messages_in"] += 1
            try:
                if len(frames) != 1:
                    raise BadMessage(f"{len(frames)} frames, expected 1")
                message = messages.decode(frames[0])
                handler = handlers.get(type(message))
                if handler is None:
                    raise BadMessage(f"unexpected {type(message).__name__} on this socket")
            except BadMessage as exc:
                self.stats["bad_frames"] += 1
                self.log.warning("%s: dropped bad frame: %s", self.actor_id, exc)
                continue
            started = time.perf_counter()
            try:
                handler(message)
            except Exception as exc:  # one bad message must not take the actor down
                self.record_error(f"{type(message).__name__}: {exc}")
                self.log.exception("%s: handler for %s failed", self.actor_id,
                                   type(message).__name__)
            name = type(message).__name__
            window = self.latency.get(name)
            if window is None:
                window = self.latency[name] = LatencyWindow()
            window.add(time.perf_counter() - started)
        return taken

    def _serve_control(self) -> None:
        try:
            frame = self._control.recv(zmq.NOBLOCK)
        except zmq.Again:
            return
        try:
            request = messages.decode(frame)
            if not isinstance(request, ControlRequest):
                raise BadMessage(f"expected ControlRequest, got {type(request).__name__}")
            reply = self._control_reply(request)
        except BadMessage as exc:
            self.stats["bad_frames"] += 1
            reply = ControlReply(ok=False, error=f"bad request: {exc}")
        except Exception as exc:
            self.record_error(f"control: {exc}")
            self.log.exception("%s: control command failed", self.actor_id)
            reply = ControlReply(ok=False, error=f"{type(exc).__name__}: {exc}")
        self._control.send(messages.encode(reply))

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
        return ControlReply(ok=True, data=getattr(self, method)(**request.args))

    def _beat(self, now: float) -> None:
        if now < self._next_heartbeat:
            return
        self._next_heartbeat = now + self.config.heartbeat_interval
        try:
            self._heartbeat.send(messages.encode(Heartbeat(
                actor=self.actor_id, pid=os.getpid(), sent=time.time(), state=self.state,
                stats=self.status())), zmq.NOBLOCK)
        except zmq.Again:
            pass  # no health monitor listening yet; the next beat tries again

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)
        # The handler only sets a flag; this pipe wakes the poll so stopping is prompt.
        wake_read, wake_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(wake_write, warn_on_full_buffer=False)
        self.watch_fd(wake_read, lambda: os.read(wake_read, 512))
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
                now = time.monotonic()
                timeout = max(0.0, self._next_heartbeat - now)
                wake = self.wakeup_in()
                if wake is not None:
                    timeout = min(timeout, max(0.0, wake))
                try:
                    ready = dict(self.poller.poll(int(timeout * 1000) + 1))
                except zmq.ZMQError as exc:
                    if exc.errno == zmq.EINTR:
                        continue
                    raise
                for sock in ready:
                    if sock is self._control:
                        self._serve_control()
                    elif sock in self._inputs:
                        taken = self._dispatch(sock, self._inputs[sock])
                        if self._feed is not None and sock is self._feed.sock:
                            self._feed.received += taken
                    elif sock in self._fd_handlers:
                        self._fd_handlers[sock]()
                now = time.monotonic()
                self.on_tick(now)
                self._announce(now)
                self._beat(now)
        finally:
            self.state = "stopping"
            try:
                self.shutdown()
            finally:
                for sock in self._sockets:
                    sock.close(linger=0)
                self.context.term()
                signal.set_wakeup_fd(-1)
                os.close(wake_read)
                os.close(wake_write)
                self.log.info("%s stopped", self.actor_id)
        return 0


def setup_logging(level: str, actor_id: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level, logging.INFO), stream=sys.stderr,
        format=f"%(asctime)s {actor_id} %(levelname)s %(name)s: %(message)s")
    logging.getLogger("sh").setLevel(logging.WARNING)  # sh logs every command at INFO


def main(actor_class: type[Actor], argv: list[str] | None = None) -> int:
    """Entry point shared by ``python -m gitsieve.actors.<name>``."""
    if ACTOR_ENV_MARK not in os.environ:
        # Started by hand: run again marked, so attribution knows this process as gitsieve's.
        os.execve(sys.executable, sys.orig_argv,
                  {**os.environ, ACTOR_ENV_MARK: actor_class.name})
    parser = argparse.ArgumentParser(prog=f"python -m gitsieve.actors.{actor_class.name}")
    parser.add_argument("--workspace", default=os.environ.get("GITSIEVE_WORKSPACE"))
    parser.add_argument("--config", default=os.environ.get("GITSIEVE_CONFIG") or None)
    parser.add_argument("--instance", type=int, default=None,
                        help="worker number when the actor runs scaled")
    args = parser.parse_args(argv)
    try:
        cfg = config_mod.load(args.workspace, args.config)
    except config_mod.ConfigError as exc:
        print(f"{actor_class.name}: {exc}", file=sys.stderr)
        return 2
    actor = actor_class(cfg, args.instance)
    setup_logging(cfg.log_level, actor.actor_id)
    return actor.run()
