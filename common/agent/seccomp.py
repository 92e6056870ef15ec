"""Seccomp user notification through ctypes: the filter, its listener and the tracee's memory.

No maintained Python binding covers user notification: PyPI's ``pyseccomp`` (2021) wraps
libseccomp without it. Debian's ``python3-seccomp`` has it, but it is built for the system
interpreter only (gitsieve runs its own Python 3.11 install), and it would be one more
system package for what is small here: a classic-BPF program of about 70 instructions,
one ``seccomp()`` call and four ioctls.

The filter decides in the kernel as much as it can, so that what gitsieve does not need
costs nothing: ``open``/``openat`` are notified only when their flags ask for writing,
creating or truncating; the name operations (rename, link, symlink, unlink, chmod, mknod,
truncate) and ``execve`` (for the setuid notice) are always notified; ``io_uring_setup``
fails with ENOSYS so that programs fall back to the system calls the filter sees; every
other call is allowed, and the kernel's per-syscall action cache makes those free.
``openat2`` keeps its flags in a struct BPF cannot read, so it is notified whole and the
supervisor reads the flags (see :data:`Call.OPENAT2`).

Architectures: x86_64 (with its i386 compat calls, which a 64-bit process can also make
through ``int 0x80``) and aarch64.  On x86_64, x32 calls fail with ENOSYS; elsewhere
:func:`host_tables` refuses with :class:`UnsupportedArchitecture`.
"""
from __future__ import annotations

import ctypes
import enum
import errno
import fcntl
import os
import platform
import struct
import time
from dataclasses import dataclass
from typing import NamedTuple


class Call(enum.Enum):
    """The watched system calls (one value per meaning; truncate64 maps to TRUNCATE)."""

    OPEN = "open"
    OPENAT = "openat"
    # flags sit in struct open_how, which BPF cannot dereference: notified whole; ENOSYS
    # would also be exact but breaks programs that need openat2 (RESOLVE_BENEATH) and
    # have no fallback
    OPENAT2 = "openat2"
    CREAT = "creat"
    TRUNCATE = "truncate"
    FTRUNCATE = "ftruncate"
    RENAME = "rename"
    RENAMEAT = "renameat"
    RENAMEAT2 = "renameat2"
    LINK = "link"
    LINKAT = "linkat"
    SYMLINK = "symlink"
    SYMLINKAT = "symlinkat"
    UNLINK = "unlink"
    UNLINKAT = "unlinkat"
    CHMOD = "chmod"
    FCHMOD = "fchmod"
    FCHMODAT = "fchmodat"
    FCHMODAT2 = "fchmodat2"
    MKNOD = "mknod"
    MKNODAT = "mknodat"
    EXECVE = "execve"
    EXECVEAT = "execveat"
    IO_URING_SETUP = "io_uring_setup"


class Verdict(enum.Enum):
    """What the BPF program does with a call."""

    ALLOW = "allowed in the kernel"
    NOTIFY = "notified to the supervisor"
    NOTIFY_IF_WRITING = "notified when its flags write, create or truncate"
    ENOSYS = "fails with ENOSYS"


# the same values on x86_64, i386 and aarch64; O_TMPFILE requires O_WRONLY or O_RDWR, so
# it is covered too
O_WRITE_MASK = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC
AT_FDCWD = -100
AT_SYMLINK_NOFOLLOW = 0x100
AT_REMOVEDIR = 0x200
AT_SYMLINK_FOLLOW = 0x400
AT_EMPTY_PATH = 0x1000

AUDIT_ARCH_X86_64 = 0xC000003E
AUDIT_ARCH_I386 = 0x40000003
AUDIT_ARCH_AARCH64 = 0xC00000B7
X32_SYSCALL_BIT = 0x40000000


@dataclass(frozen=True)
class ArchTable:
    """One calling convention: its audit arch, and which numbers mean which watched call."""

    name: str
    audit_arch: int
    calls: dict[int, Call]
    pointer_mask: int
    # nonzero on x86_64: numbers at or above it are x32 calls, refused
    reject_at_or_above: int = 0


_X86_64 = ArchTable("x86_64", AUDIT_ARCH_X86_64, {
    2: Call.OPEN, 257: Call.OPENAT, 437: Call.OPENAT2, 85: Call.CREAT,
    76: Call.TRUNCATE, 77: Call.FTRUNCATE,
    82: Call.RENAME, 264: Call.RENAMEAT, 316: Call.RENAMEAT2,
    86: Call.LINK, 265: Call.LINKAT, 88: Call.SYMLINK, 266: Call.SYMLINKAT,
    87: Call.UNLINK, 263: Call.UNLINKAT,
    90: Call.CHMOD, 91: Call.FCHMOD, 268: Call.FCHMODAT, 452: Call.FCHMODAT2,
    133: Call.MKNOD, 259: Call.MKNODAT, 59: Call.EXECVE, 322: Call.EXECVEAT,
    425: Call.IO_URING_SETUP,
}, pointer_mask=(1 << 64) - 1, reject_at_or_above=X32_SYSCALL_BIT)

_I386 = ArchTable("i386", AUDIT_ARCH_I386, {
    5: Call.OPEN, 295: Call.OPENAT, 437: Call.OPENAT2, 8: Call.CREAT,
    92: Call.TRUNCATE, 193: Call.TRUNCATE, 93: Call.FTRUNCATE, 194: Call.FTRUNCATE,
    38: Call.RENAME, 302: Call.RENAMEAT, 353: Call.RENAMEAT2,
    9: Call.LINK, 303: Call.LINKAT, 83: Call.SYMLINK, 304: Call.SYMLINKAT,
    10: Call.UNLINK, 301: Call.UNLINKAT,
    15: Call.CHMOD, 94: Call.FCHMOD, 306: Call.FCHMODAT, 452: Call.FCHMODAT2,
    14: Call.MKNOD, 297: Call.MKNODAT, 11: Call.EXECVE, 358: Call.EXECVEAT,
    425: Call.IO_URING_SETUP,
}, pointer_mask=(1 << 32) - 1)

_AARCH64 = ArchTable("aarch64", AUDIT_ARCH_AARCH64, {
    56: Call.OPENAT, 437: Call.OPENAT2,
    45: Call.TRUNCATE, 46: Call.FTRUNCATE,
    38: Call.RENAMEAT, 276: Call.RENAMEAT2,
    37: Call.LINKAT, 36: Call.SYMLINKAT, 35: Call.UNLINKAT,
    52: Call.FCHMOD, 53: Call.FCHMODAT, 452: Call.FCHMODAT2,
    33: Call.MKNODAT, 221: Call.EXECVE, 281: Call.EXECVEAT,
    425: Call.IO_URING_SETUP,
}, pointer_mask=(1 << 64) - 1)


@dataclass(frozen=True)
class HostTables:
    """The calling conventions a process on this machine may use, and seccomp's number."""

    native: ArchTable
    compat: tuple[ArchTable, ...]
    seccomp_nr: int

    @property
    def all(self) -> tuple[ArchTable, ...]:
        return (self.native, *self.compat)

    def by_audit_arch(self) -> dict[int, ArchTable]:
        return {table.audit_arch: table for table in self.all}


class UnsupportedArchitecture(RuntimeError):
    """The machine's architecture has no syscall table here."""


def host_tables(machine: str | None = None) -> HostTables:
    machine = machine or platform.machine()
    if machine == "x86_64":
        return HostTables(_X86_64, (_I386,), seccomp_nr=317)
    if machine == "aarch64":
        # aarch32 compat tasks are not described: the filter fails their calls with ENOSYS
        return HostTables(_AARCH64, (), seccomp_nr=277)
    raise UnsupportedArchitecture(machine)


def verdict_of(call: Call) -> Verdict:
    if call is Call.IO_URING_SETUP:
        return Verdict.ENOSYS
    if call in (Call.OPEN, Call.OPENAT):
        return Verdict.NOTIFY_IF_WRITING
    return Verdict.NOTIFY


# flags argument index of the calls notified only when writing
FLAGS_ARG = {Call.OPEN: 1, Call.OPENAT: 2}

# ----- classic BPF ------------------------------------------------------------------------
BPF_LD_W_ABS = 0x20
BPF_JEQ_K = 0x15
BPF_JGE_K = 0x35
BPF_JSET_K = 0x45
BPF_RET_K = 0x06

SECCOMP_RET_ALLOW = 0x7FFF0000
SECCOMP_RET_USER_NOTIF = 0x7FC00000
SECCOMP_RET_ERRNO = 0x00050000

OFFSET_NR = 0
OFFSET_ARCH = 4


def _arg_low_offset(index: int) -> int:
    # seccomp_data.args[i] at 16 + 8 * i; its low 32 bits first (little-endian hosts)
    return 16 + 8 * index


class _Assembler:
    """A few BPF instructions with forward jumps to named labels."""

    def __init__(self) -> None:
        self.code: list[tuple[int, str | int, str | int, int]] = []
        self.labels: dict[str, int] = {}

    def label(self, name: str) -> None:
        self.labels[name] = len(self.code)

    def load(self, offset: int) -> None:
        self.code.append((BPF_LD_W_ABS, 0, 0, offset))

    def jump(self, op: int, k: int, if_true: str | int, if_false: str | int) -> None:
        self.code.append((op, if_true, if_false, k))

    def ret(self, value: int) -> None:
        self.code.append((BPF_RET_K, 0, 0, value))

    def assemble(self) -> bytes:
        out = bytearray()
        for index, (op, jt, jf, k) in enumerate(self.code):
            out += struct.pack("=HBBI", op, self._offset(index, jt), self._offset(index, jf),
                               k & 0xFFFFFFFF)
        return bytes(out)

    def _offset(self, index: int, target: str | int) -> int:
        if isinstance(target, int):
            return target
        distance = self.labels[target] - index - 1
        if not 0 <= distance <= 255:
            raise ValueError(f"BPF jump to {target} out of range: {distance}")
        return distance


def build_filter(tables: HostTables) -> bytes:
    """The BPF program (struct sock_filter array) for these calling conventions."""
    asm = _Assembler()
    asm.load(OFFSET_ARCH)
    for table in tables.all:
        asm.jump(BPF_JEQ_K, table.audit_arch, f"arch_{table.name}", 0)
    asm.ret(SECCOMP_RET_ERRNO | errno.ENOSYS)  # a convention the tables do not describe
    for table in tables.all:
        asm.label(f"arch_{table.name}")
        asm.load(OFFSET_NR)
        if table.reject_at_or_above:
            asm.jump(BPF_JGE_K, table.reject_at_or_above, "enosys", 0)
        for nr, call in sorted(table.calls.items()):
            verdict = verdict_of(call)
            target = {Verdict.NOTIFY: "notify", Verdict.ENOSYS: "enosys",
                      Verdict.NOTIFY_IF_WRITING: f"flags_{FLAGS_ARG.get(call)}"}[verdict]
            asm.jump(BPF_JEQ_K, nr, target, 0)
        asm.ret(SECCOMP_RET_ALLOW)
    for index in sorted(set(FLAGS_ARG.values())):
        asm.label(f"flags_{index}")
        asm.load(_arg_low_offset(index))
        asm.jump(BPF_JSET_K, O_WRITE_MASK, "notify", "allow")
    asm.label("notify")
    asm.ret(SECCOMP_RET_USER_NOTIF)
    asm.label("allow")
    asm.ret(SECCOMP_RET_ALLOW)
    asm.label("enosys")
    asm.ret(SECCOMP_RET_ERRNO | errno.ENOSYS)
    return asm.assemble()


# ----- installing ---------------------------------------------------------------------------
PR_SET_NO_NEW_PRIVS = 38
PR_SET_CHILD_SUBREAPER = 36
PR_SET_PDEATHSIG = 1
SECCOMP_SET_MODE_FILTER = 1
SECCOMP_FILTER_FLAG_NEW_LISTENER = 1 << 3

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong,
                        ctypes.c_ulong]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def prctl(option: int, value: int) -> None:
    if _libc.prctl(option, value, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def install_filter(program: bytes, tables: HostTables) -> int:
    """Set no_new_privs and load ``program`` into the calling process: the listener fd.

    EBUSY means a filter with a listener is already installed above this process (one
    listener per filter chain).  Call this in the process that will exec the command:
    the filter is inherited by every descendant and cannot be removed.
    """
    prctl(PR_SET_NO_NEW_PRIVS, 1)
    buffer = ctypes.create_string_buffer(program, len(program))
    fprog = _SockFprog(len(program) // 8, ctypes.addressof(buffer))
    fd = _libc.syscall(ctypes.c_long(tables.seccomp_nr), ctypes.c_long(SECCOMP_SET_MODE_FILTER),
                       ctypes.c_long(SECCOMP_FILTER_FLAG_NEW_LISTENER), ctypes.byref(fprog))
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return fd


# ----- the listener -------------------------------------------------------------------------
def _ioc(direction: int, number: int, size: int) -> int:
    return (direction << 30) | (size << 16) | (ord("!") << 8) | number


_IOC_WRITE, _IOC_READ = 1, 2
NOTIF_FORMAT = "=QIIiIQ6Q"  # struct seccomp_notif: id, pid, flags, seccomp_data
NOTIF_SIZE = struct.calcsize(NOTIF_FORMAT)
RESP_FORMAT = "=QqiI"  # struct seccomp_notif_resp: id, val, error, flags
SECCOMP_IOCTL_NOTIF_RECV = _ioc(_IOC_READ | _IOC_WRITE, 0, NOTIF_SIZE)
SECCOMP_IOCTL_NOTIF_SEND = _ioc(_IOC_READ | _IOC_WRITE, 1, struct.calcsize(RESP_FORMAT))
SECCOMP_IOCTL_NOTIF_ID_VALID = _ioc(_IOC_WRITE, 2, 8)
SECCOMP_IOCTL_NOTIF_SET_FLAGS = _ioc(_IOC_WRITE, 4, 8)
SECCOMP_USER_NOTIF_FLAG_CONTINUE = 1
_NOTIF, _RESP, _U64 = struct.Struct(NOTIF_FORMAT), struct.Struct(RESP_FORMAT), struct.Struct("=Q")
SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP = 1


class Notification(NamedTuple):
    id: int
    pid: int  # the calling thread's id, in the supervisor's pid namespace
    nr: int
    arch: int
    args: tuple[int, int, int, int, int, int]


class Listener:
    """The supervisor's end of the filter: receive, check, let the call continue."""

    def __init__(self, fd: int):
        self.fd = fd
        self._zero = bytes(NOTIF_SIZE)
        self.sync_wakeup = self._try_sync_wakeup()

    def _try_sync_wakeup(self) -> bool:
        """Linux 6.6+: a notification switches to the supervisor on the caller's CPU and the
        answer switches back, instead of two cross-CPU wakeups per call."""
        try:
            # the flags travel as the ioctl argument itself, not through a pointer
            fcntl.ioctl(self.fd, SECCOMP_IOCTL_NOTIF_SET_FLAGS, SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP)
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            return False
        return True

    def receive(self) -> Notification | None:
        """The next notification; None when its caller went away between poll and here."""
        buffer = bytearray(self._zero)  # the kernel refuses a buffer that is not zeroed
        try:
            fcntl.ioctl(self.fd, SECCOMP_IOCTL_NOTIF_RECV, buffer, True)
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.EINTR):
                return None
            raise
        fields = _NOTIF.unpack(buffer)
        return Notification(fields[0], fields[1], fields[3], fields[4], fields[6:])

    def id_valid(self, notification_id: int) -> bool:
        """Whether the caller still waits on this notification (so what was read from its
        memory under its pid was its own)."""
        try:
            fcntl.ioctl(self.fd, SECCOMP_IOCTL_NOTIF_ID_VALID, _U64.pack(notification_id))
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                return False
            raise
        return True

    def let_continue(self, notification_id: int) -> bool:
        """Let the call proceed as if unfiltered; False when the caller is gone."""
        try:
            fcntl.ioctl(self.fd, SECCOMP_IOCTL_NOTIF_SEND,
                        _RESP.pack(notification_id, 0, 0, SECCOMP_USER_NOTIF_FLAG_CONTINUE))
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                return False
            raise
        return True

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


# ----- the tracee's memory -------------------------------------------------------------------
PATH_MAX = 4096
_FIRST_CHUNK = 256
# An fd is reused only while its thread id notified within this time: a dead thread's id
# comes back only after the pid allocator wraps (pid_max, at least 32768, forks at a few
# 10k/s at most: over a second), so a reused fd is always the same thread's.
IDLE_REOPEN = 0.25


class MemoryReader:
    """Reads strings and words from callers' memory: pread on /proc/TID/mem, one cached
    fd per thread id (a read costs one pread instead of an open, a read and a close).

    Such an fd stays bound to the address space it was opened on, so the cache must not
    outlive it: :meth:`forget_all` runs at every exec in the tree (a vfork child shares
    its parent's address space until its exec, and any thread's exec replaces its
    group's), an fd unused for IDLE_REOPEN is reopened (see there), and an empty read
    (the address space is gone) reopens once.  The supervisor checks the notification id
    after reading, so the thread id still named the caller.
    """

    def __init__(self, max_open: int = 256):
        self.max_open = max_open
        self._fds: dict[int, tuple[int, float]] = {}  # thread id -> (fd, last use)

    def _open(self, pid: int) -> int | None:
        try:
            fd = os.open(f"/proc/{pid}/mem", os.O_RDONLY | os.O_CLOEXEC)
        except (FileNotFoundError, ProcessLookupError):
            return None  # the thread is gone
        if len(self._fds) >= self.max_open:
            self._close(next(iter(self._fds)))
        return fd

    def _close(self, pid: int) -> None:
        os.close(self._fds.pop(pid)[0])

    def forget_all(self) -> None:
        for pid in list(self._fds):
            self._close(pid)

    def read(self, pid: int, address: int, size: int) -> bytes | None:
        """Up to ``size`` bytes at ``address`` (fewer where the mapping ends); None when
        nothing is readable there or the thread is gone.  PermissionError: the process
        is not dumpable (or another user's)."""
        now = time.monotonic()
        entry = self._fds.get(pid)
        cached = entry is not None and now - entry[1] <= IDLE_REOPEN
        if cached:
            fd = entry[0]
        else:
            if entry is not None:
                self._close(pid)
            fd = self._open(pid)
            if fd is None:
                return None
        self._fds[pid] = (fd, now)
        data = self._pread(fd, size, address)
        if data == b"" and cached:
            self._close(pid)
            fd = self._open(pid)
            if fd is None:
                return None
            self._fds[pid] = (fd, now)
            data = self._pread(fd, size, address)
        return data or None

    @staticmethod
    def _pread(fd: int, size: int, address: int) -> bytes | None:
        try:
            return os.pread(fd, size, address)
        except OSError as exc:
            if exc.errno in (errno.EIO, errno.EFAULT, errno.ESRCH):
                return None  # unmapped (the call fails with EFAULT) or the thread is gone
            raise

    def read_cstring(self, pid: int, address: int) -> bytes | None:
        """The NUL-terminated string at ``address`` (at most PATH_MAX), or None."""
        data = self.read(pid, address, _FIRST_CHUNK)
        if data is None:
            return None
        end = data.find(b"\0")
        if end >= 0:
            return data[:end]
        if len(data) < _FIRST_CHUNK:
            return None  # the mapping ends before a NUL
        data = self.read(pid, address, PATH_MAX)
        if data is None:
            return None
        end = data.find(b"\0")
        return data[:end] if end >= 0 else None

    def read_u64(self, pid: int, address: int) -> int | None:
        data = self.read(pid, address, 8)
        if data is None or len(data) < 8:
            return None
        return struct.unpack("=Q", data)[0]

    def close(self) -> None:
        self.forget_all()
