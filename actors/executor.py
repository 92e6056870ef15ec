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
Waiting never blocks the loop: a failed commit (a busy index.lock, say) is retried after a
jittered exponential back-off and a failed push after 2/4/6... s (capped by
``push_backoff_max``), both scheduled through ``wakeup_in``/``on_tick``; commits go on
locally while pushes back off or stay stopped by a conflict with the remote.
"""
from __future__ import annotations

import random
import time
from collections import OrderedDict

import zmq

from gitsieve.common.actor.base import Actor, main
from gitsieve.common.git.committer import CommitResult, Committer
from gitsieve.common.git.head import head_token
from gitsieve.common.judge.guard.gate import CommitGuard
from gitsieve.common.judge.limits import RateLimiter, RunawayGuard
from gitsieve.common.protocol.messages import Batch, CommitReport, HealthStatus
from gitsieve.common.protocol.states import Hold, Why

MAX_BACKOFF = 60.0  # seconds; the longest wait between two retries of a failing commit
PUSH_BACKOFF_STEP = 2.0  # seconds: pushes retry after 2, 4, 6... s (capped by the config)
_DRAIN_ROUNDS = 100  # rounds of the base dispatcher (500 messages each) before committing
# Paths listed in one CommitReport: keeps the frame inside the protocol's array limit.
_REPORT_PATHS_LIMIT = 100_000
EXPLAIN_PATHS = 10_000  # paths whose last commit is remembered for `actorctl explain`


class Executor(Actor):
    name = "executor"
    control_commands = {"held": "held_paths", "pause": "pause", "resume": "resume",
                        "explain": "explain_paths"}
    # A path committed [limits] runaway_commits_per_hour times within the window is a
    # runaway (something rewrites it forever past the filters): it stays held until the
    # window lets it in again.
    runaway_window = 3600.0

    def __init__(self, config, instance=None):
        super().__init__(config, instance)
        self.clock = time.monotonic
        self.committer = Committer(config)
        self.limiter = RateLimiter(config.max_commits_per_hour, config.max_commits_per_day,
                                   config.cooldown_seconds, clock=time.time)
        self.held: dict[str, float] = {}  # path -> earliest observed
        self.recheck: set[str] = set()  # held paths to re-check against HEAD (Batch.recheck)
        self.held_batches: list[int] = []
        self.held_reason: Why | None = Why(Hold.NOTHING)
        self.health: HealthStatus | None = None
        self.health_received = 0.0  # monotonic arrival of the last HealthStatus
        self.retry_at = 0.0  # monotonic: no commit before this (back-off)
        self.failures = 0  # consecutive failed commit attempts, for the back-off length
        self.push_retry_at = 0.0  # monotonic: no push before this (commits go on locally)
        self.push_failures = 0
        self.last_push_failure = ""
        self.runaway = RunawayGuard(config.runaway_commits_per_hour, self.runaway_window,
                                    clock=time.time)
        self.last_failure = ""
        self.push_pending = False
        self.last_commit: dict = {}
        self.paused = False  # set by `actorctl pause`: nothing is committed or pushed
        self.committed: OrderedDict[str, dict] = OrderedDict()  # path -> last commit (LRU)
        self.batches_in = None
        self.reports_out = None
        # Per-path holds (the guard's: a secret, too large): each path with its own reason.
        self.path_holds: dict[str, Why] = {}
        self.guard: CommitGuard | None = None
        self._guard_head: tuple | None = None  # HEAD when the holds were last judged

    def setup(self) -> None:
        self.batches_in = self.connect(zmq.PULL, self.config.endpoints.batches)
        health = self.connect(zmq.SUB, self.config.endpoints.health, hwm=100)
        self.reports_out = self.bind(zmq.PUB, self.config.endpoints.commits, hwm=1000)
        self.add_input(self.batches_in, {Batch: self.on_batch})
        self.add_input(health, {HealthStatus: self.on_health})
        for moment in self.committer.past_commit_times():
            self.limiter.record(moment)
        self.push_pending = self.committer.unpushed()  # left by a predecessor
        self.attach_guard()

    # ----- inputs ---------------------------------------------------------------------
    def on_batch(self, batch: Batch) -> None:
        self.stats["batches"] += 1
        observed = list(batch.observed) + [batch.created] * (len(batch.paths) -
                                                             len(batch.observed))
        for path, seen in zip(batch.paths, observed):
            if not isinstance(path, str) or not path:
                self.stats["bad_paths"] += 1
                continue
            newly_held = path not in self.held
            self.held[path] = min(seen, self.held.get(path, seen))
            # Re-check only if every batch that brought the path asked for it.
            if path in batch.recheck and (newly_held or path in self.recheck):
                self.recheck.add(path)
            else:
                self.recheck.discard(path)
        self.held_batches.append(batch.batch_id)

    def on_health(self, status: HealthStatus) -> None:
        self.health = status
        self.health_received = self.clock()

    # ----- deciding -------------------------------------------------------------------
    def health_fresh_for(self) -> float:
        return 3 * self.config.health_interval + 2.0

    def blocker(self, now: float) -> tuple[Why | None, float | None]:
        """Why neither a commit nor a push may run now, and in how many seconds that may
        change (None: when a message arrives); (None, 0.0) when both may run."""
        if self.paused:
            return Why(Hold.PAUSED), None
        if self.health is None:
            return Why(Hold.NO_HEALTH_YET), None
        if now - self.health_received > self.health_fresh_for():
            return Why(Hold.HEALTH_STALE), None
        if not self.health.ok:
            return Why(Hold.HEALTH, "; ".join(self.health.reasons)), None
        return None, 0.0

    def commit_wait(self, now: float) -> tuple[Why | None, float]:
        """Why held paths may not be committed now (commit back-off, rate limit, every
        held path capped as a runaway) and for how long; (None, 0.0) when they may."""
        if now < self.retry_at:
            return Why(Hold.COMMIT_BACKOFF, f"{self.last_failure} (next try in "
                                            f"{self.retry_at - now:.1f}s)"), self.retry_at - now
        wait = self.limiter.wait_time()
        if wait > 0:  # the rate limit only paces commits; a push is never held by it
            return Why(Hold.RATE_LIMIT, f"{self.limiter.reason()}, {wait:.1f}s left"), wait
        caps = [self.runaway.wait_time(path) for path in self.held]
        if caps and min(caps) > 0:
            return Why(Hold.RUNAWAY, f"{len(caps)} path(s) committed {self.runaway.limit} "
                                     f"times within {self.runaway.window:g}s"), min(caps)
        return None, 0.0

    def push_wait(self, now: float) -> tuple[Why | None, float]:
        """Why a pending push may not run now, and for how long (None when it may)."""
        if now >= self.push_retry_at:
            return None, 0.0
        if self.committer.push_held is not None:
            return self.committer.push_held, self.push_retry_at - now
        left = f"(next {'check' if self.committer.push_conflict else 'try'} in " \
               f"{self.push_retry_at - now:.1f}s)"
        if self.committer.push_conflict:
            return Why(Hold.PUSH_STOPPED, f"{self.committer.push_conflict} {left}"), \
                self.push_retry_at - now
        return Why(Hold.PUSH_BACKOFF, f"{self.last_push_failure} {left}"), \
            self.push_retry_at - now

    def drain_batches(self) -> None:
        """Take every queued Batch, so a burst already on the socket becomes one commit."""
        for _ in range(_DRAIN_ROUNDS):
            if not self.batches_in.poll(0):
                return
            self._dispatch(self.batches_in, self._inputs[self.batches_in])

    # ----- acting ---------------------------------------------------------------------
    def on_tick(self, now: float) -> None:
        now = self.clock()  # the injectable clock, so handler tests control time
        self.guard_tick()
        if not self.held and not self.push_pending:
            self.held_reason = Why(Hold.NOTHING)
            return
        if self.blocker(now)[0] is None:
            self.drain_batches()
            if self.committer.index_refresh_pending:
                self.committer.refresh_user_index(attempts=0)  # one try; the rest later
            if self.held and self.commit_wait(now)[0] is None:
                self.commit_held(push=self.push_wait(now)[0] is None)
            elif self.push_pending and self.push_wait(now)[0] is None:
                self.retry_push()
            now = self.clock()
        self.note_held_reason(self.current_reason(now))

    def current_reason(self, now: float) -> Why | None:
        """Why held paths are not committed now (None when they may be)."""
        if not self.held and not self.push_pending:
            return Why(Hold.NOTHING)
        reason, _ = self.blocker(now)
        if reason is None and self.held:
            reason, _ = self.commit_wait(now)
        if reason is None and not self.held:
            reason, _ = self.push_wait(now)
        return reason

    def commit_held(self, push: bool = True) -> None:
        # A path capped as a runaway stays held (its latest content goes in later).
        paths = sorted(path for path in self.held if not self.runaway.wait_time(path))
        batch_ids = tuple(self.held_batches)
        self.stats["attempts"] += 1
        # attempts=0: a lock or race returns at once; the retry is scheduled below (the
        # loop keeps serving control requests and heartbeats meanwhile).
        result = self.committer.commit(paths, push=push, attempts=0,
                                       recheck=self.recheck.intersection(paths))
        self.stats["retries"] += result.retries
        if result.held or (result.error and not result.commit):
            # Nothing committed: keep every path held and try again after a back-off.
            self.stats["commit_failures_transient" if result.transient
                       else "commit_failures"] += 1
            self._back_off(result.held or result.error)
        else:
            if result.commit:
                self.runaway.record(result.paths)
                if not push:
                    self.push_pending = True  # pushed when the push back-off is over
            remaining = set(self.held) - set(paths)
            batch_ids = batch_ids if not remaining else ()
            for path in paths:
                self.held.pop(path, None)
                self.recheck.discard(path)
            self.held_batches = [b for b in self.held_batches if b not in batch_ids]
            self.note_path_holds(paths, result.held_paths)
            self.note_committed([p for p in paths if p not in result.held_paths], result)
            self.failures = 0
            if result.commit:
                self.limiter.record()
                self.stats["commits"] += 1
                self.last_commit = {"commit": result.commit, "paths": len(result.paths),
                                    "finished": time.time(), "pushed": result.pushed}
                shown = ", ".join(result.paths[:5]) + (
                    f" and {len(result.paths) - 5} more" if len(result.paths) > 5 else "")
                self.log.info("committed %s: %s%s", result.commit[:10], shown,
                              " (pushed)" if result.pushed else "")
                if push:
                    self._after_push(result.pushed, result.error)
        self._report(batch_ids, result)

    def retry_push(self) -> None:
        self.stats["push_retries"] += 1
        pushed, error = self.committer.push()
        self._after_push(pushed, error)
        self._report((), CommitResult(pushed=pushed, error=error))

    def _after_push(self, pushed: bool, error: str) -> None:
        if pushed:
            self.stats["pushes"] += 1
            self.push_pending, self.push_failures = False, 0
            self.push_retry_at = 0.0
        elif self.committer.push_held is not None:
            self.hold_push()
        elif self.config.remote:
            self.push_pending = True
            self._push_back_off(error)

    def _back_off(self, why: str) -> None:
        """Commit back-off: jittered exponential, so a lock holder is not hammered in step."""
        self.failures += 1
        base = max(self.config.retry_backoff, 0.05) * 2 ** min(self.failures - 1, 10)
        delay = min(MAX_BACKOFF, base) * random.uniform(0.5, 1.5)
        self.retry_at = self.clock() + delay
        self.last_failure = why[:300]
        self.record_error(why)
        self.stats["backoffs"] += 1
        self.log.warning("executor: %s; next try in %.1fs", why, delay)

    def _push_back_off(self, why: str) -> None:
        """Push back-off: 2, 4, 6... s (the seed's minimum) capped by push_backoff_max; a
        conflict with the remote waits the whole cap (pushing stops until it clears)."""
        self.push_failures += 1
        if self.committer.push_conflict:
            self.stats["push_conflicts"] += 1
            delay = self.config.push_backoff_max
        else:
            delay = min(self.config.push_backoff_max, PUSH_BACKOFF_STEP * self.push_failures)
        self.push_retry_at = self.clock() + delay
        self.last_push_failure = why[:300]
        self.record_error(why)
        self.stats["push_backoffs"] += 1
        self.log.warning("executor: %s; next push in %.1fs", why, delay)

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
        now = self.clock()
        waits = []
        if self.held:
            waits.append(self.commit_wait(now)[1])
        if self.push_pending:
            waits.append(self.push_wait(now)[1])
        return min(waits)

    # ----- status ---------------------------------------------------------------------
    def reason_fields(self) -> dict:
        """The hold as a value (``hold``: a Hold, None when nothing holds) and as text."""
        reason = self.held_reason
        return {"hold": None if reason is None else reason.hold,
                "held_reason": "" if reason is None else reason.text}

    # ----- operations (actorctl pause / resume / explain) ------------------------------
    def pause(self) -> dict:
        self.paused = True
        self.held_reason = self.current_reason(self.clock())
        self.log.info("executor: paused by actorctl; %d paths held", len(self.held))
        return {"paused": True, "held": len(self.held)}

    def resume(self) -> dict:
        self.paused = False
        self.log.info("executor: resumed by actorctl; %d paths held", len(self.held))
        return {"paused": False, "held": len(self.held)}

    def note_held_reason(self, reason: Why | None) -> None:
        """Keep the reason, counting each time the rate limit starts holding commits."""
        if (reason is not None and reason.hold == Hold.RATE_LIMIT
                and (self.held_reason is None or self.held_reason.hold != Hold.RATE_LIMIT)):
            self.stats["rate_limit_waits"] += 1
        self.held_reason = reason

    def note_committed(self, paths: list[str], result: CommitResult) -> None:
        committed = set(result.paths)
        finished = time.time()
        for path in paths:
            if path not in committed and (self.committed.get(path) or {}).get("commit"):
                continue  # unchanged since its last commit: that commit still holds it
            self.committed[path] = {
                "commit": result.commit if path in committed else None,
                "finished": finished,
                "note": "" if path in committed else "no difference from HEAD: nothing to commit"}
            self.committed.move_to_end(path)
        while len(self.committed) > EXPLAIN_PATHS:
            self.committed.popitem(last=False)

    def explain_paths(self, paths: list | None = None) -> dict:
        """Per path: held (and why) or the commit that holds it, and whether it is pushed."""
        if not isinstance(paths, (list, tuple)) or not all(isinstance(p, str) for p in paths):
            raise ValueError("explain needs paths: a list of strings")
        found = {}
        for path in paths[:EXPLAIN_PATHS]:
            record = dict(self.committed.get(path) or {})
            held = path in self.held or path in self.path_holds
            if record.get("commit"):
                # Pushes carry every earlier commit, so no pending push means it is pushed.
                record["pushed"] = (not self.push_pending) if self.config.remote else None
            if path in self.path_holds:
                reason = {"hold": self.path_holds[path].hold,
                          "held_reason": self.path_holds[path].text}
            else:
                reason = self.reason_fields() if held else {"hold": None, "held_reason": ""}
            found[path] = {**record, "held": held, **reason}
        return {"paths": found, "push_pending": self.push_pending, "paused": self.paused}

    def held_paths(self, limit: int = 1000) -> dict:
        paths = sorted(self.held)
        return {"total": len(paths), "paths": paths[:max(0, int(limit))],
                **self.reason_fields(), "path_holds": self.path_hold_list(limit)}

    def queue_depth(self) -> int:
        return len(self.held)

    def extra_status(self) -> dict:
        return {"held": len(self.held), **self.reason_fields(),
                "commits": self.stats["commits"], "pushes": self.stats["pushes"],
                "retries": self.stats["retries"], "push_pending": self.push_pending,
                "attempts": self.stats["attempts"], "last_commit": self.last_commit,
                "health_ok": bool(self.health and self.health.ok),
                "paused": self.paused, "rate_limit_waits": self.stats["rate_limit_waits"],
                "push_retries": self.stats["push_retries"], "backoffs": self.stats["backoffs"],
                "rechecked_dropped": self.committer.rechecked_dropped,
                **self.recovery_status(), **self.guard_status()}

    def recovery_status(self) -> dict:
        """Push and commit recovery state: back-offs, a conflict with the remote, runaways."""
        now = self.clock()
        return {"push_conflict": self.committer.push_conflict,
                "push_backoff": round(max(0.0, self.push_retry_at - now), 1),
                "last_push_failure": self.last_push_failure,
                "commit_backoff": round(max(0.0, self.retry_at - now), 1),
                "last_commit_failure": self.last_failure,
                "integrations": self.committer.integrations,
                "index_refresh_pending": len(self.committer.index_refresh_pending),
                "unfinished_rollback": self.committer.unfinished_rollback,
                "runaways": self.runaway.runaways()}

    # ----- guard hooks (issue 12): per-path holds and the push gate --------------------
    def attach_guard(self) -> None:
        """Plug the guard into the committer ([guard] secrets, max_new_file_mb)."""
        if not (self.config.guard_secrets or self.config.max_new_file_mb):
            return
        self.guard = CommitGuard(self.config, self.committer.git)
        self.committer.commit_gate = self.guard
        self.committer.push_gate = self.guard.push_gate
        self._guard_head = head_token(self.config.git_dir)

    def guard_tick(self) -> None:
        """A release, an allowlist edit or HEAD moving may clear holds: the held paths are
        tried again and a held push is checked again at once."""
        if self.guard is None:
            return
        head = head_token(self.config.git_dir)
        changed = self.guard.refresh() or head != self._guard_head
        self._guard_head = head
        if not changed:
            return
        for path in self.path_holds:
            self.held.setdefault(path, time.time())
        if self.committer.push_held is not None:
            self.push_retry_at = 0.0

    def note_path_holds(self, paths: list[str], held: dict[str, Why]) -> None:
        """Keep the paths the committer kept out, each with its reason (logged once)."""
        for path in paths:
            why = held.get(path)
            if why is None:
                self.path_holds.pop(path, None)
                continue
            if self.path_holds.get(path) != why:
                self.log.warning("held %s: %s", path, why.text)
                self.stats["path_holds"] += 1
            self.path_holds[path] = why

    def hold_push(self) -> None:
        """The push gate stopped the push: checked again on a release, an allowlist edit or
        a move of HEAD (guard_tick), else after push_backoff_max."""
        self.push_pending = True
        self.push_retry_at = self.clock() + self.config.push_backoff_max
        self.stats["pushes_held"] += 1

    def path_hold_list(self, limit: int = 50) -> list[dict]:
        return [{"path": path, "hold": why.hold, "held_reason": why.text}
                for path, why in sorted(self.path_holds.items())[:max(0, int(limit))]]

    def guard_status(self) -> dict:
        status = {"path_holds": self.path_hold_list(), "path_holds_total": len(self.path_holds),
                  "push_held": "" if self.committer.push_held is None
                  else self.committer.push_held.text}
        if self.guard is not None:
            status["guard"] = self.guard.status()
        return status

    def shutdown(self) -> None:
        if self.guard is not None:
            self.guard.close()


if __name__ == "__main__":
    raise SystemExit(main(Executor))
