"""Freed heap given back to the kernel after work, so an actor at rest holds no pages of a
burst it handled long ago; and the fork server's free small-object blocks and free malloc
chunks taken before it forks, so the actors allocate in pages of their own rather than
copying shared ones.

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
import gc
import logging
import os
import re
import sys
import tempfile
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

    def released(self) -> None:
        """A cache was let go at rest: trim at the next round."""
        self._worked = True
        self._next = 0.0

    def due(self, now: float) -> bool:
        """Trim if work was handled since the last trim and ``every`` has passed; whether
        it trimmed."""
        if not self._worked or now < self._next:
            return False
        # Work leaves cyclic garbage (each git run through sh leaves about 60 objects) that
        # the collector's thresholds may keep for long: collected first, it is trimmed too.
        gc.collect()
        trim_heap()
        self._worked = False
        self._next = now + self.every
        self.trims += 1
        return True


_M_ARENA_MAX = -8  # mallopt's parameter number (glibc's malloc.h)


def share_one_malloc_arena() -> bool:
    """Make every thread of this process allocate from glibc's main arena; whether it did.
    An actor calls it before its first thread: ZeroMQ's I/O thread, and the threads ``sh``
    starts for each git command, each made an arena of their own (a 64 MiB reservation
    with up to 0.3 MiB touched, kept for the process's life): one in every actor, five in
    an executor after a few commits.  One arena also keeps their allocations where the
    fork server's free chunks were taken (``fill_malloc_free_chunks``).  The threads only
    read pipes and queue frames, and each has its own small-block cache, so sharing the
    arena's lock costs nothing measurable.  Without glibc nothing changes."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (AttributeError, OSError):
        log.debug("no mallopt in this C library; each thread may get its own arena")
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt(_M_ARENA_MAX, 1) == 1


def empty_method_cache() -> bool:
    """Empty the interpreter's method cache ((type, attribute name) -> what the lookup
    found); whether this interpreter has one to empty.  The fork server calls it just
    before forking: each entry holds a reference to its attribute name, and a fork's
    lookup that replaces an entry drops that reference, writing the count of a string on a
    page the forks share, which copies the page (about 60 an actor).  Emptied, every entry
    holds ``None``, whose count lies in the interpreter's own data, copied by every fork
    anyway."""
    clear = getattr(sys, "_clear_type_cache", None)
    if clear is None:
        return False
    clear()
    return True


# One size class a line of ``sys._debugmallocstats()``:
# class, block size, pools, blocks in use, free blocks (in pools partly used).
_SIZE_CLASS_LINE = re.compile(rb"^\s*\d+\s+(\d+)\s+\d+\s+\d+\s+(\d+)\s*$", re.M)
_BYTES_OVERHEAD = sys.getsizeof(b"")  # a bytes object of n bytes asks the allocator for this + n
_INT_BLOCK = 32  # the block an int of one digit (28 bytes) takes
_pool_fillers: list[object] = []  # the blocks taken, held for the process's life


def small_object_free_blocks() -> dict[int, int]:
    """{block size: free blocks in the partly used pools of CPython's small-object
    allocator}; {} where the interpreter has no such statistics."""
    print_stats = getattr(sys, "_debugmallocstats", None)
    if print_stats is None:
        return {}
    sys.stderr.flush()
    # The statistics go to the C stream stderr, so file descriptor 2 is caught for the call.
    with tempfile.TemporaryFile() as capture:
        stderr = os.dup(2)
        os.dup2(capture.fileno(), 2)
        try:
            print_stats()
        finally:
            os.dup2(stderr, 2)
            os.close(stderr)
        capture.seek(0)
        text = capture.read()
    return {int(size): int(free) for size, free in _SIZE_CLASS_LINE.findall(text)}


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]


_LARGEST_CHUNK_TAKEN = 64 * 1024  # under glibc's least mmap threshold (128 KiB)
_MOST_CHUNKS_TAKEN = 100_000
_malloc_fillers: list[int] = []  # addresses of the chunks taken, held for the process's life


def _main_heap_start() -> int | None:
    """Where the main malloc arena (``[heap]``, grown by ``brk``) begins, if it exists."""
    with open("/proc/self/maps", "rb") as maps:
        for line in maps:
            if line.rstrip().endswith(b"[heap]"):
                return int(line.split(b"-", 1)[0], 16)
    return None


def fill_malloc_free_chunks() -> int:
    """Take every free chunk of glibc's main heap, for good; the bytes taken.  The fork
    server calls it just before forking, for the reason it fills the small-object pools:
    importing leaves about a thousand free chunks (3-4 MiB) between live ones, a fork's
    mallocs (objects over 512 bytes, ZeroMQ's and msgpack's buffers) would reuse them, and
    each page they lie on would be copied into that fork.  Afterwards the forks' mallocs
    come from the top of the heap, pages of their own.  The chunks are taken best fit
    first, halving the size each time a request is served from the top (the top chunk is
    ``[brk - keepcost, brk)``): nothing is written into them, so their pages that
    ``malloc_trim`` gave back stay unmapped.  Single-threaded only (no other arena).
    Nothing is taken without glibc's ``mallinfo2`` (2.33 and later) or outside Linux."""
    try:
        libc = ctypes.CDLL(None)
        mallinfo2, malloc, free, sbrk = libc.mallinfo2, libc.malloc, libc.free, libc.sbrk
        start = _main_heap_start()
    except (AttributeError, OSError):
        return 0
    if start is None:
        return 0
    mallinfo2.restype = _MallInfo2
    malloc.restype, malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    free.restype, free.argtypes = None, [ctypes.c_void_p]
    sbrk.restype, sbrk.argtypes = ctypes.c_void_p, [ctypes.c_ssize_t]
    size, taken = _LARGEST_CHUNK_TAKEN, 0
    while size >= 16 and len(_malloc_fillers) < _MOST_CHUNKS_TAKEN:
        chunk = malloc(size)
        if not chunk:
            break
        brk = sbrk(0)
        top_start = brk - mallinfo2().keepcost
        if not start <= chunk < brk or top_start - (chunk + size) < 4096:
            free(chunk)  # from the top, or mmap'ed: no free chunk of this size is left
            size //= 2
            continue
        _malloc_fillers.append(chunk)
        taken += size
    return taken


def fill_small_object_pools() -> int:
    """Take every free block of the partly used small-object pools, for good; the bytes
    taken.  The fork server calls it just before forking: a fork's first allocations of
    each size would otherwise land in those shared pools, and each one copies a page.
    Afterwards the forks allocate in pools of their own: 4 to 8 MiB less PSS over the
    eight actors, for under 1 MiB held here (ARCHITECTURE.md, *Processes and memory*)."""
    taken = 0
    for size, free in small_object_free_blocks().items():
        if size == _INT_BLOCK:
            _pool_fillers.extend(1_000_000 + n for n in range(free))
        elif size - _BYTES_OVERHEAD > 1:  # bytes of length 0 and 1 are shared singletons
            _pool_fillers.extend(bytes(size - _BYTES_OVERHEAD) for _ in range(free))
        else:
            continue
        taken += size * free
    return taken
