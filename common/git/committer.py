"""Git commit and push mechanics used by the executor.

A sync commits exactly a given set of paths without touching the user's index until the
commit stands, and at the cost of what changed, not of the tree's size: the new versions
are hashed into objects in one ``hash-object -w --stdin-paths`` (names on stdin, never on
the command line; clean filters apply as on ``git add``; many new files become one pack,
see :meth:`Committer._write_packed`), the trees along the changed
paths are composed here from HEAD's trees (read by object id through the persistent
cat-file child, see :mod:`.catfile`) and written in one ``hash-object -t tree``, the commit is
made with ``commit-tree`` (signed when ``commit.gpgSign`` asks for it; a signing that fails
holds every path, ``Hold.SIGNING_FAILED``, and commits nothing unsigned) and installed with
a compare-and-swap ``update-ref`` (a commit the user made meanwhile makes it fail, and the
sync is rebuilt on the new HEAD).  No
index holding the whole tree is read or written for it.  Only then are the committed
entries written into the user's real index (``update-index --index-info``), and only
where the user left them as HEAD had them.  Pushes are never forced.

Before staging, every path is planned (:meth:`Committer.plan`): from the work tree (one
``lstat`` per path and per directory above it), HEAD's entries (read in bulk, see
:mod:`.catfile`) and the user's index (one ``diff-index --cached``):

- a path a BLOCK rule or the editor-junk list names, or one that is not a safe
  workspace-relative path, is never committed, whatever the Batch says;
- a path below a symbolic link or below a file is gone as far as git is concerned: its
  deletion is committed (the link itself is an ordinary new path);
- a directory where HEAD has a file: that file's deletion is committed;
- a path inside a nested repository (a directory holding ``.git`` that is no submodule) is
  held (``Hold.NESTED_REPOSITORY``); a path below a submodule is the submodule's own and
  dropped, as ``git status`` never lists it;
- a submodule's gitlink is committed as the person staged it (``git submodule add``, ``git
  add``, ``git rm``), together with ``.gitmodules`` and every other gitlink staged (never
  one without the other); a commit checked out there and not staged is held
  (``Hold.SUBMODULE_NOT_STAGED``);
- a path too long to be named from ``/`` is held (``Hold.PATH_TOO_LONG``);
- a path whose index entry differs from both HEAD and the work tree (part of a change
  staged by the person, ``git add -p``; intent-to-add entries excepted) is held
  (``Hold.STAGED_BY_YOU``) until they commit or unstage it; a fully staged path is
  committed as usual;
- an ignored, untracked path is dropped; so is a ``recheck`` path whose content now differs
  from HEAD only in volatile data (the content judge, HEAD's blobs read in one exchange).

Held paths come back in :attr:`CommitResult.held_paths` with their own reason: a path git
refuses (a FIFO, a socket; a file git cannot read, found by bisection) is held alone
(``Hold.GIT_REFUSED``) and the rest is committed; so is a path an optional
``path_gate({path: size}, head) -> {path: Why}`` (before hashing: a file too large) or
``blob_gate([(path, blob id)]) -> {path: Why}`` (the exact blobs: a secret) holds.

When a push is rejected because the remote moved, the remote branch is fetched and the
local commits are replayed on it (``pull_strategy = "rebase"``) or merged with it
(``"merge"``) without touching unrelated working files, since the work tree is nearly
always dirty: trees come from ``git merge-tree --write-tree`` and ``commit-tree``, the
index and work tree move from the old HEAD to the new one with ``git read-tree -m -u``
(a two-way merge that keeps local modifications and changes nothing when one would be
overwritten), and HEAD moves with a compare-and-swap ``update-ref``.  A conflict changes
nothing at all: the local commits stay, :attr:`Committer.push_conflict` says why, and the
caller stops pushing until a later attempt integrates cleanly.

History the remote already has and the person then rewrote (an amend, a rebase: the
remote-tracking branch, once this branch's own tip, is no longer in HEAD) is never pushed,
forced, replayed or merged back: :attr:`Committer.history_rewritten` says so until HEAD
contains the upstream again.  Before every push an optional ``push_gate(range)`` (the
commits the remote lacks, as ``UPSTREAM..HEAD`` or ``HEAD`` when the remote has none) may
refuse it with a :class:`Why`.
"""
from __future__ import annotations

import errno
import hashlib
import logging
import os
import stat
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Callable, Mapping

import psutil

from gitsieve.common.config.loader import Config
from gitsieve.common.git.blobs import BlobWriter
from gitsieve.common.git.catfile import (
    MODE_GITLINK,
    MODE_SYMLINK,
    MODE_TREE,
    Entry,
    HeadReadError,
)
from gitsieve.common.git.gateway import Git, GitError, LineChild, config_files, split_nul
from gitsieve.common.git.head import (
    checked_out_branch,
    checked_out_commit,
    file_clock_ns,
    file_signature,
    signature_of,
)
from gitsieve.common.judge.content import git_blob_id
from gitsieve.common.judge.content_judge import ContentJudge
from gitsieve.common.judge.junk import editor_junk
from gitsieve.common.judge.rules import RuleCache
from gitsieve.common.judge.worktree import git_mode
from gitsieve.common.protocol.messages import bad_path_reason
from gitsieve.common.protocol.states import Action, Hold, Why, render

log = logging.getLogger(__name__)
# Longest wait for a racily read file's clock tick to end (a file stamped further ahead is
# held instead).
_RACY_WAIT_NS = 50_000_000

# At least this many files new to the repository are written as one pack, not one loose
# object each: 10,000 loose objects cost git 1.4-2.2 s (mostly system time), a pack 0.6 s.
PACKED_WRITE_MIN = 256
# The private index those packs are written through: git_dir / f"{prefix}{pid}-{thread}.index".
PACKED_INDEX_PREFIX = "gitsieve-objects-"

TRAILER = "Synced-by: gitsieve"
GITMODULES = ".gitmodules"  # where git records each submodule's name, path and URL
FALLBACK_NAME = "gitsieve"
FALLBACK_EMAIL = "gitsieve@localhost"
EMPTY_TREE = "4b825dc642cb6eb9a060e54bf8d69288fbee4904"
# git's words for a lock someone else holds: worth waiting for, not a real failure.
_TRANSIENT_MARKERS = ("index.lock", "File exists", "Unable to create", "cannot lock ref",
                      "timed out")
# git's words when one path, not the whole command, is the trouble (hash-object,
# check-ignore).
_PATH_REFUSED_MARKERS = ("Unable to process path", "unable to index file", "Unable to hash",
                         "beyond a symbolic link", "unsupported file type",
                         "Permission denied", "cannot open", "unable to open")
_CAS_ROUNDS = 5  # rebuilds on a HEAD that moved under us before giving up for this attempt
# Only the network has a deadline (see gateway.Git: sh polls while one is set).
_IDENTITY_TTL = 60.0
_PUSH_TIMEOUT = 120.0
# A signing program (gpg, ssh-keygen) that waits this long for a passphrase has failed.
_SIGN_TIMEOUT = 60.0
# The index update of a commit waits at most this for the push's git to start first.
_PUSH_HEAD_START = 0.05
# Trees of at least this many entries keep their layout (the last LAYOUTS_KEPT made: the
# next commit builds on the trees of the last one).  A 10,000-entry layout is about 1 MB.
LARGE_TREE = 1024
LAYOUTS_KEPT = 4
_ZERO_OID = "0" * 40
# A new file unchanged since this long before its first observation is not re-checked.
_SETTLED_BEFORE = 1.0
# After committing a file this large the user's index is refreshed (see _after_commit).
_REFRESH_AFTER_BYTES = 1024 * 1024
# A file rewritten in place (`date > f`, open(..., "w")) is empty between its truncation and
# the first write: an emptied file modified this recently is given this long to fill again
# before the re-check reads it.
_TRUNCATED_RECENTLY = 1.0  # seconds since its modification
_TRUNCATION_SETTLE = 0.25  # seconds waited at most, per commit
_EMPTY_BLOBS = ("e69de29bb2d1d6434b8b29ae775ad8c2e48c5391",
                "473a0f4c3be8a93681a267e3b1e9a7dcda1185436fe141f7749120a303721813")

# Where a path stands in the work tree (Committer.plan).
PRESENT, GONE, BEYOND_LINK, DIRECTORY = "present", "gone", "beyond-link", "directory"
NESTED, REFUSED, TOO_LONG = "nested", "refused", "too-long"


class TransientError(Exception):
    """A lock or race that is expected to clear; the operation is retried."""


class SigningFailed(Exception):
    """``commit.gpgSign`` is on and git could not sign (no key, no agent, a locked key):
    ``str()`` is git's words.  Nothing is committed unsigned."""


@dataclass(frozen=True)
class CommitSettings:
    """The person's git configuration as the commits made here follow it."""

    env: dict  # fallback identity for what the repository does not configure
    sign: bool  # commit.gpgSign
    # ("Name <email>" of the author, of the committer) as git itself makes them for
    # ``env`` (``git var``), when this committer may write the commit object itself; None
    # when ``commit-tree`` must (signing, a commit encoding, dates set in the environment)
    idents: tuple[bytes, bytes] | None = None


# Set in gitsieve's environment, these dates would be git's, not the clock's: commit-tree.
_DATE_VARIABLES = frozenset({"GIT_AUTHOR_DATE", "GIT_COMMITTER_DATE"})


def _ident_of(line: bytes) -> bytes:
    """``git var``'s "Name <email> 1700000000 +0100" without its date."""
    return line.strip().rsplit(b" ", 2)[0]


def _zone(moment: int) -> bytes:
    """The local time zone offset at ``moment`` as git writes it (+0100, -0530)."""
    offset = time.localtime(moment).tm_gmtoff // 60
    sign = b"-" if offset < 0 else b"+"
    return b"%s%02d%02d" % (sign, abs(offset) // 60, abs(offset) % 60)


def commit_object(tree: str, parents: list[str], idents: tuple[bytes, bytes], moment: int,
                  message: bytes) -> bytes:
    """The body of the commit ``commit-tree`` makes of these (``parents`` as its ``-p``
    options; the message verbatim, UTF-8)."""
    stamp = b" %d %s" % (moment, _zone(moment))
    lines = [b"tree " + tree.encode()]
    lines += [b"parent " + parent.encode() for parent in parents if parent != "-p"]
    lines += [b"author " + idents[0] + stamp, b"committer " + idents[1] + stamp]
    return b"\n".join(lines) + b"\n\n" + message


class PushConflict(Exception):
    """The remote's changes cannot be integrated without a person: nothing was changed."""


# git's words when a push is refused because the remote has commits we lack.
_REJECTED_MARKERS = ("[rejected]", "non-fast-forward", "fetch first", "Updates were rejected")


class _Background:
    """``call`` in a thread of its own; :meth:`outcome` waits for its value (or raises
    what it raised)."""

    def __init__(self, call: Callable[[], object], name: str):
        self._call, self._value, self._error = call, None, None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._value = self._call()
        except BaseException as exc:  # handed to the waiting thread, raised there
            self._error = exc

    def outcome(self):
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._value


@dataclass
class CommitResult:
    commit: str | None = None
    pushed: bool = False
    error: str = ""
    held: str = ""  # why nothing was attempted (branch rule); paths stay held
    paths: tuple[str, ...] = ()  # the paths the commit contains
    dropped: tuple[str, ...] = ()  # asked-for paths not committable (ignored, vanished)
    left_alone: tuple[str, ...] = ()  # of those, skip-worktree or assume-unchanged ones
    retries: int = 0
    statuses: dict = field(default_factory=dict)  # path -> status letter
    transient: bool = False  # the error is a lock or race: retry after a back-off
    # asked-for paths left out of the commit, each with its own reason (staged by you, a
    # nested repository, a path git refuses, ...): the executor keeps them held
    held_paths: dict[str, Why] = field(default_factory=dict)
    parent: str | None = None  # the commit the new one was made on


@dataclass
class Plan:
    """What a commit of some paths does with each (see :meth:`Committer.plan`)."""

    stage: list[str] = field(default_factory=list)   # from the work tree (gone: deleted)
    remove: list[str] = field(default_factory=list)  # deleted (below a link, a directory)
    held: dict[str, Why] = field(default_factory=dict)
    dropped: list[str] = field(default_factory=list)
    left_alone: list[str] = field(default_factory=list)  # dropped: git leaves them alone
    where: dict[str, str] = field(default_factory=dict)  # path -> PRESENT, GONE, ...
    head_entries: dict[str, Entry | None] = field(default_factory=dict)
    fully_staged: set[str] = field(default_factory=set)
    # submodules' entries committed as the person staged them: path -> (mode, oid), None
    # for a removal
    gitlinks: dict[str, tuple[int, str] | None] = field(default_factory=dict)
    largest: int = 0  # bytes of the largest file committed from the work tree
    # path -> its file's signature when its content was judged (re-check) or hashed: a
    # different one after hashing means the hashed version may be half-written or unjudged
    read_as: dict[str, tuple] = field(default_factory=dict)
    # the file-timestamp clock when the first signature was taken (see racily_read)
    read_from: int | None = None
    # PRESENT path -> its lstat when planned: the size gate judges that size, and the file
    # is hashed only if it still has that signature afterwards (one look per path, not four)
    looked: dict[str, os.stat_result] = field(default_factory=dict)

    def reading(self) -> None:
        """Note the file-timestamp clock before the first signature is taken."""
        if self.read_from is None:
            self.read_from = file_clock_ns()

    def racily_read(self, path: str) -> bool:
        """Whether a write after the signature could have left it unchanged: the file was
        written in the clock tick its signature was taken in, so a rewrite of the same size
        in that tick keeps inode, mtime and size (git's "racy clean", with the same remedy:
        do not trust the stat data, look again later)."""
        signature = self.read_as.get(path)
        return self.read_from is not None and signature is not None \
            and signature[1] >= self.read_from


@dataclass(frozen=True)
class UpstreamState:
    """HEAD against the remote-tracking branch (``[git] remote``/``branch``)."""

    head: str | None
    upstream: str | None  # None: no remote-tracking branch (never pushed or fetched)
    ahead: bool = False  # HEAD has commits the upstream lacks
    rewritten: str = ""  # why HEAD no longer contains pushed history ('' when it does)

    @property
    def range(self) -> str:
        """The commits a push would send, as git reads a range."""
        return f"{self.upstream}..{self.head}" if self.upstream else str(self.head)


def _is_transient(exc: GitError) -> bool:
    return any(marker in exc.stderr for marker in _TRANSIENT_MARKERS)


def _safe_relative(path: str) -> bool:
    """A workspace-relative path that cannot reach outside the work tree or into .git."""
    if bad_path_reason(path) is not None:
        return False
    # git records no path with a ".git" component anywhere (any case), nor "." or "..".
    return not any(part in ("", ".", "..") or part.lower() == ".git"
                   for part in path.split("/"))


def _directories_above(paths) -> set[str]:
    """Every directory above one of ``paths`` (``a/b/c``: ``a/b`` and ``a``)."""
    found: set[str] = set()
    for path in paths:
        parent = path.rpartition("/")[0]
        while parent and parent not in found:  # the rest above is in already
            found.add(parent)
            parent = parent.rpartition("/")[0]
    return found


def _below_any(path: str, directories: set[str]) -> bool:
    parent = path.rpartition("/")[0]
    while parent:
        if parent in directories:
            return True
        parent = parent.rpartition("/")[0]
    return False


def _first_error(stderr: str) -> str:
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    return " ".join(lines)[:300] or "refused"


def _raw_diff(out: bytes) -> list[tuple[int, str, int, str, str, str]]:
    """``--raw -z`` records: (old mode, old oid, new mode, new oid, status, path)."""
    fields = out.split(b"\0")
    records = []
    for index in range(0, len(fields) - 1, 2):
        meta = fields[index].decode()
        if not meta.startswith(":"):
            break
        old_mode, new_mode, old_oid, new_oid, status = meta[1:].split(" ")
        records.append((int(old_mode, 8), old_oid, int(new_mode, 8), new_oid, status[:1],
                        os.fsdecode(fields[index + 1])))
    return records


def _blob_oid(data: bytes, hex_length: int) -> str:
    """git's object id of ``data`` as a blob (SHA-256 repositories: 64 hex digits)."""
    digest = hashlib.sha256() if hex_length == 64 else hashlib.sha1()
    digest.update(b"blob %d\0" % len(data) + data)
    return digest.hexdigest()


_KEEP = object()  # a tree node with no change of its own, only below it


def _in_git_order(entries: dict[bytes, tuple[int, str]]) -> list:
    """Names compared as bytes, a tree's as if it ended in "/"."""
    return sorted(entries.items(),
                  key=lambda item: item[0] + b"/" if item[1][0] == MODE_TREE else item[0])


# Trees and commits written loose without compression: a tree is mostly object ids, which
# do not compress (a 10,000-entry directory's 330 KB tree deflated to 244 KB at zlib's
# fastest level, in 5.3 ms of each commit on a 100k-file tree).  gc packs them compressed.
_STORED = ("-c", "core.looseCompression=0")


def _tree_id(body: bytes, hex_length: int) -> str:
    digest = hashlib.sha256() if hex_length == 64 else hashlib.sha1()
    digest.update(b"tree %d\0" % len(body) + body)
    return digest.hexdigest()


@dataclass(frozen=True)
class TreeLayout:
    """A tree's body (entries name -> (mode, oid)) and where each entry's object id lies in
    it.  A large one is kept: a commit that changes entries of that directory without
    adding, removing or retyping any patches those bytes instead of sorting and formatting
    every entry again."""

    body: bytes
    oid_at: dict  # name -> offset of its raw object id in body

    @classmethod
    def of(cls, entries: dict[bytes, tuple[int, str]]) -> "TreeLayout":
        parts, oid_at, position = [], {}, 0
        for name, (mode, oid) in _in_git_order(entries):
            head = b"%o %s\0" % (mode, name)
            raw = bytes.fromhex(oid)
            oid_at[name] = position + len(head)
            position += len(head) + len(raw)
            parts.append(head + raw)
        return cls(b"".join(parts), oid_at)

    def patched(self, new_oids: dict[bytes, str]) -> "TreeLayout":
        body = bytearray(self.body)
        for name, oid in new_oids.items():
            raw = bytes.fromhex(oid)
            start = self.oid_at[name]
            body[start:start + len(raw)] = raw
        return TreeLayout(bytes(body), self.oid_at)


def _valid_utf8(data: bytes) -> bool:
    """Whether ``data`` is UTF-8 (commit-tree re-encodes a message that is not)."""
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _same_entry(one: tuple[int, str], other: tuple[int, str]) -> bool:
    """Two (mode, oid) entries alike (mode 0: no entry, whatever the oid says)."""
    return one[0] == other[0] and (not one[0] or one[1] == other[1])


def _index_line(mode: int, oid: str, path: str) -> bytes:
    """One ``update-index -z --index-info`` record (mode 0 removes the entry)."""
    shown = f"{mode:o} {oid}" if mode else f"0 {_ZERO_OID}"
    return shown.encode() + b"\t" + os.fsencode(path) + b"\0"


def _remove_packed_index(index: str) -> None:
    for leftover in (index, index + ".lock"):
        Path(leftover).unlink(missing_ok=True)


class Committer:
    def __init__(self, config: Config, sleep: Callable[[float], None] = time.sleep,
                 git: Git | None = None, content: ContentJudge | None = None):
        self.config = config
        self.root = config.workspace
        self._root = str(config.workspace)  # joined as text: pathlib costs us per path
        self.packs_written = 0  # packs written since git last looked at tidying them
        for leftover in config.git_dir.glob(f"{PACKED_INDEX_PREFIX}*.index*"):
            # a private index of an executor killed while it wrote a pack
            pid = leftover.name.removeprefix(PACKED_INDEX_PREFIX).split("-")[0]
            if not (pid.isdigit() and psutil.pid_exists(int(pid))):
                _remove_packed_index(str(leftover).removesuffix(".lock"))
        self.git = git or Git(config.workspace)
        # the content layer's judge: re-checks content-only verdicts, knows HEAD's blobs
        self.content = content or ContentJudge(config, self.git)
        self.heads = self.content.head  # HEAD's entries and blobs, read in bulk
        self.rules = RuleCache(config.patterns_file)
        self.sleep = sleep
        self.user_index = config.git_dir / "index"
        self.retries = 0  # total over this object's life, for status
        self.rechecked_dropped = 0  # paths dropped at commit time by the content re-check
        self.refused_by_rule = 0  # paths a Batch named that a BLOCK rule or junk refuses
        # (when read, the repository's config file then, what it said)
        self._identity: tuple[float, tuple | None, CommitSettings] | None = None
        self.push_conflict = ""  # why the remote cannot be integrated ('' when it can)
        self.history_rewritten = ""  # why pushed history is no longer in HEAD ('' if it is)
        self.push_hold: Why | None = None  # why the last push was not made (None: it was)
        # Asked before every push with the commits the remote lacks ("UPSTREAM..HEAD", or
        # "HEAD" when it has none); a Why stops the push (see the module docstring).
        self.push_gate: Callable[[str], Why | None] | None = None
        # Asked at every commit with the paths whose work-tree version is about to be
        # committed (new or changed, not deletions), each with its size as planned, and
        # HEAD's commit; the paths it names are held with its Why and the rest is committed.
        self.path_gate: Callable[[dict[str, int], str | None], dict[str, Why]] | None = None
        # Asked with (path, blob id) of every blob about to be committed, once hashed: the
        # exact bytes of the commit (the guard scans them); the paths it names are held.
        self.blob_gate: Callable[[list[tuple[str, str]]], dict[str, Why]] | None = None
        # Told (parent, commit) after each sync commit, all of whose blobs the blob gate
        # passed.
        self.sync_commit_made: Callable[[str | None, str], None] | None = None
        self.last_push_sent = False  # the last push() sent commits (not only found none)
        # An integration whose update-ref failed left index and work tree at this commit
        # and could not put them back yet: nothing else happens until that is done.
        self.unfinished_rollback: str | None = None
        self.integrations = 0  # times the remote's commits were integrated before a push
        # Committed paths whose entries in the user's index still show the version before
        # the commit (index.lock was busy): path -> that entry (mode, oid; mode 0: none).
        # Written on a later call of refresh_user_index(), unless the person changed it.
        self.index_refresh_pending: dict[str, tuple[int, str]] = {}
        # clear while a commit's push runs beside its update of the person's index
        self._index_written = threading.Event()
        self._index_written.set()
        self._layouts: OrderedDict[str, TreeLayout] = OrderedDict()  # large trees made here
        # set once the push is about to start its git (or will not): the index waits for it
        self._push_under_way = threading.Event()
        # Long-lived gits on the path from an edit to the remote: each call saved is a
        # process (about 5 ms through sh).  The one writing blobs is started again when
        # what its clean filters follow changed (common.git.blobs).
        self._blob_writer = BlobWriter(self.git, config.git_dir)
        self._writers = {kind: LineChild(self.git, *_STORED, "hash-object", "-w", "-t", kind,
                                         "--no-filters", "--stdin-paths")
                         for kind in ("tree", "commit")}
        self._head_mover: LineChild | None = LineChild(self.git, "update-ref", "-m",
                                                       "gitsieve: sync", "--stdin")
        # The user's index against HEAD, as last read: ((signature, head), {path: entry})
        self._staged: tuple | None = None
        # The user's index signature the last plan decided on (as read, or as this
        # committer's own write after the commit left it)
        self.index_basis: tuple | None = None
        # (index signature, paths git is told to leave alone in the work tree)
        self._left_alone: tuple[tuple | None, frozenset[str]] | None = None
        self.left_alone_dropped = 0
        self.names_refused = 0

    # ----- small git helpers ------------------------------------------------------------
    def _git(self, *args, input: bytes | None = None, env: dict | None = None,
             timeout: float | None = None) -> bytes:
        return self.git.run(*args, input=input, env=env, timeout=timeout)

    def _text(self, *args, **kwargs) -> str:
        return os.fsdecode(self._git(*args, **kwargs)).strip()

    def head(self) -> str | None:
        """HEAD's commit, None on an unborn branch."""
        try:
            return self._text("rev-parse", "--verify", "-q", "HEAD") or None
        except GitError:
            return None

    def current_branch(self) -> str | None:
        """The checked-out branch name, or None when HEAD is detached (read from the git
        directory's HEAD file: no process)."""
        try:
            return checked_out_branch(self.config.git_dir)
        except OSError:
            try:
                head = self._text("symbolic-ref", "-q", "HEAD")
            except GitError:
                return None
        prefix = "refs/heads/"
        return head[len(prefix):] if head.startswith(prefix) else None

    def branch_hold_reason(self) -> tuple[str | None, str]:
        """(branch, '') when commits are allowed, else (branch, reason to hold)."""
        branch = self.current_branch()
        if branch is None:
            return None, "HEAD is detached"
        if self.config.branch and branch != self.config.branch:
            return branch, f"on branch {branch!r}, configured for {self.config.branch!r}"
        return branch, ""

    def _settings(self) -> "CommitSettings":
        """What the person's git configuration says about the commits made here.

        Read again after ``_IDENTITY_TTL`` s or when a config file git reads changes
        (:func:`gateway.config_files`): three git calls per commit would cost ~30 ms
        through sh, and these change rarely."""
        now = time.monotonic()
        written = tuple(file_signature(name)
                        for name in config_files(self.config.git_dir, self.git.owner))
        if self._identity is not None and now - self._identity[0] < _IDENTITY_TTL \
                and self._identity[1] == written:
            return self._identity[2]
        env = {}
        for key, names, value in (("user.name", ("GIT_AUTHOR_NAME", "GIT_COMMITTER_NAME"),
                                   FALLBACK_NAME),
                                  ("user.email", ("GIT_AUTHOR_EMAIL", "GIT_COMMITTER_EMAIL"),
                                   FALLBACK_EMAIL)):
            try:
                configured = self._text("config", key)
            except GitError:  # exit 1: unset
                configured = ""
            if not configured:
                env.update({name: value for name in names})
        code, out, stderr = self.git.result("config", "--type=bool", "commit.gpgSign")
        if code not in (0, 1):  # not a boolean: git commit would refuse to commit too
            raise GitError(("config", "--type=bool", "commit.gpgSign"), code, stderr)
        sign = code == 0 and out.strip() == b"true"
        settings = CommitSettings(env, sign, None if sign else self._idents(env))
        self._identity = (now, written, settings)
        return settings

    def _idents(self, env: dict) -> tuple[bytes, bytes] | None:
        """Author and committer as ``commit-tree`` would write them with ``env`` (git's
        own rules: environment, author.* and committer.*, user.*, the fallback), or None
        when only ``commit-tree`` may write the commit."""
        if os.environ.keys() & _DATE_VARIABLES:
            return None
        code, out, _ = self.git.result("config", "i18n.commitEncoding")
        if code == 0 and out.strip().lower() not in (b"utf-8", b"utf8"):
            return None  # commit-tree writes an encoding header
        try:
            return (_ident_of(self._git("var", "GIT_AUTHOR_IDENT", env=env)),
                    _ident_of(self._git("var", "GIT_COMMITTER_IDENT", env=env)))
        except GitError as exc:  # no usable identity (user.useConfigOnly): commit-tree says so
            log.debug("commit identity not known ahead: %s", exc)
            return None

    def _identity_env(self) -> dict:
        """Fallback identity, only for what the repository does not configure."""
        return self._settings().env

    def _commit_tree(self, tree: str, parents: list[str], message: bytes,
                     env: dict | None = None) -> str:
        """``commit-tree`` of ``tree`` on ``parents`` (``-p`` options), signed when the
        person's configuration asks for it (``commit.gpgSign``, which ``commit-tree``, a
        plumbing command, never reads itself); SigningFailed when git could not sign."""
        settings = self._settings()
        if settings.idents is not None and not env and _valid_utf8(message):
            # the object commit-tree would make, written by a git kept running: a process
            # less between an edit and the remote
            moment = int(time.time())
            return self._hash_contents(
                [commit_object(tree, parents, settings.idents, moment, message)],
                object_type="commit")[0]
        identity = {**settings.env, **(env or {})}
        unsigned = ("commit-tree", tree, *parents, "-F", "-")
        if not settings.sign:
            return self._text(*unsigned, input=message, env=identity)
        try:
            # a signing program waiting for a passphrase nobody types must not stall commits
            return self._text("commit-tree", "-S", tree, *parents, "-F", "-", input=message,
                              env=identity, timeout=_SIGN_TIMEOUT)
        except GitError as exc:
            # Whether signing was the trouble: the same commit unsigned (an object nothing
            # refers to, left for gc) is made, or fails for what failed the signed one.
            if self.git.result(*unsigned, input=message, env=identity)[0] != 0:
                raise
            raise SigningFailed(_first_error(exc.stderr)) from None

    def _head_now(self) -> tuple[str, str] | None:
        """(commit, tree) of HEAD through the persistent cat-file child."""
        try:
            return self.heads.head()
        except HeadReadError as exc:
            raise TransientError(f"cannot read HEAD: {exc}") from None

    # ----- planning -------------------------------------------------------------------------
    def _refused_by_rule(self, path: str) -> bool:
        """A BLOCK rule or the editor-junk list names the path: never committed, whatever
        a (possibly forged) Batch says."""
        junk = editor_junk(path)
        rule = None if junk else self.rules.match(path)
        if not junk and (rule is None or rule.action != Action.BLOCK):
            return False
        self.refused_by_rule += 1
        log.warning("not committing %s: %s (a Batch named a path L1 never lets through)",
                    path, f"editor junk ({junk})" if junk else rule.describe())
        return True

    def _full(self, *parts: str) -> str:
        return os.path.join(self._root, *parts)

    @staticmethod
    def _unseen(exc: OSError) -> tuple[str, str]:
        """Where a path stands that ``lstat`` refused: too long for the system to name
        from / (git, run in the work tree, might reach it; the rest of gitsieve cannot),
        or unreadable."""
        if exc.errno == errno.ENAMETOOLONG:
            return TOO_LONG, ""
        return REFUSED, f"cannot be looked at: {exc.strerror or exc}"

    def _too_long(self, path: str) -> str:
        return (f"{len(os.fsencode(self._full(path)))} bytes from /, over this system's "
                f"limit of {os.pathconf(self._root, 'PC_PATH_MAX')} (PATH_MAX)")

    def _dir_state(self, rel: str) -> tuple[str, str]:
        try:
            info = os.lstat(self._full(rel))
        except (FileNotFoundError, NotADirectoryError):
            return GONE, ""
        except OSError as exc:
            return self._unseen(exc)
        if stat.S_ISLNK(info.st_mode):
            return BEYOND_LINK, rel
        if not stat.S_ISDIR(info.st_mode):
            return GONE, ""  # a file where a directory was: nothing can be below it
        if os.path.lexists(self._full(rel, ".git")):
            return NESTED, rel
        return DIRECTORY, ""

    def _where(self, path: str, dirs: dict[str, tuple[str, str]],
               looked: dict[str, os.stat_result]) -> tuple[str, str]:
        """Where ``path`` stands in the work tree: (PRESENT | GONE | BEYOND_LINK |
        DIRECTORY | NESTED | REFUSED | TOO_LONG, detail); ``dirs`` caches the directories
        above, and ``looked`` gets a PRESENT path's lstat."""
        parts = path.split("/")
        for depth in range(1, len(parts)):
            prefix = "/".join(parts[:depth])
            state = dirs.get(prefix)
            if state is None:
                state = dirs[prefix] = self._dir_state(prefix)
            if state[0] != DIRECTORY:
                return state
        try:
            info = os.lstat(self._full(path))
        except (FileNotFoundError, NotADirectoryError):
            return GONE, ""
        except OSError as exc:  # cannot be looked at: neither committed nor deleted
            return self._unseen(exc)
        if stat.S_ISDIR(info.st_mode):
            if os.path.lexists(self._full(path, ".git")):
                return NESTED, path
            return DIRECTORY, ""
        if not (stat.S_ISREG(info.st_mode) or stat.S_ISLNK(info.st_mode)):
            # never opened: reading a FIFO would block
            return REFUSED, "unsupported file type (a FIFO, socket or device)"
        looked[path] = info
        return PRESENT, ""

    def _user_index_changes(self, head: tuple[str, str] | None) -> dict[str, tuple[int, str]]:
        """Paths whose entry in the user's index differs from HEAD's: path -> the index's
        (mode, oid), mode 0 when the index has none.  Intent-to-add entries are not
        changes.  Read again only when the index file or HEAD changed."""
        key = (file_signature(self.user_index), head[0] if head else None)
        self.index_basis = key[0]
        if self._staged is not None and self._staged[0] == key and key[0] is not None:
            return self._staged[1]
        out = self._git("--no-optional-locks", "diff-index", "--cached",
                        "--ita-invisible-in-index", "--no-renames", "--raw", "-z",
                        head[0] if head else EMPTY_TREE)
        changes = {path: (new_mode, new_oid)
                   for _, _, new_mode, new_oid, _, path in _raw_diff(out)}
        self._staged = (key, changes)
        return changes

    def left_alone(self) -> frozenset[str]:
        """Paths whose index entry tells git to leave their work-tree copy alone:
        skip-worktree (a sparse checkout's paths outside the cone, a local override) and
        assume-unchanged.  ``git status`` and ``git commit -a`` never take those copies, nor
        their absence, so gitsieve does not either.  Read again only when someone other
        than gitsieve rewrote the index."""
        signature = file_signature(self.user_index)
        if self._left_alone is not None and self._left_alone[0] == signature \
                and signature is not None:
            return self._left_alone[1]
        flagged = frozenset(
            entry[2:] for entry in split_nul(self._git("--no-optional-locks", "ls-files", "-v",
                                                       "-z"))
            if entry[:1] == "S" or entry[:1].islower())  # lower case: assume-unchanged
        self._left_alone = (signature, flagged)
        return flagged

    def _index_rewritten_here(self, before: tuple | None) -> None:
        """gitsieve wrote the index (entries of committed paths, which are never flagged):
        what it knew of the flags still holds."""
        if self._left_alone is not None and self._left_alone[0] == before:
            self._left_alone = (file_signature(self.user_index), self._left_alone[1])

    def _names_git_refuses(self, paths: list[str], head: tuple[str, str] | None) -> set[str]:
        """Those of the new ``paths`` whose names git refuses to record (``git add``: "invalid
        path"): a ``.git`` component in any spelling Windows or macOS reads as one (``.GIT``,
        ``git~1``, ``.git.``), a symbolic link named ``.gitmodules``.  A remote that checks
        objects rejects a push holding one, and so every later push.  git itself judges:
        the entries go into a throwaway index, which leaves such names out."""
        if not paths:
            return set()
        if head is not None:
            hex_length = len(head[1])
        else:
            hex_length = 64 if self._text("rev-parse", "--show-object-format") == "sha256" \
                else 40
        placeholder = _blob_oid(b"", hex_length).encode()
        records = []
        for path in paths:
            mode = MODE_SYMLINK if os.path.islink(self.root / path) else 0o100644
            records.append(b"%o %s\t%s\0" % (mode, placeholder, os.fsencode(path)))
        index = os.path.join(self.config.git_dir, f"{PACKED_INDEX_PREFIX}{os.getpid()}-"
                                                  f"{threading.get_ident()}-names.index")
        env = {"GIT_INDEX_FILE": index}
        try:
            self._git("-c", "core.splitIndex=false", "-c", "core.fsmonitor=false",
                      "update-index", "-z", "--index-info", input=b"".join(records), env=env)
            recorded = set(split_nul(self._git("ls-files", "-z", env=env)))
        finally:
            _remove_packed_index(index)
        refused = set(paths) - recorded
        if refused:
            self.names_refused += len(refused)
        return refused

    def _work_entries(self, paths: list[str], where: dict,
                      hex_length: int) -> dict[str, tuple[int, str]]:
        """The (mode, oid) git would record for each path from the work tree (0: none)."""
        found: dict[str, tuple[int, str]] = {}
        hashed = []
        for path in paths:
            if where[path][0] != PRESENT:
                found[path] = (0, _ZERO_OID)
                continue
            full = self.root / path
            try:
                info = os.lstat(full)
                if stat.S_ISLNK(info.st_mode):
                    target = os.fsencode(os.readlink(full))
                    found[path] = (MODE_SYMLINK, _blob_oid(target, hex_length))
                elif "\n" in path:  # hash-object reads one name a line
                    found[path] = (git_mode(info.st_mode), git_blob_id(str(full), hex_length))
                else:
                    found[path] = (git_mode(info.st_mode), "")
                    hashed.append(path)
            except OSError:
                found[path] = (0, _ZERO_OID)
        if hashed:
            # git's own hash: clean filters (autocrlf, LFS) apply as they would on `git add`
            out = self._git("hash-object", "--stdin-paths",
                            input=b"".join(os.fsencode(path) + b"\n" for path in hashed))
            for path, oid in zip(hashed, out.decode().split()):
                found[path] = (found[path][0], oid)
        return found

    def _apply_staging(self, plan: Plan, where: dict, staged: dict) -> None:
        """Hold the paths whose index entry is the person's own partial staging; note the
        fully staged ones (their index entry is already the version committed)."""
        candidates = [path for path in plan.stage + plan.remove if path in staged]
        if not candidates:
            return
        work = self._work_entries(candidates, where, len(staged[candidates[0]][1]))
        executable_bit = self.content.executable_bit()
        held = set()
        for path in candidates:
            index_mode, index_oid = staged[path]
            work_mode, work_oid = work[path]
            if not executable_bit and index_mode and work_mode and MODE_SYMLINK not in (
                    index_mode, work_mode):
                work_mode = index_mode  # core.fileMode = false: git keeps the index's mode
            if index_mode == work_mode and (not index_mode or index_oid == work_oid):
                plan.fully_staged.add(path)
            else:
                held.add(path)
                plan.held[path] = Why(Hold.STAGED_BY_YOU)
        plan.stage = [path for path in plan.stage if path not in held]
        plan.remove = [path for path in plan.remove if path not in held]

    def _check_ignore(self, paths: list[str], found: set[str]) -> None:
        # --no-index: whether git would ignore the path, whatever the user's index holds
        # (tracked paths are never candidates), at a cost that does not grow with the tree.
        # The "./" prefix keeps a name starting with ":" from reading as pathspec magic.
        data = b"".join(b"./" + os.fsencode(path) + b"\0" for path in paths)
        code, out, stderr = self.git.result("check-ignore", "--no-index", "-z", "--stdin",
                                            input=data, env={"GIT_LITERAL_PATHSPECS": "0"})
        if code == 1:
            return
        if code != 0:
            raise GitError(("check-ignore", "--no-index", "-z", "--stdin"), code, stderr)
        found.update(path[2:] if path.startswith("./") else path for path in split_nul(out))

    def _bisect(self, paths: list[str], run: Callable[[list[str]], None],
                refused: dict[str, Why]) -> None:
        """``run(paths)``; when git refuses, halve until the paths it refuses are alone,
        and hold each of those with git's words (the rest goes on).  A failure that is not
        about one path (a lock, a full disk) is raised."""
        try:
            run(paths)
        except GitError as exc:
            if _is_transient(exc) or exc.exit_code < 0:
                raise
            if len(paths) == 1:
                if not any(marker in exc.stderr for marker in _PATH_REFUSED_MARKERS):
                    raise
                refused[paths[0]] = Why(Hold.GIT_REFUSED, _first_error(exc.stderr))
                # The executor logs a hold once per reason; each retry is only a debug line.
                log.debug("holding %s: git refuses it: %s", paths[0], _first_error(exc.stderr))
                return
            middle = len(paths) // 2
            self._bisect(paths[:middle], run, refused)
            self._bisect(paths[middle:], run, refused)

    def plan(self, paths, head: tuple[str, str] | None,
             recheck: Mapping[str, float | None] = MappingProxyType({})) -> Plan:
        """What committing ``paths`` on ``head`` does with each (see the module docstring):
        staged from the work tree, force-removed, held with a reason, or dropped."""
        plan = Plan()
        plan.reading()  # before the first look: a write in the tick of the look is racy
        staged = self._user_index_changes(head)
        # Entries left as HEAD had them before an earlier commit (refresh pending) are not
        # the person's staging.
        staged = {path: entry for path, entry in staged.items()
                  if self.index_refresh_pending.get(path) != entry}
        paths = list(dict.fromkeys(paths))
        paths += self._rest_of_submodule_change(paths, staged)
        where: dict[str, tuple[str, str]] = {}
        dirs: dict[str, tuple[str, str]] = {}
        for path in paths:
            if not isinstance(path, str) or not _safe_relative(path) \
                    or self._refused_by_rule(path):
                plan.dropped.append(path)
                continue
            where[path] = self._where(path, dirs, plan.looked)
            state, detail = where[path]
            if state == REFUSED:
                plan.held[path] = Why(Hold.GIT_REFUSED, detail)
            elif state == TOO_LONG:
                plan.held[path] = Why(Hold.PATH_TOO_LONG, self._too_long(path))
        candidates = [path for path in where if path not in plan.held]
        left_alone = self.left_alone().intersection(candidates)
        if left_alone:  # one line, not one per path: a sparse checkout removes thousands
            self.left_alone_dropped += len(left_alone)
            shown = ", ".join(sorted(left_alone)[:3])
            log.info("not committing %d path(s) git is told to leave alone (skip-worktree or "
                     "assume-unchanged): %s%s", len(left_alone), shown,
                     " ..." if len(left_alone) > 3 else "")
            plan.left_alone = sorted(left_alone)
            plan.dropped += plan.left_alone
            candidates = [path for path in candidates if path not in left_alone]
        # The directories above the paths too: a path below a submodule is the submodule's.
        above = _directories_above(candidates)
        try:
            entries = self.heads.entries(candidates + sorted(above.difference(candidates)))
        except HeadReadError as exc:
            raise TransientError(f"cannot read HEAD's entries: {exc}") from None
        submodules = {path for path, entry in entries.items()
                      if entry is not None and entry.is_gitlink}
        submodules.update(path for path, (mode, _) in staged.items() if mode == MODE_GITLINK)
        present = []
        for path in candidates:
            state, detail = where[path]
            entry = entries[path]
            committed = entry is not None and not entry.is_tree
            if submodules and _below_any(path, submodules):
                # its submodule's own file, as git sees it (git status never lists it)
                plan.dropped.append(path)
            elif path in submodules:
                self._plan_submodule(plan, path, state, entry, staged)
            elif state == NESTED:
                plan.held[path] = Why(Hold.NESTED_REPOSITORY, detail)
            elif state == PRESENT:
                present.append(path)
            elif state == DIRECTORY:
                if committed:
                    plan.remove.append(path)  # a directory where HEAD has a file
                else:
                    plan.dropped.append(path)  # its files are paths of their own
            elif committed or path in staged:
                # gone from the work tree; below a symbolic link counts as gone, as for git
                (plan.remove if state == BEYOND_LINK else plan.stage).append(path)
            else:
                plan.dropped.append(path)  # never committed and gone (a temp file)
        untracked = [path for path in present if entries[path] is None and path not in staged]
        ignored: set[str] = set()
        if untracked:
            self._bisect(untracked, lambda chunk: self._check_ignore(chunk, ignored),
                         plan.held)
        for path in present:
            if path in ignored:
                plan.dropped.append(path)
            elif path not in plan.held:
                plan.stage.append(path)
        new = [path for path in plan.stage if entries[path] is None and path not in staged]
        for path in self._names_git_refuses(new, head):
            plan.held[path] = Why(Hold.GIT_REFUSED, "git refuses this name (invalid path)")
        plan.stage = [path for path in plan.stage if path not in plan.held]
        plan.where = {path: state for path, (state, _) in where.items()}
        plan.head_entries = entries
        self._apply_staging(plan, where, staged)
        if self.path_gate is not None:
            sizes = {path: plan.looked[path].st_size for path in plan.stage
                     if where[path][0] == PRESENT}
            gated = {path: why for path, why in
                     (self.path_gate(sizes, head[0] if head else None) or {}).items()
                     if path in plan.stage}
            plan.held.update(gated)
            plan.stage = [path for path in plan.stage if path not in gated]
        # New files too: L3 may have read one between its creation and its first write
        # (empty: "a new file"), and the version now may be a timestamp alone.
        rechecked = [path for path in plan.stage if path in recheck
                     and where[path][0] == PRESENT and path not in plan.fully_staged
                     and (entries[path] is None or entries[path].is_blob)
                     and not (entries[path] is None
                              and self._unchanged_since(path, recheck.get(path)))]
        if rechecked:
            self._let_rewrites_fill(rechecked, entries)
            plan.reading()
            plan.read_as.update((path, file_signature(self._full(path))) for path in rechecked)
            stale = {}
            for path, verdict in self.content.still_changes(rechecked).items():
                if not verdict.commit:
                    stale[path] = render(verdict.reason, verdict.detail)
                    self.rechecked_dropped += 1
            if stale:  # one line, not one per path: a reconcile may bring thousands
                shown = ", ".join(f"{path} ({why})" for path, why in list(stale.items())[:3])
                log.info("not committing %d path(s) re-checked against HEAD: %s%s",
                         len(stale), shown, " ..." if len(stale) > 3 else "")
            plan.stage = [path for path in plan.stage if path not in stale]
            plan.dropped += sorted(stale)
        self._keep_submodule_change_whole(plan)
        return plan

    def _rest_of_submodule_change(self, paths: list, staged: dict) -> list[str]:
        """When a commit takes part of a submodule change the person staged (``git
        submodule add``, ``git rm`` of a submodule: ``.gitmodules`` and the gitlinks), the
        rest of it, so that the remote never has one without the other."""
        removed = [path for path, (mode, _) in staged.items() if not mode]
        try:
            before = self.heads.entries(removed) if removed else {}
        except HeadReadError as exc:
            raise TransientError(f"cannot read HEAD's entries: {exc}") from None
        change = {path for path, (mode, _) in staged.items() if mode == MODE_GITLINK or (
            not mode and before[path] is not None and before[path].is_gitlink)}
        if not change:
            return []
        change.add(GITMODULES)
        return [] if change.isdisjoint(paths) else sorted(change.difference(paths))

    def _plan_submodule(self, plan: Plan, path: str, state: str, entry: Entry | None,
                        staged: dict) -> None:
        """A submodule's gitlink: what the person staged of it is committed as staged (its
        addition, a new commit, its removal); a commit checked out there and not staged is
        held, never committed on gitsieve's own: the submodule's remote may not have it."""
        if path in staged:
            mode, oid = staged[path]
            plan.gitlinks[path] = (mode, oid) if mode else None
            return
        checked_out = checked_out_commit(self._full(path)) if state == NESTED else None
        if checked_out is not None and checked_out != entry.oid:
            detail = f"commit {checked_out[:12]} checked out, {entry.oid[:12]} committed"
        elif state in (GONE, BEYOND_LINK):
            detail = "its directory is gone"
        elif state == PRESENT:
            detail = "a file is in its place"
        else:  # the commit committed, or not checked out (deinit): unchanged for git too
            plan.dropped.append(path)
            return
        plan.held[path] = Why(Hold.SUBMODULE_NOT_STAGED, detail)

    @staticmethod
    def _keep_submodule_change_whole(plan: Plan, changes: dict | None = None) -> None:
        """A held ``.gitmodules`` holds the gitlinks staged with it (taken out of
        ``changes`` when given), and says why."""
        why = plan.held.get(GITMODULES)
        if why is None or not plan.gitlinks:
            return
        for path in plan.gitlinks:
            plan.held[path] = Why(Hold.WITH_SUBMODULE, f"{GITMODULES}: {why.text}")
            if changes is not None:
                changes.pop(path, None)
        plan.gitlinks = {}

    def _unchanged_since(self, path: str, observed: float | None) -> bool:
        """``path`` has not changed since well before ``observed`` (its first observation):
        by its ctime, which only the kernel sets, with a margin for the coarse clock that
        stamps it.  A new file's verdict then is the one the content layer reached reading
        it after that observation, and it is not read again (a dirty start of thousands)."""
        if observed is None:
            return False
        try:
            return os.lstat(self._full(path)).st_ctime < observed - _SETTLED_BEFORE
        except OSError:
            return False

    def _let_rewrites_fill(self, paths: list[str], entries: dict) -> None:
        """Wait (briefly, bounded) while any of ``paths`` is empty, modified moments ago,
        and not empty in HEAD (or new): a writer created or truncated it and has not written
        yet.  Read then, an agent's timestamp (re)write looks like a new empty file or an
        emptied one, a change to commit."""
        deadline = time.monotonic() + _TRUNCATION_SETTLE
        waiting = [path for path in paths
                   if entries[path] is None or entries[path].oid not in _EMPTY_BLOBS]
        while waiting:
            now = time.time()
            emptied = []
            for path in waiting:
                try:
                    info = os.lstat(self._full(path))
                except OSError:
                    continue  # gone: the re-check says what that means
                if info.st_size == 0 and now - info.st_mtime < _TRUNCATED_RECENTLY:
                    emptied.append(path)
            waiting = emptied
            if not waiting or time.monotonic() >= deadline:
                return
            time.sleep(0.01)

    # ----- the commit ---------------------------------------------------------------------
    def commit(self, paths, push: bool = True, attempts: int | None = None,
               recheck: Mapping[str, float | None] = MappingProxyType({})) -> CommitResult:
        """Commit exactly ``paths`` (then push when a remote is configured).

        A lock or race is retried ``attempts`` times (default ``config.retry_attempts``)
        with ``self.sleep`` between tries; ``attempts=0`` returns at once with
        ``result.transient`` set, so a caller with its own loop schedules the retry.
        """
        attempts = self.config.retry_attempts if attempts is None else attempts
        branch, reason = self.branch_hold_reason()
        if reason:
            return CommitResult(held=reason)
        result = CommitResult()
        attempt = 0
        while True:
            try:
                index_update = self._commit_once(list(paths), result, attempts, recheck)
                break
            except (GitError, TransientError) as exc:
                transient = isinstance(exc, TransientError) or _is_transient(exc)
                if not transient or attempt >= attempts:
                    result.error = str(exc)
                    result.transient = transient
                    log.warning("sync commit failed: %s", exc)
                    return result
                attempt += 1
                result.retries += 1
                self.retries += 1
                delay = self.config.retry_backoff * attempt
                log.info("sync commit: %s; retry %d in %.1fs", exc, attempt, delay)
                self.sleep(delay)
        if result.commit and push and self.config.remote:
            # The push needs only the new commit; the person's index is written meanwhile
            # (on a 100k-file tree each takes tens of milliseconds), and both are done
            # before the commit is reported.
            self._index_written.clear()
            self._push_under_way.clear()
            pushing = _Background(lambda: self._push_then_signal(branch, result.parent),
                                  name="git-push")
            try:
                if index_update is not None:
                    # The push is the longer of the two: its git starts first.
                    self._push_under_way.wait(_PUSH_HEAD_START)
                    index_update()
            finally:
                self._index_written.set()
                result.pushed, result.error = pushing.outcome()
        elif index_update is not None:
            index_update()
        if result.commit and self.packs_written:
            self._tidy_packs()
        return result

    def _tidy_packs(self) -> None:
        """What `git commit` does after committing, once commits wrote packs of their own:
        ``gc --auto``, so packs never pile up (it repacks past ``gc.autoPackLimit``, in the
        background, and does nothing under ``gc.auto = 0``)."""
        self.packs_written = 0
        code, _, stderr = self.git.result("-c", "gc.autoDetach=true", "gc", "--auto", "--quiet")
        if code != 0:
            log.info("git gc --auto after writing packs: %s", stderr.strip()[:200])

    def _commit_once(self, paths: list[str], result: CommitResult, attempts: int,
                     recheck: Mapping[str, float | None] = MappingProxyType({})
                     ) -> Callable[[], None] | None:
        """Make the commit and move HEAD to it; what is left to do then (write the
        committed entries into the person's index), or None when no commit was made."""
        if (self.config.git_dir / "index.lock").exists():
            raise TransientError("index.lock exists: another git command is running")
        self._finish_rollback()
        self.config.runtime_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        for round_number in range(_CAS_ROUNDS):
            if round_number:
                # HEAD moved: the user may have switched branches, not only committed.
                result.held = self.branch_hold_reason()[1]
                if result.held:
                    return
            head = self._head_now()
            plan = self.plan(paths, head, recheck)
            result.dropped, result.held_paths = tuple(plan.dropped), dict(plan.held)
            result.left_alone = tuple(plan.left_alone)
            if not plan.stage and not plan.remove and not plan.gitlinks:
                return
            try:
                new, changes = self._build_commit(head, plan, result)
            except SigningFailed as exc:
                # Every path stays as it is, held until signing works.
                why = Why(Hold.SIGNING_FAILED, str(exc))
                result.held_paths.update((path, why) for path in
                                         plan.stage + plan.remove + list(plan.gitlinks)
                                         if path not in result.held_paths)
                return None
            if new is None:
                return
            old = head[0] if head else ""
            try:
                self._advance_head(new, old)
            except GitError:
                current = self.head()
                if current == new:
                    # update-ref did its work but died before saying so (killed, say).
                    log.info("update-ref reported failure but HEAD is the new commit")
                elif current != (old or None):
                    log.info("HEAD moved during sync; rebuilding on the new HEAD")
                    continue
                else:
                    raise
            result.commit, result.parent = new, old or None
            if self.sync_commit_made is not None and self.blob_gate is not None:
                self.sync_commit_made(result.parent, new)
            return lambda: self._after_commit(plan, changes, new, attempts)
        raise TransientError("HEAD kept moving during the sync")

    def _advance_head(self, new: str, old: str) -> None:
        """HEAD to ``new`` if it is still ``old`` (compare and swap), through the long-lived
        ``update-ref --stdin`` when it can; GitError when HEAD was not moved."""
        mover = self._head_mover
        if old and mover is not None:
            request = f"start\nupdate HEAD {new} {old}\nprepare\ncommit\n".encode("ascii")
            try:
                if mover.ask(request, 3) == [b"start: ok", b"prepare: ok", b"commit: ok"]:
                    return
                mover.close()
            except GitError as exc:
                log.debug("update-ref --stdin: %s", exc)
            if not mover.answered.startswith(b"start: ok"):
                # a git before 2.27 has no transactions on stdin: one process a commit then
                log.info("update-ref --stdin gave no transaction (%r): HEAD moves with one "
                         "update-ref a commit", mover.answered[:80])
                self._head_mover = None
            current = self.head()
            if current == new:
                return
            if current != old:
                raise GitError(("update-ref", "HEAD", new, old), 1, "HEAD moved meanwhile")
            # still at ``old``: nothing was done, the plain command below decides
        self._git("update-ref", "-m", "gitsieve: sync", "HEAD", new, old)

    def _long_lived(self) -> list[LineChild]:
        return [child for child in (self._blob_writer.lines, *self._writers.values(),
                                    self._head_mover) if child is not None]

    def close(self) -> None:
        """End the long-lived gits (the content judge's are its own)."""
        for child in self._long_lived():
            child.close()

    def close_idle(self, now: float) -> bool:
        """End the long-lived gits after a rest (``now``: monotonic), and the content
        judge's cat-file with its cached versions; never while a commit runs.  Whether a
        cache was let go."""
        for child in self._long_lived():
            child.close_if_idle(now)
        return self.content.close_idle(now)

    # ----- objects and trees -----------------------------------------------------------------
    def _hash_present(self, paths: list[str], found: dict[str, str], held: dict[str, Why],
                      changes: dict[str, tuple[int, str] | None]) -> None:
        """:meth:`_hash_files` of files planned as present; one gone since it was planned
        is a deletion, as git would see it (``changes[path] = None``), and the rest is
        hashed again."""
        try:
            self._bisect(paths, lambda chunk: self._hash_files(chunk, found), held)
        except GitError:
            gone = {path for path in paths if not os.path.lexists(self._full(path))}
            if not gone:
                raise
            changes.update(dict.fromkeys(gone))
            rest = [path for path in paths if path not in gone]
            if rest:
                self._hash_present(rest, found, held, changes)

    def _hash_files(self, paths: list[str], found: dict[str, str]) -> None:
        """The object ids of ``paths``' files, each written unless it exists: git's own
        hashing, so clean filters (autocrlf, LFS) apply as on `git add`.  Many files new to
        the repository are written as one pack (:meth:`_write_packed`)."""
        if len(paths) < PACKED_WRITE_MIN:
            found.update(zip(paths, self._hashed(paths, write=True)))
            return
        oids = self._hashed(paths, write=False)
        absent = self._absent(oids)
        new = [path for path, oid in zip(paths, oids) if oid in absent]
        if not new:
            found.update(zip(paths, oids))
            return
        # The ids of what was written are the ones to commit: a file may have changed since
        # it was hashed.
        written = (self._write_packed(new) if len(new) >= PACKED_WRITE_MIN
                   else dict(zip(new, self._hashed(new, write=True))))
        if not written.keys() >= set(new):  # never an id whose object was not written
            raise GitError(("update-index",), 128, f"{len(written)} objects for {len(new)} paths")
        found.update((path, written.get(path, oid)) for path, oid in zip(paths, oids))

    def _hold_racy_rewrites(self, plan: Plan, changes: dict) -> None:
        """Files written in the clock tick their signature was taken in (git's "racy
        clean"): a same-size rewrite in that tick leaves the signature as it was.  Once the
        tick is over (a few ms) they are hashed again: a different id holds the path; the
        same one stands, as any later write now shows in the signature.  A file stamped
        in the future cannot wait its tick out and is held."""
        racy = [path for path, change in changes.items()
                if change is not None and change[0] != MODE_SYMLINK and plan.racily_read(path)]
        if not racy:
            return
        newest = max(plan.read_as[path][1] for path in racy)
        again: dict[str, str] = {}
        plain = [path for path in racy if "\n" not in path]  # hash-object reads lines
        if plain and newest - file_clock_ns() <= _RACY_WAIT_NS:
            while file_clock_ns() <= newest:
                time.sleep(0.001)
            try:
                again = dict(zip(plain, self._hashed(plain, write=False)))
            except GitError as exc:  # one of them gone meanwhile: all are looked at again
                log.debug("racily read files not hashed again: %s", exc)
        for path in racy:
            if again.get(path) != changes[path][1] \
                    or file_signature(self._full(path)) != plan.read_as[path]:
                del changes[path]
                plan.held[path] = Why(Hold.CHANGED_WHILE_COMMITTED,
                                      "rewritten in the clock tick it was read in")

    def _hashed(self, paths: list[str], write: bool) -> list[str]:
        """``hash-object [-w] --stdin-paths``: each file's object id (a commit's few files
        written by the long-lived git)."""
        written = self._blob_writer.write(paths) if write else None
        if written is not None:
            return written
        out = self._git("hash-object", *(("-w",) if write else ()), "--stdin-paths",
                        input=b"".join(os.fsencode(path) + b"\n" for path in paths))
        oids = out.decode().split()
        if len(oids) != len(paths):
            raise GitError(("hash-object",), 128, f"{len(oids)} ids for {len(paths)} paths")
        return oids

    def _absent(self, oids: list[str]) -> set[str]:
        """Which of ``oids`` the repository lacks (one ``cat-file --batch-check``)."""
        out = self._git("cat-file", "--batch-check=%(objectname)",
                        input="".join(oid + "\n" for oid in oids).encode())
        return {line.split()[0] for line in out.decode().splitlines()
                if line.endswith(" missing")}

    def _write_packed(self, paths: list[str]) -> dict[str, str]:
        """Write the files of ``paths`` as objects in one pack, not one loose object each
        (git's bulk check-in, as `git add` does for large files: ``update-index --add``
        on a private index, every file over ``core.bigFileThreshold`` = 1 byte), and
        return their ids as that index recorded them."""
        index = os.path.join(self.config.git_dir, f"{PACKED_INDEX_PREFIX}{os.getpid()}-"
                                                  f"{threading.get_ident()}.index")
        env = {"GIT_INDEX_FILE": index}
        try:
            # a split index would leave shared index files behind; no fsmonitor for it
            self._git("-c", "core.bigFileThreshold=1", "-c", "core.splitIndex=false",
                      "-c", "core.fsmonitor=false", "update-index", "--add", "-z", "--stdin",
                      input=b"".join(os.fsencode(path) + b"\0" for path in paths), env=env)
            listed = self._git("ls-files", "--stage", "-z", env=env)
        finally:
            _remove_packed_index(index)
        self.packs_written += 1
        written = {}
        for record in listed.split(b"\0"):
            info, tab, name = record.partition(b"\t")
            if tab:
                written[os.fsdecode(name)] = info.split(b" ")[1].decode()
        return written

    def write_objects(self, paths: list[str]) -> int:
        """Write the blobs of ``paths`` now, ahead of the commit that will take them (one
        git process; safe beside a running commit, which touches no object it writes).
        That commit then finds each object written and only hashes its file again.  Best
        effort: only regular files of at most ``max_analyze_bytes``, and a failure (a file
        gone meanwhile) leaves the rest to the commit.  How many were asked for."""
        regular = []
        for path in paths:
            try:
                info = os.lstat(self._full(path))
            except OSError:
                continue
            if stat.S_ISREG(info.st_mode) and info.st_size <= self.config.max_analyze_bytes:
                regular.append(path)
        if len(regular) >= PACKED_WRITE_MIN:
            try:
                self._write_packed(regular)
            except GitError as exc:
                log.debug("objects written ahead stopped early: %s", exc)
        elif regular:
            code, _, stderr = self.git.result(
                "hash-object", "-w", "--stdin-paths",
                input=b"".join(os.fsencode(path) + b"\n" for path in regular))
            if code != 0:
                log.debug("objects written ahead stopped early: %s", stderr.strip()[:200])
        return len(regular)

    def _hash_contents(self, contents: list[bytes], filters_for: str | None = None,
                       object_type: str = "blob") -> list[str]:
        """Object ids of literal contents (link targets, a name hash-object cannot read a
        line of, trees), written through files in the runtime directory: one process for
        all."""
        made = []
        self.config.runtime_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            for number, data in enumerate(contents):
                temp = self.config.runtime_dir / f".object-{os.getpid()}-{number}"
                # readable by git when it runs as the tree's owner
                fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
                made.append(temp)
                with os.fdopen(fd, "wb") as handle:
                    handle.write(data)
            request = b"".join(os.fsencode(str(temp)) + b"\n" for temp in made)
            writer = self._writers.get(object_type)
            if writer is not None and len(request) <= LineChild.MAX_REQUEST:
                try:
                    return [line.decode() for line in writer.ask(request, len(made))]
                except GitError as exc:
                    log.info("%s writer: %s; writing with a git of its own", object_type, exc)
            options = ["--path", filters_for] if filters_for else ["--no-filters"]
            stored = _STORED if object_type in ("tree", "commit") else ()
            out = self._git(*stored, "hash-object", "-w", "-t", object_type, *options,
                            "--stdin-paths", input=request)
        finally:
            for temp in made:
                temp.unlink(missing_ok=True)
        return out.decode().split()

    def _new_entries(self, plan: Plan) -> dict[str, tuple[int, str] | None]:
        """Each staged path's new entry (mode, oid), None for a deletion; paths git cannot
        read are held (plan.held) and left out."""
        present = [path for path in plan.stage if plan.where[path] == PRESENT]
        rechecked_here = set(plan.read_as)
        plan.reading()
        changes: dict[str, tuple[int, str] | None] = {
            path: None for path in plan.stage + plan.remove if plan.where[path] != PRESENT}
        changes.update(plan.gitlinks)
        modes, regular, links = {}, [], []
        executable_bit = self.content.executable_bit()
        for path in present:
            info = plan.looked[path]  # as planned and gated; hashed only if still so
            if stat.S_ISLNK(info.st_mode):
                try:
                    links.append((path, os.fsencode(os.readlink(self._full(path)))))
                except OSError:  # gone or replaced since it was planned: look again later
                    plan.held[path] = Why(Hold.CHANGED_WHILE_COMMITTED,
                                          "replaced while it was read")
                continue
            mode = git_mode(info.st_mode)
            plan.largest = max(plan.largest, info.st_size)
            head = plan.head_entries.get(path)
            if not executable_bit:  # core.fileMode = false: git keeps the recorded mode
                mode = head.mode if head is not None and head.is_blob \
                    and head.mode != MODE_SYMLINK else 0o100644
            modes[path] = mode
            regular.append(path)
            plan.read_as.setdefault(path, signature_of(info))
        oids: dict[str, str] = {}
        plain = [path for path in regular if "\n" not in path]  # hash-object reads lines
        if plain:
            self._hash_present(plain, oids, plan.held, changes)
        for path in regular:
            if "\n" in path:
                with open(self.root / path, "rb") as handle:
                    shown = os.fsencode(path).decode("utf-8", "surrogateescape")
                    oids[path] = self._hash_contents([handle.read()], shown if shown.isprintable()
                                                     else None)[0]
        for path in regular:
            if path not in oids:
                continue
            if file_signature(self._full(path)) != plan.read_as[path]:
                plan.held[path] = Why(Hold.CHANGED_WHILE_COMMITTED,
                                      "rewritten after it was judged" if path in rechecked_here
                                      else "rewritten while it was read")
                continue
            changes[path] = (modes[path], oids[path])
        self._hold_racy_rewrites(plan, changes)
        if links:
            for (path, _), oid in zip(links, self._hash_contents([t for _, t in links])):
                changes[path] = (MODE_SYMLINK, oid)
        return changes

    def _compose(self, head_tree: str | None, changes: dict[str, tuple[int, str] | None],
                 hex_length: int) -> tuple[str | None, list[tuple[str, dict]], list]:
        """The new root tree with ``changes`` applied to ``head_tree``: (its oid or None
        when empty, the new trees children first, the changes as diff records)."""
        root: dict[bytes, list] = {}  # name -> [entry or _KEEP, children]
        for path, entry in changes.items():
            node_children = root
            parts = os.fsencode(path).split(b"/")
            for part in parts[:-1]:
                node_children = node_children.setdefault(part, [_KEEP, {}])[1]
            node_children.setdefault(parts[-1], [_KEEP, {}])[0] = entry
        walker = self.heads.walker
        trees: list[tuple[str, dict, bytes]] = []
        records: list = []

        def report(old, new, path: bytes) -> None:
            old_blob = old is not None and old[0] != MODE_TREE
            new_blob = new is not None and new[0] != MODE_TREE
            if old is not None and old[0] == MODE_TREE and not (new and new[0] == MODE_TREE):
                for below, mode, oid in walker.blobs(old[1], path + b"/"):
                    records.append((mode, oid, 0, _ZERO_OID, "D", os.fsdecode(below)))
            if old_blob and new_blob:
                if old != new:
                    kind = "T" if (old[0] == MODE_SYMLINK) != (new[0] == MODE_SYMLINK) \
                        or (old[0] == MODE_GITLINK) != (new[0] == MODE_GITLINK) else "M"
                    records.append((old[0], old[1], new[0], new[1], kind, os.fsdecode(path)))
            elif old_blob:
                records.append((old[0], old[1], 0, _ZERO_OID, "D", os.fsdecode(path)))
            elif new_blob:
                records.append((0, _ZERO_OID, new[0], new[1], "A", os.fsdecode(path)))

        def write(children: dict, base: str | None, prefix: bytes) -> str | None:
            entries = dict(walker.tree(base)) if base else {}
            changed: dict[bytes, tuple] = {}  # name -> (old entry, new entry)
            for name, (entry, below) in children.items():
                path = prefix + name
                old = entries.get(name)
                if entry is not _KEEP and entry is not None:
                    new = entry  # a file or a link here; anything below it is gone
                elif entry is None and not below:
                    new = None
                else:
                    keep_below = entry is _KEEP and old is not None and old[0] == MODE_TREE
                    sub = write(below, old[1] if keep_below else None, path + b"/")
                    new = (MODE_TREE, sub) if sub else None
                report(old, new, path)
                changed[name] = (old, new)
                if new is None:
                    entries.pop(name, None)
                else:
                    entries[name] = new
            if not entries:
                return None
            oid, body = self._tree_object(base, entries, changed, hex_length)
            trees.append((oid, entries, body))
            return oid

        return write(root, head_tree, b""), trees, records

    def _tree_object(self, base: str | None, entries: dict, changed: dict,
                     hex_length: int) -> tuple[str, bytes]:
        """(oid, body) of a composed tree; a large one is kept (:class:`TreeLayout`) and
        patched in place when only object ids of its entries change."""
        layout = self._layouts.get(base) if base else None
        if layout is not None and all(old is not None and new is not None and old[0] == new[0]
                                      for old, new in changed.values()):
            layout = layout.patched({name: new[1] for name, (_, new) in changed.items()})
        else:
            layout = TreeLayout.of(entries)
        oid = _tree_id(layout.body, hex_length)
        if len(entries) < LARGE_TREE:
            return oid, layout.body
        self._layouts[oid] = layout
        while len(self._layouts) > LAYOUTS_KEPT:
            self._layouts.popitem(last=False)
        return oid, layout.body

    def _write_trees(self, trees: list[tuple[str, dict, bytes]]) -> None:
        """Write the composed trees with one ``hash-object -t tree``, as the bodies made
        here (a large directory's tree is not formatted as text for ``mktree`` to parse
        back); git's ids must be the ones computed here.  Their entries are not looked up
        (thousands in a large directory): they come from HEAD's trees or were just
        written."""
        written = self._hash_contents([body for _, _, body in trees], object_type="tree")
        expected = [oid for oid, _, _ in trees]
        if written != expected:
            raise GitError(("hash-object", "-t", "tree"), 128,
                           f"tree ids differ: git wrote {written[:3]}, expected {expected[:3]}")
        for oid, entries, _ in trees:
            self.heads.walker.remember(oid, entries)

    def _build_commit(self, head: tuple[str, str] | None, plan: Plan,
                      result: CommitResult) -> tuple[str | None, list]:
        """The commit of the plan on top of ``head`` (None when nothing differs) and its
        changes as diff records."""
        changes = self._new_entries(plan)
        if self.blob_gate is not None:
            blobs = [(path, entry[1]) for path, entry in changes.items()
                     if entry is not None and entry[0] != MODE_GITLINK]
            gated = self.blob_gate(blobs) if blobs else {}
            plan.held.update(gated)
            for path in gated:  # kept out: HEAD's entry stays in the composed tree
                del changes[path]
        self._keep_submodule_change_whole(plan, changes)
        result.held_paths.update(plan.held)
        if not changes:
            return None, []
        hex_length = len(head[1]) if head else len(next(
            (entry[1] for entry in changes.values() if entry), "0" * 40))
        tree, trees, records = self._compose(head[1] if head else None, changes, hex_length)
        if not records:
            return None, []  # every path as HEAD has it: nothing to commit
        if trees:
            self._write_trees(trees)
        tree = tree or EMPTY_TREE
        if tree == EMPTY_TREE:
            # the empty tree must exist to be committed
            self._hash_contents([b""], object_type="tree")
        statuses = {path: status for _, _, _, _, status, path in records}
        result.statuses = statuses
        result.paths = tuple(statuses)
        message = self.message(statuses)
        parents = ["-p", head[0]] if head else []
        new = self._commit_tree(tree, parents, message.encode("utf-8", "surrogateescape"))
        return new, records

    @staticmethod
    def message(statuses: dict) -> str:
        lines = [f"gitsieve: sync {len(statuses)} file(s)", ""]
        for path, status in statuses.items():
            shown = path.replace("\\", "\\\\").replace("\n", "\\n")
            lines.append(f"{status}\t{shown}")
        lines += ["", TRAILER, ""]
        return "\n".join(lines)

    # ----- the user's index ----------------------------------------------------------------
    def _after_commit(self, plan: Plan, records: list, new: str, attempts: int) -> None:
        """Write the committed entries into the user's index where it still holds HEAD's
        version from before the commit.  When the index is as the plan read it (the usual
        case), what it holds is known without reading it again; otherwise
        :meth:`refresh_user_index` checks against the index now."""
        for old_mode, old_oid, _, _, _, path in records:
            self.index_refresh_pending.setdefault(path, (old_mode, old_oid))
        key, staged = self._staged or ((None, None), {})
        signature = file_signature(self.user_index)
        committed = {record[5] for record in records}
        if signature is None or key[0] != signature or set(self.index_refresh_pending) != \
                committed or (self.config.git_dir / "index.lock").exists():
            self.refresh_user_index(attempts)
            return
        lines = [_index_line(new_mode, new_oid, path)
                 for old_mode, old_oid, new_mode, new_oid, _, path in records
                 if _same_entry(staged.get(path, (old_mode, old_oid)), (old_mode, old_oid))]
        try:
            if lines:
                self._git("update-index", "-z", "--index-info", input=b"".join(lines))
        except GitError as exc:
            if not _is_transient(exc):
                log.warning("commit made but the index was not refreshed yet: %s", exc)
                return
            self.refresh_user_index(attempts)
            return
        self.index_refresh_pending.clear()
        if plan.largest >= _REFRESH_AFTER_BYTES:
            # Entries written from HEAD carry no stat data: every `git status` would hash
            # this file again until the person's own git refreshes the index.  A refresh
            # (content-checked: a newer version stays a change) records it once.
            code, _, stderr = self.git.result("update-index", "-q", "--refresh")
            if code not in (0, 1):
                log.info("index not refreshed after committing a large file: %s",
                         stderr.strip())
        # The index now agrees with the new HEAD on the committed paths; the rest of what
        # the person staged is unchanged.
        self._index_rewritten_here(self.index_basis)
        self.index_basis = file_signature(self.user_index)
        self._staged = ((self.index_basis, new),
                        {path: entry for path, entry in staged.items() if path not in committed})

    def refresh_user_index(self, attempts: int | None = None) -> bool:
        """Write HEAD's entries into the user's index for the committed paths whose entry
        is still the one from before the commit (an entry the person changed meanwhile is
        theirs and stays); True when no refresh is left pending.  ``attempts=0``: one try,
        the rest kept for later."""
        if not self.index_refresh_pending:
            return True
        attempts = self.config.retry_attempts if attempts is None else attempts
        attempt = 0
        while True:
            try:
                self._refresh_once()
                return True
            except GitError as exc:
                if not _is_transient(exc) or attempt >= attempts:
                    # The commit stands; until refreshed the index shows the paths as staged
                    # changes, so they stay pending and a later call tries again.
                    log.warning("commit made but the index was not refreshed yet: %s", exc)
                    return False
                attempt += 1
                self.retries += 1
                self.sleep(self.config.retry_backoff * attempt)

    def _refresh_once(self) -> None:
        if (self.config.git_dir / "index.lock").exists():
            raise GitError(("update-index",), 128, "index.lock exists")
        # The index against HEAD now: a pending path not listed already agrees with HEAD;
        # one listed with the entry from before the commit gets HEAD's (the diff's old
        # side); any other entry is the person's own.
        out = self._git("--no-optional-locks", "diff-index", "--cached",
                        "--ita-invisible-in-index", "--no-renames", "--raw", "-z",
                        self.head() or EMPTY_TREE)
        lines = []
        for head_mode, head_oid, index_mode, index_oid, _, path in _raw_diff(out):
            before = self.index_refresh_pending.get(path)
            if before is None or not _same_entry((index_mode, index_oid), before):
                continue
            lines.append(_index_line(head_mode, head_oid, path))
        if lines:
            self._git("update-index", "-z", "--index-info", input=b"".join(lines))
        self.index_refresh_pending.clear()

    # ----- push and history ---------------------------------------------------------------
    def upstream_state(self, branch: str, parent: str | None = None) -> UpstreamState:
        """HEAD against ``[git] remote``/``branch``'s remote-tracking branch: whether it is
        ahead, and whether history the remote has (once this branch's own) was rewritten.
        ``parent``: a commit known to be in HEAD (the one a sync commit was made on)."""
        tracking = f"refs/remotes/{self.config.remote}/{branch}"
        try:
            head, upstream = self.heads.reader.objects(
                [b"HEAD", tracking.encode()], keep=lambda kind, size: False)
        except HeadReadError as exc:
            raise TransientError(f"cannot read HEAD and {tracking}: {exc}") from None
        head = head.oid if head is not None and head.kind == "commit" else None
        upstream = upstream.oid if upstream is not None and upstream.kind == "commit" else None
        if head is None or upstream == head:
            return UpstreamState(head, upstream)
        if upstream is None or upstream == parent or self._is_ancestor(upstream, head):
            return UpstreamState(head, upstream, ahead=True)
        # The upstream is not in HEAD: the remote moved (a fetch brought commits this
        # branch never had), or this branch dropped commits it had pushed.
        lost = set(self._text("rev-list", upstream, f"^{head}").split())
        if lost & self._once_on_branch(branch):
            shown = f"{self.config.remote}/{branch}"
            return UpstreamState(head, upstream, rewritten=(
                f"HEAD no longer contains {shown} ({upstream[:10]}), which this branch "
                f"pushed (an amend or a rebase?); gitsieve never forces a push: publish it "
                f"yourself (git push --force-with-lease) or bring {shown} back into HEAD"))
        return UpstreamState(head, upstream, ahead=not self._is_ancestor(head, upstream))

    def _once_on_branch(self, branch: str) -> set[str]:
        """Every commit the branch's reflog says it pointed at."""
        code, out, _ = self.git.result("log", "-g", "--format=%H", f"refs/heads/{branch}",
                                       "--")
        return set(out.decode().split()) if code == 0 else set()

    def _gate(self, state: UpstreamState) -> str:
        """'' when the push gate lets the push go, else why not: "push held: ..." (a hold,
        :attr:`push_hold`) or "push failed: ..." when the gate could not tell (nothing goes
        out unchecked; retried with the push back-off)."""
        if self.push_gate is None:
            return ""
        try:
            why = self.push_gate(state.range)
        except Exception as exc:  # the gate could not read what it must check
            log.warning("push not checked, so not pushed: %s", exc)
            return f"push failed: checking what it would send: {exc}"
        if why is None:
            return ""
        return self._hold_push(why)

    def _hold_push(self, why: Why) -> str:
        """Hold pushes for ``why`` (logged when the reason changes, not at every retry; the
        executor warns)."""
        if why != self.push_hold:
            log.info("push held: %s", why.text)
        self.push_hold = why
        return f"push held: {why.text}"

    def _missing_remote(self) -> Why | None:
        """Why pushes cannot go when ``[git] remote`` names no remote of the repository."""
        code, out, _ = self.git.result("remote")
        if code != 0 or self.config.remote in os.fsdecode(out).split():
            return None  # there, or git cannot tell: the push's own error stands
        return Why(Hold.NO_REMOTE, f"remote {self.config.remote!r} is not configured in "
                                   f"this repository")

    def _push_then_signal(self, branch: str | None, parent: str | None) -> tuple[bool, str]:
        try:
            return self.push(branch, parent)
        finally:
            self._push_under_way.set()  # no push after all, or it is done

    def push(self, branch: str | None = None, parent: str | None = None) -> tuple[bool, str]:
        """Push the branch to the configured remote, never forced; (pushed, error).
        ``pushed`` is also true when the remote already had everything
        (:attr:`last_push_sent` tells the two apart); :attr:`push_hold` says why a push
        was not made."""
        self.last_push_sent = False
        if not self.config.remote:
            return False, ""
        branch = branch or self.current_branch()
        if branch is None:
            return False, "push: HEAD is detached"
        try:
            state = self.upstream_state(branch, parent)
        except (GitError, TransientError) as exc:
            return False, f"push failed: {exc}"
        if state.rewritten:
            if state.rewritten != self.history_rewritten:
                log.warning("push stopped: %s", state.rewritten)
            self.history_rewritten = state.rewritten
            self.push_hold = Why(Hold.HISTORY_REWRITTEN, state.rewritten)
            return False, f"push stopped: {self.push_hold.text}"
        if self.history_rewritten:
            log.info("HEAD contains the upstream again: pushing resumes")
            self.history_rewritten = ""
        if not state.ahead:
            self.push_hold, self.push_conflict = None, ""
            return True, ""
        ref = f"refs/heads/{branch}"
        # Stopped by a conflict, no push is tried until the remote's commits integrate (the
        # user resolved it, dropped a blocking edit, or the remote moved again).
        rejected = bool(self.push_conflict)
        if not rejected:
            if self.push_hold is not None and self.push_hold.hold == Hold.NO_REMOTE:
                missing = self._missing_remote()  # one look, not a push bound to fail
                if missing is not None:
                    return False, self._hold_push(missing)
            gated = self._gate(state)
            if gated:
                return False, gated
            self._push_under_way.set()
            try:
                self._push_ref(ref)
            except GitError as exc:
                if not any(marker in exc.stderr for marker in _REJECTED_MARKERS):
                    missing = self._missing_remote()
                    if missing is not None:
                        return False, self._hold_push(missing)
                    # the executor says so, once per state: not at every retry
                    log.info("push failed; the commit stays local: %s", exc)
                    self.push_hold = None
                    return False, f"push failed: {exc}"
                log.info("push rejected: the remote moved; integrating its commits (%s): %s",
                         self.config.pull_strategy, exc.stderr.strip()[:500])
                rejected = True
        if rejected:
            # integrating touches the index: never while the commit's own update of it runs
            self._index_written.wait()
            try:
                self.integrate_remote(branch)
                gated = self._gate(self.upstream_state(branch))
                if gated:
                    return False, gated
                self._push_ref(ref)
            except PushConflict as conflict:
                if str(conflict) != self.push_conflict:  # once, not at every re-check
                    log.warning("push stopped: %s; commits continue locally", conflict)
                self.push_conflict = str(conflict)
                self.push_hold = Why(Hold.PUSH_STOPPED, self.push_conflict)
                return False, f"push stopped: {conflict}"
            except SigningFailed as exc:
                return False, self._hold_push(Why(Hold.SIGNING_FAILED, str(exc)))
            except (GitError, TransientError) as exc:
                log.info("push failed after integrating the remote: %s", exc)
                self.push_hold = None
                return False, f"push failed: {exc}"
        self.push_conflict = ""
        self.push_hold = None
        self.last_push_sent = True
        return True, ""

    def _push_ref(self, ref: str) -> None:
        # Not --porcelain: the ref table, "[rejected]" included, then goes to stderr, which
        # GitError keeps (advice hints may be switched off, the table may not).
        self._git("push", "-q", self.config.remote, f"{ref}:{ref}", timeout=_PUSH_TIMEOUT)

    # ----- integrating a remote that moved --------------------------------------------------
    def _is_ancestor(self, ancestor: str, descendant: str) -> bool:
        try:
            self._git("merge-base", "--is-ancestor", ancestor, descendant)
        except GitError as exc:
            if exc.exit_code == 1:
                return False
            raise
        return True

    def integrate_remote(self, branch: str) -> str:
        """Fetch the remote branch and put the local commits on top of it (or merge);
        return the new HEAD.  Raises PushConflict (nothing changed) when it needs a
        person, TransientError on a lock or race, GitError otherwise."""
        self._finish_rollback()
        remote, ref = self.config.remote, f"refs/heads/{branch}"
        tracking = f"refs/remotes/{remote}/{branch}"
        self._git("fetch", "-q", "--no-tags", remote, f"+{ref}:{tracking}",
                  timeout=_PUSH_TIMEOUT)
        upstream = self._text("rev-parse", "--verify", "-q", f"{tracking}^{{commit}}")
        old = self.head()
        if old is None or self._is_ancestor(upstream, old):
            return old or upstream  # nothing to integrate: the push can go again
        try:
            self._text("merge-base", old, upstream)
        except GitError:
            raise PushConflict("the remote branch shares no history with the local one") \
                from None
        if self._is_ancestor(old, upstream):
            new = upstream  # nothing local to keep: a fast-forward
        elif self.config.pull_strategy == "merge" or self._text(
                "rev-list", "--min-parents=2", old, f"^{upstream}"):
            new = self._merge_commit(old, upstream, tracking)  # merges replay badly
        else:
            new = self._replay(old, upstream)
        self._move_head(old, new)
        self.integrations += 1
        return new

    def _merged_tree(self, ours: str, theirs: str) -> str:
        """Tree of the three-way merge of two commits (base: their merge base)."""
        # On a conflict (exit 1) the conflicted paths are on stdout.
        code, stdout, stderr = self.git.result("merge-tree", "--write-tree", "--name-only",
                                               "--no-messages", ours, theirs)
        lines = os.fsdecode(stdout).splitlines()
        if code == 1 and lines:
            shown = ", ".join(sorted(set(line for line in lines[1:] if line))[:10])
            raise PushConflict(f"conflict with the remote on {shown or 'unknown paths'}")
        if code != 0 or not lines:
            raise GitError(["merge-tree", "--write-tree", ours, theirs], code, stderr)
        return lines[0]

    def _replay(self, old: str, upstream: str) -> str:
        """Cherry-pick each local commit (old ^upstream) onto upstream, keeping authors."""
        commits = self._text("rev-list", "--reverse", "--topo-order", old,
                             f"^{upstream}").split()
        current = upstream
        identity = self._identity_env()
        for commit in commits:
            parent = self._text("rev-parse", f"{commit}^")
            # A throwaway commit with current's tree whose only parent is the picked
            # commit's parent: its merge base with the picked commit is exactly that
            # parent, which makes merge-tree (no --merge-base before git 2.40) a cherry-pick.
            base = self._text("commit-tree", f"{current}^{{tree}}", "-p", parent, "-m",
                              "gitsieve: replay base", env=identity)
            tree = self._merged_tree(base, commit)
            name, email, date = self._text(
                "log", "-1", "--format=%an%x00%ae%x00%at %ad", "--date=format:%z",
                commit).split("\0")
            seconds, zone = date.split()
            message = self._git("log", "-1", "--format=%B", commit)
            author = {"GIT_AUTHOR_NAME": name, "GIT_AUTHOR_EMAIL": email,
                      "GIT_AUTHOR_DATE": f"@{seconds} {zone}"}
            current = self._commit_tree(tree, ["-p", current], message, env=author)
        return current

    def _merge_commit(self, old: str, upstream: str, tracking: str) -> str:
        tree = self._merged_tree(old, upstream)
        message = f"gitsieve: merge {tracking}\n\n{TRAILER}\n"
        return self._commit_tree(tree, ["-p", old, "-p", upstream], message.encode())

    def _move_head(self, old: str, new: str) -> None:
        """Move index, work tree and HEAD from ``old`` to ``new``; all or nothing."""
        if (self.config.git_dir / "index.lock").exists():
            raise TransientError("index.lock exists: another git command is running")
        try:
            self._two_way_merge(old, new)
        except GitError as exc:
            if _is_transient(exc):
                raise TransientError(str(exc)) from None
            # Two-way merge refused (a local modification would be overwritten): it
            # changed nothing.
            detail = " ".join(exc.stderr.split())[:300]
            raise PushConflict(f"the remote changes files modified here: {detail}") from None
        try:
            self._git("update-ref", "-m", "gitsieve: integrate remote", "HEAD", new, old)
        except GitError as exc:
            if self.head() == new:
                return  # done, though update-ref died before saying so
            # HEAD did not move to ``new`` (a user commit moved it, or git failed): put
            # index and work tree back where HEAD is.
            self.unfinished_rollback = new
            self._finish_rollback()
            raise TransientError(f"HEAD not moved while integrating the remote: {exc}") \
                from None

    def _two_way_merge(self, old: str, new: str) -> None:
        """Index and work tree from ``old`` to ``new`` (``read-tree -m -u``), refusing to
        overwrite a local modification.  The index's stat data is refreshed first: the
        entries a commit writes carry none, and read-tree takes a file without it for a
        modified one.  The refresh compares content, so a real modification stays one."""
        self._git("update-index", "-q", "--refresh")
        self._git("read-tree", "-m", "-u", old, new)

    def _finish_rollback(self) -> None:
        """Move index and work tree from an integration's commit back to HEAD (after its
        update-ref failed); TransientError while that cannot be done yet."""
        if self.unfinished_rollback is None:
            return
        try:
            self._two_way_merge(self.unfinished_rollback, self.head() or "")
        except GitError as exc:
            log.error("index and work tree still hold the remote's version (%s); retrying: "
                      "%s", self.unfinished_rollback[:10], exc)
            raise TransientError(f"rolling back an interrupted integration: {exc}") from None
        self.unfinished_rollback = None

    def past_commit_times(self) -> list[float]:
        """Commit times of gitsieve's own commits within the last 24 hours."""
        try:
            out = self._text("log", "--since=24.hours", "--format=%ct",
                             f"--grep=^{TRAILER}")
        except GitError:  # unborn branch: no history yet
            return []
        return [float(line) for line in out.split() if line.isdigit()]
