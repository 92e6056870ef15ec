"""Health judgements that need no git: the heartbeat book (which actors beat, bounded
against forged beats) and autonomous processes restarting in a loop."""
from __future__ import annotations

import os
import re
import time
from collections import Counter, deque

import msgpack
import psutil

from gitsieve.common.judge.attribution.base import AutonomousMatcher, real_workspace, works_in

# Beats any same-uid process can send: bounded so that none can make the monitor's table,
# its HealthStatus or its metrics file grow without limit (4,200 fake names, 7 MB of stats
# once stopped every commit: the HealthStatus outgrew what receivers accept).
MAX_ACTORS = 256
MAX_STATS_BYTES = 256 * 1024
MAX_STATE_CHARS = 32
ACTOR_ID = re.compile(r"[a-z][a-z0-9_]{0,31}(-[0-9]{2,4})?")
PID_MAX = 4 * 1024 * 1024  # the kernel's ceiling for pid_max
SETTLED_AGE = 2.0  # seconds: a process this old has long exec'd its program


def beat_problem(actor: str, pid: int) -> str:
    """Why a heartbeat cannot be an actor's ('' when it can)."""
    if not ACTOR_ID.fullmatch(actor):
        return f"not an actor id: {actor[:40]!r}"
    if not 0 < pid <= PID_MAX:
        return f"not a pid: {pid}"
    return ""


class HeartbeatBook:
    """The actors that beat: actor id -> {pid, state, last_seen, received, interval,
    started, changes_lost, stats}.  ``started`` (wall clock) tells a newly seen actor that
    was there all along from one that replaced an unseen predecessor; ``changes_lost`` is
    the count of changes the actor reports it lost (the router: with departed workers, or
    dropped at its cap), so the watcher can send them again.

    A beat that cannot be an actor's is refused; stats over ``MAX_STATS_BYTES`` are kept
    out (the beat still counts for liveness); past ``MAX_ACTORS`` ids a new id is refused
    (the actors already known keep their places; silent ones are forgotten after
    ``forget_after`` seconds)."""

    def __init__(self, forget_after: float, clock=time.time):
        self.forget_after = forget_after
        self.clock = clock
        self.actors: dict[str, dict] = {}
        self.refused: Counter = Counter()

    def note(self, actor: str, pid: int, sent: float, state: str, stats: dict,
             interval: float = 0.0) -> str:
        """Record a beat; '' when taken, else why it was refused.  ``interval``: when the
        actor's next beat is due at the latest (an idle actor beats rarely)."""
        problem = beat_problem(actor, pid)
        if not problem and actor not in self.actors and len(self.actors) >= MAX_ACTORS:
            self.forget_silent()
            if len(self.actors) >= MAX_ACTORS:
                problem = f"already {MAX_ACTORS} actors known"
        if problem:
            self.refused[problem.split(":")[0]] += 1
            return problem
        started, lost = _started(sent, stats), nonnegative_count(stats.get("changes_lost"))
        size = len(msgpack.packb(stats, use_bin_type=True, unicode_errors="surrogateescape"))
        if size > MAX_STATS_BYTES:
            self.refused["stats too large"] += 1
            stats = {"stats_dropped_bytes": size}
        self.actors[actor] = {"pid": pid, "state": state[:MAX_STATE_CHARS],
                              "last_seen": sent, "received": self.clock(),
                              "interval": interval, "started": started,
                              "changes_lost": lost, "stats": stats}
        return ""

    def forget_silent(self) -> None:
        now = self.clock()
        for actor_id in [a for a, info in self.actors.items()
                         if now - info["received"] > self.forget_after]:
            del self.actors[actor_id]


def nonnegative_count(value) -> int:
    """A non-negative count from an actor's stats (0 when absent or not a count)."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _started(sent: float, stats: dict) -> float:
    """When the beating process started (wall clock): the beat's time less its uptime."""
    uptime = stats.get("uptime")
    if isinstance(uptime, (int, float)) and not isinstance(uptime, bool) and \
            0 <= uptime < float("inf"):
        return sent - uptime
    return sent


def _pids() -> list[int]:
    try:
        return [int(name) for name in os.listdir("/proc") if name.isdigit()]
    except OSError:
        return psutil.pids()


class RestartLoopDetector:
    """New pids of autonomous processes working in the workspace, within a trailing window.

    Only processes whose working directory is in the workspace, or whose command line names
    it, count: an agent elsewhere on the machine (another user's, another workspace's) is
    not this workspace's restart loop."""

    def __init__(self, patterns, limit: int, window: float, sample_every: float = 1.0,
                 workspace: str | os.PathLike | None = None):
        self.workspace = real_workspace(workspace)
        self.matcher = AutonomousMatcher(patterns)
        self.limit = limit
        self.window = window
        self.sample_every = sample_every
        self.known: set[int] = set()
        self.starts: deque[tuple[float, int, str]] = deque()  # (monotonic, pid, cmdline)
        self.baseline_taken = False
        self.next_sample = 0.0
        self.own_pid = os.getpid()
        self.cmdlines: dict[int, str] = {}  # pid -> its command line if autonomous, else ''

    def sample(self, now: float) -> None:
        if not self.matcher.patterns or now < self.next_sample:
            return
        self.next_sample = now + self.sample_every
        current: dict[int, str] = {}
        seen: dict[int, str] = {}
        for pid in _pids():
            # A pid's command line is read until it is SETTLED_AGE old, then kept: a scan
            # of a busy machine costs a listing of /proc, not two reads per process.  (A
            # young process may not have exec'd yet; a pid reused between two scans would
            # need pid_max to wrap within sample_every.)
            cmdline = self.cmdlines.get(pid)
            if cmdline is None:
                cmdline, settled = self._matching_cmdline(pid)
                if settled:
                    seen[pid] = cmdline
            else:
                seen[pid] = cmdline
            if cmdline and self.works_here(pid, cmdline):
                current[pid] = cmdline
        self.cmdlines = seen
        if self.baseline_taken:
            for pid in set(current) - self.known:
                self.starts.append((now, pid, current[pid][:200]))
        self.baseline_taken = True
        self.known = set(current)
        while self.starts and self.starts[0][0] < now - self.window:
            self.starts.popleft()

    def _matching_cmdline(self, pid: int) -> tuple[str, bool]:
        """(the command line of ``pid`` when it is an autonomous process, else '';
        whether that can be kept: the process is old enough to have exec'd)."""
        if pid == self.own_pid:
            return "", True
        try:
            proc = psutil.Process(pid)
            with proc.oneshot():
                cmdline = " ".join(proc.cmdline())
                name = proc.name()
                settled = time.time() - proc.create_time() >= SETTLED_AGE
        except psutil.Error:
            return "", False  # exited while listed, or not ours to read: nothing to count
        return (cmdline if self.matcher.matches(cmdline, name) else ""), settled

    def works_here(self, pid: int, cmdline: str) -> bool:
        try:
            process = psutil.Process(pid)
        except psutil.Error:  # gone meanwhile: it works nowhere
            return False
        return works_in(process, cmdline, self.workspace)

    def looping(self) -> str:
        """'' or a sentence saying the autonomous system restarts in a loop."""
        if self.limit <= 0 or len(self.starts) <= self.limit:
            return ""
        return (f"autonomous processes restarting in a loop: {len(self.starts)} new "
                f"processes within {self.window:g}s (limit {self.limit})")

    def status(self) -> dict:
        return {"running": len(self.known), "new_in_window": len(self.starts),
                "window": self.window, "limit": self.limit, "looping": self.looping(),
                "recent": [{"pid": pid, "cmdline": cmd} for _, pid, cmd in
                           list(self.starts)[-5:]]}
