"""Content layer (L3) actor: changes in, :class:`ContentJudge` verdicts out.

Sockets:
  - DEALER connect endpoints.stage_out("l3")  Changes from the router (passed on by L2);
                                              Ready (credit) out, see common.actor
  - PUSH  connect  endpoints.decisions        one Decision per Change
  - SUB   connect  endpoints.commits          CommitReport: HEAD moved, drop the HEAD cache
  - SUB   connect  endpoints.feed             Decision (debouncer's live feed, topics
                                              feed.CONTENT_TOPICS): the versions
                                              other workers judged USER
Messages in: Change, CommitReport, Decision (feed).  Out: Decision with
``commit = verdict == USER`` and a ContentStep.
Runs scaled: ``python -m gitsieve.actors.content_layer --instance N``.
"""
from __future__ import annotations

import zmq

from gitsieve.common.actor.base import Actor, main
from gitsieve.common.git.catfile import HeadReadError
from gitsieve.common.judge import feed as feed_topics
from gitsieve.common.judge.content_judge import ContentJudge, remembered_version
from gitsieve.common.protocol.messages import Change, CommitReport, Decision, decide
from gitsieve.common.protocol.states import Content
from gitsieve.common.protocol.trail import ContentStep, l1_action, step_of


# A commit of at most this many paths has HEAD's new trees along them read ahead.
WARM_PATHS = 64


class ContentLayer(Actor):
    name = "l3"

    def __init__(self, config, instance=None):
        super().__init__(config, instance)
        self.judge = ContentJudge(config, on_error=self.record_error)

    def setup(self) -> None:
        endpoints = self.config.endpoints
        self.decisions = self.connect(zmq.PUSH, endpoints.decisions)
        commits = self.connect(zmq.SUB, endpoints.commits)
        self.take_stage("l3", {Change: self.on_change})
        self.add_input(commits, {CommitReport: self.on_commit})
        self.subscribe(endpoints.feed, feed_topics.CONTENT_TOPICS, {Decision: self.on_feed},
                       hwm=10_000)

    def on_commit(self, report: CommitReport) -> None:
        self.stats["commit_reports"] += 1
        self.judge.head.drop()
        if report.commit and len(report.paths) <= WARM_PATHS:
            # The paths just committed are the likeliest to change next: HEAD's new trees
            # along them are read now, not while the next edit waits (a 10k-entry
            # directory on a large tree is tens of milliseconds to read and parse).
            try:
                self.judge.head.entries(report.paths)
            except HeadReadError as exc:
                self.log.debug("%s: HEAD's new trees not read ahead: %s", self.actor_id, exc)

    def on_feed(self, decision: Decision) -> None:
        step = step_of(decision.trail, ContentStep)
        if step is not None and remembered_version(step):
            self.judge.note_user_version(decision.path, step.masked, step.exact)

    def on_change(self, change: Change) -> None:
        step = self.judge.judge(change)
        self.stats[f"verdict_{step.verdict}"] += 1
        self.send(self.decisions, decide(change, step.verdict == Content.USER,
                                         l1_action(change.trail), (*change.trail, step)))

    def on_tick(self, now: float) -> None:
        if self.judge.close_idle(now):
            self.heap.released()

    def extra_status(self) -> dict:
        return {**{key: count for key, count in self.stats.items() if key.startswith("verdict_")},
                **self.judge.status(), "commit_reports": self.stats["commit_reports"]}

    def shutdown(self) -> None:
        self.judge.close()


if __name__ == "__main__":
    raise SystemExit(main(ContentLayer))
