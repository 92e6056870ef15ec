"""Router: the switchboard between pipeline stages, so scaled layer workers only connect.

Sockets, per stage S in (l1, l2, l3):
  - PULL  bind     endpoints.stage_in(S)   producers of S's input PUSH-connect here
  - PUSH  bind     endpoints.stage_out(S)  S's workers PULL-connect here (round robin)
Messages in/out: Change (forwarded unchanged).  Changes marked ``priority`` (ALLOW areas)
are queued ahead of the rest, the seed's high-priority stream.  A backlog is held while a
stage has no connected worker, so nothing is sent into the void at start-up.
"""
from __future__ import annotations

from collections import deque

import zmq

from common import messages
from common.actor import Actor, main
from common.messages import BadMessage, Change

STAGES = ("l1", "l2", "l3")


class Stage:
    def __init__(self, name: str, pull: zmq.Socket, push: zmq.Socket):
        self.name, self.pull, self.push = name, pull, push
        self.urgent: deque[bytes] = deque()
        self.normal: deque[bytes] = deque()
        self.forwarded = 0

    def backlog(self) -> int:
        return len(self.urgent) + len(self.normal)


class Router(Actor):
    name = "router"

    def setup(self) -> None:
        self.stages: dict[str, Stage] = {}
        for stage in STAGES:
            pull = self.bind(zmq.PULL, self.config.endpoints.stage_in(stage))
            push = self.bind(zmq.PUSH, self.config.endpoints.stage_out(stage))
            self.stages[stage] = Stage(stage, pull, push)
            self.watch_fd(pull, lambda s=self.stages[stage]: self._take(s))

    def _take(self, stage: Stage) -> None:
        for _ in range(1000):
            try:
                frames = stage.pull.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            self.stats["messages_in"] += 1
            try:
                if len(frames) != 1:
                    raise BadMessage(f"{len(frames)} frames, expected 1")
                frame = frames[0]
                change = messages.decode(frame)
                if not isinstance(change, Change):
                    raise BadMessage(f"unexpected {type(change).__name__}")
            except BadMessage as exc:
                self.stats["bad_frames"] += 1
                self.log.warning("router: dropped bad frame for %s: %s", stage.name, exc)
                continue
            (stage.urgent if change.priority else stage.normal).append(frame)
        self._forward(stage)

    def _forward(self, stage: Stage) -> None:
        for queue in (stage.urgent, stage.normal):
            while queue:
                try:
                    stage.push.send(queue[0], zmq.NOBLOCK)
                except zmq.Again:  # no worker connected, or all are full
                    return
                queue.popleft()
                stage.forwarded += 1
                self.stats["messages_out"] += 1

    def on_tick(self, now: float) -> None:
        for stage in self.stages.values():
            if stage.backlog():
                self._forward(stage)

    def wakeup_in(self) -> float | None:
        return 0.02 if any(s.backlog() for s in self.stages.values()) else None

    def extra_status(self) -> dict:
        return {"queue_depth": sum(s.backlog() for s in self.stages.values()),
                "stages": {s.name: {"backlog": s.backlog(), "forwarded": s.forwarded}
                           for s in self.stages.values()}}


if __name__ == "__main__":
    raise SystemExit(main(Router))
