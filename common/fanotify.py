"""fanotify through ctypes: which process wrote which file, as the kernel reports it.

No maintained Python binding exists, so this module calls ``fanotify_init`` and
``fanotify_mark`` from libc.  A :class:`WriteRecorder` owns one notification group
(``FAN_CLASS_NOTIF``) marking the whole filesystem holding the workspace
(``FAN_MARK_FILESYSTEM``, or ``FAN_MARK_MOUNT`` on kernels without it) for
``FAN_MODIFY | FAN_CLOSE_WRITE``.  Every event carries the writer's pid and an open fd of the
file; the fd gives the file's identity (device, inode) and current path, then is closed.
Writes under the workspace (``.git`` and the runtime directory excluded) are kept per inode
for ``history`` seconds, so a change can be attributed by inode even after a rename
(atomic replace: write ``x.tmp``, rename to ``x``).

The kernel queues a fanotify event inside the write system call, before the inotify event
the watcher reads for the same write, so draining the group before judging a change is
enough to know every writer of it.  Needs CAP_SYS_ADMIN; without it the constructor
raises :class:`FanotifyUnavailable`.
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
from typing import Callable

log = logging.getLogger(__name__)

FAN_CLOEXEC = 0x01
FAN_NONBLOCK = 0x02
FAN_CLASS_NOTIF = 0x00
FAN_MARK_ADD = 0x01
FAN_MARK_MOUNT = 0x10
FAN_MARK_FILESYSTEM = 0x100
FAN_MODIFY = 0x02
FAN_CLOSE_WRITE = 0x08
FAN_Q_OVERFLOW = 0x4000
FAN_NOFD = -1
AT_FDCWD = -100
FANOTIFY_METADATA_VERSION = 3

# struct fanotify_event_metadata: u32 event_len, u8 vers, u8 reserved, u16 metadata_len,
# u64 mask (aligned), s32 fd, s32 pid
_METADATA = struct.Struct("=IBBHQii")
_READ_SIZE = 64 * 1024
# Writes kept per inode, and for how long (seconds).
HISTORY_SECONDS = 30.0
HISTORY_PER_FILE = 32
_PRUNE_EVERY = 5.0


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


def _libc():
    name = ctypes.util.find_library("c") or "libc.so.6"
    lib = ctypes.CDLL(name, use_errno=True)
    try:
        lib.fanotify_init.argtypes = [ctypes.c_uint, ctypes.c_uint]
        lib.fanotify_init.restype = ctypes.c_int
        lib.fanotify_mark.argtypes = [ctypes.c_int, ctypes.c_uint, ctypes.c_uint64,
                                      ctypes.c_int, ctypes.c_char_p]
        lib.fanotify_mark.restype = ctypes.c_int
    except AttributeError as exc:
        raise FanotifyUnavailable(errno.ENOSYS, f"libc has no fanotify: {exc}") from None
    return lib


def file_key(info: os.stat_result) -> tuple[int, int]:
    return (info.st_dev, info.st_ino)


class WriteRecorder:
    """One fanotify group recording the writers of files under ``root``.

    ``resolve(pid)`` (optional) is called once per event while it is read, so whatever it
    returns (the writer's lineage, say) is captured before the pid can be reused.
    """

    def __init__(self, root: str | os.PathLike, excluded: tuple[str, ...] = (),
                 resolve: Callable[[int], object] | None = None,
                 history: float = HISTORY_SECONDS, clock: Callable[[], float] = time.time):
        self.root = os.path.realpath(root)
        self.prefix = self.root.rstrip("/") + "/"
        self.excluded = tuple(os.path.realpath(p).rstrip("/") + "/" for p in
                              (os.path.join(self.root, ".git"), *excluded))
        self.resolve = resolve
        self.history, self.clock = history, clock
        self.writes: dict[tuple[int, int], deque[WriteEvent]] = {}
        self.events = 0
        self.kept = 0
        self.overflows = 0
        self.mark_kind = ""
        self._own_pid = os.getpid()
        self._next_prune = 0.0
        self.fd = self._open()

    def _open(self) -> int:
        libc = _libc()
        fd = libc.fanotify_init(FAN_CLASS_NOTIF | FAN_CLOEXEC | FAN_NONBLOCK,
                                os.O_RDONLY | os.O_LARGEFILE | os.O_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            raise FanotifyUnavailable(err, f"fanotify_init: {os.strerror(err)}")
        mask = FAN_MODIFY | FAN_CLOSE_WRITE
        path = self.root.encode("utf-8", "surrogateescape")
        for flag, kind in ((FAN_MARK_FILESYSTEM, "filesystem"), (FAN_MARK_MOUNT, "mount")):
            if libc.fanotify_mark(fd, FAN_MARK_ADD | flag, mask, AT_FDCWD, path) == 0:
                self.mark_kind = kind
                return fd
            err = ctypes.get_errno()
            log.debug("fanotify_mark(%s) failed: %s", kind, os.strerror(err))
        os.close(fd)
        raise FanotifyUnavailable(err, f"fanotify_mark on {self.root}: {os.strerror(err)}")

    def fileno(self) -> int:
        return self.fd

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    # ----- reading ---------------------------------------------------------------------
    def drain(self) -> int:
        """Read every queued event; return how many were read."""
        count = 0
        while True:
            try:
                data = os.read(self.fd, _READ_SIZE)
            except BlockingIOError:
                break
            except InterruptedError:
                continue
            if not data:
                break
            count += self._parse(data)
        now = self.clock()
        if now >= self._next_prune:
            self._next_prune = now + _PRUNE_EVERY
            self.prune(now)
        return count

    def _parse(self, data: bytes) -> int:
        offset, count, stamp = 0, 0, self.clock()
        while offset + _METADATA.size <= len(data):
            event_len, version, _, _, mask, fd, pid = _METADATA.unpack_from(data, offset)
            if event_len < _METADATA.size:  # corrupt framing: nothing after it is usable
                log.error("fanotify: event of %d bytes; rest of the read dropped", event_len)
                break
            offset += event_len
            count += 1
            self.events += 1
            if version != FANOTIFY_METADATA_VERSION:
                log.warning("fanotify: metadata version %d, expected %d", version,
                            FANOTIFY_METADATA_VERSION)
            if mask & FAN_Q_OVERFLOW:
                self.overflows += 1
                log.warning("fanotify queue overflowed: some writers are unknown")
            if fd == FAN_NOFD or fd < 0:
                continue
            try:
                self._record(fd, pid, mask, stamp)
            finally:
                os.close(fd)
        return count

    def _record(self, fd: int, pid: int, mask: int, stamp: float) -> None:
        if pid == self._own_pid:
            return
        try:
            path = os.readlink(f"/proc/self/fd/{fd}")
            info = os.fstat(fd)
        except OSError as exc:  # fd of a file on a vanished mount: nothing to attribute
            log.debug("fanotify: cannot resolve event fd: %s", exc)
            return
        if not path.startswith(self.prefix) or path.startswith(self.excluded):
            return
        evidence = self.resolve(pid) if self.resolve else None
        history = self.writes.get(file_key(info))
        if history is None:
            history = self.writes[file_key(info)] = deque(maxlen=HISTORY_PER_FILE)
        history.append(WriteEvent(pid, stamp, mask, path[len(self.prefix):], evidence))
        self.kept += 1

    def prune(self, now: float | None = None) -> None:
        horizon = (self.clock() if now is None else now) - self.history
        stale = [key for key, history in self.writes.items() if history[-1].stamp < horizon]
        for key in stale:
            del self.writes[key]

    # ----- queries ---------------------------------------------------------------------
    def writes_to(self, abs_path: str | os.PathLike, since: float,
                  until: float) -> list[WriteEvent]:
        """Writes of the file now at ``abs_path`` read between ``since`` and ``until``."""
        try:
            info = os.stat(abs_path, follow_symlinks=False)
        except OSError:
            return []
        history = self.writes.get(file_key(info), ())
        return [event for event in history if since < event.stamp <= until]

