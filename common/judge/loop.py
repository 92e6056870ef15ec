"""The loop breaker: a path that changes only because gitsieve committed is held.  Socket-free.

Attribution can be wrong (the unprivileged sampler, a helper gap, an overflow), so this is
the last line of defence against the feedback loop a commit -> a write -> a commit ... that
an agent reacting to HEAD makes.  The debouncer feeds it every Decision and each moment one
of gitsieve's commits moved HEAD, looked up before each decision so that a reaction is never
judged before the commit it reacts to is known; all times are wall-clock seconds
(``Decision.observed`` is stamped by the watcher).

A change of a path is a *reaction* when its writer is not positively the person (SYSTEM or
UNKNOWN; SELF is gitsieve's own git and ignored), it is the path's first change since one of
gitsieve's commits, it was observed within ``[loop] window`` seconds of that commit, and the
path answered every commit since its previous reaction within that window.  The change that
ends a write observed under way (the file still open for writing) belongs to that write,
which began before any commit since: a loaded watcher that reports an agent's new file once
open and once closed, a commit between the two, does not make it a suspect twice over.  Any other
change of the path starts the count again; a reaction that is not committed (churn a layer
dropped) neither counts nor ends the count.  ``[loop] after`` reactions in a row and the path
is held (``Hold.FEEDBACK_LOOP``): never committed again until a write positively attributed
to the person, a committable change observed more than the window after gitsieve's latest
commit (no reaction: how a person's edit releases it where attribution never names the
person), or ``gitsieve learned --forget PATH``, releases it.  Holds are saved beside
the learned paths (``loops.json`` in the runtime directory).

Timing alone cannot tell a reactive writer from an editor that saves every couple of seconds
while gitsieve commits each save: both change shortly after each commit.  So the last
reaction must follow a *probe*: when a path is one reaction short, the judge asks the
debouncer to release nothing for a few seconds (longer than the path's quiet period plus the
window, and than ``PROBE_PERIODS`` times the path's own last interval between changes, up
to ``PROBE_MAX``; with some jitter).  A writer that changes on its own schedule changes
during the probe, with no commit to react to, and is cleared (a probe shorter than its
period ended before its next save, which then came right after the commit the probe had held
back); a reactive writer stays silent until the next commit, and its reaction to that commit
holds it.  The probe costs the person at most those seconds of sync latency, and only while
a path is suspected.

An agent that answers each commit with a *new* file (``reactions/r-1.md``, ``r-2.md`` ...)
changes no path twice.  So a new file (the content layer says so) also counts for its
directory, kept as the key ``DIR/*`` (``*`` for the top level): the directory reacts when
its first new file since a commit comes within the window after it, the directory had no
new file for ``BURST_QUIET_BEFORE`` seconds before that commit (a stream of new files runs
right up to each commit: a storm, not a reaction), and more new files after the same commit
are the same reaction.  Held, it holds the new files that arrive in it right after a commit;
one at a time no commit explains, or one positively the person's, releases it.
"""
from __future__ import annotations

import bisect
import logging
import random
import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from pathlib import Path

from gitsieve.common.judge.learning import LearnedStore, learnable
from gitsieve.common.protocol.messages import Decision
from gitsieve.common.protocol.states import Action, Hold, L2Reason, L3Reason, Why, Writer
from gitsieve.common.protocol.trail import ContentStep, ProcessStep, step_of

log = logging.getLogger(__name__)

LOOPS_FILE = "loops.json"  # beside learned.json
TRACKED_PATHS = 10_000  # paths whose recent changes are followed (least recent dropped)
COMMITS_KEPT = 256  # recent commit moments kept (only those within a window matter)
# A probe lasts the path's quiet period + the window + this, plus up to PROBE_JITTER more.
PROBE_MARGIN = 1.5
PROBE_JITTER = 1.0
PROBE_MIN = 3.0
# ... and at least this many of the path's own last interval between changes, up to
# PROBE_MAX seconds: a person saving a file every few seconds saves it during the probe.
PROBE_PERIODS = 1.5
PROBE_MAX = 15.0
# A change reaches the debouncer some time after it was observed (a loaded pipeline takes
# seconds): the count of a path that left a commit unanswered is dropped only this long
# after that commit's window closed.  (A late change is judged by its observed time anyway:
# this only forgets suspects that went quiet.)
ARRIVAL_SLACK = 30.0
# Suspects that let a commit pass are looked for this often (a storm makes thousands).
SWEEP_EVERY = 5.0
# A directory whose new files came this close before a commit was still being written:
# its files after that commit are a stream, not a reaction.  (A reactive agent's own files
# wait their quiet period, 0.5 s or more, before the commit they are in.)
BURST_QUIET_BEFORE = 0.4


@dataclass(slots=True)  # one per tracked path
class Track:
    """What the judge follows of one path."""

    last_change: float = float("-inf")  # observed time of its newest change
    reactions: int = 0  # reactions in a row
    writing: bool = False  # its newest change was observed with the file open for writing
    probe_started: float | None = None  # a probe runs for this path (wall time)
    probe_ends: float = 0.0
    probed: bool = False  # a probe ended with the path silent: the next reaction holds
    interval: float = 0.0  # seconds between its last two changes (observed)


class LoopJudge:
    def __init__(self, config, clock=time.time, rng: random.Random | None = None,
                 monotonic=time.monotonic):
        self.config = config
        self.monotonic = monotonic  # the clock of a Decision's ``written``
        self.after = max(2, config.loop_after) if config.loop_after else 0
        self.window = config.loop_window
        self.clock = clock
        self.rng = rng or random.Random()
        self.store = LearnedStore(Path(config.learned_file).with_name(LOOPS_FILE))
        self.held: dict[str, dict] = self.store.load()
        self.tracks: OrderedDict[str, Track] = OrderedDict()
        self.suspects: set[str] = set()  # tracked paths with reactions > 0
        self.probing: set[str] = set()  # suspects whose probe runs
        self._next_sweep = 0.0
        self.commits: deque[float] = deque(maxlen=COMMITS_KEPT)  # sorted moments

    # ----- inputs ------------------------------------------------------------------------
    def note_commit(self, moved_at: float) -> None:
        """One of gitsieve's commits moved HEAD at ``moved_at`` (wall time)."""
        if self.commits and moved_at < self.commits[-1]:
            bisect.insort(self.commits, moved_at)  # a report that arrived late
        else:
            self.commits.append(moved_at)
        for path in self.probing:
            track = self.tracks[path]
            if moved_at >= track.probe_started:
                # a commit during the probe (an executor backlog): it proves nothing
                self._start_probe(path, track)

    def observe(self, decision: Decision) -> str | None:
        """Feed one (non-stale) Decision; "held" or "released" when a hold changed."""
        if not self.after:
            return None
        step = step_of(decision.trail, ProcessStep)
        path = decision.path
        new_file = _is_new_file(decision)
        held_key = path if path in self.held else (
            directory_key(path) if new_file and directory_key(path) in self.held else None)
        if step is not None and step.verdict == Writer.USER:
            self._forget_track(path)
            if held_key is not None:
                return self.release(held_key, f"written by your process {step.pid}")
            return None
        if (step is not None and step.verdict == Writer.SELF) or (
                step is None and decision.action == Action.BLOCK):
            return None  # gitsieve's own git; never committable
        if held_key is not None:
            if self._written_by_then(decision, self.held[held_key].get("held_at")):
                # The held version reported again (a reconcile sends a dirty path every
                # minute, with the time it was seen): nothing was written since the hold.
                return None
            moment = self._written_at(decision)
            commit = self._latest_commit(moment)
            if decision.commit and (commit is None or moment - commit > self.window):
                # Not a reaction: a writer that reacts to commits changes the path only
                # right after one.  The unprivileged sampler never names the person, so
                # this is how a person's own edit of a held path releases it there.
                return self.release(held_key, "changed at a time no commit explains")
            return None
        if not learnable(path):
            return None
        if step is not None and step.reason == L2Reason.NO_AUTONOMOUS_PROCESS:
            # Unprivileged, and no autonomous process ran: nothing to suspect of reacting.
            # A person or a test saving right after each of gitsieve's commits reads
            # exactly like a reactive agent, and was held at its fourth save.
            self._forget_track(path)
            return None
        changed = self._change(path, decision.observed, decision.commit,
                               still_open=bool(decision.open_since))
        if changed is None and new_file:
            changed = self._change(directory_key(path), decision.observed, decision.commit,
                                   burst=True)
        return changed

    def tick(self, now: float | None = None) -> None:
        """End probes that ran their time and, every SWEEP_EVERY seconds, give up on
        commits left unanswered."""
        now = self.clock() if now is None else now
        for path in [p for p in self.probing if now >= self.tracks[p].probe_ends]:
            self.probing.discard(path)
            track = self.tracks[path]
            track.probe_started, track.probed = None, True
        if now < self._next_sweep:
            return
        self._next_sweep = now + SWEEP_EVERY
        for path in [p for p in self.suspects if p not in self.probing]:
            track = self.tracks[path]
            unanswered = self._first_commit_after(track.last_change)
            if unanswered is not None and now > unanswered + self.window + ARRIVAL_SLACK:
                self._reset(path, track)  # it let a commit pass: not a reaction to commits

    # ----- the count -----------------------------------------------------------------
    def _change(self, path: str, observed: float, committing: bool,
                still_open: bool = False, burst: bool = False) -> str | None:
        """``burst``: ``path`` is a directory's key, changed by a new file in it."""
        track = self.tracks.get(path)
        if track is None:
            track = self.tracks[path] = Track()
            while len(self.tracks) > TRACKED_PATHS:
                self._forget_track(next(iter(self.tracks)))
        self.tracks.move_to_end(path)
        if track.writing:
            # the end (or more) of a write already under way: the same write, not a new one
            track.writing = still_open
            track.last_change = max(track.last_change, observed)
            return None
        track.writing = still_open
        commit = self._latest_commit(observed)
        # the earliest commit since its previous reaction, which it must have answered
        unanswered = self._first_commit_after(track.last_change) if track.reactions else None
        if burst and commit is not None and track.last_change >= commit \
                and observed - commit <= self.window:
            track.last_change = max(track.last_change, observed)
            return None  # another new file of the reaction already counted
        reaction = (commit is not None and track.last_change < commit
                    and observed - commit <= self.window
                    and (unanswered is None or observed - unanswered <= self.window)
                    and not (burst and commit - track.last_change < BURST_QUIET_BEFORE))
        log.debug("%s changed at %.3f: latest commit %s, last change %.3f, unanswered %s: %s",
                  path, observed, commit, track.last_change, unanswered,
                  "reaction" if reaction else "not a reaction")
        if track.last_change < observed:
            if track.last_change > float("-inf"):
                track.interval = observed - track.last_change
            track.last_change = observed
        if not reaction:
            self._reset(path, track)
            return None
        if track.probe_started is not None or not committing:
            # reacting to a commit made during the probe (the probe restarted), or a change
            # that will not be committed: it cannot feed a loop, nor does it end the count
            return None
        track.reactions += 1
        self.suspects.add(path)
        if track.reactions >= self.after and track.probed:
            return self._hold(path, track)
        if track.reactions >= self.after - 1 and not track.probed:
            self._start_probe(path, track)
        return None

    def _written_at(self, decision: Decision) -> float:
        """Wall time of the last write of the version ``decision`` reports: when it was
        written, not when a reconcile found it again; its observed time when not known."""
        if not decision.written:
            return decision.observed
        return self.clock() - (self.monotonic() - decision.written)

    def _written_by_then(self, decision: Decision, moment) -> bool:
        """Whether the version ``decision`` reports was last written at or before the wall
        time ``moment`` (False when either is unknown)."""
        if not decision.written or not isinstance(moment, (int, float)):
            return False
        return self._written_at(decision) <= moment

    def _latest_commit(self, moment: float) -> float | None:
        index = bisect.bisect_right(self.commits, moment)
        return self.commits[index - 1] if index else None

    def _first_commit_after(self, moment: float) -> float | None:
        index = bisect.bisect_right(self.commits, moment)
        return self.commits[index] if index < len(self.commits) else None

    def _start_probe(self, path: str, track: Track) -> None:
        now = self.clock()
        quiet = self.config.debounce_for(path, Action.ANALYZE)
        length = max(PROBE_MIN, quiet + self.window + PROBE_MARGIN,
                     min(PROBE_MAX, PROBE_PERIODS * track.interval))
        track.probe_started = now
        track.probe_ends = now + length + self.rng.uniform(0.0, PROBE_JITTER)
        track.probed = False
        self.probing.add(path)

    def _reset(self, path: str, track: Track) -> None:
        track.reactions = 0
        track.probe_started, track.probed = None, False
        self.suspects.discard(path)
        self.probing.discard(path)

    def _forget_track(self, path: str) -> None:
        if self.tracks.pop(path, None) is not None:
            self.suspects.discard(path)
            self.probing.discard(path)

    def _hold(self, path: str, track: Track) -> str:
        self._forget_track(path)
        self.held[path] = {"held_at": self.clock(), "reactions": track.reactions,
                           "window_seconds": self.window}
        self.store.save(self.held)
        log.warning("%s is held as a feedback loop: changed right after %d of gitsieve's "
                    "commits in a row and at no other time (release it with `gitsieve "
                    "learned --forget %s`, or by editing it yourself)", path,
                    track.reactions, path)
        return "held"

    # ----- what the debouncer asks -----------------------------------------------------
    def why_decision_held(self, decision: Decision) -> Why | None:
        """Why ``decision``'s change is held: its path is, or it is a new file in a held
        directory."""
        why = self.why_held(decision.path)
        if why is None and _is_new_file(decision):
            why = self.why_held(directory_key(decision.path))
        return why

    def why_held(self, path: str) -> Why | None:
        entry = self.held.get(path)
        if entry is None:
            return None
        return Why(Hold.FEEDBACK_LOOP, f"it changed right after {entry.get('reactions', '?')} "
                                       "of gitsieve's commits in a row and at no other time; "
                                       "your own write, or `gitsieve learned --forget PATH`, "
                                       "releases it")

    def probe_remaining(self, now: float | None = None) -> float:
        """Seconds the debouncer should still release nothing (0: none)."""
        now = self.clock() if now is None else now
        ends = [self.tracks[p].probe_ends for p in self.probing]
        return max(0.0, max(ends) - now) if ends else 0.0

    def release(self, path: str | None, reason: str = "released by command") -> str | None:
        """Release ``path`` (None: every held path); "released" when one was held."""
        if path is None:
            changed = bool(self.held)
            self.held.clear()
        else:
            changed = self.held.pop(path, None) is not None
            self._forget_track(path)
        if not changed:
            return None
        self.store.save(self.held)
        log.info("feedback-loop hold released on %s: %s",
                 path if path is not None else "every path", reason)
        return "released"

    def listing(self) -> list[dict]:
        return [{"path": path, **entry} for path, entry in sorted(self.held.items())]

    def status(self) -> dict:
        return {"held": len(self.held), "suspects": len(self.suspects),
                "probe_remaining": round(self.probe_remaining(), 3)}


def directory_key(path: str) -> str:
    """The key a directory's new files are counted under: ``DIR/*``, or ``*`` at the top."""
    parent = path.rpartition("/")[0]
    return f"{parent}/*" if parent else "*"


def _is_new_file(decision: Decision) -> bool:
    content = step_of(decision.trail, ContentStep)
    return content is not None and content.reason == L3Reason.NEW_FILE
