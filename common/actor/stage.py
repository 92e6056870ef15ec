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

The backlog holds at most one change per path: a newer change of a path still waiting
replaces the older one in its place (work grows with distinct paths, not with events), and
keeps the earliest observation of the two, so a layer weighs every write since the first
(exact attribution records writes apart from changes, per inode; the sampled fallback
looks back to the earliest observation).  Three lanes: ALLOW areas and writers known to be
the user's first, then paths not forwarded within ``HOT_WINDOW`` seconds, then the rest: an
agent's storm rewrites the same paths, a person's edit rarely does.  Within a lane, each
area (a path's first component; the top-level files are one area) is first in, first out,
and the areas take turns (:class:`FairLane`, ``common/judge/areas.py``): an agent writing
thousands of new files into its own area, which no attribution may have named yet, delays
a person's edit elsewhere by at most one change per busy area.  The backlog holds at most
``MAX_BACKLOG`` paths; a change beyond it is dropped and counted (``dropped``): the watcher
sees the count in the health monitor's actors map and reconciles, so the path is sent again.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from gitsieve.common.judge.areas import area_of
from gitsieve.common.protocol.messages import Ready

# An idle worker announces (and an idle actor beats) up to this many times less often than
# the heartbeat interval; the message says when the next one is due at the latest.
IDLE_FACTOR = 10


def rested(interval: float, quiet: int) -> float:
    """``interval`` after ``quiet`` unchanged sends in a row: one more interval each time,
    up to IDLE_FACTOR of them (heartbeats, announcements, unchanged health verdicts)."""
    return interval * min(IDLE_FACTOR, 1 + quiet)


class StageFeed:
    """The worker's end of a stage queue: what it took, what it last told the router."""

    def __init__(self, worker: str, window: int, interval: float):
        self.worker, self.window, self.interval = worker, window, interval
        self.received = 0
        self.announced = -1
        self.next_announce = 0.0
        self.quiet_rounds = 0  # announcements in a row with nothing taken since the last

    def current_interval(self) -> float:
        """The announcement interval: stretched up to IDLE_FACTOR times while idle."""
        return rested(self.interval, self.quiet_rounds)

    def due(self, now: float) -> Ready | None:
        """The Ready to send now, or None when nothing changed and no interval passed."""
        if self.received == self.announced and now < self.next_announce:
            return None
        self.quiet_rounds = self.quiet_rounds + 1 if self.received == self.announced else 0
        return Ready(worker=self.worker, received=self.received, window=self.window,
                     interval=self.current_interval())

    def announced_at(self, ready: Ready, now: float) -> None:
        self.announced = ready.received
        self.next_announce = now + ready.interval


@dataclass
class Worker:
    identity: bytes
    name: str
    window: int
    received: int  # as last announced by the worker
    sent: int  # changes the router sent it (counted from its first announcement)
    last_seen: float
    interval: float = 0.0  # the worker's announced interval (0: the heartbeat interval)

    def in_flight(self) -> int:
        return max(0, self.sent - self.received)

    def credit(self) -> int:
        return self.window - self.in_flight()


@dataclass(slots=True)  # one per waiting path: up to MAX_BACKLOG
class Waiting:
    body: bytes
    observed: float  # the earliest observation of the changes merged here
    merged: bool = False
    order: tuple[float, int] = (0.0, 0)  # (epoch, seq) of the change whose body this is


MAX_BACKLOG = 200_000
HOT_WINDOW = 2.0
_RECENT_KEPT = 100_000


class FairLane:
    """A lane of waiting changes: first in, first out within each area, the areas served in
    turn.  An area leaves the rotation when empty and joins at its end when a change comes."""

    def __init__(self):
        self.areas: OrderedDict[bytes, OrderedDict[bytes, Waiting]] = OrderedDict()
        self.size = 0

    def __len__(self) -> int:
        return self.size

    def get(self, path: bytes) -> Waiting | None:
        queue = self.areas.get(area_of(path))
        return None if queue is None else queue.get(path)

    def add(self, path: bytes, waiting: Waiting) -> None:
        area = area_of(path)
        queue = self.areas.get(area)
        if queue is None:
            queue = self.areas[area] = OrderedDict()
        if path not in queue:
            self.size += 1
        queue[path] = waiting

    def pop(self, path: bytes, served: bool = False) -> Waiting | None:
        """Take ``path`` out; ``served``: it was handed out, so its area's turn is over."""
        area = area_of(path)
        queue = self.areas.get(area)
        waiting = None if queue is None else queue.pop(path, None)
        if waiting is None:
            return None
        self.size -= 1
        if not queue:
            del self.areas[area]
        elif served:
            self.areas.move_to_end(area)
        return waiting

    def first(self) -> tuple[bytes, Waiting] | None:
        """The change whose turn it is."""
        for queue in self.areas.values():
            return next(iter(queue.items()))
        return None


class StageQueue:
    """One stage's backlog (one change per path; priority changes first) and its workers'
    credit."""

    def __init__(self, name: str):
        self.name = name
        self.urgent = FairLane()
        self.cold = FairLane()  # not forwarded lately
        self.normal = FairLane()
        self.lanes = (self.urgent, self.cold, self.normal)
        self.recent: OrderedDict[bytes, float] = OrderedDict()  # path -> last forwarded
        self.workers: dict[bytes, Worker] = {}
        self.forwarded = 0
        self.replaced = 0  # changes merged into one already waiting for the same path
        self.dropped = 0  # changes refused at MAX_BACKLOG (a reconcile sends them again)
        self.lost = 0  # changes in flight at workers that disappeared
        self.late = 0  # changes older than the one waiting for their path (merged, not kept)

    def backlog(self) -> int:
        return len(self.urgent) + len(self.cold) + len(self.normal)

    def put(self, path: bytes, body: bytes, priority: bool, observed: float,
            now: float, order: tuple[float, int] = (0.0, 0)) -> bool:
        """Queue a change (merged with the path's waiting one, whose body the newer of the
        two by ``order`` keeps); False if dropped at the cap."""
        for lane in self.lanes:
            waiting = lane.get(path)
            if waiting is not None:
                if order >= waiting.order:  # an older change arriving late keeps nothing
                    waiting.body, waiting.order = body, order
                else:
                    self.late += 1
                waiting.observed = min(waiting.observed, observed)
                waiting.merged = True
                self.replaced += 1
                if priority and lane is not self.urgent:
                    self.urgent.add(path, lane.pop(path))
                return True
        if self.backlog() >= MAX_BACKLOG:
            self.dropped += 1
            return False
        last = self.recent.get(path)
        cold = last is None or now - last > HOT_WINDOW
        lane = self.urgent if priority else self.cold if cold else self.normal
        lane.add(path, Waiting(body, observed, order=order))
        return True

    def next(self) -> tuple[bytes, Waiting] | None:
        for lane in self.lanes:
            if lane:
                return lane.first()
        return None

    def taken(self, path: bytes, now: float) -> None:
        """The change of ``path`` whose turn it was was forwarded."""
        for lane in self.lanes:
            if lane.pop(path, served=True) is not None:
                break
        recent = self.recent
        recent[path] = now
        recent.move_to_end(path)
        # Oldest first: a path forwarded longer than HOT_WINDOW ago counts as cold whether
        # kept or not, so an agent's storm of new files keeps seconds of them, not 100,000.
        while True:
            forwarded = next(iter(recent.values()))
            if now - forwarded <= HOT_WINDOW and len(recent) <= _RECENT_KEPT:
                break
            recent.popitem(last=False)
        self.forwarded += 1

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
        worker.last_seen, worker.interval = now, ready.interval
        return new

    def best_worker(self) -> Worker | None:
        worker = max(self.workers.values(), key=Worker.credit, default=None)
        return worker if worker is not None and worker.credit() > 0 else None

    def forget(self, worker: Worker) -> None:
        self.lost += worker.in_flight()
        self.workers.pop(worker.identity, None)

    def silent(self, now: float, intervals: float, heartbeat: float) -> list[Worker]:
        """Workers silent for ``intervals`` of their announced interval (at least the
        heartbeat interval)."""
        return [worker for worker in self.workers.values()
                if now - worker.last_seen > intervals * max(heartbeat, worker.interval)]

    def status(self) -> dict:
        return {"backlog": self.backlog(), "urgent": len(self.urgent), "cold": len(self.cold),
                "forwarded": self.forwarded, "replaced": self.replaced, "late": self.late,
                "dropped": self.dropped, "lost": self.lost,
                "workers": {w.name: {"in_flight": w.in_flight(), "credit": w.credit()}
                            for w in self.workers.values()}}
