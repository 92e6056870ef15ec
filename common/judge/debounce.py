"""The debounce judge: which paths have been quiet long enough to commit.  Socket-free.

Per path it keeps the newest ``(epoch, seq)`` seen, so stale decisions are dropped.  A
``commit=True`` decision makes the path pending and restarts its quiet timer; a
``commit=False`` one is recorded but never cancels a pending commit (a system rewrite of a
file the user changed still leaves the user's change to commit).  A pending path is due at
``min(last_event + quiet, first_pending + max(quiet, max_wait))`` so continuous writes
cannot starve it.  Times are ``time.monotonic()`` values passed in by the caller.
"""
from __future__ import annotations

from dataclasses import dataclass

from gitsieve.common.protocol.messages import Decision
from gitsieve.common.protocol.states import Action
from gitsieve.common.protocol.trail import judged_by_content_alone

FORGET_AFTER = 3600.0  # a settled path's ordering state is dropped after this much silence


@dataclass
class PathState:
    newest: tuple[float, int]  # (epoch, seq) of the newest decision seen
    last_seen: float  # arrival of the newest decision (for forgetting)
    first_pending: float = 0.0
    last_event: float = 0.0  # arrival of the newest commit=True decision
    action: Action = Action.ANALYZE
    observed: float = 0.0  # earliest ``observed`` among the pending decisions
    quiet: float = 0.0
    recheck: bool = False  # every pending commit decision came from content alone

    def due(self, max_wait: float) -> float:
        return min(self.last_event + self.quiet,
                   self.first_pending + max(self.quiet, max_wait))


class Debounce:
    def __init__(self, config):
        self.config = config
        self.paths: dict[str, PathState] = {}
        # Paths with a commit waiting for their quiet period: the only ones the due checks
        # look at (``paths`` also holds every settled path for an hour).
        self.pending: set[str] = set()
        self.stale = 0

    def is_stale(self, decision: Decision) -> bool:
        state = self.paths.get(decision.path)
        return state is not None and (decision.epoch, decision.seq) < state.newest

    def add(self, decision: Decision, now: float) -> bool:
        """Take a decision in; False when it was stale (older than one already seen)."""
        if self.is_stale(decision):
            self.stale += 1
            return False
        order = (decision.epoch, decision.seq)
        state = self.paths.get(decision.path)
        if state is None:
            state = self.paths[decision.path] = PathState(newest=order, last_seen=now)
        state.newest, state.last_seen = order, now
        if not decision.commit:
            return True  # recorded for ordering only: it neither cancels nor delays a commit
        content_only = judged_by_content_alone(decision.trail)
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
        return True

    def due_in(self, path: str, now: float) -> float | None:
        if path not in self.pending:
            return None
        return max(0.0, self.paths[path].due(self.config.debounce_max_wait) - now)

    def take_due(self, now: float) -> list[tuple[str, PathState]]:
        """The due paths (sorted), no longer pending."""
        max_wait = self.config.debounce_max_wait
        due = sorted(path for path in self.pending if self.paths[path].due(max_wait) <= now)
        self.pending.difference_update(due)
        return [(path, self.paths[path]) for path in due]

    def make_all_due(self, now: float) -> int:
        """Every pending path due at once (``actorctl flush``); how many there were."""
        for path in self.pending:
            state = self.paths[path]
            state.quiet = 0.0
            state.last_event = min(state.last_event, now)
        return len(self.pending)

    def next_due(self, now: float) -> float | None:
        max_wait = self.config.debounce_max_wait
        dues = [self.paths[path].due(max_wait) for path in self.pending]
        return max(0.0, min(dues) - now) if dues else None

    def pending_list(self, now: float, limit: int) -> list[dict]:
        max_wait = self.config.debounce_max_wait
        ordered = sorted((self.paths[path].due(max_wait) - now, path) for path in self.pending)
        return [{"path": path, "due_in": round(max(0.0, due_in), 3),
                 "action": self.paths[path].action} for due_in, path in ordered[:limit]]

    def forget_settled(self, now: float) -> None:
        """Drop ordering state of paths long settled, so memory does not grow forever."""
        old = [path for path, state in self.paths.items()
               if path not in self.pending and now - state.last_seen > FORGET_AFTER]
        for path in old:
            del self.paths[path]
