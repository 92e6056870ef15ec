"""Where HEAD points, read from the git directory's files (no git process)."""
from __future__ import annotations

import os
import time

# git dir -> its common dir (a linked worktree keeps its branch refs there); fixed for the
# life of a git dir, so read once: head_token runs for every change L3 judges.
_COMMON_DIRS: dict[str, str] = {}


# File times come from the kernel's coarse clock, up to a tick behind time.time(): a file
# read this long after a moment shows every change made before it.
FILE_TIME_LAG = 0.05


def taken_after(stamp: float, observed: float, lag: float = 0.0) -> bool:
    """Whether a reading begun at wall time ``stamp`` (a drain, a look at HEAD) saw all that
    happened before ``observed`` (``lag``: how far behind the clock what it reads may be),
    so a backlog of changes can share it.  A stamp later than now means the clock stepped
    back since: never trusted."""
    return observed + lag <= stamp <= time.time()


def common_dir(git_dir: str) -> str:
    common = _COMMON_DIRS.get(git_dir)
    if common is None:
        try:
            with open(os.path.join(git_dir, "commondir"), encoding="utf-8") as source:
                common = os.path.realpath(os.path.join(git_dir, source.read().strip()))
        except FileNotFoundError:
            common = git_dir
        _COMMON_DIRS[git_dir] = common
    return common


def signature_of(info: os.stat_result) -> tuple:
    """Inode, mtime and size: what changes when a file is written, truncated or replaced."""
    return info.st_ino, info.st_mtime_ns, info.st_size


# CLOCK_REALTIME_COARSE (Linux; Python names no constant for it): the clock the kernel
# stamps file times from, in ticks of a few milliseconds.
_FILE_CLOCK = 5


def file_clock_ns() -> int:
    """Now, as a file written at this moment would show it in its mtime (or earlier)."""
    return time.clock_gettime_ns(_FILE_CLOCK)


def file_signature(path: str | os.PathLike | None) -> tuple | None:
    """A cheap fingerprint of a file git (or gitsieve) rewrites (:func:`signature_of`);
    None when it is missing (or no path is given)."""
    if path is None:
        return None
    try:
        info = os.stat(path)
    except OSError:
        return None
    return signature_of(info)


def checked_out_branch(git_dir: str | os.PathLike) -> str | None:
    """The branch HEAD names (born or not), None when HEAD is detached; OSError when the
    HEAD file cannot be read (git rewrites it by rename, so only briefly)."""
    with open(os.path.join(git_dir, "HEAD"), encoding="utf-8") as source:
        head = source.read().strip()
    prefix = "ref: refs/heads/"
    return head[len(prefix):] if head.startswith(prefix) else None


def head_is_born(git_dir: str | os.PathLike) -> bool:
    """Whether HEAD names a commit: detached, or its branch exists (loose or packed).
    OSError when the HEAD file cannot be read."""
    git_dir = os.fspath(git_dir)
    with open(os.path.join(git_dir, "HEAD"), encoding="utf-8", errors="replace") as source:
        head = source.read(4096).strip()
    if not head.startswith("ref: "):
        return bool(head)
    ref = head[5:].strip()
    common = common_dir(git_dir)
    if os.path.exists(os.path.join(common, ref)):
        return True
    try:
        with open(os.path.join(common, "packed-refs"), encoding="utf-8",
                  errors="replace") as packed:
            return any(line.rstrip("\n").endswith(" " + ref) for line in packed)
    except FileNotFoundError:
        return False


def checked_out_commit(work_tree: str | os.PathLike) -> str | None:
    """The commit checked out in the repository whose work tree is ``work_tree`` (a
    submodule: its ``.git`` is a file naming the git directory), read from its files;
    None when they do not say (no commit yet, refs git keeps otherwise, unreadable)."""
    dot_git = os.path.join(work_tree, ".git")
    try:
        if os.path.isfile(dot_git):
            with open(dot_git, encoding="utf-8", errors="replace") as source:
                named = source.read(4096).strip()
            if not named.startswith("gitdir:"):
                return None
            git_dir = os.path.join(work_tree, named[len("gitdir:"):].strip())
        else:
            git_dir = dot_git
        with open(os.path.join(git_dir, "HEAD"), encoding="utf-8", errors="replace") as source:
            head = source.read(4096).strip()
        common = common_dir(git_dir)
        for _ in range(5):  # a symbolic ref may name another; git stops at 5 too
            if not head.startswith("ref: "):
                return head if _is_object_id(head) else None
            ref = head[5:].strip()
            try:
                with open(os.path.join(common, ref), encoding="utf-8",
                          errors="replace") as source:
                    head = source.read(4096).strip()
            except FileNotFoundError:
                return _packed_ref(common, ref)
    except OSError:
        return None
    return None


def _is_object_id(text: str) -> bool:
    return len(text) in (40, 64) and all(char in "0123456789abcdef" for char in text)


def _packed_ref(common: str, ref: str) -> str | None:
    try:
        with open(os.path.join(common, "packed-refs"), encoding="utf-8",
                  errors="replace") as packed:
            for line in packed:
                oid, _, name = line.rstrip("\n").partition(" ")
                if name == ref and _is_object_id(oid):
                    return oid
    except FileNotFoundError:
        return None
    return None


def head_token(git_dir: str | os.PathLike) -> tuple:
    """Cheap fingerprint of where HEAD points: changes whenever a commit moves it."""
    git_dir = os.fspath(git_dir)
    try:
        # read raw (a few dozen bytes): it runs for every change L3 judges
        fd = os.open(os.path.join(git_dir, "HEAD"), os.O_RDONLY | os.O_CLOEXEC)
        try:
            head = os.read(fd, 4096)
        finally:
            os.close(fd)
        common = common_dir(git_dir)
    except OSError as exc:  # mid-rewrite by git: a token that matches nothing cached
        return ("unreadable", str(exc), time.monotonic())
    parts: list = [head]
    if head.startswith(b"ref: "):
        ref = os.fsdecode(head[5:].strip())
        for candidate in (os.path.join(common, ref), os.path.join(common, "packed-refs")):
            # no loose ref / no packed-refs file: absence (None) is part of the token
            parts.append(file_signature(candidate))
    return tuple(parts)
