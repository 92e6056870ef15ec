"""fanotify through ctypes: the system calls and the parsing of their events.

No maintained Python binding exists, so this module calls ``fanotify_init``,
``fanotify_mark`` and ``open_by_handle_at`` from libc and parses what a group's fd yields:
classic events (:func:`iter_events`: mask, pid and an open fd of the file) and the info
records of FID groups (:func:`parse_fid_info`: the directory's file handle and the entry's
name, and with ``FAN_REPORT_TARGET_FID`` the entry's own handle).  Needs CAP_SYS_ADMIN;
without it :func:`open_group` raises :class:`FanotifyUnavailable`.

The groups themselves, and which inodes they mark, are :class:`.marks.WorkspaceWatch`'s.
"""
from __future__ import annotations

import ctypes
import errno
import fcntl
import logging
import os
import resource
import struct
import termios
from dataclasses import dataclass
from typing import Iterator

log = logging.getLogger(__name__)

FAN_CLOEXEC = 0x01
FAN_NONBLOCK = 0x02
FAN_CLASS_NOTIF = 0x00
FAN_REPORT_FID = 0x200
FAN_REPORT_DFID_NAME = 0x400 | 0x800  # FAN_REPORT_DIR_FID | FAN_REPORT_NAME
FAN_REPORT_TARGET_FID = 0x1000
FAN_MARK_ADD = 0x01
FAN_MARK_ONLYDIR = 0x08
FAN_MARK_MOUNT = 0x10
FAN_MARK_FILESYSTEM = 0x100
FAN_MODIFY = 0x02
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
_QUEUED = struct.Struct("=i")  # FIONREAD's answer: an int
_EVENT_LEN = struct.Struct("=I")  # an event's first field: its length, info records included
# A classic group's event holds an open fd until its reader closes it: a read of this size
# brings at most ~340 (24-byte events), well under the usual 1024 open files; 64 KiB brought
# ~2,700, and a burst's reads failed with EMFILE, the kernel dropping those events unsaid.
FD_EVENTS_READ_SIZE = 8 * 1024
# Open files an owner of a classic group asks for (the soft limit, up to the hard one).
WANTED_OPEN_FILES = 65536
_UNLIMITED = resource.RLIM_INFINITY
_DELETED_SUFFIX = " (deleted)"


def queued_events(fd: int) -> int | None:
    """How many events the kernel holds for the group ``fd`` now, or None where it cannot
    say.  FIONREAD counts each queued event as its metadata alone (24 bytes), whatever info
    records (a file handle, a name) a FID group's events carry when read: so events, not
    bytes (a kernel counting whole events would only make this an overestimate)."""
    try:
        answer = fcntl.ioctl(fd, termios.FIONREAD, _QUEUED.pack(0))
    except OSError:
        return None
    return _QUEUED.unpack(answer)[0] // _METADATA.size


def count_events(data: bytes) -> int:
    """The events in one read's buffer."""
    count = offset = 0
    while offset + _METADATA.size <= len(data):
        event_len = _EVENT_LEN.unpack_from(data, offset)[0]
        if event_len < _METADATA.size:
            break
        offset += event_len
        count += 1
    return count


def fd_events_read_size(open_files: int) -> int:
    """Bytes to read at once from a classic group in a process allowed ``open_files``: at
    most half of what its other descriptors (128 assumed) leave.  An event whose fd cannot
    be opened mid-read is dropped by the kernel without a word."""
    if open_files == _UNLIMITED:
        return FD_EVENTS_READ_SIZE
    events = max(4, (open_files - 128) // 2)
    return min(FD_EVENTS_READ_SIZE, events * _METADATA.size)


def allow_open_files(wanted: int = WANTED_OPEN_FILES) -> int:
    """Raise this process's soft limit of open files towards ``wanted`` (never past the
    hard limit, never lower); the limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == _UNLIMITED else min(wanted, hard)
    if soft != _UNLIMITED and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            return target
        except (ValueError, OSError) as exc:
            log.debug("open files stay at %d: %s", soft, exc)
    return soft


class FanotifyUnavailable(OSError):
    """fanotify cannot be used here (no privilege, no kernel support, no libc symbol)."""


# ----- the system calls ----------------------------------------------------------------
_LIBC = None


def libc():
    global _LIBC
    if _LIBC is None:
        # The process's own symbols, libc's among them: find_library would run ldconfig
        # in each process that asks.
        lib = ctypes.CDLL(None, use_errno=True)
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

    directory: bytes
    name: bytes
    target: bytes | None


def parse_fid_info(info: bytes) -> FidInfo | None:
    """The DFID_NAME (and FID) records of one event, or None when it has no named entry."""
    offset, directory, name, target = 0, None, b"", None
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
            directory = record[handle_at:end]
            name = record[end:].split(b"\0", 1)[0]
        elif info_type == FAN_EVENT_INFO_TYPE_FID:
            target = _HANDLE_TYPE.pack(handle_type) + record[handle_at + _HANDLE_HEADER.size:
                                                             end]
        offset += length
    if directory is None or not name or name == b".":
        return None
    return FidInfo(directory, name, target)


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
