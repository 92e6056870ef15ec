"""Process lineage from the kernel's proc connector (netlink), kept after processes exit.

:class:`LineageTracker` subscribes to fork/exec/uid/exit events (``NETLINK_CONNECTOR``,
``CN_IDX_PROC``, ``PROC_CN_MCAST_LISTEN``; needs CAP_NET_ADMIN) and keeps, per pid, the
parent, command line, uid, cgroup and whether the process carries gitsieve's own git mark
(``GITSIEVE_GIT=1`` or ``GITSIEVE_ACTOR`` in its environment).  A fork copies the parent's record (same program
until exec); an exec re-reads ``/proc/PID`` (best effort: a process gone within
microseconds keeps its parent's command line); an exit only stamps the record, which is
kept ``keep_exited`` seconds, so a write by ``sh -c 'date > f'`` that exited long before the
change is judged is still traced to the autonomous process that spawned it.  Processes
alive at start are read from ``/proc``; a pid never seen is read on demand.
"""
from __future__ import annotations

import errno
import logging
import os
import socket
import struct
import time
from dataclasses import dataclass, replace
from typing import Callable

from gitsieve.common.git.gateway import ACTOR_ENV_MARK, GITSIEVE_ENV_MARK
from gitsieve.common.judge.attribution.base import Periodic

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
_FOUR_INTS = struct.Struct("=iiii")
_TWO_INTS = struct.Struct("=ii")
_RECV_SIZE = 64 * 1024
KEEP_EXITED = 60.0
_PRUNE_EVERY = 5.0
MAX_CHAIN = 64
_GIT_MARK = f"{GITSIEVE_ENV_MARK}=1".encode()
_ACTOR_MARK = f"{ACTOR_ENV_MARK}=".encode()


class LineageUnavailable(OSError):
    """The proc connector cannot be used (no privilege or no kernel support)."""


@dataclass(frozen=True)
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


def _read(path: str) -> bytes | None:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError:  # the process is gone or not ours to read: the caller keeps what it has
        return None


def read_proc(pid: int) -> ProcInfo | None:
    """What /proc says about ``pid`` now, or None when it is gone."""
    status = _read(f"/proc/{pid}/status")
    if status is None:
        return None
    ppid, uid = 0, -1
    for line in status.splitlines():
        if line.startswith(b"PPid:"):
            ppid = int(line.split()[1])
        elif line.startswith(b"Uid:"):
            uid = int(line.split()[1])
    raw_cmdline = _read(f"/proc/{pid}/cmdline") or b""
    cmdline = raw_cmdline.rstrip(b"\0").replace(b"\0", b" ").decode("utf-8", "replace")
    cgroup = (_read(f"/proc/{pid}/cgroup") or b"").decode("utf-8", "replace").strip()
    environ = _read(f"/proc/{pid}/environ") or b""
    mark = any(item == _GIT_MARK or item.startswith(_ACTOR_MARK)
               for item in environ.split(b"\0"))
    return ProcInfo(pid, ppid, cmdline, uid, cgroup, mark)


class LineageTracker:
    """pid -> :class:`ProcInfo`, fed by proc connector events (``drain``) and /proc."""

    def __init__(self, keep_exited: float = KEEP_EXITED, listen: bool = True,
                 clock: Callable[[], float] = time.time):
        self.keep_exited, self.clock = keep_exited, clock
        self.processes: dict[int, ProcInfo] = {}
        self.events = 0
        self.overflows = 0
        self.sock: socket.socket | None = None
        self._pruning = Periodic(_PRUNE_EVERY)
        if listen:
            self.sock = self._subscribe()
        self.snapshot()

    def _subscribe(self) -> socket.socket:
        try:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK
                                 | socket.SOCK_CLOEXEC, NETLINK_CONNECTOR)
            sock.bind((0, CN_IDX_PROC))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
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

    def snapshot(self) -> None:
        """Read every live process from /proc (at start, and after lost events)."""
        for name in os.listdir("/proc"):
            if name.isdigit():
                info = read_proc(int(name))
                if info is not None:
                    self.processes[info.pid] = info

    # ----- events ----------------------------------------------------------------------
    def drain(self) -> int:
        """Apply every queued event; return how many were read."""
        if self.sock is None:
            return 0
        count = 0
        while True:
            try:
                data = self.sock.recv(_RECV_SIZE)
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
                self.snapshot()
                continue
            count += self._parse(data)
        now = self.clock()
        if self._pruning.due(now):
            self.prune(now)
        return count

    def _parse(self, data: bytes) -> int:
        offset, count = 0, 0
        while offset + _EVENT_DATA <= len(data):
            length = _NLMSGHDR.unpack_from(data, offset)[0]
            if length < _EVENT_DATA:
                break
            what = _EVENT_HEAD.unpack_from(data, offset + _NLMSGHDR.size + _CN_MSG.size)[0]
            body = offset + _EVENT_DATA
            handler = self._handlers.get(what)
            if handler is not None and body + 8 <= len(data):
                handler(self, data, body)
            self.events += 1
            count += 1
            offset += (length + 3) & ~3
        return count

    def _on_fork(self, data: bytes, at: int) -> None:
        _, parent_tgid, child_pid, child_tgid = _FOUR_INTS.unpack_from(data, at)
        if child_pid != child_tgid:
            return  # a new thread, not a new process
        parent = self.processes.get(parent_tgid) or self._load(parent_tgid)
        if parent is None:
            self._load(child_pid)
            return
        self.processes[child_pid] = replace(parent, pid=child_pid, ppid=parent_tgid,
                                            exited=None, inherited=True)

    def _on_exec(self, data: bytes, at: int) -> None:
        pid, tgid = _TWO_INTS.unpack_from(data, at)
        fresh = read_proc(tgid)
        if fresh is None:  # exited already: the parent is right, the program unknown
            known = self.processes.get(tgid)
            if known is not None:
                self.processes[tgid] = replace(known, exec_lost=True)
            return
        known = self.processes.get(tgid)
        # /proc may already show a reparented ppid (1) if the parent died; keep ours.
        if known is not None and known.ppid and fresh.ppid in (0, 1):
            fresh = replace(fresh, ppid=known.ppid)
        self.processes[tgid] = fresh

    def _on_uid(self, data: bytes, at: int) -> None:
        pid, tgid, ruid, _ = _FOUR_INTS.unpack_from(data, at)
        known = self.processes.get(tgid)
        if known is not None:
            self.processes[tgid] = replace(known, uid=ruid)

    def _on_exit(self, data: bytes, at: int) -> None:
        pid, tgid = _TWO_INTS.unpack_from(data, at)
        if pid != tgid:
            return
        known = self.processes.get(tgid)
        if known is not None:
            self.processes[tgid] = replace(known, exited=self.clock())

    _handlers = {PROC_EVENT_FORK: _on_fork, PROC_EVENT_EXEC: _on_exec,
                 PROC_EVENT_UID: _on_uid, PROC_EVENT_EXIT: _on_exit}

    def prune(self, now: float | None = None) -> None:
        horizon = (self.clock() if now is None else now) - self.keep_exited
        gone = [pid for pid, info in self.processes.items()
                if info.exited is not None and info.exited < horizon]
        for pid in gone:
            del self.processes[pid]

    # ----- queries ---------------------------------------------------------------------
    def _load(self, pid: int) -> ProcInfo | None:
        info = read_proc(pid)
        if info is not None:
            self.processes[pid] = info
        return info

    def info(self, pid: int) -> ProcInfo | None:
        return self.processes.get(pid) or self._load(pid)

    def chain(self, pid: int) -> list[ProcInfo]:
        """``pid`` and its ancestors, nearest first (as known when they were alive)."""
        found: list[ProcInfo] = []
        seen: set[int] = set()
        while pid > 0 and pid not in seen and len(found) < MAX_CHAIN:
            seen.add(pid)
            info = self.info(pid)
            if info is None:
                break
            found.append(info)
            pid = info.ppid
        return found
