"""The content judge (L3): a change decided by what differs from HEAD.  Socket-free.

It reads the work tree's version (:func:`.worktree.read_work`: size-capped, never blocking
on a FIFO) and HEAD's (:class:`~gitsieve.common.git.catfile.HeadVersions`: one persistent
``cat-file --batch``), then applies :func:`.content.classify`.  A change L2 attributed to a
user process is only refused when identical to HEAD.  Files over ``[filter]
max_analyze_bytes`` are compared by size, then git object id.  A version that differs from
the last version judged USER (by any worker; USER steps carry its ``masked`` digest, which
the L3 actor learns from the debouncer's feed) only in volatile tokens is SYSTEM: that user
change is already being committed, and a timestamp rewrite judged while its commit is in
flight (HEAD not yet moved) must not make a second commit.

The executor's commit-time re-check calls :meth:`ContentJudge.still_a_change`: the same
reading, the same rules, one implementation.
"""
from __future__ import annotations

import hashlib
import logging
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


class ContentJudge:
    def __init__(self, config, git: Git | None = None,
                 on_error: Callable[[str], None] | None = None):
        self.config = config
        self.size_cap = config.max_analyze_bytes
        self.volatile = compile_volatile(config.text_volatile_patterns)
        self.head = HeadVersions(git or Git(config.workspace), config.git_dir, self.size_cap)
        # path -> (masked digest, sha1 of the exact bytes) of the last version judged USER
        self.user_versions: OrderedDict[str, tuple[str, str | None]] = OrderedDict()
        self.on_error = on_error or (lambda what: None)

    def verdict(self, path: str, user_writer: bool = False) -> tuple[ContentVerdict, WorkFile]:
        """The rules' verdict on ``path`` now, with the work-tree side it read."""
        work = read_work(self.config.workspace / path, self.size_cap)
        if work.problem:
            return ContentVerdict(USER, L3Reason.WORK_FILE_PROBLEM, work.problem), work
        try:
            head = self.head.get(path)
        except HeadReadError as exc:
            # git cannot answer: commit (git itself decides what differs), say why.
            self.on_error(f"cat-file: {exc}")
            log.warning("cannot read HEAD's %s: %s", path, exc)
            return ContentVerdict(USER, L3Reason.CONTENT_CHANGED), work
        if work.data is None and not work.large_path:
            # deleted: the rules only ask whether HEAD had the file, not for its bytes
            return classify(path, None if head is None else b"", None), work
        if work.large_path or (head is not None and head.data is None):
            return large_file_verdict(head, work), work
        return classify(path, head.data if head else None, work.data,
                        self.config.volatile_keys, self.size_cap, self.volatile,
                        user_writer), work

    def judge(self, change: Change) -> ContentStep:
        user_writer = written_by_user(change.trail)
        verdict, work = self.verdict(change.path, user_writer)
        digest = exact = None
        if verdict.verdict == Content.USER and change.kind != ChangeKind.DELETE:
            digest = masked_digest(change.path, work.data, self.config.volatile_keys,
                                   self.volatile, self.size_cap)
            exact = hashlib.sha1(work.data).hexdigest() if digest is not None else None
            known_masked, known_exact = self.user_versions.get(change.path, (None, None))
            # The same bytes again are the same user change reported again (the first
            # report may have died with a restarted actor): still the user's.
            if not user_writer and digest is not None and known_masked == digest and (
                    known_exact != exact):
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

    def still_a_change(self, path: str) -> ContentVerdict:
        """The commit-time re-check of a change judged by content alone."""
        return self.verdict(path)[0]

    def status(self) -> dict:
        return self.head.status()

    def close(self) -> None:
        self.head.close()
