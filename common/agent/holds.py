"""Which recorded write-opens are still open: the end of the agent's write window.

A record is written when a file is opened for writing, but the writes through that fd
come later, until it is closed, and closing is not watched (every ``close`` of the tree
would have to be notified).  So the supervisor checks, from ``/proc/PID/fd`` and
``/proc/PID/fdinfo``, whether each recorded write-open is still open:

- every pending open is checked within :data:`~.journal.HOLD_CHECK_INTERVAL` of its
  record; found closed, nothing is written (its writes ended within the check's delay),
  unless the check came later than :data:`~.journal.LATE_CHECK` (a busy supervisor),
  then a CLOSED record bounds the window;
- found open, the path gets a HELD record and is checked every interval until no
  recorded opener holds it any more: then a CLOSED record.

A reader therefore knows, for every recorded open, when the agent's writes through it
can have ended (:mod:`.journal`'s timing contract).  The record's pid is the calling
thread's id; ``/proc/TID/fd`` is its process's table, so a thread pool's writers are
checked through the thread that opened the file.  An fd handed to a process that is not
the opener (``exec 3>f; (cmd >&3 &); exec 3>&-``) is not followed.
"""
from __future__ import annotations

import logging
import os
import time

from gitsieve.common.agent.journal import HOLD_CHECK_INTERVAL, LATE_CHECK, Op

log = logging.getLogger(__name__)

_ACCESS_MODE = 0o3  # O_ACCMODE


def writable_paths(pid: int, prefix: bytes, wanted: set[bytes]) -> set[bytes] | None:
    """Which of ``wanted`` (workspace-relative) ``pid`` has open for writing; None when the
    process is gone or its table cannot be read."""
    base = b"/proc/%d/" % pid
    try:
        fds = os.listdir(base + b"fd")
    except (FileNotFoundError, ProcessLookupError):
        return None
    except PermissionError as exc:  # not dumpable: its writes were not recorded either
        log.debug("cannot read the open files of %d: %s", pid, exc)
        return None
    found: set[bytes] = set()
    for fd in fds:
        try:
            target = os.readlink(base + b"fd/" + fd)
        except OSError:
            continue  # closed meanwhile
        if not target.startswith(prefix) or target[len(prefix):] not in wanted:
            continue
        try:
            with open(base + b"fdinfo/" + fd, "rb") as info:
                text = info.read()
        except OSError:
            continue  # closed meanwhile
        try:
            flags = int(text.split(b"flags:", 1)[1].split(None, 1)[0], 8)
        except (IndexError, ValueError):
            log.warning("unexpected %sfdinfo/%s: %r", base.decode(), fd.decode(), text[:80])
            continue
        if flags & _ACCESS_MODE in (os.O_WRONLY, os.O_RDWR):
            found.add(target[len(prefix):])
    return found


class HoldTracker:
    """Pending write-opens and held paths; :meth:`check` says what to record."""

    def __init__(self, root: bytes, clock=time.monotonic):
        self.prefix = root.rstrip(b"/") + b"/"
        self.clock = clock
        # pid -> paths opened since the last check, the first of them at pending_since (the
        # hot path reads no clock per open: all are checked as if opened that early)
        self.pending: dict[int, set[bytes]] = {}
        self.pending_since = 0.0
        self.holders: dict[bytes, set[int]] = {}  # held path -> pids holding it
        self.next_check = float("inf")
        self.checks = 0

    def opened(self, pid: int, path: bytes) -> None:
        """A write-open of ``path`` by thread ``pid`` was recorded."""
        paths = self.pending.get(pid)
        if paths is None:
            if not self.pending:
                self.pending_since = self.clock()
                if self.next_check == float("inf"):
                    self.next_check = self.pending_since + HOLD_CHECK_INTERVAL
            paths = self.pending[pid] = set()
        paths.add(path)

    def due_in(self) -> float | None:
        if self.next_check == float("inf"):
            return None
        return max(0.0, self.next_check - self.clock())

    def check(self) -> list[tuple[Op, bytes, int]]:
        """Check every pending open and held path: the HELD and CLOSED entries to record."""
        now = self.clock()
        self.checks += 1
        wanted: dict[int, set[bytes]] = {pid: set(paths) for pid, paths in self.pending.items()}
        late = now - self.pending_since > LATE_CHECK
        for path, pids in self.holders.items():
            for pid in pids:
                wanted.setdefault(pid, set()).add(path)
        open_now = {pid: writable_paths(pid, self.prefix, paths) or set()
                    for pid, paths in wanted.items()}
        entries: list[tuple[Op, bytes, int]] = []
        closed: set[bytes] = set()
        for path, pids in list(self.holders.items()):
            still = {pid for pid in pids if path in open_now[pid]}
            if still:
                self.holders[path] = still
            else:
                del self.holders[path]
                closed.add(path)
                entries.append((Op.CLOSED, path, next(iter(pids))))
        for pid, paths in self.pending.items():
            for path in paths:
                if path in open_now[pid]:
                    if path not in self.holders:
                        self.holders[path] = set()
                        entries.append((Op.HELD, path, pid))
                    self.holders[path].add(pid)
                elif late and path not in self.holders and path not in closed:
                    closed.add(path)
                    entries.append((Op.CLOSED, path, pid))
        self.pending = {}
        self.next_check = now + HOLD_CHECK_INTERVAL if self.holders else float("inf")
        return entries

    def close_all(self) -> list[tuple[Op, bytes, int]]:
        """The tree is gone: every held path is closed."""
        entries = [(Op.CLOSED, path, next(iter(pids))) for path, pids in self.holders.items()]
        self.holders = {}
        self.pending = {}
        self.next_check = float("inf")
        return entries
