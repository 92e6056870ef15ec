"""The writes, name operations and blind spots of one workspace, from either source.

A :class:`WriteRecorder` takes the :mod:`.events` values that L2's own
:class:`.marks.WorkspaceWatch` reads (root) or that ``gitsieve helper`` sends (the helper
client adds its own :class:`Missed` spans when the helper is lost) and keeps, for
``history`` seconds:

- writes per file identity (:class:`.write_history.WriteHistory`): a lookup computes the
  identity of the path as it is now, so a file renamed into place keeps its writes and a
  file given a freed inode number inherits nothing;
- name operations (create, delete, rename) per workspace-relative path;
- the spans where writes may have been missed (an overflow, a helper gap, still open while
  the helper is away) and the paths written before their directory was watched.

Each write or name operation is classified once, as it is recorded (``classify(lineage)``,
:meth:`.exact.WriterRules.classify`), while its lineage is what the reader knew then.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Callable, Iterable

from gitsieve.common.judge.attribution.events import (
    NameOp,
    Op,
    Overflow,
    OverflowSource,
    Unmarked,
    Write,
)
from gitsieve.common.judge.attribution.file_identity import FileIdentifier, FileIdentity, Keying
from gitsieve.common.judge.attribution.write_history import (
    HISTORY_PER_FILE,
    HISTORY_SECONDS,
    MAX_FILES,
    Missed,
    WriteHistory,
    events_of,
    kept_as,
)

_PRUNE_EVERY = 5.0
_SHARED_PATHS = 8192  # decoded paths kept for the events that follow (more than a drain's)
_NOTHING = object()
# Paths kept as written before their directory was watched; past this, one span for the
# whole workspace is kept instead (more changes UNKNOWN, none wrongly attributed).
MAX_UNMARKED = 100_000
# A directory's resolved path is reused this long (seconds): a backlog's changes in one
# directory resolve it once, and a directory replaced by a link is seen within a moment.
RESOLVED_FOR = 0.2
RESOLVED_KEPT = 4096


_MISSED_BY_SOURCE = {OverflowSource.FANOTIFY: Missed.FANOTIFY_OVERFLOW,
                     OverflowSource.LINEAGE: Missed.LINEAGE_OVERFLOW,
                     OverflowSource.CLIENT_BUFFER: Missed.CLIENT_BUFFER}


@dataclass(frozen=True, slots=True)
class WriteEvent:
    """One write: who (pid), when it was read (wall clock), and the writer classified."""

    pid: int
    stamp: float
    op: Op
    path: str
    evidence: object


@dataclass(frozen=True, slots=True)
class NameEvent:
    """One name operation: who (pid), when it was read (wall clock), which."""

    pid: int
    stamp: float
    op: Op
    path: str
    evidence: object


class WriteRecorder:
    """What one workspace's writers did, for attribution queries.

    ``root``: the workspace's top directory as the watcher of the events resolved it (paths
    in events are relative to it).  ``excluded``: relative directories whose writes are never
    a change (the runtime directory inside the workspace).  ``keying`` must be the one the
    events' identities were computed with.
    """

    def __init__(self, root: str, classify: Callable[[tuple], object],
                 excluded: Iterable[str] = (), history: float = HISTORY_SECONDS,
                 keying: Keying = Keying.HANDLE, clock: Callable[[], float] = time.time,
                 max_files: int = MAX_FILES):
        self.root = root
        self.prefix = root.rstrip("/") + "/"
        self.classify, self.clock, self.history = classify, clock, history
        self.excluded = tuple(os.fsencode(rel.strip("/") + "/") for rel in excluded)
        self.identify = FileIdentifier(keying)
        self.writes: WriteHistory[WriteEvent] = WriteHistory(
            history, max_files, clock, kind_of=lambda event: getattr(event.evidence, "writer",
                                                                     None))
        # path -> its newest name operations (HISTORY_PER_FILE at most, kept as events_of
        # reads them: a list costs 40 bytes more, a deque 600); least recently operated on
        # first, MAX_FILES
        self.names: dict[str, NameEvent | tuple[NameEvent, ...]] = {}  # see events_of
        self.max_files = max_files
        self.unmarked: dict[str, float] = {}  # path -> writes before this time unseen
        self.away_since: tuple[float, Missed] | None = None  # an open span (helper away)
        self.kept = 0
        self.bad_identities = 0
        self.missed_spans = 0
        self._next_prune = 0.0
        self._last_lineage: object = _NOTHING
        self._last_evidence = None
        self._decoded_paths: dict[bytes, str] = {}  # the latest paths read, up to _SHARED_PATHS
        self._last_pid = 0
        # directory -> (its resolved path, monotonic time to resolve it again)
        self._resolved: dict[str, tuple[str, float]] = {}

    # ----- recording ---------------------------------------------------------------------
    def record(self, events: Iterable) -> None:
        for event in events:
            kind = type(event)
            if kind is Write:
                self._record_write(event)
            elif kind is NameOp:
                self._record_name(event)
            elif kind is Unmarked:
                self._record_unmarked(event)
            elif kind is Overflow:
                self.note_missed(event.since_wall, event.until_wall,
                                 _MISSED_BY_SOURCE[event.source])
        now = self.clock()
        if now >= self._next_prune:
            self._next_prune = now + _PRUNE_EVERY
            self.prune(now)

    def _evidence(self, lineage: tuple) -> object:
        # One read's events of one writer share their lineage object: classify it once.
        if lineage is not self._last_lineage:
            self._last_lineage, self._last_evidence = lineage, self.classify(lineage)
        return self._last_evidence

    def _decoded(self, path: bytes) -> str:
        # A file's creation and its writes, read in the same drain (from two groups), share
        # one string in the names table and the write history (70 bytes a file).
        decoded = self._decoded_paths.get(path)
        if decoded is None:
            if len(self._decoded_paths) >= _SHARED_PATHS:
                self._decoded_paths.clear()
            decoded = self._decoded_paths[path] = os.fsdecode(path)
        return decoded

    def _pid(self, pid: int) -> int:
        # One writer's events share one int too (a pid over 256 is an object of 32 bytes).
        if pid != self._last_pid:
            self._last_pid = pid
        return self._last_pid

    def _excluded(self, path: bytes) -> bool:
        return path.startswith(self.excluded) if self.excluded else False

    def _record_write(self, write: Write) -> None:
        if self._excluded(write.path):
            return
        try:
            FileIdentity.decode(write.identity)
        except ValueError:  # not an identity any encoder made: nothing can match it
            self.bad_identities += 1
            return
        # Kept as it came, encoded (what decoding checked is all it says): one bytes
        # object, 70 bytes less a file than a FileIdentity with its key and device number.
        event = WriteEvent(self._pid(write.pid), write.wall, write.op, self._decoded(write.path),
                           self._evidence(write.lineage))
        self.writes.record(write.identity, event)
        self.kept += 1

    def _record_name(self, operation: NameOp) -> None:
        if operation.is_dir or self._excluded(operation.path):
            return
        rel = self._decoded(operation.path)
        kept = self.names.pop(rel, None)  # re-inserted: dict order is recency
        if kept is None:
            history = ()
            if len(self.names) >= self.max_files:
                self._evict_names()
        else:
            history = events_of(kept)
            if len(history) >= HISTORY_PER_FILE:
                history = history[1:]
        self.names[rel] = kept_as((*history, NameEvent(self._pid(operation.pid),
                                                       operation.wall, operation.op, rel,
                                                       self._evidence(operation.lineage))))
        self.kept += 1

    def _evict_names(self) -> None:
        """Forget the least recently operated-on path's name operations (a storm of new
        files beyond MAX_FILES within the history); their span becomes a gap."""
        rel, kept = next(iter(self.names.items()))
        del self.names[rel]
        history = events_of(kept)
        self.writes.note_gap(history[0].stamp, history[-1].stamp, Missed.HISTORY_CAP)

    def _record_unmarked(self, unmarked: Unmarked) -> None:
        if len(self.unmarked) >= MAX_UNMARKED:
            self.note_missed(unmarked.wall - self.history, unmarked.wall, Missed.UNMARKED)
            return
        self.unmarked[os.fsdecode(unmarked.path)] = unmarked.wall

    def note_missed(self, since: float, until: float, why: Missed) -> None:
        """Writes between ``since`` and ``until`` (wall clock) may be missing."""
        self.missed_spans += 1
        self.writes.note_gap(since, until, why)

    def open_missed(self, since: float, why: Missed) -> None:
        """Writes from ``since`` on may be missing, until :meth:`close_missed`."""
        if self.away_since is None:
            self.away_since = (since, why)

    def close_missed(self, until: float) -> None:
        if self.away_since is not None:
            since, why = self.away_since
            self.away_since = None
            self.note_missed(since, until, why)

    def prune(self, now: float | None = None) -> None:
        now = self.clock() if now is None else now
        self.writes.prune(now)
        horizon = now - self.history
        for rel in [rel for rel, kept in self.names.items()
                    if events_of(kept)[-1].stamp < horizon]:
            del self.names[rel]
        for rel in [rel for rel, seen in self.unmarked.items() if seen < horizon]:
            del self.unmarked[rel]

    # ----- queries -----------------------------------------------------------------------
    def relative(self, abs_path: str | os.PathLike) -> str:
        """``abs_path`` relative to the root (its parent resolved; the file may be gone)."""
        parent, name = os.path.split(os.fspath(abs_path))
        now = time.monotonic()
        resolved = self._resolved.get(parent)
        if resolved is None or resolved[1] < now:
            if len(self._resolved) >= RESOLVED_KEPT:
                self._resolved.clear()
            resolved = self._resolved[parent] = (os.path.realpath(parent),
                                                 now + RESOLVED_FOR)
        full = os.path.join(resolved[0], name)
        if full.startswith(self.prefix):  # resolved, so no ".." left to normalise
            return full[len(self.prefix):]
        return os.path.relpath(full, self.root)

    def writes_to(self, abs_path: str | os.PathLike, since: float,
                  until: float) -> list[WriteEvent]:
        """Writes of the file now at ``abs_path`` read between ``since`` and ``until``."""
        identity = self.identify.of_path(abs_path)
        return self.writes.writes_to(None if identity is None else identity.encode(), since,
                                     until)

    def operations_on(self, rel_path: str, ops: frozenset[Op], since: float,
                      until: float) -> list[NameEvent]:
        """Name operations ``ops`` on ``rel_path`` read between ``since`` and ``until``."""
        return [event for event in events_of(self.names.get(rel_path, ()))
                if event.op in ops and since < event.stamp <= until]

    def missed(self, rel_path: str, since: float, until: float,
               unmarked: bool = True) -> Missed | None:
        """Why writes to ``rel_path`` between ``since`` and ``until`` may be missing, or
        None when every write then was seen.  ``unmarked`` False: a file written before its
        directory was watched does not count (a removal seen since is still its remover's)."""
        if self.away_since is not None and self.away_since[0] <= until:
            return self.away_since[1]
        gap = self.writes.gap_within(since, until)
        if gap is not None:
            return gap.reason
        if unmarked and self.unmarked:
            path = rel_path
            while path:
                seen = self.unmarked.get(path)
                if seen is not None and seen > since:
                    return Missed.UNMARKED
                path = os.path.dirname(path)
        return None
