"""One workspace watched by fanotify: inode marks on its directories only.

A filesystem-wide mark wakes its owner for every write on the disk (issue 13 counted ~850
events a minute per L2 worker from writes elsewhere).  A :class:`WorkspaceWatch` marks each
directory of one workspace instead, in two groups of its own:

- a classic group (an open fd per event, hence the file's path and identity) for
  ``FAN_MODIFY | FAN_CLOSE_WRITE`` on the directory's children (``FAN_EVENT_ON_CHILD``);
- a FID group (``FAN_REPORT_DFID_NAME | FAN_REPORT_FID | FAN_REPORT_TARGET_FID``) for
  ``FAN_CREATE | FAN_DELETE | FAN_MOVED_FROM | FAN_MOVED_TO`` with ``FAN_ONDIR``: who created,
  deleted or renamed each entry, and which directories appear.

A directory is marked before it is listed, so an entry made meanwhile is either listed or
reported by the new mark.  A new directory (created or moved in) is marked as soon as its
event is read, then scanned: every file already in it is reported :class:`.events.Unmarked`
(its writes before the mark were not seen: UNKNOWN, never the user's).  After an overflow of
the FID group the whole tree is scanned again the same way (lost events may include new
directories).  ``.git`` directories are never marked; directories on another filesystem are
not followed; a directory that is neither the subscriber's nor world-listable is skipped
(its names are not the subscriber's to learn: the helper's rule, moot for root).

A process that makes a directory and writes in it at once (``mkdir -p d && echo x > d/f``,
an agent's new output folder) is faster than any mark.  A third group, the *backstop*, sees
who created or moved in each file anywhere on the filesystem (``FAN_CREATE |
FAN_MOVED_TO``, FID mode, a filesystem mark); it is never polled, so files made elsewhere
wake nothing: its owner reads it before judging a change and on its periodic tick
(:meth:`WorkspaceWatch.drain_backstop`), and keeps only the events in directories that were
marked late.  A file found unmarked whose creation (or arrival) it saw is then its
maker's, like any file moved into place; without that (a tree moved in whole, a backstop
overflow) the file stays UNKNOWN.

L2's own exact attribution (root) and ``gitsieve helper`` both use this class, so both wake
only for their workspaces.  Where the kernel or filesystem refuses FID groups, L2 (with
``unscoped_fallback``) marks the whole filesystem for writes instead, with one warning:
deletions and renames then go unattributed and writes elsewhere wake it again.

Pure logic over real fds: no sockets; the owner decides what to do with the events.
"""
from __future__ import annotations

import enum
import errno
import logging
import os
import stat
import time
from typing import Callable, Iterator

from gitsieve.common.judge.attribution import fanotify as fan
from gitsieve.common.judge.attribution.events import (
    LineageEntry,
    NameOp,
    Op,
    Overflow,
    OverflowSource,
    Unmarked,
    Write,
)
from gitsieve.common.judge.attribution.file_identity import FileIdentifier

log = logging.getLogger(__name__)

WRITE_MASK = fan.FAN_MODIFY | fan.FAN_CLOSE_WRITE | fan.FAN_EVENT_ON_CHILD
NAME_MASK = (fan.FAN_CREATE | fan.FAN_DELETE | fan.FAN_MOVED_FROM | fan.FAN_MOVED_TO
             | fan.FAN_ONDIR | fan.FAN_EVENT_ON_CHILD)
# Without FAN_REPORT_TARGET_FID (kernels before 5.17) a removed directory's handle stays in
# the marked set until the watch closes; nothing else changes.
_NAME_GROUP_FLAGS = (fan.FAN_REPORT_DFID_NAME | fan.FAN_REPORT_FID | fan.FAN_REPORT_TARGET_FID,
                     fan.FAN_REPORT_DFID_NAME | fan.FAN_REPORT_FID)
# Name ops in the order they are reported when the kernel merged several into one event.
_NAME_OPS = ((fan.FAN_CREATE, Op.CREATE), (fan.FAN_MOVED_TO, Op.MOVED_TO),
             (fan.FAN_MOVED_FROM, Op.MOVED_FROM), (fan.FAN_DELETE, Op.DELETE))
BACKSTOP_MASK = fan.FAN_CREATE | fan.FAN_MOVED_TO
_BACKSTOP_OPS = ((fan.FAN_CREATE, Op.CREATE), (fan.FAN_MOVED_TO, Op.MOVED_TO))
# Directories marked late are remembered this long (their early files' makers are read
# from the backstop within a second or two; the recorder's lookback is shorter still).
LATE_SECONDS = 30.0
_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_GIT = ".git"
_NO_FD_LEFT = "lost events: no file descriptor was left to open their files"


class MarkScope(enum.Enum):
    """What the write group marks."""

    DIRECTORIES = "directories"  # inode marks on the workspace's directories
    FILESYSTEM = "filesystem"    # the fallback: the whole filesystem
    MOUNT = "mount"              # the fallback on kernels without filesystem marks


class _Marked(enum.Enum):
    NEW = "new"
    KNOWN = "known"      # marked before (a directory moved within the workspace)
    SKIPPED = "skipped"  # another filesystem, or not the subscriber's to list


class NoCapacity(OSError):
    """fanotify groups or marks exhausted (fs.fanotify.max_user_groups / max_user_marks)."""


def may_watch(info: os.stat_result, uid: int) -> bool:
    """A directory whose names ``uid`` may learn: its own, or one anybody may list."""
    if uid == 0 or info.st_uid == uid:
        return True
    return info.st_mode & (stat.S_IROTH | stat.S_IXOTH) == (stat.S_IROTH | stat.S_IXOTH)


class WorkspaceWatch:
    """The marks and groups of one workspace; :meth:`drain_writes` and :meth:`drain_names`
    turn its events into :mod:`.events` values.

    ``root_fd`` (an fd of the top directory) is owned by the watch.  ``lineage(pid)``
    returns the writer's lineage as known now; ``on_batch`` runs after each read, before its
    events are resolved (the owner applies queued process events: a writer's fork and exec
    precede its write).  ``identify`` computes the identities of written files.
    """

    def __init__(self, workspace_id: int, root_fd: int, uid: int,
                 lineage: Callable[[int], tuple[LineageEntry, ...]],
                 on_batch: Callable[[], object] | None = None,
                 identify: FileIdentifier | None = None, unscoped_fallback: bool = False):
        self.id, self.root_fd, self.uid = workspace_id, root_fd, uid
        self.lineage, self.on_batch = lineage, on_batch
        self.identify = identify or FileIdentifier()
        self._directory_handles = FileIdentifier()
        self.root = os.readlink(f"/proc/self/fd/{root_fd}")
        self.prefix = self.root.rstrip("/") + "/"
        self.dev = os.fstat(root_fd).st_dev
        self.marked: set[bytes] = set()  # handles of marked directories
        self.late: dict[bytes, float] = {}  # handles of directories marked late -> when
        self.scope = MarkScope.DIRECTORIES
        self.skipped = 0
        self.events = 0
        self.sent = 0
        self.unresolved = 0
        self.overflows = 0
        self._own_pid = os.getpid()
        self.write_fd = self.name_fd = self.backstop_fd = -1
        self.backstop_overflows = 0
        now = (time.time(), time.monotonic())
        self._last_read: dict[int, tuple[float, float]] = {}
        # the write group's events each bring an open fd: read no more than fit
        self._write_read_size = fan.fd_events_read_size(fan.allow_open_files())
        try:
            self.write_fd = self._open_group(0)
            self._last_read[self.write_fd] = now
            try:
                self.name_fd = self._open_name_group()
            except fan.FanotifyUnavailable as exc:
                if not unscoped_fallback:
                    raise
                self._mark_filesystem(exc)
                return
            self._last_read[self.name_fd] = now
            self.backstop_fd = self._open_backstop()
            self.mark_tree(os.dup(root_fd), report_files=False)
        except BaseException:
            self.close()
            raise

    @staticmethod
    def _open_group(flags: int) -> int:
        try:
            return fan.open_group(flags)
        except fan.FanotifyUnavailable as exc:
            if exc.errno == errno.EMFILE:
                raise NoCapacity(exc.errno, f"{exc} (raise fs.fanotify.max_user_groups)"
                                 ) from None
            raise

    def _open_name_group(self) -> int:
        for flags in _NAME_GROUP_FLAGS:
            try:
                return self._open_group(flags)
            except NoCapacity:
                raise
            except fan.FanotifyUnavailable as exc:
                refusal = exc
        raise refusal

    def _open_backstop(self) -> int:
        """The unpolled FID group seeing every creation on the filesystem, or -1 (one
        warning) where it is refused: early files of new directories stay UNKNOWN."""
        try:
            fd = self._open_group(fan.FAN_REPORT_DFID_NAME | fan.FAN_REPORT_FID)
        except fan.FanotifyUnavailable as exc:
            log.warning("%s: no backstop group (%s): files written in a new directory "
                        "before it is watched stay UNKNOWN", self.root, exc)
            return -1
        try:
            fan.mark(fd, fan.FAN_MARK_ADD | fan.FAN_MARK_FILESYSTEM, BACKSTOP_MASK,
                     self.root_fd, None)
        except OSError as exc:
            os.close(fd)
            log.warning("%s: no backstop mark (%s): files written in a new directory "
                        "before it is watched stay UNKNOWN", self.root, exc)
            return -1
        return fd

    def _mark_filesystem(self, refusal: OSError) -> None:
        """No FID group: new directories cannot be seen, so writes are marked wide."""
        for flag, scope in ((fan.FAN_MARK_FILESYSTEM, MarkScope.FILESYSTEM),
                            (fan.FAN_MARK_MOUNT, MarkScope.MOUNT)):
            try:
                fan.mark(self.write_fd, fan.FAN_MARK_ADD | flag,
                         fan.FAN_MODIFY | fan.FAN_CLOSE_WRITE, self.root_fd, None)
            except OSError as exc:
                log.debug("fanotify_mark(%s) refused: %s", scope.value, exc)
                continue
            self.scope = scope
            log.warning("fanotify FID mode unavailable (%s): deletions and renames without a "
                        "write are left to the content layer, and writes are watched on the "
                        "whole %s", refusal, scope.value)
            return
        raise fan.FanotifyUnavailable(refusal.errno, f"fanotify_mark on {self.root}: "
                                                     f"{refusal}")

    def fds(self) -> tuple[int, ...]:
        """The descriptors to poll (never the backstop's)."""
        return tuple(fd for fd in (self.write_fd, self.name_fd) if fd >= 0)

    def close(self) -> None:
        for fd in (self.write_fd, self.name_fd, self.backstop_fd, self.root_fd):
            if fd >= 0:
                os.close(fd)
        self.write_fd = self.name_fd = self.backstop_fd = self.root_fd = -1

    # ----- marking ---------------------------------------------------------------------
    def mark_tree(self, top_fd: int, report_files: bool) -> list[str]:
        """Mark the directory ``top_fd`` (consumed) and every directory below it; with
        ``report_files``, return the files of directories that were not marked before
        (absolute paths): their writes before now were not seen.  Open descriptors: one
        per level of depth."""
        found: list[str] = []
        pending = [(top_fd, [])]
        try:
            pending[-1] = (top_fd, self._enter(top_fd, report_files, found))
            while pending:
                dir_fd, subdirectories = pending[-1]
                if not subdirectories:
                    pending.pop()
                    os.close(dir_fd)
                    continue
                name = subdirectories.pop()
                try:
                    child = os.open(name, _DIRECTORY, dir_fd=dir_fd)
                except OSError as exc:  # gone, or replaced by a file or symlink meanwhile
                    log.debug("%s: directory %r not followed: %s", self.root, name, exc)
                    continue
                pending.append((child, []))
                pending[-1] = (child, self._enter(child, report_files, found))
        finally:
            for dir_fd, _ in pending:
                os.close(dir_fd)
        return found

    def _enter(self, dir_fd: int, report_files: bool, found: list[str]) -> list[str]:
        """Mark ``dir_fd``, then list it: its subdirectories to visit (none if skipped)."""
        marked = self._mark(dir_fd)
        if marked is _Marked.SKIPPED:
            return []
        if report_files and marked is _Marked.NEW:
            handle = self._directory_handles.of_fd(dir_fd)
            if handle is not None:
                self.late[handle.key] = time.monotonic()
        subdirectories, files = [], []
        try:
            with os.scandir(dir_fd) as entries:
                for entry in entries:
                    if entry.is_dir(follow_symlinks=False):
                        if entry.name != _GIT:
                            subdirectories.append(entry.name)
                    elif report_files and marked is _Marked.NEW:
                        files.append(entry.name)
        except OSError as exc:  # removed meanwhile: nothing in it to watch
            log.debug("%s: cannot list a directory: %s", self.root, exc)
            return []
        if files:
            base = os.readlink(f"/proc/self/fd/{dir_fd}")
            found.extend(os.path.join(base, name) for name in files)
        return subdirectories

    def _mark(self, dir_fd: int) -> _Marked:
        info = os.fstat(dir_fd)
        if info.st_dev != self.dev or not may_watch(info, self.uid):
            self.skipped += 1
            return _Marked.SKIPPED
        handle = self._directory_handles.of_fd(dir_fd)
        if handle is not None and handle.key in self.marked:
            return _Marked.KNOWN
        for group, mask in ((self.write_fd, WRITE_MASK), (self.name_fd, NAME_MASK)):
            try:
                fan.mark(group, fan.FAN_MARK_ADD | fan.FAN_MARK_ONLYDIR, mask, dir_fd, None)
            except OSError as exc:
                if exc.errno == errno.ENOSPC:
                    raise NoCapacity(exc.errno, "fanotify marks exhausted (raise "
                                                "fs.fanotify.max_user_marks)") from None
                raise
        if handle is not None:
            self.marked.add(handle.key)
        return _Marked.NEW

    def directories(self) -> int:
        return len(self.marked)

    # ----- events ----------------------------------------------------------------------
    def _relative(self, path: str) -> bytes | None:
        """``path`` relative to the top directory, or None outside it or inside a .git."""
        if not path.startswith(self.prefix):
            return None
        rel = path[len(self.prefix):]
        if rel == _GIT or rel.startswith(_GIT + "/") or f"/{_GIT}/" in f"/{rel}/":
            return None
        return os.fsencode(rel)

    def _read(self, fd: int) -> Iterator[bytes | None]:
        """Each buffer read from ``fd``, one at a time, until the events the kernel had
        queued when the read began are read: the caller handles (and closes the fds of) one
        buffer before the next is read.  None where the kernel could not open an event's
        file (EMFILE, ENFILE): it dropped that event.  Read until empty, a drain under an
        agent writing faster than it reads ran until the agent stopped; every event queued
        before the drain began is read all the same (the queue is first in, first out)."""
        size = self._write_read_size if fd == self.write_fd else fan.READ_SIZE
        queued = fan.queued_events(fd)
        while queued is None or queued > 0:
            try:
                data = os.read(fd, size)
            except BlockingIOError:
                return
            except InterruptedError:
                continue
            except OSError as exc:
                if exc.errno not in (errno.EMFILE, errno.ENFILE):
                    raise
                yield None
                return
            if not data:
                return
            if queued is not None:
                queued -= fan.count_events(data)
            yield data

    def _overflow(self, fd: int, wall: float, mono: float, why: str = "overflowed") -> Overflow:
        self.overflows += 1
        since_wall, since_mono = self._last_read[fd]
        log.warning("fanotify queue of %s %s: writes there are unknown until now",
                    self.root, why)
        return Overflow(self.id, OverflowSource.FANOTIFY, since_wall, since_mono, wall, mono, 0)

    def _lineage_of(self, pid: int, known: dict) -> tuple[LineageEntry, ...]:
        lineage = known.get(pid)
        if lineage is None:
            lineage = known[pid] = self.lineage(pid)
        return lineage

    def drain_writes(self) -> list:
        """Writes (and overflow notices) read from the write group."""
        out: list = []
        lineages: dict[int, tuple[LineageEntry, ...]] = {}
        for data in self._read(self.write_fd):
            if self.on_batch is not None:
                self.on_batch()
            wall, mono = time.time(), time.monotonic()
            if data is None:
                out.append(self._overflow(self.write_fd, wall, mono, _NO_FD_LEFT))
                self._last_read[self.write_fd] = (wall, mono)
                continue
            for event in fan.iter_events(data):
                self.events += 1
                if event.mask & fan.FAN_Q_OVERFLOW:
                    out.append(self._overflow(self.write_fd, wall, mono))
                if event.fd < 0:
                    continue
                try:
                    message = self._write(event, wall, mono, lineages)
                finally:
                    os.close(event.fd)
                if message is not None:
                    out.append(message)
            self._last_read[self.write_fd] = (wall, mono)
        self.sent += len(out)
        return out

    def _write(self, event: fan.RawEvent, wall: float, mono: float,
               lineages: dict) -> Write | None:
        if event.pid == self._own_pid:
            return None
        try:
            path = os.readlink(f"/proc/self/fd/{event.fd}")
        except OSError as exc:
            log.debug("fanotify: cannot resolve event fd: %s", exc)
            self.unresolved += 1
            return None
        rel = self._relative(path)
        if rel is None:
            return None
        identity = self.identify.of_fd(event.fd)
        if identity is None:
            self.unresolved += 1
            return None
        op = Op.CLOSE_WRITE if event.mask & fan.FAN_CLOSE_WRITE else Op.WRITE
        return Write(self.id, rel, op, event.pid, wall, mono, identity.encode(),
                     self._lineage_of(event.pid, lineages))

    def drain_names(self) -> list:
        """Name operations, files found unmarked, and overflow notices from the FID group."""
        out: list = []
        if self.name_fd < 0:
            return out
        lineages: dict[int, tuple[LineageEntry, ...]] = {}
        directories: dict[bytes, str | None] = {}  # see _directory
        for data in self._read(self.name_fd):
            directories.clear()
            if self.on_batch is not None:
                self.on_batch()
            wall, mono = time.time(), time.monotonic()
            if data is None:  # a FID group opens no files; should the kernel say so anyway
                out.append(self._overflow(self.name_fd, wall, mono, _NO_FD_LEFT))
                out.extend(self._arrived(self.root, wall, mono))
                continue
            for event in fan.iter_events(data):
                self.events += 1
                if event.mask & fan.FAN_Q_OVERFLOW:
                    # lost events may include new directories: find and mark them now
                    out.append(self._overflow(self.name_fd, wall, mono))
                    out.extend(self._arrived(self.root, wall, mono))
                    continue
                out.extend(self._name_ops(event, wall, mono, lineages, directories))
            self._last_read[self.name_fd] = (wall, mono)
        self.sent += len(out)
        return out

    def _directory(self, handle: bytes, directories: dict[bytes, str | None]) -> str | None:
        """The path of the directory ``handle`` names now, asked of the kernel once a
        buffer (``directories``, emptied for each): an agent's storm of new files in one
        directory asked (open, readlink, close) for every file."""
        if handle not in directories:
            directories[handle] = fan.directory_of(self.root_fd, handle)
        return directories[handle]

    def _name_ops(self, event: fan.RawEvent, wall: float, mono: float,
                  lineages: dict, directories: dict[bytes, str | None]) -> list:
        fid = fan.parse_fid_info(event.info)
        directory = None if fid is None else self._directory(fid.directory, directories)
        if directory is None:
            self.unresolved += 1
            return []
        path = os.path.join(directory, os.fsdecode(fid.name))
        rel = self._relative(path)
        if rel is None:
            return []
        is_dir = bool(event.mask & fan.FAN_ONDIR)
        out: list = []
        if event.pid != self._own_pid:  # its own are no change, but its directories count
            lineage = self._lineage_of(event.pid, lineages)
            out = [NameOp(self.id, rel, op, event.pid, wall, mono, is_dir, lineage)
                   for bit, op in _NAME_OPS if event.mask & bit]
        if is_dir:
            if event.mask & (fan.FAN_CREATE | fan.FAN_MOVED_TO) and fid.target not in \
                    self.marked:
                out.extend(self._arrived(path, wall, mono))
            if event.mask & (fan.FAN_DELETE | fan.FAN_MOVED_FROM) and fid.target:
                self.marked.discard(fid.target)
        return out

    def drain_backstop(self) -> list:
        """Who created or moved in files in directories marked late, from the backstop
        group (read after the polled groups, so the directories are known by then)."""
        out: list = []
        if self.backstop_fd < 0:
            return out
        horizon = time.monotonic() - LATE_SECONDS
        for handle in [h for h, marked in self.late.items() if marked < horizon]:
            del self.late[handle]
        lineages: dict[int, tuple[LineageEntry, ...]] = {}
        directories: dict[bytes, str | None] = {}  # see _directory
        for data in self._read(self.backstop_fd):
            if not self.late or data is None:
                continue  # no directory to ask about: the read only empties the queue
            directories.clear()
            if self.on_batch is not None:
                self.on_batch()
            wall, mono = time.time(), time.monotonic()
            for event in fan.iter_events(data):
                if event.mask & fan.FAN_Q_OVERFLOW:
                    self.backstop_overflows += 1
                    continue
                fid = fan.parse_fid_info(event.info)
                # struct file_handle (bytes, type, handle) -> the identity's (type, handle)
                if fid is None or fid.directory[4:] not in self.late:
                    continue
                directory = self._directory(fid.directory, directories)
                rel = None if directory is None else self._relative(
                    os.path.join(directory, os.fsdecode(fid.name)))
                if rel is None or event.pid == self._own_pid:
                    continue
                lineage = self._lineage_of(event.pid, lineages)
                out.extend(NameOp(self.id, rel, op, event.pid, wall, mono, False, lineage)
                           for bit, op in _BACKSTOP_OPS if event.mask & bit)
        self.sent += len(out)
        return out

    def _arrived(self, path: str, wall: float, mono: float) -> list[Unmarked]:
        """A directory created or moved in: mark it at once, then report what it holds."""
        try:
            fd = os.open(path, _DIRECTORY)
        except OSError as exc:  # gone again, or replaced by a file or symlink meanwhile
            log.debug("new directory %s not marked: %s", path, exc)
            return []
        # A parent renamed meanwhile could make ``path`` lead elsewhere: check the real one.
        real = os.readlink(f"/proc/self/fd/{fd}")
        if real != self.root and self._relative(real) is None:
            os.close(fd)
            return []
        try:
            files = self.mark_tree(fd, report_files=True)
        except NoCapacity as exc:
            log.error("%s: %s; writes in %s are unknown", self.root, exc, path)
            rel = self._relative(path)
            return [] if rel is None else [Unmarked(self.id, rel, wall, mono)]
        return [Unmarked(self.id, rel, wall, mono)
                for rel in map(self._relative, files) if rel is not None]
