"""The debounce judge: which paths have been quiet long enough to commit.  Socket-free.

Per path it keeps the newest ``(epoch, seq)`` seen, so stale decisions are dropped; a
decision beyond what the watcher issued (:mod:`gitsieve.common.actor.runs`) is dropped
too, so a forged or corrupt frame cannot make a path's later changes look stale.

A ``commit=True`` decision makes the path pending.  Its quiet period runs from the path's
last real write as the watcher saw it (``Decision.written``, CLOCK_MONOTONIC, never later
than the decision's arrival), or from the arrival when the watcher did not know (a
reconcile).  A ``commit=False`` decision never cancels nor delays a pending commit (a
system rewrite of a file the user changed still leaves the user's change to commit), but
its open-for-writing state counts: a half-written file is never released, whoever writes
it.  A pending path is due at ``min(last write + quiet, first pending + max(quiet,
max_wait))``; while a process holds it open for writing, not before it has been open
``open_max`` seconds (a log or a database is then committed as it is, after its quiet
period, and ``explain`` says so).

The sides of a move (``Decision.partners``) are released together: a due path waits for
every linked path that is pending but not yet due, and up to ``PARTNER_WAIT`` for a
linked path whose decision has not arrived, so a rename lands in one commit.

Caps (each with its behaviour at the cap, none losing a change): ``MAX_PENDING`` pending
paths (at the cap every pending path not open for writing is released at once, one early
commit); ``MAX_TRACKED`` paths with ordering state (the least recently seen settled paths
are forgotten first, as after ``FORGET_AFTER`` of silence); ``MAX_LINKS`` move links (the
oldest go first: their paths are released on their own).
"""
from __future__ import annotations

import heapq
from collections import deque
from dataclasses import dataclass
from enum import Enum
from typing import Callable

from gitsieve.common.protocol.messages import Decision
from gitsieve.common.protocol.states import Action, Hold, Why
from gitsieve.common.protocol.trail import judged_by_content_alone

FORGET_AFTER = 3600.0  # a settled path's ordering state is dropped after this much silence
MAX_PENDING = 100_000
MAX_TRACKED = 200_000
MAX_LINKS = 10_000
PARTNER_WAIT = 2.0  # seconds a due path waits for the other side of its move to be decided
LINK_KEPT = 30.0  # seconds a move link is kept
MAX_COMPONENT = 64  # paths released together at most (a chain of moves)


class Intake(Enum):
    TAKEN = "taken"
    STALE = "stale"            # older than a decision already seen for the path
    NOT_ISSUED = "not-issued"  # beyond any (epoch, seq) the watcher issued


@dataclass(slots=True)  # one per tracked path: up to MAX_TRACKED
class PathState:
    newest: tuple[float, int]  # (epoch, seq) of the newest decision seen
    last_seen: float  # arrival of the newest decision (for forgetting)
    first_pending: float = 0.0
    last_event: float = 0.0  # the last real write of a pending change (else its arrival)
    action: Action = Action.ANALYZE
    observed: float = 0.0  # earliest ``observed`` among the pending decisions
    quiet: float = 0.0
    recheck: bool = False  # every pending commit decision came from content alone
    open_since: float = 0.0  # a process holds it open for writing since (0: not open)
    dropped: bool = False  # the newest decision was not to commit it

    def due(self, max_wait: float, open_max: float) -> float:
        normal = min(self.last_event + self.quiet,
                     self.first_pending + max(self.quiet, max_wait))
        return max(normal, self.open_since + open_max) if self.open_since else normal

    def open_past(self, now: float, open_max: float) -> bool:
        """Open for writing for longer than open_max: released as it is."""
        return bool(self.open_since) and now - self.open_since >= open_max


class Debounce:
    def __init__(self, config, issued: Callable[[], tuple[int, int] | None] | None = None):
        self.config = config
        self.issued = issued or (lambda: None)
        self._issued: tuple[int, int] | None = None  # the bound last read
        self.paths: dict[str, PathState] = {}
        # Paths with a commit waiting for their quiet period: the only ones the due checks
        # look at (``paths`` also holds every settled path for an hour).
        self.pending: set[str] = set()
        # (due moment, path) for the pending paths: never later than the path's own due
        # moment (a change that makes it earlier pushes a new entry; one that makes it later
        # leaves an early entry, recomputed when it comes up), so the next due path is found
        # without looking at every pending one (a backlog of 10,000 paths after a start).
        self._due: list[tuple[float, str]] = []
        self.links: dict[str, dict[str, float]] = {}  # path -> {partner: linked at}
        self.link_order: deque[tuple[str, str]] = deque()
        self.awaiting: dict[str, float] = {}  # path named by a partner, its decision not in
        self.stale = 0
        self.not_issued = 0
        self.early_releases = 0  # pending paths released early at the MAX_PENDING cap

    # ----- intake --------------------------------------------------------------------
    def _issued_covers(self, order: tuple) -> bool:
        """Whether the watcher issued ``order`` (True when nothing bounds it).  The bound is
        asked again only when an order passes the one last known."""
        if self._issued is None or order > self._issued:
            self._issued = self.issued()
        return self._issued is None or order <= self._issued

    def is_stale(self, decision: Decision) -> bool:
        state = self.paths.get(decision.path)
        if state is None or (decision.epoch, decision.seq) >= state.newest:
            return False
        # A newest order beyond what the watcher issued (a counter reset) orders nothing.
        return self._issued_covers(state.newest)

    def check(self, decision: Decision) -> Intake:
        """What :meth:`intake` would make of ``decision``, changing nothing."""
        if not self._issued_covers((decision.epoch, decision.seq)):
            return Intake.NOT_ISSUED
        return Intake.STALE if self.is_stale(decision) else Intake.TAKEN

    def intake(self, decision: Decision, now: float) -> Intake:
        """Take a decision in (``now``: time.monotonic())."""
        order = (decision.epoch, decision.seq)
        verdict = self.check(decision)
        if verdict == Intake.NOT_ISSUED:
            self.not_issued += 1
            return verdict
        if verdict == Intake.STALE:
            self.stale += 1
            return verdict
        state = self.paths.get(decision.path)
        if state is None:
            state = self.paths[decision.path] = PathState(newest=order, last_seen=now)
        state.newest, state.last_seen = order, now
        state.open_since = min(decision.open_since, now)
        state.dropped = not decision.commit
        self._note_partners(decision, now)
        if not decision.commit:
            self._schedule(decision.path)  # its open state may move a pending commit
            return Intake.TAKEN  # ordering and open state only: never cancels nor delays
        written = min(decision.written, now) if decision.written else now
        content_only = judged_by_content_alone(decision.trail)
        if decision.path not in self.pending:
            if len(self.pending) >= MAX_PENDING:
                self._release_early(now)
            self.pending.add(decision.path)
            state.first_pending = now
            state.last_event = written
            state.observed = decision.observed
            state.recheck = content_only
        else:
            state.last_event = max(state.last_event, written)
            state.observed = min(state.observed, decision.observed)
            state.recheck = state.recheck and content_only
        state.action = decision.action
        state.quiet = self.config.debounce_for(decision.path, decision.action)
        self._schedule(decision.path)
        return Intake.TAKEN

    def add(self, decision: Decision, now: float) -> bool:
        """Take a decision in; False when it was dropped (stale or never issued)."""
        return self.intake(decision, now) == Intake.TAKEN

    def _release_early(self, now: float) -> None:
        """The pending set is full: every pending path not open for writing is due now."""
        max_wait, open_max = self.config.debounce_max_wait, self.config.debounce_open_max
        for path in self.pending:
            state = self.paths[path]
            if not state.open_since and state.due(max_wait, open_max) > now:
                state.quiet, state.last_event, state.first_pending = 0.0, now, now
                self.early_releases += 1
        self._rebuild_due()

    # ----- moves -----------------------------------------------------------------------
    def _note_partners(self, decision: Decision, now: float) -> None:
        path = decision.path
        self.awaiting.pop(path, None)  # its decision is in
        for partner in decision.partners:
            if partner == path:
                continue
            named_back = path in self.links.get(partner, ())
            self.links.setdefault(path, {})[partner] = now
            self.links.setdefault(partner, {})[path] = now
            self.link_order.append((path, partner))
            if not named_back and partner not in self.awaiting:
                self.awaiting[partner] = now
        while len(self.link_order) > MAX_LINKS:
            self._unlink(*self.link_order.popleft())

    def _unlink(self, first: str, second: str) -> None:
        for one, other in ((first, second), (second, first)):
            linked = self.links.get(one)
            if linked is not None:
                linked.pop(other, None)
                if not linked:
                    del self.links[one]
                    self.awaiting.pop(one, None)
        self._schedule(first)  # each side may now go sooner, on its own
        self._schedule(second)

    def component(self, path: str) -> list[str]:
        """``path`` and every path linked to it through moves (at most MAX_COMPONENT)."""
        if path not in self.links:
            return [path]
        found, queue = {path}, [path]
        while queue and len(found) < MAX_COMPONENT:
            for other in self.links.get(queue.pop(), ()):
                if other not in found:
                    found.add(other)
                    queue.append(other)
        return sorted(found)

    def _effective_due(self, members: list[str]) -> float:
        """When a group of linked paths may go, together."""
        max_wait, open_max = self.config.debounce_max_wait, self.config.debounce_open_max
        moments = [self.paths[m].due(max_wait, open_max) for m in members if m in self.pending]
        moments += [since + PARTNER_WAIT for m in members
                    if (since := self.awaiting.get(m)) is not None]
        return max(moments) if moments else 0.0

    # ----- release ---------------------------------------------------------------------
    def due_at(self, path: str) -> float:
        """When ``path`` (pending) goes, with the paths linked to it."""
        if path not in self.links:
            state = self.paths[path]
            return state.due(self.config.debounce_max_wait, self.config.debounce_open_max)
        return self._effective_due(self.component(path))

    def withdraw(self, path: str) -> bool:
        """Take a pending commit back (its version was declared the system's since it was
        judged); whether one was pending.  Its entry in the due heap goes when it comes up."""
        if path not in self.pending:
            return False
        self.pending.discard(path)
        return True

    def dropped_order(self, path: str) -> tuple[float, int] | None:
        """``(epoch, seq)`` of ``path``'s newest decision if it was not to commit it."""
        state = self.paths.get(path)
        return state.newest if state is not None and state.dropped else None

    def due_in(self, path: str, now: float) -> float | None:
        if path not in self.pending:
            return None
        return max(0.0, self.due_at(path) - now)

    def _schedule(self, path: str) -> None:
        """Note the due moments of ``path`` and the paths moved with it, which a change of
        its state or links may have made earlier."""
        for member in self.component(path):
            if member in self.pending:
                heapq.heappush(self._due, (self.due_at(member), member))
        if len(self._due) > 2 * len(self.pending) + 64:
            self._rebuild_due()  # entries made late by later writes: one per pending path

    def _rebuild_due(self) -> None:
        self._due = [(self.due_at(path), path) for path in self.pending]
        heapq.heapify(self._due)

    def _earliest(self) -> tuple[float, str] | None:
        """The pending path due first, with its due moment (entries found early or for
        paths no longer pending are corrected or dropped on the way)."""
        while self._due:
            due, path = self._due[0]
            if path not in self.pending:
                heapq.heappop(self._due)
                continue
            actual = self.due_at(path)
            if actual != due:
                heapq.heapreplace(self._due, (actual, path))
                continue
            return due, path
        return None

    def take_due(self, now: float) -> list[tuple[str, PathState]]:
        """The due paths (sorted, the sides of a move together), no longer pending."""
        released: set[str] = set()
        while (earliest := self._earliest()) is not None and earliest[0] <= now:
            path = earliest[1]
            members = [m for m in self.component(path) if m in self.pending]
            released.update(members)
            self.pending.difference_update(members)
        self._expire_links(now)
        return [(path, self.paths[path]) for path in sorted(released)]

    def _expire_links(self, now: float) -> None:
        while self.link_order:
            first, second = self.link_order[0]
            linked_at = self.links.get(first, {}).get(second)
            if linked_at is not None and (now - linked_at < LINK_KEPT
                                          or first in self.pending or second in self.pending):
                break
            self.link_order.popleft()
            self._unlink(first, second)
        for path in [p for p, since in self.awaiting.items() if now - since > LINK_KEPT]:
            del self.awaiting[path]
            self._schedule(path)

    def make_all_due(self, now: float) -> int:
        """Every pending path due at once (``actorctl flush``); how many there were.  A path
        still open for writing keeps waiting for its close (or open_max)."""
        for path in self.pending:
            state = self.paths[path]
            state.quiet = 0.0
            state.last_event = min(state.last_event, now)
        self._rebuild_due()
        return len(self.pending)

    def next_due(self, now: float) -> float | None:
        earliest = self._earliest()
        return None if earliest is None else max(0.0, earliest[0] - now)

    # ----- introspection ---------------------------------------------------------------
    def hold(self, path: str, now: float) -> Why | None:
        """The path's own reason to wait beyond its quiet period, if any."""
        state = self.paths.get(path)
        if state is None or path not in self.pending or not state.open_since:
            return None
        open_max = self.config.debounce_open_max
        if state.open_past(now, open_max):
            return None
        return Why(Hold.OPEN_FOR_WRITING,
                   f"for {now - state.open_since:.1f}s; committed once closed, or as it is "
                   f"after [debounce] open_max = {open_max:g}s")

    def pending_list(self, now: float, limit: int) -> list[dict]:
        ordered = sorted((self.due_at(path) - now, path) for path in self.pending)
        return [{"path": path, "due_in": round(max(0.0, due_in), 3),
                 "action": self.paths[path].action} for due_in, path in ordered[:limit]]

    def forget_settled(self, now: float) -> None:
        """Drop ordering state of paths long settled (and, past MAX_TRACKED, of the least
        recently seen settled paths), so memory does not grow forever."""
        old = [path for path, state in self.paths.items()
               if path not in self.pending and now - state.last_seen > FORGET_AFTER]
        for path in old:
            del self.paths[path]
        excess = len(self.paths) - MAX_TRACKED
        if excess > 0:
            settled = sorted((state.last_seen, path) for path, state in self.paths.items()
                             if path not in self.pending)
            for _, path in settled[:excess]:
                del self.paths[path]
