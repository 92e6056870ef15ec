"""What a watched workspace reports: writes and name operations with the writer's lineage,
and the times and paths whose writes may have been missed.

One vocabulary for both sources: L2's own :class:`.marks.WorkspaceWatch` (root) produces
these, and ``gitsieve helper`` sends the same dataclasses over its socket
(:mod:`gitsieve.common.helper.protocol` frames them), so :class:`.recorder.WriteRecorder`
records either the same way.  Paths are bytes relative to the workspace's top directory (any
file name survives); times are the reader's ``time.time()`` (``wall``) and
``time.monotonic()`` (``mono``) when the event was read.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Iterable

# A lineage carries at most this many processes, each command line and cgroup cut to these.
MAX_LINEAGE = 64
MAX_CMDLINE = 8 * 1024
MAX_CGROUP = 1024


class Op(enum.IntEnum):
    """What a process did to a path (fanotify's event, named)."""

    WRITE = 1
    CLOSE_WRITE = 2
    CREATE = 3
    DELETE = 4
    MOVED_FROM = 5
    MOVED_TO = 6


# A path's name operations that end its file there, and those that put a file there.
REMOVALS = frozenset({Op.DELETE, Op.MOVED_FROM})
ARRIVALS = frozenset({Op.CREATE, Op.MOVED_TO})


class OverflowSource(enum.IntEnum):
    FANOTIFY = 1       # the kernel dropped events of the workspace's groups
    LINEAGE = 2        # the proc connector dropped process events: lineages may be short
    CLIENT_BUFFER = 3  # a helper client read too slowly: the helper dropped its events


@dataclass(frozen=True)
class LineageEntry:
    """One process of a writer's lineage, nearest first, as known when the event was read.
    The field names are :class:`.lineage.ProcInfo`'s, so :class:`.exact.WriterRules`
    classifies a lineage of these as it does a chain of ProcInfo."""

    pid: int
    ppid: int
    cmdline: str
    uid: int
    cgroup: str
    gitsieve_mark: bool
    exec_lost: bool
    inherited: bool


def lineage_entries(chain: Iterable) -> tuple[LineageEntry, ...]:
    """A :meth:`.lineage.LineageTracker.chain` as entries, within the limits above."""
    entries = []
    for info in chain:
        if len(entries) == MAX_LINEAGE:
            break
        entries.append(LineageEntry(info.pid, info.ppid, info.cmdline[:MAX_CMDLINE], info.uid,
                                    info.cgroup[:MAX_CGROUP], info.gitsieve_mark,
                                    info.exec_lost, info.inherited))
    return tuple(entries)


@dataclass(frozen=True)
class Write:
    workspace: int
    path: bytes
    op: Op  # WRITE or CLOSE_WRITE
    pid: int
    wall: float
    mono: float
    identity: bytes  # FileIdentity.encode() of the file written (.file_identity)
    lineage: tuple[LineageEntry, ...]


@dataclass(frozen=True)
class NameOp:
    workspace: int
    path: bytes
    op: Op  # CREATE, DELETE, MOVED_FROM or MOVED_TO
    pid: int
    wall: float
    mono: float
    is_dir: bool
    lineage: tuple[LineageEntry, ...]


@dataclass(frozen=True)
class Overflow:
    """Writes between ``since`` and ``until`` may be missing: changes then are UNKNOWN.
    ``workspace`` 0: every workspace of the reader."""

    workspace: int
    source: OverflowSource
    since_wall: float
    since_mono: float
    until_wall: float
    until_mono: float
    dropped: int  # events dropped, where known (CLIENT_BUFFER), else 0


@dataclass(frozen=True)
class Unmarked:
    """A file found in a directory marked only after it appeared (a new directory, or one
    moved in): its writes before the mark were not seen, so they are UNKNOWN."""

    workspace: int
    path: bytes
    wall: float
    mono: float
