"""Deliberate releases a person writes down: the workspace's ``.gitsieve-allow`` file.

One entry a line; ``#`` starts a comment (at the start of a line, or after whitespace):

    3f1c0a9be2d4475e8b61c0f2a7d9e135   a fingerprint: that secret, wherever it is
    path:tests/fixtures/**             every finding in matching paths
    rule:jwt                           every finding of a rule (a rule id or a detector id)
    rule:private-key tests/keys/*.pem  a rule, only in matching paths

Globs follow .gitignore: a glob without a slash matches the name at any depth, one with
a slash is anchored at the workspace root, ``**`` spans directories, and a glob that
matches a directory covers everything below it. Inline markers (``gitsieve:allow``) are
the scanner's business; see scanner.py.
"""

import enum
import re
from dataclasses import dataclass, field
from typing import Iterable

from gitsieve.common.judge.guard.findings import FINGERPRINT_HEX_CHARS, Finding, RuleId

ALLOWLIST_FILE = ".gitsieve-allow"

_FINGERPRINT = re.compile(r"[0-9a-fA-F]+")
_TRAILING_COMMENT = re.compile(r"\s+#.*$")


class AllowlistError(ValueError):
    """Every bad line of an allowlist, each as ``file:line: reason``."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = tuple(problems)


class EntryKind(enum.Enum):
    """What an allowlist line allows: one secret, a path, or a rule (optionally in a path)."""

    FINGERPRINT = "fingerprint"
    PATH = "path"
    RULE = "rule"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class AllowEntry:
    """One line of an allowlist: ``text`` as written, ``origin`` its ``file:line``."""

    kind: EntryKind
    value: str
    glob: str | None
    text: str
    origin: str
    glob_pattern: re.Pattern | None = field(default=None, repr=False, compare=False)

    def matches(self, finding: Finding) -> bool:
        if self.glob_pattern is not None and not self.glob_pattern.fullmatch(
            normalise_path(finding.path)
        ):
            return False
        if self.kind is EntryKind.FINGERPRINT:
            return finding.fingerprint == self.value
        if self.kind is EntryKind.RULE:
            return self.value in (finding.rule.value, finding.detector)
        return True

    def render(self) -> str:
        return f"{self.origin}: {self.text}"


@dataclass(frozen=True)
class Allowlist:
    """The parsed ``.gitsieve-allow``: findings any entry matches are released."""

    entries: tuple[AllowEntry, ...] = ()

    @classmethod
    def parse(
        cls, text: str, source: str = ALLOWLIST_FILE, known_rule_ids: Iterable[str] | None = None
    ) -> "Allowlist":
        """Parse an allowlist; raise :class:`AllowlistError` naming every bad line.

        ``known_rule_ids`` are the ids ``rule:`` may name (pass the scanner's
        ``known_rule_ids`` to admit detector ids); by default the rule ids only.
        """
        known = (
            frozenset(known_rule_ids)
            if known_rule_ids is not None
            else frozenset(r.value for r in RuleId)
        )
        entries: list[AllowEntry] = []
        problems: list[str] = []
        for number, raw in enumerate(text.splitlines(), start=1):
            line = _TRAILING_COMMENT.sub("", raw).strip()
            if not line or line.startswith("#"):
                continue
            origin = f"{source}:{number}"
            try:
                entries.append(_parse_entry(line, origin, known))
            except ValueError as error:
                problems.append(f"{origin}: {error}")
        if problems:
            raise AllowlistError(problems)
        return cls(tuple(entries))

    def allowing(self, finding: Finding) -> AllowEntry | None:
        """The first entry that allows ``finding``, or None if it stays held."""
        return next((entry for entry in self.entries if entry.matches(finding)), None)

    def filter(self, findings: Iterable[Finding]) -> list[Finding]:
        """The findings no entry allows."""
        return [finding for finding in findings if self.allowing(finding) is None]


def _parse_entry(line: str, origin: str, known_rule_ids: frozenset[str]) -> AllowEntry:
    if line.startswith("path:"):
        glob = line[len("path:") :].strip()
        if not glob:
            raise ValueError("path: needs a glob, e.g. path:tests/fixtures/**")
        return AllowEntry(EntryKind.PATH, glob, glob, line, origin, compile_glob(glob))
    if line.startswith("rule:"):
        parts = line[len("rule:") :].split()
        if not parts or len(parts) > 2:
            raise ValueError("rule: takes a rule id and at most one glob, e.g. rule:jwt tests/**")
        rule_id = parts[0]
        if rule_id not in known_rule_ids:
            raise ValueError(
                f"unknown rule id {rule_id!r} (gitsieve's ids: "
                f"{', '.join(sorted(r.value for r in RuleId))})"
            )
        glob = parts[1] if len(parts) == 2 else None
        return AllowEntry(
            EntryKind.RULE, rule_id, glob, line, origin, compile_glob(glob) if glob else None
        )
    if _FINGERPRINT.fullmatch(line):
        if len(line) != FINGERPRINT_HEX_CHARS:
            raise ValueError(
                f"a fingerprint has {FINGERPRINT_HEX_CHARS} hex characters, "
                f"this one has {len(line)}"
            )
        return AllowEntry(EntryKind.FINGERPRINT, line.lower(), None, line, origin)
    # the line itself is not quoted: a file named as the allowlist by mistake (a symbolic
    # link to credentials) would have its secrets printed in the error
    raise ValueError(f"expected a fingerprint, path:GLOB or rule:ID [GLOB], got a line of "
                     f"{len(line)} characters that is none of them")


def normalise_path(path: str) -> str:
    while path.startswith("./"):
        path = path[2:]
    return path.lstrip("/")


def compile_glob(glob: str) -> re.Pattern:
    """A .gitignore-style glob as a regex over workspace-relative paths (see module doc)."""
    if glob.startswith("!"):
        raise ValueError("negated globs are not supported: list what to allow instead")
    body = glob.strip("/")
    if not body:
        raise ValueError(f"glob {glob!r} names no path")
    if any(part in (".", "..") for part in body.split("/")):
        raise ValueError(f"glob {glob!r} must not contain . or .. segments")
    anchored = "/" in body or glob.startswith("/")
    out: list[str] = []
    i = 0
    while i < len(body):
        if body.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif body.startswith("**", i):
            out.append(".*")
            i += 2
        elif body[i] == "*":
            out.append("[^/]*")
            i += 1
        elif body[i] == "?":
            out.append("[^/]")
            i += 1
        elif body[i] == "[":
            close = body.find("]", i + 2)
            if close < 0:
                raise ValueError(f"glob {glob!r} has an unclosed [")
            members = body[i + 1 : close].replace("\\", "\\\\")
            out.append("[" + ("^" + members[1:] if members.startswith("!") else members) + "]")
            i = close + 1
        else:
            out.append(re.escape(body[i]))
            i += 1
    prefix = "" if anchored else "(?:.*/)?"
    # A glob that matches a directory also covers everything below it.
    return re.compile(prefix + "".join(out) + "(?:/.*)?", re.DOTALL)
