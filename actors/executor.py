"""Executor: commits (and pushes) the paths the debouncer releases, when it is safe to.

Sockets:
  - PULL  connect  endpoints.batches  in:  Batch (from the debouncer)
  - SUB   connect  endpoints.health   in:  HealthStatus (from the health monitor)
  - PUB   bind     endpoints.commits  out: CommitReport (after every commit attempt)

Received paths join one held set (coalescing).  The held set is committed, in one commit,
when a fresh HealthStatus says ok, the configured branch is checked out, the rate limiter
allows it, and no commit back-off is pending; until then the paths stay held and
``held_reason`` says why.  All queued Batches are drained before committing, so a burst
becomes one commit.

The git work (staging, committing, pushing) runs in a worker thread, one job at a time,
never on the actor's loop: control requests, heartbeats and shutdown are served while a
60 MB file is hashed or a push crawls.  A Batch that brings a path again while a job
commits it keeps the path held for the next commit.

A path the committer leaves out with a reason of its own (staged by you, a nested
repository, a path git refuses; see ``CommitResult.held_paths``) stays held with that
reason while the others are committed; it is tried again when its reason may have cleared:
a Batch brings it again (the file changed), the user's index, a ref or the repository's git
config moved, or ``HOLD_RETRY`` seconds passed (``REWRITTEN_RETRY``, doubling, for a file
rewritten while it was committed: an agent's rewrite brings no Batch).

Pushes: anything ahead of the upstream is pushed, the person's own commits included.  HEAD
and the refs are watched by ``stat`` (no git process) on every loop round: when they move,
a push job finds out whether anything is ahead.  A failed push keeps the commit local and
is retried after 2/4/6... s (capped by ``push_backoff_max``); a conflict with the remote, a
push gate's refusal or rewritten pushed history (``Hold.HISTORY_REWRITTEN``: never forced,
never replayed) stop pushing until the refs move or ``push_backoff_max`` passes; commits go
on locally meanwhile, and so does a missing remote (``Hold.NO_REMOTE``, until the git config
changes).  Each push problem is warned about once, again only when it changes.  A limit
only delays, nothing is dropped.
"""
from __future__ import annotations

import os
import queue
import random
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

import zmq

from gitsieve.common.actor.base import Actor, main
from gitsieve.common.git.committer import CommitResult, Committer
from gitsieve.common.git.head import common_dir, file_signature, head_token
from gitsieve.common.judge.areas import quiet_areas_first
from gitsieve.common.judge.guard.gate import CommitGuard
from gitsieve.common.judge.limits import RateLimiter, RunawayGuard
from gitsieve.common.protocol.messages import Batch, CommitReport, HealthStatus
from gitsieve.common.protocol.states import Hold, Why

MAX_BACKOFF = 60.0  # seconds; the longest wait between two retries of a failing commit
PUSH_BACKOFF_STEP = 2.0  # seconds: pushes retry after 2, 4, 6... s (capped by the config)
HOLD_RETRY = 60.0  # seconds: paths held with a reason of their own are tried again
# A file rewritten while it was committed is tried again this soon (doubling while it keeps
# changing, up to HOLD_RETRY): the rewrite may be an agent's, which brings no Batch, and the
# person's change in it would otherwise wait a minute.
REWRITTEN_RETRY = 1.0
STOP_WAIT = 4.0  # seconds shutdown waits for a running git job (the runner allows 5)
# A backlog of at least this many paths waiting behind a running commit has its objects
# written meanwhile, at most this many at a time.
WRITE_AHEAD_MIN, WRITE_AHEAD_MAX = 64, 5000
_DRAIN_ROUNDS = 100  # rounds of the base dispatcher (500 messages each) before committing
# Paths listed in one CommitReport: keeps the frame inside the protocol's array limit.
_REPORT_PATHS_LIMIT = 100_000
EXPLAIN_PATHS = 10_000  # paths whose last commit is remembered for `actorctl explain`
HELD_LISTED = 1000  # held paths listed (with their reasons) in one status reply


@dataclass
class Job:
    """One piece of git work for the worker thread: a commit (then maybe a push), a push,
    or a refresh of the user's index."""

    paths: list[str]
    recheck: dict[str, float] = field(default_factory=dict)  # path -> earliest observation
    push: bool = False
    batch_ids: tuple[int, ...] = ()
    started: float = 0.0
    refs: tuple | None = None  # the refs as the loop last saw them when the job started
    result: CommitResult | None = None
    failure: BaseException | None = None
    # membership tests while the job runs: a Batch of thousands of paths asks for each
    path_set: frozenset[str] = field(init=False)

    def __post_init__(self) -> None:
        self.path_set = frozenset(self.paths)

    @property
    def kind(self) -> str:
        return "commit" if self.paths else "push" if self.push else "index"


class Executor(Actor):
    name = "executor"
    control_commands = {"held": "held_paths", "pause": "pause", "resume": "resume",
                        "explain": "explain_paths", "retry": "retry_held"}
    # A path committed [limits] runaway_commits_per_hour times within the window is a
    # runaway (something rewrites it forever past the filters): it stays held until the
    # window lets it in again, unless its change was positively written by the person.
    runaway_window = 3600.0

    def __init__(self, config, instance=None):
        super().__init__(config, instance)
        self.clock = time.monotonic
        self.committer = Committer(config)
        self.limiter = RateLimiter(config.max_commits_per_hour, config.max_commits_per_day,
                                   config.cooldown_seconds, clock=time.time)
        self.held: dict[str, float] = {}  # path -> earliest observed
        self.recheck: set[str] = set()  # held paths to re-check against HEAD (Batch.recheck)
        self.user_written: set[str] = set()  # held paths a user process wrote (never capped)
        self.path_holds: dict[str, Why] = {}  # held paths with a reason of their own
        self.logged_holds: dict[str, Why] = {}  # the reason last logged for each held path
        self.guard: CommitGuard | None = None  # attached in setup (it needs the runtime dir)
        self.held_batches: list[int] = []
        self.held_reason: Why | None = Why(Hold.NOTHING)
        self.health: HealthStatus | None = None
        self.health_received = 0.0  # monotonic arrival of the last HealthStatus
        self.retry_at = 0.0  # monotonic: no commit before this (back-off)
        self.failures = 0  # consecutive failed commit attempts, for the back-off length
        self.push_retry_at = 0.0  # monotonic: no push before this (commits go on locally)
        self.push_failures = 0
        self.last_push_failure = ""
        self.push_problem_logged: Why | str | None = None  # the last one warned about
        self.runaway = RunawayGuard(config.runaway_commits_per_hour, self.runaway_window,
                                    clock=time.time)
        self.last_failure = ""
        self.push_pending = False
        self.last_commit: dict = {}
        self.paused = False  # set by `actorctl pause`: nothing is committed or pushed
        self.committed: OrderedDict[str, dict] = OrderedDict()  # path -> last commit (LRU)
        self.batches_in = None
        # objects of waiting paths written while a commit runs (see write_waiting_objects)
        self._writing_ahead: threading.Thread | None = None
        self.written_ahead: dict[str, None] = {}  # the paths asked for, oldest first
        self.reports_out = None
        # git work: in a worker thread once the loop runs (inline for handler tests)
        self.offload = False
        self.job: Job | None = None
        self.changed_during_job: set[str] = set()
        self._finished: queue.SimpleQueue = queue.SimpleQueue()
        self._wake: tuple[int, int] | None = None
        self._thread: threading.Thread | None = None
        # what the refs, HEAD and the user's index looked like (stat only)
        self.refs_token: tuple | None = None
        self.holds_token: tuple | None = None
        self.push_hold_token: tuple | None = None  # refs when a push hold was decided
        self.next_hold_retry = 0.0
        self.rewritten_retries: dict[str, int] = {}  # path -> consecutive rewritten holds

    def setup(self) -> None:
        self.batches_in = self.connect(zmq.PULL, self.config.endpoints.batches)
        health = self.connect(zmq.SUB, self.config.endpoints.health, hwm=100)
        self.reports_out = self.bind(zmq.PUB, self.config.endpoints.commits, hwm=1000)
        self.add_input(self.batches_in, {Batch: self.on_batch})
        self.add_input(health, {HealthStatus: self.on_health})
        for moment in self.committer.past_commit_times():
            self.limiter.record(moment)
        self._wake = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.watch_fd(self._wake[0], self._job_done)
        self.offload = True
        self.attach_guard()

    def attach_guard(self) -> None:
        """The guard (issue 12) on the committer's hooks: a file too large is held before
        it is hashed, the exact blobs of a commit are scanned for secrets, and so is every
        push's content the remote lacks ([guard] secrets, max_new_file_mb)."""
        if not (self.config.guard_secrets or self.config.max_new_file_mb):
            return
        self.guard = CommitGuard(self.config, self.committer.git)
        self.committer.path_gate = self.guard.before_staging
        self.committer.blob_gate = self.guard.check_blobs
        self.committer.push_gate = self.guard.push_gate
        self.committer.sync_commit_made = self.guard.sync_commit_made

    # ----- inputs ---------------------------------------------------------------------
    def on_batch(self, batch: Batch) -> None:
        self.stats["batches"] += 1
        observed = list(batch.observed) + [batch.created] * (len(batch.paths) -
                                                             len(batch.observed))
        user_written = set(batch.user_written)
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
            if path in user_written:
                self.user_written.add(path)
            self.path_holds.pop(path, None)  # changed again: its reason may have cleared
            if self.job is not None and path in self.job.path_set:
                self.changed_during_job.add(path)
        self.held_batches.append(batch.batch_id)

    def _retry_rewritten(self, path: str) -> None:
        """Try the held paths again soon: ``path`` was rewritten while it was committed."""
        for gone in [held for held in self.rewritten_retries if held not in self.held]:
            del self.rewritten_retries[gone]  # flushed or dropped meanwhile
        count = self.rewritten_retries.get(path, 0)
        self.rewritten_retries[path] = count + 1
        delay = min(REWRITTEN_RETRY * 2 ** min(count, 16), HOLD_RETRY)
        self.next_hold_retry = min(self.next_hold_retry, self.clock() + delay)

    def on_health(self, status: HealthStatus) -> None:
        self.health = status
        self.health_received = self.clock()

    # ----- deciding -------------------------------------------------------------------
    def health_fresh_for(self) -> float:
        """How long the last verdict holds: three of the intervals it announced (an
        unchanged verdict comes less often, and says so), and two seconds of slack."""
        announced = self.health.interval if self.health is not None else 0.0
        return 3 * (announced or self.config.health_interval) + 2.0

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
        _, branch_reason = self.committer.branch_hold_reason()
        if branch_reason:
            return Why(Hold.BRANCH, branch_reason), None
        return None, 0.0

    def capped(self, path: str) -> bool:
        """Held back by the runaway cap (never a change a user process wrote)."""
        return path not in self.user_written and self.runaway.wait_time(path) > 0

    def committable(self) -> list[str]:
        """Held paths a commit may take now: not held with a reason of their own, not
        capped as runaways."""
        return sorted(path for path in self.held
                      if path not in self.path_holds and not self.capped(path))

    def commit_wait(self, now: float) -> tuple[Why | None, float]:
        """Why held paths may not be committed now (commit back-off, rate limit, every
        held path capped as a runaway or held with a reason of its own) and for how long;
        (None, 0.0) when they may."""
        if now < self.retry_at:
            return Why(Hold.COMMIT_BACKOFF, f"{self.last_failure} (next try in "
                                            f"{self.retry_at - now:.1f}s)"), self.retry_at - now
        wait = self.limiter.wait_time()
        if wait > 0:  # the rate limit only paces commits; a push is never held by it
            return Why(Hold.RATE_LIMIT, f"{self.limiter.reason()}, {wait:.1f}s left"), wait
        # Asked at every tick: stop at the first committable path instead of sorting
        # thousands of held ones (a dirty start holds them all while a commit runs).
        if self.held and not any(path not in self.path_holds and not self.capped(path)
                                 for path in self.held):
            free = [path for path in self.held if path not in self.path_holds]
            if free:
                caps = [self.runaway.wait_time(path) for path in free]
                return Why(Hold.RUNAWAY, f"{len(caps)} path(s) committed "
                                         f"{self.runaway.limit} times within "
                                         f"{self.runaway.window:g}s"), min(caps)
            first = min(self.path_holds)
            why = self.path_holds[first]
            more = f" (and {len(self.path_holds) - 1} more held paths)" \
                if len(self.path_holds) > 1 else ""
            return Why(why.hold, f"{first}: {why.text}{more}"), \
                max(0.0, self.next_hold_retry - now)
        return None, 0.0

    def push_wait(self, now: float) -> tuple[Why | None, float]:
        """Why a pending push may not run now, and for how long (None when it may)."""
        hold = self.committer.push_hold
        if hold is not None:
            # a conflict with the remote, rewritten history or a push gate: until the refs
            # move (the person merged the remote, put history back, fetched) or the cap passes
            if self.push_hold_token != self.refs_token or now >= self.push_retry_at:
                return None, 0.0
            if hold.hold != Hold.PUSH_STOPPED:
                return hold, self.push_retry_at - now
        elif now >= self.push_retry_at:
            return None, 0.0
        left = f"(next {'check' if self.committer.push_conflict else 'try'} in " \
               f"{self.push_retry_at - now:.1f}s)"
        if self.committer.push_conflict:
            return Why(Hold.PUSH_STOPPED, f"{self.committer.push_conflict} {left}"), \
                self.push_retry_at - now
        return Why(Hold.PUSH_BACKOFF, f"{self.last_push_failure} {left}"), \
            self.push_retry_at - now

    def drain_batches(self) -> None:
        """Take every queued Batch, so a burst already on the socket becomes one commit."""
        if self.batches_in is None:
            return
        for _ in range(_DRAIN_ROUNDS):
            if not self.batches_in.poll(0):
                return
            self._dispatch(self.batches_in, self._inputs[self.batches_in])

    def tokens(self) -> tuple[tuple, tuple]:
        """(refs, refs and the user's index) as ``stat`` sees them: no git process."""
        git_dir = self.config.git_dir
        branch = self.committer.current_branch() or ""
        tracking = git_dir / "refs" / "remotes" / self.config.remote / branch
        # a release recorded or an allowlist edited may free held paths and a held push
        decided = self.guard.signatures() if self.guard is not None else None
        # so may the git config: a remote added, a signing key set
        configured = file_signature(os.path.join(common_dir(str(git_dir)), "config"))
        refs = (head_token(git_dir), file_signature(tracking) if branch else None, decided,
                configured)
        return refs, (refs, file_signature(self.committer.user_index))

    def watch_refs(self, now: float) -> None:
        """Notice HEAD, the branch, the upstream or the user's index moving (by stat, no
        git): a push may be due (the person's own commits), held paths may be free."""
        refs, holds = self.tokens()
        if refs != self.refs_token:
            self.refs_token = refs
            if self.config.remote:
                self.push_pending = True  # a push job finds out whether anything is ahead
        if holds != self.holds_token or now >= self.next_hold_retry:
            self.holds_token = holds
            self.next_hold_retry = now + HOLD_RETRY
            if self.path_holds:
                self.stats["hold_retries"] += 1
                self.path_holds.clear()

    # ----- acting ---------------------------------------------------------------------
    def on_tick(self, now: float) -> None:
        now = self.clock()  # the injectable clock, so handler tests control time
        self.watch_refs(now)
        if self.job is None:
            monotonic_now = time.monotonic()  # the gits' own clock, not the injectable one
            if self.committer.close_idle(monotonic_now):
                self.heap.released()
            if self.guard is not None:
                self.guard.close_idle(monotonic_now)
            self.start_work(now)
        else:
            self.write_waiting_objects()
        self.note_held_reason(self.current_reason(now))

    def write_waiting_objects(self) -> None:
        """While a commit runs, write the objects of a backlog waiting for the next one
        (writing thousands of loose objects is most of a large commit's time, and the
        running one is mostly pushing meanwhile).  Never for a few paths: a person's edit
        waits for no extra process."""
        if self._writing_ahead is not None and self._writing_ahead.is_alive():
            return
        waiting = [path for path in self.held
                   if path not in self.job.path_set and path not in self.written_ahead]
        if len(waiting) < WRITE_AHEAD_MIN:
            return
        waiting = waiting[:WRITE_AHEAD_MAX]
        self.written_ahead.update(dict.fromkeys(waiting))
        while len(self.written_ahead) > 4 * WRITE_AHEAD_MAX:
            self.written_ahead.pop(next(iter(self.written_ahead)))
        self.stats["objects_written_ahead"] += len(waiting)
        self._writing_ahead = threading.Thread(target=self.committer.write_objects,
                                               args=(waiting,), daemon=True,
                                               name="git-write-ahead")
        self._writing_ahead.start()

    def start_work(self, now: float) -> None:
        if not self.held and not self.push_pending \
                and not self.committer.index_refresh_pending:
            return
        if self.blocker(now)[0] is not None:
            return
        self.drain_batches()
        may_push = self.push_wait(now)[0] is None
        if self.held and self.commit_wait(now)[0] is None:
            # a person's edits beside an agent's backlog go in a quick commit of their own
            paths = quiet_areas_first(self.committable(), self.user_written)
            # each with its earliest observation: one unchanged since is not read again
            recheck = {path: self.held.get(path) for path in self.recheck.intersection(paths)}
            self.run_job(Job(paths=paths, recheck=recheck,
                             push=may_push, batch_ids=tuple(self.held_batches)))
        elif self.push_pending and may_push:
            self.run_job(Job(paths=[], push=True))
        elif self.committer.index_refresh_pending:
            self.run_job(Job(paths=[]))

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

    # ----- the worker thread ---------------------------------------------------------------
    def run_job(self, job: Job) -> None:
        """Start ``job`` in the worker thread (inline when the loop is not running)."""
        job.started, job.refs = self.clock(), self.refs_token
        self.job = job
        self.changed_during_job = set()
        self.stats["attempts" if job.paths else f"{job.kind}_jobs"] += 1
        if not self.offload:
            self._work(job)
            self._job_done()
            return
        self._thread = threading.Thread(target=self._work, args=(job,), daemon=True,
                                        name=f"git-{job.kind}")
        self._thread.start()

    def _work(self, job: Job) -> None:
        """The worker thread: only here does the committer run while a job is out."""
        try:
            if self.committer.index_refresh_pending:
                self.committer.refresh_user_index(attempts=0)  # one try; the rest later
            if job.paths:
                # attempts=0: a lock or race returns at once; the retry is scheduled by the
                # loop (which keeps serving control requests and heartbeats meanwhile).
                job.result = self.committer.commit(job.paths, push=job.push, attempts=0,
                                                   recheck=job.recheck)
            elif job.push:
                pushed, error = self.committer.push()
                job.result = CommitResult(pushed=pushed, error=error)
        except Exception as exc:  # reported on the loop, counted there
            job.failure = exc
        finally:
            self._finished.put(job)
            if self.offload and self._wake is not None:
                os.write(self._wake[1], b"j")

    def _job_done(self) -> None:
        """On the loop: take the finished job's outcome."""
        if self.offload:
            try:
                os.read(self._wake[0], 512)
            except BlockingIOError:
                self.stats["spurious_wakeups"] += 1
        while True:
            try:
                job = self._finished.get_nowait()
            except queue.Empty:
                return
            self.job = None
            if job.failure is not None:
                self._back_off(f"{type(job.failure).__name__}: {job.failure}")
            elif job.paths:
                self.after_commit(job, job.result)
            elif job.push:
                self.after_push_job(job, job.result)

    def after_commit(self, job: Job, result: CommitResult) -> None:
        self.stats["retries"] += result.retries
        if result.held or (result.error and not result.commit):
            # Nothing committed: keep every path held and try again after a back-off.
            self.stats["commit_failures_transient" if result.transient
                       else "commit_failures"] += 1
            self._back_off(result.held or result.error)
            self._report(job.batch_ids, result)
            return
        newly_held: dict[Why, list[str]] = {}
        for path, why in result.held_paths.items():
            if path in self.held and path not in self.changed_during_job:
                self.path_holds[path] = why
                self.stats["paths_held"] += 1
                if why.hold is Hold.CHANGED_WHILE_COMMITTED:
                    self._retry_rewritten(path)
                if self.logged_holds.get(path) != why:  # once per reason, not per retry
                    self.logged_holds[path] = why
                    newly_held.setdefault(why, []).append(path)
        for why, paths in newly_held.items():  # a line per reason: a failed signing holds all
            shown = paths[0] if len(paths) == 1 else \
                f"{len(paths)} paths ({', '.join(paths[:3])}{' ...' if len(paths) > 3 else ''})"
            self.log.warning("held %s: %s", shown, why.text)
        for path in [p for p in self.logged_holds if p not in self.held]:
            del self.logged_holds[path]
        _, holds = self.tokens()
        if result.held_paths and holds[1] == self.committer.index_basis:
            # Decided on the index as it is now (as read, or as this job's own commit left
            # it): only a later change may clear the reasons.
            self.holds_token = holds
        settled = [path for path in job.paths if path not in self.path_holds
                   and path not in self.changed_during_job]
        if result.commit:
            self.runaway.record(result.paths)
            if not job.push:
                self.push_pending = True  # pushed when the push back-off is over
        for path in settled:
            self.held.pop(path, None)
            self.recheck.discard(path)
            self.user_written.discard(path)
            self.rewritten_retries.pop(path, None)
        # The batches this attempt took are done with (a path still held is kept by path,
        # so a long hold never makes this list grow).
        batch_ids = job.batch_ids
        self.held_batches = [b for b in self.held_batches if b not in batch_ids]
        self.note_committed([path for path in job.paths if path not in self.path_holds],
                            result)
        self.failures = 0
        if result.commit:
            self.limiter.record()
            self.stats["commits"] += 1
            self.last_commit = {"commit": result.commit, "paths": len(result.paths),
                                "finished": time.time(), "pushed": result.pushed}
            shown = ", ".join(result.paths[:5]) + (
                f" and {len(result.paths) - 5} more" if len(result.paths) > 5 else "")
            self.log.info("committed %s in %.2fs: %s%s", result.commit[:10],
                          self.clock() - job.started, shown,
                          " (pushed)" if result.pushed else "")
            if job.push:
                self._after_push(result.pushed, result.error, job)
        self._report(batch_ids, result)

    def after_push_job(self, job: Job, result: CommitResult) -> None:
        if self.committer.last_push_sent or result.error:
            self.stats["push_retries"] += 1
        self._after_push(result.pushed, result.error, job)
        if self.committer.last_push_sent or result.error:
            self._report((), result)

    def _after_push(self, pushed: bool, error: str, job: Job) -> None:
        if pushed:
            if self.committer.last_push_sent:
                self.stats["pushes"] += 1
            # Refs that moved while the job ran (the person committed) need a look of
            # their own: the job may have seen HEAD before their commit.
            self.push_pending = self.refs_token != job.refs
            self.push_failures = 0
            self.push_retry_at = 0.0
            if self.push_problem_logged is not None:
                self.log.info("executor: pushing again")
                self.push_problem_logged = None
        elif self.config.remote:
            self.push_pending = True
            self._push_back_off(error, job.refs)

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

    def _push_back_off(self, why: str, refs: tuple | None) -> None:
        """Push back-off: 2, 4, 6... s (the seed's minimum) capped by push_backoff_max; a
        conflict with the remote, rewritten history or a push gate's refusal waits the whole
        cap, or until the refs move from ``refs``, those the failed job started with (the
        person may have merged the remote while it ran)."""
        self.push_failures += 1
        hold = self.committer.push_hold
        if hold is not None:
            self.stats["push_conflicts" if hold.hold == Hold.PUSH_STOPPED
                       else "push_holds"] += 1
            delay = self.config.push_backoff_max
            self.push_hold_token = refs
        else:
            delay = min(self.config.push_backoff_max, PUSH_BACKOFF_STEP * self.push_failures)
        self.push_retry_at = self.clock() + delay
        self.last_push_failure = why[:300]
        if hold is None or hold.hold == Hold.PUSH_STOPPED:
            self.record_error(why)
        self.stats["push_backoffs"] += 1
        # Said once, and again when the reason changes: a missing remote or a network down
        # for hours is not worth a warning at every retry.
        problem = hold if hold is not None else self.last_push_failure
        if problem != self.push_problem_logged:
            self.push_problem_logged = problem
            self.log.warning("executor: %s; next push in %.1fs", why, delay)
        else:
            self.log.debug("executor: %s; next push in %.1fs", why, delay)

    def _report(self, batch_ids, result: CommitResult) -> None:
        report = CommitReport(batch_ids=tuple(batch_ids)[-_REPORT_PATHS_LIMIT:],
                              paths=tuple(result.paths)[:_REPORT_PATHS_LIMIT],
                              commit=result.commit, pushed=result.pushed,
                              error=result.error or result.held, finished=time.time(),
                              held=tuple(sorted(self.held))[:_REPORT_PATHS_LIMIT])
        self.send(self.reports_out, report)

    def wakeup_in(self) -> float | None:
        if self.job is not None:
            return None  # the worker thread's pipe wakes the loop
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

    def shutdown(self) -> None:
        """A commit in progress is finished (within STOP_WAIT), never abandoned halfway."""
        thread = self._thread
        if thread is not None and thread.is_alive():
            self.log.info("executor: waiting for the running %s to finish", self.job.kind)
            thread.join(STOP_WAIT)
            if thread.is_alive():
                self.log.warning("executor: the %s is still running after %.0fs; stopping "
                                 "anyway (nothing is left half done: HEAD moves last)",
                                 self.job.kind, STOP_WAIT)
                return
        self.committer.close()
        self.committer.content.close()
        if self.guard is not None:
            self.guard.close()
        if self._wake is not None:
            for fd in self._wake:
                os.close(fd)
            self._wake = None

    # ----- status ---------------------------------------------------------------------
    def reason_fields(self) -> dict:
        """The hold as a value (``hold``: a Hold, None when nothing holds) and as text.  A
        status asked in the round that brought paths, before its tick, would say "nothing
        held" beside them: the reason is then looked at now.  Paths sent while a commit
        runs wait for it (never an empty reason beside held paths)."""
        reason = self.held_reason
        if self.held and (reason is None or reason.hold == Hold.NOTHING):
            if self.job is None:
                reason = self.current_reason(self.clock())
            elif not self.job.path_set.issuperset(self.held):
                reason = Why(Hold.COMMITTING)  # the rate limit counts it once it is made
        return {"hold": None if reason is None else reason.hold,
                "held_reason": "" if reason is None else reason.text}

    def path_reason(self, path: str) -> dict:
        """Why one held path is not committed: its own reason, else the executor's."""
        why = self.path_holds.get(path)
        if why is not None:
            return {"hold": why.hold, "held_reason": why.text}
        if self.job is not None and path in self.job.path_set:
            return {"hold": None, "held_reason": "being committed now"}
        fields = self.reason_fields()
        if fields["hold"] in (None, Hold.NOTHING, Hold.COMMITTING):
            return {"hold": None, "held_reason": "waiting for the next commit"}
        return fields

    # ----- operations (actorctl pause / resume / explain / retry) ----------------------
    def pause(self) -> dict:
        self.paused = True
        self.held_reason = self.current_reason(self.clock())
        self.log.info("executor: paused by actorctl; %d paths held", len(self.held))
        return {"paused": True, "held": len(self.held)}

    def resume(self) -> dict:
        self.paused = False
        self.log.info("executor: resumed by actorctl; %d paths held", len(self.held))
        return {"paused": False, "held": len(self.held)}

    def retry_held(self, paths: list | None = None) -> dict:
        """Try paths held with a reason of their own again now (all of them by default),
        e.g. after a release was recorded."""
        if paths is not None and (not isinstance(paths, (list, tuple))
                                  or not all(isinstance(p, str) for p in paths)):
            raise ValueError("retry takes paths: a list of strings")
        chosen = list(self.path_holds) if paths is None else \
            [path for path in paths if path in self.path_holds]
        for path in chosen:
            del self.path_holds[path]
        return {"retried": len(chosen)}

    def note_held_reason(self, reason: Why | None) -> None:
        """Keep the reason, counting each time the rate limit starts holding commits."""
        if (reason is not None and reason.hold == Hold.RATE_LIMIT
                and (self.held_reason is None or self.held_reason.hold != Hold.RATE_LIMIT)):
            self.stats["rate_limit_waits"] += 1
        self.held_reason = reason

    def note_committed(self, paths: list[str], result: CommitResult) -> None:
        committed, left_alone = set(result.paths), set(result.left_alone)
        finished = time.time()
        for path in paths:
            if path not in committed and path not in left_alone \
                    and (self.committed.get(path) or {}).get("commit"):
                continue  # unchanged since its last commit: that commit still holds it
            note = ("" if path in committed else
                    "not committed: your index tells git to leave its work-tree copy alone "
                    "(skip-worktree or assume-unchanged)" if path in left_alone else
                    "no difference from HEAD: nothing to commit")
            self.committed[path] = {"commit": result.commit if path in committed else None,
                                    "finished": finished, "note": note}
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
            held = path in self.held
            if record.get("commit"):
                # Pushes carry every earlier commit, so no pending push means it is pushed.
                record["pushed"] = (not self.push_pending) if self.config.remote else None
            found[path] = {**record, "held": held,
                           **(self.path_reason(path) if held else {"hold": None,
                                                                  "held_reason": ""})}
        return {"paths": found, "push_pending": self.push_pending, "paused": self.paused,
                **self.push_fields()}

    def push_fields(self) -> dict:
        """Why a push waits, as a value and as text (None / '' when it does not)."""
        reason = self.push_wait(self.clock())[0] if self.push_pending else None
        return {"push_hold": None if reason is None else reason.hold,
                "push_reason": "" if reason is None else reason.text}

    def held_paths(self, limit: int = HELD_LISTED) -> dict:
        paths = sorted(self.held)[:max(0, int(limit))]
        return {"total": len(self.held), "paths": paths,
                "reasons": {path: self.path_reason(path) for path in paths},
                **self.reason_fields()}

    def queue_depth(self) -> int:
        return len(self.held)

    def extra_status(self) -> dict:
        now = self.clock()
        own = {}
        for why in self.path_holds.values():
            own[why.hold] = own.get(why.hold, 0) + 1
        busy = None if self.job is None else {
            "kind": self.job.kind, "paths": len(self.job.paths),
            "seconds": round(now - self.job.started, 1)}
        return {"held": len(self.held), **self.reason_fields(),
                "path_holds": own, "busy": busy,
                "held_paths": [{"path": path, "hold": why.hold, "held_reason": why.text}
                               for path, why in sorted(self.path_holds.items())[:50]],
                "guard": None if self.guard is None else self.guard.status(),
                "commits": self.stats["commits"], "pushes": self.stats["pushes"],
                "retries": self.stats["retries"], "push_pending": self.push_pending,
                **self.push_fields(),
                "attempts": self.stats["attempts"], "last_commit": self.last_commit,
                "health_ok": bool(self.health and self.health.ok),
                "paused": self.paused, "rate_limit_waits": self.stats["rate_limit_waits"],
                "push_retries": self.stats["push_retries"], "backoffs": self.stats["backoffs"],
                "objects_written_ahead": self.stats["objects_written_ahead"],
                "rechecked_dropped": self.committer.rechecked_dropped,
                "left_alone_dropped": self.committer.left_alone_dropped,
                "names_refused": self.committer.names_refused,
                "refused_by_rule": self.committer.refused_by_rule,
                **self.recovery_status()}

    def recovery_status(self) -> dict:
        """Push and commit recovery state: back-offs, a conflict with the remote, runaways."""
        now = self.clock()
        return {"push_conflict": self.committer.push_conflict,
                "history_rewritten": self.committer.history_rewritten,
                "push_backoff": round(max(0.0, self.push_retry_at - now), 1),
                "last_push_failure": self.last_push_failure,
                "commit_backoff": round(max(0.0, self.retry_at - now), 1),
                "last_commit_failure": self.last_failure,
                "integrations": self.committer.integrations,
                "index_refresh_pending": len(self.committer.index_refresh_pending),
                "unfinished_rollback": self.committer.unfinished_rollback,
                "runaways": self.runaway.runaways()}


if __name__ == "__main__":
    raise SystemExit(main(Executor))
