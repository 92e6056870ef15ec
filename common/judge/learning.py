"""Self-adaptive learning: paths only system writers change, again and again, become BLOCK.

- :class:`Learner` (owned by the debouncer, the single writer: it sees every Decision with
  its trail) counts, per path, drops whose L2 step named an autonomous writer with
  confidence >= ``MIN_CONFIDENCE``.  ``config.learn_after`` of them within
  ``config.learn_window`` seconds, with no commit in between, and the path is learned.
  A Decision that commits a path whose L2 step positively named the user unlearns it;
  learning never comes from user writes (any commit resets the count).  It counts at most
  ``MAX_COUNTED`` paths: the counts of the least recently changed go first, as do those
  whose changes all fell out of the window (an agent's storm of new files, each changed
  once, would otherwise keep one entry per file for good).
- :class:`LearnedStore` persists the set in ``config.learned_file`` (JSON, written
  atomically): at once, except within ``SAVE_EVERY`` of the last write, when what a burst
  learns is written by ``save_due`` at the end of that second (an agent's storm learned
  200 paths one by one and rewrote the whole file each time: 1.6 s of JSON).
  :class:`LearnedSet` is the read side for L1, reloaded when the file changes.
- L1 does not BLOCK a learned path: it marks its step ``learned`` and sends it to L2, which
  drops it ("learned") unless the writer is positively the user.
"""
from __future__ import annotations

import json
import logging
import os
import time
from collections import OrderedDict
from pathlib import Path

from gitsieve.common.config.runtime import write_atomic
from gitsieve.common.protocol.messages import bad_path_reason
from gitsieve.common.protocol.states import Technique, Writer
from gitsieve.common.protocol.trail import ProcessStep, step_of

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
# Only exact (fanotify or helper, 1.0) and live open-file (0.9) attributions teach; a sampled
# sighting is too weak to block a path for good.
MIN_CONFIDENCE = 0.9
# The agent journal names the system's version exactly every time: learning from it would
# only block the person's later edits of those paths.
NEVER_TEACH = frozenset({Technique.AGENT_JOURNAL, Technique.AGENT_MARK})
MAX_COUNTED = 10_000
SAVE_EVERY = 1.0  # seconds: the most often learning rewrites the learned file


def learnable(path: str) -> bool:
    """A workspace path a change could carry: valid (``bad_path_reason``), with no empty or
    ``.`` component, and not inside ``.git`` (never watched: only a forged frame names it)."""
    if bad_path_reason(path):
        return False
    parts = path.split("/")
    return parts[0] != ".git" and not any(part in ("", ".") for part in parts)


class LearnedStore:
    """The learned paths on disk: ``{"version": 1, "paths": {path: {...}}}``."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def load(self) -> dict[str, dict]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:  # unreadable or corrupt: start empty, say so
            log.error("cannot read learned paths from %s: %s", self.path, exc)
            return {}
        paths = data.get("paths") if isinstance(data, dict) else None
        if not isinstance(paths, dict):
            log.error("%s: no 'paths' table; ignoring it", self.path)
            return {}
        return {str(path): entry if isinstance(entry, dict) else {}
                for path, entry in paths.items()}

    def save(self, paths: dict[str, dict]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps({"version": FORMAT_VERSION, "paths": paths}, indent=1,
                          sort_keys=True)
        write_atomic(self.path, text.encode("utf-8"))


class LearnedSet:
    """Read side for L1: the learned paths, re-read whenever the file changes."""

    def __init__(self, path: str | os.PathLike, check_interval: float = 0.2):
        self.store = LearnedStore(path)
        self.check_interval = check_interval
        self.paths: frozenset[str] = frozenset()
        self._signature: tuple | None = None
        self._next_check = 0.0

    def refresh(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now < self._next_check:
            return
        self._next_check = now + self.check_interval
        try:
            info = os.stat(self.store.path)
            signature = (info.st_ino, info.st_mtime_ns, info.st_size)
        except FileNotFoundError:
            signature = None
        if signature != self._signature or force:
            self._signature = signature
            self.paths = frozenset(self.store.load()) if signature else frozenset()

    def __contains__(self, path: str) -> bool:
        return path in self.paths


class Learner:
    """Counts system-only changes per path and learns / unlearns (see module doc)."""

    def __init__(self, config, clock=time.time):
        self.enabled = config.learning
        self.after = max(1, config.learn_after)
        self.window = config.learn_window
        self.store = LearnedStore(config.learned_file)
        self.clock = clock
        self.learned: dict[str, dict] = self.store.load()
        # path -> its counted changes' moments; least recently changed first
        self.counts: OrderedDict[str, list[float]] = OrderedDict()
        self._unsaved = False  # learned paths not yet in the file
        self._next_save = 0.0  # monotonic

    def _save(self) -> None:
        self.store.save(self.learned)
        self._unsaved = False
        self._next_save = time.monotonic() + SAVE_EVERY

    def save_wait(self) -> float | None:
        """Seconds until learned paths wait to be written (None: none waits)."""
        return max(0.0, self._next_save - time.monotonic()) if self._unsaved else None

    def save_due(self, at_exit: bool = False) -> None:
        """Write what was learned since the last write once ``SAVE_EVERY`` has passed (at
        exit, at once)."""
        wait = self.save_wait()
        if wait is not None and (wait == 0 or at_exit):
            self._save()

    def observe(self, decision) -> str | None:
        """Feed one Decision; return "learned" or "unlearned" when the set changed."""
        step = step_of(decision.trail, ProcessStep)
        path = decision.path
        if decision.commit:
            self.counts.pop(path, None)
            if path in self.learned and step is not None and step.verdict == Writer.USER:
                return self.forget(path, reason=f"user write by pid {step.pid}")
            return None
        if not self.enabled or path in self.learned or step is None:
            return None
        if (step.verdict != Writer.SYSTEM or step.confidence < MIN_CONFIDENCE
                or step.technique in NEVER_TEACH):
            return None
        if not learnable(path):  # never learn a path no change could carry
            return None
        now = self.clock()
        cutoff = now - self.window
        seen = self.counts.pop(path, [])
        seen = [moment for moment in seen[-(self.after - 1):] if moment >= cutoff] + [now]
        self.counts[path] = seen
        while self.counts and (len(self.counts) > MAX_COUNTED
                               or next(iter(self.counts.values()))[-1] < cutoff):
            self.counts.popitem(last=False)
        if len(seen) < self.after:
            return None
        del self.counts[path]
        self.learned[path] = {"learned_at": now, "changes": self.after,
                              "window_seconds": self.window,
                              "writer_pid": step.pid,
                              "writer_cmdline": step.cmdline,
                              "ancestor_cmdline": step.ancestor_cmdline,
                              "technique": step.technique}
        if time.monotonic() >= self._next_save:
            self._save()
        else:
            self._unsaved = True
        log.info("learned %s as BLOCK: %d system-only changes within %.0f s (writer %s)",
                 path, self.after, self.window, step.cmdline)
        return "learned"

    def forget(self, path: str | None, reason: str = "forgotten by command") -> str | None:
        """Unlearn ``path`` (None: every path)."""
        if path is None:
            changed = bool(self.learned)
            self.learned.clear()
            self.counts.clear()
        else:
            changed = self.learned.pop(path, None) is not None
            self.counts.pop(path, None)
        if not changed:
            return None
        self._save()
        log.info("unlearned %s: %s", path if path is not None else "every path", reason)
        return "unlearned"

    def listing(self) -> dict:
        return {"learned": [{"path": path, **entry}
                            for path, entry in sorted(self.learned.items())],
                "counting": {path: len(seen) for path, seen in self.counts.items()}}
