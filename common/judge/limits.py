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
from collections import OrderedDict
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


# Paths whose commit times the runaway cap keeps; beyond, the paths committed longest ago
# are forgotten first (each may then be committed that much sooner: nothing is held or lost).
RUNAWAY_PATHS_KEPT = 20_000


class RunawayGuard:
    """Caps how often one path may be committed: something rewriting a path forever past
    the filters gets at most ``limit`` commits of it per ``window`` seconds.

    Like :class:`RateLimiter` it only delays: a capped path stays held (its latest content
    is committed once the cap allows), and :meth:`runaways` names the capped paths for
    status.  ``limit`` 0 disables the cap.  Asked about every held path at every commit, so
    each answer is O(1): a path keeps only its last ``limit`` commit times, a tuple (an
    older time can no longer cap it), and paths are kept in the order of their last
    commit, so forgetting stops at the first path committed within the window.
    """

    def __init__(self, limit: int, window: float, clock: Callable[[], float] = time.time):
        self.limit = limit
        self.window = window
        self.clock = clock
        self._times: OrderedDict[str, tuple[float, ...]] = OrderedDict()

    def record(self, paths: Iterable[str], moment: float | None = None) -> None:
        moment = self.clock() if moment is None else moment
        if self.limit <= 0:
            return
        keep = self.limit - 1
        for path in paths:
            times = self._times.pop(path, ())  # re-inserted last: in order of last commit
            self._times[path] = (*times[-keep:], moment) if keep else (moment,)
        self._forget(moment)

    def _forget(self, now: float) -> None:
        horizon = now - self.window
        while len(self._times) > RUNAWAY_PATHS_KEPT:
            self._times.popitem(last=False)
        while self._times:
            path, times = next(iter(self._times.items()))
            if times[-1] > horizon:
                return
            del self._times[path]

    def wait_time(self, path: str, now: float | None = None) -> float:
        """Seconds until ``path`` may be committed again (0: now)."""
        times = self._times.get(path)
        if times is None or len(times) < self.limit:
            return 0.0
        now = self.clock() if now is None else now
        return max(0.0, times[0] + self.window - now)

    def runaways(self, now: float | None = None) -> dict[str, int]:
        """Capped paths -> commits of each in the window (at most ``limit``)."""
        now = self.clock() if now is None else now
        return {path: len(times) for path, times in self._times.items()
                if len(times) >= self.limit and times[0] + self.window > now}
