"""The pattern judge (L1): a change decided by its path alone, or passed on for analysis.

Order of checks per change: editor junk (BLOCK), ignored by git (BLOCK), the rule the
watcher matched (its action), else ``config.default_action``.  Junk and the rule are facts
the watcher established once and carried on the Change; this judge only adds what needs
git (``check-ignore``, one long-lived process answering every batch) and the learned set.  An ANALYZE path
learned as system-only (:mod:`.learning`) is marked ``learned`` so that L2 drops it unless
the writer is positively the user.  Socket-free: the L1 actor, ``gitsieve test`` and the
benchmarks call it directly.
"""
from __future__ import annotations

import logging
from typing import Callable

from gitsieve.common.git import gateway
from gitsieve.common.git.ignore import IgnoreChecker
from gitsieve.common.judge.junk import editor_junk
from gitsieve.common.judge.learning import LearnedSet
from gitsieve.common.judge.rules import RuleCache
from gitsieve.common.protocol.messages import Change
from gitsieve.common.protocol.states import Action, ChangeKind, L1Reason
from gitsieve.common.protocol.trail import PatternStep

log = logging.getLogger(__name__)


def observe(path: str, kind: ChangeKind, seq: int, epoch: float, observed: float,
            rules: RuleCache, source: str = "inotify") -> Change:
    """A new Change carrying the facts a path alone gives: whether it is editor junk and
    which rule matches it (the rules file is matched here, once)."""
    junk = editor_junk(path)
    rule = None if junk else rules.match(path)
    return Change(path=path, kind=kind, seq=seq, epoch=epoch, observed=observed,
                  source=source, junk=junk, rule=rule.as_match() if rule is not None else None)


def urgent(change: Change) -> bool:
    """A change of an ALLOW area goes ahead of the rest in the stage queues."""
    return change.rule is not None and change.rule.action == Action.ALLOW


class PatternJudge:
    def __init__(self, config, on_error: Callable[[str], None] | None = None):
        self.config = config
        self.git = gateway.Git(config.workspace)
        self.ignore = IgnoreChecker(self.git, config.git_dir)
        self.learned = LearnedSet(config.learned_file)
        self.on_error = on_error or (lambda what: None)
        self.ignore_checks = 0

    def judge(self, changes: list[Change]) -> list[PatternStep]:
        """One step per change, in order."""
        candidates = sorted({change.path for change in changes if not change.junk})
        ignored = self.ignored(candidates)
        self.learned.refresh()
        return [self._step(change, ignored) for change in changes]

    def _step(self, change: Change, ignored: set[str]) -> PatternStep:
        if change.junk:
            return PatternStep(Action.BLOCK, L1Reason.EDITOR_JUNK, change.junk)
        if change.path in ignored:
            return PatternStep(Action.BLOCK, L1Reason.IGNORED)
        if change.rule is not None and change.rule.timed_out:
            step = PatternStep(Action.ANALYZE, L1Reason.RULE_TIMED_OUT, change.rule.text)
        elif change.rule is not None:
            step = PatternStep(change.rule.action, L1Reason.RULE, change.rule.text)
        else:
            step = PatternStep(self.config.default_action, L1Reason.DEFAULT)
        if step.action == Action.ANALYZE and change.path in self.learned:
            return PatternStep(step.action, step.reason, step.detail, learned=True)
        return step

    def ignored(self, paths: list[str]) -> set[str]:
        if not paths:
            return set()
        self.ignore_checks += 1
        try:
            return self.ignore.ignored(paths)
        except gateway.GitError as exc:
            # Fail open to the rules: a broken git also stops the executor, and the error
            # is counted and shown in status rather than stalling the whole stage.
            self.on_error(f"check-ignore: {exc}")
            log.error("git check-ignore failed for %d paths: %s", len(paths), exc)
            return set()

    def close(self) -> None:
        self.ignore.close()

    def close_idle(self, now: float) -> None:
        """End the check-ignore child after a rest (``now``: monotonic)."""
        self.ignore.close_if_idle(now)
