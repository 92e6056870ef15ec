"""Who wrote a file: process attribution for the process layer (L2), without privileges.

Unprivileged techniques, tried in order by :class:`Attributor` (each returns an
:class:`Attribution` or None):

- ``open-files``: an autonomous process holds the file open for writing right now
  (``psutil.Process.open_files()``, checked live when the change is analysed);
- ``open-files-sampled``: :class:`OpenFileSampler` saw an autonomous process holding the
  file open for writing shortly before (or after) the change was observed.

Only processes whose command line matches ``config.autonomous_processes`` are examined
(:class:`ProcessCache`), so an unknown writer is never SYSTEM: it yields None and the change
falls through to the content layer.  Times in sightings and ``observed`` are wall-clock
(``time.time()``), because ``Change.observed`` is stamped in another process.

The privileged, exact path is :class:`ExactAttributor`: fanotify (:mod:`common.fanotify`)
names the pid of every write, the proc connector lineage (:mod:`common.proc_connector`)
names its ancestors even after they exit, and :class:`WriterRules` classifies the chain as
SYSTEM (an autonomous process by command line, uid, cgroup or systemd unit), SELF (gitsieve's
own git) or USER (any other process: a positively identified non-autonomous writer).
A second fanotify group in FID mode (:class:`common.fanotify.NameRecorder`) names who
deleted or renamed a path, judged by the same rules; where the kernel refuses it, one log
line, and deletions stay unattributed.
:func:`make_attributor` picks it or the psutil fallback from ``[filter] attribution``.
"""
from __future__ import annotations

import logging
import os
import re
import time
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Iterable

import psutil

from common.fanotify import ARRIVALS, REMOVALS

log = logging.getLogger(__name__)

SYSTEM, USER, SELF, UNKNOWN = "system", "user", "self", "unknown"
TECHNIQUE_LIVE = "open-files"
TECHNIQUE_EXACT = "fanotify"
TECHNIQUE_SAMPLED = "open-files-sampled"
# A sighting counts for a change observed up to this long after it (the write happens
# before the watcher sees the event, and the writer may close the file in between).
SIGHTING_LEAD = 2.0
SAMPLE_INTERVAL = 0.05
SIGHTING_WINDOW = 5.0
# Between full scans, new pids are looked at this often (and on every attribution miss).
NEW_PROCESS_SCAN = 0.5
# A process younger than this may still be between fork and exec (its command line still
# its parent's), so a non-matching young process is looked at again by the next scan.
EXEC_SETTLE = 2.0
# A configured TTL of 0 would rescan every process on every poll round.
MIN_CACHE_TTL = 0.1

_CONFIDENCE = {TECHNIQUE_LIVE: 0.9, TECHNIQUE_SAMPLED: 0.7, TECHNIQUE_EXACT: 1.0}
# Temporal correlation (I/O counters moved near the change) names suspects, never a verdict:
# a user writing at the same moment as a busy autonomous process would be held back.
IO_WINDOW = 0.5


@dataclass(frozen=True)
class Attribution:
    writer: str
    technique: str
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
    # what the deciding process did: "written", or a name operation ("moved into place",
    # "created", "removed") in exact mode
    action: str = "written"

    def evidence(self) -> dict:
        return {"technique": self.technique, "pid": self.pid, "cmdline": self.cmdline,
                "confidence": self.confidence, "ancestor_pid": self.ancestor_pid,
                "ancestor_cmdline": self.ancestor_cmdline, "matched_by": self.matched_by,
                "writes": self.writes, "writes_until": self.writes_until}


def is_write_mode(mode: str) -> bool:
    """psutil's ``mode`` ("r", "w", "a", "r+", "a+") of a file opened for writing."""
    return any(flag in mode for flag in "wa+")


class AutonomousMatcher:
    """``config.autonomous_processes``: regexes searched in a command line or process name."""

    def __init__(self, patterns: Iterable[str | re.Pattern]):
        self.patterns = tuple(p if isinstance(p, re.Pattern) else re.compile(p)
                              for p in patterns)

    def matches(self, cmdline: str, name: str = "") -> bool:
        return any(p.search(cmdline) or (name and p.search(name)) for p in self.patterns)


@dataclass
class AutonomousProcess:
    process: psutil.Process
    cmdline: str


def _own_pid_tree() -> set[int]:
    """This process and its ancestors (the runner, a shell): gitsieve itself never counts."""
    pids = {os.getpid()}
    try:
        pids.update(parent.pid for parent in psutil.Process().parents())
    except psutil.Error as exc:  # an ancestor vanished while walking; ours is enough
        log.debug("cannot list own ancestors: %s", exc)
    return pids


class ProcessCache:
    """The autonomous processes (pid -> command line).

    A full scan (every process's command line) runs at most every ``ttl`` s; in between,
    :meth:`refresh_new` reads only pids that appeared since the last scan, which is cheap
    enough to run on every miss, so a freshly started autonomous process is seen at once.
    """

    def __init__(self, matcher: AutonomousMatcher, ttl: float,
                 clock: Callable[[], float] = time.monotonic):
        self.matcher, self.ttl, self.clock = matcher, max(ttl, MIN_CACHE_TTL), clock
        self.processes: dict[int, AutonomousProcess] = {}
        self.refreshed_at: float | None = None
        self.refreshes = 0
        # pids whose command line was read and will not change (barring a later exec)
        self._examined: set[int] = set()
        self._own: set[int] = set()

    def age(self) -> float:
        return float("inf") if self.refreshed_at is None else self.clock() - self.refreshed_at

    def due_in(self) -> float:
        return max(0.0, self.ttl - self.age())

    def refresh_if_stale(self) -> None:
        if self.age() >= self.ttl:
            self.refresh()

    def refresh(self) -> None:
        """Full scan: re-read every process (command lines can change through exec)."""
        self._own = _own_pid_tree()
        previous, self.processes = self.processes, {}
        self._examined = set()
        for pid in psutil.pids():
            self._examine(pid, previous.get(pid))
        self.refreshed_at = self.clock()
        self.refreshes += 1
        if set(previous) != set(self.processes):
            log.info("autonomous processes: %s", sorted(self.processes) or "none")

    def refresh_new(self) -> bool:
        """Examine only pids new since the last scan; True if an autonomous one appeared."""
        if not self.matcher.patterns:
            return False
        if self.refreshed_at is None:
            self.refresh()
            return bool(self.processes)
        pids = set(psutil.pids())
        for gone in set(self.processes) - pids:
            self.forget(gone)
        self._examined &= pids
        found = False
        for pid in pids - self._examined - set(self.processes):
            found |= self._examine(pid, None)
        if found:
            log.info("autonomous processes: %s", sorted(self.processes))
        return found

    def _examine(self, pid: int, known: AutonomousProcess | None) -> bool:
        if pid in self._own or not self.matcher.patterns:
            return False
        try:
            proc = known.process if known else psutil.Process(pid)
            cmdline = " ".join(proc.cmdline())
            name = proc.name()
            settled = proc.create_time() < time.time() - EXEC_SETTLE
        except psutil.AccessDenied:  # not ours to read (hidepid): do not retry every scan
            self._examined.add(pid)
            return False
        except psutil.Error:  # exited meanwhile or a zombie: it cannot write anything
            return False
        if settled:
            self._examined.add(pid)
        if not self.matcher.matches(cmdline, name):
            return False
        # reuse the Process object so psutil keeps detecting pid reuse
        self.processes[pid] = (known if known and known.cmdline == cmdline
                               else AutonomousProcess(proc, cmdline))
        return True

    def forget(self, pid: int) -> None:
        self.processes.pop(pid, None)


@dataclass(frozen=True)
class Sighting:
    pid: int
    cmdline: str
    last_seen: float
    mode: str


def writable_open_files(entry: AutonomousProcess, cache: ProcessCache,
                        errors: Counter) -> list:
    """The entry's files open for writing; a vanished process is dropped from the cache."""
    try:
        files = entry.process.open_files()
    except psutil.NoSuchProcess:
        cache.forget(entry.process.pid)
        return []
    except psutil.AccessDenied:
        errors["access_denied"] += 1
        return []
    return [f for f in files if is_write_mode(getattr(f, "mode", "") or "")]


class OpenFileSampler:
    """Remembers which files autonomous processes held open for writing, and when."""

    def __init__(self, cache: ProcessCache, interval: float = SAMPLE_INTERVAL,
                 window: float = SIGHTING_WINDOW):
        self.cache, self.interval, self.window = cache, interval, window
        self.sightings: dict[str, Sighting] = {}
        self.io_history: dict[int, list[tuple[float, int]]] = {}
        self.errors: Counter = Counter()
        self.samples = 0
        self._next_sample = 0.0

    def due_in(self, now: float) -> float | None:
        """Seconds until the next sample (monotonic ``now``); None when nobody to sample."""
        if not self.cache.processes:
            return None
        return max(0.0, self._next_sample - now)

    def tick(self, now: float) -> None:
        """Sample if due (``now`` is monotonic); cheap when no autonomous process exists."""
        if self.sightings:
            self.expire()
        if not self.cache.processes or now < self._next_sample:
            return
        self._next_sample = now + self.interval
        self.sample()

    def sample(self) -> None:
        wall = time.time()
        for entry in list(self.cache.processes.values()):
            for opened in writable_open_files(entry, self.cache, self.errors):
                self.sightings[opened.path] = Sighting(entry.process.pid, entry.cmdline,
                                                       wall, opened.mode)
            self._sample_io(entry, wall)
        self.samples += 1

    def _sample_io(self, entry: AutonomousProcess, wall: float) -> None:
        """Keep (time, bytes written so far) of ``entry`` for temporal correlation."""
        try:
            written = entry.process.io_counters().write_chars
        except (psutil.Error, AttributeError):  # gone, not ours, or no /proc/PID/io
            return
        history = self.io_history.setdefault(entry.process.pid, [])
        if not history or history[-1][1] != written or wall - history[-1][0] > self.window:
            history.append((wall, written))
            del history[:-64]

    def io_suspects(self, observed: float) -> list[tuple[int, str]]:
        """Autonomous processes whose write counters moved within IO_WINDOW of ``observed``."""
        found = []
        for pid, history in self.io_history.items():
            before = [count for stamp, count in history if stamp <= observed - IO_WINDOW]
            after = [count for stamp, count in history if stamp <= observed + IO_WINDOW]
            if before and after and after[-1] > before[-1]:
                entry = self.cache.processes.get(pid)
                found.append((pid, entry.cmdline if entry else ""))
        return found

    def expire(self, wall: float | None = None) -> None:
        horizon = (time.time() if wall is None else wall) - self.window
        stale = [path for path, seen in self.sightings.items() if seen.last_seen < horizon]
        for path in stale:
            del self.sightings[path]
        for pid in [pid for pid in self.io_history if pid not in self.cache.processes]:
            del self.io_history[pid]

    def seen(self, real_path: str, observed: float) -> Sighting | None:
        sighting = self.sightings.get(real_path)
        if sighting is None or sighting.last_seen < observed - SIGHTING_LEAD:
            return None
        return sighting


class Attributor:
    """The unprivileged L2 techniques behind one call, :meth:`attribute`; None means
    writer unknown.  (:class:`ExactAttributor` offers the same interface.)"""

    mode = "psutil"

    def __init__(self, patterns: Iterable[str | re.Pattern], ttl: float,
                 sample_interval: float = SAMPLE_INTERVAL, window: float = SIGHTING_WINDOW):
        self.matcher = AutonomousMatcher(patterns)
        self.cache = ProcessCache(self.matcher, ttl)
        self.sampler = OpenFileSampler(self.cache, sample_interval, window)
        self.errors = self.sampler.errors
        self._next_new_scan = 0.0
        # Each technique: (real path, observed) -> Attribution | None, strongest first.
        self.techniques: list[Callable[[str, float], Attribution | None]] = [
            self._live_open_files, self._sampled]

    def tick(self, now: float) -> None:
        self.cache.refresh_if_stale()
        if now >= self._next_new_scan:
            self._next_new_scan = now + NEW_PROCESS_SCAN
            self.cache.refresh_new()
        self.sampler.tick(now)

    def wakeup_in(self, now: float) -> float:
        sample = self.sampler.due_in(now)
        refresh = self.cache.due_in()
        return refresh if sample is None else min(sample, refresh)

    def fds(self) -> list[tuple[int, Callable[[], None]]]:
        return []

    def suspects(self, observed: float) -> list[tuple[int, str]]:
        return self.sampler.io_suspects(observed)

    def attribute_removal(self, abs_path: str | os.PathLike, observed: float,
                          since: float = 0.0) -> Attribution | None:
        """A deleted file has no open files to look at: its remover is never known here."""
        return None

    def close(self) -> None:
        """Nothing to release: psutil keeps no descriptors open."""

    def status(self) -> dict:
        return {"autonomous_pids": sorted(self.cache.processes),
                "sampled_paths": len(self.sampler.sightings),
                "samples": self.sampler.samples, "cache_refreshes": self.cache.refreshes,
                "access_denied": self.errors["access_denied"]}

    def attribute(self, abs_path: str | os.PathLike, observed: float,
                  since: float = 0.0) -> Attribution | None:
        """``since`` is the exact mode's; sightings have their own window."""
        real_path = os.path.realpath(abs_path)
        self.cache.refresh_if_stale()
        found = self._try_all(real_path, observed)
        if found is None and self.cache.refresh_new():
            found = self._try_all(real_path, observed)
        return found

    def _try_all(self, real_path: str, observed: float) -> Attribution | None:
        for technique in self.techniques:
            found = technique(real_path, observed)
            if found is not None:
                return found
        return None

    def _sampled(self, real_path: str, observed: float) -> Attribution | None:
        sighting = self.sampler.seen(real_path, observed)
        if sighting is None:
            return None
        return Attribution(SYSTEM, TECHNIQUE_SAMPLED, sighting.pid, sighting.cmdline,
                           _CONFIDENCE[TECHNIQUE_SAMPLED])

    def _live_open_files(self, real_path: str, observed: float) -> Attribution | None:
        # Only write opens count: an autonomous reader of a user's file is no evidence.
        for entry in list(self.cache.processes.values()):
            for opened in writable_open_files(entry, self.cache, self.errors):
                if opened.path == real_path:
                    return Attribution(SYSTEM, TECHNIQUE_LIVE, entry.process.pid,
                                       entry.cmdline, _CONFIDENCE[TECHNIQUE_LIVE])
        return None


# ----- the exact, privileged path ------------------------------------------------------
# A gitsieve actor (``python -m actors.x``): its git children are gitsieve's own.
_GITSIEVE_ACTOR = re.compile(r"(^|\s)-m actors\.[a-z_]+(\s|$)")
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
        self.cgroups = tuple(re.compile(p) for p in cgroups)
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
        if any(pattern.search(info.cgroup) for pattern in self.cgroups):
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
            if info.gitsieve_mark or _GITSIEVE_ACTOR.search(info.cmdline):
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
                               _CONFIDENCE[TECHNIQUE_EXACT], chosen.ancestor_pid,
                               chosen.ancestor_cmdline, chosen.matched_by, len(events),
                               max(event.stamp for event in events),
                               _ACTION_OF.get(getattr(event, "op", ""), "written"))
    return None


_ACTION_OF = {"moved-to": "moved into place", "create": "created", "delete": "removed",
              "moved-from": "moved away"}


class ExactAttributor:
    """fanotify + proc connector: every writer by pid and lineage (needs root)."""

    mode = "fanotify"

    def __init__(self, config, rules: WriterRules | None = None):
        from common.fanotify import WriteRecorder
        from common.proc_connector import LineageTracker
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
        from common.fanotify import NameRecorder
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


def make_attributor(config):
    """The attributor ``[filter] attribution`` asks for: "psutil", "fanotify" (exact; falls
    back with an error line if the kernel refuses) or "auto" (exact when permitted, else one
    info line and the psutil techniques)."""
    if config.attribution != "psutil":
        try:
            return ExactAttributor(config)
        except OSError as exc:
            level = logging.ERROR if config.attribution == "fanotify" else logging.INFO
            log.log(level, "exact attribution unavailable (%s): using psutil open-files, "
                    "sampling and I/O correlation", exc)
    return Attributor(config.autonomous_processes, config.process_cache_ttl)
