"""Process layer (L2) actor: changes in, :class:`ProcessJudge` verdicts out.

Sockets:
  - DEALER connect endpoints.stage_out("l2")  Changes from the router (L1's ANALYZE verdicts);
                                              Ready (credit) out, see common.actor
  - PUSH  connect  endpoints.stage_in("l3")   Changes with a USER or UNKNOWN writer, to L3
  - PUSH  connect  endpoints.decisions        Decision(commit=False) for SYSTEM/SELF writers
                                              and for learned paths without a user writer
  - SUB   connect  endpoints.feed             Decision (the debouncer's live feed, topics
                                              feed.PROCESS_TOPICS): which
                                              writes other workers already accounted for
  - (exact mode: the fanotify and proc-connector descriptors, or the epoll descriptor
    holding the socket to ``gitsieve helper``, watched in the poll loop)
Messages in: Change, Decision (feed).  Out: Decision or Change, each with a ProcessStep.
Runs scaled: ``python -m gitsieve.actors.process_layer --instance N``.
"""
from __future__ import annotations

import time

import zmq

from gitsieve.common.actor.base import Actor, main
from gitsieve.common.judge import feed as feed_topics
from gitsieve.common.judge.attribution import make_attributor
from gitsieve.common.judge.process import ProcessJudge
from gitsieve.common.protocol.messages import Change, Decision, decide, evolve
from gitsieve.common.protocol.states import Writer
from gitsieve.common.protocol.trail import ProcessStep, l1_action, step_of


class ProcessLayer(Actor):
    name = "l2"

    def __init__(self, config, instance=None):
        super().__init__(config, instance)
        # make_attributor logs the one line saying which technique it chose, and why
        self.judge = ProcessJudge(config, make_attributor(config, name=self.actor_id))
        for fd, callback in self.judge.attributor.fds():
            self.watch_fd(fd, callback)

    def setup(self) -> None:
        endpoints = self.config.endpoints
        self.to_content = self.connect(zmq.PUSH, endpoints.stage_in("l3"))
        self.decisions = self.connect(zmq.PUSH, endpoints.decisions)
        self.take_stage("l2", {Change: self.on_change})
        self.subscribe(endpoints.feed, feed_topics.PROCESS_TOPICS, {Decision: self.on_feed},
                       hwm=10_000)

    def on_feed(self, decision: Decision) -> None:
        step = step_of(decision.trail, ProcessStep)
        if step is not None:
            self.judge.note_accounted(decision.path, step)

    def on_change(self, change: Change) -> None:
        step = self.judge.judge(change)
        self.stats[f"verdict_{step.verdict}"] += 1
        trail = (*change.trail, step)
        if self.judge.drops(step):
            self.send(self.decisions, decide(change, False, l1_action(change.trail), trail))
        else:
            self.send_change(self.to_content, evolve(change, trail=trail),
                             priority=step.verdict == Writer.USER)

    def on_tick(self, now: float) -> None:
        self.judge.tick(now)

    def wakeup_in(self) -> float | None:
        return self.judge.wakeup_in(time.monotonic())

    def extra_status(self) -> dict:
        return {**self.judge.status(),
                **{key: count for key, count in self.stats.items() if key.startswith("verdict_")}}

    def shutdown(self) -> None:
        self.judge.close()


if __name__ == "__main__":
    raise SystemExit(main(ProcessLayer))
