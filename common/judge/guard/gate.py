"""The guard where the committer meets git: the exact blobs of a sync commit, and the
blobs of a push.

- :meth:`CommitGuard.before_staging`: the size guard, on the work tree's files before
  ``git add`` (a 60 MB file held for its size is never hashed into the object store).
- :meth:`CommitGuard.staged`: the secret scan of the blobs staged in the temporary index
  (the exact bytes about to be committed, after git's clean filters), each read once
  through one ``git cat-file --batch`` and cached by blob id.
- :meth:`CommitGuard.push_gate`: before every push, the blobs reachable from the commits
  to push that no ``refs/remotes/<remote>/*`` ref reaches (``git rev-list --objects``),
  and the paths those commits add or change (``git log --raw``: a path is pushed too):
  gitsieve's own commits and the person's own; what the remote already has, a pull or a
  merge included, is never scanned again. A finding stops the push and names the commit.

Git is reached only through the gateway; paths go on stdin, never on git's command line.
"""
from __future__ import annotations

import itertools
import logging
import os
import re
import shlex
import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from gitsieve.common.config.loader import Config
from gitsieve.common.git.gateway import Git, GitChild, GitError, KeptChild, nul_joined, split_nul
from gitsieve.common.git.head import common_dir, file_signature
from gitsieve.common.judge.guard.allowlist import Allowlist, AllowlistError
from gitsieve.common.judge.guard.findings import git_blob_id
from gitsieve.common.judge.guard.judge import MIB, GuardJudge, GuardSettings, describe
from gitsieve.common.judge.guard.scanner import known_rule_ids
from gitsieve.common.judge.guard.store import ReleaseStore, installation_key
from gitsieve.common.protocol.states import Hold, Why

log = logging.getLogger(__name__)

BLOB_TIMEOUT = 30.0  # seconds cat-file may take to answer before it is taken for stuck
_WINDOW = 64  # blob requests written ahead of the answers (64 short lines: never blocks)
_READ = 256 * 1024
# Unpushed commits searched for the one that brought a held blob (only on a finding).
_COMMITS_SEARCHED = 500
_CLEARED_KEPT = 64  # commits remembered as cleared for pushing
_OTHERS_NAMED = 20  # further held paths a push hold names (by path and rule)
_TIMINGS = 1000
_GITSIEVE_TRAILER = "Synced-by: gitsieve"
_GITLINK_MODE = b"160000"  # a submodule's commit, not a blob
# A git-lfs pointer (the blob committed for a path .gitattributes routes to LFS): git-lfs
# uploads the object it names at the push, so that object's bytes are what is scanned.
_LFS_POINTER = re.compile(rb"version https://git-lfs\.github\.com/spec/v1\n"
                          rb"oid sha256:([0-9a-f]{64})\nsize [0-9]+\n")
_LFS_POINTER_MAX = 1024


def _blob_error(reason: str) -> GitError:
    """The guard could not read what it must check: a git failure like any other, so the
    commit fails (and is retried after a back-off) instead of passing unchecked."""
    return GitError(("cat-file", "--batch"), -1, reason)


def settings_of(config: Config) -> GuardSettings:
    return GuardSettings(secrets=config.guard_secrets,
                         limit_bytes=int(config.max_new_file_mb * MIB),
                         inline_allow=config.inline_allow)


def allowlist_path(config: Config) -> Path | None:
    """The workspace's allowlist file, None when switched off; ValueError when the setting
    points outside the workspace."""
    setting = config.allowlist_file
    if not setting:
        return None
    relative = Path(setting)
    if relative.is_absolute() or ".." in relative.parts or relative.parts[:1] == (".git",):
        raise ValueError(f"[guard] allowlist_file {setting!r}: must be a path inside the "
                         "workspace, relative to it (not in .git)")
    return config.workspace / relative


def read_allowlist(path: Path, workspace: Path) -> Allowlist:
    """The allowlist in ``path`` (empty when there is none); AllowlistError names every bad
    line as ``file:line: reason``."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return Allowlist()
    except (OSError, UnicodeDecodeError) as exc:
        raise AllowlistError([f"{path}: cannot read: {exc}"]) from None
    return Allowlist.parse(text, source=os.path.relpath(path, workspace),
                           known_rule_ids=known_rule_ids())


class BlobReader(KeptChild):
    """Blob contents through one persistent ``git cat-file --batch``, streamed in pieces,
    with requests written ahead of the answers (one round trip per window, not per blob);
    ended after a rest by ``close_if_idle``."""

    def __init__(self, git: Git, timeout: float = BLOB_TIMEOUT):
        self.git, self.timeout = git, timeout
        self.child: GitChild | None = None
        self._buffer = bytearray()
        self._unanswered = 0  # requests written whose answers were not read to the end

    def _running(self) -> GitChild:
        self.used = time.monotonic()
        if self._unanswered:
            self.close()  # a reader left early: the answers are out of step, start again
        if self.child is None or not self.child.alive():
            self.close()
            self.child = self.git.spawn("cat-file", "--batch")
        return self.child

    def close(self) -> None:
        if self.child is not None:
            self.child.close()
            self.child = None
        self._buffer.clear()
        self._unanswered = 0

    def blobs(self, oids: list[str]) -> Iterator[tuple[str, Iterator[bytes]]]:
        """(oid, its content in pieces) for each of ``oids``, in order. Each piece iterator
        must be used up before the next blob is asked for. GitError when git fails."""
        if not oids:
            return
        child = self._running()
        sent = 0
        for index, oid in enumerate(oids):
            if sent < len(oids) and sent - index < _WINDOW // 2:
                # the next half window in one write: one system call for many requests
                batch = oids[sent:index + _WINDOW]
                self._guarded(child.write, b"".join(o.encode() + b"\n" for o in batch))
                self._unanswered += len(batch)
                sent += len(batch)
            yield oid, self._pieces(oid)

    def _guarded(self, operation, *args):
        try:
            return operation(*args)
        except (OSError, TimeoutError) as exc:
            self.close()
            raise _blob_error(str(exc)) from None

    def _fill(self, deadline: float) -> None:
        chunk = self._guarded(self.child.read, deadline, _READ)
        if not chunk:
            self.close()
            raise _blob_error("git cat-file exited")
        self._buffer += chunk

    def _pieces(self, oid: str) -> Iterator[bytes]:
        deadline = time.monotonic() + self.timeout
        while (end := self._buffer.find(b"\n")) < 0:
            self._fill(deadline)
        header = bytes(self._buffer[:end]).split(b" ")
        del self._buffer[:end + 1]
        if len(header) != 3 or header[1] != b"blob" or not header[2].isdigit():
            self.close()
            raise _blob_error(f"blob {oid}: answered {b' '.join(header)[:100]!r}")
        remaining = int(header[2])
        while remaining > 0:
            if not self._buffer:
                self._fill(deadline)
                deadline = time.monotonic() + self.timeout  # progress: a big blob streams on
            piece = bytes(self._buffer[:remaining])
            del self._buffer[:len(piece)]
            remaining -= len(piece)
            yield piece
        while not self._buffer:
            self._fill(deadline)
        if self._buffer[:1] != b"\n":
            self.close()
            raise _blob_error("git cat-file lost its framing")
        del self._buffer[:1]
        self._unanswered -= 1


@dataclass(frozen=True)
class PushRange:
    """What a push would send: ``head`` and what it reaches that no ``refs/remotes/<remote>/*``
    ref reaches."""

    head: str
    remote: str


class CommitGuard:
    """The committer's guard hooks (see the module doc), for one workspace."""

    def __init__(self, config: Config, git: Git):
        self.config, self.git = config, git
        self.judge = GuardJudge(installation_key(config.runtime_dir),
                                settings_of(config))
        self.releases = ReleaseStore(config.runtime_dir)
        self.reader = BlobReader(git)
        self.allowlist_file = allowlist_path(config)
        self._allowlist_signature: tuple | None = None
        self._releases_signature: tuple | None = None
        self.allowlist_problem = ""  # why the allowlist file is not in force ('' when it is)
        # Seconds each check took (the last _TIMINGS), for status and `gitsieve bench`.
        self.timings: dict[str, deque] = {name: deque(maxlen=_TIMINGS)
                                          for name in ("size", "staged", "push")}
        # Commits whose history up to the remote is known clean: commit -> the release and
        # allowlist signatures it was judged under (a changed file judges again).
        self.cleared: OrderedDict[str, tuple] = OrderedDict()
        self.push_checks_skipped = 0
        self.refresh()

    def close(self) -> None:
        self.reader.close()

    def close_idle(self, now: float) -> None:
        """End the cat-file child after a rest (``now``: monotonic); never during a scan."""
        self.reader.close_if_idle(now)

    # --- what the person decided -------------------------------------------------------------

    def refresh(self) -> bool:
        """Re-read the allowlist file and the release records if they changed; True when
        either did (a held path may then be committed, a held push may go)."""
        changed = False
        signature = self.releases.signature()
        if signature != self._releases_signature:
            self._releases_signature = signature
            released = frozenset(self.releases.records())
            if released != self.judge.released:
                self.judge.set_released(released)
                changed = True
        signature = file_signature(self.allowlist_file)
        if signature != self._allowlist_signature:
            self._allowlist_signature = signature
            changed = True
            try:
                allowlist = (read_allowlist(self.allowlist_file, self.config.workspace)
                             if self.allowlist_file else Allowlist())
            except AllowlistError as exc:
                # The last good allowlist stays in force: a typo releases nothing new.
                self.allowlist_problem = "; ".join(exc.problems)
                log.error("allowlist not applied (the previous one stays): %s",
                          self.allowlist_problem)
            else:
                self.judge.set_allowlist(allowlist)
                self.allowlist_problem = ""
        return changed

    # --- before staging: size ----------------------------------------------------------------

    def before_staging(self, sizes: dict[str, int], head: str | None) -> dict[str, Why]:
        """Paths too large to commit, of ``sizes`` (path -> bytes, as the committer found
        the file; it commits nothing else): new ones over the limit, tracked ones grown past
        it, except what ``.gitattributes`` routes to git-lfs and what was released."""
        if not self.judge.settings.limit_bytes:
            return {}
        with _Timed(self.timings["size"]):
            return self._oversized(sizes, head)

    def _oversized(self, sizes: dict[str, int], head: str | None) -> dict[str, Why]:
        self.refresh()
        limit = self.judge.settings.limit_bytes
        large = {path: size for path, size in sizes.items() if size > limit}
        if not large:
            return {}
        routed = self._lfs_routed(list(large))
        head_sizes = self._head_sizes(head, list(large))
        held = {}
        for path, size in large.items():
            finding = self.judge.size_finding(path, size, head_sizes.get(path),
                                              path in routed)
            if finding is None:
                continue
            why = self.judge.size_verdict(finding, self._work_blob_id(path))
            if why is not None:
                held[path] = why
        return held

    def _lfs_routed(self, paths: list[str]) -> set[str]:
        """Those of ``paths`` git-lfs stores: .gitattributes routes them to the lfs filter,
        and that filter is configured (without git-lfs the whole file is committed)."""
        code, _, _ = self.git.result("config", "--get-regexp", r"^filter\.lfs\.(clean|process)$")
        if code != 0:
            return set()
        out = self.git.run("check-attr", "--stdin", "-z", "filter", input=nul_joined(paths))
        fields = split_nul(out)
        return {fields[i] for i in range(0, len(fields) - 2, 3) if fields[i + 2] == "lfs"}

    def _head_sizes(self, head: str | None, paths: list[str]) -> dict[str, int]:
        """HEAD's size of each path HEAD has (as a blob)."""
        asked = [path for path in paths if "\n" not in path]
        if head is None or not asked:
            return {}
        request = b"".join(head.encode() + b":" + os.fsencode(p) + b"\n" for p in asked)
        lines = self.git.run("cat-file", "--batch-check", input=request).splitlines()
        sizes = {}
        for path, line in zip(asked, lines):
            parts = line.split(b" ")
            if len(parts) == 3 and parts[1] == b"blob" and parts[2].isdigit():
                sizes[path] = int(parts[2])
        return sizes

    def _work_blob_id(self, path: str) -> str | None:
        """The blob id ``git add`` would give the file (clean filters applied), looked up
        only when releases exist; None for a name ``--stdin-paths`` cannot carry."""
        if not self.judge.released or "\n" in path:
            return None
        return self.git.text("hash-object", "--stdin-paths",
                             input=os.fsencode(path) + b"\n") or None

    # --- the blobs about to be committed: secrets -------------------------------------------

    def check_blobs(self, blobs: list[tuple[str, str]]) -> dict[str, Why]:
        """Paths whose blob about to be committed holds a secret (``blobs``: (path, blob
        id) as the committer hashed them: the exact bytes of the commit)."""
        if not self.judge.settings.secrets:
            return {}
        with _Timed(self.timings["staged"]):
            self.refresh()
            return self._judge_blobs(blobs)

    def signatures(self) -> tuple:
        """The release records' and the allowlist's file signatures (stat only, safe from
        another thread): when they change, held paths and a held push are worth a retry."""
        return self.releases.signature(), file_signature(self.allowlist_file)

    def _judge_blobs(self, blobs: list[tuple[str, str]]) -> dict[str, Why]:
        """{path: why} for the (path, blob id) pairs that hold; each blob not judged before
        is read once (per content profile) and scanned as it streams in."""
        to_read: dict[bytes, tuple[str, str]] = {}
        for path, oid in blobs:
            key = self.judge.cache_key(oid, path)
            if not self.judge.has(key):
                to_read.setdefault(key, (path, oid))
        reading = list(to_read.values())
        try:
            for (path, oid), (_, pieces) in zip(reading,
                                                self.reader.blobs([o for _, o in reading])):
                self.judge.findings(path, oid, self._content_of(pieces))
        except GitError:
            raise
        except Exception:
            self.reader.close()  # a scan failed mid-blob: the reader is out of step
            raise
        held = {}
        for path, oid in blobs:
            why = self.judge.secret_verdict(path, oid)
            if why is not None:
                held[path] = why
        return held

    def _content_of(self, pieces: Iterator[bytes]) -> Iterator[bytes]:
        """A blob's bytes to scan: those of the LFS object a pointer names, when this
        repository holds it (a pointer names content the push uploads; it holds none)."""
        first = next(pieces, b"")
        if len(first) > _LFS_POINTER_MAX or not first.startswith(b"version https://git-lfs"):
            return itertools.chain((first,), pieces)
        blob = first + b"".join(pieces)  # all of it read: the reader stays in step
        match = _LFS_POINTER.match(blob)
        if match is None:
            return iter((blob,))
        object_id = match.group(1).decode()
        stored = (Path(common_dir(os.fspath(self.config.git_dir))) / "lfs" / "objects"
                  / object_id[:2] / object_id[2:4] / object_id)
        try:
            source = open(stored, "rb")
        except OSError:  # not here (never cleaned here, or stored elsewhere)
            return iter((blob,))
        return _file_pieces(source)

    # --- before a push -----------------------------------------------------------------------

    def push_gate(self, commits: str) -> Why | None:
        """Why the push of ``commits`` (the committer's range: "UPSTREAM..HEAD" or "HEAD")
        must not happen: a held blob in a commit no remote-tracking ref of ``[git] remote``
        has. GitError when git cannot tell."""
        if not self.judge.settings.secrets:
            return None
        with _Timed(self.timings["push"]):
            return self._push_check(PushRange(commits.split("..")[-1], self.config.remote))

    def sync_commit_made(self, parent: str | None, commit: str) -> None:
        """The committer made ``commit`` on ``parent`` from blobs that all passed
        :meth:`check_blobs`: when ``parent`` was cleared for pushing, so is ``commit``, and
        its push needs no walk of history (on a 100k-file tree that walk was 42 ms of
        every edit's latency)."""
        basis = self.cleared.get(parent or "")
        if basis is not None and basis == self.signatures():
            self._clear(commit, basis)

    def _clear(self, commit: str, basis: tuple) -> None:
        self.cleared[commit] = basis
        self.cleared.move_to_end(commit)
        while len(self.cleared) > _CLEARED_KEPT:
            self.cleared.popitem(last=False)

    def _push_check(self, push) -> Why | None:
        self.refresh()
        basis = self.signatures()
        if self.cleared.get(push.head) == basis:
            self.push_checks_skipped += 1
            return None
        out = self.git.run("rev-list", "--objects", "--filter=object:type=blob",
                           push.head, "--not", f"--remotes={push.remote}")
        blobs = []
        for line in out.split(b"\n"):
            oid, _, path = line.partition(b" ")
            if path:
                blobs.append((os.fsdecode(path), oid.decode()))
        blobs.extend(self._paths_not_listed(push, {path for path, _ in blobs}))
        held = self._judge_blobs(blobs)
        if not held:
            self._clear(push.head, basis)
            return None
        return self._push_why(push, held, dict(blobs))

    def _paths_not_listed(self, push, listed: set[str]) -> list[tuple[str, str]]:
        """(path, blob id) of the files the commits to push add or change under a path
        rev-list did not name: it names each blob once, under one of its paths, and every
        path is pushed (an empty file named for a token, beside an empty __init__.py, was
        pushed).  Their content was listed under the other path: only the path is new."""
        out = self.git.run("log", "--raw", "--no-renames", "--no-abbrev", "-z", "--format=",
                           "--diff-filter=AMT", push.head, "--not", f"--remotes={push.remote}")
        found: dict[str, str] = {}
        for path, oid in changed_blobs(out):
            if path not in listed:
                found.setdefault(path, oid)
        return list(found.items())

    def _push_why(self, push, held: dict[str, Why], oids: dict[str, str]) -> Why:
        """The first held path in full, with its commit; the others by path and rule."""
        path, *others = sorted(held)
        findings = self._held_findings(path, oids[path])
        commit, ours = self._commit_bringing(push, oids[path], path)
        who = "gitsieve's sync commit" if ours else "your commit"
        release = f"gitsieve release {shlex.quote(path)}"
        remedy = (f"you run `{release}` to push it as it is" if ours else
                  "you remove it from that commit yourself (git commit --amend, git rebase "
                  f"-i) or run `{release}`")
        also = ""
        if others:
            named = [f"{other} ({self._held_findings(other, oids[other])[0].rule.value})"
                     for other in others[:_OTHERS_NAMED]]
            more = len(others) - len(named)
            also = f"; also held: {', '.join(named)}{f' and {more} more' if more else ''}"
        return Why(Hold.SECRET, f"in {who} {commit[:10]} (not pushed): {describe(findings)}"
                                f"{also}; nothing is pushed until {remedy}")

    def _held_findings(self, path: str, oid: str) -> list:
        return self.judge.held(path, oid, self.judge.findings(path, oid))

    def _commit_bringing(self, push, oid: str, path: str) -> tuple[str, bool]:
        """(the oldest unpushed commit whose changes add ``oid`` at ``path``, whether
        gitsieve made it)."""
        commits = self.git.text("rev-list", "--reverse", f"--max-count={_COMMITS_SEARCHED}",
                                push.head, "--not", f"--remotes={push.remote}").split()
        found = push.head
        for commit in commits:
            changed = self.git.run("diff-tree", "-r", "--root", "--raw", "--no-renames",
                                   "--no-commit-id", "-z", commit)
            if (path, oid) in changed_blobs(changed):
                found = commit
                break
        return found, _GITSIEVE_TRAILER in self.git.text("show", "-s", "--format=%B", found)

    def status(self) -> dict:
        timings = {}
        for name, window in self.timings.items():
            ordered = sorted(window)
            if ordered:
                timings[name] = {
                    "count": len(ordered),
                    "p50_ms": round(ordered[len(ordered) // 2] * 1000, 3),
                    "p99_ms": round(ordered[min(len(ordered) - 1,
                                                int(len(ordered) * 0.99))] * 1000, 3),
                    "total_s": round(sum(ordered), 3)}
        return {**self.judge.status(), "allowlist_problem": self.allowlist_problem,
                "releases": len(self.judge.released), "timings": timings,
                "push_checks_skipped": self.push_checks_skipped}


class _Timed:
    """Adds the seconds its block took to a window."""

    def __init__(self, window: deque):
        self.window = window

    def __enter__(self):
        self.started = time.perf_counter()

    def __exit__(self, *_exc):
        self.window.append(time.perf_counter() - self.started)


def changed_blobs(raw: bytes) -> Iterator[tuple[str, str]]:
    """(path, new blob id) of each change in ``git log/diff-tree --raw -z`` output, but
    a submodule's (``:old_mode new_mode old_id new_id status``, then the path)."""
    fields = iter(raw.split(b"\0"))
    for change in fields:
        path = next(fields, b"")
        parts = change.strip().split(b" ")
        if len(parts) == 5 and parts[0].startswith(b":") and parts[1] != _GITLINK_MODE:
            yield os.fsdecode(path), parts[3].decode()


def versions_to_release(config: Config, git: Git, path: str) -> dict[str, str]:
    """``{blob id: path}`` of every version of ``path`` gitsieve could commit or push: the
    work tree's file (as ``git add`` would store it) and the versions in commits the remote
    does not have yet (a person's own commit held at push time)."""
    versions: dict[str, str] = {}
    full = config.workspace / path
    if full.is_symlink():
        versions[git_blob_id(os.fsencode(os.readlink(full)))] = path
    elif full.is_file() and "\n" not in path:
        oid = git.text("hash-object", "--stdin-paths", input=os.fsencode(path) + b"\n")
        if oid:
            versions[oid] = path
    if config.remote and git.head() is not None:
        out = git.run("log", "--format=", "--raw", "-z", "--no-abbrev", "--no-renames",
                      "HEAD", "--not", f"--remotes={config.remote}")
        fields = out.split(b"\0")
        target = os.fsencode(path)
        for index, field in enumerate(fields[:-1]):
            if field.startswith(b":") and fields[index + 1] == target:
                meta = field[1:].split(b" ")
                if len(meta) == 5 and meta[4] != b"D":
                    versions.setdefault(meta[3].decode(), path)
    return versions


def _file_pieces(source) -> Iterator[bytes]:
    """The bytes of an open file, in pieces, the file closed at the end."""
    with source:
        while piece := source.read(4 * MIB):
            yield piece
