"""Router: the stage queues between pipeline stages, so scaled layer workers only connect.

Sockets, per stage S in (l1, l2, l3):
  - PULL    bind  endpoints.stage_in(S)   producers of S's input PUSH-connect here
  - ROUTER  bind  endpoints.stage_out(S)  S's workers DEALER-connect here
Messages in: Change (stage_in), Ready (stage_out, a worker's credit).
Messages out: Change (stage_out, to one worker, forwarded unchanged).

Each stage's changes wait here, in one queue, and go to the worker with the most credit:
a worker announces (``Ready``) how many changes it has taken in all and how many it may hold
(``[workers] stage_window``), so no worker holds more than its window, a slow worker is
not given more than it can take, and the queue depth is known: the backlog here plus each
worker's changes in flight.  Changes marked ``priority`` (ALLOW areas) go ahead of the rest,
the seed's high-priority stream.  A worker that disconnects (``ROUTER_MANDATORY`` reports
it) or stays silent past ``SILENT_HEARTBEATS`` heartbeat intervals is forgotten; the few
changes it held are lost with it, and the watcher's reconcile finds those paths again.
"""
from __future__ import annotations

import errno
import time
from collections import deque
from dataclasses import dataclass

import zmq

from gitsieve.common.actor.base import Actor, main
from gitsieve.common.protocol import messages
from gitsieve.common.protocol.messages import BadMessage, Change, Ready

STAGES = ("l1", "l2", "l3")
# A live worker announces itself every heartbeat interval, even when idle.
SILENT_HEARTBEATS = 5


@dataclass
class Worker:
    identity: bytes
    name: str
    window: int
    received: int  # as last announced by the worker
    sent: int  # changes this router sent it (counted from its first announcement)
    last_seen: float

    def in_flight(self) -> int:
        return max(0, self.sent - self.received)

    def credit(self) -> int:
        return self.window - self.in_flight()


class Stage:
    def __init__(self, name: str, pull: zmq.Socket, out: zmq.Socket):
        self.name, self.pull, self.out = name, pull, out
        self.urgent: deque[bytes] = deque()
        self.normal: deque[bytes] = deque()
        self.workers: dict[bytes, Worker] = {}
        self.forwarded = 0
        self.lost = 0  # changes in flight at workers that disappeared

    def backlog(self) -> int:
        return len(self.urgent) + len(self.normal)

    def best_worker(self) -> Worker | None:
        worker = max(self.workers.values(), key=Worker.credit, default=None)
        return worker if worker is not None and worker.credit() > 0 else None

    def forget(self, worker: Worker) -> None:
        self.lost += worker.in_flight()
        self.workers.pop(worker.identity, None)


class Router(Actor):
    name = "router"

    def setup(self) -> None:
        self.stages: dict[str, Stage] = {}
        for name in STAGES:
            pull = self.bind(zmq.PULL, self.config.endpoints.stage_in(name))
            out = self.bind(zmq.ROUTER, self.config.endpoints.stage_out(name))
            out.router_mandatory = True  # a send to a departed worker fails, not vanishes
            stage = self.stages[name] = Stage(name, pull, out)
            self.watch_fd(pull, lambda s=stage: self._take_changes(s))
            self.watch_fd(out, lambda s=stage: self._take_credit(s))

    # ----- inputs ---------------------------------------------------------------------
    def _receive(self, stage: Stage, sock: zmq.Socket, expected: type, envelope: int):
        """Up to 1000 queued messages of ``sock``: (envelope frames, last frame, message);
        frames of another shape or type are counted and dropped."""
        for _ in range(1000):
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            self.stats["messages_in"] += 1
            try:
                if len(frames) != envelope + 1:
                    raise BadMessage(f"{len(frames)} frames, expected {envelope + 1}")
                message = messages.decode(frames[-1])
                if not isinstance(message, expected):
                    raise BadMessage(f"unexpected {type(message).__name__}")
            except BadMessage as exc:
                self.stats["bad_frames"] += 1
                self.log.warning("router: dropped bad frame for %s: %s", stage.name, exc)
                continue
            yield frames[:-1], frames[-1], message

    def _take_changes(self, stage: Stage) -> None:
        for _, frame, change in self._receive(stage, stage.pull, Change, envelope=0):
            (stage.urgent if change.priority else stage.normal).append(frame)
        self._forward(stage)

    def _take_credit(self, stage: Stage) -> None:
        # A ROUTER socket puts the sender's identity first.
        for (identity,), _, ready in self._receive(stage, stage.out, Ready, envelope=1):
            self._credit(stage, identity, ready)
        self._forward(stage)

    def _credit(self, stage: Stage, identity: bytes, ready: Ready) -> None:
        worker = stage.workers.get(identity)
        if worker is None:
            # New, or known before this router started: nothing of ours is in flight there.
            worker = stage.workers[identity] = Worker(identity, ready.worker, ready.window,
                                                      ready.received, ready.received, 0.0)
            self.log.info("router: %s worker %s ready (window %d)", stage.name, ready.worker,
                          ready.window)
        worker.received = max(worker.received, ready.received)
        worker.sent = max(worker.sent, worker.received)
        worker.window, worker.name = ready.window, ready.worker
        worker.last_seen = time.monotonic()

    # ----- forwarding -------------------------------------------------------------------
    def _forward(self, stage: Stage) -> None:
        for queue in (stage.urgent, stage.normal):
            while queue:
                worker = stage.best_worker()
                if worker is None:
                    return  # every worker's window is full, or none is connected
                try:
                    stage.out.send_multipart([worker.identity, queue[0]], zmq.NOBLOCK)
                except zmq.ZMQError as exc:
                    if exc.errno not in (errno.EHOSTUNREACH, errno.EAGAIN):
                        raise
                    self.log.info("router: %s worker %s is gone", stage.name, worker.name)
                    stage.forget(worker)
                    continue
                queue.popleft()
                worker.sent += 1
                stage.forwarded += 1
                self.stats["messages_out"] += 1

    def on_tick(self, now: float) -> None:
        silent_for = SILENT_HEARTBEATS * self.config.heartbeat_interval
        for stage in self.stages.values():
            for worker in list(stage.workers.values()):
                if now - worker.last_seen > silent_for:
                    self.log.warning("router: %s worker %s silent for %.0fs; forgotten",
                                     stage.name, worker.name, now - worker.last_seen)
                    stage.forget(worker)

    def extra_status(self) -> dict:
        if not hasattr(self, "stages"):
            return {}
        return {"queue_depth": sum(s.backlog() for s in self.stages.values()),
                "stages": {s.name: {
                    "backlog": s.backlog(), "forwarded": s.forwarded, "lost": s.lost,
                    "workers": {w.name: {"in_flight": w.in_flight(), "credit": w.credit()}
                                for w in s.workers.values()}}
                    for s in self.stages.values()}}


if __name__ == "__main__":
    raise SystemExit(main(Router))
