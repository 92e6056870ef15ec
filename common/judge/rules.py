"""Layer-1 path rules: the rules file, editor junk detection and a self-reloading cache.

Rules file format, one rule per line (blank lines and ``#`` comments ignored)::

    ACTION:REGEX[:DESCRIPTION]

ACTION is BLOCK, ALLOW or ANALYZE (any case).  REGEX ends at the first ``:`` that is not
preceded by a backslash (write a literal colon as ``\\:``) and is matched with
``fullmatch`` against the workspace-relative POSIX path.  The first matching rule wins.

Rules run in bounded time (:mod:`gitsieve.common.config.bounded_regex`).  A rule whose
match times out on a path decides nothing for it: the path gets ANALYZE (the process and
content layers decide, so a person's edit is still committed and churn still dropped),
marked ``timed_out``, and one warning names the rule.
"""
from __future__ import annotations

import logging
import os
import re
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from gitsieve.common.config.bounded_regex import BoundedPattern, RegexTimeout
from gitsieve.common.config.bounded_regex import error as RegexError
from gitsieve.common.protocol.messages import RuleMatch
from gitsieve.common.protocol.states import Action

log = logging.getLogger(__name__)

ACTIONS = tuple(Action)

MAX_RULES_BYTES = 1024 * 1024
# The regex part ends at the first colon with no backslash right before it.
_UNESCAPED_COLON = re.compile(r"(?<!\\):")


def _inside(path: Path, root: Path) -> bool:
    try:
        return path.resolve().is_relative_to(root.resolve())
    except (OSError, RuntimeError):  # unresolvable (a symlink loop): not provably inside
        return False


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
    pattern: BoundedPattern = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        # Compiled once here; an invalid regex raises RegexError for the parser to report.
        object.__setattr__(self, "pattern", BoundedPattern(
            self.regex, f"rule {self.action}:{self.regex} (line {self.line})",
            "such paths get ANALYZE: the process and content layers decide"))

    def matches(self, path: str) -> bool:
        """Raises RegexTimeout when the match takes too long."""
        return self.pattern.fullmatch(path) is not None

    def describe(self) -> str:
        detail = f"line {self.line}: {self.description}" if self.description else f"line {self.line}"
        return f"{self.action}:{self.regex} ({detail})"

    def as_match(self) -> RuleMatch:
        return RuleMatch(action=self.action, line=self.line, text=self.describe())


@dataclass(frozen=True)
class TimedOutRule:
    """A rule whose match ran out of time on a path: it decides nothing, so the path is
    analysed (ANALYZE) rather than blocked or let through by a guess."""

    rule: Rule
    action: Action = Action.ANALYZE

    @property
    def line(self) -> int:
        return self.rule.line

    def as_match(self) -> RuleMatch:
        return RuleMatch(action=Action.ANALYZE, line=self.rule.line,
                         text=f"{self.rule.describe()} timed out: analysed instead",
                         timed_out=True)


@dataclass(frozen=True)
class RuleSet:
    rules: tuple[Rule, ...] = ()
    source: str = ""

    @classmethod
    def parse(cls, text: str, source: str = "<rules>", echo: bool = True) -> "RuleSet":
        """``echo=False``: errors never quote the file's text (a file outside the
        workspace, /etc/shadow say, must not leak a line into a message or a log)."""
        def shown(part: str) -> str:
            return f" {part!r}" if echo else ""
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
                raise RulesError(source, number, f"unknown action{shown(action)}; "
                                 f"expected one of {', '.join(ACTIONS)}")
            parts = _UNESCAPED_COLON.split(rest, maxsplit=1)
            regex = parts[0].strip()
            description = parts[1].strip() if len(parts) > 1 else ""
            if not regex:
                raise RulesError(source, number, "empty regex")
            try:
                rules.append(Rule(Action(action), regex, description, number))
            except RegexError as exc:
                raise RulesError(source, number, f"bad regex{shown(regex)}"
                                 + (f": {exc}" if echo else "")) from None
        return cls(tuple(rules), source)

    @classmethod
    def load(cls, path: str | os.PathLike, workspace: str | os.PathLike | None = None
             ) -> "RuleSet":
        """Parse the rules file at ``path``; a missing file is an empty rule set.  Errors
        quote the file only when it lies inside ``workspace``.  FIFOs, devices and files
        over ``MAX_RULES_BYTES`` are refused (they would block or stall the reader)."""
        echo = workspace is not None and _inside(Path(path), Path(workspace))
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            return cls((), str(path))
        except OSError as exc:
            raise RulesError(path, None, f"cannot read rules file: {exc.strerror}") from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # a directory cannot even be read
            os.close(fd)
            raise RulesError(path, None, "rules file is not a regular file")
        with os.fdopen(fd, "rb") as handle:
            data = handle.read(MAX_RULES_BYTES + 1)
        if len(data) > MAX_RULES_BYTES:
            raise RulesError(path, None, f"rules file larger than {MAX_RULES_BYTES} bytes")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise RulesError(path, None, "rules file is not UTF-8 text") from None
        return cls.parse(text, str(path), echo)

    def match(self, path: str) -> Rule | TimedOutRule | None:
        for rule in self.rules:
            try:
                if rule.matches(path):
                    return rule
            except RegexTimeout:
                # Later rules must not decide either: the timed-out rule might have matched.
                return TimedOutRule(rule)
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
# *.orig ...), .DS_Store, *.pyc and git-ignored paths are blocked before any rule.
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
                 clock: Callable[[], float] = time.monotonic,
                 workspace: str | os.PathLike | None = None):
        self.path = Path(path)
        self.workspace = workspace
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
            self.rules = RuleSet.load(self.path, self.workspace)
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

    def match(self, path: str) -> Rule | TimedOutRule | None:
        return self.refresh().match(path)
