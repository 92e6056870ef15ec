"""What every attribution technique shares: the verdicts, the Attribution it returns, and
the matcher of ``[filter] autonomous_processes``.

The techniques (:mod:`.sampled` unprivileged, :mod:`.exact` privileged) each answer "who
wrote this path" with an :class:`Attribution` or None (writer unknown: the change falls
through to the content layer, never SYSTEM).  :func:`gitsieve.common.judge.attribution.
make_attributor` picks one from ``[filter] attribution``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import psutil

from gitsieve.common.config.bounded_regex import BoundedPattern, RegexTimeout
from gitsieve.common.protocol.states import ProcessAction, Technique, Writer
from gitsieve.common.protocol.trail import ProcessStep

SYSTEM, USER, SELF, UNKNOWN = Writer.SYSTEM, Writer.USER, Writer.SELF, Writer.UNKNOWN
TECHNIQUE_LIVE = Technique.OPEN_FILES
TECHNIQUE_EXACT = Technique.FANOTIFY
TECHNIQUE_SAMPLED = Technique.OPEN_FILES_SAMPLED
CONFIDENCE = {TECHNIQUE_LIVE: 0.9, TECHNIQUE_SAMPLED: 0.7, TECHNIQUE_EXACT: 1.0,
              Technique.HELPER: 1.0}


@dataclass(frozen=True)
class Attribution:
    writer: Writer
    technique: Technique
    pid: int
    cmdline: str
    confidence: float
    # the process of the writer's lineage that decided (the writer itself or an ancestor)
    ancestor_pid: int | None = None
    ancestor_cmdline: str = ""
    matched_by: str = ""
    writes: int = 1
    # wall time of the newest write considered (exact mode): later changes of the same
    # path only weigh writes after it
    writes_until: float | None = None
    # what the deciding process did: written, or a name operation (moved into place,
    # created, removed) in exact mode
    action: ProcessAction = ProcessAction.WRITTEN

    def evidence(self, step: ProcessStep) -> ProcessStep:
        """``step`` with this attribution's evidence filled in."""
        return ProcessStep(
            verdict=self.writer, reason=step.reason, mode=step.mode, technique=self.technique,
            pid=self.pid, cmdline=self.cmdline, confidence=self.confidence,
            ancestor_pid=self.ancestor_pid, ancestor_cmdline=self.ancestor_cmdline,
            matched_by=self.matched_by, did=self.action, writes=self.writes,
            writes_until=self.writes_until)


def found_in(pattern: BoundedPattern, text: str) -> bool:
    """``pattern`` searched in ``text``; a search that runs out of time finds nothing (the
    process is then not known as autonomous: its writes are never dropped on a guess)."""
    try:
        return pattern.search(text) is not None
    except RegexTimeout:
        return False


def bounded(pattern: str | BoundedPattern, what: str) -> BoundedPattern:
    if isinstance(pattern, BoundedPattern):
        return pattern
    return BoundedPattern(pattern, f"{what} {pattern!r}",
                          "a process it times out on is not taken as autonomous")


def works_in(process: psutil.Process, cmdline: str, workspace: str | None) -> bool:
    """Whether an autonomous process works in ``workspace`` (a real path; None: anywhere):
    its command line names it, or its working directory is in it.  One elsewhere on the
    machine (another user's, another workspace's) neither reacts to this workspace's
    commits nor restarts in its loop."""
    if workspace is None or workspace in cmdline:
        return True
    try:
        cwd = process.cwd()
    except psutil.Error:  # gone, or not ours to look at: not known to work here
        return False
    return Path(cwd) == Path(workspace) or Path(cwd).is_relative_to(workspace)


def real_workspace(workspace: str | os.PathLike | None) -> str | None:
    return os.path.realpath(workspace) if workspace is not None else None


class AutonomousMatcher:
    """``config.autonomous_processes``: regexes searched in a command line or process name."""

    def __init__(self, patterns: Iterable[str | BoundedPattern]):
        self.patterns = tuple(bounded(p, "[filter] autonomous_processes") for p in patterns)

    def matches(self, cmdline: str, name: str = "") -> bool:
        return any(found_in(p, cmdline) or (name and found_in(p, name))
                   for p in self.patterns)




class Periodic:
    """Says when work done every ``interval`` seconds (on the caller's clock) is due."""

    def __init__(self, interval: float):
        self.interval = interval
        self.next = 0.0

    def due(self, now: float) -> bool:
        if now < self.next:
            return False
        self.next = now + self.interval
        return True
