"""Pattern layer (L1) actor: changes in, :class:`PatternJudge` verdicts out.

Sockets:
  - DEALER connect endpoints.stage_out("l1")  Change in (from the router);
                                              Ready (credit) out, see common.actor
  - PUSH  connect  endpoints.stage_in("l2")   Change out: ANALYZE verdicts, trail extended
  - PUSH  connect  endpoints.decisions        Decision out: BLOCK / ALLOW verdicts
  - SUB   connect  endpoints.commits          CommitReport in: the index changed, so the
                                              check-ignore child is replaced at once
Messages in: Change, CommitReport.  Messages out: Change, Decision.

Changes are buffered by the handler and judged in ``on_tick``: one exchange with a
long-lived ``git check-ignore`` (common.git.ignore) serves a whole poll round.
"""
from __future__ import annotations

import zmq

from gitsieve.common.actor.base import Actor, main
from gitsieve.common.judge.pattern import PatternJudge
from gitsieve.common.protocol.messages import Change, CommitReport, Decision, decide, evolve
from gitsieve.common.protocol.states import Action
from gitsieve.common.protocol.trail import PatternStep


class PatternLayer(Actor):
    name = "l1"

    def __init__(self, config, instance=None):
        super().__init__(config, instance)
        self.judge = PatternJudge(config, on_error=self.record_error)
        self.buffer: list[Change] = []

    def setup(self) -> None:
        endpoints = self.config.endpoints
        self.to_l2 = self.connect(zmq.PUSH, endpoints.stage_in("l2"))
        self.to_decisions = self.connect(zmq.PUSH, endpoints.decisions)
        self.take_stage("l1", {Change: self.on_change})
        self.add_input(self.connect(zmq.SUB, endpoints.commits),
                       {CommitReport: self.on_commit})

    def on_commit(self, _report: CommitReport) -> None:
        # the commit wrote the index: the check-ignore child reads the new one now, not
        # when the next edit waits for it
        self.judge.ignore.refresh()

    def on_change(self, change: Change) -> None:
        self.buffer.append(change)

    def on_tick(self, now: float) -> None:
        if not self.buffer:
            self.judge.close_idle(now)
            return
        batch, self.buffer = self.buffer, []
        for change, step in zip(batch, self.judge.judge(batch)):
            self.stats[f"verdict_{step.action}"] += 1
            self.stats["learned_paths"] += step.learned
            if step.action == Action.ANALYZE:
                self.send_change(self.to_l2, evolve(
                    change, trail=(*change.trail, step)), priority=False)
            else:
                self.send(self.to_decisions, decision_of(change, step))

    def wakeup_in(self) -> float | None:
        return 0.0 if self.buffer else None

    def queue_depth(self) -> int:
        return len(self.buffer)

    def shutdown(self) -> None:
        self.judge.close()

    def extra_status(self) -> dict:
        return {"ignore_checks": self.judge.ignore_checks,
                "ignore_process_starts": self.judge.ignore.starts,
                "ignore_fallbacks": self.judge.ignore.fallbacks,
                **{key: count for key, count in self.stats.items()
                   if key.startswith("verdict_")}}


def decision_of(change: Change, step: PatternStep) -> Decision:
    return decide(change, step.action == Action.ALLOW, step.action, (*change.trail, step))


if __name__ == "__main__":
    raise SystemExit(main(PatternLayer))
