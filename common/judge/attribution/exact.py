"""Exact attribution: every writer by pid and lineage.

fanotify groups marking the workspace's directories (:class:`.marks.WorkspaceWatch`) name
the pid of every write and of every create, delete and rename; the proc connector lineage
(:mod:`.lineage`) names its ancestors even after they exit; :class:`WriterRules` classifies
the chain as SYSTEM (an autonomous process by command line, uid, cgroup or systemd unit),
SELF (gitsieve's own processes, marked in their environment) or USER (any other process: a
positively identified non-autonomous writer).  What was seen is kept per file identity and
path in a :class:`.recorder.WriteRecorder`; a change whose writes may have been missed (an
overflow, a directory written before it was watched, the helper away) is UNKNOWN.

:class:`ExactAttributor` owns the groups and the lineage itself (root / CAP_SYS_ADMIN);
:class:`.helper.HelperAttributor` gets the same events from ``gitsieve helper``; both are
:class:`RecordedAttributor` subclasses.
"""
from __future__ import annotations

import abc
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from gitsieve.common.git.head import FILE_TIME_LAG, taken_after
from gitsieve.common.judge.attribution.base import (
    CONFIDENCE,
    SELF,
    SYSTEM,
    UNKNOWN,
    USER,
    Attribution,
    AutonomousMatcher,
    bounded,
    found_in,
)
from gitsieve.common.judge.attribution.events import (
    ARRIVALS,
    REMOVALS,
    LineageEntry,
    Op,
    lineage_entries,
)
from gitsieve.common.judge.attribution.file_identity import FileIdentifier, Keying
from gitsieve.common.judge.attribution.marks import WorkspaceWatch
from gitsieve.common.judge.attribution.recorder import WriteRecorder
from gitsieve.common.judge.attribution.write_history import Missed
from gitsieve.common.protocol.states import Mode, ProcessAction, Technique

log = logging.getLogger(__name__)


# ----- the exact, privileged path ------------------------------------------------------
# Writes read this long before a change's observation still belong to it (the watcher may
# lag behind the kernel), unless HEAD moved in between (those writes were committed).
WRITE_LOOKBACK = 2.0


@dataclass(frozen=True)
class WriterEvidence:
    """One writer classified while its lineage was fresh."""

    writer: str
    pid: int
    cmdline: str
    ancestor_pid: int | None
    ancestor_cmdline: str
    matched_by: str


class WriterRules:
    """Classifies a process lineage: SYSTEM, SELF or USER, and which process decided."""

    def __init__(self, processes: Iterable[str] = (), uids: Iterable[int] = (),
                 cgroups: Iterable[str] = (), units: Iterable[str] = ()):
        self.matcher = AutonomousMatcher(processes)
        self.uids = frozenset(uids)
        self.cgroups = tuple(bounded(p, "[filter] autonomous_cgroups") for p in cgroups)
        self.units = tuple(units)

    @classmethod
    def from_config(cls, config) -> "WriterRules":
        return cls(config.autonomous_processes, config.autonomous_uids,
                   config.autonomous_cgroups, config.autonomous_units)

    def _unit_of(self, cgroup: str) -> str:
        for line in cgroup.splitlines():
            parts = line.rsplit(":", 1)[-1].split("/")
            for unit in self.units:
                if unit in parts:
                    return unit
        return ""

    def autonomous_reason(self, info) -> str:
        """Why ``info`` (a ProcInfo) is autonomous, or "" when it is not."""
        if self.matcher.matches(info.cmdline):
            return "autonomous_processes"
        if info.uid in self.uids:
            return f"autonomous_uids ({info.uid})"
        if any(found_in(pattern, info.cgroup) for pattern in self.cgroups):
            return "autonomous_cgroups"
        unit = self._unit_of(info.cgroup) if self.units else ""
        return f"autonomous_units ({unit})" if unit else ""

    def classify(self, chain: list) -> WriterEvidence:
        """``chain``: the writer's ProcInfo first, then its ancestors."""
        if not chain:  # gone before anything about it was read: never assumed the user's
            return WriterEvidence(UNKNOWN, 0, "", None, "", "unknown lineage")
        writer = chain[0]
        for info in chain:
            if info.inherited and len(chain) > 1:
                continue  # its parent, next in the chain, carries the same evidence
            if info.gitsieve_mark:
                return WriterEvidence(SELF, writer.pid, writer.cmdline, info.pid, info.cmdline,
                                      "gitsieve's own process")
        for info in chain:
            if info.inherited and len(chain) > 1:
                continue  # its parent, next in the chain, carries the same evidence
            reason = self.autonomous_reason(info)
            if reason:
                return WriterEvidence(SYSTEM, writer.pid, writer.cmdline, info.pid,
                                      info.cmdline, reason)
        lost = next((info for info in chain if info.exec_lost), None)
        if lost is not None:
            # It ran a program we never saw (gone before /proc was read): not provably
            # the user's, so the change falls through to the content layer.
            return WriterEvidence(UNKNOWN, writer.pid, writer.cmdline, lost.pid, "",
                                  "exec'd program unknown (exited before it was read)")
        return WriterEvidence(USER, writer.pid, writer.cmdline, None, "",
                              "no autonomous process in its lineage")


def combine(events: list, technique: Technique = Technique.FANOTIFY) -> Attribution | None:
    """One verdict for the writes of one change: any USER write makes it the user's (the
    commit carries the user's bytes); else any SYSTEM; else SELF; writes whose writer could
    not be classified make it UNKNOWN (never a repeat of an earlier verdict)."""
    if not events:
        return None
    by_writer: dict[str, tuple[WriterEvidence, object]] = {}
    for event in events:
        evidence = event.evidence
        if isinstance(evidence, WriterEvidence):
            by_writer.setdefault(evidence.writer, (evidence, event))
    for writer in (USER, SYSTEM, SELF, UNKNOWN):
        if writer in by_writer:
            chosen, event = by_writer[writer]
            confidence = CONFIDENCE[technique] if writer != UNKNOWN else 0.0
            return Attribution(writer, technique, chosen.pid, chosen.cmdline, confidence,
                               chosen.ancestor_pid, chosen.ancestor_cmdline, chosen.matched_by,
                               len(events), max(event.stamp for event in events),
                               _ACTION_OF.get(event.op, ProcessAction.WRITTEN))
    return None


_ACTION_OF = {Op.MOVED_TO: ProcessAction.MOVED_INTO_PLACE, Op.CREATE: ProcessAction.CREATED,
              Op.DELETE: ProcessAction.REMOVED, Op.MOVED_FROM: ProcessAction.MOVED_AWAY}


def made_by_the_system(arrivals: list) -> bool:
    """A file found in a directory marked late was created (or moved in) by autonomous or
    gitsieve's own processes only: the writes before the mark were theirs (another process
    would have had to write the file within the moment before the mark).  Never so for a
    user's file: that stays UNKNOWN."""
    return bool(arrivals) and all(isinstance(event.evidence, WriterEvidence) and
                                  event.evidence.writer in (SYSTEM, SELF)
                                  for event in arrivals)


def blind(missed: Missed, technique: Technique) -> Attribution:
    """The verdict for a change whose writes may have been missed: UNKNOWN, never USER."""
    return Attribution(UNKNOWN, technique, 0, "", 0.0,
                       matched_by=f"writes may have been missed: {missed.describe()}", writes=0)


class RecordedAttributor(abc.ABC):
    """Exact attribution from a :class:`.recorder.WriteRecorder`, whichever source feeds it
    (L2's own fanotify groups, or ``gitsieve helper``): the window of writes a change
    weighs, the blind spots that make it UNKNOWN, and the verdict.

    Subclasses set ``recorder``, ``git_dir``, ``mode`` and ``technique``, and
    :meth:`catch_up`: record every write the kernel queued before a change was observed.
    """

    mode: Mode
    technique: Technique
    recorder: WriteRecorder
    git_dir: Path

    @abc.abstractmethod
    def catch_up(self, observed: float) -> None:
        """Record every write the kernel queued before a change observed at ``observed``."""

    def head_moved(self) -> float:
        """Wall time HEAD last moved (its reflog or branch ref was rewritten)."""
        latest = 0.0
        candidates = [self.git_dir / "logs" / "HEAD", self.git_dir / "HEAD"]
        try:
            head = (self.git_dir / "HEAD").read_text()
        except OSError:  # mid-rewrite: the reflog still tells
            head = ""
        if head.startswith("ref: "):
            candidates.append(self.git_dir / head[5:].strip())
        for candidate in candidates:
            try:
                latest = max(latest, candidate.stat().st_mtime)
            except OSError:  # no reflog / packed ref: other candidates tell
                continue
        return latest

    def attribute(self, abs_path: str | os.PathLike, observed: float,
                  since: float = 0.0) -> Attribution | None:
        """The writers of the file at ``abs_path`` for a change observed at ``observed``:
        writes read after ``observed - WRITE_LOOKBACK``, after the last HEAD move before
        the observation (earlier writes were committed) and after ``since`` (the newest
        write an earlier change of this path already accounted for).  UNKNOWN when writes
        in that window may have been missed."""
        since, before_head = self._window_start(observed, since)
        until = time.time()
        rel = self.recorder.relative(abs_path)
        found = self._writers_within(abs_path, rel, since, until)
        if found is None and before_head < since:
            # Nothing read since HEAD last moved.  That move need not have taken this file:
            # a watcher lagging behind a storm observes an agent's new file after a commit
            # of other paths, and its writer, read before the commit, was lost (its file
            # then committed as UNKNOWN new content).  The writes before it still tell.
            found = self._writers_within(abs_path, rel, before_head, until)
        return found

    def _writers_within(self, abs_path: str | os.PathLike, rel: str, since: float,
                        until: float) -> Attribution | None:
        # a file renamed (or created) into place without a write is its mover's
        arrivals = self.recorder.operations_on(rel, ARRIVALS, since, until)
        missed = self.recorder.missed(rel, since, until)
        if missed is Missed.UNMARKED and made_by_the_system(arrivals):
            missed = None  # its early writes were its maker's: an autonomous process
        if missed is not None:
            return blind(missed, self.technique)
        return combine(self.recorder.writes_to(abs_path, since, until) + arrivals,
                       self.technique)

    def attribute_removal(self, abs_path: str | os.PathLike, observed: float,
                          since: float = 0.0) -> Attribution | None:
        """Who deleted (or renamed away) the file that was at ``abs_path``.  ``since`` is
        not weighed: it counts writes, and a removal read in the same batch as the last
        write would carry the same stamp."""
        since, _ = self._window_start(observed, 0.0)
        until = time.time()
        rel = self.recorder.relative(abs_path)
        missed = self.recorder.missed(rel, since, until, unmarked=False)
        if missed is not None:
            return blind(missed, self.technique)
        return combine(self.recorder.operations_on(rel, REMOVALS, since, until),
                       self.technique)

    def _window_start(self, observed: float, since: float) -> tuple[float, float]:
        """Catch up, then the earliest read time that still belongs to a change observed at
        ``observed``, and that time before HEAD's last move cut it."""
        self.catch_up(observed)
        since = max(since, observed - WRITE_LOOKBACK)
        moved = self._head_moved_by(observed)
        if since < moved < observed:
            return moved, since
        return since, since

    _head_read: tuple[float, float] = (0.0, 0.0)  # (wall time read at, HEAD's last move)

    def _head_moved_by(self, observed: float) -> float:
        """:meth:`head_moved`, read again only for a change observed after the last read
        (less ``FILE_TIME_LAG``): a move before ``observed`` is in any read made later,
        so a backlog's changes share one read."""
        read_at, moved = self._head_read
        if not taken_after(read_at, observed, FILE_TIME_LAG):
            read_at = time.time()
            moved = self.head_moved()
            self._head_read = (read_at, moved)
        return moved

    def suspects(self, observed: float) -> list[tuple[int, str]]:
        return []

    def no_autonomous_process(self, observed: float) -> bool:
        """Exact attribution names every writer it saw; it never answers by absence."""
        return False

    def recorded_status(self) -> dict:
        return {"recorded": self.recorder.kept, "missed_spans": self.recorder.missed_spans,
                "bad_identities": self.recorder.bad_identities}


class ExactAttributor(RecordedAttributor):
    """L2's own fanotify groups + proc connector: every writer by pid and lineage (needs
    root).  The groups mark the workspace's directories only (:class:`.marks.
    WorkspaceWatch`).  Writes are kept per file identity (:mod:`.file_identity`);
    ``keying`` is for the regression test and the benchmark, which show what the inode
    number alone would attribute."""

    mode = Mode.FANOTIFY
    technique = Technique.FANOTIFY

    def __init__(self, config, rules: WriterRules | None = None,
                 keying: Keying = Keying.HANDLE):
        from gitsieve.common.judge.attribution.lineage import LineageTracker
        self.rules = rules or WriterRules.from_config(config)
        self.git_dir = config.git_dir
        self.lineage = LineageTracker()
        try:
            root_fd = os.open(config.workspace, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            self.watch = WorkspaceWatch(0, root_fd, 0, self._lineage_of,
                                        on_batch=self._drain_lineage,
                                        identify=FileIdentifier(keying),
                                        unscoped_fallback=True)
        except OSError:
            self.lineage.close()
            raise
        self.recorder = WriteRecorder(self.watch.root, self.rules.classify,
                                      excluded=inside(config.runtime_dir, self.watch.root),
                                      keying=keying)
        self._lineage_overflows = 0
        self._lineage_ok = time.time()
        self._drained_from = 0.0  # wall time the last complete drain began

    def _lineage_of(self, pid: int) -> tuple[LineageEntry, ...]:
        return lineage_entries(self.lineage.chain(pid))

    def _drain_lineage(self) -> int:
        """Read the queued process events; how many there were."""
        count = self.lineage.drain()
        now = time.time()
        if self.lineage.overflows != self._lineage_overflows:
            self._lineage_overflows = self.lineage.overflows
            self.recorder.note_missed(self._lineage_ok, now, Missed.LINEAGE_OVERFLOW)
        self._lineage_ok = now
        return count

    def _lineage_woke(self) -> float | None:
        """The proc connector is readable (or its rest is over): drain it; the seconds it
        then rests unpolled, if it held anything."""
        return self.lineage.rest_after(self._drain_lineage(), time.monotonic())

    def fds(self) -> list[tuple[int, Callable[[], float | None]]]:
        return [(self.lineage.fileno(), self._lineage_woke),
                *((fd, self.drain) for fd in self.watch.fds())]

    def drain(self) -> None:
        """Lineage first: a writer's fork/exec precede its write, so they are known; the
        backstop last: the directories it is asked about are known by then."""
        started = time.time()
        self._drain_lineage()
        self.recorder.record(self.watch.drain_writes())
        self.recorder.record(self.watch.drain_names())
        self.recorder.record(self.watch.drain_backstop())
        self._drained_from = started

    def catch_up(self, observed: float) -> None:
        """The kernel queued every write's event before the watcher could observe it: a
        drain (each read runs until the queue is empty) begun after ``observed`` read them
        all, so a backlog's changes need no drain each."""
        if not taken_after(self._drained_from, observed):
            self.drain()

    def tick(self, now: float) -> None:
        self.drain()

    def wakeup_in(self, now: float) -> float | None:
        return None

    def status(self) -> dict:
        return {"technique": self.technique, "fanotify_events": self.watch.events,
                "fanotify_overflows": self.watch.overflows,
                "fanotify_unresolved": self.watch.unresolved,
                "fanotify_mark": self.watch.scope.value,
                "marked_directories": self.watch.directories(),
                "backstop": self.watch.backstop_fd >= 0,
                "backstop_overflows": self.watch.backstop_overflows,
                **self.recorded_status(),
                "lineage_events": self.lineage.events,
                "lineage_processes": len(self.lineage),
                "lineage_overflows": self.lineage.overflows}

    def close(self) -> None:
        self.watch.close()
        self.lineage.close()


def inside(directory: Path, root: str) -> tuple[str, ...]:
    """``directory`` relative to ``root`` when it lies inside it (and outside .git)."""
    rel = os.path.relpath(os.path.realpath(directory), root)
    return () if rel == ".." or rel.startswith("../") or rel.startswith(".git") else (rel,)
