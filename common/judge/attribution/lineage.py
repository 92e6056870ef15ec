"""Process lineage from the kernel's proc connector (netlink), kept after processes exit.

:class:`LineageTracker` subscribes to fork/exec/uid/exit events (``NETLINK_CONNECTOR``,
``CN_IDX_PROC``, ``PROC_CN_MCAST_LISTEN``; needs CAP_NET_ADMIN) and keeps, per pid, the
parent, command line, uid, cgroup and whether the process carries gitsieve's own mark
(``GITSIEVE_GIT=1`` or ``GITSIEVE_ACTOR`` in its environment).  A fork copies the parent's
record (same program until exec); an exec re-reads ``/proc/PID`` (best effort: a process
gone within microseconds keeps its parent's command line, flagged ``exec_lost``).  Processes
alive at start are read from ``/proc``; a pid never seen is read on demand.

What is kept is what could still be an ancestor of a writer, or a writer whose event is
still queued:

- every live process (any of them may write next, and a short-lived writer's command line
  can only be read while it runs, so it is read at exec, not when its write is read);
- an exited process while any kept record descends from it (a daemonised child of an
  agent still writes as the agent's descendant after the agent exits);
- any other exited process for ``keep_exited`` seconds (its write events may still be
  queued; the owner drains fanotify within milliseconds, so the grace is generous).

A parent is linked by its record's ``serial``, not only by its pid, so when the kernel
reuses the pid of an exited ancestor (pid_max may be as low as 32768) the descendants' chain
still leads to the process that really started them.
"""
from __future__ import annotations

import ctypes
import errno
import itertools
import logging
import os
import socket
import struct
import sys
import time
from dataclasses import dataclass, fields
from typing import Callable

from gitsieve.common.git.gateway import ACTOR_ENV_MARK, GITSIEVE_ENV_MARK

log = logging.getLogger(__name__)

NETLINK_CONNECTOR = 11
CN_IDX_PROC = 1
CN_VAL_PROC = 1
PROC_CN_MCAST_LISTEN = 1
NLMSG_DONE = 3
PROC_EVENT_FORK = 0x1
PROC_EVENT_EXEC = 0x2
PROC_EVENT_UID = 0x4
PROC_EVENT_EXIT = 0x80000000

_NLMSGHDR = struct.Struct("=IHHII")
_CN_MSG = struct.Struct("=IIIIHH")
_EVENT_HEAD = struct.Struct("=IIQ")  # what, cpu, timestamp_ns
_EVENT_DATA = _NLMSGHDR.size + _CN_MSG.size + _EVENT_HEAD.size
# One message in one unpack: nlmsghdr's length, proc_event's ``what`` and the first four
# ints of its union (fork: parent pid, tgid, child pid, tgid; exec and exit: pid, tgid;
# uid: pid, tgid, ruid, euid).  The union is never shorter than that.
_MESSAGE = struct.Struct(f"=I{_NLMSGHDR.size + _CN_MSG.size - 4}xI"
                         f"{_EVENT_HEAD.size - 4}xiiii")
_RECV_SIZE = 64 * 1024
_PROC_READ_SIZE = 64 * 1024
KEEP_EXITED = 10.0
_PRUNE_EVERY = 5.0
MAX_CHAIN = 64
_GIT_MARK = f"\0{GITSIEVE_ENV_MARK}=1\0".encode()
_ACTOR_MARK = f"\0{ACTOR_ENV_MARK}=".encode()
NO_PARENT = 0
# The reader's wake-ups: prompt while they are rare, so each exec is read from /proc while
# its process runs; past this many a second on average (bursts of WAKE_BURST), the socket
# rests unpolled and a busy machine's events are read in batches.  A process that exec'd and
# exited within one batch is never read (it is gone).  A write in the workspace reads the
# pending batch at once (the fanotify drain reads the lineage first), so a writer is read
# while it still runs.  A batch of FULL_BATCH events or more rests not at all: the socket's
# buffer (RECEIVE_BUFFER, about 5,000 events) must not fill during a rest.
WAKES_PER_SECOND = 1.0
WAKE_BURST = 8.0
FULL_BATCH = 1000
RECEIVE_BUFFER = 4 * 1024 * 1024
SO_RCVBUFFORCE = 33  # past net.core.rmem_max (CAP_NET_ADMIN, which the socket needs anyway)


# A classic BPF program on the socket drops, before any Python runs, what the tracker never
# uses: thread forks and exits (half of all events on a busy machine) and event types other
# than fork, exec, uid and exit.  Loads are big-endian; the fields are the host's, so the
# constants are compared byte-swapped, and pid/tgid equality needs no swap.
SO_ATTACH_FILTER = 26
_BPF = struct.Struct("=HBBI")
_LD_W_ABS, _LDX_W_MEM, _ST, _JEQ_K, _JEQ_X, _RET_K = 0x20, 0x61, 0x02, 0x15, 0x1D, 0x06
_WHAT_AT = _NLMSGHDR.size + _CN_MSG.size   # proc_event.what
_DATA_AT = _EVENT_DATA                       # proc_event.event_data
_KEEP, _DROP = 0xFFFFFFFF, 0


def _swapped(value: int) -> int:
    return int.from_bytes(value.to_bytes(4, sys.byteorder), "big")


def _same_words(first: int, second: int) -> list[tuple[int, int, int, int]]:
    """Keep the message when the words at ``first`` and ``second`` are equal."""
    return [(_LD_W_ABS, 0, 0, second), (_ST, 0, 0, 0), (_LD_W_ABS, 0, 0, first),
            (_LDX_W_MEM, 0, 0, 0), (_JEQ_X, 0, 1, 0), (_RET_K, 0, 0, _KEEP),
            (_RET_K, 0, 0, _DROP)]


def _filter_program() -> bytes:
    # fork: child pid == child tgid; exit: pid == tgid (offsets in proc_event's union)
    fork = _same_words(_DATA_AT + 8, _DATA_AT + 12)
    exit_ = _same_words(_DATA_AT, _DATA_AT + 4)
    keep_at, fork_at = 6, 7
    exit_at = fork_at + len(fork)
    head = [(_LD_W_ABS, 0, 0, _WHAT_AT),                              # 0
            (_JEQ_K, fork_at - 2, 0, _swapped(PROC_EVENT_FORK)),     # 1
            (_JEQ_K, exit_at - 3, 0, _swapped(PROC_EVENT_EXIT)),     # 2
            (_JEQ_K, keep_at - 4, 0, _swapped(PROC_EVENT_EXEC)),     # 3
            (_JEQ_K, keep_at - 5, 0, _swapped(PROC_EVENT_UID)),      # 4
            (_RET_K, 0, 0, _DROP),                                   # 5
            (_RET_K, 0, 0, _KEEP)]                                   # 6
    return b"".join(_BPF.pack(*instruction) for instruction in (*head, *fork, *exit_))


def _attach_filter(sock: socket.socket) -> None:
    program = ctypes.create_string_buffer(_filter_program())
    fprog = struct.pack("HL", len(program.raw) // _BPF.size, ctypes.addressof(program))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)


class WakeBudget:
    """A token bucket of wake-ups: :meth:`spend` one, and learn how long to rest so the
    average stays at ``per_second`` (bursts of ``burst`` pass at once)."""

    def __init__(self, per_second: float = WAKES_PER_SECOND, burst: float = WAKE_BURST):
        self.per_second, self.burst = per_second, burst
        self.tokens, self.at = burst, time.monotonic()

    def spend(self, now: float) -> float:
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.per_second) - 1
        self.at = now
        return 0.0 if self.tokens >= 1 else (1 - self.tokens) / self.per_second


class LineageUnavailable(OSError):
    """The proc connector cannot be used (no privilege or no kernel support)."""


@dataclass(frozen=True, slots=True)
class ProcInfo:
    pid: int
    ppid: int
    cmdline: str
    uid: int
    cgroup: str
    gitsieve_mark: bool
    exited: float | None = None
    # a fork's copy of its parent's record, not (yet) read from /proc after an exec: its
    # command line is the parent's, so the parent, next in the chain, is the real evidence
    inherited: bool = False
    # it exec'd, but was gone before /proc could be read: what it ran is unknown
    exec_lost: bool = False
    # this record's number, and its parent record's (NO_PARENT: not known), so a chain
    # follows the process that forked it even after the kernel reuses the parent's pid
    serial: int = 0
    parent_serial: int = NO_PARENT


_FIELDS = tuple(field.name for field in fields(ProcInfo))


def _updated(info: ProcInfo, **changes) -> ProcInfo:
    """``info`` with ``changes``: ``dataclasses.replace`` without its checks, which cost
    more than the tracker's whole handling of a fork."""
    return ProcInfo(*[changes.get(name, getattr(info, name)) for name in _FIELDS])


def _read(path: str) -> bytes | None:
    """The whole of a /proc file.  Plain descriptors, not file objects: an exec anywhere on
    the machine reads three of them (about 25 us, against 40 through ``open``)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:  # the process is gone or not ours to read: the caller keeps what it has
        return None
    try:
        chunks = []
        while chunk := os.read(fd, _PROC_READ_SIZE):
            chunks.append(chunk)
        return b"".join(chunks)
    except OSError:  # gone while it was read
        return None
    finally:
        os.close(fd)


def read_proc(pid: int, known: ProcInfo | None = None) -> ProcInfo | None:
    """What /proc says about ``pid`` now, or None when it is gone.  ``known``: its live
    record (a fork's copy), whose parent and uid stand (uid changes come as events), so
    its status need not be read.  Command lines and cgroups are interned: many processes
    share them."""
    if known is None:
        status = _read(f"/proc/{pid}/status")
        if status is None:
            return None
        ppid, uid = 0, -1
        for line in status.splitlines():
            if line.startswith(b"PPid:"):
                ppid = int(line.split()[1])
            elif line.startswith(b"Uid:"):
                uid = int(line.split()[1])
    else:
        ppid, uid = known.ppid, known.uid
    raw_cmdline = _read(f"/proc/{pid}/cmdline")
    if raw_cmdline is None:
        return None
    cmdline = raw_cmdline.rstrip(b"\0").replace(b"\0", b" ").decode("utf-8", "replace")
    cgroup = (_read(f"/proc/{pid}/cgroup") or b"").decode("utf-8", "replace").strip()
    environ = b"\0" + (_read(f"/proc/{pid}/environ") or b"") + b"\0"
    mark = _GIT_MARK in environ or _ACTOR_MARK in environ
    return ProcInfo(pid, ppid, sys.intern(cmdline), uid, sys.intern(cgroup), mark)


class LineageTracker:
    """pid -> :class:`ProcInfo`, fed by proc connector events (``drain``) and /proc."""

    def __init__(self, keep_exited: float = KEEP_EXITED, listen: bool = True,
                 clock: Callable[[], float] = time.time):
        self.keep_exited, self.clock = keep_exited, clock
        self.processes: dict[int, ProcInfo] = {}  # the current process of each pid
        # exited records whose pid the kernel gave to a new process while descendants of
        # theirs were still kept: reachable only through those descendants' parent_serial
        self.retired: dict[int, ProcInfo] = {}
        self._by_serial: dict[int, ProcInfo] = {}
        self._children: dict[int, int] = {}  # serial -> kept records naming it as parent
        self._serials = itertools.count(1)
        self.events = 0
        self.overflows = 0
        self.wakes = WakeBudget()
        self.sock: socket.socket | None = None
        self._next_prune = 0.0
        if listen:
            self.sock = self._subscribe()
        self.snapshot()

    def _subscribe(self) -> socket.socket:
        try:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK
                                 | socket.SOCK_CLOEXEC, NETLINK_CONNECTOR)
            sock.bind((0, CN_IDX_PROC))
            try:
                sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RECEIVE_BUFFER)
            except PermissionError:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
            _attach_filter(sock)
            payload = struct.pack("=I", PROC_CN_MCAST_LISTEN)
            message = _CN_MSG.pack(CN_IDX_PROC, CN_VAL_PROC, 0, 0, len(payload), 0) + payload
            sock.send(_NLMSGHDR.pack(_NLMSGHDR.size + len(message), NLMSG_DONE, 0, 0,
                                     sock.getsockname()[0]) + message)
        except OSError as exc:
            raise LineageUnavailable(exc.errno or errno.EPERM,
                                     f"proc connector: {exc.strerror or exc}") from None
        return sock

    def fileno(self) -> int:
        return self.sock.fileno() if self.sock else -1

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def __len__(self) -> int:
        return len(self._by_serial)

    # ----- the table -------------------------------------------------------------------
    def _put(self, info: ProcInfo) -> ProcInfo:
        """Store ``info`` as the current process of its pid, keeping the links counted.
        A record it displaces is the same process (same serial), or an exited one whose
        pid was reused: retired while descendants still need it, else dropped."""
        previous = self.processes.get(info.pid)
        if previous is not None and previous.serial != info.serial:
            self._displace(previous)
            previous = None
        if previous is None or previous.parent_serial != info.parent_serial:
            if previous is not None:
                self._unlink(previous.parent_serial)
            if info.parent_serial != NO_PARENT:
                self._children[info.parent_serial] = (
                    self._children.get(info.parent_serial, 0) + 1)
        self.processes[info.pid] = info
        self._by_serial[info.serial] = info
        return info

    def _new(self, info: ProcInfo, parent: ProcInfo | None) -> ProcInfo:
        return self._put(_updated(info, serial=next(self._serials),
                                 parent_serial=parent.serial if parent else NO_PARENT))

    def _displace(self, old: ProcInfo) -> None:
        if self._children.get(old.serial):
            self.retired[old.serial] = old if old.exited else _updated(old, exited=self.clock())
            self._by_serial[old.serial] = self.retired[old.serial]
        else:
            self._drop(old)

    def _drop(self, old: ProcInfo) -> None:
        del self._by_serial[old.serial]
        self._children.pop(old.serial, None)
        self._unlink(old.parent_serial)

    def _unlink(self, parent_serial: int) -> None:
        if parent_serial == NO_PARENT:
            return
        left = self._children.get(parent_serial, 0) - 1
        if left > 0:
            self._children[parent_serial] = left
        else:
            self._children.pop(parent_serial, None)

    def snapshot(self) -> None:
        """Read every live process from /proc (at start, and after lost events).  A pid
        already known keeps its record's links (the same process, as far as one can tell)."""
        fresh = [info for info in map(read_proc, _proc_pids()) if info is not None]
        for info in fresh:
            known = self.processes.get(info.pid)
            if known is not None and known.exited is None:
                self._put(_updated(info, ppid=known.ppid, serial=known.serial,
                                  parent_serial=known.parent_serial))
        for info in fresh:
            known = self.processes.get(info.pid)
            if known is None or known.exited is not None:
                self._new(info, self.processes.get(info.ppid))

    # ----- events ----------------------------------------------------------------------
    def drain(self) -> int:
        """Apply every queued event, as one batch; return how many were read."""
        if self.sock is None:
            return 0
        received: list[bytes] = []
        count = 0
        while True:
            try:
                received.append(self.sock.recv(_RECV_SIZE))
            except BlockingIOError:
                break
            except InterruptedError:
                continue
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    raise
                # The kernel dropped events: live processes can be re-read, short-lived
                # ones are lost (their writes then fall through to the content layer).
                self.overflows += 1
                log.warning("proc connector overflowed; re-reading /proc")
                count += self._parse(b"".join(received))
                received.clear()
                self.snapshot()
        count += self._parse(b"".join(received))
        now = self.clock()
        if now >= self._next_prune:
            self._next_prune = now + _PRUNE_EVERY
            self.prune(now)
        return count

    def rest_after(self, count: int, now: float) -> float | None:
        """Seconds the socket should rest unpolled after a wake-up that read ``count``
        events (None: none read, poll it again)."""
        if not count:
            return None
        return 0.0 if count >= FULL_BATCH else self.wakes.spend(now)

    def _parse(self, data: bytes) -> int:
        """Apply the messages in ``data`` (whole datagrams, in order) as one batch."""
        events = []
        offset, size = 0, len(data)
        while offset + _MESSAGE.size <= size:
            length, *event = _MESSAGE.unpack_from(data, offset)
            if length < _MESSAGE.size:
                break
            events.append(event)
            offset += (length + 3) & ~3
        # an exec whose process exits later in the batch is gone: /proc is not read for it
        exits_at = {tgid: index for index, (what, pid, tgid, _, _) in enumerate(events)
                    if what == PROC_EVENT_EXIT and pid == tgid}
        for index, (what, first, second, third, fourth) in enumerate(events):
            if what == PROC_EVENT_FORK:
                if third == fourth:  # a new process, not a new thread
                    self._on_fork(second, third)
            elif what == PROC_EVENT_EXEC:
                self._on_exec(second, exits_at.get(second, -1) > index)
            elif what == PROC_EVENT_EXIT:
                if first == second:
                    self._on_exit(second)
            elif what == PROC_EVENT_UID:
                self._on_uid(second, third)
        self.events += len(events)
        return len(events)

    def _on_fork(self, parent_tgid: int, child: int) -> None:
        parent = self.processes.get(parent_tgid) or self._load(parent_tgid)
        if parent is None:
            self._load(child)
            return
        self._put(ProcInfo(child, parent_tgid, parent.cmdline, parent.uid, parent.cgroup,
                           parent.gitsieve_mark, None, True, parent.exec_lost,
                           next(self._serials), parent.serial))

    def _on_exec(self, tgid: int, gone: bool) -> None:
        known = self.processes.get(tgid)
        live = known if known is not None and known.exited is None else None
        fresh = None if gone else read_proc(tgid, live)
        if fresh is None:  # exited already: the parent is right, the program unknown
            if known is not None:
                self._put(_updated(known, exec_lost=True))
            return
        if live is None:
            self._new(fresh, self.processes.get(fresh.ppid))
            return
        # /proc may already show a reparented ppid (1) if the parent died; keep ours.
        self._put(_updated(fresh, ppid=live.ppid, serial=live.serial,
                           parent_serial=live.parent_serial))

    def _on_uid(self, tgid: int, ruid: int) -> None:
        known = self.processes.get(tgid)
        if known is not None:
            self._put(_updated(known, uid=ruid))

    def _on_exit(self, tgid: int) -> None:
        known = self.processes.get(tgid)
        if known is not None:
            self._put(_updated(known, exited=self.clock()))

    def prune(self, now: float | None = None) -> None:
        """Drop exited records past the grace that no kept record descends from; dropping
        one may free its parent in turn."""
        horizon = (self.clock() if now is None else now) - self.keep_exited
        candidates = [info for info in self._by_serial.values()
                      if info.exited is not None and info.exited < horizon]
        while candidates:
            info = candidates.pop()
            if info.serial not in self._by_serial or self._children.get(info.serial):
                continue
            if self.processes.get(info.pid) is info:
                del self.processes[info.pid]
            self.retired.pop(info.serial, None)
            self._drop(info)
            parent = self._by_serial.get(info.parent_serial)
            if parent is not None and parent.exited is not None and parent.exited < horizon:
                candidates.append(parent)

    # ----- queries ---------------------------------------------------------------------
    def _load(self, pid: int) -> ProcInfo | None:
        info = read_proc(pid)
        if info is None:
            return None
        return self._new(info, self.processes.get(info.ppid))

    def info(self, pid: int) -> ProcInfo | None:
        return self.processes.get(pid) or self._load(pid)

    def _parent(self, info: ProcInfo) -> ProcInfo | None:
        if info.parent_serial != NO_PARENT:
            return self._by_serial.get(info.parent_serial)
        return self.info(info.ppid) if info.ppid > 0 else None

    def chain(self, pid: int) -> list[ProcInfo]:
        """``pid`` and its ancestors, nearest first (as known when they were alive)."""
        found: list[ProcInfo] = []
        seen: set[int] = set()
        info = self.info(pid) if pid > 0 else None
        while info is not None and info.serial not in seen and len(found) < MAX_CHAIN:
            seen.add(info.serial)
            found.append(info)
            info = self._parent(info)
        return found


def _proc_pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]
