"""The agent journal: what wrapped processes did to workspace paths, for gitsieve's L2.

Layout (``<runtime dir>/agent/``, 0700):
  ``w-<owner>-<writer>-<gen>.seg``  a live writer's segment: msgpack records appended with
                                    one ``os.write`` per batch (in the file before the
                                    recorded system call proceeds; not fsynced)
  ``d-<owner>-<writer>-<gen>.seg``  a closed writer's segment (renamed at close, or after a
                                    failed append), immutable
  ``m-<owner>-<writer>-<n>.seg``    a merged segment: dead writers' records, immutable
  ``.<name>.tmp``                   a segment being written; renamed into place when whole
  ``.merge.lock``                   flock taken (non-blocking) by the one process merging

``<owner>`` is hex of the writing process's ``start_time << 22 | pid`` (start time in clock
ticks since boot, from /proc/PID/stat), so a segment's liveness is checked without any
registry; ``<writer>`` is a random 63-bit id per :class:`JournalWriter` (a process may hold
several, one after another or at once).

A record is the msgpack array ``[op, path, pid, wall, mono, writer, seq, digest]``: ``path``
workspace-relative raw bytes (``Record.path`` is its surrogateescape str), ``pid`` the
calling thread id, ``wall`` ``time.time()``, ``mono`` CLOCK_MONOTONIC, ``writer`` the
writer's id and ``seq`` its own counter from 1, ``digest`` the 20-byte git blob id of a
MARK, else nil.

Families.  A record says the content, mode or name arrived (WRITE), the name went away
(REMOVAL), the current version was declared the system's (MARK), or whether a recorded
write-open is still open (HOLD: HELD when the wrapper's check finds a write-opened path
still open, CLOSED when it no longer is).  The timing contract between the wrapper and
the readers: every write-open is checked within :data:`LATE_CHECK` of its record, and
a path found open is checked every :data:`HOLD_CHECK_INTERVAL` until it is closed, so
the agent's writes through a recorded open end by ``wall + WRITE_WINDOW``, or by the
CLOSED record that follows a HELD one.

Bounds.  Compaction keeps, per (path, family), the newest record, drops a path's other
records older than its newest REMOVAL, REMOVAL records older than ``removal_retention``
(beyond the newest ``max_removals``), and anything older than ``max_age``.  So the
journal holds a few records per path the agent left in place, plus recent removals:
  * a writer compacts its own segment when it exceeds ``max(segment_bytes, 2 x its size
    after the last compaction)``: write ``.tmp``, rename to the next generation, unlink
    the old one;
  * dead data (closed segments, live-named segments of dead processes, earlier merged
    segments) is merged into one new merged segment by a wrapper when it starts and
    whenever it compacts, and by a short-lived writer (``mark``) once more than
    ``dead_segments_before_merge`` dead segments accumulate; empty results leave no
    file, and stale ``.tmp`` files of dead processes are removed.

Readers (:class:`JournalReader`) never write.  Each remembers per segment an offset and
per writer the highest ``seq`` delivered, so rotation, compaction and merging neither
lose nor repeat records: a segment that appears is read from its start and records at or
below the writer's delivered ``seq`` are skipped.  What a reader can miss is only what
compaction dropped before it read it: an older record of a (path, family) whose newer
record it does get, and records past the retention limits above.
"""
from __future__ import annotations

import enum
import errno
import fcntl
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import msgpack

from gitsieve.common.config.runtime import give_to_directory_owner

log = logging.getLogger(__name__)

PID_BITS = 22  # pid_max is at most 2**22
SEGMENT_SUFFIX = ".seg"
LIVE_PREFIX = "w-"
CLOSED_PREFIX = "d-"
MERGED_PREFIX = "m-"
LOCK_NAME = ".merge.lock"
AGENT_SUBDIR = "agent"  # the journal is <runtime dir>/agent

# The timing contract (see the module doc).  The wrapper checks its pending write-opens
# every HOLD_CHECK_INTERVAL; one found closed later than LATE_CHECK after its record gets
# a CLOSED record (so a busy wrapper never leaves a write window unbounded).
HOLD_CHECK_INTERVAL = 0.05
LATE_CHECK = 0.2
# A file's ctime is read from the kernel's coarse clock: up to a tick behind time.time().
CTIME_SLACK = 0.05
WRITE_WINDOW = LATE_CHECK + CTIME_SLACK
# Write records kept per path besides the newest (readers only): L2 may read a file's
# version a moment before the agent's next write-open of it is recorded.
EARLIER_WRITES = 3


class Op(enum.IntEnum):
    OPEN_WRITE = 1
    CREATE = 2
    TRUNCATE = 3
    RENAME_FROM = 4
    RENAME_TO = 5
    LINK = 6
    SYMLINK = 7
    UNLINK = 8
    CHMOD = 9
    MARK = 10
    HELD = 11    # a recorded write-open is still open at the wrapper's check
    CLOSED = 12  # no recorded write-open of the path is open any more

    @property
    def family(self) -> Family:
        return _FAMILY[self]

    @property
    def describe(self) -> str:
        return _DESCRIPTION[self]


class Family(enum.IntEnum):
    """What a record says happened to its path (an IntEnum: hashed in C on the hot path)."""

    WRITE = 1
    REMOVAL = 2
    MARK = 3
    HOLD = 4

    @property
    def describe(self) -> str:
        return _FAMILY_DESCRIPTION[self]


_FAMILY_DESCRIPTION = {Family.WRITE: "the content, mode or name arrived",
                       Family.REMOVAL: "the name went away",
                       Family.MARK: "declared the system's by mark",
                       Family.HOLD: "open for writing, or closed again"}


_FAMILY = {op: Family.WRITE for op in Op}
_FAMILY.update({Op.RENAME_FROM: Family.REMOVAL, Op.UNLINK: Family.REMOVAL,
                Op.MARK: Family.MARK, Op.HELD: Family.HOLD, Op.CLOSED: Family.HOLD})
# the calls whose record opens an fd that may write later (checked for holding)
OPENS = frozenset({Op.OPEN_WRITE, Op.CREATE, Op.TRUNCATE})
_DESCRIPTION = {
    Op.OPEN_WRITE: "opened for writing", Op.CREATE: "created (opened with O_CREAT)",
    Op.TRUNCATE: "truncated", Op.RENAME_FROM: "renamed away", Op.RENAME_TO: "renamed into place",
    Op.LINK: "linked into place", Op.SYMLINK: "symlink created", Op.UNLINK: "removed",
    Op.CHMOD: "mode changed", Op.MARK: "marked as the system's",
    Op.HELD: "held open for writing", Op.CLOSED: "closed after writing",
}


@dataclass(frozen=True, slots=True)
class Record:
    op: Op
    path: str
    pid: int
    wall: float
    mono: float
    writer: int
    seq: int
    digest: str | None = None  # hex git blob id, MARK only (None: the path was absent)

    @property
    def family(self) -> Family:
        return _FAMILY[self.op]


@dataclass(frozen=True)
class RetentionPolicy:
    segment_bytes: int = 4 << 20
    removal_retention: float = 24 * 3600.0
    max_removals: int = 100_000
    max_age: float = 30 * 24 * 3600.0
    dead_segments_before_merge: int = 32


class DeadMerge(enum.Enum):
    """When a writer merges dead writers' segments."""

    AT_START = "at start and at every compaction"  # long-lived writers: the wrapper
    WHEN_MANY = "once more than dead_segments_before_merge accumulate"  # mark


class JournalWriteError(OSError):
    """A batch could not be appended (the segment was cut back to its last whole record)."""


# ----- identities ----------------------------------------------------------------------------
def process_start_ticks(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            text = stat.read()
    except OSError:
        return None
    # field 22 (starttime); the fields after the command name's closing parenthesis
    # start at field 3
    return int(text[text.rindex(b")") + 2:].split()[19])


def owner_identity(pid: int) -> int:
    """A process named so that its reuse of the pid is told apart: start ticks and pid."""
    start = process_start_ticks(pid)
    if start is None:
        raise ProcessLookupError(pid)
    return (start << PID_BITS) | pid


def owner_alive(owner: int) -> bool:
    pid = owner & ((1 << PID_BITS) - 1)
    return process_start_ticks(pid) == owner >> PID_BITS


def _owner_of(name: str) -> int | None:
    """The owning process in a segment's (or a temporary segment's) file name."""
    base = name[1:-4] if name.startswith(".") and name.endswith(".tmp") else name
    parts = base.split("-")
    if len(parts) != 4:
        return None
    try:
        return int(parts[1], 16)
    except ValueError:
        return None


def ensure_directory(directory: Path) -> Path:
    """The journal directory, made private (its parent, gitsieve's runtime directory, is
    prepared by the caller)."""
    directory = Path(directory)
    directory.mkdir(mode=0o700, exist_ok=True)
    if directory.stat().st_mode & 0o077:
        os.chmod(directory, 0o700)
    return directory


# ----- encoding ------------------------------------------------------------------------------
def _decode(item: object) -> Record | None:
    if not isinstance(item, list) or len(item) != 8:
        return None
    op, path, pid, wall, mono, writer, seq, digest = item
    try:
        return Record(Op(op), os.fsdecode(path), pid, wall, mono, writer, seq,
                      digest.hex() if digest else None)
    except (ValueError, TypeError, AttributeError):
        return None


def _raw(record: Record) -> list:
    return [int(record.op), os.fsencode(record.path), record.pid, record.wall, record.mono,
            record.writer, record.seq, bytes.fromhex(record.digest) if record.digest else None]


def read_segment(path: Path) -> list[Record]:
    """Every whole record of a segment file (a torn tail is left out)."""
    with open(path, "rb") as segment:
        data = segment.read()
    records, _ = _unpack(data, path.name)
    return records


def _unpack(data: bytes, name: str) -> tuple[list[Record], int]:
    """The whole records in ``data`` and how many bytes they span."""
    unpacker = msgpack.Unpacker(raw=False, use_list=True, strict_map_key=False)
    unpacker.feed(data)
    records: list[Record] = []
    consumed = 0
    while True:
        try:
            item = unpacker.unpack()
        except msgpack.OutOfData:
            break
        except (msgpack.UnpackException, ValueError) as exc:
            log.error("journal segment %s: unreadable after byte %d (%s); the rest is skipped",
                      name, consumed, exc)
            consumed = len(data)
            break
        consumed = unpacker.tell()
        record = _decode(item)
        if record is None:
            log.error("journal segment %s: malformed record before byte %d skipped",
                      name, consumed)
            continue
        records.append(record)
    return records, consumed


# ----- retention -----------------------------------------------------------------------------
def newest_per_key(records: Iterable[Record]) -> dict[tuple[str, Family], Record]:
    newest: dict[tuple[str, Family], Record] = {}
    for record in records:
        key = (record.path, record.family)
        held = newest.get(key)
        if held is None or (record.wall, record.writer, record.seq) > (held.wall, held.writer,
                                                                       held.seq):
            newest[key] = record
    return newest


def retain(newest: dict[tuple[str, Family], Record], now: float,
           policy: RetentionPolicy) -> list[Record]:
    """What compaction keeps of the newest records per (path, family), sorted by writer and
    seq (so a reader's per-writer skip works on a merged segment read in order)."""
    removal_at = {path: record.wall for (path, family), record in newest.items()
                  if family is Family.REMOVAL}
    kept: list[Record] = []
    removals: list[Record] = []
    for (path, family), record in newest.items():
        if record.wall < now - policy.max_age:
            continue
        if family is Family.REMOVAL:
            if record.wall >= now - policy.removal_retention:
                removals.append(record)
        elif record.wall >= removal_at.get(path, float("-inf")):
            kept.append(record)
    removals.sort(key=lambda record: record.wall, reverse=True)
    kept.extend(removals[:policy.max_removals])
    kept.sort(key=lambda record: (record.writer, record.seq))
    return kept


def _write_segment(directory: Path, name: str, records: Sequence[Record]) -> int:
    """Write a whole segment under a temporary name, then rename it into place: its size."""
    data = b"".join(msgpack.packb(_raw(record), use_bin_type=True) for record in records)
    temporary = directory / f".{name}.tmp"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        give_to_directory_owner(fd, directory)
        _write_all(fd, data)
    finally:
        os.close(fd)
    os.rename(temporary, directory / name)
    return len(data)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


# ----- the writer ----------------------------------------------------------------------------
class JournalWriter:
    """One process's segment.  Not thread-safe; one writer per process."""

    def __init__(self, directory: str | os.PathLike, *,
                 policy: RetentionPolicy = RetentionPolicy(),
                 dead_merge: DeadMerge = DeadMerge.AT_START):
        self.directory = ensure_directory(Path(directory))
        self.policy = policy
        self.dead_merge = dead_merge
        self.owner = owner_identity(os.getpid())
        self.writer = int.from_bytes(os.urandom(8), "little") >> 1
        self.seq = 0
        self.generation = 0
        self.merges = 0
        self.failures = 0
        self._pack = msgpack.Packer(use_bin_type=True).pack
        self._newest: dict[tuple[bytes, Family], tuple] = {}
        self._fd = self._open_segment(self._segment_name(0))
        self._size = 0
        self._compact_above = policy.segment_bytes
        self._merge_dead(force=dead_merge is DeadMerge.AT_START)

    def _segment_name(self, generation: int) -> str:
        return f"{LIVE_PREFIX}{self.owner:x}-{self.writer:x}-{generation}{SEGMENT_SUFFIX}"

    @property
    def segment_path(self) -> Path:
        return self.directory / self._segment_name(self.generation)

    def _open_segment(self, name: str) -> int:
        fd = os.open(self.directory / name,
                     os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        give_to_directory_owner(fd, self.directory)
        return fd

    def append(self, entries: Sequence[tuple[Op, bytes, int]],
               digests: Sequence[bytes | None] | None = None) -> None:
        """Append ``(op, workspace-relative path bytes, pid)`` entries with one write.

        Raises JournalWriteError when the write fails.  The segment is then cut back to
        its last whole record and closed, and later appends go to a new generation: a
        reader that already read whole records of the failed batch has an offset past the
        cut, which a file that never grows again cannot misalign.
        """
        wall, mono = time.time(), time.monotonic()
        pack, newest, writer, seq = self._pack, self._newest, self.writer, self.seq
        chunks = []
        for index, (op, path, pid) in enumerate(entries):
            seq += 1
            raw = (op, path, pid, wall, mono, writer, seq,
                   digests[index] if digests is not None else None)
            chunks.append(pack(raw))
            newest[(path, _FAMILY[op])] = raw
        self.seq = seq
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        try:
            if os.write(self._fd, data) != len(data):  # short only when the disk fills
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        except OSError as exc:
            self.failures += 1
            self._retire_after_failure()
            raise JournalWriteError(exc.errno, f"journal append failed: {exc.strerror}") from exc
        self._size += len(data)
        if self._size > self._compact_above:
            self.compact()

    def _retire_after_failure(self) -> None:
        try:
            os.ftruncate(self._fd, self._size)
            fd = self._open_segment(self._segment_name(self.generation + 1))
            self._close_segment()
        except OSError as exc:
            log.error("journal: cannot close %s after a failed append: %s",
                      self.segment_path, exc)
            return
        self._fd = fd
        self.generation += 1
        self._size = 0

    def _close_segment(self) -> None:
        """Close the current segment and rename it ``d-``: its data is for merging now."""
        os.close(self._fd)
        self._fd = -1
        current = self.segment_path
        os.rename(current, current.with_name(CLOSED_PREFIX + current.name[len(LIVE_PREFIX):]))

    def compact(self) -> None:
        """Rewrite this writer's records as a new generation holding what retention keeps."""
        records = retain({(os.fsdecode(path), family): _decode(list(raw))
                          for (path, family), raw in self._newest.items()},
                         time.time(), self.policy)
        old = self.segment_path
        self.generation += 1
        size = _write_segment(self.directory, self._segment_name(self.generation), records)
        os.close(self._fd)
        self._fd = self._open_segment(self._segment_name(self.generation))
        os.unlink(old)
        self._newest = {(os.fsencode(r.path), r.family): tuple(_raw(r)) for r in records}
        self._size = size
        self._compact_above = max(self.policy.segment_bytes, 2 * size)
        log.debug("journal: compacted %s to %d records (%d bytes)", old.name, len(records), size)
        self._merge_dead(force=self.dead_merge is DeadMerge.AT_START)

    def _merge_dead(self, force: bool) -> None:
        try:
            merge_dead_segments(self.directory, f"{self.owner:x}-{self.writer:x}",
                                self.merges, self.policy, force=force)
        except OSError as exc:  # merging is housekeeping: recording goes on without it
            log.error("journal: merging dead segments in %s failed: %s", self.directory, exc)
        self.merges += 1

    def close(self) -> None:
        if self._fd >= 0:
            self._close_segment()


def merge_dead_segments(directory: Path, merger: str, serial: int, policy: RetentionPolicy,
                        *, force: bool) -> Path | None:
    """Merge the segments of writers no longer alive (and earlier merged segments) into one
    merged segment: the new segment's path, or None when nothing was merged.

    Skipped without waiting when another process holds the merge lock.  Without ``force``
    only once more than ``policy.dead_segments_before_merge`` dead segments exist.
    """
    lock_fd = os.open(directory / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        give_to_directory_owner(lock_fd, directory)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return None
        dead, stale_temporaries = _dead_files(directory)
        for name in stale_temporaries:
            _unlink_quietly(directory / name)
        if not dead or (len(dead) == 1 and dead[0].startswith(MERGED_PREFIX)):
            return None  # nothing, or one merged segment alone: nothing to gain
        if not force and len(dead) <= policy.dead_segments_before_merge:
            return None
        records: list[Record] = []
        read: list[str] = []
        for name in dead:
            try:
                records.extend(read_segment(directory / name))
            except FileNotFoundError:
                continue  # merged by another process meanwhile: its output holds it
            read.append(name)
        kept = retain(newest_per_key(records), time.time(), policy)
        target = None
        if kept:
            target = directory / f"{MERGED_PREFIX}{merger}-{serial}{SEGMENT_SUFFIX}"
            _write_segment(directory, target.name, kept)
        for name in read:
            _unlink_quietly(directory / name)
        log.debug("journal: merged %d dead segments into %s (%d records)", len(read),
                  target, len(kept))
        return target
    finally:
        os.close(lock_fd)


def _dead_files(directory: Path) -> tuple[list[str], list[str]]:
    """Segments whose data no live writer appends to (merged, closed, or a dead process's),
    and temporary files left by dead processes."""
    dead, temporaries = [], []
    alive: dict[int, bool] = {}
    for name in sorted(os.listdir(directory)):
        owner = _owner_of(name)
        if owner is None:
            continue
        if owner not in alive:
            alive[owner] = owner_alive(owner)
        if name.endswith(".tmp"):
            if not alive[owner]:
                temporaries.append(name)
        elif name.endswith(SEGMENT_SUFFIX):
            if not name.startswith(LIVE_PREFIX) or not alive[owner]:
                dead.append(name)
    return dead, temporaries


def _unlink_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        log.debug("journal: %s already removed by another process", path.name)


# ----- readers -------------------------------------------------------------------------------
# A directory listing is trusted unchanged only once its mtime is older than this when it
# was listed: the mtime comes from a coarse clock, so two changes within one tick share it.
_RACY_LISTING = 0.1


@dataclass
class _Segment:
    fd: int
    inode: int
    offset: int


class JournalReader:
    """Reads what writers appended since the last call, across rotation and merging.

    Cheap when nothing changed: one ``stat`` of the directory (listed again only when it
    changed) and one ``fstat`` per segment, whose file descriptors stay open.
    """

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)
        self._segments: dict[str, _Segment] = {}
        self._delivered: dict[int, int] = {}  # writer -> highest seq delivered
        self._listing: tuple[int, int] | None = None  # (inode, mtime_ns) when listed
        self._listed_at = 0.0
        self._live_owners: dict[int, int] = {}  # writer id -> owner, live-named segments
        self.listings = 0

    def read_new(self) -> list[Record]:
        """Records not delivered before, ordered by wall time."""
        try:
            info = os.stat(self.directory)
        except FileNotFoundError:
            self.close()
            return []
        listing = (info.st_ino, info.st_mtime_ns)
        if listing != self._listing or self._listed_at - info.st_mtime < _RACY_LISTING:
            self._listing, self._listed_at = listing, time.time()
            self._relist()
        out: list[Record] = []
        for name, segment in list(self._segments.items()):
            out.extend(self._read_segment(name, segment))
        out.sort(key=lambda record: (record.wall, record.writer, record.seq))
        return out

    def _relist(self) -> None:
        self.listings += 1
        try:
            names = {name for name in os.listdir(self.directory)
                     if name.endswith(SEGMENT_SUFFIX) and not name.startswith(".")}
        except FileNotFoundError:
            names = set()
        by_inode = {segment.inode: segment for segment in self._segments.values()}
        kept: dict[str, _Segment] = {}
        for name in sorted(names):
            segment = self._segments.get(name)
            if segment is None:
                segment = self._open(name, by_inode)
                if segment is None:
                    continue  # gone between the listing and the open
            kept[name] = segment
        for name, segment in self._segments.items():
            if kept.get(name) is not segment and segment not in kept.values():
                os.close(segment.fd)
        self._segments = kept
        self._live_owners = {}
        for name in names:
            if name.startswith(LIVE_PREFIX):
                parts = name[len(LIVE_PREFIX):-len(SEGMENT_SUFFIX)].split("-")
                if len(parts) == 3:
                    self._live_owners[int(parts[1], 16)] = int(parts[0], 16)

    def _open(self, name: str, by_inode: dict[int, _Segment]) -> _Segment | None:
        try:
            fd = os.open(self.directory / name, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        inode = os.fstat(fd).st_ino
        renamed = by_inode.get(inode)  # a live segment closed (renamed w- to d-)
        if renamed is not None:
            os.close(fd)
            return renamed
        return _Segment(fd, inode, 0)

    def _read_segment(self, name: str, segment: _Segment) -> Iterator[Record]:
        size = os.fstat(segment.fd).st_size
        if size <= segment.offset:
            return
        data = os.pread(segment.fd, size - segment.offset, segment.offset)
        records, consumed = _unpack(data, name)
        segment.offset += consumed
        for record in records:
            if record.seq > self._delivered.get(record.writer, 0):
                self._delivered[record.writer] = record.seq
                yield record

    def writer_alive(self, writer: int) -> bool:
        """Whether ``writer`` still appends: its segment has the live name and its owning
        process is the one that made it."""
        owner = self._live_owners.get(writer)
        return owner is not None and owner_alive(owner)

    def live_owner_pids(self) -> set[int]:
        """The pids of processes appending now (wrappers, and a mark being written)."""
        return {owner & ((1 << PID_BITS) - 1) for owner in set(self._live_owners.values())
                if owner_alive(owner)}

    def close(self) -> None:
        for segment in self._segments.values():
            os.close(segment.fd)
        self._segments = {}
        self._listing = None


class AgentTouches:
    """The newest journal record per (path, family), and a path's few write records before
    its newest, bounded like the journal: a path's records older than its newest REMOVAL
    are dropped, removals expire after the policy's retention (the newest ``max_removals``
    are kept), everything after ``max_age``."""

    def __init__(self, policy: RetentionPolicy = RetentionPolicy()) -> None:
        self.policy = policy
        self._newest: dict[tuple[str, Family], Record] = {}
        # Earlier write records per path, oldest first: a version read just before the
        # agent's next write-open was recorded is still judged by its own record.
        self._earlier_writes: dict[str, tuple[Record, ...]] = {}
        self._removals = 0

    def add(self, records: Iterable[Record]) -> None:
        newest = self._newest
        for record in records:
            family = record.family
            key = (record.path, family)
            held = newest.get(key)
            if held is not None and record.wall < held.wall:
                if family is Family.WRITE:
                    self._keep_earlier(record)
                continue
            if held is None and family is Family.REMOVAL:
                self._removals += 1
            if held is not None and family is Family.WRITE:
                self._keep_earlier(held)
            newest[key] = record
            if family is Family.REMOVAL:
                self._earlier_writes.pop(record.path, None)
                for other in (Family.WRITE, Family.MARK, Family.HOLD):
                    earlier = newest.get((record.path, other))
                    if earlier is not None and earlier.wall < record.wall:
                        del newest[(record.path, other)]
        if self._removals > self.policy.max_removals:
            self.expire(time.time())

    def _keep_earlier(self, record: Record) -> None:
        kept = sorted(self._earlier_writes.get(record.path, ()) + (record,),
                      key=lambda item: item.wall)
        self._earlier_writes[record.path] = tuple(kept[-EARLIER_WRITES:])

    def newest(self, path: str, family: Family) -> Record | None:
        return self._newest.get((path, family))

    def writes(self, path: str) -> list[Record]:
        """``path``'s write records kept, newest first."""
        newest = self._newest.get((path, Family.WRITE))
        if newest is None:
            return []
        return [newest, *reversed(self._earlier_writes.get(path, ()))]

    def moved_with(self, path: str, family: Family) -> Record | None:
        """The newest rename of a directory above ``path`` (into place for WRITE, away
        for REMOVAL): the file moved with it."""
        moved = Op.RENAME_TO if family is Family.WRITE else Op.RENAME_FROM
        found = None
        parent = path
        while "/" in parent:
            parent = parent.rsplit("/", 1)[0]
            record = self._newest.get((parent, family))
            if record is not None and record.op is moved and (
                    found is None or record.wall > found.wall):
                found = record
        return found

    def expire(self, now: float) -> int:
        """Apply the retention limits; how many records were dropped."""
        policy = self.policy
        removals = sorted((record.wall, key) for key, record in self._newest.items()
                          if key[1] is Family.REMOVAL)
        stale = {key for wall, key in removals if wall < now - policy.removal_retention}
        surplus = len(removals) - len(stale) - policy.max_removals
        if surplus > 0:
            stale.update(key for _, key in [item for item in removals
                                            if item[1] not in stale][:surplus])
        stale.update(key for key, record in self._newest.items()
                     if record.wall < now - policy.max_age)
        for key in stale:
            del self._newest[key]
            if key[1] is Family.WRITE:
                self._earlier_writes.pop(key[0], None)
        self._removals = sum(1 for key in self._newest if key[1] is Family.REMOVAL)
        return len(stale)

    def __len__(self) -> int:
        return len(self._newest)
