"""Process layer (L2): drops a change an autonomous process was seen writing.

Sockets:
  - PULL  connect  endpoints.stage_out("l2")  Changes from the router (L1's ANALYZE verdicts)
  - PUSH  connect  endpoints.stage_in("l3")   Changes L2 cannot attribute, on to the content layer
  - PUSH  connect  endpoints.decisions        Decision(commit=False) for SYSTEM writes
Messages in: Change.  Out: Decision (writer attributed SYSTEM) or Change with an L2 trail step
``{"layer": "L2", "verdict": "SYSTEM"|"UNKNOWN", "reason", "technique", "pid", "cmdline",
"confidence"}``.  Runs scaled: ``python -m actors.process_layer --instance N``.

Attribution uses the psutil techniques of :mod:`common.attribution`; an unknown writer is
never SYSTEM, it goes on to L3.  Deleted files have no writer to observe: UNKNOWN.
"""
from __future__ import annotations

import dataclasses
import time

import zmq

from common.actor import Actor, main
from common.attribution import TECHNIQUE_LIVE, Attribution, Attributor
from common.content import l1_action
from common.messages import DELETE, Change, Decision

SYSTEM_VERDICT, UNKNOWN_VERDICT = "SYSTEM", "UNKNOWN"


class ProcessLayer(Actor):
    name = "l2"

    def setup(self) -> None:
        endpoints = self.config.endpoints
        self.attributor = Attributor(self.config.autonomous_processes,
                                     self.config.process_cache_ttl)
        self.changes = self.connect(zmq.PULL, endpoints.stage_out("l2"))
        self.to_content = self.connect(zmq.PUSH, endpoints.stage_in("l3"))
        self.decisions = self.connect(zmq.PUSH, endpoints.decisions)
        self.add_input(self.changes, {Change: self.on_change})
        self.attributor.cache.refresh()

    def on_change(self, change: Change) -> None:
        if change.kind == DELETE:
            self._pass_on(change, {"layer": "L2", "verdict": UNKNOWN_VERDICT,
                                   "reason": "deleted: no writer to observe",
                                   "technique": None, "pid": None, "cmdline": None,
                                   "confidence": 0.0})
            return
        found = self.attributor.attribute(self.config.workspace / change.path, change.observed)
        if found is None:
            self._pass_on(change, {"layer": "L2", "verdict": UNKNOWN_VERDICT,
                                   "reason": "no autonomous writer seen",
                                   "technique": None, "pid": None, "cmdline": None,
                                   "confidence": 0.0})
            return
        self._drop(change, found)

    def _pass_on(self, change: Change, step: dict) -> None:
        self.stats[f"verdict_{UNKNOWN_VERDICT}"] += 1
        self.send(self.to_content, dataclasses.replace(change, trail=(*change.trail, step)))

    def _drop(self, change: Change, found: Attribution) -> None:
        self.stats[f"verdict_{SYSTEM_VERDICT}"] += 1
        step = {"layer": "L2", "verdict": SYSTEM_VERDICT,
                "reason": f"autonomous process {found.pid} holds it open for writing"
                          if found.technique == TECHNIQUE_LIVE else
                          f"autonomous process {found.pid} was seen writing it",
                "technique": found.technique, "pid": found.pid, "cmdline": found.cmdline,
                "confidence": found.confidence}
        self.log.debug("%s: %s is SYSTEM (%s)", self.actor_id, change.path, step["reason"])
        self.send(self.decisions, Decision(
            path=change.path, kind=change.kind, seq=change.seq, epoch=change.epoch,
            observed=change.observed, commit=False, action=l1_action(change),
            trail=(*change.trail, step)))

    def on_tick(self, now: float) -> None:
        self.attributor.tick(now)

    def wakeup_in(self) -> float | None:
        return self.attributor.wakeup_in(time.monotonic())

    def extra_status(self) -> dict:
        cache = self.attributor.cache
        return {"autonomous_pids": sorted(cache.processes),
                **{key: count for key, count in self.stats.items() if key.startswith("verdict_")},
                "sampled_paths": len(self.attributor.sampler.sightings),
                "samples": self.attributor.sampler.samples,
                "cache_refreshes": cache.refreshes,
                "access_denied": self.attributor.errors["access_denied"]}


if __name__ == "__main__":
    raise SystemExit(main(ProcessLayer))
