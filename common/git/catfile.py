"""HEAD's version of a path, read in bulk: one persistent ``git cat-file --batch`` child.

:class:`CatFileBatch` answers ``REV:PATH`` requests over the child's pipes (restarted if it
dies or hangs).  :class:`HeadVersions` puts a cache in front of it for HEAD, dropped
whenever HEAD moves (:func:`gitsieve.common.git.head.head_token`): system churn hits the
same few paths over and over, and the executor's commit-time re-check asks for the paths
the content layer just read.  Never one git process per file.
"""
from __future__ import annotations

import logging
import os
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from gitsieve.common.git.gateway import Git, GitChild, GitError
from gitsieve.common.git.head import head_token

log = logging.getLogger(__name__)

# A cat-file answer taking longer than this means git is stuck: kill it, start again.
CAT_FILE_TIMEOUT = 10.0
# HEAD versions kept between changes (system churn hits the same few paths over and over).
CACHE_MAX_ENTRIES = 2048
CACHE_MAX_BYTES = 64 * 1024 * 1024


class HeadReadError(Exception):
    """The cat-file child failed to answer, even after a restart."""


@dataclass(frozen=True)
class HeadBlob:
    """A committed version of a path.  ``data`` is None when the blob exceeds the size cap
    (compare by ``oid`` then)."""

    oid: str
    size: int
    data: bytes | None


class CatFileBatch:
    """A persistent ``git cat-file --batch`` child answering ``REV:PATH`` requests."""

    def __init__(self, git: Git, size_cap: int, timeout: float = CAT_FILE_TIMEOUT):
        self.git, self.size_cap, self.timeout = git, size_cap, timeout
        self.child: GitChild | None = None
        self.starts = 0
        self._buffer = bytearray()

    def _running(self) -> GitChild:
        if self.child is None or not self.child.alive():
            self.close()
            self.child = self.git.spawn("cat-file", "--batch")
            self._buffer.clear()
            self.starts += 1
        return self.child

    def close(self) -> None:
        if self.child is not None:
            self.child.close()
            self.child = None

    def _fill(self, deadline: float) -> None:
        try:
            chunk = self.child.read(deadline)
        except TimeoutError:
            raise HeadReadError(f"git cat-file gave no answer within {self.timeout}s") from None
        if not chunk:
            raise HeadReadError("git cat-file exited")
        self._buffer += chunk

    def _read_line(self, deadline: float) -> bytes:
        while (end := self._buffer.find(b"\n")) < 0:
            self._fill(deadline)
        line = bytes(self._buffer[:end])
        del self._buffer[:end + 1]
        return line

    def _read_exact(self, size: int, deadline: float, keep: bool) -> bytes | None:
        """``size`` bytes of a blob; when not kept they are consumed without being stored."""
        kept = bytearray()
        while size > 0:
            if not self._buffer:
                self._fill(deadline)
            taken = self._buffer[:size]
            del self._buffer[:size]
            size -= len(taken)
            if keep:
                kept += taken
        return bytes(kept) if keep else None

    def read(self, rev: str, path: str) -> HeadBlob | None:
        """``rev``'s blob at ``path`` (None: not there, or not a file there)."""
        if "\n" in path:  # --batch reads one name per line: ask git for this one alone
            return self._read_one(rev, path)
        try:
            return self._request(rev, path)
        except (HeadReadError, OSError) as exc:
            # A dead or stuck child: restart it once before giving up on this request.
            self.close()
            try:
                return self._request(rev, path)
            except (HeadReadError, OSError) as again:
                self.close()
                raise HeadReadError(f"{exc}; after restart: {again}") from None

    def _request(self, rev: str, path: str) -> HeadBlob | None:
        child = self._running()
        deadline = time.monotonic() + self.timeout
        child.write(rev.encode() + b":" + os.fsencode(path) + b"\n")
        header = self._read_line(deadline)
        if header.endswith(b" missing") or header.endswith(b" ambiguous"):
            return None
        parts = header.split(b" ")
        if len(parts) != 3 or not parts[2].isdigit():
            raise HeadReadError(f"unexpected cat-file header {header[:200]!r}")
        oid, kind, size = parts[0].decode(), parts[1], int(parts[2])
        keep = kind == b"blob" and size <= self.size_cap
        data = self._read_exact(size, deadline, keep)
        if self._read_exact(1, deadline, True) != b"\n":
            raise HeadReadError("cat-file output lost its framing")
        if kind != b"blob":  # a directory (tree) in the commit: no file version there
            return None
        return HeadBlob(oid, size, data)

    def _read_one(self, rev: str, path: str) -> HeadBlob | None:
        """A path with a newline in its name, which must then be valid UTF-8 (it goes on
        git's command line); otherwise it cannot be read and counts as absent."""
        try:
            spec = f"{rev}:{os.fsencode(path).decode('utf-8')}"
            oid = self.git.text("rev-parse", "--verify", "-q", spec)
            data = self.git.run("cat-file", "blob", oid)
        except (UnicodeDecodeError, GitError) as exc:
            log.debug("cannot read %r at %s: %s", path, rev, exc)
            return None
        return HeadBlob(oid, len(data), data if len(data) <= self.size_cap else None)


class HeadVersions:
    """HEAD's blobs through one :class:`CatFileBatch`, cached until HEAD moves."""

    def __init__(self, git: Git, git_dir: Path, size_cap: int):
        self.reader = CatFileBatch(git, size_cap)
        self.git_dir = git_dir
        self.cache: OrderedDict[str, HeadBlob | None] = OrderedDict()
        self.cache_bytes = 0
        self.token: tuple | None = None
        self.hits = 0

    def drop(self) -> None:
        self.cache.clear()
        self.cache_bytes = 0

    def get(self, path: str) -> HeadBlob | None:
        """HEAD's blob at ``path``; HeadReadError when git cannot answer."""
        token = head_token(self.git_dir)
        if token != self.token:  # HEAD moved (maybe by the user's own git)
            self.drop()
            self.token = token
        if path in self.cache:
            self.hits += 1
            self.cache.move_to_end(path)
            return self.cache[path]
        blob = self.reader.read("HEAD", path)
        self.cache[path] = blob
        self.cache_bytes += len(blob.data or b"") if blob else 0
        while len(self.cache) > CACHE_MAX_ENTRIES or self.cache_bytes > CACHE_MAX_BYTES:
            _, evicted = self.cache.popitem(last=False)
            self.cache_bytes -= len(evicted.data or b"") if evicted else 0
        return blob

    def status(self) -> dict:
        return {"head_cache_entries": len(self.cache), "head_cache_hits": self.hits,
                "cat_file_starts": self.reader.starts}

    def close(self) -> None:
        self.reader.close()
