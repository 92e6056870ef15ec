"""Router: the stage queues between pipeline stages, so scaled layer workers only connect.

Sockets, per stage S in (l1, l2, l3):
  - PULL    bind  endpoints.stage_in(S)   producers of S's input PUSH-connect here
  - ROUTER  bind  endpoints.stage_out(S)  S's workers DEALER-connect here
Messages in: Change as [route, body] (stage_in), Ready (stage_out, a worker's credit).
Messages out: Change body (stage_out, to one worker, forwarded unchanged).

Each stage's changes wait here in one :class:`~gitsieve.common.actor.stage.StageQueue` and
go to the worker with the most credit (the stage credit protocol, both halves in
:mod:`gitsieve.common.actor.stage`).  The router reads only a change's route frame
(priority, observation, path); it never unpacks the change itself.  A path waits once: a
newer change replaces the waiting one, and the worker then gets a third frame with the
earliest observation of the merged changes.  Paths not forwarded lately, ALLOW areas and
writers known to be the user's go ahead (see :mod:`gitsieve.common.actor.stage`).  A worker that disconnects
(``ROUTER_MANDATORY`` reports it) or stays silent past ``SILENT_HEARTBEATS`` of its
announced intervals (an idle worker announces rarely) is forgotten; the changes it held are lost with it, and the watcher's reconcile
finds those paths again.
"""
from __future__ import annotations

import errno
import time

import zmq

from gitsieve.common.actor.base import Actor, main
from gitsieve.common.actor.stage import StageQueue, Worker
from gitsieve.common.protocol import messages
from gitsieve.common.protocol.messages import BadMessage, Ready, Route

STAGES = ("l1", "l2", "l3")
# A live worker announces itself every heartbeat interval, even when idle.
SILENT_HEARTBEATS = 5
_RECEIVE_LIMIT = 1000  # messages taken from one socket per round, so no input starves


class Router(Actor):
    name = "router"

    def __init__(self, config, instance=None):
        super().__init__(config, instance)
        self.stages = {name: StageQueue(name) for name in STAGES}
        self.outputs: dict[str, zmq.Socket] = {}

    def setup(self) -> None:
        for name, stage in self.stages.items():
            pull = self.bind(zmq.PULL, self.config.endpoints.stage_in(name))
            out = self.bind(zmq.ROUTER, self.config.endpoints.stage_out(name))
            out.router_mandatory = True  # a send to a departed worker fails, not vanishes
            self.outputs[name] = out
            self.watch_fd(pull, lambda s=stage, sock=pull: self._take_changes(s, sock))
            self.watch_fd(out, lambda s=stage, sock=out: self._take_credit(s, sock))

    # ----- inputs ---------------------------------------------------------------------
    def _frames(self, stage: StageQueue, sock: zmq.Socket, count: int):
        """Up to _RECEIVE_LIMIT queued messages of ``count`` frames; others are counted
        and dropped."""
        for _ in range(_RECEIVE_LIMIT):
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            if frames[0] == messages.BUNDLE:  # a producer's burst (stage_in only)
                try:
                    parts = messages.unbundle(frames)
                except BadMessage as exc:
                    self.stats["messages_in"] += 1
                    self._bad(stage, str(exc))
                    continue
            else:
                parts = (frames,)
            for frames in parts:
                self.stats["messages_in"] += 1
                if len(frames) != count:
                    self._bad(stage, f"{len(frames)} frames, expected {count}")
                    continue
                yield frames

    def _bad(self, stage: StageQueue, why: str) -> None:
        self.stats["bad_frames"] += 1
        self.log.warning("router: dropped bad frame for %s: %s", stage.name, why)

    def _take_changes(self, stage: StageQueue, sock: zmq.Socket) -> None:
        for route_frame, body in self._frames(stage, sock, 2):
            try:
                route = Route.decode(route_frame)
            except BadMessage as exc:
                self._bad(stage, str(exc))
                continue
            if not stage.put(route.path, body, route.priority, route.observed, time.monotonic(),
                             route.order):
                self.log.warning("router: %s backlog full; a change of %r dropped (the "
                                 "watcher's reconcile sends it again)", stage.name, route.path)
        self._forward(stage)

    def _take_credit(self, stage: StageQueue, sock: zmq.Socket) -> None:
        # A ROUTER socket puts the sender's identity first.
        for identity, frame in self._frames(stage, sock, 2):
            try:
                ready = messages.decode(frame)
                if not isinstance(ready, Ready):
                    raise BadMessage(f"unexpected {type(ready).__name__}")
            except BadMessage as exc:
                self._bad(stage, str(exc))
                continue
            self.stats["liveness_in"] += 1  # a worker's credit is not work: rest stretches beats
            new = stage.credit(identity, ready, time.monotonic())
            if new is not None:
                self.log.info("router: %s worker %s ready (window %d)", stage.name,
                              new.name, new.window)
        self._forward(stage)

    # ----- forwarding -------------------------------------------------------------------
    def _forward(self, stage: StageQueue) -> None:
        """Hand waiting changes to the workers with credit: what goes to one worker in a
        round goes as one bundle (see messages.bundle)."""
        out = self.outputs[stage.name]
        now = time.monotonic()
        bundles: dict[bytes, tuple[Worker, list[list[bytes]]]] = {}
        while True:
            head = stage.next()
            if head is None:
                break
            worker = stage.best_worker()
            if worker is None:
                break  # every worker's window is full, or none is connected
            path, waiting = head
            part = [waiting.body]
            if waiting.merged:
                part.append(messages.earliest_frame(waiting.observed))
            stage.taken(path, now)
            worker.sent += 1
            queued = bundles.setdefault(worker.identity, (worker, []))[1]
            queued.append(part)
            if len(queued) >= messages.MAX_BUNDLED:
                self._send_to(stage, out, *bundles.pop(worker.identity))
        for worker, queued in bundles.values():
            self._send_to(stage, out, worker, queued)

    def _send_to(self, stage: StageQueue, out: zmq.Socket, worker: Worker,
                 queued: list[list[bytes]]) -> None:
        frames = queued[0] if len(queued) == 1 else messages.bundle(queued)
        try:
            out.send_multipart([worker.identity, *frames], zmq.NOBLOCK)
        except zmq.ZMQError as exc:
            if exc.errno not in (errno.EHOSTUNREACH, errno.EAGAIN):
                raise
            # Counted as sent: forgetting the worker counts them lost with the rest it
            # held, and the watcher's reconcile sends their paths again.
            self._forget(stage, worker, "is gone")
            return
        self.stats["messages_out"] += len(queued)

    def _forget(self, stage: StageQueue, worker: Worker, why: str) -> None:
        self.log.warning("router: %s worker %s %s; forgotten", stage.name, worker.name, why)
        stage.forget(worker)

    def on_tick(self, now: float) -> None:
        for stage in self.stages.values():
            for worker in stage.silent(now, SILENT_HEARTBEATS, self.config.heartbeat_interval):
                self._forget(stage, worker, f"silent for {now - worker.last_seen:.0f}s")

    def queue_depth(self) -> int:
        return sum(stage.backlog() for stage in self.stages.values())

    def extra_status(self) -> dict:
        stages = {name: stage.status() for name, stage in self.stages.items()}
        # the one figure the health monitor publishes: the watcher sends these again
        lost = sum(stage["lost"] + stage["dropped"] for stage in stages.values())
        return {"changes_lost": lost, "stages": stages}


if __name__ == "__main__":
    raise SystemExit(main(Router))
