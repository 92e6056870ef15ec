"""Debouncer: holds each path until it has been quiet long enough, then batches it.

Sockets:
  - PULL  bind     endpoints.decisions  in:  Decision (from l1, l2, l3)
  - PUSH  bind     endpoints.batches    out: Batch (to the executor)
  - SUB   connect  endpoints.commits    in:  CommitReport (status only)
  - PUB   bind     endpoints.feed       out: [topic, Decision] or a bundle of one topic's
                                       (every one received, for `actorctl tail`; topics:
                                       common.judge.feed)

Which paths are due is :class:`~gitsieve.common.judge.debounce.Debounce`'s judgement;
this actor publishes every decision on the feed, keeps the latest per path for
``actorctl explain``, lets :class:`~gitsieve.common.judge.learning.Learner` learn from it
(the single writer of the learned file), and sends due paths in Batches of at most
``MAX_BATCH_PATHS``; with no executor connected, batches wait in a backlog instead of being
dropped.  :class:`~gitsieve.common.judge.loop.LoopJudge` sees every decision and the
moment each commit moved HEAD: a path it holds as a feedback loop is never batched, and
while it probes a suspected path nothing is released.
"""
from __future__ import annotations

import os
import time
from collections import OrderedDict, deque
from types import SimpleNamespace

import zmq

from gitsieve.common.actor import runs
from gitsieve.common.actor.base import Actor, Outbox, main
from gitsieve.common.git.head import FILE_TIME_LAG, file_signature, taken_after
from gitsieve.common.judge import feed as feed_topics
from gitsieve.common.judge.debounce import MAX_TRACKED, Debounce, Intake
from gitsieve.common.judge.learning import Learner
from gitsieve.common.judge.loop import LoopJudge
from gitsieve.common.protocol import messages
from gitsieve.common.protocol.messages import Batch, CommitReport, Decision
from gitsieve.common.protocol.trail import as_dict, declared_the_systems, written_by_user

MAX_BATCH_PATHS = 5000
BACKLOG_RETRY = 0.05  # seconds between tries to hand a held batch to the executor
_FORGET_EVERY = 60.0
_PENDING_LIST_LIMIT = 10_000  # entries in one `pending` control reply
# Latest decisions kept for `actorctl explain` and `flush` (which tells a dirty path dropped
# by decision from one still in the pipeline by them), least recent forgotten first: of
# changes to commit, and apart (so an agent's churn cannot push a person's change out) of
# changes dropped.  A path dropped before those is still known as dropped while the debounce
# judge keeps its order (an hour of silence), without its details.
EXPLAIN_PATHS = 10_000
EXPLAIN_DROPPED_PATHS = 10_000


class DecisionRecord:
    """What ``actorctl explain`` says of a path's latest decision: the decision as it came
    (its frame, decoded again only when explained) and what the debouncer did with it.  An
    agent's storm of new files keeps EXPLAIN_DROPPED_PATHS of them: a frame is about 500
    bytes, the decision decoded about 2,000, and a dict of these keys took 464 more."""

    __slots__ = ("frame", "received", "quiet", "batched", "batch_id", "stale_dropped",
                 "note", "hold", "held_reason")

    def __init__(self, frame: bytes, quiet: float | None = None, note: str = "",
                 received: float | None = None):
        self.frame, self.received, self.quiet = frame, received, quiet
        self.batched, self.batch_id, self.stale_dropped = None, None, 0
        self.note, self.hold, self.held_reason = note, None, ""

    def view(self, decision=None) -> dict:
        """The record as explain reports it (``trail`` still as steps); ``decision``: what
        stands for the decision of a record without a frame."""
        if decision is None:
            decision = messages.decode(self.frame)
        return {"path": decision.path, "kind": decision.kind, "seq": decision.seq,
                "epoch": decision.epoch, "observed": decision.observed,
                "commit": decision.commit, "action": decision.action,
                "trail": decision.trail, "received": self.received, "quiet": self.quiet,
                "batched": self.batched, "batch_id": self.batch_id,
                "stale_dropped": self.stale_dropped, "written": decision.written,
                "open_since": decision.open_since, "partners": list(decision.partners),
                "note": self.note, "hold": self.hold, "held_reason": self.held_reason}


class ExplainRecords:
    """path -> the record of its latest decision, in two stores by the decision's
    ``commit``, each least recently noted first and capped: a storm of an agent's dropped
    changes fills only its own store, and the person's changes stay explainable."""

    def __init__(self, committing: int = EXPLAIN_PATHS, dropped: int = EXPLAIN_DROPPED_PATHS):
        self._stores: dict[bool, tuple[OrderedDict[str, DecisionRecord], int]] = {
            True: (OrderedDict(), committing), False: (OrderedDict(), dropped)}

    def __len__(self) -> int:
        return sum(len(store) for store, _ in self._stores.values())

    def get(self, path: str) -> DecisionRecord | None:
        for store, _ in self._stores.values():
            record = store.get(path)
            if record is not None:
                return record
        return None

    def note(self, path: str, record: DecisionRecord, commit: bool) -> None:
        self._stores[not commit][0].pop(path, None)
        store, cap = self._stores[commit]
        store[path] = record
        store.move_to_end(path)
        while len(store) > cap:
            store.popitem(last=False)


class Debouncer(Actor):
    name = "debouncer"
    control_commands = {"pending": "pending_paths", "explain": "explain_paths",
                        "flush": "flush_now", "learned": "learned_listing",
                        "forget": "forget_learned"}

    def __init__(self, config, instance=None):
        super().__init__(config, instance)
        self.clock = time.monotonic
        # Decisions beyond what the watcher issued are dropped (see common.actor.runs).
        self.issued = runs.IssuedBound(config.runtime_dir / runs.FILE_NAME)
        self.debounce = Debounce(config, issued=self.issued.current)
        self.learner = Learner(config)
        self.backlog: deque[bytes] = deque()  # encoded batches the executor has not taken
        self.next_batch_id = 1
        self.batches_out: zmq.Socket | None = None
        self.feed: zmq.Socket | None = None
        self._feed_waiting = Outbox()  # decision frames by feed topic, waiting to go
        self.last_commit: dict = {}
        self._next_forget = 0.0
        self.trails = ExplainRecords()
        self.loops = LoopJudge(config)
        self.loop_held: dict[str, Decision] = {}  # held path -> its latest decision
        self.reflog = HeadReflog(config.git_dir)
        seen = self.reflog.moved_at()  # HEAD's last move before we started
        self.head_seen = seen[0] if seen else float("-inf")
        self.user_written: set[str] = set()  # pending paths a user process wrote (trail)

    def setup(self) -> None:
        decisions = self.bind(zmq.PULL, self.config.endpoints.decisions)
        self.batches_out = self.bind(zmq.PUSH, self.config.endpoints.batches)
        commits = self.connect(zmq.SUB, self.config.endpoints.commits)
        self.add_input(decisions, {Decision: self.on_decision})
        self.add_input(commits, {CommitReport: self.on_commit_report})
        self.feed = self.bind(zmq.PUB, self.config.endpoints.feed, hwm=1000)

    # ----- inputs ---------------------------------------------------------------------
    def on_decision(self, decision: Decision) -> None:
        self.watch_head(observed=decision.observed)
        verdict = self.debounce.check(decision)
        if verdict == Intake.NOT_ISSUED:
            # Never issued by the watcher: a forged or corrupt frame, neither learned from
            # nor shown, so it cannot make the path's real changes look stale.
            self.stats["not_issued"] += 1
            self.stats["bad_frames"] += 1
            self.log.warning("%s: dropped a decision for %r with (epoch, seq) %s beyond what "
                             "the watcher issued", self.actor_id, decision.path,
                             (decision.epoch, decision.seq))
            return
        self.note_decision(decision, verdict == Intake.STALE)
        self.learn_from(decision)
        if verdict != Intake.STALE and self.hold_loop(decision):
            return
        if self.debounce.intake(decision, self.clock()) == Intake.STALE:
            self.stats["stale"] += 1
            return
        if decision.commit and written_by_user(decision.trail):
            self.user_written.add(decision.path)  # the Batch says so: never a runaway
        elif declared_the_systems(decision.trail) and decision.path not in self.user_written \
                and self.debounce.withdraw(decision.path):
            # A mark declares the version on disk now the system's: a commit judged before
            # it would commit that version.  A change positively written by you stays.
            self.stats["withdrawn_by_mark"] += 1
        self.stats["decisions_commit" if decision.commit else "decisions_skip"] += 1

    def on_commit_report(self, report: CommitReport) -> None:
        if report.commit:
            self.watch_head(report.finished)
        self.last_commit = {"commit": report.commit, "paths": len(report.paths),
                            "pushed": report.pushed, "error": report.error,
                            "finished": report.finished}

    # ----- output ---------------------------------------------------------------------
    def flush_due(self, now: float) -> int:
        """Batch every due path; return how many batches were made."""
        due = self.debounce.take_due(now)
        made = 0
        for start in range(0, len(due), MAX_BATCH_PATHS):
            chunk = due[start:start + MAX_BATCH_PATHS]
            for path, state in chunk:
                self.note_batched(path, self.next_batch_id,
                                  state.open_past(now, self.config.debounce_open_max))
            batch = Batch(batch_id=self.next_batch_id, paths=tuple(p for p, _ in chunk),
                          observed=tuple(state.observed for _, state in chunk),
                          created=time.time(),
                          recheck=tuple(p for p, state in chunk if state.recheck),
                          user_written=tuple(p for p, _ in chunk if p in self.user_written))
            self.user_written.difference_update(p for p, _ in chunk)
            self.next_batch_id += 1
            self.backlog.append(messages.encode(batch))
            self.stats["batches"] += 1
            self.stats["paths_batched"] += len(chunk)
            made += 1
        self.send_backlog()
        return made

    def send_backlog(self) -> None:
        while self.backlog:
            try:
                self.batches_out.send(self.backlog[0], zmq.NOBLOCK)
            except zmq.Again:  # no executor connected yet, or it is full: keep and retry
                self.stats["send_deferred"] += 1
                return
            self.backlog.popleft()
            self.stats["messages_out"] += 1

    # ----- actor hooks ----------------------------------------------------------------
    def on_tick(self, now: float) -> None:
        if self._feed_waiting:
            self.publish_feed()
        now = self.clock()  # the injectable clock, so handler tests control time
        self.watch_head()
        self.loops.tick()
        if not self.loops.probe_remaining():
            self.flush_due(now)
        if self.backlog:
            self.send_backlog()
        if now >= self._next_forget or len(self.debounce.paths) > MAX_TRACKED:
            self._next_forget = now + _FORGET_EVERY
            self.debounce.forget_settled(now)
        self.save_learned()

    def wakeup_in(self) -> float | None:
        if self.backlog:
            return BACKLOG_RETRY
        due = self.debounce.next_due(self.clock())
        save = self.learner.save_wait()
        if save is not None:
            due = save if due is None else min(due, save)
        probe = self.loops.probe_remaining()
        if probe:  # nothing is released before the probe ends
            return probe if due is None else max(probe, due)
        return due

    # ----- introspection (actorctl explain / tail / flush) -----------------------------
    def publish_feed(self) -> None:
        """Publish the decisions waiting for the live feed: a bundle per topic."""
        for topic, frames in self._feed_waiting.take().items():
            try:
                self.feed.send_multipart(messages.published(topic, frames), zmq.NOBLOCK)
                self.stats["feed_published"] += len(frames)
            except zmq.Again:  # a PUB only refuses when its queue is full: a slow tail
                self.stats["feed_dropped"] += len(frames)

    def note_decision(self, decision: Decision, stale: bool) -> None:
        """Publish the decision on the live feed and remember it as the path's latest."""
        # the frame as it came when there is one: decoded and checked, not re-encoded
        frame = self.handling_frame or messages.encode(decision)
        if self.feed is not None:
            # published with the others of its topic within BUNDLE_WAIT, or at the round's end
            if self._feed_waiting.add(feed_topics.topic_of(decision.trail), frame):
                self.publish_feed()
        record = self.trails.get(decision.path)
        if stale:
            if record is not None:
                record.stale_dropped += 1
            return
        quiet = (self.config.debounce_for(decision.path, decision.action) if decision.commit
                 else None)
        self.trails.note(decision.path, DecisionRecord(bytes(frame), quiet, received=time.time()),
                         decision.commit)

    def note_batched(self, path: str, batch_id: int, still_open: bool = False) -> None:
        record = self.trails.get(path)
        if record is not None:
            record.batched, record.batch_id = time.time(), batch_id
            if still_open:
                record.note = (f"open for writing longer than [debounce] open_max "
                               f"({self.config.debounce_open_max:g}s): committed as it "
                               f"was after its quiet period")

    def explain_paths(self, paths: list | None = None) -> dict:
        """The latest decision of each path with its debounce timing (None: never seen
        since start, or forgotten)."""
        if not isinstance(paths, (list, tuple)) or not all(isinstance(p, str) for p in paths):
            raise ValueError("explain needs paths: a list of strings")
        now = self.clock()
        found = {}
        for path in paths[:_PENDING_LIST_LIMIT]:
            record = self.trails.get(path)
            if record is None:
                found[path] = self._forgotten_drop(path)
                continue
            due_in = self.debounce.due_in(path, now)
            hold = self.debounce.hold(path, now)
            view = record.view()
            found[path] = {**view, "trail": [as_dict(step) for step in view["trail"]],
                           "pending": due_in is not None,
                           "due_in": None if due_in is None else round(due_in, 3)}
            if hold is not None:  # open for writing; a loop hold is in the record itself
                found[path].update(hold=hold.hold, held_reason=hold.text)
        return {"paths": found}

    def _forgotten_drop(self, path: str) -> dict | None:
        """The record of a path whose newest decision, not to commit it, is no longer among
        those remembered (more than EXPLAIN_DROPPED_PATHS were dropped since): its order
        is still known, so `flush` counts it as decided.  None when nothing is known."""
        order = self.debounce.dropped_order(path)
        if order is None:
            return None
        record = DecisionRecord(b"", note=f"not committed by decision; what decided it is "
                                         f"forgotten (the latest {EXPLAIN_DROPPED_PATHS:,} "
                                         f"such paths are remembered)")
        forgotten = SimpleNamespace(path=path, kind=None, seq=order[1], epoch=order[0],
                                    observed=None, commit=False, action=None, trail=[],
                                    written=None, open_since=None, partners=())
        return {**record.view(forgotten), "pending": False, "due_in": None, "forgotten": True}

    def flush_now(self) -> dict:
        """Make every pending path due at once and batch it (the `actorctl flush` barrier)."""
        now = self.clock()
        flushed = self.debounce.make_all_due(now)
        self.flush_due(now)
        self.stats["flushes"] += 1
        held = {path: self.debounce.hold(path, now) for path in sorted(self.debounce.pending)}
        return {"flushed": flushed, "backlog_batches": len(self.backlog),
                "held": {path: {"hold": why.hold, "held_reason": why.text}
                         for path, why in list(held.items())[:_PENDING_LIST_LIMIT]
                         if why is not None}}

    def queue_depth(self) -> int:
        return len(self.debounce.pending)

    def pending_paths(self, limit: int = 1000) -> dict:
        limit = max(0, min(int(limit), _PENDING_LIST_LIMIT))
        return {"total": len(self.debounce.pending),
                "pending": self.debounce.pending_list(self.clock(), limit)}

    # ----- learning (common.learning): this actor is the learned file's only writer ---
    def learn_from(self, decision: Decision) -> None:
        try:
            change = self.learner.observe(decision)
        except OSError as exc:  # the learned file cannot be written: keep debouncing
            self.record_error(f"learned file: {exc}")
            self.log.error("%s: cannot save learned paths: %s", self.actor_id, exc)
            return
        if change:
            self.stats[f"paths_{change}"] += 1

    def save_learned(self, at_exit: bool = False) -> None:
        """Write the paths a burst learned, when their second is up (at exit, at once)."""
        try:
            self.learner.save_due(at_exit)
        except OSError as exc:
            self.record_error(f"learned file: {exc}")
            self.log.error("%s: cannot save learned paths: %s", self.actor_id, exc)

    def shutdown(self) -> None:
        self.save_learned(at_exit=True)

    def learned_listing(self) -> dict:
        return {**self.learner.listing(), "loops": self.loops.listing()}

    def forget_learned(self, path: str | None = None) -> dict:
        if path is not None and not isinstance(path, str):
            raise ValueError("forget needs a path (a string) or none for every path")
        unlearned = self.learner.forget(path) is not None
        released = self.release_loop(path, "forgotten by command")
        return {"forgotten": unlearned or released}

    # ----- the loop breaker (common.judge.loop) ----------------------------------------
    def hold_loop(self, decision: Decision) -> bool:
        """Let the loop judge see ``decision``; True when its path is held (not debounced)."""
        try:
            change = self.loops.observe(decision)
        except OSError as exc:  # the holds file cannot be written: the hold still stands
            self.record_error(f"loops file: {exc}")
            self.log.error("%s: cannot save feedback-loop holds: %s", self.actor_id, exc)
            change = "held" if decision.path in self.loops.held else None
        if change:
            self.stats[f"loops_{change}"] += 1
        if change == "released":  # a directory's hold held other new files too
            self._debounce_released(keep=decision.path)
        why = self.loops.why_decision_held(decision)
        if why is None:
            self.loop_held.pop(decision.path, None)
            return False
        self.loop_held[decision.path] = decision
        self.debounce.pending.discard(decision.path)  # never batched while held
        record = self.trails.get(decision.path)
        if record is not None:
            record.hold, record.held_reason = why.hold, why.text
        return True

    def watch_head(self, reported: float | None = None, observed: float | None = None) -> None:
        """Tell the loop judge when gitsieve's commits moved HEAD, before it judges any
        change observed after (``observed``: the change about to be judged; a look at the
        reflog made after it already knows every earlier move).

        The CommitReport comes after the push (seconds, to a real remote) while an agent
        reacts to HEAD itself, so HEAD's reflog is looked at (one small read) before every
        decision and every tick: its mtime is when HEAD last moved, its last entry's message
        says whether gitsieve moved it.  ``reported``: a CommitReport's finish time, the
        moment used when HEAD has no reflog."""
        found = self.reflog.moved_at(observed)
        if found is None:
            if reported is not None:
                self.loops.note_commit(reported)
            return
        moved, ours = found
        if moved > self.head_seen:
            self.head_seen = moved
            if ours:
                self.loops.note_commit(moved)

    def release_loop(self, path: str | None, reason: str) -> bool:
        """Release a feedback-loop hold (a path, a directory's ``DIR/*``, None: every one);
        the latest change of each path it held is then debounced again."""
        if not self.loops.release(path, reason):
            return False
        self._debounce_released()
        return True

    def _debounce_released(self, keep: str | None = None) -> None:
        """Debounce again the latest change of every path no longer held (but ``keep``'s,
        being judged now)."""
        for held in [p for p, decision in self.loop_held.items()
                     if p != keep and self.loops.why_decision_held(decision) is None]:
            decision = self.loop_held.pop(held)
            record = self.trails.get(held)
            if record is not None:
                record.hold, record.held_reason = None, ""
            self.debounce.add(decision, self.clock())

    def loop_holds(self, limit: int = 50) -> list[dict]:
        return [{"path": path, "hold": why.hold, "held_reason": why.text}
                for path in sorted(self.loops.held)[:limit]
                if (why := self.loops.why_held(path)) is not None]

    def extra_status(self) -> dict:
        return {"pending": len(self.debounce.pending),
                "tracked_paths": len(self.debounce.paths),
                "backlog_batches": len(self.backlog), "batches": self.stats["batches"],
                "stale": self.stats["stale"], "not_issued": self.stats["not_issued"],
                "early_releases": self.debounce.early_releases,
                "move_links": len(self.debounce.links), "last_commit": self.last_commit,
                "decisions_commit": self.stats["decisions_commit"],
                "decisions_skip": self.stats["decisions_skip"],
                "loops": self.loops.status(), "held_paths": self.loop_holds()}


# Reflog messages of gitsieve's own HEAD moves (common/git/committer.py's update-ref -m).
OWN_REFLOG_PREFIX = b"gitsieve: "


class HeadReflog:
    """:func:`head_moved_at`, read again only when the reflog's stat changed: it is asked
    before every decision (a stat, not an open and a read, per change), and not even that
    for a change observed before the last look (a backlog's decisions share one)."""

    def __init__(self, git_dir):
        self.path = os.path.join(os.fspath(git_dir), "logs", "HEAD")
        self.key: tuple | None = None
        self.found: tuple[float, bool] | None = None
        self.looked = float("-inf")  # wall time of the last look

    def moved_at(self, observed: float | None = None) -> tuple[float, bool] | None:
        """HEAD's last move as of now, or as of any moment after ``observed``."""
        if observed is not None and taken_after(self.looked, observed, FILE_TIME_LAG):
            return self.found
        self.looked = time.time()
        key = file_signature(self.path)
        if key is None:
            self.key = self.found = None
            return None
        if key != self.key:
            self.key, self.found = key, head_moved_at(os.path.dirname(os.path.dirname(
                self.path)))
        return self.found


def head_moved_at(git_dir) -> tuple[float, bool] | None:
    """When HEAD last moved (wall time: its reflog's mtime) and whether gitsieve moved it
    (the reflog entry's message); None when HEAD has no reflog."""
    try:
        with open(os.path.join(git_dir, "logs", "HEAD"), "rb") as handle:
            moved = os.fstat(handle.fileno()).st_mtime
            handle.seek(max(0, os.fstat(handle.fileno()).st_size - 4096))
            last = handle.read().rstrip(b"\n").rsplit(b"\n", 1)[-1]
    except OSError:
        return None
    return moved, last.partition(b"\t")[2].startswith(OWN_REFLOG_PREFIX)


if __name__ == "__main__":
    raise SystemExit(main(Debouncer))
