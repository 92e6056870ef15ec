"""The unprivileged L2 techniques (psutil), tried in order by :class:`Attributor`:

- ``open-files``: an autonomous process holds the file open for writing right now
  (``psutil.Process.open_files()``, checked live when the change is analysed);
- ``open-files-sampled``: :class:`OpenFileSampler` saw an autonomous process holding the
  file open for writing shortly before (or after) the change was observed.

Only processes whose command line matches ``config.autonomous_processes`` are examined
(:class:`ProcessCache`), so an unknown writer is never SYSTEM: it yields None and the change
falls through to the content layer.  Times in sightings and ``observed`` are wall-clock
(``time.time()``), because ``Change.observed`` is stamped in another process.
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

from gitsieve.common.judge.attribution.base import (
    CONFIDENCE,
    SYSTEM,
    TECHNIQUE_LIVE,
    TECHNIQUE_SAMPLED,
    Attribution,
    AutonomousMatcher,
    real_workspace,
    works_in,
)
from gitsieve.common.protocol.states import Mode

log = logging.getLogger(__name__)

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

# Temporal correlation (I/O counters moved near the change) names suspects, never a verdict:
# a user writing at the same moment as a busy autonomous process would be held back.
IO_WINDOW = 0.5


def is_write_mode(mode: str) -> bool:
    """psutil's ``mode`` ("r", "w", "a", "r+", "a+") of a file opened for writing."""
    return any(flag in mode for flag in "wa+")


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
    A miss on a change observed before the last listing of /proc lists nothing again: its
    writer existed then (a burst of 10k changes listed /proc 20k times).
    """

    def __init__(self, matcher: AutonomousMatcher, ttl: float,
                 clock: Callable[[], float] = time.monotonic):
        self.matcher, self.ttl, self.clock = matcher, max(ttl, MIN_CACHE_TTL), clock
        self.processes: dict[int, AutonomousProcess] = {}
        self.refreshed_at: float | None = None
        self.listed_at = float("-inf")  # wall time /proc was last listed
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
        self.listed_at = time.time()
        for pid in psutil.pids():
            self._examine(pid, previous.get(pid))
        self.refreshed_at = self.clock()
        self.refreshes += 1
        if set(previous) != set(self.processes):
            log.info("autonomous processes: %s", sorted(self.processes) or "none")

    def refresh_new(self, observed: float | None = None) -> bool:
        """Examine only pids new since the last scan; True if an autonomous one appeared.
        With ``observed`` (wall time of the change being judged), nothing is listed when
        /proc was listed after it: the change's writer was there to be seen."""
        if not self.matcher.patterns:
            return False
        if self.refreshed_at is None:
            self.refresh()
            return bool(self.processes)
        if observed is not None and observed < self.listed_at:
            return False
        self.listed_at = time.time()
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

    mode = Mode.PSUTIL

    def __init__(self, patterns: Iterable[str | re.Pattern], ttl: float,
                 sample_interval: float = SAMPLE_INTERVAL, window: float = SIGHTING_WINDOW,
                 workspace: str | os.PathLike | None = None):
        self.matcher = AutonomousMatcher(patterns)
        self.workspace = real_workspace(workspace)
        self.cache = ProcessCache(self.matcher, ttl)
        self.sampler = OpenFileSampler(self.cache, sample_interval, window)
        self.errors = self.sampler.errors
        self._next_new_scan = 0.0
        self.present_at = float("-inf")  # wall time an autonomous process was last known to run
        # Each technique: (real path, observed) -> Attribution | None, strongest first.
        self.techniques: list[Callable[[str, float], Attribution | None]] = [
            self._live_open_files, self._sampled]

    def tick(self, now: float) -> None:
        self.cache.refresh_if_stale()
        if now >= self._next_new_scan:
            self._next_new_scan = now + NEW_PROCESS_SCAN
            self.cache.refresh_new()
        if self._one_works_here():
            self.present_at = time.time()
        self.sampler.tick(now)

    def wakeup_in(self, now: float) -> float:
        sample = self.sampler.due_in(now)
        refresh = self.cache.due_in()
        return refresh if sample is None else min(sample, refresh)

    def fds(self) -> list[tuple[int, Callable[[], None]]]:
        return []

    def suspects(self, observed: float) -> list[tuple[int, str]]:
        return self.sampler.io_suspects(observed)

    def no_autonomous_process(self, observed: float) -> bool:
        """No autonomous process working in the workspace ran within SIGHTING_WINDOW of
        ``observed`` (wall time), nor runs now: the change has no writer to suspect of
        reacting to commits.  (One elsewhere on the machine made a person saving right
        after each commit look like a reactive agent.)"""
        if self._one_works_here() or (self.cache.refresh_new(observed)
                                      and self._one_works_here()):
            self.present_at = time.time()
            return False
        return self.present_at < observed - SIGHTING_WINDOW

    def _one_works_here(self) -> bool:
        return any(works_in(entry.process, entry.cmdline, self.workspace)
                   for entry in list(self.cache.processes.values()))

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
        if found is None and self.cache.refresh_new(observed):
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
                           CONFIDENCE[TECHNIQUE_SAMPLED])

    def _live_open_files(self, real_path: str, observed: float) -> Attribution | None:
        # Only write opens count: an autonomous reader of a user's file is no evidence.
        for entry in list(self.cache.processes.values()):
            for opened in writable_open_files(entry, self.cache, self.errors):
                if opened.path == real_path:
                    return Attribution(SYSTEM, TECHNIQUE_LIVE, entry.process.pid,
                                       entry.cmdline, CONFIDENCE[TECHNIQUE_LIVE])
        return None


