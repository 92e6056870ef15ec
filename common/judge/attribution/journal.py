"""The agent journal over the base attribution (L2): what ``gitsieve agent`` recorded.

:class:`JournalOverlay` wraps the base attributor (psutil, exact fanotify, or any other
with the same interface) and answers for the *current version* of a path:

- **SYSTEM** (technique ``agent-journal``) when the agent produced it: the newest
  write-family record of the path (created, opened for writing, truncated, moved or
  linked into place, chmodded; or a rename of a directory above it) is the last thing
  that changed the file, that is its ctime falls inside that record's write window
  (from the record to ``WRITE_WINDOW`` after it, or to the CLOSED record of a file the
  agent held open), or the agent holds the file open for writing now (a HELD record,
  checked against ``/proc/PID/fd`` when the wrapper that wrote it is gone);
- **SYSTEM** (technique ``agent-mark``) when ``gitsieve mark --system`` declared exactly
  this version (its git blob id), or declared the path's absence for a deletion;
- **UNKNOWN** (reason ``agent-and-user``, to L3) when the agent produced it but the base
  attribution also names a user process that is not one of the agent's (exact modes);
- for a deletion, SYSTEM when the agent's newest record of the path is its removal (or
  a rename away of a directory above it).

Otherwise the base's answer stands; a base USER attribution whose process is one of the
agent's (a recorded pid of the path, or a live descendant of a running wrapper) is the
agent's write.  The answer depends on the version and the journal only, never on which
changes a worker judged before: every worker, a restarted one, and the periodic
reconcile that re-judges every dirty path give the same verdict.  The journal is read
before every judgement (a ``stat`` of its directory and an ``fstat`` per segment when
nothing changed), so records written while gitsieve was not running count as well.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections import Counter
from dataclasses import dataclass
from typing import Callable, NamedTuple

import psutil

from gitsieve.common.agent.holds import writable_paths
from gitsieve.common.agent.journal import (
    AGENT_SUBDIR,
    CTIME_SLACK,
    WRITE_WINDOW,
    AgentTouches,
    Family,
    JournalReader,
    Op,
    Record,
)
from gitsieve.common.agent.mark import git_blob_id
from gitsieve.common.judge.attribution.base import (
    SELF,
    SYSTEM,
    UNKNOWN,
    USER,
    Attribution,
    Periodic,
)
from gitsieve.common.protocol.states import L2Reason, Mode, ProcessAction, Technique

log = logging.getLogger(__name__)

JOURNAL_EVIDENCE = "recorded by gitsieve agent"
MARK_EVIDENCE = "declared by gitsieve mark --system"
TREE_EVIDENCE = "a process under gitsieve agent"
EXPIRE_INTERVAL = 60.0
MAX_ANCESTRY = 64
# An autonomous process is looked at for a wrapper around it once it is this old (seconds).
UNWRAPPED_SETTLE = 2.0

ACTION_OF = {
    Op.OPEN_WRITE: ProcessAction.WRITTEN, Op.CREATE: ProcessAction.CREATED,
    Op.TRUNCATE: ProcessAction.WRITTEN, Op.RENAME_TO: ProcessAction.MOVED_INTO_PLACE,
    Op.LINK: ProcessAction.MOVED_INTO_PLACE, Op.SYMLINK: ProcessAction.CREATED,
    Op.CHMOD: ProcessAction.MODE_CHANGED, Op.UNLINK: ProcessAction.REMOVED,
    Op.RENAME_FROM: ProcessAction.MOVED_AWAY, Op.MARK: ProcessAction.MARKED,
    Op.HELD: ProcessAction.HELD_OPEN, Op.CLOSED: ProcessAction.WRITTEN,
}


@dataclass(frozen=True)
class JournalAttribution(Attribution):
    """An Attribution whose step carries its own reason (``agent-and-user``)."""

    reason: L2Reason = L2Reason.IDENTIFIED

    def evidence(self, step):
        return dataclasses.replace(super().evidence(step), reason=self.reason)


class Claim(NamedTuple):
    """The journal's record that the agent produced the current version."""

    record: Record
    technique: Technique
    action: ProcessAction


def _parent_pid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat_file:
            text = stat_file.read()
    except OSError:
        return None
    return int(text[text.rindex(b")") + 2:].split()[1])


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as source:
            raw = source.read()
    except OSError:  # gone: the record still names its pid
        return ""
    return raw.rstrip(b"\0").replace(b"\0", b" ").decode("utf-8", "replace")


class AgentJournal:
    """The journal as L2 reads it: every record (bounded), and the claims it supports.

    ``holds_open(pid, path)`` says whether ``pid`` still has the workspace path open for
    writing (tests pass their own)."""

    def __init__(self, directory: os.PathLike, workspace: os.PathLike,
                 holds_open: Callable[[int, str], bool] | None = None):
        self.reader = JournalReader(directory)
        self.touches = AgentTouches()
        self.root = os.fspath(workspace).rstrip("/")
        self._root_bytes = os.fsencode(self.root) + b"/"
        self.holds_open = holds_open or self._holds_open
        self.records = 0

    def refresh(self) -> None:
        records = self.reader.read_new()
        if records:
            self.records += len(records)
            self.touches.add(records)

    def _holds_open(self, pid: int, path: str) -> bool:
        wanted = os.fsencode(path)
        return wanted in (writable_paths(pid, self._root_bytes, {wanted}) or ())

    def _held(self, hold: Record) -> bool:
        """A HELD record still stands: its wrapper lives (and would have recorded the
        close), or, the wrapper gone, its process still has the file open for writing."""
        return self.reader.writer_alive(hold.writer) or self.holds_open(hold.pid, hold.path)

    def claim_version(self, path: str, ctime: float,
                      blob_id: Callable[[], str | None]) -> Claim | None:
        """Whether the agent produced the version of ``path`` whose ctime is ``ctime``
        (``blob_id`` computes its git blob id, asked only when a mark exists)."""
        touches = self.touches
        mark = touches.newest(path, Family.MARK)
        if mark is not None and mark.digest is not None and mark.digest == blob_id():
            return Claim(mark, Technique.AGENT_MARK, ProcessAction.MARKED)
        hold = touches.newest(path, Family.HOLD)
        if hold is not None and hold.op is Op.HELD and self._held(hold):
            return Claim(hold, Technique.AGENT_JOURNAL, ProcessAction.HELD_OPEN)
        for number, write in enumerate(touches.writes(path)):
            end = write.wall + WRITE_WINDOW
            if number == 0 and hold is not None and hold.wall >= write.wall:
                end = max(end, hold.wall + CTIME_SLACK)  # held open until then
            if write.wall - CTIME_SLACK <= ctime <= end:
                return Claim(write, Technique.AGENT_JOURNAL, ACTION_OF[write.op])
        moved = touches.moved_with(path, Family.WRITE)
        if moved is not None and ctime <= moved.wall + WRITE_WINDOW:
            return Claim(moved, Technique.AGENT_JOURNAL, ProcessAction.MOVED_INTO_PLACE)
        return None

    def claim_absence(self, path: str) -> Claim | None:
        """Whether the agent removed ``path`` last (or declared its absence)."""
        touches = self.touches
        mark = touches.newest(path, Family.MARK)
        if mark is not None and mark.digest is None:
            return Claim(mark, Technique.AGENT_MARK, ProcessAction.MARKED)
        removal = touches.newest(path, Family.REMOVAL)
        moved = touches.moved_with(path, Family.REMOVAL)
        if moved is not None and (removal is None or moved.wall > removal.wall):
            removal = moved
        write = touches.newest(path, Family.WRITE)
        if removal is not None and (write is None or removal.wall >= write.wall):
            return Claim(removal, Technique.AGENT_JOURNAL, ACTION_OF[removal.op])
        return None

    def is_agents(self, pid: int, path: str) -> bool:
        """Whether process ``pid`` is one of the agent's: recorded for ``path``, or a
        descendant of a running wrapper."""
        for family in Family:
            record = self.touches.newest(path, family)
            if record is not None and record.pid == pid:
                return True
        return self.under_wrapper(pid)

    def under_wrapper(self, pid: int, itself: bool = False) -> bool:
        """Whether process ``pid`` descends from a running ``gitsieve agent`` (or, with
        ``itself``, is one)."""
        wrappers = self.reader.live_owner_pids()
        if not wrappers:
            return False
        if itself and pid in wrappers:
            return True
        current = pid
        for _ in range(MAX_ANCESTRY):
            current = _parent_pid(current)
            if current is None or current <= 1:
                return False
            if current in wrappers:
                return True
        return False

    def close(self) -> None:
        self.reader.close()


def runs_the_wrapper(argv: list[str]) -> bool:
    """Whether a command line is ``gitsieve agent ...`` (the script or the module)."""
    for word, following in zip(argv, argv[1:]):
        if following == "agent" and (os.path.basename(word) == "gitsieve"
                                     or word == "gitsieve.common.tools.cli"):
            return True
    return False


class JournalOverlay:
    """An attributor: the base attributor's answers, overlaid with the agent journal."""

    def __init__(self, config, base, journal: AgentJournal | None = None):
        self.base = base
        self.mode = base.mode
        self.journal = journal or AgentJournal(config.runtime_dir / AGENT_SUBDIR,
                                               config.workspace)
        self.prefix = self.journal.root + "/"
        self.counts: Counter = Counter()
        self._expiry = Periodic(EXPIRE_INTERVAL)
        # psutil mode: autonomous processes in the workspace outside a wrapper (pid ->
        # command line), and the pids already looked at
        self.unwrapped: dict[int, str] = {}
        self._looked_at: set[int] = set()
        self._real_root = os.path.realpath(self.journal.root)  # as /proc shows a cwd

    def __getattr__(self, name: str):
        # the base technique's own parts (its recorder, lineage, process cache) stay
        # reachable through ProcessJudge.attributor
        if name == "base":
            raise AttributeError(name)
        return getattr(self.base, name)

    def _relative(self, abs_path: str | os.PathLike) -> str:
        text = os.fspath(abs_path)
        if text.startswith(self.prefix):
            return text[len(self.prefix):]
        return os.path.relpath(text, self.journal.root)

    def attribute(self, abs_path: str | os.PathLike, observed: float,
                  since: float = 0.0) -> Attribution | None:
        found = self.base.attribute(abs_path, observed, since)
        if found is not None and found.writer in (SYSTEM, SELF):
            return found
        # The version first, then the journal: the record of whatever wrote that version
        # was appended before its write-open proceeded, so it is read now.
        try:
            ctime = os.lstat(abs_path).st_ctime
        except OSError:
            # gone meanwhile (its deletion is judged on its own), or below a directory made
            # unreadable: the base's answer stands, and the layers after it say the rest
            return found
        self.journal.refresh()
        path = self._relative(abs_path)
        try:
            claim = self.journal.claim_version(path, ctime, lambda: git_blob_id(abs_path))
        except OSError:  # a marked path made unreadable: no version to compare
            claim = None
        return self._combine(path, claim, found)

    def attribute_removal(self, abs_path: str | os.PathLike, observed: float,
                          since: float = 0.0) -> Attribution | None:
        found = self.base.attribute_removal(abs_path, observed, since)
        if found is not None and found.writer in (SYSTEM, SELF):
            return found
        if os.path.lexists(abs_path):
            return found  # back already: the write that brought it is judged on its own
        self.journal.refresh()  # after the look: a removal is recorded before it proceeds
        path = self._relative(abs_path)
        return self._combine(path, self.journal.claim_absence(path), found)

    def _combine(self, path: str, claim: Claim | None,
                 found: Attribution | None) -> Attribution | None:
        user = found is not None and found.writer == USER
        if claim is None:
            if user and self.journal.is_agents(found.pid, path):
                self.counts["agent_process"] += 1
                return dataclasses.replace(found, writer=SYSTEM,
                                           technique=Technique.AGENT_JOURNAL,
                                           matched_by=TREE_EVIDENCE)
            return found
        record = claim.record
        until = found.writes_until if found is not None else None
        if (user and claim.technique is Technique.AGENT_JOURNAL
                and not self.journal.is_agents(found.pid, path)):
            self.counts["agent_and_user"] += 1
            return JournalAttribution(
                UNKNOWN, claim.technique, found.pid, found.cmdline, 1.0, None, "",
                f"{JOURNAL_EVIDENCE} (pid {record.pid})", found.writes + 1, until,
                claim.action, reason=L2Reason.AGENT_AND_USER)
        self.counts[str(claim.technique)] += 1
        evidence = MARK_EVIDENCE if claim.technique is Technique.AGENT_MARK else JOURNAL_EVIDENCE
        return JournalAttribution(SYSTEM, claim.technique, record.pid, _cmdline(record.pid),
                                  1.0, None, "", evidence, 1, until, claim.action)

    # ----- the rest of the attributor interface: the base's, plus the journal's upkeep -----
    def suspects(self, observed: float) -> list[tuple[int, str]]:
        return self.base.suspects(observed)

    def fds(self) -> list:
        return self.base.fds()

    def tick(self, now: float) -> None:
        self.base.tick(now)
        if self._expiry.due(now):
            self.journal.refresh()
            self.journal.touches.expire(time.time())
        if self.mode is Mode.PSUTIL:
            self._look_for_unwrapped()

    def _look_for_unwrapped(self) -> None:
        """Warn once about each autonomous process working in the workspace outside
        ``gitsieve agent``: sampling open files cannot tell its quick writes from the
        person's, so they may be committed.  Looked at once a process is old enough for a
        wrapper around it to have written its journal."""
        processes = self.base.cache.processes
        for gone in [pid for pid in self.unwrapped if pid not in processes]:
            del self.unwrapped[gone]
        if len(self._looked_at) > 4 * len(processes) + 64:
            self._looked_at &= set(processes)
        fresh = [entry for pid, entry in processes.items() if pid not in self._looked_at]
        if not fresh:
            return
        self.journal.refresh()
        settled = time.time() - UNWRAPPED_SETTLE
        for entry in fresh:
            pid = entry.process.pid
            try:
                if entry.process.create_time() > settled:
                    continue  # a wrapper may not have written its journal yet
                cwd = entry.process.cwd()
                argv = entry.process.cmdline()
            except psutil.Error:  # gone or not ours: nothing to say about it
                self._looked_at.add(pid)
                continue
            self._looked_at.add(pid)
            if runs_the_wrapper(argv):
                continue  # names the agent it runs, writes nothing; slow to start when loaded
            inside = cwd == self._real_root or cwd.startswith(self._real_root + "/")
            # the wrapper's own command line names the agent it runs
            if inside and not self.journal.under_wrapper(pid, itself=True):
                self.unwrapped[pid] = entry.cmdline
                log.warning("autonomous process %d (%s) works in the workspace outside "
                            "`gitsieve agent`: in this unprivileged mode a file it writes "
                            "and closes within milliseconds cannot be told from yours and "
                            "may be committed. Run it as `gitsieve agent -- CMD`, or start "
                            "`gitsieve helper` as root", pid, entry.cmdline[:120])

    def wakeup_in(self, now: float) -> float | None:
        return self.base.wakeup_in(now)

    def status(self) -> dict:
        return {**self.base.status(),
                "unwrapped_autonomous": [{"pid": pid, "cmdline": cmdline[:120]}
                                         for pid, cmdline in sorted(self.unwrapped.items())],
                "agent_journal": {"records": self.journal.records,
                                  "paths": len(self.journal.touches),
                                  "listings": self.journal.reader.listings,
                                  **self.counts}}

    def close(self) -> None:
        self.base.close()
        self.journal.close()
