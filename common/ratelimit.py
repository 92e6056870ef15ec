"""Commit rate limiting: per hour, per day, and a cooldown between two commits.

Reaching a limit only delays: :meth:`RateLimiter.wait_time` says how long until the next
commit may be made, and the executor keeps holding (and coalescing) paths meanwhile.
Times are wall-clock seconds (``time.time()``) so the limiter can be seeded from the commit
times git records (``%ct``) of gitsieve's earlier commits, surviving restarts.
A limit of 0 means "no such limit".
"""
from __future__ import annotations

import bisect
import time
from typing import Callable, Iterable

HOUR = 3600.0
DAY = 86400.0


class RateLimiter:
    def __init__(self, per_hour: int, per_day: int, cooldown: float,
                 clock: Callable[[], float] = time.time, past: Iterable[float] = ()):
        self.per_hour = per_hour
        self.per_day = per_day
        self.cooldown = cooldown
        self.clock = clock
        self._times: list[float] = []  # sorted commit times within the last day
        for moment in past:
            self.record(moment)

    def record(self, moment: float | None = None) -> None:
        """Note a commit made at ``moment`` (default: now)."""
        bisect.insort(self._times, self.clock() if moment is None else moment)

    def _forget_before(self, limit: float) -> None:
        cut = bisect.bisect_right(self._times, limit)
        if cut:
            del self._times[:cut]

    def _window_wait(self, now: float, window: float, allowed: int) -> float:
        """Seconds until fewer than ``allowed`` commits lie in the trailing ``window``."""
        if allowed <= 0:
            return 0.0
        start = bisect.bisect_right(self._times, now - window)
        recent = self._times[start:]
        if len(recent) < allowed:
            return 0.0
        # The commit that must age out of the window before one more is allowed.
        return max(0.0, recent[len(recent) - allowed] + window - now)

    def wait_time(self, now: float | None = None) -> float:
        """Seconds until a commit is allowed; 0 means a commit may be made now."""
        now = self.clock() if now is None else now
        self._forget_before(now - DAY)
        waits = [self._window_wait(now, HOUR, self.per_hour),
                 self._window_wait(now, DAY, self.per_day)]
        if self.cooldown > 0 and self._times:
            waits.append(max(0.0, self._times[-1] + self.cooldown - now))
        return max(waits)

    def reason(self, now: float | None = None) -> str:
        """Which limit currently applies ('' when none)."""
        now = self.clock() if now is None else now
        if self._window_wait(now, DAY, self.per_day) > 0:
            return f"daily limit of {self.per_day} commits"
        if self._window_wait(now, HOUR, self.per_hour) > 0:
            return f"hourly limit of {self.per_hour} commits"
        if self.cooldown > 0 and self._times and self._times[-1] + self.cooldown > now:
            return f"cooldown of {self.cooldown:g}s"
        return ""

    def recent_count(self, now: float | None = None, window: float = HOUR) -> int:
        now = self.clock() if now is None else now
        return len(self._times) - bisect.bisect_right(self._times, now - window)
