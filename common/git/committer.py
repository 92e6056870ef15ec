"""Git commit and push mechanics used by the executor.

A sync commits exactly a given set of paths without disturbing the user's index: the tree
is built in a temporary index (``runtime_dir/sync.index``) read from HEAD, the commit is
made with ``commit-tree`` and installed with a compare-and-swap ``update-ref`` (a commit
the user made meanwhile makes it fail, and the sync is rebuilt on the new HEAD), and only
then are the committed paths reset in the user's real index.  Pushes are never forced.

When a push is rejected because the remote moved, the remote branch is fetched and the
local commits are replayed on it (``pull_strategy = "rebase"``) or merged with it
(``"merge"``) without touching unrelated working files, since the work tree is nearly
always dirty: trees come from ``git merge-tree --write-tree`` and ``commit-tree``, the
index and work tree move from the old HEAD to the new one with ``git read-tree -m -u``
(a two-way merge that keeps local modifications and changes nothing when one would be
overwritten), and HEAD moves with a compare-and-swap ``update-ref``.  A conflict changes
nothing at all: the local commits stay, :attr:`Committer.push_conflict` says why, and the
caller stops pushing until a later attempt integrates cleanly.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

from gitsieve.common.config.loader import Config
from gitsieve.common.git.gateway import Git, GitError, nul_joined
from gitsieve.common.judge.content_judge import ContentJudge
from gitsieve.common.protocol.states import Why, render

log = logging.getLogger(__name__)

TRAILER = "Synced-by: gitsieve"
FALLBACK_NAME = "gitsieve"
FALLBACK_EMAIL = "gitsieve@localhost"
EMPTY_TREE = "4b825dc642cb6eb9a060e54bf8d69288fbee4904"
# git's words for a lock someone else holds: worth waiting for, not a real failure.
_TRANSIENT_MARKERS = ("index.lock", "File exists", "Unable to create", "cannot lock ref",
                      "timed out")
_CAS_ROUNDS = 5  # rebuilds on a HEAD that moved under us before giving up for this attempt
# Only the network has a deadline (see gateway.Git: sh polls while one is set).
_IDENTITY_TTL = 60.0
_PUSH_TIMEOUT = 120.0


class TransientError(Exception):
    """A lock or race that is expected to clear; the operation is retried."""


class PushConflict(Exception):
    """The remote's changes cannot be integrated without a person: nothing was changed."""


# git's words when a push is refused because the remote has commits we lack.
_REJECTED_MARKERS = ("[rejected]", "non-fast-forward", "fetch first", "Updates were rejected")


@dataclass
class CommitResult:
    commit: str | None = None
    pushed: bool = False
    error: str = ""
    held: str = ""  # why nothing was attempted (branch rule); paths stay held
    paths: tuple[str, ...] = ()  # the paths the commit contains
    dropped: tuple[str, ...] = ()  # asked-for paths not committable (ignored, vanished)
    retries: int = 0
    statuses: dict = field(default_factory=dict)  # path -> status letter
    transient: bool = False  # the error is a lock or race: retry after a back-off
    # asked-for paths kept out of the commit, each with its own reason (see CommitGate)
    held_paths: dict[str, Why] = field(default_factory=dict)


# ----- hooks: per-path holds and the push gate --------------------------------------------
# The guard (common/judge/guard/gate.py) plugs in here; the committer knows nothing of
# secrets or sizes, only that a hook may keep a path out of a commit, or stop a push.


@dataclass(frozen=True)
class StagedEntry:
    """One path of a sync commit as staged in the temporary index (``diff-index --raw``)."""

    path: str
    status: str  # A, M, T or D
    old_mode: str
    new_mode: str
    old_oid: str
    new_oid: str


@dataclass(frozen=True)
class PushRange:
    """What a push would send: ``head`` and every commit it reaches that no
    ``refs/remotes/<remote>/*`` ref reaches."""

    head: str
    remote: str
    branch: str


class CommitGate(Protocol):
    def before_staging(self, paths: list[str], head: str | None) -> dict[str, Why]:
        """Paths to keep out of the commit before they are staged."""

    def staged(self, entries: list[StagedEntry]) -> dict[str, Why]:
        """Paths to keep out, judged on the blobs staged for them."""


def _is_transient(exc: GitError) -> bool:
    return any(marker in exc.stderr for marker in _TRANSIENT_MARKERS)


def _safe_relative(path: str) -> bool:
    """A workspace-relative path that cannot reach outside the work tree or into .git."""
    if not path or path.startswith("/") or "\0" in path:
        return False
    parts = path.split("/")
    return not any(part in ("", ".", "..") for part in parts) and parts[0] != ".git"


class Committer:
    def __init__(self, config: Config, sleep: Callable[[float], None] = time.sleep,
                 git: Git | None = None, content: ContentJudge | None = None):
        self.config = config
        self.root = config.workspace
        self.git = git or Git(config.workspace)
        # the content layer's judge: re-checks content-only verdicts, knows HEAD's blobs
        self.content = content or ContentJudge(config, self.git)
        self.sleep = sleep
        self.temp_index = config.runtime_dir / "sync.index"
        self.retries = 0  # total over this object's life, for status
        self.rechecked_dropped = 0  # paths dropped at commit time by the content re-check
        self._identity: tuple[float, dict] | None = None  # (when read, fallback env)
        self.push_conflict = ""  # why the remote cannot be integrated ('' when it can)
        # An integration whose update-ref failed left index and work tree at this commit
        # and could not put them back yet: nothing else happens until that is done.
        self.unfinished_rollback: str | None = None
        self.integrations = 0  # times the remote's commits were integrated before a push
        # Committed paths whose entries in the user's index still show the old content
        # (index.lock was busy): refreshed on a later call of refresh_user_index().
        self.index_refresh_pending: set[str] = set()
        # Hooks (see CommitGate): None means every committable path goes in, every push goes.
        self.commit_gate: CommitGate | None = None
        self.push_gate: Callable[[PushRange], Why | None] | None = None
        self.push_held: Why | None = None  # why the push gate stopped the last push

    # ----- small git helpers ------------------------------------------------------------
    def _git(self, *args, input: bytes | None = None, temp_index: bool = False,
             env: dict | None = None, timeout: float | None = None) -> bytes:
        extra = dict(env or {})
        if temp_index:
            extra["GIT_INDEX_FILE"] = str(self.temp_index)
        return self.git.run(*args, input=input, env=extra, timeout=timeout)

    def _text(self, *args, **kwargs) -> str:
        return os.fsdecode(self._git(*args, **kwargs)).strip()

    def head(self) -> str | None:
        """HEAD's commit, None on an unborn branch."""
        try:
            return self._text("rev-parse", "--verify", "-q", "HEAD") or None
        except GitError:
            return None

    def current_branch(self) -> str | None:
        """The checked-out branch name, or None when HEAD is detached."""
        try:
            ref = self._text("symbolic-ref", "-q", "HEAD")
        except GitError:
            return None
        return ref[len("refs/heads/"):] if ref.startswith("refs/heads/") else None

    def branch_hold_reason(self) -> tuple[str | None, str]:
        """(branch, '') when commits are allowed, else (branch, reason to hold)."""
        branch = self.current_branch()
        if branch is None:
            return None, "HEAD is detached"
        if self.config.branch and branch != self.config.branch:
            return branch, f"on branch {branch!r}, configured for {self.config.branch!r}"
        return branch, ""

    def _identity_env(self) -> dict:
        """Fallback identity, only for what the repository does not configure.

        Cached for ``_IDENTITY_TTL`` s: two git calls per commit cost ~20 ms through sh,
        and the user's identity changes rarely."""
        now = time.monotonic()
        if self._identity is not None and now - self._identity[0] < _IDENTITY_TTL:
            return self._identity[1]
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
        self._identity = (now, env)
        return env

    def _in_head(self, head: str | None, paths: list[str]) -> set[str]:
        """The subset of ``paths`` HEAD has (read through cat-file --batch: names need not
        be UTF-8, and none goes on a command line)."""
        if head is None:
            return set()
        return {path for path in paths if self.content.head.get(path) is not None}

    def committable(self, paths, head: str | None,
                    recheck: set[str] | frozenset = frozenset()) -> tuple[list[str], list[str]]:
        """Split ``paths`` into (to commit, dropped): ignored, unsafe, directories, and
        paths that neither exist nor are tracked (a temp file renamed away) are dropped, and
        so are ``recheck`` paths whose content now differs from HEAD only in volatile data."""
        wanted, dropped = [], []
        for path in dict.fromkeys(paths):
            full = self.root / path
            if not _safe_relative(path) or (full.is_dir() and not full.is_symlink()):
                dropped.append(path)
            else:
                wanted.append(path)
        ignored = self.git.ignored(wanted)
        wanted = [p for p in wanted if p not in ignored]
        missing = [p for p in wanted if not os.path.lexists(self.root / p)]
        tracked_missing = self._in_head(head, missing)
        gone = {p for p in missing if p not in tracked_missing}
        dropped += sorted(ignored) + sorted(gone)
        wanted = [p for p in wanted if p not in gone]
        stale = {p for p in wanted if p in recheck and not self._still_a_change(p)}
        dropped += sorted(stale)
        return [p for p in wanted if p not in stale], dropped

    def _still_a_change(self, path: str) -> bool:
        """Whether the content rules still call ``path`` a change worth committing."""
        verdict = self.content.still_a_change(path)
        if not verdict.commit:
            self.rechecked_dropped += 1
            log.info("not committing %s: %s (re-checked against HEAD)", path,
                     render(verdict.reason, verdict.detail))
        return verdict.commit

    # ----- the commit ---------------------------------------------------------------------
    def commit(self, paths, push: bool = True, attempts: int | None = None,
               recheck: set[str] | frozenset = frozenset()) -> CommitResult:
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
                self._commit_once(list(paths), result, attempts, recheck)
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
        if result.held:
            return result
        if result.commit and push and self.config.remote:
            result.pushed, result.error = self.push(branch)
        return result

    def _commit_once(self, paths: list[str], result: CommitResult, attempts: int,
                     recheck: set[str] | frozenset = frozenset()) -> None:
        if (self.config.git_dir / "index.lock").exists():
            raise TransientError("index.lock exists: another git command is running")
        self._finish_rollback()
        self.config.runtime_dir.mkdir(parents=True, exist_ok=True)
        for stale in (self.temp_index, Path(f"{self.temp_index}.lock")):
            # Only this (single) executor uses the temp index, so any lock is a leftover.
            stale.unlink(missing_ok=True)
        for round_number in range(_CAS_ROUNDS):
            if round_number:
                # HEAD moved: the user may have switched branches, not only committed.
                result.held = self.branch_hold_reason()[1]
                if result.held:
                    return
            head = self.head()
            wanted, dropped = self.committable(paths, head, recheck)
            result.dropped = tuple(dropped)
            if not wanted:
                return
            new = self._build_commit(head, wanted, result)
            if new is None:
                return
            try:
                self._git("update-ref", "-m", "gitsieve: sync", "HEAD", new, head or "")
            except GitError:
                current = self.head()
                if current == new:
                    # update-ref did its work but died before saying so (killed, say).
                    log.info("update-ref reported failure but HEAD is the new commit")
                elif current != head:
                    log.info("HEAD moved during sync; rebuilding on the new HEAD")
                    continue
                else:
                    raise
            result.commit = new
            self.index_refresh_pending.update(result.paths)
            self.refresh_user_index(attempts)
            return
        raise TransientError("HEAD kept moving during the sync")

    def _build_commit(self, head: str | None, wanted: list[str],
                      result: CommitResult) -> str | None:
        """Stage ``wanted`` on top of ``head`` in the temp index; the new commit or None."""
        held: dict[str, Why] = {}
        if self.commit_gate is not None:
            held = self.commit_gate.before_staging(wanted, head)
            wanted = [path for path in wanted if path not in held]
        result.held_paths = held
        if head:
            self._git("read-tree", head, temp_index=True)
        else:
            self._git("read-tree", "--empty", temp_index=True)
        if wanted:
            self._git("add", "-A", "--pathspec-from-file=-", "--pathspec-file-nul",
                      input=nul_joined(wanted), temp_index=True)
        # One diff-index says what the commit would hold (none: nothing to commit) and
        # gives the commit gate the staged blob ids.
        entries = self._staged_entries(head)
        if self.commit_gate is not None and entries:
            held.update(self._hold_staged(entries))
            entries = [entry for entry in entries if entry.path not in held]
        if not entries:
            return None
        tree = self._text("write-tree", temp_index=True)
        statuses = {entry.path: entry.status for entry in entries}
        result.statuses = statuses
        result.paths = tuple(statuses)
        message = self.message(statuses)
        parents = ["-p", head] if head else []
        return self._text("commit-tree", tree, *parents, "-F", "-",
                          input=message.encode("utf-8", "surrogateescape"),
                          env=self._identity_env())

    def _staged_entries(self, head: str | None) -> list[StagedEntry]:
        """How the temporary index differs from ``head``, path by path."""
        out = self._git("diff-index", "--cached", "--raw", "-z", "--no-renames",
                        head or EMPTY_TREE, temp_index=True)
        fields = out.split(b"\0")
        entries = []
        for meta, path in zip(fields[0::2], fields[1::2]):
            if not meta.startswith(b":"):
                continue
            old_mode, new_mode, old_oid, new_oid, status = meta[1:].decode().split(" ")
            entries.append(StagedEntry(os.fsdecode(path), status[:1], old_mode, new_mode,
                                       old_oid, new_oid))
        return entries

    def _hold_staged(self, entries: list[StagedEntry]) -> dict[str, Why]:
        """Ask the commit gate about the staged blobs; put back HEAD's entry (or none) in
        the temporary index for each path it holds."""
        held = self.commit_gate.staged(entries)
        if held:
            restore = b"".join(
                (f"{e.old_mode} {e.old_oid}\t" if e.old_mode != "000000"
                 else f"0 {'0' * len(e.old_oid)}\t").encode() + os.fsencode(e.path) + b"\0"
                for e in entries if e.path in held)
            self._git("update-index", "-z", "--index-info", input=restore, temp_index=True)
        return held

    @staticmethod
    def message(statuses: dict) -> str:
        lines = [f"gitsieve: sync {len(statuses)} file(s)", ""]
        for path, status in statuses.items():
            shown = path.replace("\\", "\\\\").replace("\n", "\\n")
            lines.append(f"{status}\t{shown}")
        lines += ["", TRAILER, ""]
        return "\n".join(lines)

    def refresh_user_index(self, attempts: int | None = None) -> bool:
        """Make the user's index match HEAD for the committed paths only; True when no
        refresh is left pending.  ``attempts=0``: one try, the rest kept for later."""
        if not self.index_refresh_pending:
            return True
        attempts = self.config.retry_attempts if attempts is None else attempts
        paths = sorted(self.index_refresh_pending)
        attempt = 0
        while True:
            try:
                self._git("reset", "-q", "--pathspec-from-file=-", "--pathspec-file-nul",
                          input=nul_joined(paths))
                self.index_refresh_pending.difference_update(paths)
                return True
            except GitError as exc:
                if not _is_transient(exc) or attempt >= attempts:
                    # The commit stands; until refreshed the index shows the paths as staged
                    # changes, so the paths stay pending and a later call tries again.
                    log.warning("commit made but the index was not refreshed yet: %s", exc)
                    return False
                attempt += 1
                self.retries += 1
                self.sleep(self.config.retry_backoff * attempt)

    # ----- push and history ---------------------------------------------------------------
    def push(self, branch: str | None = None) -> tuple[bool, str]:
        """Push the branch to the configured remote, never forced; (pushed, error)."""
        if not self.config.remote:
            return False, ""
        branch = branch or self.current_branch()
        if branch is None:
            return False, "push: HEAD is detached"
        ref = f"refs/heads/{branch}"
        gated = self._check_push_gate(branch)
        if gated:
            return False, gated
        # Stopped by a conflict, no push is tried until the remote's commits integrate (the
        # user resolved it, dropped a blocking edit, or the remote moved again).
        rejected = bool(self.push_conflict)
        if not rejected:
            try:
                self._push_ref(ref)
            except GitError as exc:
                if not any(marker in exc.stderr for marker in _REJECTED_MARKERS):
                    log.warning("push failed; the commit stays local: %s", exc)
                    return False, f"push failed: {exc}"
                log.info("push rejected: the remote moved; integrating its commits (%s)",
                         self.config.pull_strategy)
                rejected = True
        if rejected:
            try:
                self.integrate_remote(branch)
                gated = self._check_push_gate(branch)
                if gated:
                    return False, gated
                self._push_ref(ref)
            except PushConflict as conflict:
                if str(conflict) != self.push_conflict:  # once, not at every re-check
                    log.warning("push stopped: %s; commits continue locally", conflict)
                self.push_conflict = str(conflict)
                return False, f"push stopped: {conflict}"
            except (GitError, TransientError) as exc:
                log.warning("push failed after integrating the remote: %s", exc)
                return False, f"push failed: {exc}"
        self.push_conflict = ""
        return True, ""

    def _check_push_gate(self, branch: str) -> str:
        """'' when the push gate lets HEAD's unpushed commits go, else why not."""
        head = self.head() if self.push_gate is not None else None
        if head is None:
            self.push_held = None
            return ""
        try:
            why = self.push_gate(PushRange(head, self.config.remote, branch))
        except Exception as exc:  # the gate could not tell: nothing goes out meanwhile
            log.warning("push not checked, so not pushed: %s", exc)
            self.push_held = None  # a failure, retried with the push back-off
            return f"push failed: checking what it would send: {exc}"
        if why is not None and why != self.push_held:
            log.warning("push held: %s", why.text)
        self.push_held = why
        return "" if why is None else why.text

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
            env = {**identity, "GIT_AUTHOR_NAME": name, "GIT_AUTHOR_EMAIL": email,
                   "GIT_AUTHOR_DATE": f"@{seconds} {zone}"}
            current = self._text("commit-tree", tree, "-p", current, "-F", "-",
                                 input=message, env=env)
        return current

    def _merge_commit(self, old: str, upstream: str, tracking: str) -> str:
        tree = self._merged_tree(old, upstream)
        message = f"gitsieve: merge {tracking}\n\n{TRAILER}\n"
        return self._text("commit-tree", tree, "-p", old, "-p", upstream, "-F", "-",
                          input=message.encode(), env=self._identity_env())

    def _move_head(self, old: str, new: str) -> None:
        """Move index, work tree and HEAD from ``old`` to ``new``; all or nothing."""
        if (self.config.git_dir / "index.lock").exists():
            raise TransientError("index.lock exists: another git command is running")
        try:
            self._git("read-tree", "-m", "-u", old, new)
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

    def _finish_rollback(self) -> None:
        """Move index and work tree from an integration's commit back to HEAD (after its
        update-ref failed); TransientError while that cannot be done yet."""
        if self.unfinished_rollback is None:
            return
        try:
            self._git("read-tree", "-m", "-u", self.unfinished_rollback, self.head() or "")
        except GitError as exc:
            log.error("index and work tree still hold the remote's version (%s); retrying: "
                      "%s", self.unfinished_rollback[:10], exc)
            raise TransientError(f"rolling back an interrupted integration: {exc}") from None
        self.unfinished_rollback = None

    def unpushed(self) -> bool:
        """Whether the branch has commits its remote-tracking ref does not (a push failed
        earlier, perhaps in a previous run).  False when unknown: no remote or no ref."""
        branch = self.current_branch()
        if not self.config.remote or branch is None:
            return False
        try:
            out = self._text("rev-list", "--count",
                             f"refs/remotes/{self.config.remote}/{branch}..HEAD")
        except GitError:  # no tracking ref (never pushed or fetched): nothing to compare
            return False
        return out.isdigit() and int(out) > 0

    def past_commit_times(self) -> list[float]:
        """Commit times of gitsieve's own commits within the last 24 hours."""
        try:
            out = self._text("log", "--since=24.hours", "--format=%ct",
                             f"--grep=^{TRAILER}")
        except GitError:  # unborn branch: no history yet
            return []
        return [float(line) for line in out.split() if line.isdigit()]
