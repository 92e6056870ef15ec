"""Recorded writes per file identity, for a bounded time: what a change is attributed from.

:class:`.recorder.WriteRecorder` keeps one per workspace, fed by L2's own fanotify groups
(root) or by the writes ``gitsieve helper`` reports.  A lookup computes the identity of the
path as it is now, so a file renamed into place (``write x.tmp; rename to x``) keeps its
writes, and a file that got a freed inode number does not inherit the writes of the inode's
previous file.

Times where writes may have been missed (a fanotify or socket overflow, a helper restart,
a directory written before it was marked) are kept as gaps: a change observed in or just
after one must not be called the person's on the writes seen alone.
"""
from __future__ import annotations

import enum
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable, Generic, Hashable, TypeVar

HISTORY_SECONDS = 30.0
HISTORY_PER_FILE = 32
# Files with writes kept at once; at the cap the stalest file is forgotten first, and the
# span of its forgotten writes becomes a gap: a change weighing them is UNKNOWN (the
# content layer decides), never the user's and never the system's.
MAX_FILES = 100_000
MAX_GAPS = 256

Event = TypeVar("Event")


def events_of(kept) -> tuple:
    """A file's kept events as a tuple, newest last: one event is kept as itself, more as a
    tuple (events are never tuples), so the usual file of one event costs no tuple (64
    bytes: 6 MiB of L2 in an agent's storm of 50,000 new files, for its writes and its
    names)."""
    return kept if type(kept) is tuple else (kept,)


def kept_as(events: tuple):
    """What :func:`events_of` reads back as ``events`` (one or more)."""
    return events[0] if len(events) == 1 else events


class Missed(enum.Enum):
    """Why writes may have been missed: a change then is UNKNOWN, never the user's."""

    FANOTIFY_OVERFLOW = "the kernel's fanotify queue overflowed"
    HISTORY_CAP = "the write history was full and forgot this file's writes"
    LINEAGE_OVERFLOW = "process events were lost"
    CLIENT_BUFFER = "the attribution helper dropped events this worker read too slowly"
    HELPER_AWAY = "the attribution helper was not connected"
    UNMARKED = "written in a directory before it was watched"

    def describe(self) -> str:
        return self.value


@dataclass(frozen=True)
class Gap:
    """Writes between ``since`` and ``until`` (wall clock) may be missing."""

    since: float
    until: float
    reason: Missed


class WriteHistory(Generic[Event]):
    """A file's identity (the recorder keys by ``FileIdentity.encode()``) -> its recent events
    (anything with a ``stamp``, wall-clock seconds).

    Per file it keeps the newest event of each kind ``kind_of`` names (the writer's class:
    user, system, gitsieve's own, unknown), not a fixed number of events: a hundred agent
    rewrites after the person's write cannot push the person's out, and a file costs a few
    entries whatever is written to it.  A file's events are kept as :func:`events_of` reads
    them (a dict for one event cost 176 bytes more: 17 MiB of L2 at ``MAX_FILES``)."""

    def __init__(self, history: float = HISTORY_SECONDS, max_files: int = MAX_FILES,
                 clock: Callable[[], float] = time.time,
                 kind_of: Callable[[Event], object] = lambda event: None):
        self.history, self.max_files, self.clock, self.kind_of = history, max_files, clock, kind_of
        self.files: dict[Hashable, Event | tuple[Event, ...]] = {}  # see events_of
        self.gaps: deque[Gap] = deque(maxlen=MAX_GAPS)
        self.evicted = 0

    def __len__(self) -> int:
        return len(self.files)

    def record(self, identity: Hashable, event: Event) -> None:
        kept = self.files.pop(identity, None)  # re-inserted: dict order is recency
        if kept is None:
            if len(self.files) >= self.max_files:
                self._evict()
            self.files[identity] = event
            return
        kind = self.kind_of(event)
        self.files[identity] = kept_as((*(older for older in events_of(kept)
                                          if self.kind_of(older) != kind), event))

    def _evict(self) -> None:
        """Forget the least recently written file; its writes' span becomes a gap."""
        identity = next(iter(self.files))
        stamps = [event.stamp for event in events_of(self.files.pop(identity))]
        self.evicted += 1
        self.note_gap(min(stamps), max(stamps), Missed.HISTORY_CAP)

    def writes_to(self, identity: Hashable | None, since: float,
                  until: float) -> list[Event]:
        """The newest event of each kind written within ``(since, until]``."""
        if identity is None:
            return []
        return sorted((event for event in events_of(self.files.get(identity, ()))
                       if since < event.stamp <= until), key=lambda event: event.stamp)

    def note_gap(self, since: float, until: float, reason: Missed) -> None:
        self.gaps.append(Gap(since, until, reason))

    def gap_within(self, since: float, until: float) -> Gap | None:
        """A gap overlapping ``[since, until]``: writes in that window may be unknown."""
        return next((gap for gap in reversed(self.gaps)
                     if gap.since <= until and gap.until >= since), None)

    def prune(self, now: float | None = None) -> None:
        horizon = (self.clock() if now is None else now) - self.history
        stale = [key for key, kept in self.files.items()
                 if max(event.stamp for event in events_of(kept)) < horizon]
        for key in stale:
            del self.files[key]
        while self.gaps and self.gaps[0].until < horizon:
            self.gaps.popleft()
