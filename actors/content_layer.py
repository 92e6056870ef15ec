"""Content layer (L3): decides a change by what differs from HEAD.

Sockets:
  - DEALER connect endpoints.stage_out("l3")  Changes from the router (passed on by L2);
                                              Ready (credit) out, see common.actor
  - PUSH  connect  endpoints.decisions        one Decision per Change
  - SUB   connect  endpoints.commits          CommitReport: HEAD moved, drop the HEAD cache
  - SUB   connect  endpoints.feed             Decision (debouncer's live feed): the versions
                                              other workers judged USER
Messages in: Change, CommitReport, Decision (feed).  Out: Decision with ``commit = verdict == "USER"`` and an
L3 trail step ``{"layer": "L3", "verdict": "USER"|"SYSTEM"|"UNCHANGED", "reason"}``.
Editor/backup junk is refused whatever L1 said; a change L2 attributed to a user process is
only refused when identical to HEAD; otherwise :func:`common.content.classify` rules apply
(volatile JSON keys, timestamp-only text, append-only logs, binary by hash, size cap
``[filter] max_analyze_bytes``).  A version that differs from the last version judged USER
(by any worker; USER steps carry its ``masked`` digest) only in volatile tokens is SYSTEM:
that user change is already being committed, and a timestamp rewrite judged while its
commit is in flight (HEAD not yet moved) must not make a second commit.
Runs scaled: ``python -m actors.content_layer --instance N``.

HEAD's bytes come from one persistent ``git cat-file --batch`` child per worker (restarted
if it dies, killed at shutdown); the rules themselves are :func:`common.content.classify`.
"""
from __future__ import annotations

import os
import select
import stat
import subprocess
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import zmq

from common import gitutil
from common.actor import Actor, main
from common.content import (SIZE_CAP, SYSTEM, UNCHANGED, USER, ContentVerdict,
                            classify, compile_volatile, git_blob_id, l1_action,
                            masked_digest)
from common.messages import Change, CommitReport, Decision
from common.rules import editor_junk

# A cat-file answer taking longer than this means git is stuck: kill it, use the fallback.
CAT_FILE_TIMEOUT = 10.0
_READ_CHUNK = 256 * 1024
# HEAD versions kept between changes (system churn hits the same few paths over and over).
CACHE_MAX_ENTRIES = 2048
CACHE_MAX_BYTES = 64 * 1024 * 1024


# Last USER versions remembered (masked digests), for paths written by both sides.
USER_VERSIONS_KEPT = 10_000


class HeadReadError(Exception):
    """The cat-file child failed to answer; the caller falls back to a one-shot git call."""


@dataclass(frozen=True)
class HeadBlob:
    """HEAD's version of a path.  ``data`` is None when the blob exceeds the size cap;
    ``oid`` is None when it came from the one-shot fallback."""

    oid: str | None
    size: int
    data: bytes | None


class CatFileBatch:
    """A persistent ``git cat-file --batch`` child answering ``HEAD:<path>`` requests."""

    def __init__(self, root: Path, size_cap: int = SIZE_CAP,
                 timeout: float = CAT_FILE_TIMEOUT):
        self.root, self.size_cap, self.timeout = root, size_cap, timeout
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self._buffer = bytearray()

    def _ensure_running(self) -> subprocess.Popen:
        if self.proc is None or self.proc.poll() is not None:
            self.close()
            self.proc = subprocess.Popen(
                ["git", "cat-file", "--batch"], cwd=self.root, env=gitutil.git_env(),
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0)
            self._buffer.clear()
            self.starts += 1
        return self.proc

    def close(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for pipe in (self.proc.stdin, self.proc.stdout):
            pipe.close()
        self.proc = None

    def _fill(self, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        ready, _, _ = select.select([self.proc.stdout], [], [], max(0.0, remaining))
        if not ready:
            raise HeadReadError(f"git cat-file gave no answer within {self.timeout}s")
        chunk = os.read(self.proc.stdout.fileno(), _READ_CHUNK)
        if not chunk:
            raise HeadReadError("git cat-file exited")
        self._buffer += chunk

    def _read_line(self, deadline: float) -> bytes:
        while (end := self._buffer.find(b"\n")) < 0:
            self._fill(deadline)
        line = bytes(self._buffer[:end])
        del self._buffer[:end + 1]
        return line

    def _read_exact(self, size: int, deadline: float, keep: bool) -> bytes | None:
        """``size`` bytes of a blob; when not kept they are consumed without being stored."""
        kept = bytearray()
        while size > 0:
            if not self._buffer:
                self._fill(deadline)
            taken = self._buffer[:size]
            del self._buffer[:size]
            size -= len(taken)
            if keep:
                kept += taken
        return bytes(kept) if keep else None

    def read(self, path: str) -> HeadBlob | None:
        """HEAD's blob at ``path`` (None: not in HEAD, or not a file there)."""
        try:
            return self._request(path)
        except (HeadReadError, OSError) as exc:
            # A dead or stuck child: restart it once before giving up on this request.
            self.close()
            try:
                return self._request(path)
            except (HeadReadError, OSError) as again:
                self.close()
                raise HeadReadError(f"{exc}; after restart: {again}") from None

    def _request(self, path: str) -> HeadBlob | None:
        proc = self._ensure_running()
        deadline = time.monotonic() + self.timeout
        request = f"HEAD:{path}\n".encode("utf-8", "surrogateescape")
        while request:  # a pipe may take a long name in parts
            request = request[os.write(proc.stdin.fileno(), request):]
        header = self._read_line(deadline)
        if header.endswith(b" missing") or header.endswith(b" ambiguous"):
            return None
        parts = header.split(b" ")
        if len(parts) != 3 or not parts[2].isdigit():
            raise HeadReadError(f"unexpected cat-file header {header[:200]!r}")
        oid, kind, size = parts[0].decode(), parts[1], int(parts[2])
        keep = kind == b"blob" and size <= self.size_cap
        data = self._read_exact(size, deadline, keep)
        if self._read_exact(1, deadline, True) != b"\n":
            raise HeadReadError("cat-file output lost its framing")
        if kind != b"blob":  # a directory (tree) in HEAD: no file version there
            return None
        return HeadBlob(oid, size, data)


def head_token(git_dir: Path) -> tuple:
    """Cheap fingerprint of where HEAD points: changes whenever a commit moves it."""
    try:
        head = (git_dir / "HEAD").read_text()
        commondir = git_dir / "commondir"
        # a linked worktree keeps its branch refs in the common dir
        common = ((git_dir / commondir.read_text().strip()).resolve()
                  if commondir.exists() else git_dir)
    except OSError as exc:  # mid-rewrite by git: a token that matches nothing cached
        return ("unreadable", str(exc), time.monotonic())
    parts: list = [head]
    if head.startswith("ref: "):
        ref = head[5:].strip()
        for candidate in (common / ref, common / "packed-refs"):
            try:
                info = candidate.stat()
                parts.append((info.st_ino, info.st_mtime_ns, info.st_size))
            except OSError:  # no loose ref / no packed-refs file: absence is part of the token
                parts.append(None)
    return tuple(parts)


@dataclass(frozen=True)
class WorkFile:
    """The work tree's side: bytes (None: deleted), or a reason it cannot be read."""

    data: bytes | None
    size: int = 0
    problem: str = ""
    large_path: str = ""  # set instead of data for files over the size cap


def read_work(abs_path: Path, size_cap: int = SIZE_CAP) -> WorkFile:
    try:
        info = os.lstat(abs_path)
    except (FileNotFoundError, NotADirectoryError):
        return WorkFile(None)
    except OSError as exc:
        return WorkFile(None, problem=f"cannot stat: {exc.strerror or exc}")
    if stat.S_ISLNK(info.st_mode):  # git stores a symlink as a blob of its target
        try:
            target = os.fsencode(os.readlink(abs_path))
        except FileNotFoundError:
            return WorkFile(None)
        except OSError as exc:  # replaced by a non-link since lstat, or unreadable
            return WorkFile(None, problem=f"unreadable link: {exc.strerror or exc}")
        return WorkFile(target, len(target))
    if stat.S_ISDIR(info.st_mode):
        return WorkFile(None, problem="is a directory now")
    if not stat.S_ISREG(info.st_mode):  # never open a fifo or device: it could block
        return WorkFile(None, problem="not a regular file")
    if info.st_size > size_cap:
        return WorkFile(None, info.st_size, large_path=str(abs_path))
    try:
        # O_NONBLOCK|O_NOFOLLOW: if the path was swapped for a fifo or link since lstat,
        # fail or return at once instead of blocking the worker.
        fd = os.open(abs_path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        return WorkFile(None)
    except OSError as exc:
        return WorkFile(None, problem=f"unreadable: {exc.strerror or exc}")
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return WorkFile(None, problem="not a regular file")
        try:
            data = handle.read()
        except OSError as exc:
            return WorkFile(None, problem=f"unreadable: {exc.strerror or exc}")
    return WorkFile(data, len(data))


def large_file_verdict(head: HeadBlob | None, work: WorkFile) -> ContentVerdict:
    """A change where either side exceeds the size cap: sizes, then git object ids."""
    if head is None:
        return ContentVerdict(USER, "new file")
    if head.size != work.size:
        return ContentVerdict(USER, f"content changed (large file: {head.size} -> "
                              f"{work.size} bytes)")
    if head.oid is None or not work.large_path:
        return ContentVerdict(USER, "content changed (large file, not compared)")
    try:
        same = git_blob_id(work.large_path, len(head.oid)) == head.oid
    except OSError as exc:
        return ContentVerdict(USER, f"large file unreadable: {exc.strerror or exc}")
    if same:
        return ContentVerdict(UNCHANGED, "identical to HEAD (large file, same object id)")
    return ContentVerdict(USER, "content changed (large file, object id differs)")


def written_by_user(change: Change) -> bool:
    """True when L2's step positively named a user process as the writer."""
    return any(isinstance(step, dict) and step.get("layer") == "L2"
               and step.get("verdict") == "USER" for step in change.trail)


class ContentLayer(Actor):
    name = "l3"

    def setup(self) -> None:
        endpoints = self.config.endpoints
        self.size_cap = self.config.max_analyze_bytes
        self.volatile = compile_volatile(self.config.text_volatile_patterns)
        self.user_versions: OrderedDict[str, str] = OrderedDict()  # path -> masked digest
        self.last_work = WorkFile(None)  # the work-tree side of the latest judgement
        self.head_reader = CatFileBatch(self.config.workspace, self.size_cap)
        self.head_cache: OrderedDict[str, HeadBlob | None] = OrderedDict()
        self.head_cache_bytes = 0
        self.head_cache_token: tuple | None = None
        self.decisions = self.connect(zmq.PUSH, endpoints.decisions)
        self.commits = self.connect(zmq.SUB, endpoints.commits)
        self.changes = self.take_stage("l3", {Change: self.on_change})
        self.add_input(self.commits, {CommitReport: self.on_commit})
        self.feed = self.connect(zmq.SUB, endpoints.feed, hwm=10_000)
        self.add_input(self.feed, {Decision: self.on_feed})

    # ----- HEAD side --------------------------------------------------------------------
    def drop_head_cache(self) -> None:
        self.head_cache.clear()
        self.head_cache_bytes = 0

    def on_commit(self, report: CommitReport) -> None:
        self.stats["commit_reports"] += 1
        self.drop_head_cache()

    def head_version(self, path: str) -> HeadBlob | None:
        token = head_token(self.config.git_dir)
        if token != self.head_cache_token:  # HEAD moved (maybe by the user's own git)
            self.drop_head_cache()
            self.head_cache_token = token
        if path in self.head_cache:
            self.stats["head_cache_hits"] += 1
            self.head_cache.move_to_end(path)
            return self.head_cache[path]
        blob = self._read_head(path)
        self.head_cache[path] = blob
        self.head_cache_bytes += len(blob.data or b"") if blob else 0
        while (len(self.head_cache) > CACHE_MAX_ENTRIES
               or self.head_cache_bytes > CACHE_MAX_BYTES):
            _, evicted = self.head_cache.popitem(last=False)
            self.head_cache_bytes -= len(evicted.data or b"") if evicted else 0
        return blob

    def _read_head(self, path: str) -> HeadBlob | None:
        if "\n" not in path:  # --batch reads one name per line
            try:
                return self.head_reader.read(path)
            except HeadReadError as exc:
                self.record_error(f"cat-file: {exc}")
                self.log.warning("%s: cat-file failed (%s); one-shot git instead",
                                 self.actor_id, exc)
        self.stats["head_fallbacks"] += 1
        try:
            data = gitutil.run(self.config.workspace, "cat-file", "blob", f"HEAD:{path}")
        except gitutil.GitError as exc:
            # git says "does not exist" / "invalid object name" for paths not in HEAD
            self.log.debug("%s: %s not in HEAD: %s", self.actor_id, path, exc)
            return None
        return HeadBlob(None, len(data), data if len(data) <= self.size_cap else None)

    # ----- changes ----------------------------------------------------------------------
    def judge(self, path: str, user_writer: bool = False) -> ContentVerdict:
        """``user_writer``: L2 named a user process as the writer (only junk and
        identical-to-HEAD are refused then)."""
        junk = editor_junk(path)
        if junk:
            return ContentVerdict(SYSTEM, f"never committed: {junk}")
        work = self.last_work = read_work(self.config.workspace / path, self.size_cap)
        if work.problem:
            return ContentVerdict(USER, work.problem)
        head = self.head_version(path)
        if work.data is None and not work.large_path:
            # deleted: the rules only ask whether HEAD had the file, not for its bytes
            return classify(path, None if head is None else b"", None)
        if work.large_path or (head is not None and head.data is None):
            return large_file_verdict(head, work)
        return classify(path, head.data if head else None, work.data,
                        self.config.volatile_keys, self.size_cap, self.volatile,
                        user_writer)

    def on_feed(self, decision: Decision) -> None:
        for step in decision.trail:
            if (isinstance(step, dict) and step.get("layer") == "L3"
                    and step.get("verdict") == USER and isinstance(step.get("masked"), str)):
                self.note_user_version(decision.path, step["masked"])

    def note_user_version(self, path: str, digest: str) -> None:
        self.user_versions[path] = digest
        self.user_versions.move_to_end(path)
        while len(self.user_versions) > USER_VERSIONS_KEPT:
            self.user_versions.popitem(last=False)

    def on_change(self, change: Change) -> None:
        user_writer = written_by_user(change)
        verdict = self.judge(change.path, user_writer)
        digest = None
        if verdict.verdict == USER and change.kind != "delete":
            digest = masked_digest(change.path, self.last_work.data, self.config.volatile_keys,
                                   self.volatile, self.size_cap)
            if (digest is not None and not user_writer
                    and self.user_versions.get(change.path) == digest):
                verdict = ContentVerdict(SYSTEM, "only volatile tokens changed since the "
                                         "version already judged the user's")
            elif digest is not None:
                self.note_user_version(change.path, digest)
        self.stats[f"verdict_{verdict.verdict}"] += 1
        step = {"layer": "L3", "verdict": verdict.verdict, "reason": verdict.reason}
        if verdict.verdict == USER and digest is not None:
            step["masked"] = digest
        self.send(self.decisions, Decision(
            path=change.path, kind=change.kind, seq=change.seq, epoch=change.epoch,
            observed=change.observed, commit=verdict.commit, action=l1_action(change),
            trail=(*change.trail, step)))

    def extra_status(self) -> dict:
        return {**{key: count for key, count in self.stats.items() if key.startswith("verdict_")},
                "head_cache_entries": len(self.head_cache),
                "head_cache_hits": self.stats["head_cache_hits"],
                "head_fallbacks": self.stats["head_fallbacks"],
                "cat_file_starts": self.head_reader.starts,
                "commit_reports": self.stats["commit_reports"]}

    def shutdown(self) -> None:
        self.head_reader.close()


if __name__ == "__main__":
    raise SystemExit(main(ContentLayer))
