"""The exact, privileged L2 technique (root / CAP_SYS_ADMIN).

fanotify (:mod:`.fanotify`) names the pid of every write, the proc connector lineage
(:mod:`.lineage`) names its ancestors even after they exit, and :class:`WriterRules`
classifies the chain as SYSTEM (an autonomous process by command line, uid, cgroup or
systemd unit), SELF (gitsieve's own processes, marked in their environment) or USER (any
other process: a positively identified non-autonomous writer).  A second fanotify group in
FID mode (:class:`.fanotify.NameRecorder`) names who deleted or renamed a path, judged by
the same rules; where the kernel refuses it, one log line, and deletions stay unattributed.
"""
from __future__ import annotations

import logging
import os
import time
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Iterable

from gitsieve.common.judge.attribution.base import (
    CONFIDENCE,
    SELF,
    SYSTEM,
    TECHNIQUE_EXACT,
    UNKNOWN,
    USER,
    Attribution,
    AutonomousMatcher,
    bounded,
    found_in,
)
from gitsieve.common.judge.attribution.fanotify import ARRIVALS, REMOVALS
from gitsieve.common.protocol.states import Mode, ProcessAction

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


def combine(events: list) -> Attribution | None:
    """One verdict for the writes of one change: any USER write makes it the user's (the
    commit carries the user's bytes); else any SYSTEM; else SELF."""
    if not events:
        return None
    by_writer: dict[str, tuple[WriterEvidence, object]] = {}
    for event in events:
        evidence = event.evidence
        if isinstance(evidence, WriterEvidence):
            by_writer.setdefault(evidence.writer, (evidence, event))
    for writer in (USER, SYSTEM, SELF):
        if writer in by_writer:
            chosen, event = by_writer[writer]
            return Attribution(writer, TECHNIQUE_EXACT, chosen.pid, chosen.cmdline,
                               CONFIDENCE[TECHNIQUE_EXACT], chosen.ancestor_pid,
                               chosen.ancestor_cmdline, chosen.matched_by, len(events),
                               max(event.stamp for event in events),
                               _ACTION_OF.get(getattr(event, "op", ""), ProcessAction.WRITTEN))
    return None


_ACTION_OF = {"moved-to": ProcessAction.MOVED_INTO_PLACE, "create": ProcessAction.CREATED,
              "delete": ProcessAction.REMOVED, "moved-from": ProcessAction.MOVED_AWAY}


class ExactAttributor:
    """fanotify + proc connector: every writer by pid and lineage (needs root)."""

    mode = Mode.FANOTIFY

    def __init__(self, config, rules: WriterRules | None = None):
        from gitsieve.common.judge.attribution.fanotify import WriteRecorder
        from gitsieve.common.judge.attribution.lineage import LineageTracker
        self.rules = rules or WriterRules.from_config(config)
        self.git_dir = config.git_dir
        self.lineage = LineageTracker()
        try:
            self.recorder = WriteRecorder(config.workspace, (str(config.runtime_dir),),
                                          resolve=self._resolve)
        except OSError:
            self.lineage.close()
            raise
        self.names = self._name_recorder(config)
        # A child forked after the last lineage read, and gone already, would otherwise
        # have no lineage when its write is resolved.
        for recorder in (self.recorder, self.names):
            if recorder is not None:
                recorder.on_batch = self.lineage.drain
        self.errors: Counter = Counter()

    def _name_recorder(self, config):
        """The FID-mode group for deletions and renames, or None where it is refused."""
        from gitsieve.common.judge.attribution.fanotify import NameRecorder
        try:
            return NameRecorder(config.workspace, (str(config.runtime_dir),),
                                resolve=self._resolve)
        except OSError as exc:
            log.warning("fanotify FID mode unavailable (%s): deletions and renames without a "
                        "write are left to the content layer", exc)
            return None

    def _relative(self, abs_path: str | os.PathLike) -> str:
        """``abs_path`` relative to the workspace as the name recorder keys it (the parent
        resolved, the file itself possibly gone)."""
        parent, name = os.path.split(os.fspath(abs_path))
        return os.path.relpath(os.path.join(os.path.realpath(parent), name),
                               self.names.root)

    def _resolve(self, pid: int) -> WriterEvidence:
        return self.rules.classify(self.lineage.chain(pid))

    def fds(self) -> list[tuple[int, Callable[[], None]]]:
        fds = [(self.lineage.fileno(), self.lineage.drain),
               (self.recorder.fileno(), self.drain)]
        if self.names is not None:
            fds.append((self.names.fileno(), self.drain))
        return fds

    def drain(self) -> None:
        """Lineage first: a writer's fork/exec precede its write, so they are known."""
        self.lineage.drain()
        self.recorder.drain()
        if self.names is not None:
            self.names.drain()

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
        write an earlier change of this path already accounted for)."""
        since = self._window_start(observed, since)
        events = self.recorder.writes_to(abs_path, since, time.time())
        if self.names is not None:
            # a file renamed (or created) into place without a write is its mover's
            events += self.names.operations_on(self._relative(abs_path), ARRIVALS, since,
                                               time.time())
        return combine(events)

    def attribute_removal(self, abs_path: str | os.PathLike, observed: float,
                          since: float = 0.0) -> Attribution | None:
        """Who deleted (or renamed away) the file that was at ``abs_path``.  ``since`` is
        not weighed: it counts writes, and a removal read in the same batch as the last
        write would carry the same stamp."""
        if self.names is None:
            return None
        since = self._window_start(observed, 0.0)
        return combine(self.names.operations_on(self._relative(abs_path), REMOVALS, since,
                                                time.time()))

    def _window_start(self, observed: float, since: float) -> float:
        """Drain, then the earliest read time that still belongs to a change observed at
        ``observed``."""
        self.drain()
        since = max(since, observed - WRITE_LOOKBACK)
        moved = self.head_moved()
        if since < moved < observed:
            since = moved
        return since

    def suspects(self, observed: float) -> list[tuple[int, str]]:
        return []

    def tick(self, now: float) -> None:
        self.drain()

    def wakeup_in(self, now: float) -> float | None:
        return None

    def status(self) -> dict:
        return {"fanotify_events": self.recorder.events,
                "fanotify_kept": self.recorder.kept,
                "fanotify_overflows": self.recorder.overflows,
                "fanotify_mark": self.recorder.mark_kind,
                "fanotify_names": None if self.names is None else {
                    "events": self.names.events, "kept": self.names.kept,
                    "unresolved": self.names.unresolved,
                    "overflows": self.names.overflows},
                "lineage_events": self.lineage.events,
                "lineage_processes": len(self.lineage.processes),
                "lineage_overflows": self.lineage.overflows}

    def close(self) -> None:
        self.recorder.close()
        if self.names is not None:
            self.names.close()
        self.lineage.close()


