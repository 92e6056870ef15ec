"""What changed versus HEAD: the content layer's (L3) pure decision functions.

:func:`classify` compares HEAD's bytes of a path with the work tree's and says whether the
change is the user's (commit), the system's (drop) or no change at all (drop).  Nothing
here touches git or the file system except :func:`git_blob_id`, which hashes a file.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
from dataclasses import dataclass
from typing import Iterable

import orjson

from gitsieve.common.config.bounded_regex import BoundedPattern, RegexTimeout
from gitsieve.common.protocol.states import Content, L3Reason

USER, SYSTEM, UNCHANGED = Content.USER, Content.SYSTEM, Content.UNCHANGED
# Bigger files are compared as bytes only: parsing them would stall a worker.
SIZE_CAP = 5 * 1024 * 1024
_HASH_CHUNK = 1024 * 1024
# Like git: a NUL in the first 8000 bytes makes a file binary (compared by hash only).
_BINARY_SNIFF = 8000
_TOKEN = "\0volatile\0"
# A file of only volatile tokens is a stamp; anything this long is more than a stamp.
_TOKEN_ONLY_MAX = 4096


@dataclass(frozen=True)
class ContentVerdict:
    verdict: Content
    reason: L3Reason
    detail: str = ""

    @property
    def commit(self) -> bool:
        return self.verdict == USER


def strip_volatile(obj, keys: Iterable[str]):
    """A copy of a parsed JSON value without ``keys`` at any depth (dicts in lists too)."""
    drop = keys if isinstance(keys, (set, frozenset)) else frozenset(keys)
    if isinstance(obj, dict):
        return {key: strip_volatile(value, drop) for key, value in obj.items()
                if key not in drop}
    if isinstance(obj, list):
        return [strip_volatile(item, drop) for item in obj]
    return obj


_NOT_JSON = object()


# Every digit to "0", everything else to " ": a 19-digit run is then a plain substring
# search (a regex scan costs more than the parse it guards).
_DIGITS_ONLY = bytes(b"0"[0] if b"0"[0] <= byte <= b"9"[0] else b" "[0] for byte in range(256))
_LONG_DIGITS = b"0" * 19


def _parse_json(data: bytes):
    """The parsed document, or ``_NOT_JSON`` (invalid, badly encoded or too deep).

    orjson parses a 100 KB document about four times faster than the standard library.  It
    refuses some documents the standard parser takes (not UTF-8, lone surrogates, NaN) and
    reads integers beyond 64 bits as floats, so two different big numbers could compare
    equal: those documents, and any with a 19-digit run, go to the standard parser."""
    if _LONG_DIGITS in data.translate(_DIGITS_ONLY):
        return _parse_json_leniently(data)
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return _parse_json_leniently(data)


def _parse_json_leniently(data: bytes):
    try:
        return json.loads(data)
    except (ValueError, RecursionError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return _NOT_JSON


_MISSING = object()


def _equal_except(head, work, drop: frozenset, changed: set) -> bool:
    """True when ``head`` and ``work`` are equal outside the keys in ``drop`` (at any
    depth); the dropped keys whose values differ are added to ``changed``.  Equal subtrees
    are skipped at C speed (``==``), so only the way to a difference is walked."""
    if head == work:
        return True
    if isinstance(head, dict) and isinstance(work, dict):
        for key in head.keys() | work.keys():
            old, new = head.get(key, _MISSING), work.get(key, _MISSING)
            if key in drop:
                if old != new:
                    changed.add(key)
            elif old is _MISSING or new is _MISSING or not _equal_except(old, new, drop,
                                                                          changed):
                return False
        return True
    if isinstance(head, list) and isinstance(work, list) and len(head) == len(work):
        return all(_equal_except(old, new, drop, changed) for old, new in zip(head, work))
    return False


# HEAD's side is the same bytes object change after change (the layer caches it), so its
# parsed form is kept too; bytes cache their hash, a hit costs one memcmp.
_PARSED_CACHE_MAX_BYTES = 1024 * 1024


@functools.lru_cache(maxsize=32)
def _parse_cached(data: bytes):
    return _parse_json(data)


def _parse_head_json(data: bytes):
    """The parsed HEAD version; callers never mutate it (strip/compare build new values)."""
    if len(data) > _PARSED_CACHE_MAX_BYTES:
        return _parse_json(data)
    return _parse_cached(data)


def _json_verdict(head, work, volatile_keys: tuple[str, ...]) -> ContentVerdict | None:
    """SYSTEM when the documents match once volatile keys are gone; None when they differ."""
    changed: set[str] = set()
    if not _equal_except(head, work, frozenset(volatile_keys), changed):
        return None
    if not changed:
        return ContentVerdict(SYSTEM, L3Reason.JSON_FORMATTING)
    named = [key for key in volatile_keys if key in changed]
    return ContentVerdict(SYSTEM, L3Reason.JSON_VOLATILE_KEYS, ", ".join(named))


def compile_volatile(patterns: Iterable[str]) -> BoundedPattern | None:
    """One regex matching any of ``config.text_volatile_patterns`` (None: no patterns).
    It runs in bounded time; a text it times out on is taken as a real change."""
    patterns = tuple(patterns)
    if not patterns:
        return None
    return BoundedPattern("|".join(f"(?:{pattern})" for pattern in patterns),
                          "[filter] text_volatile_patterns",
                          "that text is taken as a real change (committed)")


# The last few texts masked, keyed by the pattern object itself (its id could be reused by
# a later pattern): a judgement masks a version more than once (is it only tokens? the
# regions that differ from HEAD; its digest), and the patterns are most of what judging a
# small file costs.
_MASKED_KEPT = 4
_recently_masked: dict[tuple[BoundedPattern, str], str | None] = {}


def _masked(volatile: BoundedPattern, text: str) -> str | None:
    """``text`` with every volatile token replaced, or None when the patterns ran out of
    time on it."""
    key = (volatile, text)
    if key in _recently_masked:
        return _recently_masked[key]
    try:
        masked = volatile.sub(_TOKEN, text)
    except RegexTimeout:
        masked = None
    if len(_recently_masked) >= _MASKED_KEPT:
        del _recently_masked[next(iter(_recently_masked))]
    _recently_masked[key] = masked
    return masked


def only_volatile_tokens(data: bytes, volatile: BoundedPattern | None) -> bool:
    """The text holds nothing but volatile tokens (a timestamp, an epoch in s/ms/us/ns, a
    uuid) and whitespace: ``date +%s%N > f``, a heartbeat file, a "last run" stamp."""
    if volatile is None or not data.strip() or len(data) > _TOKEN_ONLY_MAX or is_binary(data):
        return False
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    masked = _masked(volatile, text)
    return masked is not None and masked != text and not masked.replace(_TOKEN, "").strip()


def is_binary(data: bytes) -> bool:
    return b"\0" in data[:_BINARY_SNIFF]


# Volatile tokens are far shorter than this; the windows compared around the differing
# region extend this far into the common text so a token cut at an edge is cut alike.
_TOKEN_MARGIN = 96


def _common_prefix(a: bytes, b: bytes) -> int:
    """Length of the common prefix, by bisection over slice comparisons (memcmp)."""
    low, high = 0, min(len(a), len(b))
    while low < high:
        middle = (low + high + 1) // 2
        if a[:middle] == b[:middle]:
            low = middle
        else:
            high = middle - 1
    return low


def _common_suffix(a: bytes, b: bytes, limit: int) -> int:
    low, high = 0, limit
    while low < high:
        middle = (low + high + 1) // 2
        if a[len(a) - middle:] == b[len(b) - middle:]:
            low = middle
        else:
            high = middle - 1
    return low


def _volatile_only(head: bytes, work: bytes, volatile: BoundedPattern | None) -> bool:
    """True when the texts are equal once every volatile token is masked.  Only the region
    between the common prefix and suffix (plus a margin) is masked: a regex pass over a
    whole large file costs tens of milliseconds."""
    if volatile is None:
        return False
    prefix = _common_prefix(head, work)
    suffix = _common_suffix(head, work, min(len(head), len(work)) - prefix)
    start = max(0, prefix - _TOKEN_MARGIN)
    head_window = head[start:len(head) - max(0, suffix - _TOKEN_MARGIN)]
    work_window = work[start:len(work) - max(0, suffix - _TOKEN_MARGIN)]
    try:
        head_text, work_text = head_window.decode("utf-8"), work_window.decode("utf-8")
    except UnicodeDecodeError:  # a window may cut a multi-byte character: whole texts then
        try:
            head_text, work_text = head.decode("utf-8"), work.decode("utf-8")
        except UnicodeDecodeError:
            return False
    head_masked = _masked(volatile, head_text)
    return head_masked is not None and head_masked == _masked(volatile, work_text)


def classify(path: str, head: bytes | None, work: bytes | None,
             volatile_keys: Iterable[str] = (), size_cap: int = SIZE_CAP,
             volatile: BoundedPattern | None = None,
             user_writer: bool = False) -> ContentVerdict:
    """Decide a change from HEAD's bytes (None: not in HEAD) and the work tree's
    (None: deleted).  ``volatile``: :func:`compile_volatile` of the text patterns.
    ``user_writer``: L2 positively named a user process as the writer, so only "no change
    at all" is refused (the user's timestamp-only edit is still theirs).  A text whose only
    content is volatile tokens (a timestamp, an epoch, a uuid) is system churn when its
    writer is not known to be the user, new or changed.  Editor junk never gets here: the
    watcher marks it and L1 blocks it."""
    if work is None:
        if head is None:
            return ContentVerdict(UNCHANGED, L3Reason.NEVER_COMMITTED)
        return ContentVerdict(USER, L3Reason.DELETED)
    if head == work:
        return ContentVerdict(UNCHANGED, L3Reason.IDENTICAL)
    if not user_writer and only_volatile_tokens(work, volatile):
        return ContentVerdict(SYSTEM, L3Reason.TIMESTAMP_ONLY)
    if head is None:
        return ContentVerdict(USER, L3Reason.NEW_FILE)
    if user_writer:
        return ContentVerdict(USER, L3Reason.CHANGED_BY_USER)
    if len(head) > size_cap or len(work) > size_cap:
        return ContentVerdict(USER, L3Reason.OVER_SIZE_CAP, str(size_cap))
    if path.endswith(".log") and work.startswith(head):
        return ContentVerdict(SYSTEM, L3Reason.LOG_APPENDED, str(len(work) - len(head)))
    if is_binary(head) or is_binary(work):
        return ContentVerdict(USER, L3Reason.BINARY_CHANGED,
                              f"{hashlib.sha256(head).hexdigest()[:12]} -> "
                              f"{hashlib.sha256(work).hexdigest()[:12]}")
    if _volatile_only(head, work, volatile):  # cheap: masks only the differing region
        return ContentVerdict(SYSTEM, L3Reason.VOLATILE_TOKENS)
    keys = tuple(volatile_keys)
    head_doc = _parse_head_json(head)
    work_doc = _parse_json(work) if head_doc is not _NOT_JSON else _NOT_JSON
    # Not JSON on one side or both: the text rules below decide.
    if head_doc is not _NOT_JSON and work_doc is not _NOT_JSON:
        structured = isinstance(head_doc, (dict, list)) and isinstance(work_doc, (dict, list))
        if path.endswith(".json") or structured:
            try:
                found = _json_verdict(head_doc, work_doc, keys)
            except RecursionError:  # too deep to compare (json.loads allows more): as text
                found = ContentVerdict(USER, L3Reason.JSON_TOO_DEEP)
            return found or ContentVerdict(USER, L3Reason.JSON_CHANGED)
    return ContentVerdict(USER, L3Reason.CONTENT_CHANGED)


def mode_change(head_mode: int, work_mode: int, executable_bit: bool = True) -> str:
    """How the file's mode changed from HEAD's ('' when it did not): the executable bit
    (unless ``executable_bit`` is off, as with ``core.fileMode = false``), or a file turned
    into a symbolic link or back."""
    if not head_mode or not work_mode or head_mode == work_mode:
        return ""
    links = (head_mode == 0o120000, work_mode == 0o120000)
    if links == (False, True):
        return "file -> symbolic link"
    if links == (True, False):
        return "symbolic link -> file"
    if not executable_bit:
        return ""
    set_or_cleared = "set" if work_mode & 0o111 else "cleared"
    return f"executable bit {set_or_cleared} ({head_mode:o} -> {work_mode:o})"


def git_blob_id(path: str, hex_length: int = 40) -> str:
    """Git's object id for the file at ``path`` as a blob, hashed in chunks (big files).

    ``hex_length`` picks the repository's hash: 40 for SHA-1, 64 for SHA-256.
    """
    digest = hashlib.sha256() if hex_length == 64 else hashlib.sha1()
    with open(path, "rb") as handle:
        digest.update(f"blob {os.fstat(handle.fileno()).st_size}\0".encode())
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def masked_digest(path: str, data: bytes | None, volatile_keys: Iterable[str] = (),
                  volatile: BoundedPattern | None = None, size_cap: int = SIZE_CAP
                  ) -> str | None:
    """A digest of ``data`` blind to what the rules call volatile (JSON ``volatile_keys``,
    timestamp/uuid-like tokens), so two versions that differ only there share it.  None for
    binary, oversized, undecodable or absent data."""
    if data is None or len(data) > size_cap or is_binary(data):
        return None
    doc = _parse_json(data) if path.endswith(".json") or data[:1] in (b"{", b"[") else _NOT_JSON
    if doc is not _NOT_JSON and isinstance(doc, (dict, list)):
        try:
            text = json.dumps(strip_volatile(doc, tuple(volatile_keys)), sort_keys=True)
        except (RecursionError, ValueError):  # too deep for a canonical form: no digest
            return None
    else:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            return None
    if volatile is not None:
        text = _masked(volatile, text)
        if text is None:
            return None
    return hashlib.sha1(text.encode("utf-8", "surrogateescape")).hexdigest()
