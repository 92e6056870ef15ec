"""What the watcher knows of writing and moving, per path.  Socket-free and git-free.

:class:`WriteTracker`: each path's last real write (every IN_MODIFY, CLOCK_MONOTONIC, which
every process on the machine shares) and whether a process still holds it open for writing
(created or modified, no IN_CLOSE_WRITE yet).  The debouncer's quiet period runs from the
last write, and a path still open is not committed until closed (or ``[debounce]
open_max``).  inotify tells a close of a descriptor opened for writing, not which one: with
two writers, the first close ends the open state.

:class:`MoveTracker`: the sides of moves, so the debouncer can release them together.
inotify pairs a rename's IN_MOVED_FROM and IN_MOVED_TO by cookie, possibly across two reads;
a move into a directory whose watch did not exist yet shows only as a removal and a file
found by the new directory's scan, paired here when their blobs are equal (the caller
supplies the blob ids).  A path keeps its partners for ``MEMORY`` seconds, so a change of it
soon after the move (an editor writing the renamed file) still names them.

:class:`ReportPacer`: when a write is reported.  A path reported less than ``every`` ago
is reported again at the trailing edge, ``every`` after its last report, whatever number
of writes came between: a file an autonomous process rewrites hundreds of times a second
costs a report per ``every``, not one per write, so the pipeline's work grows with paths,
not events.  A close ending an open state the debouncer was told of is reported at once
(it lifts the debouncer's hold on a person's save).  ``every`` is at most half the shortest
quiet period, so a held report reaches the debouncer before the quiet period of the
path's last report ends.

Caps: ``MAX_PATHS`` entries per table; at the cap the oldest entries go first (a forgotten
open state lets the path commit after its quiet period; a forgotten move leaves its sides
to commit on their own, never to be lost; a forgotten report time reports the next write
at once).
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

MAX_PATHS = 65_536
MEMORY = 2.0  # seconds a path keeps the partners of its move
COOKIE_KEPT = 1.0  # seconds an unpaired IN_MOVED_FROM waits for its IN_MOVED_TO


@dataclass
class Writing:
    written: float = 0.0     # last real write (monotonic); 0: none seen
    open_since: float = 0.0  # open for writing since (monotonic); 0: not open


class WriteTracker:
    def __init__(self, max_paths: int = MAX_PATHS):
        self.paths: OrderedDict[str, Writing] = OrderedDict()
        self.max_paths = max_paths
        self.evicted = 0

    def _entry(self, path: str) -> Writing:
        entry = self.paths.get(path)
        if entry is None:
            entry = self.paths[path] = Writing()
            while len(self.paths) > self.max_paths:
                self.paths.popitem(last=False)
                self.evicted += 1
        else:
            self.paths.move_to_end(path)
        return entry

    def wrote(self, path: str, now: float) -> bool:
        """A real write (IN_MODIFY, or the creation of a regular file): it is open for
        writing until closed.  True when this opened it (the debouncer must hear at once)."""
        entry = self._entry(path)
        entry.written = now
        if entry.open_since:
            return False
        entry.open_since = now
        return True

    def closed(self, path: str, now: float) -> None:
        entry = self._entry(path)
        entry.open_since = 0.0
        if not entry.written:
            entry.written = now

    def facts(self, path: str) -> Writing:
        """The path's writing facts now (a copy); closed paths are forgotten once told."""
        entry = self.paths.get(path)
        if entry is None:
            return Writing()
        told = Writing(entry.written, entry.open_since)
        if not entry.open_since:
            del self.paths[path]
        return told

    def is_open(self, path: str) -> bool:
        entry = self.paths.get(path)
        return entry is not None and bool(entry.open_since)

    def moved(self, old: str, new: str) -> None:
        entry = self.paths.pop(old, None)
        if entry is not None:
            self.paths[new] = entry

    def gone(self, path: str) -> None:
        self.paths.pop(path, None)

    def gone_below(self, prefix: str) -> None:
        for path in [p for p in self.paths if p.startswith(prefix)]:
            del self.paths[path]


HOT_REPORT_EVERY = 0.25  # seconds: the most often a path's writes are reported


def report_interval(quiet_periods) -> float:
    """``every`` of the watcher's ReportPacer: ``HOT_REPORT_EVERY``, at most half the
    shortest quiet period (0 for a quiet period of 0: every write is reported at once)."""
    return min([HOT_REPORT_EVERY] + [max(0.0, quiet) / 2 for quiet in quiet_periods])


class ReportPacer:
    """When each write is reported: at once, or held until the trailing edge."""

    def __init__(self, every: float, max_paths: int = MAX_PATHS):
        self.every = every
        self.max_paths = max_paths
        self.last: OrderedDict[str, float] = OrderedDict()  # path -> its last write report
        self.open_told: set[str] = set()  # paths whose last report said open for writing

    def hold_until(self, path: str, now: float, closing: bool) -> float | None:
        """None: report this write at once; else the moment its held report is due."""
        if closing and path in self.open_told:
            return None
        last = self.last.get(path)
        if last is None or now >= last + self.every:
            return None
        return last + self.every

    def told(self, path: str, now: float, still_open: bool) -> None:
        """A write of ``path`` was reported (saying whether it is still open)."""
        self.last[path] = now
        self.last.move_to_end(path)
        while len(self.last) > self.max_paths:
            self.open_told.discard(self.last.popitem(last=False)[0])
        if still_open:
            self.open_told.add(path)
        else:
            self.open_told.discard(path)

    def forget(self, path: str) -> None:
        """Its next write is reported at once (the path was removed, or reported from
        ``git status``, whose version may be long quiet)."""
        if self.last.pop(path, None) is not None:
            self.open_told.discard(path)


@dataclass
class Candidate:
    """One side of a possible move inotify did not pair: a removal or an arrival."""

    since: float
    blob: str | None = None  # its blob id, once known
    checked: bool = False    # its blob was looked up (a removal untracked stays None)


@dataclass
class Moves:
    partners: set[str] = field(default_factory=set)
    until: float = 0.0


class MoveTracker:
    def __init__(self, window: float, max_paths: int = MAX_PATHS):
        self.window = window  # an unpaired removal and arrival within it may be one move
        self.max_paths = max_paths
        self.cookies: OrderedDict[int, tuple[str, float]] = OrderedDict()  # unpaired FROMs
        self.memory: OrderedDict[str, Moves] = OrderedDict()
        self.removals: OrderedDict[str, Candidate] = OrderedDict()
        self.arrivals: OrderedDict[str, Candidate] = OrderedDict()

    # ----- inotify's own pairs ---------------------------------------------------------
    def moved_from(self, cookie: int, path: str, now: float) -> None:
        """An IN_MOVED_FROM whose IN_MOVED_TO was not in the same read."""
        self.cookies[cookie] = (path, now)
        self._trim(self.cookies)

    def take_cookie(self, cookie: int, now: float) -> str | None:
        """The old name of an IN_MOVED_TO whose IN_MOVED_FROM came in an earlier read."""
        found = self.cookies.pop(cookie, None)
        if found is None or now - found[1] > COOKIE_KEPT:
            return None
        return found[0]

    def pair(self, first: str, second: str, now: float) -> None:
        """``first`` and ``second`` are the two sides of one move."""
        for one, other in ((first, second), (second, first)):
            entry = self.memory.get(one)
            if entry is None or entry.until < now:
                entry = self.memory[one] = Moves()
            entry.partners.add(other)
            entry.until = now + MEMORY
            self.memory.move_to_end(one)
            self.removals.pop(one, None)
            self.arrivals.pop(one, None)
        self._trim(self.memory)

    def partners(self, path: str, now: float) -> tuple[str, ...]:
        entry = self.memory.get(path)
        if entry is None:
            return ()
        if entry.until < now:
            del self.memory[path]
            return ()
        return tuple(sorted(entry.partners))

    # ----- moves inotify could not pair (matched by blob) --------------------------------
    def removed(self, path: str, now: float) -> None:
        self.arrivals.pop(path, None)
        self.removals[path] = Candidate(now)
        self._trim(self.removals)

    def arrived(self, path: str, now: float) -> None:
        self.removals.pop(path, None)
        self.arrivals[path] = Candidate(now)
        self._trim(self.arrivals)

    def expire(self, now: float) -> None:
        for table in (self.removals, self.arrivals):
            while table and now - next(iter(table.values())).since > self.window:
                table.popitem(last=False)
        while self.cookies and now - next(iter(self.cookies.values()))[1] > COOKIE_KEPT:
            self.cookies.popitem(last=False)

    def unmatched(self) -> bool:
        """Both a removal and an arrival wait: worth looking up blobs."""
        return bool(self.removals) and bool(self.arrivals)

    def match(self, now: float) -> list[tuple[str, str]]:
        """(removed, arrived) pairs with equal blobs; both sides then count as paired."""
        by_blob = {}
        for path, candidate in self.removals.items():
            if candidate.blob is not None:
                by_blob.setdefault(candidate.blob, path)
        pairs = []
        for path, candidate in list(self.arrivals.items()):
            removed = by_blob.pop(candidate.blob, None) if candidate.blob else None
            if removed is not None:
                pairs.append((removed, path))
                self.pair(removed, path, now)
        return pairs

    def _trim(self, table: OrderedDict) -> None:
        while len(table) > self.max_paths:
            table.popitem(last=False)
