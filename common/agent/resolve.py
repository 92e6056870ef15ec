"""Where a decoded target lands: an absolute, symlink-free path, kept if inside the workspace.

A relative path starts at the caller's cwd or directory fd, read as /proc/TID/cwd or
/proc/TID/fd/N (the kernel's canonical names); an absolute path inside the workspace
starts at its canonical root.  Only the components after that need checking: one
readlink each shows none is a symlink (the last only when the call follows it, since
then the symlink's target is what changes).  Anything else (a symlink on the way, "..",
a path outside the workspace that may lead into it) is resolved with the C library's
realpath for the directory.  ``/proc/self`` and ``/proc/thread-self`` in a path mean the
caller's, not the supervisor's.  A call that will fail (a missing directory) may still
leave a record: records are what the agent asked for, written before the call runs.

Paths are resolved in the supervisor's mount namespace and root: a caller that chroots
or enters another mount namespace is resolved as if it had not.
"""
from __future__ import annotations

import ctypes
import os

from gitsieve.common.agent.decode import Target
from gitsieve.common.agent.seccomp import AT_FDCWD, PATH_MAX

_libc = ctypes.CDLL(None, use_errno=True)
_libc.realpath.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
_libc.realpath.restype = ctypes.c_char_p
_libc.readlink.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_size_t]
_libc.readlink.restype = ctypes.c_ssize_t

_DELETED = b" (deleted)"


class Resolver:
    """Maps targets of a calling thread to workspace-relative paths (bytes), or None."""

    def __init__(self, workspace: str | os.PathLike):
        self.root = os.fsencode(os.path.realpath(workspace))
        self.prefix = self.root.rstrip(b"/") + b"/"
        self._buffer = ctypes.create_string_buffer(PATH_MAX + 1)

    def relative(self, canonical: bytes) -> bytes | None:
        """The workspace-relative form of a canonical path; None outside the workspace, for
        the workspace itself and inside its .git."""
        if not canonical.startswith(self.prefix):
            return None
        rel = canonical[len(self.prefix):]
        if rel == b".git" or rel.startswith(b".git/") or not rel:
            return None
        return rel

    def resolve(self, tid: int, target: Target) -> bytes | None:
        if target.path is None:
            return self.relative_fd(tid, target.dirfd)
        path = target.path
        if path[0] == 0x2F:  # "/"
            full = self._own_proc(tid, path)
            if full.startswith(self.prefix):
                # the workspace root is canonical: only what follows it needs checking
                return self._walk(self.root, full[len(self.prefix):], target.follow)
            canonical = self.canonical(full, target.follow)
            return None if canonical is None else self.relative(canonical)
        base = self._base(tid, target.dirfd)  # the kernel's name for it: canonical
        if base is None:
            return None
        return self._walk(base, path, target.follow)

    def _walk(self, base: bytes, rest: bytes, follow: bool) -> bytes | None:
        """``rest`` below the canonical directory ``base``: one readlink per component of
        ``rest`` shows none is a symlink (the last only when the call follows it), else
        the general resolution takes over.  Costs no realpath in the common case."""
        joined = base if base != b"/" else b""
        if b"/" not in rest and rest != b"." and rest != b"..":  # a plain name: most calls
            joined += b"/" + rest
            if not (follow and self._is_symlink(joined)):
                return self.relative(joined)
            return self.relative(os.path.realpath(joined))
        parts = rest.split(b"/")
        last = len(parts) - 1
        for index, part in enumerate(parts):
            if part in (b"", b".", b".."):
                break  # "//", "." or "..": resolve the general way
            joined += b"/" + part
            if (index < last or follow) and self._is_symlink(joined):
                break
        else:
            return self.relative(joined)
        canonical = self.canonical(base.rstrip(b"/") + b"/" + rest, follow)
        return None if canonical is None else self.relative(canonical)

    def relative_fd(self, tid: int, fd: int) -> bytes | None:
        """The workspace path an open fd of the caller names (None when deleted)."""
        try:
            link = os.readlink(f"/proc/{tid}/fd/{fd}".encode())
        except OSError:
            return None  # a closed fd: the call fails with EBADF
        if link.endswith(_DELETED) and not os.path.lexists(link):
            return None
        return self.relative(link)

    def _base(self, tid: int, dirfd: int) -> bytes | None:
        where = f"/proc/{tid}/cwd" if dirfd == AT_FDCWD else f"/proc/{tid}/fd/{dirfd}"
        try:
            base = os.readlink(where.encode())
        except OSError:
            return None
        if not base.startswith(b"/") or (base.endswith(_DELETED) and not os.path.lexists(base)):
            return None  # not a directory path (pipe, socket) or removed: nothing to name
        return base

    @staticmethod
    def _own_proc(tid: int, path: bytes) -> bytes:
        for alias, own in ((b"/proc/self", b"/proc/%d" % tid),
                           (b"/proc/thread-self", b"/proc/%d/task/%d" % (tid, tid))):
            if path == alias or path.startswith(alias + b"/"):
                return own + path[len(alias):]
        return path

    def canonical(self, full: bytes, follow: bool) -> bytes | None:
        """``full`` with its directories' symlinks resolved (and the last component's when
        ``follow``); None when a directory on the way does not exist (the call fails)."""
        head, tail = os.path.split(full.rstrip(b"/") or b"/")
        if tail in (b"", b".", b".."):
            return self._realpath(full)
        parent = self._realpath(head or b"/")
        if parent is None:
            return None
        candidate = parent + b"/" + tail if parent != b"/" else b"/" + tail
        if follow and self._is_symlink(candidate):
            # the target changes; a dangling link still names where O_CREAT creates
            return os.path.realpath(candidate)
        return candidate

    def _realpath(self, path: bytes) -> bytes | None:
        return _libc.realpath(path, self._buffer)

    def _is_symlink(self, path: bytes) -> bool:
        # readlink fails (EINVAL, ENOENT) for anything else; no Python exception to build
        return _libc.readlink(path, self._buffer, PATH_MAX) >= 0
