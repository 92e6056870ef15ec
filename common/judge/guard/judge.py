"""The guard's verdict on one blob at one path: held (with a :class:`Why`) or not.

Pure: the content comes in as an iterable of byte pieces (a large blob is scanned in
line-aligned pieces, so memory stays bounded whatever its size), the allowlist and the
released blob ids are handed in by the caller. Raw findings are cached by (blob id,
content profile): a blob is scanned once however often it is committed, pushed or
re-tried, and a pull never rescans what was judged before. The allowlist and releases
apply after the cache, so editing them never needs a rescan.
"""
from __future__ import annotations

import dataclasses
import shlex
from collections import Counter
from dataclasses import dataclass
from typing import Iterable, Iterator

from gitsieve.common.judge.guard.allowlist import Allowlist
from gitsieve.common.judge.guard.findings import Finding, FindingKind
from gitsieve.common.judge.guard.rules import content_profile
from gitsieve.common.judge.guard.scanner import BINARY_PROBE_BYTES, SecretScanner, is_binary
from gitsieve.common.judge.guard.sizeguard import oversized
from gitsieve.common.protocol.states import Hold, Why

MIB = 1 << 20
# Cached (blob, profile) verdicts: ~120 bytes each, so the cache stays under ~6 MB.
CACHE_ENTRIES = 50_000
# Pieces a large blob is scanned in: whole lines, about this long.
PIECE_BYTES = 4 * MIB
# A private key block cut by a piece boundary is carried into the next piece whole.
_BEGIN, _END = b"-----BEGIN", b"-----END"
_CARRY_LIMIT = 64 * 1024
_CLEAN: tuple[Finding, ...] = ()


@dataclass(frozen=True)
class GuardSettings:
    """``[guard]`` as the judge needs it."""

    secrets: bool = True
    limit_bytes: int = 10 * MIB  # 0: no size limit
    inline_allow: bool = True


class GuardJudge:
    def __init__(self, key: bytes, settings: GuardSettings):
        self.settings = settings
        self.scanner = SecretScanner(key, inline_allow=settings.inline_allow)
        self.allowlist = Allowlist()
        self.released: frozenset[str] = frozenset()
        self._cache: dict[bytes, tuple[Finding, ...]] = {}
        self.stats: Counter[str] = Counter()

    # --- what the person decided -------------------------------------------------------------

    def set_allowlist(self, allowlist: Allowlist) -> None:
        self.allowlist = allowlist

    def set_released(self, blob_ids: Iterable[str]) -> None:
        self.released = frozenset(blob_ids)

    # --- secrets -----------------------------------------------------------------------------

    @staticmethod
    def cache_key(oid: str, path: str) -> bytes:
        """Blobs scanned alike share a key: the blob id and what of the path matters."""
        return bytes.fromhex(oid) + content_profile(path).encode()

    def is_cached(self, oid: str, path: str) -> bool:
        return self.cache_key(oid, path) in self._cache

    def has(self, key: bytes) -> bool:
        return key in self._cache

    def findings(self, path: str, oid: str, pieces: Iterable[bytes] | None = None) -> list[Finding]:
        """Every finding for blob ``oid`` at ``path`` before allowlist and releases; the
        content is read from ``pieces`` only when the blob is not cached."""
        findings = self.scanner.filename_findings(path)
        key = self.cache_key(oid, path)
        cached = self._cache.get(key)
        if cached is None:
            if pieces is None:
                raise ValueError(f"blob {oid} is not cached and no content was given")
            cached = self._scan(path, pieces)
            if len(self._cache) >= CACHE_ENTRIES:
                del self._cache[next(iter(self._cache))]  # the oldest entry
            self._cache[key] = cached
        else:
            self.stats["cache_hits"] += 1
        findings.extend(self._moved(cached, path))
        return findings

    def _scan(self, path: str, pieces: Iterable[bytes]) -> tuple[Finding, ...]:
        self.stats["blobs_scanned"] += 1
        found: list[Finding] = []
        binary = None
        line = 1
        for piece in line_aligned(pieces):
            if binary is None:
                binary = is_binary(piece[:BINARY_PROBE_BYTES])
            found.extend(self.scanner.content_findings(path, piece, binary=binary,
                                                       first_line=line))
            line += piece.count(b"\n")
            self.stats["bytes_scanned"] += len(piece)
        return tuple(found) if found else _CLEAN

    def _moved(self, findings: tuple[Finding, ...], path: str) -> Iterator[Finding]:
        """Cached findings as found at ``path`` (a whole-file fingerprint names the path)."""
        for finding in findings:
            if finding.path == path:
                yield finding
            elif finding.kind is FindingKind.SECRET:
                yield dataclasses.replace(finding, path=path)
            else:
                yield dataclasses.replace(
                    finding, path=path,
                    fingerprint=self.scanner.filename_fingerprint(path))

    def held(self, path: str, oid: str, findings: list[Finding]) -> list[Finding]:
        """The findings that still hold: none for a released blob, else those no
        allowlist entry allows."""
        if oid in self.released:
            return []
        return self.allowlist.filter(findings)

    def secret_verdict(self, path: str, oid: str,
                       pieces: Iterable[bytes] | None = None) -> Why | None:
        """Why the blob must stay out of commits and pushes, or None."""
        if not self.settings.secrets:
            return None
        held = self.held(path, oid, self.findings(path, oid, pieces))
        return secret_why(path, held) if held else None

    # --- size --------------------------------------------------------------------------------

    def size_finding(self, path: str, size: int, head_size: int | None,
                     lfs_routed: bool) -> Finding | None:
        """The size finding, before releases and allowlist (None: within the limit)."""
        if not self.settings.limit_bytes:
            return None
        return oversized(path, size, self.settings.limit_bytes, head_size, lfs_routed)

    def size_verdict(self, finding: Finding, oid: str | None) -> Why | None:
        """Why an oversized file stays out (None when released or allowlisted)."""
        if oid is not None and oid in self.released:
            return None
        if not self.allowlist.filter([finding]):
            return None
        return Why(Hold.OVERSIZED, f"{finding.description}; or, to commit it as it is: "
                                   f"gitsieve release {shlex.quote(finding.path)}")

    def status(self) -> dict:
        return {"guard_cache": len(self._cache), **self.stats,
                **{f"scanner_{key}": value for key, value in self.scanner.stats.items()}}


def describe(held: list[Finding]) -> str:
    """The first finding (rule, file, line, fingerprint; never the secret) and how many more."""
    more = f" (and {len(held) - 1} more)" if len(held) > 1 else ""
    return f"{held[0].render()}{more}"


def secret_why(path: str, held: list[Finding]) -> Why:
    """A SECRET hold of a path about to be committed."""
    return Why(Hold.SECRET, f"{describe(held)}; to commit it as it is: "
                            f"gitsieve release {shlex.quote(path)}")


def line_aligned(pieces: Iterable[bytes], target: int = PIECE_BYTES) -> Iterator[bytes]:
    """Re-cut ``pieces`` into pieces of whole lines of about ``target`` bytes, never cutting
    a private key block (a line longer than ``target`` is cut where it must be)."""
    buffer = bytearray()
    for piece in pieces:
        buffer += piece
        while len(buffer) >= target:
            cut = buffer.rfind(b"\n", 0, target) + 1 or target
            begin = buffer.rfind(_BEGIN, 0, cut)
            if begin >= 0 and buffer.find(_END, begin, cut) < 0 \
                    and cut - begin <= _CARRY_LIMIT:
                start_of_line = buffer.rfind(b"\n", 0, begin) + 1
                if start_of_line > 0:
                    cut = start_of_line  # the block goes whole into the next piece
            yield bytes(buffer[:cut])
            del buffer[:cut]
    if buffer:
        yield bytes(buffer)
