"""The watcher's run counter: what orders changes across watcher restarts.

Each Change carries ``(epoch, seq)``: ``epoch`` is the watcher run (1, 2, 3, ... persisted
in the runtime directory, so it survives restarts and ignores the wall clock: a backward
clock step cannot make a new run look older than an old one), ``seq`` grows within a run.

The same file bounds what may be believed: the watcher reserves sequence numbers in blocks
of ``SEQ_BLOCK`` and records the end of the block before issuing any number in it, so
``(run, reserved)`` is an upper bound of every ``(epoch, seq)`` the watcher issued.  The
debouncer drops a decision beyond it (a forged or corrupt frame) instead of letting it make
a path's later, real changes look stale.  Format: one line, ``RUN RESERVED``.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

from gitsieve.common.config.runtime import write_atomic

log = logging.getLogger(__name__)

FILE_NAME = "watcher-run"
SEQ_BLOCK = 10_000


def read(path: Path) -> tuple[int, int] | None:
    """(run, reserved) from the file, None when it is missing or unreadable."""
    try:
        with open(path, encoding="ascii") as handle:
            run, reserved = handle.read(64).split()
        return int(run), int(reserved)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("run counter %s unreadable (%s): starting over", path, exc)
        return None


def _write(path: Path, run: int, reserved: int) -> None:
    write_atomic(path, f"{run} {reserved}\n".encode("ascii"))


class RunCounter:
    """The watcher's side: a new run at start, sequence numbers reserved in blocks."""

    def __init__(self, path: Path):
        self.path = path
        previous = read(path)
        self.run = (previous[0] if previous else 0) + 1
        self.reserved = 0
        self.reserve(0)

    def reserve(self, seq: int) -> None:
        """Record that numbers up to ``seq + SEQ_BLOCK`` may be issued (before issuing)."""
        self.reserved = seq + SEQ_BLOCK
        _write(self.path, self.run, self.reserved)

    def issue(self, seq: int) -> None:
        """Called with each number before it is used."""
        if seq > self.reserved:
            self.reserve(seq)


class IssuedBound:
    """The reader's side: the newest ``(run, reserved)``, re-read only when the file
    changed.  None when no watcher has written it (nothing to bound by)."""

    def __init__(self, path: Path):
        self.path = path
        self.bound: tuple[int, int] | None = None
        self._stamp: tuple[int, int] | None = None

    def current(self) -> tuple[int, int] | None:
        try:
            info = os.stat(self.path)
        except OSError:
            return self.bound
        stamp = (info.st_mtime_ns, info.st_ino)
        if stamp != self._stamp:
            self._stamp = stamp
            self.bound = read(self.path) or self.bound
        return self.bound
