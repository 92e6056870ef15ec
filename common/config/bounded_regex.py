"""Regexes from configuration, run in bounded time.

Every regex a person configures (the rules file, ``[debounce] rules``,
``text_volatile_patterns``, ``autonomous_processes``, ``autonomous_cgroups``) is compiled
here and matched with a timeout, so a catastrophically backtracking pattern (``(a|aa)+$``
against forty a's and a ``!``) costs at most a few hundredths of a second per match instead
of freezing an actor.

The engine is the ``regex`` module: it reads Python's ``re`` syntax, lookarounds and
backreferences included (rules files written for ``re`` keep working), and every match,
search and substitution takes a ``timeout``.  A linear-time engine (RE2) would make a
timeout unnecessary but rejects lookarounds and backreferences that existing rules files
may use.

A timed-out match raises :class:`RegexTimeout`; each caller decides what that means (always
something that never silently drops a person's edit) and the pattern logs one warning the
first time, naming itself (``what``), the input and that consequence; later timeouts are
only counted (``timeouts``).
"""
from __future__ import annotations

import logging

import regex

log = logging.getLogger(__name__)

# Per match of a short input (a path, a command line, a cgroup line).  Real patterns take
# microseconds; the engine checks its clock only now and then, so a runaway match ends
# within a few times this.
MATCH_TIMEOUT = 0.05
# Texts (L3's volatile masking) get this much more per byte: 50 ns/byte is 20 MB/s, far
# slower than any sane pattern scans.
TEXT_TIMEOUT_PER_BYTE = 50e-9

error = regex.error


class RegexTimeout(Exception):
    """A configured regex did not finish within its time bound."""


class BoundedPattern:
    """One configured regex: ``fullmatch``/``search``/``sub`` with a timeout."""

    __slots__ = ("pattern", "what", "consequence", "compiled", "timeouts")

    def __init__(self, pattern: str, what: str = "", consequence: str = ""):
        self.pattern = pattern
        self.what = what or f"regex {pattern!r}"
        self.consequence = consequence
        self.compiled = regex.compile(pattern)  # raises regex.error (= error) when invalid
        self.timeouts = 0

    def fullmatch(self, text: str):
        try:
            return self.compiled.fullmatch(text, timeout=MATCH_TIMEOUT)
        except TimeoutError:
            raise self._timed_out(text) from None

    def search(self, text: str):
        try:
            return self.compiled.search(text, timeout=MATCH_TIMEOUT)
        except TimeoutError:
            raise self._timed_out(text) from None

    def sub(self, replacement: str, text: str) -> str:
        try:
            return self.compiled.sub(replacement, text, timeout=MATCH_TIMEOUT
                                     + len(text) * TEXT_TIMEOUT_PER_BYTE)
        except TimeoutError:
            raise self._timed_out(text) from None

    def _timed_out(self, text: str) -> RegexTimeout:
        self.timeouts += 1
        shown = text if len(text) <= 120 else f"{text[:120]}... ({len(text)} characters)"
        if self.timeouts == 1:
            log.warning("%s: the regex took too long on %r and was stopped%s (logged once; "
                        "later timeouts are counted)", self.what, shown,
                        f"; {self.consequence}" if self.consequence else "")
        return RegexTimeout(f"{self.what}: timed out")

    def __repr__(self) -> str:
        return f"BoundedPattern({self.pattern!r})"

    def __eq__(self, other) -> bool:
        return isinstance(other, BoundedPattern) and other.pattern == self.pattern

    def __hash__(self) -> int:
        return hash(self.pattern)

