"""Regexes from configuration, run in bounded time.

Every regex a person configures (the rules file, ``[debounce] rules``,
``text_volatile_patterns``, ``autonomous_processes``, ``autonomous_cgroups``) is compiled
here and matched with a timeout, so a catastrophically backtracking pattern (``(a|aa)+$``
against forty a's and a ``!``) costs at most a few hundredths of a second per match instead
of freezing an actor.  Compiling is bounded too: a pattern whose counted repetitions
would unroll to more than ``MAX_EXPANSION`` elements (``((a{1000}){1000}){4}``: 4 s and
1.3 GB to compile) is refused as invalid, before the engine sees it.

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
import re
import re._parser as re_parser  # Python's own parser: the syntax ``regex`` reads, nearly all
from re import _constants as op

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

# Compiling unrolls counted repetitions: ``(a{1000}){1000}`` takes 0.4 s and 280 MB,
# ``((a{1000}){1000}){4}`` 4 s and 1.3 GB, in every process that compiles it.  A pattern
# whose repetitions unroll to more elements than this is refused like an invalid one.
MAX_EXPANSION = 100_000
_REPEATS = (op.MAX_REPEAT, op.MIN_REPEAT, op.POSSESSIVE_REPEAT)
_COUNTED = re.compile(r"(?<!\\)\{(\d+)(?:,(\d*))?\}")


def expansion(pattern: str) -> int:
    """About how many elements compiling ``pattern`` unrolls: a counted repetition
    multiplies what it repeats (an unbounded one counts its minimum).  For syntax only the
    ``regex`` module reads, the product of every count in the text (an upper bound)."""
    try:
        return _weight(re_parser.parse(pattern))
    except (re.error, RecursionError, OverflowError, ValueError):
        product = 1
        for low, high in _COUNTED.findall(pattern):
            product *= max(int(high or low), 1)
            if product > MAX_EXPANSION:
                break
        return product


def _weight(items) -> int:
    total = 0
    for code, argument in items:
        if code in _REPEATS:
            low, high, body = argument
            total += max(low if high == op.MAXREPEAT else high, 1) * _weight(body)
        elif code is op.SUBPATTERN:
            total += _weight(argument[3])
        elif code is op.BRANCH:
            total += sum(_weight(branch) for branch in argument[1])
        elif code in (op.ASSERT, op.ASSERT_NOT):
            total += _weight(argument[1])
        elif code is op.ATOMIC_GROUP:
            total += _weight(argument)
        elif code is op.GROUPREF_EXISTS:
            total += _weight(argument[1]) + (_weight(argument[2]) if argument[2] else 0)
        else:
            total += 1
        if total > MAX_EXPANSION:
            break  # enough to refuse it; nothing more to add up
    return total


# Compiled patterns by text, shared by every BoundedPattern of that text.  The runner
# compiles the configured patterns before it forks, so an actor finds them here instead of
# parsing them again (a parse runs hundreds of the parser's functions, and each one a fork
# runs copies pages the forks share).  Cleared when full: the rules file may be edited
# any number of times.
_COMPILED: dict[str, regex.Pattern] = {}
COMPILED_KEPT = 1024


def compiled(pattern: str) -> regex.Pattern:
    """``pattern`` compiled, once per process; ``error`` when it is invalid or would unroll
    to more than ``MAX_EXPANSION`` elements."""
    found = _COMPILED.get(pattern)
    if found is None:
        if expansion(pattern) > MAX_EXPANSION:
            raise error(f"its counted repetitions unroll to more than {MAX_EXPANSION:,} "
                        "elements when compiled (seconds and gigabytes in every process); "
                        "repeat less, or use + or *")
        found = regex.compile(pattern)  # raises regex.error (= error) when invalid
        if len(_COMPILED) >= COMPILED_KEPT:
            _COMPILED.clear()
        _COMPILED[pattern] = found
    return found


class RegexTimeout(Exception):
    """A configured regex did not finish within its time bound."""


class BoundedPattern:
    """One configured regex: ``fullmatch``/``search``/``sub`` with a timeout."""

    __slots__ = ("pattern", "what", "consequence", "compiled", "timeouts")

    def __init__(self, pattern: str, what: str = "", consequence: str = ""):
        self.pattern = pattern
        self.what = what or f"regex {pattern!r}"
        self.consequence = consequence
        self.compiled = compiled(pattern)
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

