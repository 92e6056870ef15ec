"""``gitsieve mark --system PATH...``: declare the current versions of paths the system's.

For agents that report their own edits (a runtime's post-write hook): each path gets a
MARK record carrying the git blob id of its content as it is now (``sha1("blob <size>\\0"
+ bytes)``; a symlink's id is that of its target string, as git stores it), or no id when
the path does not exist (its absence is the system's).  The id is of the worktree bytes:
where clean filters (LFS, autocrlf) apply, git's stored blob differs.
"""
from __future__ import annotations

import enum
import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from gitsieve.common.agent.journal import DeadMerge, JournalWriter, Op

_CHUNK = 1 << 20
_ATTEMPTS = 3  # reads of a file rewritten meanwhile before taking the last one


class MarkRefusal(enum.Enum):
    OUTSIDE_WORKSPACE = "{path}: not inside the workspace {workspace}"
    INSIDE_GIT_DIR = "{path}: inside the workspace's .git"
    NOT_A_FILE = "{path}: not a regular file or symlink"

    def render(self, path: str, workspace: str) -> str:
        return self.value.format(path=path, workspace=workspace)


class MarkRefused(ValueError):
    def __init__(self, reason: MarkRefusal, path: str, workspace: str):
        super().__init__(reason.render(path, workspace))
        self.reason = reason
        self.path = path


@dataclass(frozen=True)
class Marked:
    path: str  # workspace-relative
    digest: str | None  # hex git blob id; None: the path is absent


def git_blob_id(path: str | os.PathLike) -> str | None:
    """The git blob id of what is at ``path`` now (not following a final symlink), or None
    when nothing is there."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return None
    if stat.S_ISLNK(info.st_mode):
        target = os.readlink(os.fsencode(path))
        return hashlib.sha1(b"blob %d\0" % len(target) + target).hexdigest()
    with open(path, "rb") as source:
        for _attempt in range(_ATTEMPTS):
            size = os.fstat(source.fileno()).st_size
            digest = hashlib.sha1(b"blob %d\0" % size)
            read = 0
            source.seek(0)
            while read < size and (chunk := source.read(min(_CHUNK, size - read))):
                digest.update(chunk)
                read += len(chunk)
            if read == size == os.fstat(source.fileno()).st_size:
                break  # a stable version; else it was being rewritten: read it again
    return digest.hexdigest()


def workspace_relative(workspace: Path, path: str | os.PathLike) -> str:
    """``path`` (absolute, or relative to the current directory) relative to the workspace,
    its directories' symlinks resolved; raises MarkRefused outside it or in .git."""
    absolute = os.path.abspath(path)
    head, tail = os.path.split(absolute)
    canonical = os.path.join(os.path.realpath(head), tail)
    root = os.path.realpath(workspace)
    relative = os.path.relpath(canonical, root)
    if relative == "." or relative.startswith(".." + os.sep) or relative == "..":
        raise MarkRefused(MarkRefusal.OUTSIDE_WORKSPACE, str(path), root)
    if relative == ".git" or relative.startswith(".git" + os.sep):
        raise MarkRefused(MarkRefusal.INSIDE_GIT_DIR, str(path), root)
    return relative


def mark_system(journal_dir: str | os.PathLike, workspace: str | os.PathLike,
                paths: Iterable[str | os.PathLike]) -> list[Marked]:
    """Append one MARK record per path (all in one write), checked before anything is
    written: raises MarkRefused for a path outside the workspace, in .git, or a
    directory."""
    workspace = Path(workspace)
    marked = []
    for path in paths:
        relative = workspace_relative(workspace, path)
        full = workspace / relative
        if full.is_dir() and not full.is_symlink():
            raise MarkRefused(MarkRefusal.NOT_A_FILE, str(path), str(workspace))
        marked.append(Marked(relative, git_blob_id(full)))
    if not marked:
        return []
    writer = JournalWriter(journal_dir, dead_merge=DeadMerge.WHEN_MANY)
    try:
        pid = os.getpid()
        writer.append([(Op.MARK, os.fsencode(item.path), pid) for item in marked],
                      [bytes.fromhex(item.digest) if item.digest else None for item in marked])
    finally:
        writer.close()
    return marked
