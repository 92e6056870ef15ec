"""A file identity that a freed inode cannot pass on to the next file.

Recorded writes were keyed by ``(st_dev, st_ino)``.  ext4 hands a freed inode number to the
next file created in the same block group at once, so the writes of a deleted file (a
person's temp file) became the writes of an unrelated new file (an agent's).  Deleting the
history on a delete event does not close that hole: ``os.replace(tmp, target)`` frees the
old ``target`` inode without any delete of its name, and a write read after the inode was
freed cannot be told from a write to its successor by the number alone.

A file handle (``name_to_handle_at``) names an inode the way NFS does: for ext4, xfs and
btrfs its bytes carry the inode's generation, a number the filesystem changes each time it
reuses the inode, so a handle is never given to a second file.  A handle names an inode
within one filesystem, so the identity pairs it with ``st_dev`` (bind mounts of one
filesystem share it; mount ids would not).  It needs no privilege (``open_by_handle_at``
does, ``name_to_handle_at`` does not), so an unprivileged client can compute the identity of
a path and match it against handles a privileged helper sent.

Filesystems that cannot encode handles (``EOPNOTSUPP``: some FUSE and 9p mounts, procfs)
get :attr:`IdentityKind.BIRTH`: ``(st_dev, st_ino, birth time)`` from ``statx``.  It cannot
tell apart two files that got the same inode number within one tick of the filesystem's
timestamp clock (a jiffy, 1-4 ms, on local filesystems; whatever a FUSE server reports), and
where the filesystem reports no birth time it is ``(st_dev, st_ino)`` again, with the old
weakness.  One warning per filesystem says so when it happens.
"""
from __future__ import annotations

import ctypes
import enum
import errno
import logging
import os
import struct
from dataclasses import dataclass

log = logging.getLogger(__name__)

AT_FDCWD = -100
AT_EMPTY_PATH = 0x1000
AT_SYMLINK_NOFOLLOW = 0x100
MAX_HANDLE_SZ = 128
STATX_INO = 0x100
STATX_BTIME = 0x800
STATX_BASIC_STATS = 0x7FF
_STATX_SIZE = 256
# struct statx offsets (include/uapi/linux/stat.h)
_STATX_MASK = struct.Struct("=I")
_STATX_INO = struct.Struct("=Q")
_STATX_TIMESTAMP = struct.Struct("=qI")
_OFFSET_INO, _OFFSET_BTIME = 32, 80

_HANDLE_TYPE = struct.Struct("=i")
_INODE_BIRTH = struct.Struct("=Qq")
_INODE = struct.Struct("=Q")
_WIRE_HEAD = struct.Struct("=QB")
NO_BIRTH = -1


class IdentityKind(enum.IntEnum):
    """How an identity was formed (also its wire tag)."""

    HANDLE = 1  # handle type + handle bytes (carries the inode generation)
    BIRTH = 2   # inode number + birth time in ns (NO_BIRTH when not reported)
    INODE = 3   # inode number alone: reused at once on ext4


class Keying(enum.Enum):
    """Which identity a recorder keys writes by.

    ``INODE`` is the keying this module replaces; it stays selectable so the regression test
    and the benchmark can show, on the same workload, that it hands writes to the wrong file
    (``BIRTH``: what the fallback alone would attribute).
    """

    HANDLE = "handle"  # a handle, or the BIRTH fallback on filesystems without handles
    BIRTH = "birth"    # the fallback forced everywhere (to measure what it misses)
    INODE = "inode"


@dataclass(frozen=True, slots=True)
class FileIdentity:
    dev: int
    kind: IdentityKind
    key: bytes

    def encode(self) -> bytes:
        """Bytes for the wire (the helper protocol's ``identity``)."""
        return _WIRE_HEAD.pack(self.dev, self.kind) + self.key

    @classmethod
    def decode(cls, data: bytes) -> "FileIdentity":
        """The inverse of :meth:`encode`; ValueError on bytes no encoder made."""
        if len(data) < _WIRE_HEAD.size:
            raise ValueError(f"identity of {len(data)} bytes")
        dev, kind = _WIRE_HEAD.unpack_from(data)
        return cls(dev, IdentityKind(kind), bytes(data[_WIRE_HEAD.size:]))


class _FileHandle(ctypes.Structure):
    _fields_ = [("handle_bytes", ctypes.c_uint), ("handle_type", ctypes.c_int),
                ("f_handle", ctypes.c_ubyte * MAX_HANDLE_SZ)]


def _libc():
    lib = ctypes.CDLL(None, use_errno=True)  # libc's symbols, without running ldconfig
    lib.name_to_handle_at.argtypes = [ctypes.c_int, ctypes.c_char_p,
                                      ctypes.POINTER(_FileHandle),
                                      ctypes.POINTER(ctypes.c_int), ctypes.c_int]
    lib.name_to_handle_at.restype = ctypes.c_int
    lib.statx.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_uint,
                          ctypes.c_void_p]
    lib.statx.restype = ctypes.c_int
    return lib


class FileIdentifier:
    """Computes :class:`FileIdentity` values for event descriptors and for paths.

    Not thread-safe: one handle buffer is reused for every call (no allocation per event).
    """

    def __init__(self, keying: Keying = Keying.HANDLE):
        self.keying = keying
        self._libc = _libc()
        self._handle = _FileHandle()
        self._handle_ref = ctypes.byref(self._handle)
        self._handle_data = ctypes.addressof(self._handle) + _FileHandle.f_handle.offset
        self._mount_id = ctypes.c_int()
        self._mount_ref = ctypes.byref(self._mount_id)
        self._statx_buffer = ctypes.create_string_buffer(_STATX_SIZE)
        # filesystems (st_dev) that refused handles: they get the BIRTH fallback
        self.without_handles: set[int] = set()
        self.failures = 0

    # ----- the two entry points --------------------------------------------------------
    def of_fd(self, fd: int) -> FileIdentity | None:
        """The identity of the open file ``fd`` (a fanotify event's descriptor)."""
        try:
            dev = os.fstat(fd).st_dev
        except OSError as exc:
            return self._failed("fstat", exc.errno)
        return self._identify(dev, fd, b"", AT_EMPTY_PATH)

    def of_path(self, path: str | os.PathLike) -> FileIdentity | None:
        """The identity of what ``path`` names now, a final symlink not followed."""
        try:
            dev = os.lstat(path).st_dev
        except OSError:  # no file there now: nothing to look up
            return None
        return self._identify(dev, AT_FDCWD, os.fsencode(path), 0)

    # ----- the kinds ---------------------------------------------------------------------
    def _identify(self, dev: int, dirfd: int, name: bytes, flags: int) -> FileIdentity | None:
        if self.keying is Keying.HANDLE and dev not in self.without_handles:
            handle = self._handle_bytes(dirfd, name, flags)
            if handle is not None:
                return FileIdentity(dev, IdentityKind.HANDLE, handle)
            if ctypes.get_errno() != errno.EOPNOTSUPP:
                return self._failed("name_to_handle_at", ctypes.get_errno())
            self.without_handles.add(dev)
            log.warning("filesystem %#x encodes no file handles: writes there are keyed by "
                        "inode number and birth time, which cannot tell apart two files "
                        "given the same inode within one timestamp tick", dev)
        found = self._statx(dirfd, name, flags | AT_SYMLINK_NOFOLLOW)
        if found is None:
            return self._failed("statx", ctypes.get_errno())
        ino, birth = found
        if self.keying is Keying.INODE:
            return FileIdentity(dev, IdentityKind.INODE, _INODE.pack(ino))
        return FileIdentity(dev, IdentityKind.BIRTH, _INODE_BIRTH.pack(ino, birth))

    def _handle_bytes(self, dirfd: int, name: bytes, flags: int) -> bytes | None:
        self._handle.handle_bytes = MAX_HANDLE_SZ
        if self._libc.name_to_handle_at(dirfd, name, self._handle_ref, self._mount_ref,
                                        flags) != 0:
            return None
        return (_HANDLE_TYPE.pack(self._handle.handle_type)
                + ctypes.string_at(self._handle_data, self._handle.handle_bytes))

    def _statx(self, dirfd: int, name: bytes, flags: int) -> tuple[int, int] | None:
        """(inode, birth ns or NO_BIRTH)."""
        if self._libc.statx(dirfd, name, flags, STATX_BASIC_STATS | STATX_BTIME,
                            self._statx_buffer) != 0:
            return None
        raw = self._statx_buffer.raw
        mask = _STATX_MASK.unpack_from(raw, 0)[0]
        ino = _INODE.unpack_from(raw, _OFFSET_INO)[0]
        if not mask & STATX_BTIME:
            return ino, NO_BIRTH
        seconds, nanos = _STATX_TIMESTAMP.unpack_from(raw, _OFFSET_BTIME)
        return ino, seconds * 1_000_000_000 + nanos

    def _failed(self, call: str, err: int) -> None:
        self.failures += 1
        log.debug("file identity: %s: %s", call, os.strerror(err))
        return None
