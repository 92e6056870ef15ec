"""The secret scanner: file-name rules and the content rules, compiled once.

``SecretScanner.scan(path, data)`` is pure: bytes in, findings out, nothing read or
written. Binary data (a NUL in the first 8000 bytes, git's own test) is checked by name
and for PEM private-key blocks only: token formats in binaries are mostly other
programs' test data, and a DER key or key store is caught by its file name.  UTF-16 text
(what PowerShell, regedit and Notepad write) has NULs too: it is decoded and scanned as
the text it is.

Base64 is decoded where it holds secrets by design (Kubernetes ``Secret`` manifests,
kubeconfig ``*-data`` fields) and wherever it decodes to a PEM block, and the decoded
bytes are scanned with the same rules; the finding points at the base64 value.
"""
from __future__ import annotations

import base64
import binascii
import bisect
import codecs
import re
from collections import Counter
from dataclasses import dataclass
from typing import Sequence

import ahocorasick_rs

from gitsieve.common.judge.guard.findings import Finding, Fingerprinter, RuleId
from gitsieve.common.judge.guard.placeholders import looks_like_placeholder
from gitsieve.common.judge.guard.rules import (
    BASE64_CONTEXT_ANCHORS,
    BASE64_PEM_ANCHOR,
    BASE64_VALUE,
    CONTENT_RULES,
    PEM_REACH,
    ContentRule,
    detector_ids,
    name_and_content_rule,
    name_rule,
    secret_of,
    secret_span,
)

BINARY_PROBE_BYTES = 8000
# A line longer than this (minified code, one-line JSON) is searched only in windows
# around each anchor, so that a rule's regex never walks a whole 100 KB line per hit.
LONG_LINE = 4096
WINDOW_BEFORE, WINDOW_AFTER = 64, 320
# Decoded base64 values at most this long are scanned (a key or a config, not an image).
MAX_DECODED = 64 * 1024
# UTF-16 data at most this long is decoded (the judge hands a large blob over in 4 MiB
# pieces), known by its byte order mark or by every other byte being NUL, as in UTF-16 of
# mostly ASCII text.  Text decodes to almost no control characters; 16-bit numbers, which
# alternate with NULs as well, decode to many.
MAX_UTF16_BYTES = 8 * 1024 * 1024
_UTF16_BOMS = ((codecs.BOM_UTF16_LE, "utf-16-le"), (codecs.BOM_UTF16_BE, "utf-16-be"))
_CONTROL_CHARACTER = re.compile(r"[\x00-\x08\x0e-\x1f\x7f]")
TEXT_SAMPLE_CHARACTERS = 4000

INLINE_ALLOW = re.compile(rb"gitsieve:allow(?:=(?P<ids>[A-Za-z0-9_./,-]+))?")


@dataclass(frozen=True)
class _Match:
    rule: RuleId
    detector: str
    start: int  # where the finding points (byte offset in the scanned data)
    end: int
    priority: int
    description: str
    secret: bytes

    def __repr__(self) -> str:
        return f"_Match({self.rule.value}, {self.start}, {self.end})"


def known_rule_ids() -> frozenset[str]:
    """Every id an allowlist may name: the rule ids and the detector ids."""
    return frozenset(rule.value for rule in RuleId) | detector_ids()


def is_binary(data: bytes) -> bool:
    return b"\0" in data[:BINARY_PROBE_BYTES]


def utf16_text(data: bytes) -> bytes | None:
    """``data`` as UTF-8 when it is UTF-16 text of at most ``MAX_UTF16_BYTES``, else None."""
    if not 4 <= len(data) <= MAX_UTF16_BYTES:
        return None
    encoding, start = _utf16_encoding(data)
    if encoding is None:
        return None
    end = len(data) - (len(data) - start) % 2  # a piece of a large blob may end mid-character
    text = data[start:end].decode(encoding, "replace")
    sample = text[:TEXT_SAMPLE_CHARACTERS]
    if len(_CONTROL_CHARACTER.findall(sample)) * 100 > len(sample):
        return None
    return text.encode()


def _utf16_encoding(data: bytes) -> tuple[str | None, int]:
    """The byte order ``data`` reads in as UTF-16 and where its text starts (after a BOM)."""
    for bom, encoding in _UTF16_BOMS:
        if data.startswith(bom):
            return encoding, len(bom)
    probe = data[:BINARY_PROBE_BYTES]
    if b"\0" not in probe:
        return None, 0
    half = len(probe) // 2
    even, odd = probe[0::2].count(0), probe[1::2].count(0)
    if odd * 4 >= half * 3 and even * 16 <= half:
        return "utf-16-le", 0
    if even * 4 >= half * 3 and odd * 16 <= half:
        return "utf-16-be", 0
    return None, 0


class SecretScanner:
    """Compiled once; ``scan`` is called per file content (or per blob, at push time).

    ``key`` is the installation's fingerprint key (at least 16 random bytes, kept
    private). ``rules`` are the content rules (default: all of them). ``inline_allow``
    honours ``gitsieve:allow`` comments on a finding's line.

    ``stats`` counts scans, bytes and what was set aside (placeholders, inline allows),
    for metrics; it never holds a path or a secret.
    """

    def __init__(
        self,
        key: bytes,
        *,
        rules: Sequence[ContentRule] = CONTENT_RULES,
        inline_allow: bool = True,
    ):
        self._fingerprints = Fingerprinter(key)
        self._rules = tuple(rules)
        self._anchors = _Anchors(self._rules)
        self.inline_allow = inline_allow
        self.stats: Counter[str] = Counter()

    def __repr__(self) -> str:
        return f"SecretScanner({self.rule_count} rules)"

    @property
    def rule_count(self) -> int:
        return len(self._rules)

    @property
    def known_rule_ids(self) -> frozenset[str]:
        return known_rule_ids()

    def filename_fingerprint(self, path: str) -> str:
        """The fingerprint of a whole-file finding at ``path``."""
        return self._fingerprints.path(path)

    def filename_findings(self, path: str) -> list[Finding]:
        """Findings from the path alone, usable before (or instead of) reading a big file:
        the file-name rules, and tokens in the path itself."""
        rule = name_rule(path)
        findings = [self._whole_file_finding(rule, path)] if rule else []
        findings.extend(self._path_findings(path))
        return findings

    def _path_findings(self, path: str) -> list[Finding]:
        """A token of a known format in the path, which is pushed with the file (a
        finding about the whole file: line and column 0)."""
        anchors = self._anchors.index(path.encode("utf-8", "surrogateescape"))
        matches = self._matches(path, anchors, [r for r in anchors.woken(False) if r.reads_paths])
        return [
            Finding(match.rule, path, 0, 0, self._fingerprints.secret(match.secret),
                    f"{match.description} in the path", match.detector)
            for match in _without_overlaps(matches)
        ]

    def scan(
        self, path: str, data: bytes, *, binary: bool | None = None, first_line: int = 1
    ) -> list[Finding]:
        """Every finding for ``path`` holding ``data``: whole-file findings first, then content
        findings in file order. Lines marked ``gitsieve:allow`` are left out.

        A large blob is scanned in line-aligned pieces: ``binary`` then carries the first
        piece's verdict (a piece of UTF-16 text is decoded whatever it says) and
        ``first_line`` the number of the piece's first line; name findings are made for
        the first piece only.  In UTF-16 text, lines and columns are those of the text."""
        findings = self.filename_findings(path) if first_line == 1 else []
        findings.extend(self.content_findings(path, data, binary=binary, first_line=first_line))
        return findings

    def content_findings(
        self, path: str, data: bytes, *, binary: bool | None = None, first_line: int = 1
    ) -> list[Finding]:
        """The findings that depend on the content (and on the name only through
        :func:`.rules.content_profile`)."""
        self.stats["scans"] += 1
        self.stats["bytes"] += len(data)
        text = utf16_text(data)
        if text is not None:
            self.stats["utf16_scans"] += 1
            data, binary = text, False
        findings = []
        file_rule = name_and_content_rule(path, data) if first_line == 1 else None
        if file_rule and name_rule(path) is None:
            findings.append(self._whole_file_finding(file_rule, path))
        binary = is_binary(data) if binary is None else binary
        if binary:
            self.stats["binary_scans"] += 1
        anchors = self._anchors.index(data)
        matches = self._matches(path, anchors, anchors.woken(binary))
        if not binary:
            matches.extend(self._decoded_matches(path, anchors))
        lines = _LineCursor(data)
        for match in _without_overlaps(matches):  # in file order
            finding = self._content_finding(path, lines, match, first_line)
            if finding is not None:
                findings.append(finding)
        self.stats["findings"] += len(findings)
        return findings

    # --- matching ----------------------------------------------------------------------------

    def _matches(self, path: str, anchors: "_AnchorIndex",
                 rules: list[ContentRule]) -> list[_Match]:
        """The accepted matches of ``rules`` (woken by ``anchors``) in the indexed data."""
        data = anchors.data
        matches: list[_Match] = []
        for rule in rules:
            if not rule.applies_to(path):
                continue
            for start, end in anchors.regions(rule):  # disjoint: no match is seen twice
                for match in rule.pattern.finditer(data, start, end):
                    found = self._accepted(rule, match, path)
                    if found is not None:
                        matches.append(found)
        return matches

    def _accepted(self, rule: ContentRule, match: re.Match, path: str) -> _Match | None:
        secret = secret_of(match)
        if (
            not rule.multiline and looks_like_placeholder(secret)
        ) or (rule.accept is not None and not rule.accept(match, path)):
            self.stats["placeholders"] += 1
            return None
        start, end = match.span() if rule.locate_whole_match else secret_span(match)
        description = rule.description
        if rule.rule is RuleId.PRIVATE_KEY and match.group("kind"):
            description = f"{match.group('kind').decode().strip().lower()} private key"
        return _Match(
            rule.rule,
            rule.detector,
            start,
            end,
            rule.priority,
            description,
            rule.normalise(secret) if rule.normalise else secret,
        )

    def _decoded_matches(self, path: str, anchors: "_AnchorIndex") -> list[_Match]:
        """Secrets inside base64 values: in Kubernetes Secrets and kubeconfigs, and any
        base64 that decodes to a PEM block. Each points at its base64 value."""
        data = anchors.data
        in_context = any(anchors.positions(anchor, True) for anchor in BASE64_CONTEXT_ANCHORS)
        if not in_context and not anchors.positions(BASE64_PEM_ANCHOR, True):
            return []
        matches = []
        for value in BASE64_VALUE.finditer(data):
            encoded = value.group("value")
            if not in_context and not encoded.startswith(BASE64_PEM_ANCHOR):
                continue
            if len(encoded) * 3 // 4 > MAX_DECODED:
                continue
            try:
                decoded = base64.b64decode(encoded, validate=True)
            except (binascii.Error, ValueError):
                continue
            inner_anchors = self._anchors.index(decoded)
            for inner in self._matches(path, inner_anchors, inner_anchors.woken(False)):
                matches.append(
                    _Match(
                        inner.rule,
                        inner.detector,
                        value.start(),
                        value.end(),
                        inner.priority,
                        f"{inner.description} (base64-encoded)",
                        inner.secret,
                    )
                )
        return matches

    # --- findings ----------------------------------------------------------------------------

    def _whole_file_finding(self, rule: RuleId, path: str) -> Finding:
        return Finding(
            rule, path, 0, 0, self._fingerprints.path(path), rule.description, rule.value
        )

    def _content_finding(
        self, path: str, lines: "_LineCursor", match: _Match, first_line: int
    ) -> Finding | None:
        lines.move_to(match.start)
        if self.inline_allow and _inline_allowed(lines.allowed_ids(), match):
            self.stats["inline_allowed"] += 1
            return None
        return Finding(
            match.rule,
            path,
            lines.number + first_line,
            match.start - lines.start + 1,
            self._fingerprints.secret(match.secret),
            match.description,
            match.detector,
        )


class _Anchors:
    """Every anchor of a rule set in two Aho-Corasick automata (exact ones, and lower-case
    ones searched in the lowered data): one pass over a file finds them all, where a
    substring search per anchor would pass over it a hundred times."""

    def __init__(self, rules: Sequence[ContentRule]):
        exact = {a for rule in rules if rule.exact_anchors for a in rule.anchors}
        exact.update((BASE64_PEM_ANCHOR, *BASE64_CONTEXT_ANCHORS))
        self.exact = sorted(exact)
        self.folded = sorted({a for rule in rules if not rule.exact_anchors for a in rule.anchors})
        self._exact = ahocorasick_rs.BytesAhoCorasick(self.exact)
        self._folded = ahocorasick_rs.BytesAhoCorasick(self.folded) if self.folded else None
        # anchor -> the numbers of the rules it wakes, so a file runs only those rules
        self.rules = tuple(rules)
        self.rules_of: dict[tuple[bytes, bool], frozenset[int]] = {}
        for number, rule in enumerate(self.rules):
            for anchor in rule.anchors:
                key = (anchor, rule.exact_anchors)
                self.rules_of[key] = self.rules_of.get(key, frozenset()) | {number}

    def index(self, data: bytes) -> "_AnchorIndex":
        found: dict[tuple[bytes, bool], list[int]] = {}
        for number, start, _ in self._exact.find_matches_as_indexes(data, overlapping=True):
            found.setdefault((self.exact[number], True), []).append(start)
        if self._folded is not None:
            for number, start, _ in self._folded.find_matches_as_indexes(data.lower(),
                                                                         overlapping=True):
                found.setdefault((self.folded[number], False), []).append(start)
        return _AnchorIndex(data, found, self)


class _AnchorIndex:
    """Where one file's anchors occur, shared by the rules using them."""

    def __init__(self, data: bytes, found: dict[tuple[bytes, bool], list[int]],
                 anchors: _Anchors):
        self.data = data
        self._found = found
        self._anchors = anchors

    def woken(self, binary: bool) -> list[ContentRule]:
        """The rules with an anchor in the data, in rule order (for binary data: only the
        rules made for it)."""
        if not self._found:
            return []
        rules_of = self._anchors.rules_of
        numbers = set().union(*(rules_of.get(key, ()) for key in self._found))
        rules = self._anchors.rules
        return [rules[n] for n in sorted(numbers) if not binary or rules[n].binary]

    def positions(self, anchor: bytes, exact: bool) -> list[int]:
        return self._found.get((anchor, exact), [])

    def regions(self, rule: ContentRule) -> list[tuple[int, int]]:
        """Merged byte ranges worth running ``rule``'s regex on: the lines (or, in long
        lines, windows) that hold one of its anchors; for multi-line rules, from the
        anchor's line (or window) onwards.  The line's start is looked for as near as
        ``_region`` looks: from each of a long line's anchors back to its start cost
        0.4 s for a megabyte of BEGIN markers."""
        positions = [p for anchor in rule.anchors
                     for p in self.positions(anchor, rule.exact_anchors)]
        if not positions:
            return []
        data = self.data
        if rule.multiline:
            return _merged(
                (_region(data, p)[0], min(len(data), p + PEM_REACH)) for p in positions
            )
        return _merged(_region(data, position) for position in positions)


def _region(data: bytes, position: int) -> tuple[int, int]:
    """The anchor's line, or a window around it in a line over LONG_LINE bytes.  Newlines
    are looked for no further than LONG_LINE away: a long line holding thousands of
    anchors (minified code, or a file made to stall the scan) is not searched from each."""
    floor = max(0, position - LONG_LINE - 1)
    ceiling = min(len(data), position + LONG_LINE + 1)
    before = data.rfind(b"\n", floor, position)
    after = data.find(b"\n", position, ceiling)
    line_start = before + 1 if before >= 0 else (0 if floor == 0 else -1)
    line_end = after if after >= 0 else (len(data) if ceiling == len(data) else -1)
    if line_start < 0 or line_end < 0 or line_end - line_start > LONG_LINE:
        # a long line: its far end is further than the window reaches anyway
        return (max(line_start, position - WINDOW_BEFORE),
                position + WINDOW_AFTER if line_end < 0 else min(line_end, position + WINDOW_AFTER))
    return line_start, line_end


def _merged(regions) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for start, end in sorted(regions):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def _without_overlaps(matches: list[_Match]) -> list[_Match]:
    """One finding per secret: where matches overlap, the higher-priority one stays."""
    kept_starts: list[int] = []
    kept: list[_Match] = []
    for match in sorted(matches, key=lambda m: (m.priority, m.start, -m.end)):
        index = bisect.bisect_left(kept_starts, match.start)
        before = kept[index - 1] if index > 0 else None
        after = kept[index] if index < len(kept) else None
        if (before and before.end > match.start) or (after and after.start < match.end):
            continue
        kept_starts.insert(index, match.start)
        kept.insert(index, match)
    return kept


class _LineCursor:
    """The line of each finding, asked in file order: every byte is looked at once, and a
    line's ``gitsieve:allow`` markers read once, however many findings it holds (counting
    from the start of the data for each cost 30 s for a megabyte line of tokens)."""

    def __init__(self, data: bytes):
        self.data = data
        self.number = 0  # newlines before the current line
        self.start = 0
        self._end = self._end_of_line(0)
        self._allowed: frozenset[str] | None = frozenset()
        self._allowed_read = False

    def _end_of_line(self, position: int) -> int:
        end = self.data.find(b"\n", position)
        return len(self.data) if end < 0 else end

    def move_to(self, position: int) -> None:
        """Make the line holding ``position`` (not before the current one) current."""
        if position <= self._end:
            return
        self.number += self.data.count(b"\n", self._end, position)
        self.start = self.data.rfind(b"\n", self._end, position) + 1
        self._end = self._end_of_line(position)
        self._allowed_read = False

    def allowed_ids(self) -> frozenset[str] | None:
        """The rule and detector ids the current line's ``gitsieve:allow`` markers name
        (None: a bare marker allows every finding on it)."""
        if not self._allowed_read:
            self._allowed, self._allowed_read = _allowed_ids(self.data[self.start:self._end]), True
        return self._allowed


def _allowed_ids(line: bytes) -> frozenset[str] | None:
    named: set[str] = set()
    for marker in INLINE_ALLOW.finditer(line):
        ids = marker.group("ids")
        if ids is None:
            return None
        named.update(ids.decode().split(","))
    return frozenset(named)


def _inline_allowed(allowed: frozenset[str] | None, match: _Match) -> bool:
    return allowed is None or match.rule.value in allowed or match.detector in allowed
