"""Pattern layer (L1): decides a Change by its path alone, or passes it on for analysis.

Sockets:
  - DEALER connect endpoints.stage_out("l1")  Change in (from the router);
                                              Ready (credit) out, see common.actor
  - PUSH  connect  endpoints.stage_in("l2")   Change out: ANALYZE verdicts, trail extended
  - PUSH  connect  endpoints.decisions        Decision out: BLOCK / ALLOW verdicts
Messages in: Change.  Messages out: Change, Decision.

Order of checks per Change: editor junk (BLOCK), ignored by git (BLOCK), the first matching
rule of ``config.patterns_file``, else ``config.default_action``.  An ANALYZE path the
debouncer learned as system-only (``config.learned_file``) goes to L2 with
``"learned": True`` in its step.  Changes are buffered by
the handler and decided in ``on_tick``, so one ``git check-ignore`` serves a whole poll
round instead of one git process per event.
"""
from __future__ import annotations

import dataclasses

import zmq

from gitsieve.common.actor.base import Actor, main
from gitsieve.common.git import gateway as gitutil
from gitsieve.common.judge.learning import LearnedSet
from gitsieve.common.judge.rules import RuleCache, editor_junk
from gitsieve.common.protocol.messages import Change, Decision

LAYER = "L1"


class PatternLayer(Actor):
    name = "l1"

    def setup(self) -> None:
        endpoints = self.config.endpoints
        self.to_l2 = self.connect(zmq.PUSH, endpoints.stage_in("l2"))
        self.to_decisions = self.connect(zmq.PUSH, endpoints.decisions)
        self.prepare()
        self.inbox = self.take_stage("l1", {Change: self.on_change})

    def prepare(self) -> None:
        """State that handler-level tests need without sockets or a running loop."""
        self.rules = RuleCache(self.config.patterns_file)
        self.buffer: list[Change] = []
        self.outcomes = {"BLOCK": self._decide, "ALLOW": self._decide,
                         "ANALYZE": self._analyze}

    # ----- input ----------------------------------------------------------------------
    def on_change(self, change: Change) -> None:
        self.buffer.append(change)

    def on_tick(self, now: float) -> None:
        if self.buffer:
            self.process_buffer()

    def wakeup_in(self) -> float | None:
        return 0.0 if self.buffer else None

    # ----- deciding -------------------------------------------------------------------
    def process_buffer(self) -> None:
        batch, self.buffer = self.buffer, []
        junk = {change.path: editor_junk(change.path) for change in batch}
        candidates = sorted({path for path, reason in junk.items() if reason is None})
        ignored = self._ignored(candidates)
        for change in batch:
            if junk[change.path]:
                self._finish(change, "BLOCK", junk[change.path])
            elif change.path in ignored:
                self._finish(change, "BLOCK", "ignored by git")
            else:
                rule = self.rules.match(change.path)
                if rule is not None:
                    self._finish(change, rule.action, rule.describe())
                else:
                    self._finish(change, self.config.default_action, "[filter] default")

    def _ignored(self, paths: list[str]) -> set[str]:
        if not paths:
            return set()
        self.stats["ignore_checks"] += 1
        try:
            return gitutil.ignored(self.config.workspace, paths)
        except gitutil.GitError as exc:
            # Fail open to the rules: a broken git also stops the executor, and the error
            # is counted and shown in status rather than stalling the whole stage.
            self.record_error(f"check-ignore: {exc}")
            self.log.error("git check-ignore failed for %d paths: %s", len(paths), exc)
            return set()

    def _finish(self, change: Change, action: str, reason: str) -> None:
        self.stats[f"verdict_{action}"] += 1
        step = {"layer": LAYER, "verdict": action, "reason": reason}
        self.outcomes[action](change, action, change.trail + (step,))

    def _decide(self, change: Change, action: str, trail: tuple) -> None:
        self.send(self.to_decisions, Decision(
            path=change.path, kind=change.kind, seq=change.seq, epoch=change.epoch,
            observed=change.observed, commit=action == "ALLOW", action=action, trail=trail))

    def _analyze(self, change: Change, action: str, trail: tuple) -> None:
        trail = self._mark_learned(change.path, trail)
        self.send(self.to_l2, dataclasses.replace(change, trail=trail))

    def _mark_learned(self, path: str, trail: tuple) -> tuple:
        """A learned path (common.learning) still goes to L2, flagged, so that a write the
        user is positively known to have made can unlearn it; L2 drops the rest."""
        if not hasattr(self, "learned"):
            self.learned = LearnedSet(self.config.learned_file)
        self.learned.refresh()
        if path not in self.learned:
            return trail
        self.stats["learned_paths"] += 1
        step = {**trail[-1], "learned": True,
                "reason": f"learned BLOCK (system-only writes); {trail[-1]['reason']}"}
        return (*trail[:-1], step)

    def extra_status(self) -> dict:
        if not hasattr(self, "rules"):
            return {}
        return {"buffered": len(self.buffer), "rules": len(self.rules.rules),
                "rules_error": self.rules.error,
                **{key: count for key, count in self.stats.items()
                   if key.startswith("verdict_")}}


if __name__ == "__main__":
    raise SystemExit(main(PatternLayer))
