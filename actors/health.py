"""Health monitor: decides whether committing is safe now, and gathers every heartbeat.

Sockets:
  - PUB   bind  endpoints.health     out: HealthStatus (to the executor and anyone else)
  - PULL  bind  endpoints.heartbeat  in:  Heartbeat (from every actor, via the Actor base)

Every ``config.health_interval`` seconds, and at once when the verdict changes, it
publishes a HealthStatus.  Not ok when free disk on the workspace's file system is under
``config.min_free_mb``, when a git operation is in progress in ``config.git_dir`` (merge,
rebase, am, cherry-pick, revert, bisect) or HEAD is detached.  The checks are plain stat
calls, so they run every ``CHECK_EVERY`` seconds to catch a verdict change promptly.
"""
from __future__ import annotations

import os
import time

import zmq

from common.actor import Actor, main
from common.messages import HealthStatus, Heartbeat

CHECK_EVERY = 0.25  # seconds between (cheap) checks; publishing follows the interval
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


class Health(Actor):
    name = "health"

    def __init__(self, config, instance=None):
        super().__init__(config, instance)
        self.verdict: HealthStatus | None = None
        self.actors: dict[str, dict] = {}
        self.publisher = None
        self._next_check = 0.0
        self._next_publish = 0.0

    def setup(self) -> None:
        self.publisher = self.bind(zmq.PUB, self.config.endpoints.health, hwm=100)
        heartbeats = self.bind(zmq.PULL, self.config.endpoints.heartbeat, hwm=10_000)
        self.add_input(heartbeats, {Heartbeat: self.on_heartbeat})

    # ----- inputs ---------------------------------------------------------------------
    def on_heartbeat(self, beat: Heartbeat) -> None:
        self.actors[beat.actor] = {"pid": beat.pid, "state": beat.state,
                                   "last_seen": beat.sent, "received": time.time(),
                                   "stats": beat.stats}

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

    def free_mb(self) -> float:
        stat = os.statvfs(self.config.workspace)
        return stat.f_bavail * stat.f_frsize / (1024 * 1024)

    def actor_table(self) -> dict:
        now = time.time()
        silent_after = ACTOR_SILENT_AFTER * self.config.heartbeat_interval
        for actor_id in [a for a, info in self.actors.items()
                         if now - info["received"] > _FORGET_ACTOR_AFTER]:
            del self.actors[actor_id]
        return {actor_id: {**info, "alive": now - info["received"] <= silent_after}
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
        return HealthStatus(ok=not reasons, reasons=tuple(reasons), free_mb=round(free, 1),
                            operation=operation, checked=time.time(),
                            actors=self.actor_table())

    # ----- actor hooks ----------------------------------------------------------------
    def on_tick(self, now: float) -> None:
        if now < self._next_check:
            return
        self._next_check = now + min(CHECK_EVERY, self.config.health_interval)
        status = self.evaluate()
        previous = self.verdict
        changed = previous is None or (previous.ok, previous.reasons) != (status.ok,
                                                                          status.reasons)
        self.verdict = status
        if changed:
            self.log.info("health: %s", "ok" if status.ok else "; ".join(status.reasons))
        if changed or now >= self._next_publish:
            self._next_publish = now + self.config.health_interval
            if self.send(self.publisher, status):
                self.stats["published"] += 1

    def wakeup_in(self) -> float | None:
        return max(0.0, self._next_check - time.monotonic())

    def extra_status(self) -> dict:
        if self.verdict is None:
            return {"health": None}
        verdict = self.verdict
        return {"health": {"ok": verdict.ok, "reasons": list(verdict.reasons),
                           "free_mb": verdict.free_mb, "operation": verdict.operation,
                           "checked": verdict.checked},
                "actors_seen": sorted(self.actors)}


if __name__ == "__main__":
    raise SystemExit(main(Health))
