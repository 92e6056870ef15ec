"""Process layer (L2): who wrote the file.  Drops autonomous (and gitsieve's own) writes.

Sockets:
  - DEALER connect endpoints.stage_out("l2")  Changes from the router (L1's ANALYZE verdicts);
                                              Ready (credit) out, see common.actor
  - PUSH  connect  endpoints.stage_in("l3")   Changes with a USER or UNKNOWN writer, to L3
  - PUSH  connect  endpoints.decisions        Decision(commit=False) for SYSTEM/SELF writers
                                              and for learned paths without a user writer
  - SUB   connect  endpoints.feed             Decision (the debouncer's live feed): which
                                              writes other workers already accounted for
  - (privileged mode: the fanotify (fd and FID groups) and proc-connector descriptors,
     watched in the poll loop)
Messages in: Change, Decision (feed).  Out: Decision or Change, each with an L2 trail step
``{"layer": "L2", "verdict": "SYSTEM"|"SELF"|"USER"|"UNKNOWN", "reason", "technique",
"pid", "cmdline", "confidence", "ancestor_pid", "ancestor_cmdline", "matched_by", ...}``.
Runs scaled: ``python -m gitsieve.actors.process_layer --instance N``.

``[filter] attribution`` picks the technique (:func:`common.attribution.make_attributor`):
exact (fanotify + lineage; each worker owns its own fanotify group, drained before every
judgement, so the writer of a change is always already known) or the psutil fallback.
Deletions (and renames away) are judged the same way by who removed the name (exact mode:
fanotify FID events); unprivileged, a deletion's remover is unknown.  A USER writer still
goes to L3, which then only refuses junk and changes identical to HEAD (a user's
timestamp-only edit is committed).  An unknown writer goes to L3 for a full
content analysis, never to SYSTEM.  A path L1 marks as learned is dropped ("learned")
unless the writer is positively the user, whose Decision then lets the debouncer unlearn it.

Exact mode weighs, for a change, only the writes no earlier change of the path accounted
for: each L2 step carries ``writes_until`` (newest write considered) and every worker learns
it from its own verdicts and from the feed, so an autonomous rewrite after the user's
change was judged (and committed) is SYSTEM, not "mixed with the user's earlier write".
A second report of writes already judged (the watcher reports a new file's MODIFY and
CLOSE_WRITE; workers stamp the same write a little apart) repeats the earlier verdict.
"""
from __future__ import annotations

import dataclasses
import time

import zmq

from gitsieve.common.actor.base import Actor, main
from gitsieve.common.judge.attribution import make_attributor
from gitsieve.common.judge.attribution.base import SELF, SYSTEM, USER, Attribution
from gitsieve.common.judge.attribution.exact import WRITE_LOOKBACK
from gitsieve.common.judge.content import l1_action
from gitsieve.common.judge.learning import is_learned
from gitsieve.common.protocol.messages import DELETE, Change, Decision

SYSTEM_VERDICT, SELF_VERDICT, USER_VERDICT, UNKNOWN_VERDICT = (
    "SYSTEM", "SELF", "USER", "UNKNOWN")
_VERDICT_OF = {SYSTEM: SYSTEM_VERDICT, SELF: SELF_VERDICT, USER: USER_VERDICT}
_REPEATABLE = (SYSTEM_VERDICT, SELF_VERDICT, USER_VERDICT)
_NO_EVIDENCE = {"technique": None, "pid": None, "cmdline": None, "confidence": 0.0}


class ProcessLayer(Actor):
    name = "l2"

    def setup(self) -> None:
        endpoints = self.config.endpoints
        self.prepare()
        self.to_content = self.connect(zmq.PUSH, endpoints.stage_in("l3"))
        self.decisions = self.connect(zmq.PUSH, endpoints.decisions)
        self.feed = self.connect(zmq.SUB, endpoints.feed, hwm=10_000)
        self.changes = self.take_stage("l2", {Change: self.on_change})
        self.add_input(self.feed, {Decision: self.on_feed})

    def prepare(self) -> None:
        """The attributor, its descriptors registered; handler tests call this alone."""
        self.attributor = make_attributor(self.config)
        self.mode = self.attributor.mode
        for fd, callback in self.attributor.fds():
            self.watch_fd(fd, callback)
        if self.mode == "psutil":
            self.attributor.cache.refresh()
        # path -> (newest write already judged, the L2 step that judged it)
        self.accounted: dict[str, tuple[float, dict]] = {}
        self._next_forget = 0.0
        self.outcomes = {SYSTEM_VERDICT: self._drop, SELF_VERDICT: self._drop,
                         USER_VERDICT: self._pass_on, UNKNOWN_VERDICT: self._pass_on}
        self.log.info("%s: attribution by %s", self.actor_id, self.mode)

    # ----- judging ----------------------------------------------------------------------
    def on_feed(self, decision: Decision) -> None:
        for step in decision.trail:
            if isinstance(step, dict) and step.get("layer") == "L2":
                self.note_accounted(decision.path, step)

    def note_accounted(self, path: str, step: dict) -> None:
        until = step.get("writes_until")
        if (isinstance(until, (int, float)) and not isinstance(until, bool)
                and step.get("verdict") in _REPEATABLE
                and until > self.accounted.get(path, (0.0, None))[0]):
            self.accounted[path] = (float(until), step)

    def forget_accounted(self, wall: float) -> None:
        """Entries older than the lookback no longer narrow any window."""
        stale = [path for path, (until, _) in self.accounted.items()
                 if until < wall - WRITE_LOOKBACK]
        for path in stale:
            del self.accounted[path]

    def on_change(self, change: Change) -> None:
        verdict, step = self.judge(change)
        self.note_accounted(change.path, step)
        learned = is_learned(change)
        if learned and verdict != USER_VERDICT:
            # A learned path is blocked unless the user is positively its writer.
            step = {**step, "reason": f"learned: {step['reason']}", "learned": True}
            self.stats["learned_drops"] += 1
            self._drop(change, verdict, step)
            return
        self.outcomes[verdict](change, verdict, step)

    def judge(self, change: Change) -> tuple[str, dict]:
        if change.kind == DELETE:
            return self.judge_removal(change)
        until, prior = self.accounted.get(change.path, (0.0, None))
        found = self.attributor.attribute(self.config.workspace / change.path,
                                          change.observed, until)
        if found is None and prior is not None and until >= change.observed - WRITE_LOOKBACK:
            self.stats["repeated"] += 1
            return prior["verdict"], {**prior, "repeated": True,
                                      "reason": f"same writes as an earlier change: "
                                                f"{prior['reason']}"}
        if found is None:
            step = {"layer": "L2", "verdict": UNKNOWN_VERDICT, "mode": self.mode,
                    "reason": "no write by a known process seen" if self.mode != "psutil"
                    else "no autonomous writer seen", **_NO_EVIDENCE}
            suspects = self.attributor.suspects(change.observed)
            if suspects:  # evidence only: see common.attribution.IO_WINDOW
                step["io_suspects"] = [{"pid": pid, "cmdline": cmd} for pid, cmd in suspects]
            return UNKNOWN_VERDICT, step
        verdict = _VERDICT_OF[found.writer]
        return verdict, {"layer": "L2", "verdict": verdict, "mode": self.mode,
                         "reason": self._reason(found), **found.evidence()}

    def judge_removal(self, change: Change) -> tuple[str, dict]:
        """A deletion: its remover (exact mode with fanotify FID) judged like a writer."""
        found = self.attributor.attribute_removal(self.config.workspace / change.path,
                                                  change.observed)
        if found is None:
            reason = ("deleted: no writer to observe" if self.mode == "psutil"
                      else "deleted: no removal by a known process seen")
            return UNKNOWN_VERDICT, {"layer": "L2", "verdict": UNKNOWN_VERDICT,
                                     "reason": reason, "mode": self.mode, **_NO_EVIDENCE}
        verdict = _VERDICT_OF[found.writer]
        return verdict, {"layer": "L2", "verdict": verdict, "mode": self.mode,
                         "reason": f"deleted: {self._reason(found)}", **found.evidence()}

    @staticmethod
    def _reason(found: Attribution) -> str:
        action = found.action
        who = f"process {found.pid}"
        if found.ancestor_pid not in (None, found.pid):
            who += f" (descendant of {found.ancestor_pid})"
        if found.writer == USER:
            return f"{action} by non-autonomous {who}"
        if found.writer == SELF:
            return f"{action} by gitsieve's own {who}"
        if found.technique == "open-files":
            return f"autonomous process {found.pid} holds it open for writing"
        if found.technique == "open-files-sampled":
            return f"autonomous process {found.pid} was seen writing it"
        return f"{action} by autonomous {who}: {found.matched_by}"

    def _pass_on(self, change: Change, verdict: str, step: dict) -> None:
        self.stats[f"verdict_{verdict}"] += 1
        self.send(self.to_content, dataclasses.replace(change, trail=(*change.trail, step)))

    def _drop(self, change: Change, verdict: str, step: dict) -> None:
        self.stats[f"verdict_{verdict}"] += 1
        self.log.debug("%s: %s dropped (%s)", self.actor_id, change.path, step["reason"])
        self.send(self.decisions, Decision(
            path=change.path, kind=change.kind, seq=change.seq, epoch=change.epoch,
            observed=change.observed, commit=False, action=l1_action(change),
            trail=(*change.trail, step)))

    # ----- actor hooks --------------------------------------------------------------------
    def on_tick(self, now: float) -> None:
        self.attributor.tick(now)
        if now >= self._next_forget:
            self._next_forget = now + WRITE_LOOKBACK
            self.forget_accounted(time.time())

    def wakeup_in(self) -> float | None:
        return self.attributor.wakeup_in(time.monotonic())

    def extra_status(self) -> dict:
        if not hasattr(self, "attributor"):
            return {}
        return {"attribution": self.mode, **self.attributor.status(),
                "learned_drops": self.stats["learned_drops"],
                **{key: count for key, count in self.stats.items() if key.startswith("verdict_")}}

    def shutdown(self) -> None:
        if hasattr(self, "attributor"):
            self.attributor.close()


if __name__ == "__main__":
    raise SystemExit(main(ProcessLayer))
