"""States, verdicts and reasons: enum values on the wire, a human rendering for people.

Code decides on these values, never on the sentences :func:`render` builds from them (after
supervisor's ``states.py``).  Every enum is a ``StrEnum`` so a value travels in msgpack and
JSON as its plain string.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class ChangeKind(StrEnum):
    WRITE = "write"
    DELETE = "delete"


class Action(StrEnum):
    """L1's verdict: what the path alone says."""

    BLOCK = "BLOCK"
    ALLOW = "ALLOW"
    ANALYZE = "ANALYZE"


class Writer(StrEnum):
    """L2's verdict: who wrote the change."""

    SYSTEM = "SYSTEM"   # an autonomous process (or a descendant of one)
    SELF = "SELF"       # gitsieve's own processes (its git)
    USER = "USER"       # a process positively known not to be autonomous
    UNKNOWN = "UNKNOWN"  # not known: the content layer decides


class Content(StrEnum):
    """L3's verdict: what changed versus HEAD."""

    USER = "USER"            # a change worth committing
    SYSTEM = "SYSTEM"        # churn: only volatile data changed
    UNCHANGED = "UNCHANGED"  # nothing to commit


class Technique(StrEnum):
    """How L2 learned who wrote a file."""

    FANOTIFY = "fanotify"                    # own fanotify group + proc connector lineage
    OPEN_FILES = "open-files"                # psutil: holds it open for writing now
    OPEN_FILES_SAMPLED = "open-files-sampled"  # psutil: was seen holding it open
    HELPER = "helper"                        # gitsieve helper's fanotify + lineage (root)
    AGENT_JOURNAL = "agent-journal"          # recorded by `gitsieve agent` (seccomp)
    AGENT_MARK = "agent-mark"                # declared by `gitsieve mark --system`


class Mode(StrEnum):
    """The attribution mode an L2 worker runs in (``[filter] attribution``, resolved)."""

    FANOTIFY = "fanotify"
    PSUTIL = "psutil"
    HELPER = "helper"


class ProcessAction(StrEnum):
    """What the deciding process did to the path."""

    WRITTEN = "written"
    MOVED_INTO_PLACE = "moved into place"
    CREATED = "created"
    REMOVED = "removed"
    MOVED_AWAY = "moved away"
    MODE_CHANGED = "mode changed"
    HELD_OPEN = "held open for writing"
    MARKED = "marked as the system's"


class L1Reason(StrEnum):
    EDITOR_JUNK = "editor-junk"
    IGNORED = "ignored"
    RULE = "rule"
    DEFAULT = "default"
    RULE_TIMED_OUT = "rule-timed-out"


class L2Reason(StrEnum):
    IDENTIFIED = "identified"              # the evidence fields say who and how
    NO_WRITER_SEEN = "no-writer-seen"      # exact mode: no write by a known process
    NO_AUTONOMOUS_WRITER_SEEN = "no-autonomous-writer-seen"  # psutil mode
    NO_AUTONOMOUS_PROCESS = "no-autonomous-process"  # psutil mode: none ran around the change
    REMOVER_UNOBSERVABLE = "remover-unobservable"  # psutil mode: deletions carry no writer
    NO_REMOVAL_SEEN = "no-removal-seen"    # exact mode: no removal by a known process
    WRITER_UNKNOWN = "writer-unknown"      # exact mode: writes missed, or writer unreadable
    AGENT_AND_USER = "agent-and-user"      # the agent journal and a user process both


class L3Reason(StrEnum):
    WORK_FILE_PROBLEM = "work-file-problem"
    NEVER_COMMITTED = "never-committed"
    DELETED = "deleted"
    NEW_FILE = "new-file"
    IDENTICAL = "identical"
    CHANGED_BY_USER = "changed-by-user"
    OVER_SIZE_CAP = "over-size-cap"
    LOG_APPENDED = "log-appended"
    BINARY_CHANGED = "binary-changed"
    VOLATILE_TOKENS = "volatile-tokens"
    JSON_FORMATTING = "json-formatting"
    JSON_VOLATILE_KEYS = "json-volatile-keys"
    JSON_CHANGED = "json-changed"
    JSON_TOO_DEEP = "json-too-deep"
    CONTENT_CHANGED = "content-changed"
    LARGE_FILE_CHANGED = "large-file-changed"
    LARGE_FILE_UNREADABLE = "large-file-unreadable"
    LARGE_FILE_IDENTICAL = "large-file-identical"
    SAME_AS_USER_VERSION = "same-as-user-version"
    TIMESTAMP_ONLY = "timestamp-only"
    MODE_CHANGED = "mode-changed"


_TEXT = {
    L1Reason.EDITOR_JUNK: "editor junk: {detail}",
    L1Reason.IGNORED: "ignored by git",
    L1Reason.RULE: "{detail}",
    L1Reason.DEFAULT: "[filter] default",
    L1Reason.RULE_TIMED_OUT: "{detail}",
    L2Reason.NO_WRITER_SEEN: "no write by a known process seen",
    L2Reason.NO_AUTONOMOUS_WRITER_SEEN: "no autonomous writer seen",
    L2Reason.NO_AUTONOMOUS_PROCESS: "no autonomous process ran",
    L2Reason.REMOVER_UNOBSERVABLE: "deleted: no writer to observe",
    L2Reason.NO_REMOVAL_SEEN: "deleted: no removal by a known process seen",
    L2Reason.WRITER_UNKNOWN: "writer not known: {detail}",
    L2Reason.AGENT_AND_USER: "changed by the agent (gitsieve agent) and by a user process",
    L3Reason.WORK_FILE_PROBLEM: "{detail}",
    L3Reason.NEVER_COMMITTED: "never committed",
    L3Reason.DELETED: "deleted",
    L3Reason.NEW_FILE: "new file",
    L3Reason.IDENTICAL: "identical to HEAD",
    L3Reason.CHANGED_BY_USER: "changed by a user process",
    L3Reason.OVER_SIZE_CAP: "content changed (over {detail} bytes: compared as bytes only)",
    L3Reason.LOG_APPENDED: "log grew by {detail} bytes (append-only)",
    L3Reason.BINARY_CHANGED: "binary content changed (sha256 {detail})",
    L3Reason.VOLATILE_TOKENS: "only timestamp/uuid-like tokens changed",
    L3Reason.JSON_FORMATTING: "same JSON data, only formatting changed",
    L3Reason.JSON_VOLATILE_KEYS: "only volatile keys changed: {detail}",
    L3Reason.JSON_CHANGED: "JSON data changed",
    L3Reason.JSON_TOO_DEEP: "content changed (JSON too deep to compare)",
    L3Reason.CONTENT_CHANGED: "content changed",
    L3Reason.LARGE_FILE_CHANGED: "content changed (large file: {detail})",
    L3Reason.LARGE_FILE_UNREADABLE: "large file unreadable: {detail}",
    L3Reason.LARGE_FILE_IDENTICAL: "identical to HEAD (large file, same object id)",
    L3Reason.SAME_AS_USER_VERSION: "only volatile tokens changed since the version already "
                                   "judged the user's",
    L3Reason.TIMESTAMP_ONLY: "its only content is a timestamp (or another volatile token), "
                             "by a writer not known to be you",
    L3Reason.MODE_CHANGED: "mode changed: {detail}",
}


def render(reason: StrEnum, detail: str = "") -> str:
    """The sentence a person reads for ``reason`` (``detail`` fills its blank)."""
    return _TEXT.get(reason, str(reason)).format(detail=detail)


class Hold(StrEnum):
    """Why the executor holds paths, or a push (``actorctl status/explain/flush``)."""

    NOTHING = "nothing-held"
    COMMITTING = "committing"  # a commit runs; paths sent meanwhile go in the next one
    PAUSED = "paused"
    NO_HEALTH_YET = "no-health-yet"
    HEALTH_STALE = "health-stale"
    HEALTH = "health"
    COMMIT_BACKOFF = "commit-backoff"
    RATE_LIMIT = "rate-limit"
    RUNAWAY = "runaway"
    BRANCH = "branch"
    PUSH_BACKOFF = "push-backoff"
    PUSH_STOPPED = "push-stopped"
    # one path's own reasons (explain, flush), whatever the executor's overall state
    STAGED_BY_YOU = "staged-by-you"          # part of its change is staged in the index
    OPEN_FOR_WRITING = "open-for-writing"    # a process still writes it (debouncer)
    FEEDBACK_LOOP = "feedback-loop"          # changes only after gitsieve's commits
    SECRET = "secret"                        # the guard found a secret in it
    OVERSIZED = "oversized"                  # new or grown past [guard] max_new_file_mb
    NESTED_REPOSITORY = "nested-repository"  # a repository inside the workspace
    HISTORY_REWRITTEN = "history-rewritten"  # pushed history was amended or rebased
    GIT_REFUSED = "git-refused"              # git refuses the path (an unsupported file ...)
    PATH_TOO_LONG = "path-too-long"          # longer than the system lets a path be named
    SUBMODULE_NOT_STAGED = "submodule-not-staged"  # a submodule's new commit, not staged
    WITH_SUBMODULE = "with-submodule"        # part of a submodule change that is held
    SIGNING_FAILED = "signing-failed"        # commit.gpgSign is on and signing failed
    NO_REMOTE = "no-remote"                  # [git] remote names no remote of the repository
    CHANGED_WHILE_COMMITTED = "changed-while-committed"  # rewritten between judge and commit


# Holds that only a person ends (or time, for the rate limit): `actorctl flush` stops
# waiting on them and reports them.
WAITS_ON_A_PERSON = frozenset({Hold.PAUSED, Hold.HEALTH, Hold.HEALTH_STALE, Hold.RATE_LIMIT,
                               Hold.BRANCH, Hold.PUSH_STOPPED, Hold.RUNAWAY,
                               Hold.STAGED_BY_YOU, Hold.FEEDBACK_LOOP, Hold.SECRET,
                               Hold.OVERSIZED, Hold.NESTED_REPOSITORY,
                               Hold.HISTORY_REWRITTEN, Hold.GIT_REFUSED, Hold.PATH_TOO_LONG,
                               Hold.SUBMODULE_NOT_STAGED, Hold.WITH_SUBMODULE,
                               Hold.SIGNING_FAILED, Hold.NO_REMOTE})

_TEXT.update({
    Hold.NOTHING: "nothing held",
    Hold.COMMITTING: "waiting for the commit being made now",
    Hold.PAUSED: "paused (`actorctl resume` continues)",
    Hold.NO_HEALTH_YET: "waiting for the first health status",
    Hold.HEALTH_STALE: "health status is stale (is the health monitor running?)",
    Hold.HEALTH: "health: {detail}",
    Hold.COMMIT_BACKOFF: "commit back-off after: {detail}",
    Hold.RATE_LIMIT: "rate limit: {detail}",
    Hold.RUNAWAY: "runaway cap: {detail}",
    Hold.BRANCH: "{detail}",
    Hold.PUSH_BACKOFF: "push back-off after: {detail}",
    Hold.PUSH_STOPPED: "push stopped: {detail}",
    Hold.STAGED_BY_YOU: "staged by you: part of this change is in the index; it is "
                        "synced once you commit or unstage it",
    Hold.OPEN_FOR_WRITING: "still open for writing: {detail}",
    Hold.FEEDBACK_LOOP: "feedback loop: {detail}",
    Hold.SECRET: "secret found: {detail}",
    Hold.OVERSIZED: "too large: {detail}",
    Hold.NESTED_REPOSITORY: "a nested git repository: commit in it, or add it as a submodule",
    Hold.HISTORY_REWRITTEN: "history rewritten: {detail}",
    Hold.GIT_REFUSED: "git refuses it: {detail}",
    Hold.PATH_TOO_LONG: "path too long: {detail}; shorten it (or move the workspace "
                        "higher up)",
    Hold.SUBMODULE_NOT_STAGED: "a submodule's change is not staged ({detail}): gitsieve "
                               "commits a submodule as you stage it (git add it once its "
                               "commit is on the submodule's remote, or git rm it)",
    Hold.WITH_SUBMODULE: "held with the submodule change it belongs to: {detail}",
    Hold.SIGNING_FAILED: "commit signing failed (commit.gpgSign is on): {detail}; nothing "
                         "is committed unsigned: your changes stay in the work tree and are "
                         "committed once signing works (tried again every minute)",
    Hold.NO_REMOTE: "{detail}: commits stay local until it is (git remote add)",
    Hold.CHANGED_WHILE_COMMITTED: "changed while it was being committed ({detail}): the "
                                  "version read may be half-written; its new version is "
                                  "judged and committed instead",
})


@dataclass(frozen=True)
class Why:
    """A hold with its particulars: the value to decide on, the text to show."""

    hold: Hold
    detail: str = ""

    @property
    def text(self) -> str:
        return render(self.hold, self.detail)
