"""The content judge (L3): a change decided by what differs from HEAD.  Socket-free.

It reads the work tree's version (:func:`.worktree.read_work`: size-capped, never blocking
on a FIFO) and HEAD's (:class:`~gitsieve.common.git.catfile.HeadVersions`: one persistent
``cat-file --batch``), then applies :func:`.content.classify`.  A change L2 attributed to a
user process is only refused when identical to HEAD.  The mode counts as well as the
bytes: a file whose executable bit (``core.fileMode``) or type (file, symbolic link) differs
from HEAD's is a change even when its bytes are HEAD's.  Files over ``[filter]
max_analyze_bytes`` are compared by size, then git object id.  A version that differs from
the last version judged USER (by any worker; USER steps carry its ``masked`` digest, which
the L3 actor learns from the debouncer's feed) only in volatile tokens is SYSTEM: that user
change is already being committed, and a timestamp rewrite judged while its commit is in
flight (HEAD not yet moved) must not make a second commit.

The executor's commit-time re-check calls :meth:`ContentJudge.still_changes`: the same
reading, the same rules, one implementation, HEAD's versions of every path read in one
exchange.
"""
from __future__ import annotations

import hashlib
import logging
import os
from collections import OrderedDict
from typing import Callable

from gitsieve.common.git.catfile import HeadBlob, HeadReadError, HeadVersions
from gitsieve.common.git.gateway import Git
from gitsieve.common.judge.content import (
    UNCHANGED,
    USER,
    ContentVerdict,
    classify,
    compile_volatile,
    git_blob_id,
    masked_digest,
    mode_change,
)
from gitsieve.common.judge.worktree import WorkFile, read_work
from gitsieve.common.protocol.messages import Change
from gitsieve.common.protocol.states import ChangeKind, Content, L3Reason
from gitsieve.common.protocol.trail import ContentStep, written_by_user

log = logging.getLogger(__name__)

# Last USER versions remembered (masked digests), for paths written by both sides.
USER_VERSIONS_KEPT = 10_000


def large_file_verdict(head: HeadBlob | None, work: WorkFile) -> ContentVerdict:
    """A change where either side exceeds the size cap: sizes, then git object ids."""
    if head is None:
        return ContentVerdict(USER, L3Reason.NEW_FILE)
    if head.size != work.size:
        return ContentVerdict(USER, L3Reason.LARGE_FILE_CHANGED,
                              f"{head.size} -> {work.size} bytes")
    try:
        same = git_blob_id(work.large_path, len(head.oid)) == head.oid
    except OSError as exc:
        return ContentVerdict(USER, L3Reason.LARGE_FILE_UNREADABLE, exc.strerror or str(exc))
    if same:
        return ContentVerdict(UNCHANGED, L3Reason.LARGE_FILE_IDENTICAL)
    return ContentVerdict(USER, L3Reason.LARGE_FILE_CHANGED, "object id differs")


def remembered_version(step: ContentStep) -> bool:
    """A verdict whose version every L3 worker remembers (:meth:`ContentJudge.note_user_version`)."""
    return step.verdict == Content.USER and step.masked is not None


class ContentJudge:
    def __init__(self, config, git: Git | None = None,
                 on_error: Callable[[str], None] | None = None):
        self.config = config
        self.git = git or Git(config.workspace)
        self.size_cap = config.max_analyze_bytes
        self._root = str(config.workspace)
        self.volatile = compile_volatile(config.text_volatile_patterns)
        self.head = HeadVersions(self.git, config.git_dir, self.size_cap)
        # path -> (masked digest, sha1 of the exact bytes) of the last version judged USER
        self.user_versions: OrderedDict[str, tuple[str, str | None]] = OrderedDict()
        self.on_error = on_error or (lambda what: None)
        self._file_mode: bool | None = None  # core.fileMode, read when first needed

    def executable_bit(self) -> bool:
        """Whether git records the executable bit here (``core.fileMode``, default true)."""
        if self._file_mode is None:
            code, out, _ = self.git.result("config", "--bool", "core.fileMode")
            self._file_mode = not (code == 0 and out.strip() == b"false")
        return self._file_mode

    def verdict(self, path: str, user_writer: bool = False,
                head: HeadBlob | None | bool = False) -> tuple[ContentVerdict, WorkFile, str]:
        """The rules' verdict on ``path`` now, with the work-tree side it read and how the
        mode changed from HEAD's ('' when it did not).  ``head``: HEAD's blob when the
        caller read it already (False: read it here)."""
        work = read_work(os.path.join(self._root, path), self.size_cap)
        if work.problem:
            return ContentVerdict(USER, L3Reason.WORK_FILE_PROBLEM, work.problem), work, ""
        if head is False:
            try:
                head = self.head.get(path)
            except HeadReadError as exc:
                # git cannot answer: commit (git itself decides what differs), say why.
                self.on_error(f"cat-file: {exc}")
                log.warning("cannot read HEAD's %s: %s", path, exc)
                return ContentVerdict(USER, L3Reason.CONTENT_CHANGED), work, ""
        if work.data is None and not work.large_path:
            # deleted: the rules only ask whether HEAD had the file, not for its bytes
            return classify(path, None if head is None else b"", None), work, ""
        mode = ""
        if head is not None and head.mode != work.mode:
            mode = mode_change(head.mode, work.mode,
                               head.mode == 0o120000 or work.mode == 0o120000
                               or self.executable_bit())
        if work.large_path or (head is not None and head.data is None):
            found = large_file_verdict(head, work)
        else:
            found = classify(path, head.data if head else None, work.data,
                             self.config.volatile_keys, self.size_cap, self.volatile,
                             user_writer)
        if mode and found.verdict != Content.USER:
            # A pure mode change (chmod +x) is a change git records: commit it.
            found = ContentVerdict(USER, L3Reason.MODE_CHANGED, mode)
        return found, work, mode

    def judge(self, change: Change) -> ContentStep:
        user_writer = written_by_user(change.trail)
        verdict, work, mode = self.verdict(change.path, user_writer)
        digest = exact = None
        if verdict.verdict == Content.USER and change.kind != ChangeKind.DELETE:
            digest = masked_digest(change.path, work.data, self.config.volatile_keys,
                                   self.volatile, self.size_cap)
            exact = hashlib.sha1(work.data).hexdigest() if digest is not None else None
            known_masked, known_exact = self.user_versions.get(change.path, (None, None))
            # The same bytes again are the same user change reported again (the first
            # report may have died with a restarted actor): still the user's.
            if (not user_writer and not mode and digest is not None
                    and known_masked == digest and known_exact != exact):
                verdict = ContentVerdict(Content.SYSTEM, L3Reason.SAME_AS_USER_VERSION)
            elif digest is not None:
                self.note_user_version(change.path, digest, exact)
        user = verdict.verdict == Content.USER
        return ContentStep(verdict.verdict, verdict.reason, verdict.detail,
                           masked=digest if user else None, exact=exact if user else None)

    def note_user_version(self, path: str, digest: str, exact: str | None = None) -> None:
        self.user_versions[path] = (digest, exact)
        self.user_versions.move_to_end(path)
        while len(self.user_versions) > USER_VERSIONS_KEPT:
            self.user_versions.popitem(last=False)

    def still_changes(self, paths) -> dict[str, ContentVerdict]:
        """The commit-time re-check of many paths: HEAD's versions read in one exchange."""
        paths = list(dict.fromkeys(paths))
        try:
            heads = self.head.get_many(paths)
        except HeadReadError as exc:
            self.on_error(f"cat-file: {exc}")
            log.warning("cannot read HEAD's versions of %d paths: %s", len(paths), exc)
            return {path: ContentVerdict(USER, L3Reason.CONTENT_CHANGED) for path in paths}
        return {path: self.verdict(path, head=heads[path])[0] for path in paths}

    def status(self) -> dict:
        return self.head.status()

    def close(self) -> None:
        self.head.close()

    def close_idle(self, now: float) -> bool:
        """After a rest (``now``: monotonic): end the cat-file child and let go of HEAD's
        cached versions; whether a cache was let go."""
        return self.head.close_idle(now)
