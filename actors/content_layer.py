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
Runs scaled: ``python -m gitsieve.actors.content_layer --instance N``.

HEAD's bytes come from one persistent ``git cat-file --batch`` child per worker (restarted
if it dies, killed at shutdown); the rules themselves are :func:`common.content.classify`.
"""
from __future__ import annotations

from collections import OrderedDict

import zmq

from gitsieve.common.actor.base import Actor, main
from gitsieve.common.git import gateway as gitutil
from gitsieve.common.git.catfile import CatFileBatch, HeadBlob, HeadReadError
from gitsieve.common.git.head import head_token
from gitsieve.common.judge.content import (
    SYSTEM,
    USER,
    ContentVerdict,
    classify,
    compile_volatile,
    l1_action,
    masked_digest,
)
from gitsieve.common.judge.rules import editor_junk
from gitsieve.common.judge.worktree import WorkFile, large_file_verdict, read_work
from gitsieve.common.protocol.messages import Change, CommitReport, Decision

# HEAD versions kept between changes (system churn hits the same few paths over and over).
CACHE_MAX_ENTRIES = 2048
CACHE_MAX_BYTES = 64 * 1024 * 1024


# Last USER versions remembered (masked digests), for paths written by both sides.
USER_VERSIONS_KEPT = 10_000


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
