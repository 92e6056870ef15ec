"""Health judgements that need no git: autonomous processes restarting in a loop."""
from __future__ import annotations

import os
from collections import deque

import psutil

from gitsieve.common.judge.attribution.base import AutonomousMatcher


class RestartLoopDetector:
    """New pids of autonomous processes within a trailing window."""

    def __init__(self, patterns, limit: int, window: float, sample_every: float = 1.0):
        self.matcher = AutonomousMatcher(patterns)
        self.limit = limit
        self.window = window
        self.sample_every = sample_every
        self.known: set[int] = set()
        self.starts: deque[tuple[float, int, str]] = deque()  # (monotonic, pid, cmdline)
        self.baseline_taken = False
        self.next_sample = 0.0
        self.own_pid = os.getpid()

    def sample(self, now: float) -> None:
        if not self.matcher.patterns or now < self.next_sample:
            return
        self.next_sample = now + self.sample_every
        current: dict[int, str] = {}
        for proc in psutil.process_iter(["pid", "name", "cmdline"]):
            try:
                cmdline = " ".join(proc.info["cmdline"] or [])
                name = proc.info["name"] or ""
            except psutil.Error:
                continue  # exited while listed: nothing to count
            if proc.info["pid"] != self.own_pid and self.matcher.matches(cmdline, name):
                current[proc.info["pid"]] = cmdline
        if self.baseline_taken:
            for pid in set(current) - self.known:
                self.starts.append((now, pid, current[pid][:200]))
        self.baseline_taken = True
        self.known = set(current)
        while self.starts and self.starts[0][0] < now - self.window:
            self.starts.popleft()

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
