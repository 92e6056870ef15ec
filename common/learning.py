"""Self-adaptive learning: paths only system writers change, again and again, become BLOCK.

- :class:`Learner` (owned by the debouncer, the single writer: it sees every Decision with
  its trail) counts, per path, drops whose L2 step named an autonomous writer with
  confidence >= ``MIN_CONFIDENCE``.  ``config.learn_after`` of them within
  ``config.learn_window`` seconds, with no commit in between, and the path is learned.
  A Decision that commits a path whose L2 step positively named the user unlearns it;
  learning never comes from user writes (any commit resets the count).
- :class:`LearnedStore` persists the set in ``config.learned_file`` (JSON, written
  atomically).  :class:`LearnedSet` is the read side for L1, reloaded when the file changes.
- L1 does not BLOCK a learned path: it marks its step ``"learned": True`` and sends it to
  L2, which drops it ("learned") unless the writer is positively the user.
- :func:`learned_main` is ``gitsieve learned [--forget PATH | --all] [--json]``.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from collections import deque
from pathlib import Path

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
# Only exact (fanotify, 1.0) and live open-file (0.9) attributions teach; a sampled
# sighting is too weak to block a path for good.
MIN_CONFIDENCE = 0.9
LEARNED_FLAG = "learned"


def is_learned(change) -> bool:
    """True when L1 marked this Change's path as learned."""
    return any(isinstance(step, dict) and step.get("layer") == "L1"
               and step.get(LEARNED_FLAG) is True for step in change.trail)


def _l2_step(trail) -> dict | None:
    for step in trail:
        if isinstance(step, dict) and step.get("layer") == "L2":
            return step
    return None


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
        fd, tmp = tempfile.mkstemp(prefix=".learned-", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(text)
            os.replace(tmp, self.path)
        except BaseException:
            os.unlink(tmp)
            raise


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
        self.counts: dict[str, deque[float]] = {}

    def observe(self, decision) -> str | None:
        """Feed one Decision; return "learned" or "unlearned" when the set changed."""
        step = _l2_step(decision.trail)
        path = decision.path
        if decision.commit:
            self.counts.pop(path, None)
            if path in self.learned and step and step.get("verdict") == "USER":
                return self.forget(path, reason=f"user write by pid {step.get('pid')}")
            return None
        if not self.enabled or path in self.learned or step is None:
            return None
        if step.get("verdict") != "SYSTEM" or (step.get("confidence") or 0) < MIN_CONFIDENCE:
            return None
        now = self.clock()
        seen = self.counts.setdefault(path, deque(maxlen=self.after))
        seen.append(now)
        while seen and seen[0] < now - self.window:
            seen.popleft()
        if len(seen) < self.after:
            return None
        del self.counts[path]
        self.learned[path] = {"learned_at": now, "changes": self.after,
                              "window_seconds": self.window,
                              "writer_pid": step.get("pid"),
                              "writer_cmdline": step.get("cmdline"),
                              "ancestor_cmdline": step.get("ancestor_cmdline") or "",
                              "technique": step.get("technique")}
        self.store.save(self.learned)
        log.info("learned %s as BLOCK: %d system-only changes within %.0f s (writer %s)",
                 path, self.after, self.window, step.get("cmdline"))
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
        self.store.save(self.learned)
        log.info("unlearned %s: %s", path if path is not None else "every path", reason)
        return "unlearned"

    def listing(self) -> dict:
        return {"learned": [{"path": path, **entry}
                            for path, entry in sorted(self.learned.items())],
                "counting": {path: len(seen) for path, seen in self.counts.items()}}


# ----- gitsieve learned ------------------------------------------------------------------
def learned_main(argv: list[str] | None = None) -> int:
    """``gitsieve learned [--workspace DIR] [--config FILE] [--forget PATH | --all] [--json]``.

    Talks to the running debouncer (the single writer of the file); when gitsieve is not
    running, reads or edits the file itself.  Exit 0 ok, 1 nothing to forget, 2 bad input.
    """
    from common import config as config_mod
    from common import control
    parser = argparse.ArgumentParser(prog="gitsieve learned",
                                     description="list or forget learned BLOCK paths")
    parser.add_argument("--workspace", default=os.environ.get("GITSIEVE_WORKSPACE"))
    parser.add_argument("--config", default=None)
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--forget", metavar="PATH", help="unlearn one path")
    group.add_argument("--all", action="store_true", help="unlearn every path")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    try:
        cfg = config_mod.load(args.workspace, args.config)
    except config_mod.ConfigError as exc:
        print(f"gitsieve learned: {exc}", file=sys.stderr)
        return 2
    forgetting = args.all or args.forget is not None
    try:
        if "debouncer" not in control.known_actors(cfg):
            raise control.Unreachable("no debouncer control socket")
        if forgetting:
            reply = control.request(cfg, "debouncer", "forget",
                                    {"path": None if args.all else args.forget})
        else:
            reply = control.request(cfg, "debouncer", "learned")
        if not reply.ok:
            print(f"gitsieve learned: debouncer: {reply.error}", file=sys.stderr)
            return 2
        data, where = reply.data, "running debouncer"
    except control.Unreachable:
        store = LearnedStore(cfg.learned_file)
        paths = store.load()
        if forgetting:
            changed = bool(paths) if args.all else args.forget in paths
            if args.all:
                paths.clear()
            else:
                paths.pop(args.forget, None)
            if changed:
                store.save(paths)
            data = {"forgotten": changed}
        else:
            data = {"learned": [{"path": p, **e} for p, e in sorted(paths.items())],
                    "counting": {}}
        where = str(cfg.learned_file)
    if args.json:
        print(json.dumps({**data, "source": where}, indent=1))
    elif forgetting:
        print(("forgotten" if data.get("forgotten") else "nothing to forget")
              + f" ({where})")
    else:
        learned = data.get("learned", [])
        print(f"{len(learned)} learned path(s) ({where})")
        for entry in learned:
            print(f"  {entry['path']}  (writer: {entry.get('writer_cmdline') or '?'})")
    return 1 if forgetting and not data.get("forgotten") else 0
