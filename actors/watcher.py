"""Watcher: turns inotify events in the workspace into Change messages for layer 1.

Sockets:
  - PUSH  connect  endpoints.stage_in("l1")   Change out (to the router's l1 stage)
  - SUB   connect  endpoints.health           HealthStatus in (its actors map: id -> pid)
  - (plus the inotify file descriptor, watched in the poll loop)
Messages in: HealthStatus.  Messages out: Change (source "inotify" or "reconcile").

Every directory of the workspace is watched except ``.git`` (at any depth) and the runtime
directory.  Close-write is the main signal; MODIFY/ATTRIB are reported at most once per
path per ``config.modify_interval`` (with a trailing report), so a file appended forever
without being closed is still seen.  Renames are paired by cookie within one read.  A
periodic reconcile against ``git status`` (and a full rescan after a queue overflow)
catches whatever inotify missed.  ZeroMQ drops what was in flight to a process that dies,
so whenever the health monitor's actors map shows an actor restarted (new pid) or newly
appeared, the watcher reconciles again (``RESTART_RECONCILE_DELAY`` later, coalescing a
burst of restarts into one): the file system and ``git status`` are the source of truth.
"""
from __future__ import annotations

import errno
import os
import time
from collections import deque

import inotify_simple
import zmq
from inotify_simple import flags

from gitsieve.common.actor.base import Actor, main
from gitsieve.common.git.gateway import Git, GitError
from gitsieve.common.judge.pattern import observe, urgent
from gitsieve.common.judge.rules import RuleCache
from gitsieve.common.protocol import messages
from gitsieve.common.protocol.messages import DELETE, WRITE, HealthStatus
from gitsieve.common.protocol.states import ChangeKind

DIR_MASK = (flags.CLOSE_WRITE | flags.MODIFY | flags.ATTRIB | flags.CREATE | flags.DELETE
            | flags.MOVED_FROM | flags.MOVED_TO | flags.DELETE_SELF | flags.MOVE_SELF
            | flags.DONT_FOLLOW | flags.EXCL_UNLINK)
_UNSENT_RETRY = 0.02  # seconds between attempts to flush Changes the socket refused
# Seconds between seeing an actor restart and reconciling: restarts in a burst (a runner
# restarting several actors) coalesce into one reconcile.
RESTART_RECONCILE_DELAY = 0.5


class Watcher(Actor):
    name = "watcher"
    control_commands = {"reconcile": "reconcile_now"}
    progress_every = 1.0  # seconds between progress lines while watching a large tree

    def __init__(self, config, instance=None):
        super().__init__(config, instance)
        self.root = str(config.workspace)
        self.git = Git(config.workspace)
        self.epoch = self.started
        self.seq = 0
        self.out: zmq.Socket | None = None
        self.unsent: deque[list[bytes]] = deque()
        self.rules = RuleCache(config.patterns_file, workspace=config.workspace)
        self.excluded_prefix = self._runtime_prefix()
        self.wd_to_path: dict[int, str] = {}
        self.path_to_wd: dict[str, int] = {}
        self.last_report: dict[str, float] = {}   # path -> monotonic time of last report
        self.trailing: dict[str, float] = {}      # path -> when a held-back MODIFY is due
        self.watch_limit_logged = False
        self.inotify = inotify_simple.INotify()
        self.next_reconcile: float | None = None
        # reconcile after any actor restarts: the health monitor's actors map
        self.actor_pids: dict[str, int] = {}
        self.actor_alive: dict[str, bool] = {}
        self.health_seen = False
        self.restart_reconcile_at: float | None = None
        self.restarts_seen: deque[str] = deque(maxlen=20)  # recent, for status

    def setup(self) -> None:
        self.out = self.connect(zmq.PUSH, self.config.endpoints.stage_in("l1"))
        health = self.connect(zmq.SUB, self.config.endpoints.health, hwm=100)
        self.add_input(health, {HealthStatus: self.on_health})
        self.watch_fd(self.inotify.fileno(), self._read_events)
        self._watch_tree("")
        self.log.info("watching %d directories under %s", len(self.wd_to_path), self.root)
        self.reconcile()
        interval = self.config.reconcile_interval
        self.next_reconcile = time.monotonic() + interval if interval > 0 else None

    def _runtime_prefix(self) -> str | None:
        """The runtime dir relative to the workspace, if it lies inside (and outside .git)."""
        runtime = os.path.realpath(self.config.runtime_dir)
        root = os.path.realpath(self.root)
        if runtime == root or not runtime.startswith(root + os.sep):
            return None
        return os.path.relpath(runtime, root).replace(os.sep, "/")

    # ----- path helpers ---------------------------------------------------------------
    def excluded(self, rel: str) -> bool:
        if ".git" in rel.split("/"):
            return True
        prefix = self.excluded_prefix
        return prefix is not None and (rel == prefix or rel.startswith(prefix + "/"))

    def _abs(self, rel: str) -> str:
        return os.path.join(self.root, rel) if rel else self.root

    @staticmethod
    def _join(parent: str, name: str) -> str:
        return f"{parent}/{name}" if parent else name

    # ----- watches --------------------------------------------------------------------
    def _add_watch(self, rel: str) -> bool:
        try:
            wd = self.inotify.add_watch(self._abs(rel), DIR_MASK)
        except OSError as exc:
            # ENOENT: the directory went away meanwhile (its events say so); ENOSPC: the
            # user's watch limit, said once since every further directory fails the same.
            if exc.errno == errno.ENOSPC and not self.watch_limit_logged:
                self.watch_limit_logged = True
                self.log.error("inotify watch limit reached (fs.inotify.max_user_watches); "
                               "changes under some directories rely on reconcile")
            self.stats["watch_failures"] += 1
            return False
        old = self.wd_to_path.get(wd)
        if old is not None and old != rel and self.path_to_wd.get(old) == wd:
            del self.path_to_wd[old]
        self.wd_to_path[wd] = rel
        self.path_to_wd[rel] = wd
        return True

    def _watch_tree(self, rel: str) -> list[str]:
        """Watch ``rel`` and every directory below it; return the files found there."""
        files: list[str] = []
        if self.excluded(rel):
            return files
        pending = [rel]
        next_progress = time.monotonic() + self.progress_every
        while pending:
            current = pending.pop()
            if not self._add_watch(current):
                continue
            next_progress = self._log_scan_progress(next_progress, len(pending))
            try:
                entries = list(os.scandir(self._abs(current)))
            except OSError as exc:  # vanished or unreadable: nothing to report there
                self.stats["scan_failures"] += 1
                self.log.debug("cannot list %s: %s", current, exc)
                continue
            for entry in entries:
                child = self._join(current, entry.name)
                if self.excluded(child):
                    continue
                try:
                    is_dir = entry.is_dir(follow_symlinks=False)
                except OSError:
                    is_dir = False  # raced with removal; report it and let L1 sort it out
                if is_dir:
                    pending.append(child)
                else:
                    files.append(child)
        return files

    def _subtree(self, rel: str) -> list[str]:
        """Watched directory paths equal to or below ``rel``."""
        if rel == "":
            return list(self.path_to_wd)
        prefix = rel + "/"
        return [p for p in self.path_to_wd if p == rel or p.startswith(prefix)]

    def _unwatch_tree(self, rel: str) -> None:
        for path in self._subtree(rel):
            wd = self.path_to_wd.pop(path)
            self.wd_to_path.pop(wd, None)
            try:
                self.inotify.rm_watch(wd)
            except OSError:
                # The kernel already dropped it (directory deleted); IN_IGNORED follows.
                self.stats["rm_watch_gone"] += 1

    def _rename_tree(self, old: str, new: str) -> None:
        old_prefix = old + "/"
        for path in self._subtree(old):
            wd = self.path_to_wd.pop(path)
            moved = new + path[len(old):] if path != old else new
            self.wd_to_path[wd] = moved
            self.path_to_wd[moved] = wd
        # Forget throttling state of the old names; new names start fresh.
        for table in (self.last_report, self.trailing):
            for path in [p for p in table if p.startswith(old_prefix)]:
                del table[path]

    def _log_scan_progress(self, next_progress: float, queued: int) -> float:
        """Log how far a long scan got, at most once per ``progress_every``; return when
        the next line is due."""
        now = time.monotonic()
        if now < next_progress:
            return next_progress
        self.stats["scan_progress_lines"] += 1
        self.log.info("adding watches: %d directories so far, %d queued",
                      len(self.wd_to_path), queued)
        return now + self.progress_every

    def reconcile_now(self) -> dict:
        """Control command (`actorctl flush`): report every dirty path now.  Every Change
        this sends is ordered after ``(epoch, seq_before)``."""
        seq_before = self.seq
        self.reconcile()
        self._flush()
        return {"epoch": self.epoch, "seq_before": seq_before, "seq_after": self.seq,
                "unsent": len(self.unsent)}

    def rescan(self) -> None:
        """Rebuild every watch from a fresh walk (after a queue overflow)."""
        before = dict(self.wd_to_path)
        self.wd_to_path.clear()
        self.path_to_wd.clear()
        self._watch_tree("")
        for wd in set(before) - set(self.wd_to_path):
            try:
                self.inotify.rm_watch(wd)
            except OSError:
                self.stats["rm_watch_gone"] += 1  # directory gone; kernel dropped it
        self.stats["rescans"] += 1

    def _tracked_under(self, rel: str) -> list[str]:
        try:
            return self.git.tracked_under(rel)
        except GitError as exc:
            self.record_error(f"ls-files {rel}: {exc}")
            self.log.error("cannot list tracked files under %s: %s", rel, exc)
            return []

    # ----- output ---------------------------------------------------------------------
    def emit(self, path: str, kind: ChangeKind, observed: float, source: str = "inotify") -> None:
        if self.excluded(path):
            return
        self.seq += 1
        change = observe(path, kind, self.seq, self.epoch, observed, self.rules, source)
        frames = messages.stage_frames(change, priority=urgent(change))
        self.last_report[path] = time.monotonic()
        self.trailing.pop(path, None)
        self.stats["changes_sent"] += 1
        self.stats[f"changes_{source}"] += 1
        self.unsent.append(frames)
        self._flush()

    def _flush(self) -> None:
        while self.unsent:
            try:
                self.out.send_multipart(self.unsent[0], zmq.NOBLOCK)
            except zmq.Again:  # high-water mark reached; retried from on_tick
                return
            self.unsent.popleft()
            self.stats["messages_out"] += 1

    def reconcile(self) -> None:
        """Report every path git sees as differing from HEAD (or untracked)."""
        try:
            paths = self.git.dirty_paths()
        except GitError as exc:
            self.record_error(f"reconcile: {exc}")
            self.log.error("reconcile failed: %s", exc)
            return
        observed = time.time()
        for path in paths:
            if path.endswith("/"):
                # A nested repository shows as one untracked directory; not a file to commit.
                self.stats["reconcile_skipped_dirs"] += 1
                continue
            kind = WRITE if os.path.lexists(self._abs(path)) else DELETE
            self.emit(path, kind, observed, source="reconcile")
        self.stats["reconciles"] += 1

    # ----- inotify --------------------------------------------------------------------
    def _read_events(self) -> None:
        try:
            events = self.inotify.read(timeout=0)
        except OSError as exc:
            self.record_error(f"inotify read: {exc}")
            self.log.error("inotify read failed: %s", exc)
            return
        if not events:
            return
        observed = time.time()
        self.stats["events"] += len(events)
        moved_from = {e.cookie: e for e in events if e.mask & flags.MOVED_FROM}
        moved_to = {e.cookie for e in events if e.mask & flags.MOVED_TO}
        redundant = self._redundant_events(events)
        overflow = False
        for index, event in enumerate(events):
            if event.mask & flags.Q_OVERFLOW:
                overflow = True
                continue
            if event.mask & flags.IGNORED:
                self._drop_wd(event.wd)
                continue
            parent = self.wd_to_path.get(event.wd)
            if parent is None:
                self.stats["events_unknown_wd"] += 1  # from a watch removed in this batch
                continue
            if not event.name:
                self._self_event(event, parent)
                continue
            path = self._join(parent, event.name)
            if event.mask & flags.ISDIR:
                self._dir_event(event, path, moved_from, moved_to, observed)
            elif index in redundant:
                self.stats["events_coalesced"] += 1
            else:
                self._file_event(event, path, observed)
        if overflow:
            self.stats["overflows"] += 1
            self.log.warning("inotify queue overflowed; rescanning the workspace and "
                             "reconciling with git status")
            self.rescan()
            self.reconcile()

    @staticmethod
    def _redundant_events(events) -> set[int]:
        """Indexes of file CREATE/MODIFY/ATTRIB events that a later close-write of the same
        name in this batch reports anyway (no delete or rename of the name in between)."""
        redundant: set[int] = set()
        closes_later: set[tuple[int, str]] = set()
        touch = flags.CREATE | flags.MODIFY | flags.ATTRIB
        for index in range(len(events) - 1, -1, -1):
            event = events[index]
            if event.mask & flags.ISDIR or not event.name:
                continue
            key = (event.wd, event.name)
            if event.mask & flags.CLOSE_WRITE:
                closes_later.add(key)
            elif event.mask & (flags.DELETE | flags.MOVED_FROM | flags.MOVED_TO):
                closes_later.discard(key)
            elif event.mask & touch and key in closes_later:
                redundant.add(index)
        return redundant

    def _drop_wd(self, wd: int) -> None:
        path = self.wd_to_path.pop(wd, None)
        if path is not None and self.path_to_wd.get(path) == wd:
            del self.path_to_wd[path]

    def _self_event(self, event, path: str) -> None:
        """DELETE_SELF/MOVE_SELF on a watched dir (others arrive via the parent's events)."""
        if path == "" and event.mask & (flags.DELETE_SELF | flags.MOVE_SELF):
            self.record_error("workspace directory deleted or moved")
            self.log.error("the workspace directory itself was deleted or moved")

    def _file_event(self, event, path: str, observed: float) -> None:
        mask = event.mask
        if mask & (flags.DELETE | flags.MOVED_FROM):
            self.emit(path, DELETE, observed)
        elif mask & (flags.CLOSE_WRITE | flags.CREATE | flags.MOVED_TO):
            self.emit(path, WRITE, observed)
        elif mask & (flags.MODIFY | flags.ATTRIB):
            now = time.monotonic()
            due = self.last_report.get(path, float("-inf")) + self.config.modify_interval
            if now >= due:
                self.emit(path, WRITE, observed)
            else:
                self.trailing[path] = due

    def _dir_event(self, event, path: str, moved_from: dict, moved_to: set,
                   observed: float) -> None:
        mask = event.mask
        if mask & flags.CREATE:
            for file in self._watch_tree(path):
                self.emit(file, WRITE, observed)
        elif mask & flags.MOVED_TO:
            partner = moved_from.get(event.cookie)
            old = None
            if partner is not None:
                old_parent = self.wd_to_path.get(partner.wd)
                old = self._join(old_parent, partner.name) if old_parent is not None else None
            if old is not None and not self.excluded(old) and old in self.path_to_wd:
                # Renamed inside the workspace: the watches travel with the directory.
                if self.excluded(path):
                    self._unwatch_tree(old)
                else:
                    self._rename_tree(old, path)
                for file in self._tracked_under(old):
                    self.emit(file, DELETE, observed)
            if self.excluded(path):
                return
            # Renamed or moved in from outside: every file below counts as written.
            for file in self._watch_tree(path):
                self.emit(file, WRITE, observed)
        elif mask & flags.MOVED_FROM:
            if event.cookie in moved_to:
                return  # handled with its MOVED_TO partner
            self._unwatch_tree(path)
            for file in self._tracked_under(path):
                self.emit(file, DELETE, observed)
        elif mask & flags.DELETE:
            # Its files were reported one by one; IN_IGNORED drops the watches as well.
            for sub in self._subtree(path):
                self.wd_to_path.pop(self.path_to_wd.pop(sub), None)

    # ----- loop hooks -----------------------------------------------------------------
    def on_tick(self, now: float) -> None:
        if self.unsent:
            self._flush()
        if self.trailing:
            wall = time.time()
            for path in [p for p, due in self.trailing.items() if due <= now]:
                self.trailing.pop(path)
                self.emit(path, WRITE if os.path.lexists(self._abs(path)) else DELETE, wall)
        if self.next_reconcile is not None and now >= self.next_reconcile:
            self.next_reconcile = now + self.config.reconcile_interval
            self.reconcile()
        if self.restart_reconcile_at is not None and now >= self.restart_reconcile_at:
            self.restart_reconcile_at = None
            self.stats["restart_reconciles"] += 1
            self.reconcile()
        if len(self.last_report) > 10_000:
            # Bound memory: entries older than the throttle interval no longer matter.
            horizon = now - self.config.modify_interval
            self.last_report = {p: t for p, t in self.last_report.items() if t > horizon}

    def wakeup_in(self) -> float | None:
        now = time.monotonic()
        waits = []
        if self.unsent:
            waits.append(_UNSENT_RETRY)
        if self.trailing:
            waits.append(min(self.trailing.values()) - now)
        if self.next_reconcile is not None:
            waits.append(self.next_reconcile - now)
        if self.restart_reconcile_at is not None:
            waits.append(self.restart_reconcile_at - now)
        return max(0.0, min(waits)) if waits else None

    def queue_depth(self) -> int:
        return len(self.unsent)

    def extra_status(self) -> dict:
        return {"watches": len(self.wd_to_path),
                "overflows": self.stats["overflows"], "rescans": self.stats["rescans"],
                "changes_sent": self.stats["changes_sent"],
                "reconciles": self.stats["reconciles"],
                "restart_reconciles": self.stats["restart_reconciles"],
                "restarts_seen": list(self.restarts_seen),
                "rules_error": self.rules.error}

    # ----- reconcile after any actor restarts -------------------------------------------
    def on_health(self, status: HealthStatus) -> None:
        """Schedule a reconcile when an actor has a new pid, came back after being silent,
        or appears for the first time (not counting the first status this watcher sees)."""
        changed = []
        for actor_id, info in status.actors.items():
            if actor_id == self.actor_id:
                continue
            pid = info.get("pid") if isinstance(info, dict) else None
            if not isinstance(pid, int) or isinstance(pid, bool):
                self.stats["bad_actor_entries"] += 1
                continue
            alive = info.get("alive") is not False
            known_pid = self.actor_pids.get(actor_id)
            if self.health_seen and (known_pid != pid or
                                     (alive and not self.actor_alive.get(actor_id, True))):
                changed.append(f"{actor_id} (pid {known_pid} -> {pid})")
            self.actor_pids[actor_id] = pid
            self.actor_alive[actor_id] = alive
        self.health_seen = True
        if changed:
            self.restarts_seen.extend(changed)
            self.log.info("actor restart seen: %s; reconciling with git status",
                          ", ".join(changed))
            if self.restart_reconcile_at is None:
                self.restart_reconcile_at = time.monotonic() + RESTART_RECONCILE_DELAY

    def shutdown(self) -> None:
        self.inotify.close()


if __name__ == "__main__":
    raise SystemExit(main(Watcher))
