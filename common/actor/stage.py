"""Both halves of the stage credit protocol (after the ZeroMQ guide's Paranoid Pirate).

A layer worker DEALER-connects to the router's ``endpoints.stage_out(stage)`` and announces
``Ready(worker, received, window)``: how many changes it has taken since it started and how
many it may hold.  The router (:class:`StageQueue`) sends a change to the worker with the
most credit, ``window - (sent - received)``, so no worker holds more than its window and the
queue depth is known: the router's backlog plus each worker's changes in flight.

- :class:`StageFeed` is the worker's half: it counts what the worker took and says when to
  announce (after every poll round that took something, and every heartbeat interval, so
  a restarted router learns of it within one).
- :class:`StageQueue` and :class:`Worker` are the router's half.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from gitsieve.common.protocol.messages import Ready


class StageFeed:
    """The worker's end of a stage queue: what it took, what it last told the router."""

    def __init__(self, worker: str, window: int, interval: float):
        self.worker, self.window, self.interval = worker, window, interval
        self.received = 0
        self.announced = -1
        self.next_announce = 0.0

    def due(self, now: float) -> Ready | None:
        """The Ready to send now, or None when nothing changed and no interval passed."""
        if self.received == self.announced and now < self.next_announce:
            return None
        return Ready(worker=self.worker, received=self.received, window=self.window)

    def announced_at(self, ready: Ready, now: float) -> None:
        self.announced = ready.received
        self.next_announce = now + self.interval


@dataclass
class Worker:
    identity: bytes
    name: str
    window: int
    received: int  # as last announced by the worker
    sent: int  # changes the router sent it (counted from its first announcement)
    last_seen: float

    def in_flight(self) -> int:
        return max(0, self.sent - self.received)

    def credit(self) -> int:
        return self.window - self.in_flight()


class StageQueue:
    """One stage's backlog (priority changes first) and its workers' credit."""

    def __init__(self, name: str):
        self.name = name
        self.urgent: deque[bytes] = deque()
        self.normal: deque[bytes] = deque()
        self.workers: dict[bytes, Worker] = {}
        self.forwarded = 0
        self.lost = 0  # changes in flight at workers that disappeared

    def backlog(self) -> int:
        return len(self.urgent) + len(self.normal)

    def put(self, body: bytes, priority: bool) -> None:
        (self.urgent if priority else self.normal).append(body)

    def credit(self, identity: bytes, ready: Ready, now: float) -> Worker | None:
        """Apply a worker's announcement; the Worker when it is new."""
        worker = self.workers.get(identity)
        new = None
        if worker is None:
            # New, or known before this router started: nothing of ours is in flight there.
            worker = new = self.workers[identity] = Worker(identity, ready.worker, ready.window,
                                                           ready.received, ready.received, 0.0)
        worker.received = max(worker.received, ready.received)
        worker.sent = max(worker.sent, worker.received)
        worker.window, worker.name = ready.window, ready.worker
        worker.last_seen = now
        return new

    def best_worker(self) -> Worker | None:
        worker = max(self.workers.values(), key=Worker.credit, default=None)
        return worker if worker is not None and worker.credit() > 0 else None

    def forget(self, worker: Worker) -> None:
        self.lost += worker.in_flight()
        self.workers.pop(worker.identity, None)

    def silent(self, now: float, after: float) -> list[Worker]:
        return [worker for worker in self.workers.values() if now - worker.last_seen > after]

    def status(self) -> dict:
        return {"backlog": self.backlog(), "forwarded": self.forwarded, "lost": self.lost,
                "workers": {w.name: {"in_flight": w.in_flight(), "credit": w.credit()}
                            for w in self.workers.values()}}
