"""Watcher: turns inotify events in the workspace into Change messages for layer 1.

Sockets:
  - PUSH  connect  endpoints.stage_in("l1")   Change out (to the router's l1 stage)
  - SUB   connect  endpoints.health           HealthStatus in (its actors map: id -> pid)
  - SUB   connect  endpoints.feed             Decision in (the debouncer's feed: which
                                              changes are decided, read without a full decode)
  - (plus the inotify file descriptor, watched in the poll loop)
Messages in: HealthStatus, Decision.  Messages out: Change (source "inotify" or
"reconcile").

Every directory of the workspace is watched except ``.git`` (at any depth) and the runtime
directory.  The events of one read are folded per path, so a path written a thousand times
between two reads is reported once.  Each Change carries what the watcher knows of the
writing (:mod:`gitsieve.common.judge.writing`): the last real write and whether a process
still holds the file open for writing (created or modified, not yet closed).  A file that
becomes open is reported at once, so the debouncer holds it; a close is reported at once;
MODIFY/ATTRIB of a file already open are reported at most once per path per
``config.modify_interval`` (with a trailing report).  A path reported a moment ago (less
than a quarter second, at most half the shortest quiet period) has its next opens and
closes held to the trailing edge (:class:`~gitsieve.common.judge.writing.ReportPacer`), so
an agent rewriting a file a hundred times a second costs four reports a second; a close
ending an open the debouncer was told of is still reported at once.  The two sides of a
move (a cookie pair, even across two reads; or a removal and a file found in a directory
watched too late, with equal blobs) name each other as ``partners``, so the debouncer
releases them together.

``(epoch, seq)`` orders changes: ``epoch`` is the watcher run from the persisted run counter
(:mod:`gitsieve.common.actor.runs`), never the wall clock.

A periodic reconcile against ``git status`` (and a full rescan after a queue overflow)
catches whatever inotify missed; it sends only paths not already in flight (sent, and no
decision for them seen on the debouncer's feed yet; a mark expires after
``IN_FLIGHT_EXPIRY`` seconds, and all marks go when any actor restarts or the router reports
changes lost).  ZeroMQ drops what was in flight to a process that dies, so whenever the
health monitor's actors map shows an actor restarted (new pid), or newly appeared having
started after this run's first change, or the router's count of changes lost grew, the
watcher reconciles again (``RESTART_RECONCILE_DELAY`` later, coalescing a burst of restarts
into one): the file system and ``git status`` are the source of truth.  A ``.gitignore``
written, moved or removed anywhere in the tree makes it reconcile too
(``EXCLUDES_RECONCILE_DELAY`` later): files it no longer ignores did not change, so no event
would ever send them.

inotify's queue holds ``/proc/sys/fs/inotify/max_queued_events`` events (16384 by default);
the watcher drains it every poll round, and on an overflow rescans and reconciles.  A
reconcile reports ``RECONCILE_SLICE`` paths a poll round, inotify read between slices, so
one of tens of thousands of paths never stops the draining (done in one go, it let the queue
overflow again while it ran).  The areas holding the fewest of its paths go first (a
person's few edits before an agent's storm), and one asked for while another is under way
starts when that one ends.  The ``.gitignore``
reconcile, whose paths are all linked to the ``.gitignore``, and `actorctl flush` report
everything at once.
"""
from __future__ import annotations

import errno
import os
import stat
import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Callable

import inotify_simple
import msgpack
import zmq
from inotify_simple import flags

from gitsieve.common import config as config_mod
from gitsieve.common.actor import runs
from gitsieve.common.actor.base import Actor, bundle_due, main
from gitsieve.common.git.gateway import Git, GitError
from gitsieve.common.judge.areas import smallest_areas_first
from gitsieve.common.judge.content import git_blob_id
from gitsieve.common.judge.health import nonnegative_count
from gitsieve.common.judge.pattern import observe, urgent
from gitsieve.common.judge.rules import RuleCache
from gitsieve.common.judge.settled import SettledVersions
from gitsieve.common.judge.writing import (MoveTracker, ReportPacer, WriteTracker, Writing,
                                           report_interval)
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
# Seconds between a .gitignore changing and the reconcile that sends the files it stopped
# ignoring: an editor's save (temp file, rename, chmod) coalesces into one.
EXCLUDES_RECONCILE_DELAY = 0.5
# A path sent and not seen decided is "in flight" (a reconcile skips it) this long at most.
IN_FLIGHT_EXPIRY = 30.0
# Files of a directory whose mode changed told again at once (more: the reconcile's).
MAX_RETOLD = 10_000
MAX_IN_FLIGHT = 100_000  # marks kept; past it the oldest go (their paths are sent again)
# A change older than the monotonic clock (before the boot): still a moment, never 0 (none).
_LONG_AGO = 1e-6
# Versions L2 judged an autonomous process's (or gitsieve's own) write are settled
# (common/judge/settled.py): a reconcile does not send them again.
_SETTLING_WRITERS = ("SYSTEM", "SELF")
MATCH_EVERY = 0.25  # seconds between looks for moves inotify could not pair
# Paths of a pending reconcile looked at per poll round; inotify is read between slices.
# Done in one go, a reconcile of 80,000 paths held the watcher for 0.7-1.1 s, long enough
# for the kernel's queue to overflow again, and again (a storm of new files).
RECONCILE_SLICE = 2000
# A path passed over (in flight, settled) costs a slice this share of one reported.
_PASSED_OVER_SHARE = 10
_FEED_LIMIT = 5000  # feed decisions read per poll round



@dataclass
class PendingReconcile:
    """A reconcile's paths still to look at (git's listing, in its order)."""
    paths: deque[str]
    skip_in_flight: bool
    partners: tuple[str, ...]


def version_of(path: str) -> int | None:
    """A version's identity: its inode, size, mtime and ctime (any write, chmod or rename
    changes one of them); None when it is gone."""
    try:
        info = os.lstat(path)
    except OSError:
        return None
    return hash((info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns))


def _writer_of(trail) -> str | None:
    """The L2 verdict in a raw (wire) trail: ``[[layer, fields], ...]``."""
    for layer, fields in trail:
        if layer == "L2":
            return fields["verdict"]
    return None

class Watcher(Actor):
    name = "watcher"
    control_commands = {"reconcile": "reconcile_now", "judge_again": "judge_again"}
    progress_every = 1.0  # seconds between progress lines while watching a large tree

    def __init__(self, config, instance=None):
        super().__init__(config, instance)
        self.root = str(config.workspace)
        self.git = Git(config.workspace)
        self.runs: runs.RunCounter | None = None
        self.epoch = 0.0  # the run number, once setup() has counted this run
        self.seq = 0
        self.writing = WriteTracker()
        self.moves = MoveTracker(window=max(config.debounce_default, 1.0))
        self.pacer = ReportPacer(report_interval(
            [config.debounce_allow, config.debounce_default]
            + [rule.seconds for rule in config.debounce_rules]))
        self.next_match = 0.0
        self.in_flight: OrderedDict[str, tuple[int, float]] = OrderedDict()  # seq, sent at
        self.settled = SettledVersions(config.runtime_dir)
        self.router_lost = 0  # changes the router reported lost or dropped, as last seen
        self.out: zmq.Socket | None = None
        self.unsent: deque[list[bytes]] = deque()
        self._unsent_since = 0.0  # perf_counter() when the oldest unsent was queued
        self.rules = RuleCache(config.patterns_file, workspace=config.workspace)
        self.excluded_prefix = self._runtime_prefix()
        self.wd_to_path: dict[int, str] = {}
        self.path_to_wd: dict[str, int] = {}
        self.last_report: dict[str, float] = {}   # path -> monotonic time of last report
        self.trailing: dict[str, float] = {}      # path -> when a held-back MODIFY is due
        self.watch_limit_logged = False
        self.inotify = inotify_simple.INotify()
        self.next_reconcile: float | None = None
        self.reconciling: PendingReconcile | None = None  # under way, a slice a round
        self.reconcile_again = False  # asked for while one was under way: once it ends
        # reconcile after any actor restarts: the health monitor's actors map
        self.actor_pids: dict[str, int] = {}
        self.actor_alive: dict[str, bool] = {}
        self.first_sent: float | None = None  # wall clock of this run's first change
        self.restart_reconcile_at: float | None = None
        self.excludes_reconcile_at: float | None = None  # a .gitignore changed
        self.excludes_changed: set[str] = set()  # the .gitignore files, until then
        self.restarts_seen: deque[str] = deque(maxlen=20)  # recent, for status

    def setup(self) -> None:
        config_mod.prepare_runtime_dir(self.config)  # the run counter lives there
        self.runs = runs.RunCounter(self.config.runtime_dir / runs.FILE_NAME)
        self.epoch = float(self.runs.run)
        self.out = self.connect(zmq.PUSH, self.config.endpoints.stage_in("l1"))
        health = self.connect(zmq.SUB, self.config.endpoints.health, hwm=100)
        self.add_input(health, {HealthStatus: self.on_health})
        self.feed = self.connect(zmq.SUB, self.config.endpoints.feed, hwm=50_000)
        self.watch_fd(self.feed, self._take_feed)
        self.watch_fd(self.inotify.fileno(), self._read_events)
        self._watch_tree("")
        self.log.info("watching %d directories under %s", len(self.wd_to_path), self.root)
        self.stats["settled_loaded"] = self.settled.load(self.excluded)
        self.start_reconcile()
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

    def _files_directly_in(self, rel: str) -> list[str]:
        """The names in directory ``rel`` that are not directories (none if unreadable),
        at most MAX_RETOLD: past that, the periodic reconcile finds the rest."""
        try:
            with os.scandir(self._abs(rel)) as entries:
                names = [entry.name for entry in entries
                         if not entry.is_dir(follow_symlinks=False)]
        except OSError:
            return []
        found = [child for child in (self._join(rel, name) for name in names)
                 if not self.excluded(child)]
        return found[:MAX_RETOLD]

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
        for path in [p for p in self.writing.paths if p.startswith(old_prefix)]:
            self.writing.moved(path, new + path[len(old):])

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
        """Control command (`actorctl flush`): report every dirty path now, in flight or
        not (a barrier).  Every Change this sends is ordered after ``(epoch, seq_before)``."""
        seq_before = self.seq
        self.reconcile(skip_in_flight=False)
        self._flush()
        return {"epoch": self.epoch, "seq_before": seq_before, "seq_after": self.seq,
                "unsent": len(self.unsent)}

    def judge_again(self, paths) -> dict:
        """Control command (`gitsieve mark`): send these paths again, as they are now, so
        that a version marked the system's after its change was judged is judged with the
        mark.  Their quiet periods still count from their last change (the inode's ctime)."""
        if not isinstance(paths, list) or len(paths) > messages.MAX_MARKED_PATHS:
            raise TypeError(f"paths: a list of at most {messages.MAX_MARKED_PATHS}")
        observed, now = time.time(), time.monotonic()
        sent = 0
        for path in paths:
            if not isinstance(path, str) or messages.bad_path_reason(path) is not None:
                continue
            try:
                changed = os.lstat(self._abs(path)).st_ctime
            except OSError:
                self.emit(path, DELETE, observed, source="mark")
            else:
                self.emit(path, WRITE, observed, source="mark",
                          changed=max(now - max(0.0, observed - changed), _LONG_AGO))
            sent += 1
        self._flush()
        return {"sent": sent}

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
    def emit(self, path: str, kind: ChangeKind, observed: float, source: str = "inotify",
             partners=(), changed: float = 0.0) -> None:
        """``changed``: when a path no write of which was seen last changed (monotonic)."""
        if self.excluded(path):
            return
        now = time.monotonic()
        self.seq += 1
        self.runs.issue(self.seq)
        facts = self.writing.facts(path) if kind == WRITE else Writing()
        if changed and not facts.written:
            facts = Writing(changed, facts.open_since)
        named = set(partners).union(self.moves.partners(path, now))
        named.discard(path)
        change = messages.evolve(
            observe(path, kind, self.seq, self.epoch, observed, self.rules, source),
            written=facts.written, open_since=facts.open_since,
            partners=tuple(sorted(p for p in named if not self.excluded(p))
                           [:messages.MAX_PARTNERS]))
        priority = urgent(change)
        frames = messages.stage_frames(change, priority=priority)
        self.last_report[path] = now
        if kind == WRITE and source == "inotify":
            self.pacer.told(path, now, bool(facts.open_since))
        else:
            self.pacer.forget(path)
        self.trailing.pop(path, None)
        self.settled.forget(path)  # a new change: the next decision settles it again
        self.in_flight[path] = (self.seq, now)
        self.in_flight.move_to_end(path)
        # Not on a reconcile's own report: a .gitignore held dirty would reconcile forever.
        if os.path.basename(path) == ".gitignore" and source != "reconcile":
            self.excludes_changed.add(path)
            if self.excludes_reconcile_at is None:
                self.excludes_reconcile_at = now + EXCLUDES_RECONCILE_DELAY
        while len(self.in_flight) > MAX_IN_FLIGHT:
            self.in_flight.popitem(last=False)
        self.stats["changes_sent"] += 1
        self.stats[f"changes_{source}"] += 1
        if self.first_sent is None:
            self.first_sent = time.time()
        now_precise = time.perf_counter()
        if not self.unsent:
            self._unsent_since = now_precise
        self.unsent.append(frames)
        # A burst goes bundled as an actor's Outbox would (kept here as a queue: nothing is
        # dropped when the pipe is full), at the end of the round or at once for a priority
        # change.
        if priority or bundle_due(len(self.unsent), self._unsent_since, now_precise):
            self._flush()

    def _flush(self) -> None:
        while self.unsent:
            count = min(len(self.unsent), messages.MAX_BUNDLED)
            queued = [self.unsent[index] for index in range(count)]
            try:
                self.out.send_multipart(queued[0] if count == 1 else messages.bundle(queued),
                                        zmq.NOBLOCK)
            except zmq.Again:  # high-water mark reached; retried from on_tick
                return
            for _ in range(count):
                self.unsent.popleft()
            self.stats["messages_out"] += count

    def reconcile(self, skip_in_flight: bool = True, partners: tuple[str, ...] = ()) -> None:
        """Report now every path git sees as differing from HEAD (or untracked); with
        ``skip_in_flight``, not those sent and not yet seen decided; each linked to
        ``partners`` (released with them)."""
        pending = self._list_dirty(skip_in_flight, partners)
        if pending is not None:
            self._reconcile_slice(pending, len(pending.paths))
            self.stats["reconciles"] += 1

    def start_reconcile(self) -> None:
        """A reconcile that reports a slice of its paths a poll round (inotify is read
        between slices), the areas with the fewest paths first.  Asked for while one is
        under way, it starts when that one ends.  (Started again at each overflow of a
        storm, listing and sorting 80,000 paths each time, it held the watcher long
        enough for twice the overflows.)"""
        if self.reconciling is not None:
            self.reconcile_again = True
            return
        pending = self._list_dirty(True, ())
        if pending is not None:
            pending.paths = deque(smallest_areas_first(pending.paths))
            self.reconciling = pending

    def _continue_reconcile(self) -> None:
        pending = self.reconciling
        self._reconcile_slice(pending, RECONCILE_SLICE)
        if not pending.paths:
            self.reconciling = None
            self.stats["reconciles"] += 1
            if self.reconcile_again:
                self.reconcile_again = False
                self.start_reconcile()

    def _list_dirty(self, skip_in_flight: bool, partners: tuple[str, ...]
                    ) -> PendingReconcile | None:
        try:
            paths = self.git.dirty_paths()
        except GitError as exc:
            self.record_error(f"reconcile: {exc}")
            self.log.error("reconcile failed: %s", exc)
            return None
        self._expire_in_flight(time.monotonic())
        return PendingReconcile(deque(paths), skip_in_flight, partners)

    def _reconcile_slice(self, pending: PendingReconcile, limit: int) -> None:
        """Up to ``limit`` paths of ``pending`` reported (fewer when paths were passed
        over)."""
        observed = time.time()
        now = time.monotonic()
        paths, partners = pending.paths, pending.partners
        budget = limit * _PASSED_OVER_SHARE
        while paths and budget > 0:
            path = paths.popleft()
            budget -= 1  # looked at
            if path.endswith("/"):
                # A nested repository shows as one untracked directory; not a file to commit.
                self.stats["reconcile_skipped_dirs"] += 1
                continue
            if pending.skip_in_flight and path in self.in_flight:
                self.stats["reconcile_in_flight"] += 1
                continue
            if self.is_settled(path):
                self.stats["reconcile_settled"] += 1
                continue
            budget -= _PASSED_OVER_SHARE - 1  # and reported
            try:
                changed = os.lstat(self._abs(path)).st_ctime
            except OSError:
                self.emit(path, DELETE, observed, source="reconcile", partners=partners)
                continue
            # Its last change, from the inode's ctime (which no process can set back), on
            # the monotonic clock the debouncer's quiet periods run on: a file quiet for
            # long (a dirty start) is not made to wait a quiet period more.
            self.emit(path, WRITE, observed, source="reconcile", partners=partners,
                      changed=max(now - max(0.0, observed - changed), _LONG_AGO))

    # ----- in flight: sent, no decision seen yet ------------------------------------------
    def _take_feed(self) -> None:
        """Decisions on the debouncer's feed end their paths' in-flight marks.  Only path,
        epoch and seq are read: a full decode of every decision would cost more than the
        reconcile it saves."""
        taken = 0
        while taken < _FEED_LIMIT:
            try:
                frames = self.feed.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                parts = messages.topic_parts(frames)  # [topic, Decision]: common.judge.feed
            except messages.BadMessage as exc:
                self.stats["bad_frames"] += 1
                self.log.debug("feed: unreadable frame: %s", exc)
                continue
            taken += len(parts)
            for _topic, frame in parts:
                self._take_decision(frame)

    def _take_decision(self, frame: bytes) -> None:
        """A Decision frame off the feed ends its path's in-flight mark."""
        try:
            _, name, body = msgpack.unpackb(frame, raw=False, strict_map_key=True,
                                            unicode_errors="surrogateescape")
            if name != "Decision":
                raise ValueError(f"unexpected {name!r}")
            path, epoch, seq = body["path"], body["epoch"], body["seq"]
            settles = body["commit"] is False and _writer_of(body.get("trail", ())) in \
                _SETTLING_WRITERS
        except Exception as exc:  # msgpack raises several unrelated types on bad input
            self.stats["bad_frames"] += 1
            self.log.debug("feed: unreadable frame: %s", exc)
            return
        mark = self.in_flight.get(path) if isinstance(path, str) else None
        if mark is not None and epoch == self.epoch and isinstance(seq, int) \
                and seq >= mark[0]:
            del self.in_flight[path]
            # the decision on the newest change sent: its version is settled if an
            # autonomous writer made it (a later write sends a change, which unsettles)
            if settles:
                self._settle(path)
            else:
                self.settled.forget(path)

    def _settle(self, path: str) -> None:
        version = version_of(self._abs(path))
        if version is not None:
            self.settled.settle(path, version)

    def _save_settled(self, save: Callable[..., None], *args) -> None:
        try:
            save(*args)
        except OSError as exc:
            self.record_error(f"cannot save settled versions: {exc}")
            self.log.warning("%s: cannot save settled versions: %s", self.actor_id, exc)

    def is_settled(self, path: str) -> bool:
        """Whether ``path`` is still the version a settling decision judged."""
        return self.settled.get(path) is not None and \
            self.settled.holds(path, version_of(self._abs(path)))

    def _expire_in_flight(self, now: float) -> None:
        while self.in_flight:
            _, sent = next(iter(self.in_flight.values()))
            if now - sent <= IN_FLIGHT_EXPIRY:
                break
            self.in_flight.popitem(last=False)
            self.stats["in_flight_expired"] += 1

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
        observed, now = time.time(), time.monotonic()
        self.stats["events"] += len(events)
        moved_from = {e.cookie: e for e in events if e.mask & flags.MOVED_FROM}
        moved_to = {e.cookie: e for e in events if e.mask & flags.MOVED_TO}
        # path -> [kind, partners]: one report per path for the whole read
        folded: dict[str, list] = {}
        overflow = False
        for event in events:
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
                self._dir_event(event, path, moved_from, moved_to, folded, now)
            else:
                self._file_event(event, path, moved_from, moved_to, folded, now)
        self.stats["events_folded"] += len(events) - len(folded)
        for path, (kind, partners) in folded.items():
            self.emit(path, kind, observed, partners=partners)
        self._match_moves(now, observed)
        if overflow:
            self.stats["overflows"] += 1
            self.log.warning("inotify queue overflowed (fs.inotify.max_queued_events); "
                             "rescanning the workspace and reconciling with git status")
            self.rescan()
            self.start_reconcile()

    @staticmethod
    def _fold(folded: dict, path: str, kind: ChangeKind, partners=()) -> None:
        entry = folded.get(path)
        if entry is None:
            folded[path] = [kind, set(partners)]
        else:
            entry[0] = kind
            entry[1].update(partners)

    def _drop_wd(self, wd: int) -> None:
        path = self.wd_to_path.pop(wd, None)
        if path is not None and self.path_to_wd.get(path) == wd:
            del self.path_to_wd[path]

    def _self_event(self, event, path: str) -> None:
        """DELETE_SELF/MOVE_SELF on a watched dir (others arrive via the parent's events)."""
        if path == "" and event.mask & (flags.DELETE_SELF | flags.MOVE_SELF):
            self.record_error("workspace directory deleted or moved")
            self.log.error("the workspace directory itself was deleted or moved")

    def _partner_of(self, event, events: dict) -> str | None:
        """The other name of a cookie-paired move in this read, if it is watched."""
        partner = events.get(event.cookie)
        if partner is None:
            return None
        parent = self.wd_to_path.get(partner.wd)
        return None if parent is None else self._join(parent, partner.name)

    def _file_event(self, event, path: str, moved_from: dict, moved_to: dict,
                    folded: dict, now: float) -> None:
        mask = event.mask
        if mask & flags.MOVED_FROM:
            new = self._partner_of(event, moved_to)
            if new is not None:
                self.moves.pair(path, new, now)
                self.writing.moved(path, new)
            else:
                self.moves.moved_from(event.cookie, path, now)
                self.moves.removed(path, now)
                self.writing.gone(path)
            self._fold(folded, path, DELETE)
        elif mask & flags.MOVED_TO:
            if event.cookie not in moved_from:
                old = self.moves.take_cookie(event.cookie, now)
                if old is not None:  # its IN_MOVED_FROM came in the previous read
                    self.moves.pair(old, path, now)
                    self._fold(folded, old, DELETE)
                else:
                    self.moves.arrived(path, now)
            self._fold(folded, path, WRITE)
        elif mask & flags.DELETE:
            self.writing.gone(path)
            self.moves.removed(path, now)
            self._fold(folded, path, DELETE)
        elif mask & flags.CLOSE_WRITE:
            self.writing.closed(path, now)
            self._report_write(folded, path, now, closing=True)
        elif mask & flags.CREATE:
            if self._regular_single_link(path):
                self.writing.wrote(path, now)  # created by open(): written until closed
            self.moves.arrived(path, now)
            self._fold(folded, path, WRITE)
        elif mask & (flags.MODIFY | flags.ATTRIB):
            if mask & flags.MODIFY and self.writing.wrote(path, now):
                self._report_write(folded, path, now, closing=False)  # just opened
                return
            due = self.last_report.get(path, float("-inf")) + self.config.modify_interval
            if now >= due or path in folded:
                self._fold(folded, path, WRITE)
            else:
                self._hold(path, due)

    def _report_write(self, folded: dict, path: str, now: float, closing: bool) -> None:
        """A file opened or closed: told at once, unless the pacer holds it (a path
        reported a moment ago: told at the trailing edge)."""
        due = None if path in folded else self.pacer.hold_until(path, now, closing)
        if due is None:
            self._fold(folded, path, WRITE)
        else:
            self._hold(path, due)
            self.stats["writes_held"] += 1

    def _hold(self, path: str, due: float) -> None:
        """Report ``path`` at ``due`` (monotonic) unless something reports it sooner."""
        self.trailing[path] = min(due, self.trailing.get(path, due))

    def _regular_single_link(self, path: str) -> bool:
        """A regular file with one name: created by open() (a symlink, a FIFO or a hard
        link has no writer to wait for)."""
        try:
            info = os.lstat(self._abs(path))
        except OSError:
            return False
        return stat.S_ISREG(info.st_mode) and info.st_nlink == 1

    def _dir_event(self, event, path: str, moved_from: dict, moved_to: dict, folded: dict,
                   now: float) -> None:
        mask = event.mask
        if mask & flags.CREATE:
            for file in self._watch_tree(path):
                self.moves.arrived(file, now)
                self._fold(folded, file, WRITE)
        elif mask & flags.MOVED_TO:
            old = self._partner_of(event, moved_from)
            removed: list[str] = []
            if old is not None and not self.excluded(old) and old in self.path_to_wd:
                # Renamed inside the workspace: the watches travel with the directory.
                if self.excluded(path):
                    self._unwatch_tree(old)
                else:
                    self._rename_tree(old, path)
                removed = self._tracked_under(old)
            if self.excluded(path):
                for file in removed:
                    self._fold(folded, file, DELETE)
                return
            # Renamed or moved in from outside: every file below counts as written.
            arrived = set(self._watch_tree(path))
            for file in removed:
                moved = path + file[len(old):]
                if moved in arrived:
                    self.moves.pair(file, moved, now)
                self._fold(folded, file, DELETE)
            for file in arrived:
                if old is None:
                    self.moves.arrived(file, now)
                self._fold(folded, file, WRITE)
        elif mask & flags.MOVED_FROM:
            if event.cookie in moved_to:
                return  # handled with its MOVED_TO partner
            self._unwatch_tree(path)
            self.writing.gone_below(path + "/")
            for file in self._tracked_under(path):
                self.moves.removed(file, now)
                self._fold(folded, file, DELETE)
        elif mask & flags.ATTRIB:
            # The directory's own mode or owner changed.  One made readable again holds
            # files that could not be read meanwhile (git refused them, L3 could not compare
            # them) or were never watched: tell them again.
            files = (self._watch_tree(path) if path not in self.path_to_wd
                     else self._files_directly_in(path))
            for file in files:
                # as in a reconcile: an agent's settled version judged again would come back
                # UNKNOWN, then be committed as a new file
                if not self.is_settled(file):
                    self._fold(folded, file, WRITE)
        elif mask & flags.DELETE:
            # Its files were reported one by one; IN_IGNORED drops the watches as well.
            for sub in self._subtree(path):
                self.wd_to_path.pop(self.path_to_wd.pop(sub), None)

    # ----- moves inotify could not pair: equal blobs ----------------------------------------
    def _match_moves(self, now: float, observed: float) -> None:
        """Pair a removal and a file that appeared (a move into a directory watched too
        late) when the removed path's blob in the index equals the new file's."""
        self.moves.expire(now)
        if not self.moves.unmatched() or now < self.next_match:
            return
        self.next_match = now + MATCH_EVERY
        unchecked = [p for p, c in self.moves.removals.items() if not c.checked]
        if unchecked:
            # A name never in the index may itself have been moved from one that is
            # (``mv a b && mkdir a && mv b a/c``): it stands for that name's blob.
            earlier = {path: [p for p in self.moves.partners(path, now) if p != path]
                       for path in unchecked}
            blobs = self._index_blobs(sorted({*unchecked, *(p for names in earlier.values()
                                                            for p in names)}))
            for path in unchecked:
                candidate = self.moves.removals[path]
                candidate.checked = True
                candidate.blob = blobs.get(path) or next(
                    (blobs[p] for p in earlier[path] if p in blobs), None)
        lengths = {len(c.blob) for c in self.moves.removals.values() if c.blob}
        if not lengths:
            return
        for path, candidate in self.moves.arrivals.items():
            if candidate.checked or self.writing.is_open(path):
                continue  # still being written: its blob is not final yet
            candidate.checked = True
            candidate.blob = self._blob_of(path, lengths.pop() if len(lengths) == 1 else 40)
        for removed, arrived in self.moves.match(now):
            self.stats["moves_matched"] += 1
            # The names the removed one was moved from are this move's too: their deletion
            # goes in the commit that adds the file.
            for origin in self.moves.partners(removed, now):
                if origin != arrived and not os.path.isfile(self._abs(origin)):
                    self.moves.pair(origin, arrived, now)
                    self.emit(origin, DELETE, observed)
            self.emit(removed, DELETE, observed)
            self.emit(arrived, WRITE, observed)

    def _index_blobs(self, paths: list[str]) -> dict[str, str]:
        """The index's blob of each path (stage 0), asked of one ``cat-file --batch-check``
        (``ls-files`` takes no pathspec on stdin).  Requests are lines: a name with a
        newline cannot be asked, and stays unpaired (reported as a removal and a write)."""
        asked = [path for path in paths if "\n" not in path]
        if not asked:
            return {}
        request = b"".join(b":0:" + os.fsencode(path) + b"\n" for path in asked)
        try:
            out = self.git.run("cat-file", "--batch-check=%(objectname) %(objecttype)",
                               input=request)
        except GitError as exc:
            self.record_error(f"cat-file --batch-check: {exc}")
            return {}
        blobs = {}
        # One answer line per request: "OID blob", or the request followed by " missing".
        for path, answer in zip(asked, out.split(b"\n")):
            oid, _, kind = answer.partition(b" ")
            if kind == b"blob":
                blobs[path] = oid.decode("ascii", "replace")
        return blobs

    def _blob_of(self, path: str, length: int) -> str | None:
        target = self._abs(path)
        try:
            info = os.lstat(target)
            if not stat.S_ISREG(info.st_mode) or info.st_size > self.config.max_analyze_bytes:
                return None
            return git_blob_id(target, length)
        except OSError:  # gone again, or unreadable: no move to pair
            return None

    # ----- loop hooks -----------------------------------------------------------------
    def on_tick(self, now: float) -> None:
        if self.trailing:
            wall = time.time()
            for path in [p for p, due in self.trailing.items() if due <= now]:
                self.trailing.pop(path)
                self.emit(path, WRITE if os.path.lexists(self._abs(path)) else DELETE, wall)
        if self.unsent:
            self._flush()
        if self.moves.unmatched() and now >= self.next_match:
            self._match_moves(now, time.time())
        if self.next_reconcile is not None and now >= self.next_reconcile:
            self.next_reconcile = now + self.config.reconcile_interval
            self.start_reconcile()
        if self.restart_reconcile_at is not None and now >= self.restart_reconcile_at:
            self.restart_reconcile_at = None
            self.stats["restart_reconciles"] += 1
            self.start_reconcile()
        if self.excludes_reconcile_at is not None and now >= self.excludes_reconcile_at:
            self.excludes_reconcile_at = None
            self.stats["excludes_reconciles"] += 1
            # What it sends is linked to the .gitignore: one commit, never a file on the
            # remote that its committed .gitignore still ignores.
            self.reconcile(partners=tuple(sorted(self.excludes_changed)))
            self.excludes_changed.clear()
        if self.reconciling is not None:
            self._continue_reconcile()
        self._save_settled(self.settled.save_due, now)
        if len(self.last_report) > 10_000:
            # Bound memory: entries older than the throttle interval no longer matter.
            horizon = now - self.config.modify_interval
            self.last_report = {p: t for p, t in self.last_report.items() if t > horizon}

    def wakeup_in(self) -> float | None:
        if self.reconciling is not None:
            return 0.0
        now = time.monotonic()
        waits = []
        if self.unsent:
            waits.append(_UNSENT_RETRY)
        if self.trailing:
            waits.append(min(self.trailing.values()) - now)
        if self.moves.unmatched():
            waits.append(self.next_match - now)
        if self.next_reconcile is not None:
            waits.append(self.next_reconcile - now)
        for due in (self.restart_reconcile_at, self.excludes_reconcile_at):
            if due is not None:
                waits.append(due - now)
        journal = self.settled.wakeup_in(now)
        if journal is not None:
            waits.append(journal)
        return max(0.0, min(waits)) if waits else None

    def queue_depth(self) -> int:
        return len(self.unsent)

    def extra_status(self) -> dict:
        return {"watches": len(self.wd_to_path), "epoch": self.epoch,
                "overflows": self.stats["overflows"], "rescans": self.stats["rescans"],
                "changes_sent": self.stats["changes_sent"],
                "events_folded": self.stats["events_folded"],
                "writes_held": self.stats["writes_held"],
                "reconciles": self.stats["reconciles"],
                "reconcile_in_flight": self.stats["reconcile_in_flight"],
                "reconcile_settled": self.stats["reconcile_settled"],
                "in_flight": len(self.in_flight), "settled": len(self.settled),
                "settled_loaded": self.stats["settled_loaded"],
                "open_for_writing": sum(1 for w in self.writing.paths.values() if w.open_since),
                "moves_matched": self.stats["moves_matched"],
                "restart_reconciles": self.stats["restart_reconciles"],
                "excludes_reconciles": self.stats["excludes_reconciles"],
                "restarts_seen": list(self.restarts_seen),
                "rules_error": self.rules.error}

    # ----- reconcile after any actor restarts -------------------------------------------
    def on_health(self, status: HealthStatus) -> None:
        """Schedule a reconcile when an actor has a new pid, came back after being silent,
        or is seen for the first time having started after this watcher sent its first
        change (it may have replaced a predecessor that took some); or when the router
        counts changes lost."""
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
            if known_pid is None:
                restarted = self._started_since_first_sent(info.get("started"))
            else:
                restarted = known_pid != pid or (alive and not self.actor_alive[actor_id])
            if restarted:
                changed.append(f"{actor_id} (pid {known_pid} -> {pid})")
            self.actor_pids[actor_id] = pid
            self.actor_alive[actor_id] = alive
        router = status.actors.get("router")
        lost = nonnegative_count(router.get("changes_lost")) if isinstance(router, dict) else 0
        if lost > self.router_lost:
            changed.append(f"router lost {lost - self.router_lost} change(s)")
        self.router_lost = lost
        if changed:
            self.restarts_seen.extend(changed)
            self.log.info("actor restart seen: %s; reconciling with git status",
                          ", ".join(changed))
            # What was in flight may have died with it: every path is sent again.
            self.in_flight.clear()
            if self.restart_reconcile_at is None:
                self.restart_reconcile_at = time.monotonic() + RESTART_RECONCILE_DELAY

    def _started_since_first_sent(self, started) -> bool:
        """A newly seen actor may have replaced one that took changes: it did if it started
        after this run's first change (a start time not given counts as after)."""
        if self.first_sent is None:
            return False
        if not isinstance(started, (int, float)) or isinstance(started, bool):
            return True
        return started >= self.first_sent

    def shutdown(self) -> None:
        if self.settled.changed_since_snapshot:
            self._save_settled(self.settled.save)
        self.inotify.close()


if __name__ == "__main__":
    raise SystemExit(main(Watcher))
