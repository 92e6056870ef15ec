"""Executor: commits (and pushes) the paths the debouncer releases, when it is safe to.

Sockets:
  - PULL  connect  endpoints.batches  in:  Batch (from the debouncer)
  - SUB   connect  endpoints.health   in:  HealthStatus (from the health monitor)
  - PUB   bind     endpoints.commits  out: CommitReport (after every commit attempt)

Received paths join one held set (coalescing).  The held set is committed, in one commit,
when a fresh HealthStatus says ok, the rate limiter allows it, and no commit/push back-off
is pending; until then the paths stay held and ``held_reason`` says why.  All queued
Batches are drained before committing, so a burst becomes one commit.  A failed push keeps
the commit local and is retried with back-off; a limit only delays, nothing is dropped.
"""
from __future__ import annotations

import time

import zmq

from common.actor import Actor, main
from common.committer import Committer, CommitResult
from common.messages import Batch, CommitReport, HealthStatus
from common.ratelimit import RateLimiter

MAX_BACKOFF = 60.0  # seconds; the longest wait between two retries of a failing commit/push
_DRAIN_ROUNDS = 100  # rounds of the base dispatcher (500 messages each) before committing
# Paths listed in one CommitReport: keeps the frame inside the protocol's array limit.
_REPORT_PATHS_LIMIT = 100_000


class Executor(Actor):
    name = "executor"
    control_commands = {"held": "held_paths"}

    def __init__(self, config, instance=None):
        super().__init__(config, instance)
        self.clock = time.monotonic
        self.committer = Committer(config)
        self.limiter = RateLimiter(config.max_commits_per_hour, config.max_commits_per_day,
                                   config.cooldown_seconds, clock=time.time)
        self.held: dict[str, float] = {}  # path -> earliest observed
        self.held_batches: list[int] = []
        self.held_reason = "nothing held"
        self.health: HealthStatus | None = None
        self.health_received = 0.0  # monotonic arrival of the last HealthStatus
        self.retry_at = 0.0  # monotonic: no commit or push before this (back-off)
        self.failures = 0  # consecutive failed attempts, for the back-off length
        self.last_failure = ""
        self.push_pending = False
        self.last_commit: dict = {}
        self.batches_in = None
        self.reports_out = None

    def setup(self) -> None:
        self.batches_in = self.connect(zmq.PULL, self.config.endpoints.batches)
        health = self.connect(zmq.SUB, self.config.endpoints.health, hwm=100)
        self.reports_out = self.bind(zmq.PUB, self.config.endpoints.commits, hwm=1000)
        self.add_input(self.batches_in, {Batch: self.on_batch})
        self.add_input(health, {HealthStatus: self.on_health})
        for moment in self.committer.past_commit_times():
            self.limiter.record(moment)
        self.push_pending = self.committer.unpushed()  # left by a predecessor

    # ----- inputs ---------------------------------------------------------------------
    def on_batch(self, batch: Batch) -> None:
        self.stats["batches"] += 1
        observed = list(batch.observed) + [batch.created] * (len(batch.paths) -
                                                             len(batch.observed))
        for path, seen in zip(batch.paths, observed):
            if not isinstance(path, str) or not path:
                self.stats["bad_paths"] += 1
                continue
            self.held[path] = min(seen, self.held.get(path, seen))
        self.held_batches.append(batch.batch_id)

    def on_health(self, status: HealthStatus) -> None:
        self.health = status
        self.health_received = self.clock()

    # ----- deciding -------------------------------------------------------------------
    def health_fresh_for(self) -> float:
        return 3 * self.config.health_interval + 2.0

    def blocker(self, now: float) -> tuple[str, float | None]:
        """Why neither a commit nor a push may run now, and in how many seconds that may
        change (None: when a message arrives); ('', 0.0) when both may run."""
        if self.health is None:
            return "waiting for the first health status", None
        if now - self.health_received > self.health_fresh_for():
            return "health status is stale (is the health monitor running?)", None
        if not self.health.ok:
            return "health: " + "; ".join(self.health.reasons), None
        if now < self.retry_at:
            what = "push" if self.push_pending and not self.held else "commit"
            return (f"{what} back-off ({self.retry_at - now:.1f}s) after: "
                    f"{self.last_failure}"), self.retry_at - now
        return "", 0.0

    def rate_wait(self) -> tuple[str, float]:
        """The rate limit only paces commits; a pending push is never held by it."""
        wait = self.limiter.wait_time()
        if wait > 0:
            return f"rate limit: {self.limiter.reason()}, {wait:.1f}s left", wait
        return "", 0.0

    def drain_batches(self) -> None:
        """Take every queued Batch, so a burst already on the socket becomes one commit."""
        for _ in range(_DRAIN_ROUNDS):
            if not self.batches_in.poll(0):
                return
            self._dispatch(self.batches_in, self._inputs[self.batches_in])

    # ----- acting ---------------------------------------------------------------------
    def on_tick(self, now: float) -> None:
        now = self.clock()  # the injectable clock, so handler tests control time
        if not self.held and not self.push_pending:
            self.held_reason = "nothing held"
            return
        if not self.current_reason(now):
            self.drain_batches()
            if self.held and not self.rate_wait()[0]:
                self.commit_held()
            elif self.push_pending:
                self.retry_push()
            now = self.clock()
        self.held_reason = self.current_reason(now)

    def current_reason(self, now: float) -> str:
        """Why held paths are not committed now ('' when they may be)."""
        if not self.held and not self.push_pending:
            return "nothing held"
        reason, _ = self.blocker(now)
        if not reason and self.held:
            reason, _ = self.rate_wait()
        return reason

    def commit_held(self) -> None:
        paths = sorted(self.held)
        batch_ids = tuple(self.held_batches)
        self.stats["attempts"] += 1
        result = self.committer.commit(paths)
        self.stats["retries"] += result.retries
        if result.held or (result.error and not result.commit):
            # Nothing committed: keep every path held and try again after a back-off.
            self._back_off(result.held or result.error)
        else:
            for path in paths:
                self.held.pop(path, None)
            self.held_batches = [b for b in self.held_batches if b not in batch_ids]
            if result.commit:
                self.limiter.record()
                self.stats["commits"] += 1
                self.last_commit = {"commit": result.commit, "paths": len(result.paths),
                                    "finished": time.time(), "pushed": result.pushed}
                self._after_push(result.pushed, result.error)
            else:
                self.failures = 0
        self._report(batch_ids, result)

    def retry_push(self) -> None:
        self.stats["push_retries"] += 1
        pushed, error = self.committer.push()
        self._after_push(pushed, error)
        self._report((), CommitResult(pushed=pushed, error=error))

    def _after_push(self, pushed: bool, error: str) -> None:
        if pushed:
            self.stats["pushes"] += 1
            self.push_pending, self.failures = False, 0
        elif self.config.remote:
            self.push_pending = True
            self._back_off(error)
        else:
            self.failures = 0

    def _back_off(self, why: str) -> None:
        self.failures += 1
        delay = min(MAX_BACKOFF, max(self.config.retry_backoff, 0.1) * self.failures)
        self.retry_at = self.clock() + delay
        self.last_failure = why[:300]
        self.record_error(why)
        self.stats["backoffs"] += 1
        self.log.warning("executor: %s; next try in %.1fs", why, delay)

    def _report(self, batch_ids, result: CommitResult) -> None:
        report = CommitReport(batch_ids=tuple(batch_ids)[-_REPORT_PATHS_LIMIT:],
                              paths=tuple(result.paths)[:_REPORT_PATHS_LIMIT],
                              commit=result.commit, pushed=result.pushed,
                              error=result.error or result.held, finished=time.time(),
                              held=tuple(sorted(self.held))[:_REPORT_PATHS_LIMIT])
        self.send(self.reports_out, report)

    def wakeup_in(self) -> float | None:
        if not self.held and not self.push_pending:
            return None
        reason, wait = self.blocker(self.clock())
        if reason:
            # Waiting on health: a message wakes us; staleness is seen on the next beat.
            return 1.0 if wait is None else wait
        if self.held and not self.push_pending:
            return self.rate_wait()[1]
        return 0.0

    # ----- status ---------------------------------------------------------------------
    def held_paths(self, limit: int = 1000) -> dict:
        paths = sorted(self.held)
        return {"total": len(paths), "paths": paths[:max(0, int(limit))],
                "reason": self.held_reason}

    def extra_status(self) -> dict:
        return {"held": len(self.held), "held_reason": self.held_reason,
                "commits": self.stats["commits"], "pushes": self.stats["pushes"],
                "retries": self.stats["retries"], "push_pending": self.push_pending,
                "attempts": self.stats["attempts"], "last_commit": self.last_commit,
                "health_ok": bool(self.health and self.health.ok)}


if __name__ == "__main__":
    raise SystemExit(main(Executor))
