"""Committer against real git repositories with a bare remote."""
from __future__ import annotations

import os
import threading
import time

from common import config as config_mod
from common.committer import TRAILER, Committer
from tests.conftest import git


def make(workspace, extra: str = "") -> Committer:
    workspace.config("[git]\nretry_backoff = 0.5\n" + extra)
    return Committer(workspace.load())


def test_add_modify_delete_committed_exactly_and_pushed(workspace):
    workspace.write("keep.txt", "keep\n")
    workspace.write("gone.txt", "bye\n")
    workspace.git("add", "-A")
    workspace.git("commit", "-q", "-m", "base")
    before = workspace.head()
    workspace.write("new.txt", "new\n")
    workspace.write("keep.txt", "changed\n")
    workspace.path("gone.txt").unlink()
    workspace.write("unrelated.txt", "not in the batch\n")
    committer = make(workspace)

    result = committer.commit(["new.txt", "keep.txt", "gone.txt"])

    assert result.error == ""
    assert result.commit == workspace.head() != before
    assert result.statuses == {"new.txt": "A", "keep.txt": "M", "gone.txt": "D"}
    assert workspace.committed_paths_since(before) == {"new.txt", "keep.txt", "gone.txt"}
    assert "unrelated.txt" not in workspace.files_at()
    assert workspace.show("HEAD:keep.txt") == "changed\n"
    message = workspace.git("log", "-1", "--format=%B")
    assert message.startswith("gitsieve: sync 3 file(s)\n\n")
    assert "A\tnew.txt" in message and "D\tgone.txt" in message
    assert message.rstrip().endswith(TRAILER)
    assert result.pushed
    assert workspace.remote_head() == workspace.head()
    # The user's index agrees with HEAD for the committed paths: nothing shows as staged.
    assert workspace.git("diff", "--cached", "--name-only") == ""
    assert "unrelated.txt" in workspace.git("status", "--porcelain")


def test_rename_spaces_and_non_ascii_paths(workspace):
    workspace.write("old name.txt", "content\n")
    workspace.git("add", "-A")
    workspace.git("commit", "-q", "-m", "base")
    before = workspace.head()
    os.rename(workspace.path("old name.txt"), workspace.path("new näme.txt"))
    workspace.write("dir é/späced file ✓.md", "x\n")
    committer = make(workspace)

    result = committer.commit(["old name.txt", "new näme.txt", "dir é/späced file ✓.md"])

    assert result.error == "" and result.commit
    assert result.statuses == {"old name.txt": "D", "new näme.txt": "A",
                               "dir é/späced file ✓.md": "A"}
    assert workspace.git("rev-parse", "HEAD^").strip() == before
    assert workspace.files_at() == {"README.md", ".gitignore", "new näme.txt",
                                    "dir é/späced file ✓.md"}
    shown = workspace.git("show", "-M", "--name-status", "--format=", "-z", "HEAD")
    assert "R100\0old name.txt\0new näme.txt\0" in shown


def test_users_staged_change_to_another_path_stays_staged(workspace):
    workspace.write("staged.txt", "user staged this\n")
    workspace.git("add", "staged.txt")
    workspace.write("synced.txt", "sync me\n")
    before = workspace.head()

    result = make(workspace).commit(["synced.txt"])

    assert result.commit
    assert workspace.committed_paths_since(before) == {"synced.txt"}
    assert workspace.git("diff", "--cached", "--name-only").split() == ["staged.txt"]


def test_nothing_changed_makes_no_commit(workspace):
    before = workspace.head()
    result = make(workspace).commit(["README.md"])
    assert result.commit is None and result.error == "" and result.held == ""
    assert workspace.head() == before
    assert make(workspace).commit([]).commit is None
    assert workspace.head() == before


def test_ignored_path_never_committed(workspace):
    workspace.write("ignored/secret.txt", "x\n")
    workspace.write("a.ignored", "x\n")
    workspace.write("real.txt", "x\n")
    before = workspace.head()
    result = make(workspace).commit(["ignored/secret.txt", "a.ignored", "real.txt"])
    assert result.commit
    assert workspace.committed_paths_since(before) == {"real.txt"}
    assert set(result.dropped) == {"ignored/secret.txt", "a.ignored"}


def test_temp_file_renamed_away_is_dropped_without_error(workspace):
    workspace.write("doc.txt.tmp", "draft\n")
    os.rename(workspace.path("doc.txt.tmp"), workspace.path("doc.txt"))
    before = workspace.head()
    result = make(workspace).commit(["doc.txt.tmp", "doc.txt"])
    assert result.error == "" and result.commit
    assert result.dropped == ("doc.txt.tmp",)
    assert workspace.committed_paths_since(before) == {"doc.txt"}
    # Only the vanished temp file: nothing to commit, still no error.
    workspace.write("x.tmp", "x\n")
    workspace.path("x.tmp").unlink()
    result = make(workspace).commit(["x.tmp"])
    assert result.error == "" and result.commit is None


def test_never_force_push_keeps_local_commit(workspace, tmp_path):
    other = tmp_path / "other"
    git(tmp_path, "clone", "-q", str(workspace.remote), str(other))
    (other / "theirs.txt").write_text("moved the remote\n")
    git(other, "add", "-A")
    git(other, "commit", "-q", "-m", "remote moves")
    git(other, "push", "-q", "origin", "main")
    remote_before = workspace.remote_head()
    workspace.write("mine.txt", "local\n")

    committer = make(workspace)
    result = committer.commit(["mine.txt"])

    assert result.commit == workspace.head()
    assert not result.pushed
    assert "push failed" in result.error
    assert workspace.remote_head() == remote_before  # nothing overwritten
    pushed, error = committer.push()  # a later retry fails the same way, still unforced
    assert not pushed and "push failed" in error
    assert workspace.remote_head() == remote_before


def test_no_remote_configured_commits_without_push(workspace):
    workspace.write("a.txt", "a\n")
    remote_before = workspace.remote_head()
    result = make(workspace, 'remote = ""\n').commit(["a.txt"])
    assert result.commit and not result.pushed and result.error == ""
    assert workspace.remote_head() == remote_before


def test_branch_rule_holds_other_branch_and_detached_head(workspace):
    workspace.write("a.txt", "a\n")
    before = workspace.head()
    workspace.git("checkout", "-q", "-b", "feature")
    result = make(workspace).commit(["a.txt"])
    assert result.commit is None and "feature" in result.held
    workspace.git("checkout", "-q", "--detach")
    result = make(workspace).commit(["a.txt"])
    assert result.commit is None and "detached" in result.held
    assert workspace.head() == before
    # An empty configured branch allows any branch.
    workspace.git("checkout", "-q", "feature")
    result = make(workspace, 'branch = ""\n').commit(["a.txt"])
    assert result.commit and workspace.git("rev-parse", "feature").strip() == result.commit


def test_index_lock_held_for_a_second_is_retried(workspace):
    workspace.write("a.txt", "a\n")
    lock = workspace.path(".git/index.lock")
    lock.write_text("")
    release = threading.Timer(1.0, lock.unlink)
    release.start()
    try:
        committer = make(workspace)
        result = committer.commit(["a.txt"])
    finally:
        release.join()
    assert result.error == "" and result.commit == workspace.head()
    assert result.retries >= 1
    assert "a.txt" in workspace.files_at()


def test_lock_never_released_gives_error_after_retries(workspace):
    workspace.write("a.txt", "a\n")
    workspace.path(".git/index.lock").write_text("")
    sleeps = []
    committer = make(workspace, "retry_attempts = 2\n")
    committer.sleep = sleeps.append
    before = workspace.head()
    result = committer.commit(["a.txt"])
    assert result.commit is None and "index.lock" in result.error
    assert sleeps == [0.5, 1.0]  # retry_backoff * attempt
    assert workspace.head() == before


def test_user_commit_meanwhile_is_not_lost(workspace):
    """HEAD moving between building and installing the commit: rebuilt on the new HEAD."""
    workspace.write("sync.txt", "s\n")
    workspace.write("user.txt", "u\n")
    committer = make(workspace)
    original = committer._build_commit
    moved = []

    def build_then_user_commits(head, wanted, result):
        new = original(head, wanted, result)
        if not moved:
            workspace.git("add", "user.txt")
            workspace.git("commit", "-q", "-m", "user commit")
            moved.append(workspace.head())
        return new

    committer._build_commit = build_then_user_commits
    result = committer.commit(["sync.txt"])
    assert result.commit == workspace.head()
    assert workspace.git("rev-parse", "HEAD^").strip() == moved[0]
    assert {"sync.txt", "user.txt"} <= workspace.files_at()


def test_fallback_identity_only_when_unconfigured(workspace):
    workspace.write("a.txt", "a\n")
    result = make(workspace).commit(["a.txt"])
    assert workspace.git("log", "-1", "--format=%an <%ae>").strip() == \
        "Test User <user@example.com>"
    workspace.git("config", "--unset", "user.name")
    workspace.git("config", "--unset", "user.email")
    workspace.write("b.txt", "b\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        os.environ["HOME"] = str(workspace.root)  # no global identity either
        result = make(workspace).commit(["b.txt"])
    finally:
        os.environ.clear()
        os.environ.update(saved)
    assert result.commit, result.error
    out = git(workspace.root, "log", "-1", "--format=%an <%ae>|%cn <%ce>", result.commit)
    assert out.strip() == "gitsieve <gitsieve@localhost>|gitsieve <gitsieve@localhost>"


def test_past_commit_times_counts_only_gitsieve_commits(workspace):
    committer = make(workspace)
    assert committer.past_commit_times() == []
    workspace.write("a.txt", "a\n")
    committer.commit(["a.txt"])
    workspace.write("b.txt", "b\n")
    workspace.git("add", "b.txt")
    workspace.git("commit", "-q", "-m", "user")
    times = committer.past_commit_times()
    assert len(times) == 1 and abs(times[0] - time.time()) < 3600


def test_unborn_branch_first_commit(tmp_path):
    root = tmp_path / "fresh"
    git(tmp_path, "init", "-q", "-b", "main", str(root))
    git(root, "config", "user.name", "Test User")
    git(root, "config", "user.email", "user@example.com")
    (root / "first.txt").write_text("hello\n")
    (root / config_mod.CONFIG_NAME).write_text('[git]\nremote = ""\n')
    committer = Committer(config_mod.load(root))
    result = committer.commit(["first.txt"])
    assert result.error == "" and result.commit
    assert git(root, "ls-tree", "-r", "--name-only", "HEAD").split() == ["first.txt"]
    assert git(root, "rev-list", "--count", "HEAD").strip() == "1"
    assert result.statuses == {"first.txt": "A"}
