"""Freed heap given back to the kernel after work, so an actor at rest holds no pages of a
burst it handled long ago.

glibc's ``free`` keeps freed memory in the process for reuse: the frames, decoded changes
and git output of a burst stay resident (and counted in the process's PSS) after it ends.
``malloc_trim(0)`` returns the free pages of every arena.  It costs about a millisecond, so
an actor trims at most once per ``TRIM_EVERY`` seconds, and only after handling something
since its last trim: an actor that stays idle never trims again.  Python's own small-object
allocator frees its empty arenas by itself; this reaches the rest.  Without glibc (musl)
there is nothing to call, and nothing is trimmed.
"""
from __future__ import annotations

import ctypes
import logging
import time

log = logging.getLogger(__name__)

TRIM_EVERY = 30.0  # seconds


_malloc_trim = None  # glibc's, looked up at the first trim (False: this libc has none)


def trim_heap() -> None:
    """Give the process's freed heap back to the kernel now."""
    global _malloc_trim
    if _malloc_trim is None:
        try:
            _malloc_trim = ctypes.CDLL(None).malloc_trim  # the process's own libc: no ldconfig
            _malloc_trim.argtypes, _malloc_trim.restype = [ctypes.c_size_t], ctypes.c_int
        except (AttributeError, OSError):
            log.debug("no malloc_trim in this C library; freed heap stays in the process")
            _malloc_trim = False
    if _malloc_trim:
        _malloc_trim(0)


class HeapTrim:
    """When to return freed heap: ``worked`` after each round that handled something,
    ``due(now)`` on every round (monotonic seconds).  Starting up is work: the first trim
    comes ``every`` seconds after the start, when what starting freed is free."""

    def __init__(self, every: float = TRIM_EVERY):
        self.every = every
        self.trims = 0
        self._worked = True
        self._next = time.monotonic() + every

    def worked(self) -> None:
        self._worked = True

    def due(self, now: float) -> bool:
        """Trim if work was handled since the last trim and ``every`` has passed; whether
        it trimmed."""
        if not self._worked or now < self._next:
            return False
        trim_heap()
        self._worked = False
        self._next = now + self.every
        self.trims += 1
        return True
