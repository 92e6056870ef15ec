"""Health monitor: decides whether committing is safe now, and gathers every heartbeat.

Sockets:
  - PUB   bind  endpoints.health     out: HealthStatus (to the executor and anyone else)
  - PULL  bind  endpoints.heartbeat  in:  Heartbeat (from every actor, via the Actor base)

It checks every ``config.health_interval`` seconds and publishes a HealthStatus at once
when what subscribers act on changed (the verdict; an actor's pid, state or liveness; lost
changes), else up to ``IDLE_FACTOR`` intervals apart, saying when the next is due (the
executor holds a verdict for three of those).  Not ok when free disk on the workspace's
file system is under ``config.min_free_mb``, when a git operation is in progress in
``config.git_dir`` (merge, rebase, am, cherry-pick, revert, bisect) or HEAD is detached.
The checks are plain stat calls; they run at once when an entry of the git directory
changes (inotify: an operation starting or ending, HEAD rewritten, a lock made) or an
actor appears or restarts, and otherwise every ``health_interval`` (free disk, a silent
actor), stretched like the publishing while the verdict stays the same, so an idle
workspace costs a wakeup every ten intervals.  Without inotify they run every
``POLL_CHECK_EVERY`` seconds.
Every ``config.metrics_interval`` seconds it writes ``config.metrics_file`` (common.metrics)
from the heartbeats plus psutil, and it counts restarts (an actor beating with a new pid).
Also (common.integrity): ``git fsck --connectivity-only`` every ``fsck_interval`` in a
background thread (failure: not ok until a run passes), a stale ``.git/index.lock``
(not ok; removed only if ``remove_stale_locks``), and autonomous processes restarting in a
loop (status only).  The ``actors`` map (actor -> pid) it publishes lets the watcher
reconcile whenever any actor restarts.
"""
from __future__ import annotations

import dataclasses
import os
import time

import zmq
from inotify_simple import INotify
from inotify_simple import flags as inotify_flags

from gitsieve.common.actor import metrics
from gitsieve.common.actor.base import Actor, main
from gitsieve.common.actor.stage import rested
from gitsieve.common.git import integrity
from gitsieve.common.git.gateway import Git
from gitsieve.common.git.head import head_is_born
from gitsieve.common.judge.health import HeartbeatBook, RestartLoopDetector
from gitsieve.common.protocol.messages import HealthStatus, Heartbeat

POLL_CHECK_EVERY = 0.25  # seconds between checks when the git dir cannot be watched
# What, in the git directory itself, can change the verdict (its subdirectories cannot:
# markers and HEAD are its direct entries).
GIT_DIR_EVENTS = (inotify_flags.CREATE | inotify_flags.DELETE | inotify_flags.MOVED_TO
                  | inotify_flags.MOVED_FROM | inotify_flags.CLOSE_WRITE)
STALE_LOCK_CHECK_EVERY = 1.0  # seconds; the check lists processes when a lock is old
AUTONOMOUS_SCAN_EVERY = 5.0  # seconds between scans for autonomous processes starting
ACTOR_SILENT_AFTER = 5  # heartbeat intervals without a beat before an actor counts as silent
_FORGET_ACTOR_AFTER = 300.0  # seconds; a long-gone actor (e.g. a scaled-down worker)

# (marker in the git dir, operation name); the first present one names the operation.
OPERATION_MARKERS = (
    ("rebase-merge", "rebase"),
    ("MERGE_HEAD", "merge"),
    ("CHERRY_PICK_HEAD", "cherry-pick"),
    ("REVERT_HEAD", "revert"),
    ("BISECT_LOG", "bisect"),
)


def published_content(status: HealthStatus) -> tuple:
    """What subscribers act on in a verdict: ok and reasons (the executor); each actor's
    pid, state, liveness and lost changes (the watcher reconciles when they change).  Not
    the times and free space that differ at every check."""
    return (status.ok, status.reasons, status.operation,
            tuple(sorted((actor_id, info.get("pid"), info.get("state"), info.get("alive"),
                          info.get("changes_lost"))
                         for actor_id, info in status.actors.items())))


class Health(Actor):
    name = "health"

    def __init__(self, config, instance=None):
        super().__init__(config, instance)
        self.verdict: HealthStatus | None = None
        self.book = HeartbeatBook(_FORGET_ACTOR_AFTER)
        self.actors = self.book.actors
        self.publisher = None
        self._next_check = 0.0
        self._next_publish = 0.0
        self._published: tuple | None = None  # what the last published verdict said
        self._quiet_publishes = 0  # verdicts in a row published unchanged
        self.git_dir_events: INotify | None = None  # set up in setup()
        self.restarts: dict[str, int] = {}  # actor id -> times its pid changed (restarted)
        self.resources = metrics.ResourceSampler()
        self._next_metrics = 0.0
        self.init_recovery_checks()

    def setup(self) -> None:
        self.publisher = self.bind(zmq.PUB, self.config.endpoints.health, hwm=100)
        heartbeats = self.bind(zmq.PULL, self.config.endpoints.heartbeat, hwm=10_000)
        self.add_input(heartbeats, {Heartbeat: self.on_heartbeat})
        try:
            events = INotify(inheritable=False, nonblocking=True)
        except OSError as exc:
            self.log.warning("cannot watch %s (%s): checking every %gs instead",
                             self.config.git_dir, exc, POLL_CHECK_EVERY)
            return
        try:
            events.add_watch(self.config.git_dir, GIT_DIR_EVENTS)
        except OSError as exc:  # e.g. fs.inotify.max_user_watches reached
            events.close()
            self.log.warning("cannot watch %s (%s): checking every %gs instead",
                             self.config.git_dir, exc, POLL_CHECK_EVERY)
            return
        self.git_dir_events = events
        self.watch_fd(events.fileno(), self.on_git_dir_changed)

    def on_git_dir_changed(self) -> None:
        self.git_dir_events.read(timeout=0)
        self._next_check = 0.0  # this round's tick checks

    # ----- inputs ---------------------------------------------------------------------
    def on_heartbeat(self, beat: Heartbeat) -> None:
        known = self.actors.get(beat.actor)
        problem = self.book.note(beat.actor, beat.pid, beat.sent, beat.state, beat.stats,
                                 beat.interval)
        if problem:  # a forged or broken beat: counted like a bad frame, never fatal
            self.stats["bad_frames"] += 1
            self.stats["beats_refused"] += 1
            if self.stats["beats_refused"] == 1 or self.stats["beats_refused"] % 1000 == 0:
                self.log.warning("%s: refused heartbeat (%d so far): %s", self.actor_id,
                                 self.stats["beats_refused"], problem)
            return
        self.note_restart(beat, known)
        if known is None or known["pid"] != beat.pid:
            self._next_check = 0.0  # a new or restarted actor is published at once

    # ----- checks ---------------------------------------------------------------------
    def git_operation(self) -> str:
        """The git operation in progress ('' when none)."""
        git_dir = self.config.git_dir
        for marker, operation in OPERATION_MARKERS:
            if os.path.exists(git_dir / marker):
                return operation
        if os.path.isdir(git_dir / "rebase-apply"):
            # `git am` and the apply backend of rebase share this directory.
            return "am" if os.path.exists(git_dir / "rebase-apply" / "applying") else "rebase"
        return ""

    def head_detached(self) -> bool:
        try:
            with open(self.config.git_dir / "HEAD", encoding="utf-8", errors="replace") as fh:
                return not fh.read(4096).startswith("ref:")
        except OSError as exc:
            self.record_error(f"cannot read HEAD: {exc}")
            return True

    def never_checked_out(self) -> bool:
        """No index while HEAD names a commit."""
        if os.path.exists(self.config.git_dir / "index"):
            return False
        try:
            return head_is_born(self.config.git_dir)
        except OSError as exc:
            self.record_error(f"cannot read HEAD: {exc}")
            return True

    def free_mb(self) -> float:
        stat = os.statvfs(self.config.workspace)
        return stat.f_bavail * stat.f_frsize / (1024 * 1024)

    def actor_table(self, with_stats: bool = False) -> dict:
        """actor -> pid, state, liveness (and each one's last stats, for the metrics file;
        the published HealthStatus carries no stats)."""
        now = time.time()
        beat = self.config.heartbeat_interval
        self.book.forget_silent()
        for gone in set(self.restarts) - set(self.actors):
            del self.restarts[gone]
        # An idle actor beats rarely and says when its next beat is due at the latest.
        return {actor_id: {**{k: v for k, v in info.items() if with_stats or k != "stats"},
                           "alive": now - info["received"] <= ACTOR_SILENT_AFTER
                           * max(beat, info.get("interval", 0.0))}
                for actor_id, info in self.actors.items()}

    def evaluate(self) -> HealthStatus:
        reasons = []
        try:
            free = self.free_mb()
        except OSError as exc:
            free = 0.0
            reasons.append(f"cannot check free disk: {exc}")
        if free < self.config.min_free_mb and not reasons:
            reasons.append(f"free disk {free:.0f} MB under {self.config.min_free_mb:g} MB")
        operation = self.git_operation()
        if operation:
            reasons.append(f"git {operation} in progress")
        if self.head_detached():
            reasons.append("HEAD is detached")
            operation = operation or "detached HEAD"
        if self.never_checked_out():
            # git status then lists every committed file as a staged deletion
            reasons.append("the work tree was never checked out (no index, as after git "
                           "clone --no-checkout): run git checkout, or git read-tree HEAD")
            operation = operation or "no checkout"
        reasons += self.recovery_reasons()
        return HealthStatus(ok=not reasons, reasons=tuple(reasons), free_mb=round(free, 1),
                            operation=operation, checked=time.time(),
                            actors=self.actor_table())

    # ----- operations: restarts and the metrics file ---------------------------------
    def note_restart(self, beat: Heartbeat, known: dict | None) -> None:
        """A known actor beating with a new pid was restarted (by the runner or
        supervisord): count it, whichever process manager did it."""
        if known is not None and known["pid"] != beat.pid:
            self.restarts[beat.actor] = self.restarts.get(beat.actor, 0) + 1
            self.log.info("%s restarted (pid %s -> %s)", beat.actor, known["pid"], beat.pid)

    def maybe_write_metrics(self, now: float) -> None:
        interval = self.config.metrics_interval
        if interval <= 0 or now < self._next_metrics:
            return
        self._next_metrics = now + interval
        table = {actor_id: {**info, "restarts": self.restarts.get(actor_id, 0)}
                 for actor_id, info in self.actor_table(with_stats=True).items()}
        try:
            metrics.write_atomic(self.config.metrics_file,
                                 metrics.build(str(self.config.workspace), table,
                                               self.resources))
        except OSError as exc:
            self.record_error(f"metrics file: {exc}")
            self.log.error("cannot write %s: %s", self.config.metrics_file, exc)
            return
        self.stats["metrics_written"] += 1

    # ----- actor hooks ----------------------------------------------------------------
    def on_tick(self, now: float) -> None:
        self.maybe_write_metrics(now)
        self.run_recovery_checks(now)
        if now < self._next_check:
            return
        status = self.evaluate()
        previous = self.verdict
        if previous is None or (previous.ok, previous.reasons) != (status.ok, status.reasons):
            self.log.info("health: %s", "ok" if status.ok else "; ".join(status.reasons))
        self.verdict = status
        said = published_content(status)
        changed = said != self._published
        if changed or now >= self._next_publish:
            # Unchanged, the verdict is published up to IDLE_FACTOR times less often and
            # says when the next is due: an idle workspace wakes no subscriber every check.
            # Any change (the verdict, an actor's pid or liveness, lost changes) goes out
            # at the check that sees it.
            self._quiet_publishes = 0 if changed else self._quiet_publishes + 1
            interval = rested(self.config.health_interval, self._quiet_publishes)
            self._next_publish = now + interval
            self._published = said
            if self.send(self.publisher, dataclasses.replace(status, interval=interval)):
                self.stats["published"] += 1
        every = self.config.health_interval
        # Watched, the git dir wakes a check at once, and so does a new or restarted actor:
        # what is left to the clock (free disk, a silent actor) is checked less often while
        # the verdict stays the same, as it is published.
        self._next_check = now + (rested(every, self._quiet_publishes)
                                  if self.git_dir_events is not None
                                  else min(POLL_CHECK_EVERY, every))

    def wakeup_in(self) -> float | None:
        return max(0.0, self._next_check - time.monotonic())

    def extra_status(self) -> dict:
        if self.verdict is None:
            return {"health": None, "beats_refused": dict(self.book.refused)}
        verdict = self.verdict
        return {"health": {"ok": verdict.ok, "reasons": list(verdict.reasons),
                           "free_mb": verdict.free_mb, "operation": verdict.operation,
                           "checked": verdict.checked},
                "actors_seen": sorted(self.actors), "restarts": dict(self.restarts),
                "beats_refused": dict(self.book.refused),
                **self.recovery_status()}

    # ----- recovery checks: fsck, stale index.lock, autonomous restart loops ----------
    def init_recovery_checks(self) -> None:
        self.fsck = integrity.FsckRunner(Git(self.config.workspace), self.config.fsck_interval)
        # A scan of every process on the machine: every AUTONOMOUS_SCAN_EVERY seconds, not
        # every second (it was most of an idle gitsieve's CPU).
        self.autonomous = RestartLoopDetector(
            self.config.autonomous_processes, self.config.autonomous_restart_limit,
            self.config.autonomous_restart_window, sample_every=AUTONOMOUS_SCAN_EVERY,
            workspace=self.config.workspace)
        self.stale_lock = ""
        self._next_lock_check = 0.0
        self._looping_logged = ""

    def run_recovery_checks(self, now: float) -> None:
        self.fsck.maybe_start(now)
        self.autonomous.sample(now)
        looping = self.autonomous.looping()
        if looping and not self._looping_logged:
            self.log.warning("%s", looping)
        self._looping_logged = looping
        if now >= self._next_lock_check:
            self._next_lock_check = now + STALE_LOCK_CHECK_EVERY
            self.stale_lock, removed = integrity.stale_index_lock(
                self.config.workspace, self.config.git_dir, self.config.stale_lock_age,
                self.config.remove_stale_locks)
            if removed:
                self.stats["stale_locks_removed"] += 1

    def recovery_reasons(self) -> list[str]:
        """Reasons to hold commits: a failed fsck, a stale index.lock.  An autonomous
        restart loop is reported in status only: it never gates the user's commits."""
        return [reason for reason in (self.fsck.failure(), self.stale_lock) if reason]

    def recovery_status(self) -> dict:
        return {"fsck": self.fsck.status(), "stale_index_lock": self.stale_lock,
                "stale_locks_removed": self.stats["stale_locks_removed"],
                "autonomous": self.autonomous.status()}

    def shutdown(self) -> None:
        self.fsck.stop()
        if self.git_dir_events is not None:
            self.git_dir_events.close()


if __name__ == "__main__":
    raise SystemExit(main(Health))
