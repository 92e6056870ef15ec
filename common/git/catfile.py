"""HEAD's entries and blobs, read in bulk through one persistent ``git cat-file --batch``.

:class:`CatFileBatch` answers object requests over the child's pipes, pipelined: a list of
requests is written while the answers are read, so a thousand objects cost one exchange,
never a process (or a round trip) each.  :class:`TreeWalker` finds the entries (mode,
object id) of paths by reading tree objects by id: trees are immutable, so they are cached
by id across commits, and a path's name never travels in a request (a name with a newline,
or one that is not UTF-8, is looked up like any other).  :class:`HeadVersions` puts HEAD in
front of both: its entries and blobs, with a per-path cache dropped whenever HEAD moves
(:func:`gitsieve.common.git.head.head_token`): system churn hits the same few paths over and
over, and the executor's commit-time re-check asks for the paths the content layer just
read.
"""
from __future__ import annotations

import logging
import os
import select
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from gitsieve.common.git.gateway import LONG_LIVED_IDLE, Git, GitChild, KeptChild
from gitsieve.common.git.head import head_token

log = logging.getLogger(__name__)

# A cat-file answer taking longer than this (no byte at all) means git is stuck: kill it,
# start again.
CAT_FILE_TIMEOUT = 10.0
# HEAD versions kept between changes (system churn hits the same few paths over and over).
CACHE_MAX_ENTRIES = 2048
CACHE_MAX_BYTES = 64 * 1024 * 1024
# Tree entries kept (about 170 bytes each: 17 MB at the cap): the directories recently
# looked into.  All cached versions and trees are let go after a rest (LONG_LIVED_IDLE).
TREE_CACHE_ENTRIES = 100_000
_PIPE_CHUNK = 4096  # PIPE_BUF: a write of this size never blocks once select says writable
_READ_CHUNK = 256 * 1024

MODE_TREE, MODE_GITLINK, MODE_SYMLINK = 0o040000, 0o160000, 0o120000
MODE_FILE, MODE_EXECUTABLE = 0o100644, 0o100755


class HeadReadError(Exception):
    """The cat-file child failed to answer, even after a restart."""


@dataclass(frozen=True)
class Entry:
    """A tree entry: its mode (``MODE_*``) and object id."""

    mode: int
    oid: str

    @property
    def is_tree(self) -> bool:
        return self.mode == MODE_TREE

    @property
    def is_gitlink(self) -> bool:
        return self.mode == MODE_GITLINK

    @property
    def is_blob(self) -> bool:
        return not self.is_tree and not self.is_gitlink


@dataclass(frozen=True)
class HeadBlob:
    """A committed version of a path.  ``data`` is None when the blob exceeds the size cap
    (compare by ``oid`` then)."""

    oid: str
    size: int
    data: bytes | None
    mode: int = MODE_FILE


@dataclass(frozen=True)
class GitObject:
    oid: str
    kind: str
    size: int
    data: bytes | None  # None: not kept (see CatFileBatch.objects)


class CatFileBatch(KeptChild):
    """A persistent ``git cat-file --batch`` child answering object requests (ended after a
    rest by ``close_if_idle``)."""

    def __init__(self, git: Git, size_cap: int, timeout: float = CAT_FILE_TIMEOUT):
        self.git, self.size_cap, self.timeout = git, size_cap, timeout
        self.child: GitChild | None = None
        self.starts = 0
        self.requests = 0
        self._buffer = bytearray()

    def _running(self) -> GitChild:
        self.used = time.monotonic()
        if self.child is None or not self.child.alive():
            self.close()
            self.child = self.git.spawn("cat-file", "--batch")
            self._buffer.clear()
            self.starts += 1
        return self.child

    def close(self) -> None:
        if self.child is not None:
            self.child.close()
            self.child = None

    def objects(self, names: Iterable[bytes],
                keep: Callable[[str, int], bool] | None = None) -> list[GitObject | None]:
        """Each named object (``oid``, ``rev``, ``rev:path`` without a newline), None where
        git has none.  An object's bytes are kept when ``keep(kind, size)`` says so (by
        default: blobs within the size cap, and every tree and commit); the others are read
        past without being stored, so a large blob costs no memory."""
        names = list(names)
        if not names:
            return []
        keep = keep or self._default_keep
        try:
            return self._exchange(names, keep)
        except (HeadReadError, OSError) as exc:
            # A dead or stuck child: restart it once before giving up on this request.
            self.close()
            try:
                return self._exchange(names, keep)
            except (HeadReadError, OSError) as again:
                self.close()
                raise HeadReadError(f"{exc}; after restart: {again}") from None

    def _default_keep(self, kind: str, size: int) -> bool:
        return kind != "blob" or size <= self.size_cap

    def _exchange(self, names: list[bytes], keep) -> list[GitObject | None]:
        child = self._running()
        self._buffer.clear()
        pending = bytearray(b"".join(name + b"\n" for name in names))
        self.requests += len(names)
        answers: list[GitObject | None] = []
        partial: list | None = None  # [oid, kind, size, kept bytes or None, bytes left]
        deadline = time.monotonic() + self.timeout
        while len(answers) < len(names):
            writers = [child.stdin] if pending else []
            readable, writable, _ = select.select([child.stdout], writers, [],
                                                  max(0.0, deadline - time.monotonic()))
            if not readable and not writable:
                raise HeadReadError(f"git cat-file gave no answer within {self.timeout}s")
            if writable:
                written = os.write(child.stdin, pending[:_PIPE_CHUNK])
                del pending[:written]
            if readable:
                chunk = os.read(child.stdout, _READ_CHUNK)
                if not chunk:
                    raise HeadReadError("git cat-file exited")
                self._buffer += chunk
                deadline = time.monotonic() + self.timeout  # progress: a large blob is fine
                partial = self._parse(answers, partial, keep)
        return answers

    def _parse(self, answers: list, partial: list | None, keep) -> list | None:
        """Move every complete answer in the buffer to ``answers``; the one still arriving
        is returned (its bytes so far consumed from the buffer)."""
        buffer = self._buffer
        while True:
            if partial is None:
                end = buffer.find(b"\n")
                if end < 0:
                    return None
                header = bytes(buffer[:end])
                del buffer[:end + 1]
                if header.endswith((b" missing", b" ambiguous")):
                    answers.append(None)
                    continue
                parts = header.split(b" ")
                if len(parts) != 3 or not parts[2].isdigit():
                    raise HeadReadError(f"unexpected cat-file header {header[:200]!r}")
                kind, size = parts[1].decode(), int(parts[2])
                partial = [parts[0].decode(), kind, size,
                           bytearray() if keep(kind, size) else None, size + 1]
            taken = min(len(buffer), partial[4])
            if taken == 0:
                return partial
            if partial[3] is not None:
                partial[3] += buffer[:taken]
            last = buffer[taken - 1]
            del buffer[:taken]
            partial[4] -= taken
            if partial[4]:
                return partial
            if last != 0x0A:  # every object's bytes are followed by a newline
                raise HeadReadError("cat-file output lost its framing")
            data = bytes(partial[3][:-1]) if partial[3] is not None else None
            answers.append(GitObject(partial[0], partial[1], partial[2], data))
            partial = None


# The modes git writes in trees, each one int object for every entry that has it.
_TREE_MODES = {b"%o" % mode: mode
               for mode in (MODE_FILE, MODE_EXECUTABLE, MODE_TREE, MODE_SYMLINK, MODE_GITLINK)}


def parse_tree(data: bytes, oid_bytes: int) -> dict[bytes, tuple[int, str]]:
    """A tree object's entries: name -> (mode, object id)."""
    entries = {}
    position, size = 0, len(data)
    while position < size:
        space = data.index(b" ", position)
        nul = data.index(b"\0", space)
        end = nul + 1 + oid_bytes
        written = data[position:space]
        mode = _TREE_MODES.get(written)
        entries[data[space + 1:nul]] = (int(written, 8) if mode is None else mode,
                                        data[nul + 1:end].hex())
        position = end
    return entries


class TreeWalker:
    """Entries of paths inside a tree, one pipelined exchange per directory level."""

    def __init__(self, batch: CatFileBatch, max_entries: int = TREE_CACHE_ENTRIES):
        self.batch = batch
        self.max_entries = max_entries
        self.trees: OrderedDict[str, dict[bytes, tuple[int, str]]] = OrderedDict()
        self.cached_entries = 0
        self._used: set[str] = set()  # trees looked into or written since HEAD last moved

    def _load(self, oids: set[str]) -> None:
        self._used |= oids
        missing = [oid for oid in oids if oid not in self.trees]
        for oid in oids - set(missing):
            self.trees.move_to_end(oid)
        if not missing:
            return
        found = self.batch.objects([oid.encode() for oid in missing])
        for oid, obj in zip(missing, found):
            if obj is None or obj.kind != "tree" or obj.data is None:
                raise HeadReadError(f"tree {oid} cannot be read")
            entries = parse_tree(obj.data, len(oid) // 2)
            self.trees[oid] = entries
            self.cached_entries += len(entries)
        self._trim(len(oids))

    def _trim(self, keep: int) -> None:
        """Forget the least recently used trees beyond the cap (never the ``keep`` most
        recent: the ones in use)."""
        while self.cached_entries > self.max_entries and len(self.trees) > keep:
            _, evicted = self.trees.popitem(last=False)
            self.cached_entries -= len(evicted)

    def forget(self) -> None:
        self.trees.clear()
        self.cached_entries = 0
        self._used = set()

    def retire(self) -> None:
        """HEAD moved: forget the trees not looked into since it last moved.  Each commit
        makes a new root, so without this a workspace's old roots would pile up to the cap;
        a tree the new HEAD shares comes back at its next lookup, if it went at all."""
        for oid in [oid for oid in self.trees if oid not in self._used]:
            self.cached_entries -= len(self.trees.pop(oid))
        self._used = set()

    def tree(self, oid: str) -> dict[bytes, tuple[int, str]]:
        """The entries of one tree object: name -> (mode, object id).  Do not modify."""
        self._load({oid})
        return self.trees[oid]

    def remember(self, oid: str, entries: dict[bytes, tuple[int, str]]) -> None:
        """A tree written here: known without asking git for it again."""
        self._used.add(oid)
        if oid not in self.trees:
            self.trees[oid] = entries
            self.cached_entries += len(entries)
            self._trim(1)

    def blobs(self, tree: str, prefix: bytes) -> list[tuple[bytes, int, str]]:
        """Every non-tree entry below ``tree``: (prefix + path, mode, object id)."""
        found, pending = [], [(tree, prefix)]
        while pending:
            self._load({oid for oid, _ in pending})
            deeper = []
            for oid, at in pending:
                for name, (mode, entry_oid) in self.trees[oid].items():
                    if mode == MODE_TREE:
                        deeper.append((entry_oid, at + name + b"/"))
                    else:
                        found.append((at + name, mode, entry_oid))
            pending = deeper
        return found

    def entries(self, tree: str, paths: Iterable[str]) -> dict[str, Entry | None]:
        """Each path's entry in ``tree`` (None: not there, or below a file or gitlink)."""
        found: dict[str, Entry | None] = {}
        pending = []
        for path in paths:
            parts = os.fsencode(path).split(b"/")
            pending.append((path, parts, 0, tree))
        while pending:
            self._load({at for _, _, _, at in pending})
            deeper = []
            for path, parts, depth, at in pending:
                entry = self.trees[at].get(parts[depth])
                if entry is None:
                    found[path] = None
                elif depth == len(parts) - 1:
                    found[path] = Entry(*entry)
                elif entry[0] == MODE_TREE:
                    deeper.append((path, parts, depth + 1, entry[1]))
                else:
                    found[path] = None
            pending = deeper
        return found


class HeadVersions:
    """HEAD's entries and blobs through one :class:`CatFileBatch`, cached until HEAD moves."""

    def __init__(self, git: Git, git_dir: Path, size_cap: int):
        self.reader = CatFileBatch(git, size_cap)
        self.walker = TreeWalker(self.reader)
        self.git_dir = git_dir
        self.cache: OrderedDict[str, HeadBlob | None] = OrderedDict()
        self.cache_bytes = 0
        self.token: tuple | None = None
        self.hits = 0
        self._head: tuple[str, str] | None = None  # (commit, tree) HEAD named at ``token``
        self.used = 0.0  # time.monotonic() of the last question

    def drop(self) -> None:
        self.cache.clear()
        self.cache_bytes = 0
        self.token = None

    def _current(self) -> None:
        self.used = time.monotonic()
        token = head_token(self.git_dir)
        if token == self.token:
            return
        self.drop()  # HEAD moved (maybe by the user's own git)
        self.walker.retire()
        commit = self.reader.objects([b"HEAD"])[0]
        if commit is None or commit.kind != "commit" or not commit.data:
            self._head = None  # an unborn branch
        else:
            tree = commit.data.split(b"\n", 1)[0]
            if not tree.startswith(b"tree "):
                raise HeadReadError(f"commit {commit.oid} has no tree line")
            self._head = (commit.oid, tree[5:].decode())
        self.token = token

    def head(self) -> tuple[str, str] | None:
        """(commit, tree) of HEAD, None on an unborn branch; HeadReadError when git cannot
        answer."""
        self._current()
        return self._head

    def entries(self, paths: Iterable[str]) -> dict[str, Entry | None]:
        """HEAD's entry of each path (None: HEAD has nothing there)."""
        self._current()
        return self._entries(paths)

    def _entries(self, paths: Iterable[str]) -> dict[str, Entry | None]:
        """:meth:`entries` at the HEAD :meth:`_current` just checked."""
        paths = list(paths)
        if self._head is None:
            return dict.fromkeys(paths)
        return self.walker.entries(self._head[1], paths)

    def get(self, path: str) -> HeadBlob | None:
        """HEAD's blob at ``path`` (None: no file there); HeadReadError when git cannot
        answer."""
        return self.get_many([path])[path]

    def get_many(self, paths: Iterable[str]) -> dict[str, HeadBlob | None]:
        """HEAD's blob of each path, read in one exchange."""
        self._current()
        found: dict[str, HeadBlob | None] = {}
        wanted = []
        for path in dict.fromkeys(paths):
            if path in self.cache:
                self.hits += 1
                self.cache.move_to_end(path)
                found[path] = self.cache[path]
            else:
                wanted.append(path)
        entries = self._entries(wanted) if wanted else {}
        blobs = [(path, entry) for path, entry in entries.items()
                 if entry is not None and entry.is_blob]
        objects = self.reader.objects([entry.oid.encode() for _, entry in blobs])
        read = {path: (entry, obj) for (path, entry), obj in zip(blobs, objects)}
        for path in wanted:
            entry, obj = read.get(path, (None, None))
            blob = None if obj is None else HeadBlob(obj.oid, obj.size, obj.data, entry.mode)
            found[path] = blob
            self._remember(path, blob)
        return found

    def _remember(self, path: str, blob: HeadBlob | None) -> None:
        self.cache[path] = blob
        self.cache_bytes += len(blob.data or b"") if blob else 0
        while len(self.cache) > CACHE_MAX_ENTRIES or self.cache_bytes > CACHE_MAX_BYTES:
            _, evicted = self.cache.popitem(last=False)
            self.cache_bytes -= len(evicted.data or b"") if evicted else 0

    def status(self) -> dict:
        return {"head_cache_entries": len(self.cache), "head_cache_hits": self.hits,
                "cat_file_starts": self.reader.starts,
                "tree_cache_entries": self.walker.cached_entries}

    def close(self) -> None:
        self.reader.close()

    def close_idle(self, now: float) -> bool:
        """After a rest of LONG_LIVED_IDLE (``now``: monotonic): end the cat-file child and
        let go of every cached version and tree, so a burst's versions do not stay resident
        for good (the next change reads HEAD again).  Whether a cache was let go."""
        if now - max(self.used, self.reader.used) < LONG_LIVED_IDLE:
            return False
        self.reader.close()
        held = bool(self.cache or self.walker.trees)
        self.drop()
        self.walker.forget()
        return held
