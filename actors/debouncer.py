"""Debouncer: holds each path until it has been quiet long enough, then batches it.

Sockets:
  - PULL  bind     endpoints.decisions  in:  Decision (from l1, l2, l3)
  - PUSH  bind     endpoints.batches    out: Batch (to the executor)
  - SUB   connect  endpoints.commits    in:  CommitReport (status only)
  - PUB   bind     endpoints.feed       out: Decision (every one received, for `actorctl tail`)

Per path it keeps the newest ``(epoch, seq)`` seen, so stale Decisions are dropped.  A
``commit=True`` Decision makes the path pending and restarts its quiet timer; a
``commit=False`` one is recorded but never cancels a pending commit (a system rewrite of a
file the user changed still leaves the user's change to commit).  A pending path is due at
``min(last_event + quiet, first_pending + max(quiet, max_wait))`` so continuous writes
cannot starve it.  Due paths leave in Batches of at most ``MAX_BATCH_PATHS``; with no
executor connected, batches wait in a backlog instead of being dropped.
"""
from __future__ import annotations

import functools
import time
from collections import OrderedDict, deque
from dataclasses import dataclass

import zmq

from gitsieve.common.actor.base import Actor, main
from gitsieve.common.judge.learning import Learner
from gitsieve.common.protocol import messages
from gitsieve.common.protocol.messages import Batch, CommitReport, Decision

MAX_BATCH_PATHS = 5000
BACKLOG_RETRY = 0.05  # seconds between tries to hand a held batch to the executor
FORGET_AFTER = 3600.0  # a settled path's ordering state is dropped after this much silence
_FORGET_EVERY = 60.0
_PENDING_LIST_LIMIT = 10_000  # entries in one `pending` control reply
EXPLAIN_PATHS = 10_000  # latest decisions kept for `actorctl explain` (least recent dropped)


def judged_by_content_alone(decision: Decision) -> bool:
    """True when a commit decision rests only on L3 seeing a change by an unknown writer.

    Such a verdict was taken on the file as it was then, against HEAD as it was then; the
    commit takes the file as it is later, against a HEAD that may have moved (the user's own
    commit of the same file just landed) -- or the layer read a half-written file.  Those
    paths are re-checked at commit time.  An ALLOW rule or a writer positively identified as
    the user is never second-guessed.
    """
    steps = [step for step in decision.trail if isinstance(step, dict)]
    if not steps or steps[-1].get("layer") != "L3":
        return False
    return not any(step.get("layer") == "L2" and step.get("verdict") == "USER"
                   for step in steps)


@dataclass
class PathState:
    newest: tuple[float, int]  # (epoch, seq) of the newest decision seen
    last_seen: float  # monotonic arrival of the newest decision (for forgetting)
    first_pending: float = 0.0
    last_event: float = 0.0  # monotonic arrival of the newest commit=True decision
    action: str = ""
    observed: float = 0.0  # earliest ``observed`` among the pending decisions
    quiet: float = 0.0
    recheck: bool = False  # every pending commit decision came from content alone

    def due(self, max_wait: float) -> float:
        return min(self.last_event + self.quiet,
                   self.first_pending + max(self.quiet, max_wait))


class Debouncer(Actor):
    name = "debouncer"
    control_commands = {"pending": "pending_paths", "explain": "explain_paths",
                        "flush": "flush_now", "learned": "learned_listing",
                        "forget": "forget_learned"}

    def __init__(self, config, instance=None):
        super().__init__(config, instance)
        self.clock = time.monotonic
        self.paths: dict[str, PathState] = {}
        # Paths with a commit waiting for their quiet period: the only ones the per-round
        # due checks look at (``paths`` also holds every settled path for an hour).
        self.pending: set[str] = set()
        self.backlog: deque[bytes] = deque()  # encoded batches the executor has not taken
        self.next_batch_id = 1
        self.batches_out = None
        self.last_commit: dict = {}
        self._next_forget = 0.0
        self.feed = None
        self.trails: OrderedDict[str, dict] = OrderedDict()  # path -> latest decision (LRU)

    def setup(self) -> None:
        decisions = self.bind(zmq.PULL, self.config.endpoints.decisions)
        self.batches_out = self.bind(zmq.PUSH, self.config.endpoints.batches)
        commits = self.connect(zmq.SUB, self.config.endpoints.commits)
        self.add_input(decisions, {Decision: self.on_decision})
        self.add_input(commits, {CommitReport: self.on_commit_report})
        self.feed = self.bind(zmq.PUB, self.config.endpoints.feed, hwm=1000)

    # ----- inputs ---------------------------------------------------------------------
    def on_decision(self, decision: Decision) -> None:
        now = self.clock()
        order = (decision.epoch, decision.seq)
        state = self.paths.get(decision.path)
        self.note_decision(decision, state is not None and order < state.newest)
        self.learn_from(decision)
        if state is not None and order < state.newest:
            self.stats["stale"] += 1
            return
        if state is None:
            state = self.paths[decision.path] = PathState(newest=order, last_seen=now)
        state.newest, state.last_seen = order, now
        if not decision.commit:
            # Recorded for ordering only: it neither cancels nor delays a pending commit.
            self.stats["decisions_skip"] += 1
            return
        self.stats["decisions_commit"] += 1
        content_only = judged_by_content_alone(decision)
        if decision.path not in self.pending:
            self.pending.add(decision.path)
            state.first_pending = now
            state.observed = decision.observed
            state.recheck = content_only
        else:
            state.observed = min(state.observed, decision.observed)
            state.recheck = state.recheck and content_only
        state.last_event = now
        state.action = decision.action
        state.quiet = self.config.debounce_for(decision.path, decision.action)

    def on_commit_report(self, report: CommitReport) -> None:
        self.last_commit = {"commit": report.commit, "paths": len(report.paths),
                            "pushed": report.pushed, "error": report.error,
                            "finished": report.finished}

    # ----- output ---------------------------------------------------------------------
    def due_paths(self, now: float) -> list[str]:
        max_wait = self.config.debounce_max_wait
        return sorted(path for path in self.pending
                      if self.paths[path].due(max_wait) <= now)

    def flush_due(self, now: float) -> int:
        """Batch every due path; return how many batches were made."""
        due = self.due_paths(now)
        made = 0
        for start in range(0, len(due), MAX_BATCH_PATHS):
            chunk = due[start:start + MAX_BATCH_PATHS]
            observed, recheck = [], []
            for path in chunk:
                state = self.paths[path]
                self.pending.discard(path)
                observed.append(state.observed)
                if state.recheck:
                    recheck.append(path)
                self.note_batched(path, self.next_batch_id)
            batch = Batch(batch_id=self.next_batch_id, paths=tuple(chunk),
                          observed=tuple(observed), created=time.time(),
                          recheck=tuple(recheck))
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

    def forget_settled(self, now: float) -> None:
        """Drop ordering state of paths long settled, so memory does not grow forever."""
        old = [path for path, state in self.paths.items()
               if path not in self.pending and now - state.last_seen > FORGET_AFTER]
        for path in old:
            del self.paths[path]

    # ----- actor hooks ----------------------------------------------------------------
    def on_tick(self, now: float) -> None:
        now = self.clock()  # the injectable clock, so handler tests control time
        self.flush_due(now)
        if self.backlog:
            self.send_backlog()
        if now >= self._next_forget:
            self._next_forget = now + _FORGET_EVERY
            self.forget_settled(now)

    def wakeup_in(self) -> float | None:
        if self.backlog:
            return BACKLOG_RETRY
        max_wait = self.config.debounce_max_wait
        dues = [self.paths[path].due(max_wait) for path in self.pending]
        if not dues:
            return None
        return max(0.0, min(dues) - self.clock())

    # ----- introspection (actorctl explain / tail / flush) -----------------------------
    def note_decision(self, decision: Decision, stale: bool) -> None:
        """Publish the decision on the live feed and remember it as the path's latest."""
        if self.feed is not None:
            try:
                self.feed.send(messages.encode(decision), zmq.NOBLOCK)
                self.stats["feed_published"] += 1
            except zmq.Again:  # a PUB only refuses when its queue is full: a slow tail
                self.stats["feed_dropped"] += 1
        record = self.trails.get(decision.path)
        if stale:
            if record is not None:
                record["stale_dropped"] = record.get("stale_dropped", 0) + 1
            return
        self.trails[decision.path] = {
            "path": decision.path, "kind": decision.kind, "seq": decision.seq,
            "epoch": decision.epoch, "observed": decision.observed,
            "commit": decision.commit, "action": decision.action,
            "trail": [dict(step) for step in decision.trail if isinstance(step, dict)],
            "received": time.time(),
            "quiet": self.config.debounce_for(decision.path, decision.action)
            if decision.commit else None,
            "batched": None, "batch_id": None, "stale_dropped": 0}
        self.trails.move_to_end(decision.path)
        while len(self.trails) > EXPLAIN_PATHS:
            self.trails.popitem(last=False)

    def note_batched(self, path: str, batch_id: int) -> None:
        record = self.trails.get(path)
        if record is not None:
            record["batched"], record["batch_id"] = time.time(), batch_id

    def explain_paths(self, paths: list | None = None) -> dict:
        """The latest decision of each path with its debounce timing (None: never seen
        since start, or forgotten)."""
        if not isinstance(paths, (list, tuple)) or not all(isinstance(p, str) for p in paths):
            raise ValueError("explain needs paths: a list of strings")
        now = self.clock()
        max_wait = self.config.debounce_max_wait
        found = {}
        for path in paths[:_PENDING_LIST_LIMIT]:
            record = self.trails.get(path)
            state = self.paths.get(path)
            if record is None:
                found[path] = None
                continue
            record = dict(record)
            pending = path in self.pending
            record["pending"] = pending
            record["due_in"] = (round(max(0.0, state.due(max_wait) - now), 3)
                                if pending else None)
            found[path] = record
        return {"paths": found}

    def flush_now(self) -> dict:
        """Make every pending path due at once and batch it (the `actorctl flush` barrier)."""
        now = self.clock()
        flushed = 0
        for path in self.pending:
            state = self.paths[path]
            state.quiet = 0.0
            state.last_event = min(state.last_event, now)
            flushed += 1
        self.flush_due(now)
        self.stats["flushes"] += 1
        return {"flushed": flushed, "backlog_batches": len(self.backlog)}

    def pending_count(self) -> int:
        return len(self.pending)

    def pending_paths(self, limit: int = 1000) -> dict:
        now = self.clock()
        max_wait = self.config.debounce_max_wait
        pending = sorted((self.paths[path].due(max_wait) - now, path) for path in self.pending)
        limit = max(0, min(int(limit), _PENDING_LIST_LIMIT))
        return {"total": len(pending),
                "pending": [{"path": path, "due_in": round(max(0.0, due_in), 3),
                             "action": self.paths[path].action}
                            for due_in, path in pending[:limit]]}

    # ----- learning (common.learning): this actor is the learned file's only writer ---
    @functools.cached_property
    def learner(self) -> Learner:
        return Learner(self.config)

    def learn_from(self, decision: Decision) -> None:
        try:
            change = self.learner.observe(decision)
        except OSError as exc:  # the learned file cannot be written: keep debouncing
            self.record_error(f"learned file: {exc}")
            self.log.error("%s: cannot save learned paths: %s", self.actor_id, exc)
            return
        if change:
            self.stats[f"paths_{change}"] += 1

    def learned_listing(self) -> dict:
        return self.learner.listing()

    def forget_learned(self, path: str | None = None) -> dict:
        if path is not None and not isinstance(path, str):
            raise ValueError("forget needs a path (a string) or none for every path")
        return {"forgotten": self.learner.forget(path) is not None}

    def extra_status(self) -> dict:
        return {"pending": self.pending_count(), "tracked_paths": len(self.paths),
                "backlog_batches": len(self.backlog), "batches": self.stats["batches"],
                "stale": self.stats["stale"], "last_commit": self.last_commit,
                "decisions_commit": self.stats["decisions_commit"],
                "decisions_skip": self.stats["decisions_skip"]}


if __name__ == "__main__":
    raise SystemExit(main(Debouncer))
