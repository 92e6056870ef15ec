"""The work tree's side of a content judgement: bytes with a size cap, never blocking."""
from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from gitsieve.common.judge.content import SIZE_CAP


@dataclass(frozen=True)
class WorkFile:
    """The work tree's side: bytes (None: deleted), or a reason it cannot be read."""

    data: bytes | None
    size: int = 0
    problem: str = ""
    large_path: str = ""  # set instead of data for files over the size cap
    mode: int = 0  # as git records it: 0o100644, 0o100755 or 0o120000 (0: no file)


def git_mode(st_mode: int) -> int:
    """The mode git records for a file of this ``st_mode`` (the owner's executable bit)."""
    if stat.S_ISLNK(st_mode):
        return 0o120000
    return 0o100755 if st_mode & stat.S_IXUSR else 0o100644


def read_work(abs_path: str | Path, size_cap: int = SIZE_CAP) -> WorkFile:
    try:
        info = os.lstat(abs_path)
    except (FileNotFoundError, NotADirectoryError):
        return WorkFile(None)
    except OSError as exc:
        return WorkFile(None, problem=f"cannot stat: {exc.strerror or exc}")
    if stat.S_ISLNK(info.st_mode):  # git stores a symlink as a blob of its target
        try:
            target = os.fsencode(os.readlink(abs_path))
        except FileNotFoundError:
            return WorkFile(None)
        except OSError as exc:  # replaced by a non-link since lstat, or unreadable
            return WorkFile(None, problem=f"unreadable link: {exc.strerror or exc}")
        return WorkFile(target, len(target), mode=0o120000)
    if stat.S_ISDIR(info.st_mode):
        return WorkFile(None, problem="is a directory now")
    if not stat.S_ISREG(info.st_mode):  # never open a fifo or device: it could block
        return WorkFile(None, problem="not a regular file")
    mode = git_mode(info.st_mode)
    if info.st_size > size_cap:
        return WorkFile(None, info.st_size, large_path=str(abs_path), mode=mode)
    try:
        # O_NONBLOCK|O_NOFOLLOW: if the path was swapped for a fifo or link since lstat,
        # fail or return at once instead of blocking the worker.
        fd = os.open(abs_path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        return WorkFile(None)
    except OSError as exc:
        return WorkFile(None, problem=f"unreadable: {exc.strerror or exc}")
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return WorkFile(None, problem="not a regular file")
        # Sized by fstat, not by the cap: a cap-sized buffer per read is a large
        # allocation (an mmap) for every small file.  One byte more shows growth since.
        data = _read_up_to(fd, min(info.st_size, size_cap) + 1, size_cap + 1)
    except OSError as exc:
        return WorkFile(None, problem=f"unreadable: {exc.strerror or exc}")
    finally:
        os.close(fd)
    if len(data) > size_cap:
        return WorkFile(None, len(data), large_path=str(abs_path), mode=mode)
    return WorkFile(data, len(data), mode=mode)


def _read_up_to(fd: int, first: int, limit: int) -> bytes:
    """At most ``limit`` bytes of ``fd``, asking for ``first`` (at most ``limit``) at first."""
    chunks = []
    total = 0
    asked = first
    while asked > 0:
        chunk = os.read(fd, asked)
        chunks.append(chunk)
        total += len(chunk)
        if len(chunk) < asked:  # a regular file reads short only at its end
            break
        asked = limit - total  # it grew since fstat: the rest, up to the limit
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)
