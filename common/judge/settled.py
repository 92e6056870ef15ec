"""The settled versions: each version of a path that L2 judged an autonomous process's (or
gitsieve's own) write, kept so that a reconcile does not send it again.  Judged later, its
writes are out of the exact techniques' lookback and the sampler's sight, and the same
version would come back UNKNOWN, then be committed as a new file.

They outlive a run, a crash included: a restart's reconcile must not commit an agent's
untracked files.  Two files in the runtime directory keep them:

- a snapshot of the whole table, written atomically every ``SNAPSHOT_EVERY`` s while the
  table changes, and at a clean stop;
- a journal of the versions settled since that snapshot, appended every ``JOURNAL_EVERY``
  s, so a kill -9 loses at most that much.  It is emptied once a snapshot holds its entries.

Loading reads the snapshot, then replays the journal up to its first unreadable entry (the
last append may be torn).  Whatever is unreadable is ignored: those paths are judged again,
as if nothing had been saved.  A version is compared again before it counts
(:meth:`SettledVersions.holds`), so an entry outdated by a later write is harmless.
"""
from __future__ import annotations

import logging
import os
from collections import OrderedDict
from pathlib import Path
from typing import Callable

import msgpack

from gitsieve.common.config.runtime import give_to_directory_owner, write_atomic
from gitsieve.common.protocol import messages

log = logging.getLogger(__name__)

# Past the cap the least recently settled go (their paths are judged again).
MAX_SETTLED = 50_000
SNAPSHOT_FILE = "settled-versions.msgpack"
JOURNAL_FILE = "settled-versions.journal"
SNAPSHOT_EVERY = 30.0  # seconds
JOURNAL_EVERY = 1.0  # seconds
# Read no more than this of either file (a full table is about 3 MB).
FILE_MAX = 16 * 1024 * 1024


def _unpacker(limit: int) -> msgpack.Unpacker:
    return msgpack.Unpacker(raw=False, strict_map_key=True, unicode_errors="surrogateescape",
                            max_buffer_size=FILE_MAX, max_map_len=limit,
                            max_array_len=2, max_str_len=messages.PATH_MAX, max_bin_len=0,
                            max_ext_len=0)


def _is_entry(path, version) -> bool:
    return isinstance(path, str) and isinstance(version, int) and not isinstance(version, bool)


class SettledVersions:
    """path -> settled version (LRU, at most ``cap``), persisted in ``directory``."""

    def __init__(self, directory: Path, cap: int = MAX_SETTLED):
        self.snapshot_path = directory / SNAPSHOT_FILE
        self.journal_path = directory / JOURNAL_FILE
        self.cap = cap
        self.versions: OrderedDict[str, int] = OrderedDict()
        self.unjournaled: list[tuple[str, int]] = []
        self.changed_since_snapshot = False
        self.next_journal = 0.0
        self.next_snapshot = 0.0

    def __len__(self) -> int:
        return len(self.versions)

    def get(self, path: str) -> int | None:
        return self.versions.get(path)

    def settle(self, path: str, version: int) -> None:
        self.versions[path] = version
        self.versions.move_to_end(path)
        self.unjournaled.append((path, version))
        self.changed_since_snapshot = True
        while len(self.versions) > self.cap:
            self.versions.popitem(last=False)

    def forget(self, path: str) -> None:
        """A newer change of ``path``: its next decision settles it again (the saved entry,
        if any, no longer matches the file's version, so it is left as it is)."""
        self.versions.pop(path, None)

    def holds(self, path: str, version: int | None) -> bool:
        """Whether ``version`` (the file's now) is the settled one; a stale entry goes."""
        settled = self.versions.get(path)
        if settled is None:
            return False
        if settled == version:
            return True
        del self.versions[path]
        return False

    # ----- persistence ---------------------------------------------------------------
    def load(self, excluded: Callable[[str], bool]) -> int:
        """The versions an earlier run kept (snapshot, then journal); the count loaded."""
        snapshot = self._read(self.snapshot_path)
        if snapshot:
            unpacker = _unpacker(self.cap)
            unpacker.feed(snapshot)
            try:
                saved = unpacker.unpack()
            except (ValueError, msgpack.UnpackException) as exc:
                log.warning("%s not used: %s", self.snapshot_path, exc)
                saved = {}
            if not isinstance(saved, dict):
                log.warning("%s not used: not a map", self.snapshot_path)
                saved = {}
            for path, version in saved.items():
                if _is_entry(path, version) and not excluded(path):
                    self.versions[path] = version
        journal = self._read(self.journal_path)
        if journal:
            unpacker = _unpacker(2)
            unpacker.feed(journal)
            try:
                for entry in unpacker:
                    if isinstance(entry, list) and len(entry) == 2 and _is_entry(*entry) \
                            and not excluded(entry[0]):
                        self.versions[entry[0]] = entry[1]
                        self.versions.move_to_end(entry[0])
            except (ValueError, msgpack.UnpackException) as exc:
                # a torn last append: what came before it stands
                log.debug("%s: replay stopped: %s", self.journal_path, exc)
        while len(self.versions) > self.cap:
            self.versions.popitem(last=False)
        return len(self.versions)

    @staticmethod
    def _read(path: Path) -> bytes:
        try:
            with open(path, "rb") as handle:
                data = handle.read(FILE_MAX + 1)
        except FileNotFoundError:
            return b""
        except OSError as exc:
            log.warning("%s not used: %s", path, exc)
            return b""
        if len(data) > FILE_MAX:
            log.warning("%s not used: larger than %d bytes", path, FILE_MAX)
            return b""
        return data

    def save_due(self, now: float) -> None:
        """Append the journal and write the snapshot when they are due (``now``:
        time.monotonic()).  OSError is raised; the next due time retries."""
        if self.changed_since_snapshot and now >= self.next_snapshot:
            self.next_snapshot = now + SNAPSHOT_EVERY
            self.next_journal = now + JOURNAL_EVERY
            self.save()
        elif self.unjournaled and now >= self.next_journal:
            self.next_journal = now + JOURNAL_EVERY
            self._append_journal()

    def wakeup_in(self, now: float) -> float | None:
        if self.unjournaled:
            return max(0.0, self.next_journal - now)
        return None

    def save(self) -> None:
        """The whole table as the snapshot, then an empty journal."""
        write_atomic(self.snapshot_path, msgpack.packb(dict(self.versions), use_bin_type=True,
                                                       unicode_errors="surrogateescape"))
        self.unjournaled.clear()
        self.changed_since_snapshot = False
        # Only now: until the snapshot is in place, the journal holds these entries.
        try:
            os.truncate(self.journal_path, 0)
        except FileNotFoundError:
            pass  # nothing was journaled since the last snapshot

    def _append_journal(self) -> None:
        data = b"".join(msgpack.packb(list(entry), use_bin_type=True,
                                      unicode_errors="surrogateescape")
                        for entry in self.unjournaled)
        fd = os.open(self.journal_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                     0o600)
        try:
            give_to_directory_owner(fd, self.journal_path.parent)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
        self.unjournaled.clear()
