"""A persistent ``git cat-file --batch`` child: HEAD's blobs without one process per file."""
from __future__ import annotations

import os
import select
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from gitsieve.common.git import gateway as gitutil
from gitsieve.common.judge.content import SIZE_CAP

# A cat-file answer taking longer than this means git is stuck: kill it, use the fallback.
CAT_FILE_TIMEOUT = 10.0
_READ_CHUNK = 256 * 1024
class HeadReadError(Exception):
    """The cat-file child failed to answer; the caller falls back to a one-shot git call."""


@dataclass(frozen=True)
class HeadBlob:
    """HEAD's version of a path.  ``data`` is None when the blob exceeds the size cap;
    ``oid`` is None when it came from the one-shot fallback."""

    oid: str | None
    size: int
    data: bytes | None


class CatFileBatch:
    """A persistent ``git cat-file --batch`` child answering ``HEAD:<path>`` requests."""

    def __init__(self, root: Path, size_cap: int = SIZE_CAP,
                 timeout: float = CAT_FILE_TIMEOUT):
        self.root, self.size_cap, self.timeout = root, size_cap, timeout
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self._buffer = bytearray()

    def _ensure_running(self) -> subprocess.Popen:
        if self.proc is None or self.proc.poll() is not None:
            self.close()
            self.proc = subprocess.Popen(
                ["git", "cat-file", "--batch"], cwd=self.root, env=gitutil.git_env(),
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0)
            self._buffer.clear()
            self.starts += 1
        return self.proc

    def close(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for pipe in (self.proc.stdin, self.proc.stdout):
            pipe.close()
        self.proc = None

    def _fill(self, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        ready, _, _ = select.select([self.proc.stdout], [], [], max(0.0, remaining))
        if not ready:
            raise HeadReadError(f"git cat-file gave no answer within {self.timeout}s")
        chunk = os.read(self.proc.stdout.fileno(), _READ_CHUNK)
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

    def read(self, path: str) -> HeadBlob | None:
        """HEAD's blob at ``path`` (None: not in HEAD, or not a file there)."""
        try:
            return self._request(path)
        except (HeadReadError, OSError) as exc:
            # A dead or stuck child: restart it once before giving up on this request.
            self.close()
            try:
                return self._request(path)
            except (HeadReadError, OSError) as again:
                self.close()
                raise HeadReadError(f"{exc}; after restart: {again}") from None

    def _request(self, path: str) -> HeadBlob | None:
        proc = self._ensure_running()
        deadline = time.monotonic() + self.timeout
        request = f"HEAD:{path}\n".encode("utf-8", "surrogateescape")
        while request:  # a pipe may take a long name in parts
            request = request[os.write(proc.stdin.fileno(), request):]
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
        if kind != b"blob":  # a directory (tree) in HEAD: no file version there
            return None
        return HeadBlob(oid, size, data)


