"""fanotify through ctypes: which process wrote which file, as the kernel reports it.

No maintained Python binding exists, so this module calls ``fanotify_init`` and
``fanotify_mark`` from libc.  A :class:`WriteRecorder` owns one notification group
(``FAN_CLASS_NOTIF``) marking the whole filesystem holding the workspace
(``FAN_MARK_FILESYSTEM``, or ``FAN_MARK_MOUNT`` on kernels without it) for
``FAN_MODIFY | FAN_CLOSE_WRITE``.  Every event carries the writer's pid and an open fd of the
file; the fd gives the file's current path and its identity (:mod:`.file_identity`: a
file handle carrying the inode generation, which a freed inode cannot pass on to the next
file, unlike the inode number), then is closed.  Writes under the workspace (``.git`` and
the runtime directory excluded) are kept per identity for ``history`` seconds
(:class:`.write_history.WriteHistory`), so a change can be attributed even after a
rename (atomic replace: write ``x.tmp``, rename to ``x``).

The kernel queues a fanotify event inside the write system call, before the inotify event
the watcher reads for the same write, so draining the group before judging a change is
enough to know every writer of it.  Needs CAP_SYS_ADMIN; without it the constructor
raises :class:`FanotifyUnavailable`.

Classic (fd) events carry no deletions or renames.  A :class:`NameRecorder` owns a second
group in FID mode (``FAN_REPORT_DFID_NAME``) marking the same filesystem for
``FAN_DELETE | FAN_MOVED_FROM | FAN_MOVED_TO | FAN_CREATE``: each event names the directory
by file handle plus the entry's name; the handle is opened with ``open_by_handle_at`` (on a
descriptor of the workspace) and its path read back from ``/proc/self/fd``.  Name operations
are kept per workspace-relative path.  Kernels or filesystems without FID support refuse
it with :class:`FanotifyUnavailable` (the owner then attributes writes only).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import errno
import logging
import os
import struct
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable, Iterator

from gitsieve.common.judge.attribution.file_identity import FileIdentifier, Keying
from gitsieve.common.judge.attribution.write_history import (
    HISTORY_PER_FILE,
    HISTORY_SECONDS,
    WriteHistory,
)

log = logging.getLogger(__name__)

FAN_CLOEXEC = 0x01
FAN_NONBLOCK = 0x02
FAN_CLASS_NOTIF = 0x00
FAN_REPORT_FID = 0x200
FAN_REPORT_DFID_NAME = 0x400 | 0x800  # FAN_REPORT_DIR_FID | FAN_REPORT_NAME
FAN_REPORT_TARGET_FID = 0x1000
FAN_MARK_ADD = 0x01
FAN_MARK_DONT_FOLLOW = 0x04
FAN_MARK_ONLYDIR = 0x08
FAN_MARK_MOUNT = 0x10
FAN_MARK_FILESYSTEM = 0x100
FAN_MODIFY = 0x02
FAN_ATTRIB = 0x04
FAN_CLOSE_WRITE = 0x08
FAN_MOVED_FROM = 0x40
FAN_MOVED_TO = 0x80
FAN_CREATE = 0x100
FAN_DELETE = 0x200
FAN_Q_OVERFLOW = 0x4000
FAN_EVENT_ON_CHILD = 0x08000000
FAN_ONDIR = 0x40000000
FAN_EVENT_INFO_TYPE_FID = 1
FAN_EVENT_INFO_TYPE_DFID_NAME = 2
FAN_NOFD = -1
AT_FDCWD = -100
FANOTIFY_METADATA_VERSION = 3

# struct fanotify_event_metadata: u32 event_len, u8 vers, u8 reserved, u16 metadata_len,
# u64 mask (aligned), s32 fd, s32 pid
_METADATA = struct.Struct("=IBBHQii")
# struct fanotify_event_info_header: u8 info_type, u8 pad, u16 len; then (fid records)
# __kernel_fsid_t (8 bytes) and struct file_handle: u32 handle_bytes, s32 handle_type, bytes.
_INFO_HEADER = struct.Struct("=BBH")
_FSID_SIZE = 8
_HANDLE_HEADER = struct.Struct("=Ii")
_HANDLE_TYPE = struct.Struct("=i")
READ_SIZE = 64 * 1024
_PRUNE_EVERY = 5.0
_DELETED_SUFFIX = " (deleted)"


class FanotifyUnavailable(OSError):
    """fanotify cannot be used here (no privilege, no kernel support, no libc symbol)."""


@dataclass(frozen=True)
class WriteEvent:
    """One write the kernel reported: who (pid) and when it was read (wall clock)."""

    pid: int
    stamp: float
    mask: int
    path: str
    evidence: object = None  # what the writer was at read time (set by the owner's resolver)


# ----- the system calls ----------------------------------------------------------------
_LIBC = None


def libc():
    global _LIBC
    if _LIBC is None:
        name = ctypes.util.find_library("c") or "libc.so.6"
        lib = ctypes.CDLL(name, use_errno=True)
        try:
            lib.fanotify_init.argtypes = [ctypes.c_uint, ctypes.c_uint]
            lib.fanotify_init.restype = ctypes.c_int
            lib.fanotify_mark.argtypes = [ctypes.c_int, ctypes.c_uint, ctypes.c_uint64,
                                          ctypes.c_int, ctypes.c_char_p]
            lib.fanotify_mark.restype = ctypes.c_int
            lib.open_by_handle_at.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
            lib.open_by_handle_at.restype = ctypes.c_int
        except AttributeError as exc:
            raise FanotifyUnavailable(errno.ENOSYS, f"libc has no fanotify: {exc}") from None
        _LIBC = lib
    return _LIBC


def open_group(flags: int) -> int:
    """A non-blocking notification group; ``flags`` adds FAN_REPORT_* bits."""
    fd = libc().fanotify_init(FAN_CLASS_NOTIF | FAN_CLOEXEC | FAN_NONBLOCK | flags,
                              os.O_RDONLY | os.O_LARGEFILE | os.O_CLOEXEC)
    if fd < 0:
        err = ctypes.get_errno()
        raise FanotifyUnavailable(err, f"fanotify_init({flags:#x}): {os.strerror(err)}")
    return fd


def mark(group: int, flags: int, mask: int, dirfd: int, path: str | None) -> None:
    """``fanotify_mark``; ``path`` None marks ``dirfd`` itself.  OSError on refusal."""
    raw = None if path is None else os.fsencode(path)
    if libc().fanotify_mark(group, flags, mask, dirfd, raw) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"fanotify_mark: {os.strerror(err)}")


@dataclass(frozen=True)
class RawEvent:
    mask: int
    fd: int
    pid: int
    info: bytes  # the info records after the metadata (FID groups)


def iter_events(data: bytes) -> Iterator[RawEvent]:
    """The events of one read.  Corrupt framing ends the batch with an error line."""
    offset = 0
    while offset + _METADATA.size <= len(data):
        event_len, version, _, metadata_len, mask, fd, pid = _METADATA.unpack_from(data,
                                                                                 offset)
        if event_len < _METADATA.size or offset + event_len > len(data):
            log.error("fanotify: event of %d bytes; rest of the read dropped", event_len)
            return
        if version != FANOTIFY_METADATA_VERSION:
            log.warning("fanotify: metadata version %d, expected %d", version,
                        FANOTIFY_METADATA_VERSION)
        yield RawEvent(mask, fd, pid, data[offset + metadata_len:offset + event_len])
        offset += event_len


@dataclass(frozen=True)
class FidInfo:
    """What a FID group's event names: the directory (its ``struct file_handle`` bytes, as
    ``open_by_handle_at`` takes them) and the entry's name, and, with
    FAN_REPORT_TARGET_FID, the entry itself (handle type + bytes, the key format of
    :class:`.file_identity.FileIdentity`)."""

    fsid: bytes
    directory: bytes
    name: bytes
    target: bytes | None


def parse_fid_info(info: bytes) -> FidInfo | None:
    """The DFID_NAME (and FID) records of one event, or None when it has no named entry."""
    offset, directory, name, target, fsid = 0, None, b"", None, b""
    while offset + _INFO_HEADER.size <= len(info):
        info_type, _, length = _INFO_HEADER.unpack_from(info, offset)
        if length < _INFO_HEADER.size + _FSID_SIZE + _HANDLE_HEADER.size \
                or offset + length > len(info):
            log.debug("fanotify(FID): info record of %d bytes ignored", length)
            return None
        record = info[offset:offset + length]
        handle_at = _INFO_HEADER.size + _FSID_SIZE
        handle_bytes, handle_type = _HANDLE_HEADER.unpack_from(record, handle_at)
        end = handle_at + _HANDLE_HEADER.size + handle_bytes
        if end > length:
            return None
        if info_type == FAN_EVENT_INFO_TYPE_DFID_NAME:
            fsid = record[_INFO_HEADER.size:handle_at]
            directory = record[handle_at:end]
            name = record[end:].split(b"\0", 1)[0]
        elif info_type == FAN_EVENT_INFO_TYPE_FID:
            target = _HANDLE_TYPE.pack(handle_type) + record[handle_at + _HANDLE_HEADER.size:
                                                             end]
        offset += length
    if directory is None or not name or name == b".":
        return None
    return FidInfo(fsid, directory, name, target)


def directory_of(mount_fd: int, handle: bytes) -> str | None:
    """The current path of the directory ``handle`` names (on ``mount_fd``'s filesystem)."""
    fd = libc().open_by_handle_at(mount_fd, handle, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    if fd < 0:  # the directory is gone (rm -r) or lies on another filesystem
        log.debug("fanotify(FID): open_by_handle_at: %s", os.strerror(ctypes.get_errno()))
        return None
    try:
        path = os.readlink(f"/proc/self/fd/{fd}")
    except OSError as exc:  # vanished between open and readlink
        log.debug("fanotify(FID): cannot read directory path: %s", exc)
        return None
    finally:
        os.close(fd)
    # A directory removed after the event still names where the entry was.
    return path[:-len(_DELETED_SUFFIX)] if path.endswith(_DELETED_SUFFIX) else path


# ----- the recorders ---------------------------------------------------------------------
class _FanotifyGroup:
    """What both recorders share: a non-blocking fanotify fd, drained whole, with the
    recorder's history pruned on a schedule.  Subclasses open ``fd`` and implement
    ``_parse(data) -> events`` and ``prune(now)``."""

    fd = -1
    # Called after each read, before its events are resolved (the owner applies the lineage
    # events queued so far: a writer's fork and exec precede its write, hence this read).
    on_batch: Callable[[], object] | None = None

    def __init__(self, root: str | os.PathLike, excluded: tuple[str, ...] = (),
                 resolve: Callable[[int], object] | None = None,
                 history: float = HISTORY_SECONDS, clock: Callable[[], float] = time.time):
        self.root = os.path.realpath(root)
        self.prefix = self.root.rstrip("/") + "/"
        # .git and the excluded directories (the runtime dir) are never the user's edits.
        self.excluded = tuple(os.path.realpath(p).rstrip("/") + "/" for p in
                              (os.path.join(self.root, ".git"), *excluded))
        self.resolve = resolve  # pid -> what the writer was, captured while it is read
        self.history, self.clock = history, clock
        self.events = 0
        self.kept = 0
        self.overflows = 0
        self._own_pid = os.getpid()
        self._next_prune = 0.0
        self._last_read = clock()

    def fileno(self) -> int:
        return self.fd

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def drain(self) -> int:
        """Read every queued event; return how many were read."""
        count = 0
        while True:
            try:
                data = os.read(self.fd, READ_SIZE)
            except BlockingIOError:
                break
            except InterruptedError:
                continue
            if not data:
                break
            if self.on_batch is not None:
                self.on_batch()
            count += self._parse(data)
        now = self.clock()
        self._last_read = now
        if now >= self._next_prune:
            self._next_prune = now + _PRUNE_EVERY
            self.prune(now)
        return count


class WriteRecorder(_FanotifyGroup):
    """One fanotify group recording the writers of files under ``root``, per file identity.

    ``resolve(pid)`` (optional) is called once per event while it is read, so whatever it
    returns (the writer's lineage, say) is captured before the pid can be reused.
    ``keying`` chooses the identity (:class:`.file_identity.Keying`); only the
    regression test and the benchmark pass anything but the default.
    """

    def __init__(self, root: str | os.PathLike, excluded: tuple[str, ...] = (),
                 resolve: Callable[[int], object] | None = None,
                 history: float = HISTORY_SECONDS, clock: Callable[[], float] = time.time,
                 keying: Keying = Keying.HANDLE):
        super().__init__(root, excluded, resolve, history, clock)
        self.identify = FileIdentifier(keying)
        self.writes: WriteHistory[WriteEvent] = WriteHistory(history, HISTORY_PER_FILE,
                                                             clock=clock)
        self.unidentified = 0
        self.mark_kind = ""
        self.fd = self._open()

    def _open(self) -> int:
        fd = open_group(0)
        mask = FAN_MODIFY | FAN_CLOSE_WRITE
        for flag, kind in ((FAN_MARK_FILESYSTEM, "filesystem"), (FAN_MARK_MOUNT, "mount")):
            try:
                mark(fd, FAN_MARK_ADD | flag, mask, AT_FDCWD, self.root)
            except OSError as exc:
                refusal = exc
                log.debug("fanotify_mark(%s) failed: %s", kind, exc)
                continue
            self.mark_kind = kind
            return fd
        os.close(fd)
        raise FanotifyUnavailable(refusal.errno, f"fanotify_mark on {self.root}: "
                                                 f"{refusal.strerror}")

    # ----- reading ---------------------------------------------------------------------
    def _parse(self, data: bytes) -> int:
        count, stamp = 0, self.clock()
        for event in iter_events(data):
            count += 1
            self.events += 1
            if event.mask & FAN_Q_OVERFLOW:
                self.overflows += 1
                self.writes.note_gap(self._last_read, stamp, "fanotify queue overflow")
                log.warning("fanotify queue overflowed: some writers are unknown")
            if event.fd == FAN_NOFD or event.fd < 0:
                continue
            try:
                self._record(event.fd, event.pid, event.mask, stamp)
            finally:
                os.close(event.fd)
        return count

    def _record(self, fd: int, pid: int, mask: int, stamp: float) -> None:
        if pid == self._own_pid:
            return
        try:
            path = os.readlink(f"/proc/self/fd/{fd}")
        except OSError as exc:  # fd of a file on a vanished mount: nothing to attribute
            log.debug("fanotify: cannot resolve event fd: %s", exc)
            return
        if not path.startswith(self.prefix) or path.startswith(self.excluded):
            return
        identity = self.identify.of_fd(fd)
        if identity is None:
            self.unidentified += 1
            return
        evidence = self.resolve(pid) if self.resolve else None
        self.writes.record(identity, WriteEvent(pid, stamp, mask, path[len(self.prefix):],
                                                evidence))
        self.kept += 1

    def prune(self, now: float | None = None) -> None:
        self.writes.prune(now)

    # ----- queries ---------------------------------------------------------------------
    def writes_to(self, abs_path: str | os.PathLike, since: float,
                  until: float) -> list[WriteEvent]:
        """Writes of the file now at ``abs_path`` read between ``since`` and ``until``."""
        return self.writes.writes_to(self.identify.of_path(abs_path), since, until)


# ----- name operations (FID mode) ----------------------------------------------------------
NAME_OPS = {FAN_DELETE: "delete", FAN_MOVED_FROM: "moved-from", FAN_MOVED_TO: "moved-to",
            FAN_CREATE: "create"}
# A path's name operations that end its file there, and those that put a file there.
REMOVALS = ("delete", "moved-from")
ARRIVALS = ("moved-to", "create")


@dataclass(frozen=True)
class NameEvent:
    """One name operation the kernel reported: who (pid), when (wall clock), which."""

    pid: int
    stamp: float
    op: str
    path: str
    evidence: object = None  # what the process was at read time (the owner's resolver)


class NameRecorder(_FanotifyGroup):
    """A FID-mode fanotify group recording who deleted, renamed or created names under
    ``root`` (``.git`` and ``excluded`` directories left out), per relative path."""

    def __init__(self, root: str | os.PathLike, excluded: tuple[str, ...] = (),
                 resolve: Callable[[int], object] | None = None,
                 history: float = HISTORY_SECONDS, clock: Callable[[], float] = time.time):
        super().__init__(root, excluded, resolve, history, clock)
        self.names: dict[str, deque[NameEvent]] = {}
        self.unresolved = 0
        self.mount_fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            self.fd = self._open()
        except OSError:
            os.close(self.mount_fd)
            raise

    def _open(self) -> int:
        fd = open_group(FAN_REPORT_DFID_NAME)
        mask = FAN_DELETE | FAN_MOVED_FROM | FAN_MOVED_TO | FAN_CREATE
        # Directory-entry events need a filesystem (or inode) mark: a mount mark is refused.
        try:
            mark(fd, FAN_MARK_ADD | FAN_MARK_FILESYSTEM, mask, AT_FDCWD, self.root)
        except OSError as exc:
            os.close(fd)
            raise FanotifyUnavailable(exc.errno, f"fanotify_mark(FID) on {self.root}: "
                                                 f"{exc.strerror}") from None
        return fd

    def close(self) -> None:
        super().close()
        if self.mount_fd >= 0:
            os.close(self.mount_fd)
            self.mount_fd = -1

    # ----- reading ---------------------------------------------------------------------
    def _parse(self, data: bytes) -> int:
        count, stamp = 0, self.clock()
        for event in iter_events(data):
            count += 1
            self.events += 1
            if event.mask & FAN_Q_OVERFLOW:
                self.overflows += 1
                log.warning("fanotify (FID) queue overflowed: some deleters are unknown")
                continue
            op = next((name for bit, name in NAME_OPS.items() if event.mask & bit), None)
            if op is None or event.mask & FAN_ONDIR or event.pid == self._own_pid:
                continue
            self._record(event.info, event.pid, op, stamp)
        return count

    def _record(self, info: bytes, pid: int, op: str, stamp: float) -> None:
        path = self._path_of(info)
        if path is None:
            self.unresolved += 1
            return
        if not path.startswith(self.prefix) or path.startswith(self.excluded):
            return
        rel = path[len(self.prefix):]
        evidence = self.resolve(pid) if self.resolve else None
        history = self.names.get(rel)
        if history is None:
            history = self.names[rel] = deque(maxlen=HISTORY_PER_FILE)
        history.append(NameEvent(pid, stamp, op, rel, evidence))
        self.kept += 1

    def _path_of(self, info: bytes) -> str | None:
        """The absolute path an event's DFID_NAME record names, or None if unresolvable."""
        fid = parse_fid_info(info)
        if fid is None:
            return None
        directory = directory_of(self.mount_fd, fid.directory)
        return None if directory is None else os.path.join(directory, os.fsdecode(fid.name))

    def prune(self, now: float | None = None) -> None:
        horizon = (self.clock() if now is None else now) - self.history
        stale = [rel for rel, history in self.names.items() if history[-1].stamp < horizon]
        for rel in stale:
            del self.names[rel]

    # ----- queries ---------------------------------------------------------------------
    def operations_on(self, rel_path: str, ops: tuple[str, ...], since: float,
                      until: float) -> list[NameEvent]:
        """Name operations ``ops`` on ``rel_path`` read between ``since`` and ``until``."""
        return [event for event in self.names.get(rel_path, ())
                if event.op in ops and since < event.stamp <= until]
