"""Layer-1 path rules: the rules file, editor junk detection and a self-reloading cache.

Rules file format, one rule per line (blank lines and ``#`` comments ignored)::

    ACTION:REGEX[:DESCRIPTION]

ACTION is BLOCK, ALLOW or ANALYZE (any case).  REGEX ends at the first ``:`` that is not
preceded by a backslash (write a literal colon as ``\\:``) and is matched with
``re.fullmatch`` against the workspace-relative POSIX path.  The first matching rule wins.
"""
from __future__ import annotations

import logging
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from gitsieve.common.protocol.messages import RuleMatch
from gitsieve.common.protocol.states import Action

log = logging.getLogger(__name__)

ACTIONS = tuple(Action)

# The regex part ends at the first colon with no backslash right before it.
_UNESCAPED_COLON = re.compile(r"(?<!\\):")


class RulesError(Exception):
    """A rules file that cannot be used; ``str()`` is ``path:line: reason``."""

    def __init__(self, path: str | os.PathLike, line: int | None, reason: str):
        self.path, self.line, self.reason = str(path), line, reason
        where = f"{self.path}:{line}" if line else self.path
        super().__init__(f"{where}: {reason}")


@dataclass(frozen=True)
class Rule:
    action: Action
    regex: str
    description: str = ""
    line: int = 0
    pattern: re.Pattern = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        # Compiled once here; an invalid regex raises re.error for the parser to report.
        object.__setattr__(self, "pattern", re.compile(self.regex))

    def matches(self, path: str) -> bool:
        return self.pattern.fullmatch(path) is not None

    def describe(self) -> str:
        detail = f"line {self.line}: {self.description}" if self.description else f"line {self.line}"
        return f"{self.action}:{self.regex} ({detail})"

    def as_match(self) -> RuleMatch:
        return RuleMatch(action=self.action, line=self.line, text=self.describe())


@dataclass(frozen=True)
class RuleSet:
    rules: tuple[Rule, ...] = ()
    source: str = ""

    @classmethod
    def parse(cls, text: str, source: str = "<rules>") -> "RuleSet":
        rules = []
        for number, raw in enumerate(text.splitlines(), 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            action, sep, rest = line.partition(":")
            if not sep:
                raise RulesError(source, number, "expected ACTION:REGEX[:DESCRIPTION]")
            action = action.strip().upper()
            if action not in Action.__members__:
                raise RulesError(source, number, f"unknown action {action!r}; "
                                 f"expected one of {', '.join(ACTIONS)}")
            parts = _UNESCAPED_COLON.split(rest, maxsplit=1)
            regex = parts[0].strip()
            description = parts[1].strip() if len(parts) > 1 else ""
            if not regex:
                raise RulesError(source, number, "empty regex")
            try:
                rules.append(Rule(Action(action), regex, description, number))
            except re.error as exc:
                raise RulesError(source, number, f"bad regex {regex!r}: {exc}") from None
        return cls(tuple(rules), source)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "RuleSet":
        """Parse the rules file at ``path``; a missing file is an empty rule set."""
        try:
            text = Path(path).read_text(encoding="utf-8")
        except FileNotFoundError:
            return cls((), str(path))
        except (OSError, UnicodeDecodeError) as exc:
            raise RulesError(path, None, f"cannot read rules file: {exc}") from None
        return cls.parse(text, str(path))

    def match(self, path: str) -> Rule | None:
        for rule in self.rules:
            if rule.matches(path):
                return rule
        return None

    def __len__(self) -> int:
        return len(self.rules)


DEFAULT_PATTERNS = r"""# gitsieve layer-1 rules: decide by path alone.
#
# One rule per line:   ACTION:REGEX[:DESCRIPTION]
#   ACTION       BLOCK (never commit), ALLOW (commit soon) or ANALYZE (let layers 2 and 3
#                look at who wrote the file and what changed).
#   REGEX        Python regex matched against the whole workspace-relative path
#                (re.fullmatch, "/" separators).  It ends at the first ":" not preceded
#                by a backslash; write a literal colon as "\:".
#   DESCRIPTION  optional, shown in logs and decision trails.
# The first matching rule wins.  Paths no rule matches get [filter].default
# from .gitsieve.toml.  Editor scratch files (*.swp, *~, 4913, .#*, *.tmp, *.bak,
# *.orig ...) and git-ignored paths are blocked before any rule is consulted.
# The file is re-read automatically when it changes.

# BLOCK: written by autonomous processes, never worth a commit.
BLOCK:\.claude/autonomous/.*:Autonomous system state
BLOCK:\.claude/memory/enhanced-context\.json:Auto-saved context
BLOCK:\.claude/intelligence/.*\.log:Intelligence logs
BLOCK:logs/.*\.log:System logs

# ALLOW: the person's own work, committed right away.
ALLOW:scripts/.*\.sh:User shell scripts
ALLOW:docs/.*\.md:User documentation
ALLOW:projects/.*:User project files
ALLOW:CLAUDE\.md:Main instructions file

# ANALYZE: written by both, decided by process and content analysis.
ANALYZE:\.claude/contexts/.*:Context files
ANALYZE:\.claude/decisions/.*:Decision logs
"""


class RuleCache:
    """The RuleSet of one file, re-read when the file's identity, mtime or size changes.

    The file is stat()ed at most every ``check_interval`` seconds.  A bad file keeps the
    previous rules in force and is reported once per version of the file.
    """

    def __init__(self, path: str | os.PathLike, check_interval: float = 0.5,
                 clock: Callable[[], float] = time.monotonic):
        self.path = Path(path)
        self.check_interval = check_interval
        self.clock = clock
        self.rules = RuleSet((), str(self.path))
        self.error = ""
        self.reloads = 0
        self._signature: tuple | None | bool = False  # False: never looked at
        self._next_check = float("-inf")
        self.refresh(force=True)

    def _stat_signature(self) -> tuple | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        except OSError as exc:
            # Unreadable metadata: treat like a changed file so load() reports the reason.
            return ("stat-error", str(exc))
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def refresh(self, force: bool = False) -> RuleSet:
        now = self.clock()
        if not force and now < self._next_check:
            return self.rules
        self._next_check = now + self.check_interval
        signature = self._stat_signature()
        if signature == self._signature:
            return self.rules
        self._signature = signature
        try:
            self.rules = RuleSet.load(self.path)
        except RulesError as exc:
            self.error = str(exc)
            if self.rules.rules:
                log.error("%s (keeping the %d rules loaded before)", exc, len(self.rules))
            else:
                log.error("%s (no rules in force)", exc)
            return self.rules
        self.error = ""
        self.reloads += 1
        return self.rules

    def match(self, path: str) -> Rule | None:
        return self.refresh().match(path)
