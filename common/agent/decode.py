"""What a notified system call does to which names: pure logic over its arguments.

:func:`decode` turns a watched call and its raw arguments into :class:`Target` values
(the journal operation, and where its path is: a string in the caller's memory relative
to a directory fd, or an fd itself), or an :class:`ExecProbe` for ``execve``.  The
caller's memory is passed in, so tests drive it with a dictionary.  The supervisor looks
decoders up by syscall number (:func:`decoders_for`): no enum is hashed per call.
"""
from __future__ import annotations

import os
from functools import partial
from typing import Callable, NamedTuple, Protocol

from gitsieve.common.agent.journal import Op
from gitsieve.common.agent.seccomp import (
    AT_EMPTY_PATH,
    AT_FDCWD,
    AT_SYMLINK_NOFOLLOW,
    O_WRITE_MASK,
    ArchTable,
    Call,
)

# the host's values: aarch64 differs from x86 for O_NOFOLLOW and O_DIRECTORY, and an
# x86_64 host's i386 callers use x86_64's
O_CREAT, O_EXCL, O_TRUNC, O_NOFOLLOW = os.O_CREAT, os.O_EXCL, os.O_TRUNC, os.O_NOFOLLOW
O_TMPFILE_FLAG = os.O_TMPFILE & ~os.O_DIRECTORY  # __O_TMPFILE


class Target(NamedTuple):
    op: Op
    dirfd: int  # AT_FDCWD, or the directory fd a relative path starts from
    path: bytes | None  # None: the target is ``dirfd`` itself (an fd-based call)
    follow: bool  # a symlink as the last component is followed (its target is changed)


class ExecProbe(NamedTuple):
    dirfd: int
    path: bytes


class Decoded(NamedTuple):
    targets: tuple[Target, ...]
    exec_probe: ExecProbe | None
    unreadable: int  # path strings (or openat2's struct) that could not be read


class Memory(Protocol):
    """The caller's memory (seccomp.MemoryReader; tests pass a dictionary-backed one)."""

    def read_cstring(self, pid: int, address: int) -> bytes | None: ...

    def read_u64(self, pid: int, address: int) -> int | None: ...


# args, pointer mask, memory, thread id -> what the call touches
Decoder = Callable[[tuple, int, Memory, int], Decoded]

_NOTHING = Decoded((), None, 0)
_UNREADABLE = Decoded((), None, 1)


def signed_int(value: int) -> int:
    """A C int argument from its 64-bit register image."""
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value & 0x80000000 else value


def open_op(flags: int) -> Op | None:
    """The journal operation of an open with these flags; None when it writes nothing
    that has a name yet (read-only, or O_TMPFILE: its name arrives by linkat)."""
    if not flags & O_WRITE_MASK or flags & O_TMPFILE_FLAG:
        return None
    if flags & O_CREAT:
        return Op.CREATE
    if flags & O_TRUNC:
        return Op.TRUNCATE
    return Op.OPEN_WRITE


def _open_follows(flags: int) -> bool:
    return not (flags & O_NOFOLLOW or (flags & O_CREAT and flags & O_EXCL))


def _opened(dirfd: int, path_address: int, flags: int, memory: Memory, pid: int) -> Decoded:
    op = open_op(flags)
    if op is None:
        return _NOTHING
    path = memory.read_cstring(pid, path_address)
    if path is None:
        return _UNREADABLE
    if not path:
        return _NOTHING  # an empty name fails with ENOENT
    return Decoded((Target(op, dirfd, path, _open_follows(flags)),), None, 0)


def _decode_open(args: tuple, mask: int, memory: Memory, pid: int) -> Decoded:
    return _opened(AT_FDCWD, args[0] & mask, args[1] & 0xFFFFFFFF, memory, pid)


def _decode_openat(args: tuple, mask: int, memory: Memory, pid: int) -> Decoded:
    return _opened(signed_int(args[0]), args[1] & mask, args[2] & 0xFFFFFFFF, memory, pid)


def _decode_openat2(args: tuple, mask: int, memory: Memory, pid: int) -> Decoded:
    flags = memory.read_u64(pid, args[2] & mask)  # struct open_how starts with the flags
    if flags is None:
        return _UNREADABLE
    return _opened(signed_int(args[0]), args[1] & mask, flags, memory, pid)


def _decode_fd(op: Op, args: tuple, mask: int, memory: Memory, pid: int) -> Decoded:
    return Decoded((Target(op, signed_int(args[0]), None, True),), None, 0)


def _decode_paths(specs: tuple[tuple[Op, int | None, int, bool], ...], args: tuple, mask: int,
                  memory: Memory, pid: int) -> Decoded:
    targets = []
    unreadable = 0
    for op, dirfd_arg, path_arg, follow in specs:
        path = memory.read_cstring(pid, args[path_arg] & mask)
        if path is None:
            unreadable += 1
        elif path:  # an empty name fails with ENOENT: nothing changes
            dirfd = AT_FDCWD if dirfd_arg is None else signed_int(args[dirfd_arg])
            targets.append(Target(op, dirfd, path, follow))
    return Decoded(tuple(targets), None, unreadable)


def _decode_fchmodat2(args: tuple, mask: int, memory: Memory, pid: int) -> Decoded:
    dirfd, flags = signed_int(args[0]), args[3] & 0xFFFFFFFF
    path = memory.read_cstring(pid, args[1] & mask)
    if path is None:
        return _UNREADABLE
    if not path:
        if flags & AT_EMPTY_PATH:
            return Decoded((Target(Op.CHMOD, dirfd, None, True),), None, 0)
        return _NOTHING
    return Decoded((Target(Op.CHMOD, dirfd, path, not flags & AT_SYMLINK_NOFOLLOW),), None, 0)


def _decode_exec(path_arg: int, args: tuple, mask: int, memory: Memory, pid: int) -> Decoded:
    path = memory.read_cstring(pid, args[path_arg] & mask)
    if path is None:
        return _UNREADABLE
    dirfd = AT_FDCWD if path_arg == 0 else signed_int(args[0])
    return Decoded((), ExecProbe(dirfd, path), 0)


# (op, dirfd arg or None for AT_FDCWD, path arg, follow) for the plain path calls
_PATH_CALLS: dict[Call, tuple[tuple[Op, int | None, int, bool], ...]] = {
    Call.CREAT: ((Op.CREATE, None, 0, True),),
    Call.TRUNCATE: ((Op.TRUNCATE, None, 0, True),),
    Call.RENAME: ((Op.RENAME_FROM, None, 0, False), (Op.RENAME_TO, None, 1, False)),
    Call.RENAMEAT: ((Op.RENAME_FROM, 0, 1, False), (Op.RENAME_TO, 2, 3, False)),
    Call.RENAMEAT2: ((Op.RENAME_FROM, 0, 1, False), (Op.RENAME_TO, 2, 3, False)),
    Call.LINK: ((Op.LINK, None, 1, False),),
    Call.LINKAT: ((Op.LINK, 2, 3, False),),
    Call.SYMLINK: ((Op.SYMLINK, None, 1, False),),
    Call.SYMLINKAT: ((Op.SYMLINK, 1, 2, False),),
    Call.UNLINK: ((Op.UNLINK, None, 0, False),),
    Call.UNLINKAT: ((Op.UNLINK, 0, 1, False),),
    Call.CHMOD: ((Op.CHMOD, None, 0, True),),
    Call.FCHMODAT: ((Op.CHMOD, 0, 1, True),),
    Call.MKNOD: ((Op.CREATE, None, 0, False),),
    Call.MKNODAT: ((Op.CREATE, 0, 1, False),),
}

DECODERS: dict[Call, Decoder] = {
    Call.OPEN: _decode_open, Call.OPENAT: _decode_openat, Call.OPENAT2: _decode_openat2,
    Call.FTRUNCATE: partial(_decode_fd, Op.TRUNCATE), Call.FCHMOD: partial(_decode_fd, Op.CHMOD),
    Call.FCHMODAT2: _decode_fchmodat2,
    Call.EXECVE: partial(_decode_exec, 0), Call.EXECVEAT: partial(_decode_exec, 1),
    **{call: partial(_decode_paths, specs) for call, specs in _PATH_CALLS.items()},
}


def decoders_for(table: ArchTable) -> dict[int, Decoder]:
    """Syscall number -> decoder for one calling convention (the hot path looks up ints)."""
    return {nr: DECODERS[call] for nr, call in table.calls.items() if call in DECODERS}


def decode(call: Call, args: tuple[int, ...], pointer_mask: int, memory: Memory,
           pid: int) -> Decoded:
    """The names ``call`` with ``args`` touches, its strings read from ``memory``."""
    decoder = DECODERS.get(call)
    return _NOTHING if decoder is None else decoder(args, pointer_mask, memory, pid)
