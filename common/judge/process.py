"""The process judge (L2): who wrote a change.  Socket-free; the L2 actor feeds it.

``[filter] attribution`` picks the technique (:func:`.attribution.make_attributor`): exact
(fanotify + lineage, L2's own or ``gitsieve helper``'s; the writer of a change is always
already known, or the change is UNKNOWN when its writes may have been missed) or the psutil
fallback.  Deletions (and renames away) are judged by who removed the name (exact mode:
fanotify FID events); unprivileged, a deletion's remover is unknown.  A USER writer still
goes to L3, which then only refuses changes identical to HEAD (a user's timestamp-only edit
is committed).  An unknown writer goes to L3 for a full content analysis, never SYSTEM.  A
path L1 marks as learned is dropped ("learned") unless the writer is positively the user.

Exact mode weighs, for a change, only the writes no earlier change of the path accounted
for: each step carries ``writes_until`` (newest write weighed) and the judge learns it from
its own verdicts and, through :meth:`note_accounted`, from other workers' (the debouncer's
feed), so an autonomous rewrite after the user's change was judged (and committed) is
SYSTEM, not "mixed with the user's earlier write".  A second report of writes already
judged (the watcher reports a new file's MODIFY and CLOSE_WRITE; workers stamp the same
write a little apart) repeats the earlier verdict.

Over every technique lies the agent journal (:mod:`.attribution.journal`): a version that
a process run under ``gitsieve agent`` produced, or that ``gitsieve mark --system``
declared, is SYSTEM whatever the base technique says (UNKNOWN when the base names a
user process as well).
"""
from __future__ import annotations

import dataclasses
import os
import time

from gitsieve.common.judge.attribution import make_attributor
from gitsieve.common.judge.attribution.exact import WRITE_LOOKBACK
from gitsieve.common.judge.attribution.journal import JournalOverlay
from gitsieve.common.protocol.messages import Change
from gitsieve.common.protocol.states import ChangeKind, L2Reason, Mode, Writer
from gitsieve.common.protocol.trail import ProcessStep, Suspect, is_learned

# Verdicts a repeated report of the same writes may take over as they are.
_REPEATABLE = (Writer.SYSTEM, Writer.SELF, Writer.USER)


def accountable(step: ProcessStep) -> bool:
    """A verdict whose weighed writes every L2 worker remembers (:meth:`note_accounted`)."""
    return step.writes_until is not None and step.verdict in _REPEATABLE


class ProcessJudge:
    def __init__(self, config, attributor=None):
        self.config = config
        self._root = str(config.workspace)
        base = attributor if attributor is not None else make_attributor(config)
        # what `gitsieve agent` recorded overrides the base technique (attribution.journal)
        self.attributor = JournalOverlay(config, base)
        self.mode: Mode = self.attributor.mode
        # path -> (newest write already judged, the step that judged it)
        self.accounted: dict[str, tuple[float, ProcessStep]] = {}
        self.repeated = 0
        self.learned_drops = 0
        self._next_forget = 0.0

    def judge(self, change: Change) -> ProcessStep:
        """The change's L2 step (a learned path not written by the user is dropped)."""
        step = (self._judge_removal(change) if change.kind == ChangeKind.DELETE
                else self._judge_write(change))
        self.note_accounted(change.path, step)
        if is_learned(change.trail) and step.verdict != Writer.USER:
            self.learned_drops += 1
            return dataclasses.replace(step, learned=True)
        return step

    @staticmethod
    def drops(step: ProcessStep) -> bool:
        """Whether the change ends here (not committed): an autonomous or gitsieve's own
        writer, or a learned path the user did not write."""
        return step.learned or step.verdict in (Writer.SYSTEM, Writer.SELF)

    def _judge_write(self, change: Change) -> ProcessStep:
        until, prior = self.accounted.get(change.path, (0.0, None))
        found = self.attributor.attribute(os.path.join(self._root, change.path),
                                          change.observed, until)
        if found is None and prior is not None and until >= change.observed - WRITE_LOOKBACK:
            self.repeated += 1
            return dataclasses.replace(prior, repeated=True)
        if found is None:
            if self.mode != Mode.PSUTIL:
                reason = L2Reason.NO_WRITER_SEEN
            elif self.attributor.no_autonomous_process(change.observed):
                reason = L2Reason.NO_AUTONOMOUS_PROCESS
            else:
                reason = L2Reason.NO_AUTONOMOUS_WRITER_SEEN
            # evidence only: see attribution.sampled.IO_WINDOW
            suspects = tuple(Suspect(pid, cmdline) for pid, cmdline in
                             self.attributor.suspects(change.observed))
            return ProcessStep(Writer.UNKNOWN, reason, self.mode, io_suspects=suspects)
        return self._step(found)

    def _judge_removal(self, change: Change) -> ProcessStep:
        """A deletion: its remover (exact mode with fanotify FID) judged like a writer."""
        found = self.attributor.attribute_removal(os.path.join(self._root, change.path),
                                                  change.observed)
        if found is None:
            reason = (L2Reason.REMOVER_UNOBSERVABLE if self.mode == Mode.PSUTIL
                      else L2Reason.NO_REMOVAL_SEEN)
            return ProcessStep(Writer.UNKNOWN, reason, self.mode)
        return self._step(found)

    def _step(self, found) -> ProcessStep:
        # UNKNOWN: writes may have been missed, or the writer could not be read
        reason = L2Reason.WRITER_UNKNOWN if found.writer == Writer.UNKNOWN else \
            L2Reason.IDENTIFIED
        return found.evidence(ProcessStep(found.writer, reason, self.mode))

    def note_accounted(self, path: str, step: ProcessStep) -> None:
        """Remember the newest write a verdict (ours or another worker's) weighed."""
        until = step.writes_until
        if accountable(step) and until > self.accounted.get(path, (0.0, None))[0]:
            self.accounted[path] = (until, dataclasses.replace(step, learned=False))

    def tick(self, now: float) -> None:
        self.attributor.tick(now)
        if now >= self._next_forget:
            self._next_forget = now + WRITE_LOOKBACK
            horizon = time.time() - WRITE_LOOKBACK
            for path in [p for p, (until, _) in self.accounted.items() if until < horizon]:
                del self.accounted[path]

    def wakeup_in(self, now: float) -> float | None:
        return self.attributor.wakeup_in(now)

    def status(self) -> dict:
        return {"attribution": self.mode, **self.attributor.status(),
                "accounted_paths": len(self.accounted), "repeated": self.repeated,
                "learned_drops": self.learned_drops}

    def close(self) -> None:
        self.attributor.close()
