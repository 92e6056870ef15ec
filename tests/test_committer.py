"""Committer against real git repositories with a bare remote."""
from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
import zlib
from pathlib import Path

from conftest import faulty_git, git
from gitsieve.common import config as config_mod
from gitsieve.common.git.committer import TRAILER, Committer
from gitsieve.common.git.gateway import LineChild
from gitsieve.common.protocol.states import Hold, Why


def git_subcommand(args) -> tuple:
    """A git call's arguments from its subcommand on (past ``-c key=value`` and
    ``--no-optional-locks``)."""
    args = tuple(args)
    while args and args[0] in ("-c", "--no-optional-locks"):
        args = args[2:] if args[0] == "-c" else args[1:]
    return args


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


def test_paths_git_is_told_to_leave_alone_are_never_committed_nor_their_flags_wiped(
        workspace):
    """A sparse checkout removes the files outside its cone (skip-worktree) and a local
    override is kept off with skip-worktree or assume-unchanged: git status shows nothing,
    yet the deletions were pushed, the overrides too, and the flags were wiped."""
    for name in ("big/x/1.txt", "big/x/2.txt", "local.cfg", "tuned.cfg", "plain.txt"):
        workspace.write(name, f"{name} as committed\n")
    workspace.git("add", "-A")
    workspace.git("commit", "-q", "-m", "base")
    workspace.git("push", "-q", "origin", "HEAD")
    before = workspace.head()
    workspace.git("update-index", "--skip-worktree", "big/x/1.txt", "big/x/2.txt",
                  "local.cfg")
    workspace.git("update-index", "--assume-unchanged", "tuned.cfg")
    workspace.path("big/x/1.txt").unlink()
    workspace.path("big/x/2.txt").unlink()
    workspace.write("local.cfg", "my local override\n")
    workspace.write("tuned.cfg", "tuned here only\n")
    workspace.write("plain.txt", "a real edit\n")
    assert workspace.git("status", "--porcelain").split() == ["M", "plain.txt"]
    committer = make(workspace)

    result = committer.commit(["big/x/1.txt", "big/x/2.txt", "local.cfg", "tuned.cfg",
                               "plain.txt"])

    assert result.error == "" and result.statuses == {"plain.txt": "M"}
    assert result.left_alone == ("big/x/1.txt", "big/x/2.txt", "local.cfg", "tuned.cfg")
    assert workspace.committed_paths_since(before) == {"plain.txt"}
    assert workspace.remote_head() == workspace.head()
    flags = dict(line.split(" ", 1)[::-1] for line in
                 workspace.git("ls-files", "-v").splitlines())
    assert (flags["big/x/1.txt"], flags["local.cfg"], flags["tuned.cfg"],
            flags["plain.txt"]) == ("S", "S", "h", "H")
    # a flag cleared by the person: the next commit takes the path again
    workspace.git("update-index", "--no-skip-worktree", "local.cfg")
    assert committer.commit(["local.cfg"]).statuses == {"local.cfg": "M"}


def test_names_git_refuses_are_held_and_never_reach_a_checking_remote(workspace):
    """git~1, .git. and their kind (a `.git` to Windows or macOS) and a symbolic link named
    .gitmodules: `git add` refuses them, gitsieve committed them, and a remote that checks
    objects then rejected that push and every later one."""
    subprocess.run(["git", "-C", str(workspace.remote), "config", "receive.fsckObjects",
                    "true"], check=True)
    refused = ["git~1", "GIT~1", ".git.", ".git ", "d/.git./x",
               "a/.git::$INDEX_ALLOCATION/x"]
    workspace.write(".GIT/config", "content\n")  # .git in any case: never even planned
    for name in refused + ["ok.txt", "git~1x/fine.txt"]:
        workspace.write(name, "content\n")
    os.symlink("ok.txt", workspace.path(".gitmodules"))
    before = workspace.head()
    committer = make(workspace)

    result = committer.commit(refused + [".gitmodules", ".GIT/config", "ok.txt",
                                         "git~1x/fine.txt"])

    assert result.error == "" and result.pushed and result.dropped == (".GIT/config",)
    assert set(result.statuses) == {"ok.txt", "git~1x/fine.txt"}
    assert set(result.held_paths) == set(refused) | {".gitmodules"}
    assert {why.hold for why in result.held_paths.values()} == {Hold.GIT_REFUSED}
    assert workspace.committed_paths_since(before) == {"ok.txt", "git~1x/fine.txt"}
    assert workspace.remote_head() == workspace.head()
    assert not [name for name in os.listdir(workspace.path(".git"))
                if name.startswith("gitsieve-objects-")]  # the throwaway index is gone


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


def other_clone_pushes(workspace, tmp_path, files: dict, name="other") -> str:
    """A second clone commits ``files`` and pushes first; returns its commit."""
    other = tmp_path / name
    if not other.exists():
        git(tmp_path, "clone", "-q", str(workspace.remote), str(other))
    git(other, "pull", "-q", "--ff-only")
    for rel, text in files.items():
        (other / rel).parent.mkdir(parents=True, exist_ok=True)
        (other / rel).write_text(text)
    git(other, "add", "-A")
    git(other, "commit", "-q", "-m", f"remote moves: {', '.join(files)}")
    git(other, "push", "-q", "origin", "main")
    return git(other, "rev-parse", "HEAD").strip()


def test_second_clone_pushed_first_rebase_then_push(workspace, tmp_path):
    theirs = other_clone_pushes(workspace, tmp_path, {"theirs.txt": "moved the remote\n"})
    workspace.write("mine.txt", "local\n")
    workspace.write("churn.json", '{"dirty": "never committed"}\n')  # unrelated, dirty
    workspace.write("staged.txt", "staged by the user\n")
    workspace.git("add", "staged.txt")
    before = workspace.head()
    workspace.git("config", "advice.pushUpdateRejected", "false")  # no hint to rely on

    committer = make(workspace)
    result = committer.commit(["mine.txt"])

    assert result.pushed and result.error == "", result.error
    assert committer.integrations == 1 and committer.push_conflict == ""
    head = workspace.head()
    assert workspace.remote_head() == head  # both histories on the remote, never forced
    assert workspace.git("rev-parse", "HEAD^").strip() == theirs  # linear: replayed on top
    assert workspace.git("merge-base", "--is-ancestor", before, "HEAD", check=False) == ""
    assert {"theirs.txt", "mine.txt"} <= workspace.files_at()
    assert "Synced-by: gitsieve" in workspace.git("log", "-1", "--format=%B")
    # The work tree got the remote's file; the user's dirty and staged files are untouched.
    assert workspace.path("theirs.txt").read_text() == "moved the remote\n"
    assert workspace.path("churn.json").read_text() == '{"dirty": "never committed"}\n'
    status = workspace.git("status", "--porcelain=v1")
    assert "A  staged.txt" in status and "?? churn.json" in status
    assert "theirs.txt" not in status and "mine.txt" not in status


def test_merge_strategy_makes_a_merge_commit(workspace, tmp_path):
    theirs = other_clone_pushes(workspace, tmp_path, {"theirs.txt": "t\n"})
    workspace.write("mine.txt", "m\n")
    committer = make(workspace, 'pull_strategy = "merge"\n')
    result = committer.commit(["mine.txt"])
    assert result.pushed, result.error
    parents = workspace.git("log", "-1", "--format=%P").split()
    assert parents == [result.commit, theirs]
    assert workspace.remote_head() == workspace.head()


def test_conflict_with_remote_changes_nothing_and_stops_pushing(workspace, tmp_path):
    workspace.write("shared.txt", "base\n")
    first = make(workspace).commit(["shared.txt"])
    assert first.pushed
    remote_commit = other_clone_pushes(workspace, tmp_path, {"shared.txt": "theirs\n"})
    workspace.write("shared.txt", "mine\n")
    committer = make(workspace)
    result = committer.commit(["shared.txt"])
    assert result.commit == workspace.head()  # the local commit stays
    assert not result.pushed and "conflict" in result.error and "shared.txt" in result.error
    assert "shared.txt" in committer.push_conflict
    assert workspace.remote_head() == remote_commit  # nothing overwritten remotely
    assert workspace.path("shared.txt").read_text() == "mine\n"
    assert workspace.git("status", "--porcelain=v1") == "?? .gitsieve.toml\n"
    assert not (workspace.path(".git") / "index.lock").exists()
    # Commits continue locally meanwhile.
    workspace.write("later.txt", "l\n")
    later = committer.commit(["later.txt"])
    assert later.commit == workspace.head() and not later.pushed


def git_of_this_process_faulty(tmp_path, monkeypatch, rules: str):
    """Every later git call of this process goes through scripts/faulty-git with ``rules``;
    returns the rules file (its ".log" lists each injection)."""
    env, rules_file = faulty_git(tmp_path, rules)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return rules_file


def test_a_failed_integration_whose_rollback_fails_too_is_finished_before_anything_else(
        workspace, tmp_path, monkeypatch):
    assert make(workspace).commit([".gitsieve.toml"]).pushed  # a first push: a shared base
    other_clone_pushes(workspace, tmp_path, {"theirs.txt": "from another clone\n"})
    workspace.write("mine.txt", "mine\n")
    committer = make(workspace)
    mine = committer.commit(["mine.txt"], push=False).commit
    # The integration moves index and work tree, then its update-ref fails, then putting
    # them back fails as well (the first read-tree is let through, counted).
    rules = git_of_this_process_faulty(tmp_path, monkeypatch, "^read-tree.-m.-u sleep-before:0 1\n"
                       "^update-ref.*integrate fail 1\n^read-tree.-m.-u fail 1\n")
    pushed, error = committer.push()
    assert not pushed and "rolling back an interrupted integration" in error
    assert committer.unfinished_rollback and workspace.head() == mine
    assert workspace.path("theirs.txt").exists()  # the half state, known and held
    assert [line.split()[0] for line in rules.with_name(rules.name + ".log").read_text()
            .splitlines()] == ["sleep-before:0", "fail", "fail"]
    # Nothing else happens before the rollback is finished; then the push goes through.
    pushed, error = committer.push()
    assert pushed, error
    assert committer.unfinished_rollback is None
    assert workspace.remote_head() == workspace.head()
    assert {"theirs.txt", "mine.txt"} <= workspace.files_at()
    assert workspace.git("status", "--porcelain=v1") == ""


def test_a_stopped_push_is_not_tried_until_the_conflict_clears(workspace, tmp_path,
                                                               monkeypatch):
    workspace.write("shared.txt", "base\n")
    assert make(workspace).commit(["shared.txt"]).pushed
    other_clone_pushes(workspace, tmp_path, {"shared.txt": "theirs\n"})
    workspace.write("shared.txt", "mine\n")
    committer = make(workspace)
    assert "push stopped" in committer.commit(["shared.txt"]).error
    # Every later git call goes through faulty-git, which logs each push it sees.
    rules = git_of_this_process_faulty(tmp_path, monkeypatch, "^push sleep-before:0\n")
    pushed, error = committer.push()
    assert not pushed and "conflict" in error
    log = rules.with_name(rules.name + ".log")
    assert not log.exists(), "a push was tried while stopped by the conflict"
    # The user resolves it (merges the remote, keeping theirs): the push goes at once.
    workspace.git("pull", "-q", "--no-rebase", "-X", "theirs", "origin", "main")
    pushed, error = committer.push()
    assert pushed, error
    assert committer.push_conflict == "" and workspace.remote_head() == workspace.head()
    assert len(log.read_text().splitlines()) == 1


def test_remote_change_to_a_locally_modified_file_is_a_conflict(workspace, tmp_path):
    """read-tree -m -u refuses to overwrite a dirty work tree file: nothing changes."""
    workspace.write("status.json", "v1\n")
    assert make(workspace).commit(["status.json"]).pushed
    other_clone_pushes(workspace, tmp_path, {"status.json": "remote v2\n"})
    workspace.write("status.json", "local edit, not committed\n")
    workspace.write("mine.txt", "m\n")
    before = workspace.head()
    committer = make(workspace)
    result = committer.commit(["mine.txt"])
    assert not result.pushed and "push stopped" in result.error
    assert workspace.git("rev-parse", "HEAD^").strip() == before  # only the local commit
    assert workspace.path("status.json").read_text() == "local edit, not committed\n"
    # Once the local modification is gone, integration succeeds and the push goes through.
    workspace.git("checkout", "--", "status.json")
    pushed, error = committer.push()
    assert pushed, error
    assert committer.push_conflict == ""
    assert workspace.remote_head() == workspace.head()
    assert workspace.path("status.json").read_text() == "remote v2\n"


def test_push_is_never_forced_when_remote_rejects_for_other_reasons(workspace):
    hook = workspace.remote / "hooks" / "pre-receive"
    hook.write_text("#!/bin/sh\necho refusing >&2\nexit 1\n")
    hook.chmod(0o755)
    remote_before = workspace.remote_head()
    workspace.write("mine.txt", "local\n")
    result = make(workspace).commit(["mine.txt"])
    assert result.commit == workspace.head() and not result.pushed
    assert "push failed" in result.error
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


def test_attempts_zero_returns_at_once_marked_transient(workspace):
    workspace.write("a.txt", "a\n")
    workspace.path(".git/index.lock").write_text("")
    committer = make(workspace)
    committer.sleep = lambda seconds: (_ for _ in ()).throw(AssertionError("slept"))
    result = committer.commit(["a.txt"], attempts=0)
    assert result.commit is None and result.transient and "index.lock" in result.error
    workspace.path(".git/index.lock").unlink()
    result = committer.commit(["a.txt"], attempts=0)
    assert result.commit == workspace.head() and not result.transient


def test_index_refresh_left_pending_when_the_lock_is_taken_then_done(workspace):
    """The commit stands even when the user's index cannot be refreshed right away."""
    workspace.write("a.txt", "a\n")
    committer = make(workspace, 'remote = ""\n')
    original = committer._git

    locked = []

    def lock_before_reset(*args, **kwargs):
        # The user's git takes index.lock just before the committer resets the index.
        if "--index-info" in args and not locked:
            locked.append(True)
            workspace.path(".git/index.lock").write_text("")
        return original(*args, **kwargs)

    committer._git = lock_before_reset
    result = committer.commit(["a.txt"], attempts=0)
    assert result.commit == workspace.head() and result.error == ""
    assert set(committer.index_refresh_pending) == {"a.txt"}
    workspace.path(".git/index.lock").unlink()
    assert committer.refresh_user_index(attempts=0)
    assert committer.index_refresh_pending == {}
    assert workspace.git("status", "--porcelain=v1", "a.txt") == ""


def test_recheck_drops_paths_that_now_differ_from_head_only_in_volatile_data(workspace):
    """A content-only verdict taken against an older HEAD (or a half-written file) is
    re-checked at commit time: volatile-only differences are not committed."""
    workspace.write("state.json", '{"name": "x", "last_update": 1}\n')
    workspace.write("notes.txt", "started at 2026-01-01T10:00:00Z\n")
    workspace.write("real.json", '{"name": "x", "last_update": 1}\n')
    workspace.git("add", "-A")
    workspace.git("commit", "-q", "-m", "base")
    workspace.write("state.json", '{"name": "x", "last_update": 2}\n')
    workspace.write("notes.txt", "started at 2026-11-24T20:51:07Z\n")
    workspace.write("real.json", '{"name": "y", "last_update": 2}\n')
    committer = make(workspace)
    result = committer.commit(["state.json", "notes.txt", "real.json"], push=False,
                              recheck=dict.fromkeys(["state.json", "notes.txt", "real.json"]))
    assert result.commit
    assert workspace.committed_paths_since("HEAD~1") == {"real.json"}
    assert {"state.json", "notes.txt"} <= set(result.dropped)
    assert committer.rechecked_dropped == 2
    # without the re-check flag the same volatile-only change is committed as asked
    result = committer.commit(["state.json"], push=False)
    assert result.commit and workspace.committed_paths_since("HEAD~1") == {"state.json"}


def commit_mid_rewrite(committer, path, text: str):
    """Commit ``path`` (re-checked) while a writer holds it open and empty: created or
    truncated, with ``text`` written 80 ms later (`date > f`)."""
    def rewrite() -> None:
        with open(path, "w") as handle:
            time.sleep(0.08)
            handle.write(text)

    def empty_now() -> bool:
        try:
            return path.stat().st_size == 0
        except FileNotFoundError:
            return False

    writer = threading.Thread(target=rewrite)
    writer.start()
    try:
        while not empty_now():
            time.sleep(0.001)
        rel = path.name
        return committer.commit([rel], push=False, recheck=dict.fromkeys([rel]))
    finally:
        writer.join()


def test_a_rewrite_caught_between_truncation_and_write_is_not_committed(workspace):
    """`date > stamp`: the shell empties the file, then date writes.  A re-check that read
    it in between took the empty file for a change, and the agent's timestamp was committed
    (test_gauntlet_without_helper, psutil mode, once under a full suite's load)."""
    workspace.write("stamp.txt", "updated: 2026-01-01T10:00:00.000000+00:00\n")
    workspace.git("add", "-A")
    workspace.git("commit", "-q", "-m", "base")
    base = workspace.head()
    result = commit_mid_rewrite(make(workspace), workspace.path("stamp.txt"),
                                "updated: 2026-11-30T10:58:01.123456+00:00\n")
    assert workspace.head() == base and result.commit is None
    assert "stamp.txt" in result.dropped


class TruncatedAfterTheRecheck:
    """The committer's content judge, with a writer that empties the file (open "w", not
    yet written) just after the re-check read it: what an agent answering a commit does
    while the next commit is made (test_attribution_e2e, fanotify, under a loaded suite:
    shared.md was committed empty)."""

    def __init__(self, content, full: Path):
        self.content, self.full, self.handle = content, full, None

    def still_changes(self, paths):
        verdicts = self.content.still_changes(paths)
        self.handle = open(self.full, "w")  # noqa: SIM115 -- written after the commit
        return verdicts

    def __getattr__(self, name):
        return getattr(self.content, name)


def test_a_file_emptied_after_its_recheck_is_held_not_committed_empty(workspace):
    workspace.write("shared.md", "Shared notes\n\nupdated: 2026-01-01T00:00:00+00:00\n")
    workspace.git("add", "-A")
    workspace.git("commit", "-q", "-m", "base")
    base = workspace.head()
    workspace.write("shared.md", "Shared notes\nuser line\n\nupdated: 2026-01-01T00:00:00+00:00\n")
    committer = make(workspace)
    committer.content = TruncatedAfterTheRecheck(committer.content, workspace.path("shared.md"))
    result = committer.commit(["shared.md"], push=False, recheck=dict.fromkeys(["shared.md"]))
    committer.content.handle.write("Shared notes\nuser line\n\nupdated: 2026-01-01T00:00:01\n")
    committer.content.handle.close()
    assert workspace.head() == base and result.commit is None
    assert result.held_paths["shared.md"].hold is Hold.CHANGED_WHILE_COMMITTED
    # the next commit (the executor's, when the rewrite's change arrives) takes it whole
    again = make(workspace).commit(["shared.md"], push=False, recheck=dict.fromkeys(["shared.md"]))
    assert again.commit and "user line" in workspace.show("HEAD:shared.md")


def test_a_file_rewritten_while_it_is_hashed_is_held(workspace, monkeypatch):
    """A person's file (not re-checked) written again while git read it: what was read may
    be half of each version, so it waits for the new version's own change."""
    workspace.write("a.txt", "first\n")
    workspace.write("b.txt", "other\n")
    base = workspace.head()
    committer = make(workspace)
    real = Committer._hashed

    def hashed_then_rewritten(self, paths, write):
        oids = real(self, paths, write)
        workspace.write("a.txt", "first, then more\n")
        return oids
    monkeypatch.setattr(Committer, "_hashed", hashed_then_rewritten)
    result = committer.commit(["a.txt", "b.txt"], push=False)
    monkeypatch.undo()
    assert result.commit and workspace.head() != base
    assert result.statuses == {"b.txt": "A"}
    assert result.held_paths["a.txt"].hold is Hold.CHANGED_WHILE_COMMITTED


def test_a_new_file_caught_between_creation_and_write_is_not_committed(workspace):
    """`date > new.stamp` creates the file empty, then date writes: L3 read it empty ("a
    new file"), and the timestamp that followed was committed unchecked."""
    committer = make(workspace)
    base = workspace.head()
    result = commit_mid_rewrite(committer, workspace.path("heartbeat.ns"),
                                "1796035650926626804\n")
    assert workspace.head() == base and result.commit is None
    assert "heartbeat.ns" in result.dropped


def test_a_new_empty_file_of_the_persons_is_committed(workspace):
    workspace.write("pkg/__init__.py", "")
    old = time.time() - 5
    os.utime(workspace.path("pkg/__init__.py"), (old, old))
    result = make(workspace).commit(["pkg/__init__.py"], push=False,
                                    recheck=dict.fromkeys(["pkg/__init__.py"]))
    assert result.statuses == {"pkg/__init__.py": "A"}


def test_a_file_the_person_emptied_is_committed(workspace):
    workspace.write("notes.txt", "some notes\n")
    workspace.git("add", "-A")
    workspace.git("commit", "-q", "-m", "base")
    workspace.write("notes.txt", "")
    old = time.time() - 5
    os.utime(workspace.path("notes.txt"), (old, old))
    result = make(workspace).commit(["notes.txt"], push=False,
                                    recheck=dict.fromkeys(["notes.txt"]))
    assert result.statuses == {"notes.txt": "M"}
    assert workspace.show("HEAD:notes.txt") == ""


# ----- issue 11/13/14: the person's index, paths git refuses, forged batches, modes ----------
def unsynced(workspace) -> str:
    """`git status` beyond the test's own (uncommitted) config file."""
    return "".join(line for line in workspace.git("status", "--porcelain=v1").splitlines(True)
                   if not line.endswith(".gitsieve.toml\n"))


def _partly_staged(workspace, rel: str) -> None:
    """Two separate hunks in ``rel``; the first staged with a real `git add -p`."""
    lines = [f"line {number}\n" for number in range(1, 21)]
    workspace.write(rel, "".join(lines))
    workspace.git("add", rel)
    workspace.git("commit", "-q", "-m", f"base {rel}")
    lines[0], lines[-1] = "first hunk\n", "second hunk\n"
    workspace.write(rel, "".join(lines))
    staged = subprocess.run(["git", "add", "-p", "--", rel], cwd=workspace.root,
                            input="y\nn\n", text=True, capture_output=True)
    assert staged.returncode == 0, staged.stderr
    assert "first hunk" in workspace.git("diff", "--cached")
    assert "second hunk" in workspace.git("diff")  # one hunk staged, one not


def test_partly_staged_path_is_held_the_rest_synced_then_synced_after_the_users_commit(
        workspace):
    """Issue 11: one of two hunks staged with `git add -p`: gitsieve committed both and
    reset the index entry, so the person's `git commit` said "nothing to commit"."""
    _partly_staged(workspace, "partial.txt")
    workspace.write("fully.txt", "staged whole\n")
    workspace.git("add", "fully.txt")
    workspace.write("other.txt", "not staged\n")
    workspace.write("ita.txt", "intent to add\n")
    workspace.git("add", "-N", "ita.txt")
    before = workspace.head()
    committer = make(workspace)
    result = committer.commit(["partial.txt", "fully.txt", "other.txt", "ita.txt"])
    assert result.commit and result.error == ""
    assert result.held_paths == {"partial.txt": Why(Hold.STAGED_BY_YOU)}
    assert workspace.committed_paths_since(before) == {"fully.txt", "other.txt", "ita.txt"}
    assert workspace.show("HEAD:partial.txt").startswith("line 1\n")
    # the person's staging is intact: their own commit takes exactly the staged hunk
    assert workspace.git("diff", "--cached", "--name-only").split() == ["partial.txt"]
    workspace.git("commit", "-q", "-m", "my first hunk")
    assert workspace.show("HEAD:partial.txt").startswith("first hunk\n")
    assert "second hunk" not in workspace.show("HEAD:partial.txt")
    # committed (or unstaged), the path is theirs no longer: it syncs
    result = committer.commit(["partial.txt"])
    assert result.commit and result.held_paths == {}
    assert workspace.show("HEAD:partial.txt").endswith("second hunk\n")
    assert unsynced(workspace) == ""
    assert workspace.remote_head() == workspace.head()


def test_unstaging_releases_a_held_path(workspace):
    _partly_staged(workspace, "partial.txt")
    committer = make(workspace, 'remote = ""\n')
    assert committer.commit(["partial.txt"]).held_paths == {
        "partial.txt": Why(Hold.STAGED_BY_YOU)}
    workspace.git("restore", "--staged", "partial.txt")
    result = committer.commit(["partial.txt"])
    assert result.commit and result.statuses == {"partial.txt": "M"}
    assert unsynced(workspace) == ""


def test_a_directory_replaced_by_a_symlink_is_committed_as_git_records_it(workspace):
    """Issue 14: `mv d d.real && ln -s d.real d && echo x >> d.real/f.txt`: check-ignore
    failed on d/f.txt ("beyond a symbolic link") and the whole batch was retried forever."""
    workspace.write("d/f.txt", "f\n")
    workspace.git("add", "-A")
    workspace.git("commit", "-q", "-m", "d")
    before = workspace.head()
    os.rename(workspace.path("d"), workspace.path("d.real"))
    os.symlink("d.real", workspace.path("d"))
    with open(workspace.path("d.real/f.txt"), "a") as handle:
        handle.write("x\n")
    workspace.write("unrelated.txt", "u\n")
    result = make(workspace).commit(["d/f.txt", "d", "d.real/f.txt", "unrelated.txt"])
    assert result.error == "" and result.held_paths == {}
    assert result.statuses == {"d": "A", "d/f.txt": "D", "d.real/f.txt": "A",
                               "unrelated.txt": "A"}
    assert workspace.git("cat-file", "-p", "HEAD:d").strip() == "d.real"
    assert workspace.git("ls-tree", "HEAD", "d").split()[0] == "120000"
    assert unsynced(workspace) == ""
    assert workspace.git("rev-parse", "HEAD^").strip() == before
    # the reverse: the link replaced by a directory again
    os.unlink(workspace.path("d"))
    os.rename(workspace.path("d.real"), workspace.path("d"))
    result = make(workspace).commit(["d", "d/f.txt", "d.real/f.txt"])
    assert result.statuses == {"d": "D", "d/f.txt": "A", "d.real/f.txt": "D"}
    assert unsynced(workspace) == ""


def test_a_file_replaced_by_a_directory_commits_the_files_deletion(workspace):
    workspace.write("thing", "a file\n")
    workspace.git("add", "-A")
    workspace.git("commit", "-q", "-m", "thing")
    workspace.path("thing").unlink()
    workspace.write("thing/inside.txt", "now a directory\n")
    result = make(workspace).commit(["thing", "thing/inside.txt"])
    assert result.statuses == {"thing": "D", "thing/inside.txt": "A"}
    assert unsynced(workspace) == ""


def test_a_path_git_refuses_is_held_alone_and_the_rest_is_committed(workspace):
    """One path git refuses (a FIFO: "unsupported file type") never holds the others."""
    os.mkfifo(workspace.path("a-fifo"))
    names = [f"n{number}.txt" for number in range(5)]
    for name in names:
        workspace.write(name, name)
    before = workspace.head()
    result = make(workspace).commit(["a-fifo", *names])
    assert result.error == "" and result.commit
    assert set(result.held_paths) == {"a-fifo"}
    assert result.held_paths["a-fifo"].hold == Hold.GIT_REFUSED
    assert "unsupported file type" in result.held_paths["a-fifo"].text
    assert workspace.committed_paths_since(before) == set(names)


def test_a_nested_repository_is_held_with_its_reason(workspace):
    nested = workspace.path("vendor/lib")
    nested.mkdir(parents=True)
    git(nested, "init", "-q")
    workspace.write("vendor/lib/code.c", "int x;\n")
    workspace.write("mine.txt", "mine\n")
    result = make(workspace).commit(["vendor/lib/code.c", "vendor/lib", "mine.txt"])
    assert result.statuses == {"mine.txt": "A"}
    assert {path: why.hold for path, why in result.held_paths.items()} == {
        "vendor/lib/code.c": Hold.NESTED_REPOSITORY, "vendor/lib": Hold.NESTED_REPOSITORY}
    assert "nested git repository" in result.held_paths["vendor/lib"].text


def test_a_forged_batch_never_commits_a_block_path_or_an_unchanged_one(workspace):
    """Issue 14: the executor re-checks what a (possibly forged) Batch names."""
    workspace.patterns("BLOCK:secrets/.*:never\n")
    workspace.write("secrets/token.txt", "hunter2\n")
    workspace.write("notes.txt~", "editor backup\n")
    before = workspace.head()
    committer = make(workspace)
    result = committer.commit(["secrets/token.txt", "notes.txt~", "README.md", ".git/config",
                               "../outside", "a/" + "x" * 300])
    assert result.commit is None and result.error == ""
    assert workspace.head() == before
    assert committer.refused_by_rule == 2
    assert set(result.dropped) >= {"secrets/token.txt", "notes.txt~", ".git/config",
                                   "../outside"}


def test_a_pure_mode_change_is_committed_even_when_rechecked(workspace):
    """Issue 11: `chmod +x` was never committed (the re-check called it identical)."""
    workspace.write("run.sh", "echo hi\n")
    workspace.git("add", "-A")
    workspace.git("commit", "-q", "-m", "script")
    os.chmod(workspace.path("run.sh"), 0o755)
    result = make(workspace).commit(["run.sh"], recheck=dict.fromkeys(["run.sh"]))
    assert result.commit and result.statuses == {"run.sh": "M"}
    assert workspace.git("ls-tree", "HEAD", "run.sh").split()[0] == "100755"
    assert unsynced(workspace) == ""


def test_non_utf8_names_added_modified_renamed_and_deleted(workspace):
    """Issue 14: names that are not UTF-8 work in every git call (never on a command
    line)."""
    raw = os.fsdecode(b"caf\xe9.txt")
    moved = os.fsdecode(b"d\xfcr/caf\xe9-2.txt")
    committer = make(workspace)
    workspace.path(raw).write_text("one\n")
    assert committer.commit([raw]).statuses == {raw: "A"}
    workspace.path(raw).write_text("two\n")
    assert committer.commit([raw], recheck=dict.fromkeys([raw])).statuses == {raw: "M"}
    workspace.path(moved).parent.mkdir()
    os.rename(workspace.path(raw), workspace.path(moved))
    assert committer.commit([raw, moved]).statuses == {raw: "D", moved: "A"}
    workspace.path(moved).unlink()
    result = committer.commit([moved], recheck=dict.fromkeys([moved]))
    assert result.statuses == {moved: "D"} and result.error == ""
    assert unsynced(workspace) == ""
    assert workspace.remote_head() == workspace.head()


def test_the_commit_path_never_reads_the_whole_tree(workspace, monkeypatch):
    """Issue 13: the commit path must not grow with the tree.  Before, every commit read
    HEAD's whole tree into a temporary index (read-tree), wrote it back (write-tree) and
    reset the user's index by pathspec.  Now an edit of a tracked file costs hash-object,
    hash-object -t tree (only the trees along the path), hash-object -t commit, update-ref
    and the user's index entry; the user's index is read again only when someone else
    changed it."""
    committer = make(workspace, 'remote = ""\n')
    calls = []
    original = committer.git.result

    def counting(*args, **kwargs):
        calls.append(git_subcommand(args)[0])
        return original(*args, **kwargs)
    monkeypatch.setattr(committer.git, "result", counting)
    asked = LineChild.ask

    def counting_requests(line_child, *args, **kwargs):  # a long-lived git's requests
        calls.append(git_subcommand(line_child.args)[0])
        return asked(line_child, *args, **kwargs)
    monkeypatch.setattr(LineChild, "ask", counting_requests)
    workspace.write("deep/er/f.txt", "0\n")
    workspace.write("new.ignored", "ignored\n")
    assert committer.commit(["deep/er/f.txt", "new.ignored"]).commit
    assert "check-ignore" in calls  # a new path: is it ignored?
    for number in range(1, 3):
        calls.clear()
        workspace.write("deep/er/f.txt", f"{number}\n")
        aged = time.time_ns() - 10**9  # as the debounce leaves it: no racy second look
        os.utime(workspace.root / "deep/er/f.txt", ns=(aged, aged))
        assert committer.commit(["deep/er/f.txt"]).statuses == {"deep/er/f.txt": "M"}
        assert sorted(calls) == ["hash-object", "hash-object", "hash-object",
                                 "update-index", "update-ref"], calls
    assert not {"read-tree", "write-tree", "reset", "add", "ls-files"} & set(calls)
    workspace.write("mine.txt", "the user's own commit\n")
    workspace.git("add", "mine.txt")
    workspace.git("commit", "-q", "-m", "mine")
    calls.clear()
    workspace.write("deep/er/f.txt", "after the user's commit\n")
    assert committer.commit(["deep/er/f.txt"]).commit
    assert calls.count("diff-index") == 1  # their index changed: read once
    assert unsynced(workspace) == ""
    assert workspace.git("diff", "--cached", "--name-only") == ""


def test_pushed_history_rewritten_is_never_forced_replayed_or_merged_back(workspace):
    """Issue 11: an amend of a pushed commit: stop pushing with a clear reason; resume
    when HEAD contains the upstream again."""
    committer = make(workspace)
    workspace.write("a.txt", "a\n")
    assert committer.commit(["a.txt"]).pushed
    pushed = workspace.head()
    workspace.git("commit", "-q", "--amend", "-m", "amended after the push")
    amended = workspace.head()
    workspace.write("b.txt", "b\n")
    result = committer.commit(["b.txt"])
    assert result.commit and not result.pushed
    assert committer.push_hold.hold == Hold.HISTORY_REWRITTEN
    assert "origin/main" in committer.history_rewritten and "force" in committer.history_rewritten
    assert "history rewritten" in result.error
    assert workspace.remote_head() == pushed  # nothing forced
    assert workspace.git("rev-parse", "HEAD^").strip() == amended  # nothing replayed
    assert workspace.git("rev-list", "--count", f"{pushed}..HEAD").strip() == "2"
    assert committer.push() == (False, result.error)
    # The person publishes their rewrite: HEAD contains the upstream again.
    workspace.git("push", "-q", "--force-with-lease", "origin", "main")
    workspace.write("c.txt", "c\n")
    result = committer.commit(["c.txt"])
    assert result.pushed and committer.history_rewritten == "" and committer.push_hold is None
    assert workspace.remote_head() == workspace.head()


def test_push_gate_is_asked_with_the_range_and_can_hold_the_push(workspace):
    committer = make(workspace)
    upstream = workspace.head()
    asked = []
    committer.push_gate = lambda commits: asked.append(commits) or Why(Hold.SECRET, "a key")
    workspace.write("a.txt", "a\n")
    result = committer.commit(["a.txt"])
    assert result.commit and not result.pushed and "secret found: a key" in result.error
    assert asked == [f"{upstream}..{result.commit}"]
    assert workspace.remote_head() == upstream and committer.push_hold.hold == Hold.SECRET
    committer.push_gate = lambda commits: None
    assert committer.push() == (True, "") and committer.last_push_sent
    assert workspace.remote_head() == workspace.head()


def test_trees_composed_from_head_keep_their_neighbours_and_drop_emptied_directories(
        workspace, tmp_path):
    """The trees along the changed paths are built here: every other entry (a submodule's
    gitlink, an executable, a link) is kept; a directory emptied by deletions goes."""
    sub_origin = tmp_path / "sub-origin"
    git(tmp_path, "init", "-q", "-b", "main", str(sub_origin))
    (sub_origin / "s.txt").write_text("s\n")
    git(sub_origin, "add", "-A")
    git(sub_origin, "-c", "user.name=x", "-c", "user.email=y", "commit", "-q", "-m", "s")
    workspace.git("-c", "protocol.file.allow=always", "submodule", "add", "-q",
                  str(sub_origin), "lib/sub")
    workspace.write("lib/tool.sh", "echo\n")
    os.chmod(workspace.path("lib/tool.sh"), 0o755)
    os.symlink("tool.sh", workspace.path("lib/link"))
    workspace.write("lib/only/one.txt", "1\n")
    workspace.write("odd\nname.txt", "newline\n")
    workspace.git("add", "-A")
    workspace.git("commit", "-q", "-m", "base")
    before = workspace.git("ls-tree", "-r", "HEAD").splitlines()
    workspace.write("lib/new.txt", "new\n")
    workspace.path("lib/only/one.txt").unlink()
    workspace.write("odd\nname.txt", "changed\n")
    result = make(workspace, 'remote = ""\n').commit(
        ["lib/new.txt", "lib/only/one.txt", "odd\nname.txt"])
    assert result.statuses == {"lib/new.txt": "A", "lib/only/one.txt": "D",
                               "odd\nname.txt": "M"}
    after = workspace.git("ls-tree", "-r", "HEAD").splitlines()
    kept = [line for line in before if "one.txt" not in line and "name.txt" not in line]
    assert set(kept) <= set(after)  # gitlink, mode 100755, the link: as they were
    assert "lib/only" not in workspace.git("ls-tree", "-r", "-t", "--name-only", "HEAD")
    assert workspace.git("fsck", "--no-progress", "--no-dangling") == ""
    assert unsynced(workspace) == ""


def test_deleting_every_file_commits_the_empty_tree(tmp_path):
    root = tmp_path / "lonely"
    git(tmp_path, "init", "-q", "-b", "main", str(root))
    (root / "only.txt").write_text("x\n")
    git(root, "add", "-A")
    git(root, "-c", "user.name=x", "-c", "user.email=y", "commit", "-q", "-m", "one")
    (root / config_mod.CONFIG_NAME).write_text('[git]\nremote = ""\n')
    (root / "only.txt").unlink()
    result = Committer(config_mod.load(root)).commit(["only.txt"])
    assert result.statuses == {"only.txt": "D"}
    assert git(root, "ls-tree", "HEAD") == ""


def test_path_gate_holds_the_paths_it_names_and_the_rest_is_committed(workspace):
    committer = make(workspace, 'remote = ""\n')
    asked = []

    def gate(sizes, head):
        asked.append(sorted(sizes.items()))
        return {"key.pem": Why(Hold.SECRET, "a private key")}
    committer.path_gate = gate
    workspace.write("key.pem", "-----BEGIN PRIVATE KEY-----\n")
    workspace.write("notes.txt", "fine\n")
    workspace.path("README.md").unlink()
    result = committer.commit(["key.pem", "notes.txt", "README.md"])
    # deletions carry no content to check; the others come with their sizes
    assert asked == [[("key.pem", 28), ("notes.txt", 5)]]
    assert result.held_paths == {"key.pem": Why(Hold.SECRET, "a private key")}
    assert result.statuses == {"notes.txt": "A", "README.md": "D"}


def test_a_file_rewritten_after_the_path_gate_judged_its_size_is_held_not_committed(workspace):
    """The size gate judges the file as planned; grown past the limit before it is hashed,
    it must not be committed unjudged: held, to be looked at again."""
    committer = make(workspace, 'remote = ""\n')

    def gate(sizes, head):
        workspace.path("grows.txt").write_text("x" * 10_000)  # grows after being judged
        return {path: Why(Hold.OVERSIZED, "too large") for path, size in sizes.items()
                if size > 1000}
    committer.path_gate = gate
    workspace.write("grows.txt", "small\n")
    workspace.write("other.txt", "fine\n")
    result = committer.commit(["grows.txt", "other.txt"])
    assert result.held_paths["grows.txt"].hold is Hold.CHANGED_WHILE_COMMITTED
    assert result.statuses == {"other.txt": "A"}
    assert "grows.txt" not in git(workspace.root, "ls-tree", "--name-only", "HEAD")


def test_a_file_deleted_after_it_was_planned_is_committed_as_a_deletion(workspace):
    committer = make(workspace, 'remote = ""\n')

    def gate(sizes, head):
        workspace.path("README.md").unlink()  # tracked, gone between planning and hashing
        workspace.path("brief.txt").unlink()  # never committed
        return {}
    committer.path_gate = gate
    workspace.write("README.md", "changed\n")
    workspace.write("brief.txt", "short-lived\n")
    workspace.write("kept.txt", "kept\n")
    result = committer.commit(["README.md", "brief.txt", "kept.txt"])
    assert result.statuses == {"README.md": "D", "kept.txt": "A"}
    assert not result.held_paths


def test_a_large_committed_file_leaves_a_refreshed_index_entry(workspace):
    """Entries written from HEAD carry no stat data; for a large file that would mean a
    hash at every `git status`: the index is refreshed once instead (content-checked)."""
    committer = make(workspace, 'remote = ""\n')
    workspace.path("big.bin").write_bytes(os.urandom(2 * 1024 * 1024))
    assert committer.commit(["big.bin"]).commit
    entry = subprocess.run(["git", "ls-files", "--debug", "big.bin"], cwd=workspace.root,
                           capture_output=True, text=True, check=True).stdout
    assert "size: 2097152" in entry  # stat data recorded
    assert unsynced(workspace) == ""


def test_the_push_runs_beside_the_update_of_the_persons_index(workspace):
    """The push needs only the commit: it is on the remote while the person's index is
    still being written (before, the push waited for it), and the index is written before
    commit() returns."""
    committer = make(workspace)
    workspace.write("notes/a.md", "one\n")
    seen_remote: list[str | None] = []
    update_index = committer._after_commit

    def slow_index_update(*args):
        deadline = time.monotonic() + 10
        while workspace.remote_head() != workspace.head() and time.monotonic() < deadline:
            time.sleep(0.02)
        seen_remote.append(workspace.remote_head())
        update_index(*args)
    committer._after_commit = slow_index_update
    result = committer.commit(["notes/a.md"])
    assert result.pushed and not result.error
    assert seen_remote == [result.commit]  # pushed while the index waited
    staged = workspace.git("diff", "--cached", "--name-only")
    assert staged.strip() == ""  # the index holds the commit's entry: nothing left staged


def test_integrating_a_moved_remote_waits_for_the_index_update(workspace, tmp_path):
    """A rejected push integrates the remote's commits, which touches the index: never
    while the commit's own update of the index is still running."""
    committer = make(workspace)
    other_clone_pushes(workspace, tmp_path, {"theirs.txt": "moved the remote\n"})
    workspace.write("mine.txt", "mine\n")
    events: list[str] = []
    update_index, integrate = committer._after_commit, committer.integrate_remote

    def slow_index_update(*args):
        time.sleep(0.5)  # the push is rejected meanwhile
        update_index(*args)
        events.append("index written")

    def recorded_integration(*args):
        events.append("integrating")
        return integrate(*args)
    committer._after_commit, committer.integrate_remote = slow_index_update, \
        recorded_integration
    result = committer.commit(["mine.txt"])
    assert result.pushed and not result.error
    assert events == ["index written", "integrating"]
    assert workspace.remote_head() == workspace.head()


def test_a_new_file_unchanged_since_well_before_its_observation_is_not_read_again(workspace):
    """The re-check of a new file is the content layer's verdict again: when the file has
    not changed since well before it was first observed, that verdict, reached reading it
    after the observation, stands (a dirty start of thousands is not read twice).  Changed
    since, or observed at an unknown time, it is read again."""
    committer = make(workspace)
    for name in ("old.stamp", "fresh.stamp", "unknown.stamp"):
        workspace.write(name, "1796035650\n")  # a timestamp alone: churn when re-read
    changed = os.lstat(workspace.path("fresh.stamp")).st_ctime
    result = committer.commit(["old.stamp", "fresh.stamp", "unknown.stamp"], push=False,
                              recheck={"old.stamp": changed + 5.0,
                                       "fresh.stamp": changed - 5.0, "unknown.stamp": None})
    assert result.statuses == {"old.stamp": "A"}
    assert set(result.dropped) == {"fresh.stamp", "unknown.stamp"}


def test_blobs_trees_commits_and_head_go_through_gits_that_outlive_a_commit(workspace):
    """A commit's files, trees, commit object and HEAD's move are requests to four
    long-lived gits, not processes of their own; one that has ended is started again, and
    the commit is made.  They end after a rest."""
    from gitsieve.common.git.gateway import LONG_LIVED_IDLE
    committer = make(workspace)
    spawned = []
    spawn = committer.git.spawn

    def counting(*args, **kwargs):
        if git_subcommand(args)[0] != "cat-file":  # the content judge's reader of HEAD
            spawned.append(git_subcommand(args)[:4])
        return spawn(*args, **kwargs)
    committer.git.spawn = counting
    for number in range(3):
        workspace.write("deep/f.txt", f"{number}\n")
        assert committer.commit(["deep/f.txt"]).pushed
    assert sorted(spawned) == [("hash-object", "-w", "--stdin-paths"),
                               ("hash-object", "-w", "-t", "commit"),
                               ("hash-object", "-w", "-t", "tree"),
                               ("update-ref", "-m", "gitsieve: sync", "--stdin")]
    for child in committer._long_lived():
        os.kill(child.child.pid, signal.SIGKILL)
    time.sleep(0.2)
    workspace.write("deep/f.txt", "after the kill\n")
    assert committer.commit(["deep/f.txt"]).pushed
    assert workspace.show("HEAD:deep/f.txt") == "after the kill\n"
    assert workspace.remote_head() == workspace.head()
    assert len(spawned) == 8
    committer.close_idle(time.monotonic() + 1)  # used a moment ago: kept
    assert committer._writers["tree"].child is not None
    committer.close_idle(time.monotonic() + LONG_LIVED_IDLE)  # at rest: ended
    assert all(child.child is None for child in committer._long_lived())
    workspace.write("deep/f.txt", "after a rest\n")
    assert committer.commit(["deep/f.txt"]).pushed and len(spawned) == 12
    committer.close()
    assert all(child.child is None for child in committer._long_lived())
    workspace.git("fsck", "--no-progress")


def test_a_git_without_update_ref_transactions_moves_head_one_process_a_commit(workspace):
    """``update-ref --stdin`` that gives no transaction (git before 2.27, here a refused
    option): HEAD moves through a plain update-ref, now and from then on."""
    committer = make(workspace)
    committer._head_mover = LineChild(committer.git, "update-ref", "--no-such-option",
                                      "--stdin")
    for number in range(2):
        workspace.write("f.txt", f"{number}\n")
        assert committer.commit(["f.txt"]).pushed
        assert committer._head_mover is None
    assert workspace.show("HEAD:f.txt") == "1\n" and workspace.commit_count() == 3


def test_a_large_directory_tree_is_patched_and_equals_gits_own(workspace, monkeypatch):
    """A directory of more than LARGE_TREE entries: the first commit lays its tree out, a
    later one that only changes files there patches the object ids in place; an added
    file or a mode change lays it out again.  Every tree is the one git itself writes."""
    from gitsieve.common.git import committer as committer_mod
    committer = make(workspace)
    big = workspace.root / "big"
    big.mkdir()
    for number in range(committer_mod.LARGE_TREE + 50):
        (big / f"f{number:05d}.txt").write_text(f"{number}\n")
    workspace.git("add", "-A")
    workspace.git("commit", "-q", "-m", "big directory")
    layouts = []
    lay_out = committer_mod.TreeLayout.of
    monkeypatch.setattr(committer_mod.TreeLayout, "of",  # large trees laid out
                        classmethod(lambda cls, entries: (
                            len(entries) >= committer_mod.LARGE_TREE
                            and layouts.append(len(entries))) or lay_out(entries)))

    def commit_and_compare(paths: list[str]) -> None:
        before = workspace.head()
        assert committer.commit(paths).commit
        scratch = {**os.environ, "GIT_INDEX_FILE": str(workspace.root / ".git" / "scratch")}
        for args in (("read-tree", before), ("add", "--", *paths)):
            subprocess.run(["git", *args], cwd=workspace.root, env=scratch, check=True)
        written = subprocess.run(["git", "write-tree"], cwd=workspace.root, env=scratch,
                                 check=True, capture_output=True, text=True).stdout.strip()
        assert workspace.git("rev-parse", "HEAD^{tree}").strip() == written

    (big / "f00001.txt").write_text("changed\n")
    commit_and_compare(["big/f00001.txt"])
    assert layouts == [committer_mod.LARGE_TREE + 50]
    (big / "f00002.txt").write_text("changed\n")
    (big / "f00900.txt").write_text("changed too\n")
    commit_and_compare(["big/f00002.txt", "big/f00900.txt"])
    assert len(layouts) == 1  # patched, not laid out again
    (big / "new.txt").write_text("new\n")
    commit_and_compare(["big/new.txt"])
    (big / "f00003.txt").chmod(0o755)
    commit_and_compare(["big/f00003.txt"])
    assert len(layouts) == 3
    workspace.git("fsck", "--no-progress")


def test_a_long_lived_git_that_cannot_start_leaves_the_commit_to_plain_ones(workspace):
    committer = make(workspace)

    class Refusing:  # the content judge keeps its own reader of HEAD
        def spawn(self, *_args, **_kwargs):
            raise OSError(24, "Too many open files")
    committer._writers["tree"].git = committer._writers["commit"].git = Refusing()
    committer._head_mover.git = Refusing()
    workspace.write("deep/f.txt", "made without long-lived gits\n")
    result = committer.commit(["deep/f.txt"])
    assert result.pushed and workspace.show("HEAD:deep/f.txt") == "made without long-lived gits\n"


def _loose_and_packs(workspace) -> tuple[int, int]:
    counts = dict(line.split(": ") for line in
                  workspace.git("count-objects", "-v").splitlines())
    return int(counts["count"]), int(counts["packs"])


def test_many_new_files_are_written_as_one_pack_with_gits_own_ids(workspace):
    """A batch of new files becomes one pack, not a loose object each; every committed id
    is git's own hash (clean filters applied), and the private index is gone."""
    from gitsieve.common.git.committer import PACKED_INDEX_PREFIX, PACKED_WRITE_MIN
    workspace.write(".gitattributes", "*.crlf text eol=lf\n*.up filter=upper\n")
    workspace.git("config", "filter.upper.clean", "tr a-z A-Z")
    workspace.git("add", "-A")
    workspace.git("commit", "-q", "-m", "base")
    before = workspace.head()
    paths = [f"data/f{i:04d}.txt" for i in range(PACKED_WRITE_MIN + 10)]
    for number, path in enumerate(paths):
        workspace.write(path, f"file {number}\n")
    workspace.write("data/windows.crlf", "one\r\ntwo\r\n")
    workspace.write("data/shout.up", "quiet words\n")
    paths += ["data/windows.crlf", "data/shout.up"]
    committer = make(workspace)
    loose_before, packs_before = _loose_and_packs(workspace)

    result = committer.commit(paths)

    assert result.error == "" and result.commit == workspace.head()
    assert workspace.committed_paths_since(before) == set(paths)
    loose, packs = _loose_and_packs(workspace)
    assert packs == packs_before + 1
    assert loose - loose_before < 20  # the trees, the commit, the two converted files
    assert workspace.show("HEAD:data/windows.crlf") == "one\ntwo\n"
    assert workspace.show("HEAD:data/shout.up") == "QUIET WORDS\n"
    listed = workspace.git("ls-tree", "-r", "HEAD", "data").splitlines()
    committed = {line.split("\t")[1]: line.split()[2] for line in listed}
    expected = subprocess.run(["git", "hash-object", "--stdin-paths"], cwd=workspace.root,
                              input="\n".join(paths) + "\n", capture_output=True,
                              text=True, check=True).stdout.split()
    assert [committed[path] for path in paths] == expected
    assert not list(committer.config.git_dir.glob(PACKED_INDEX_PREFIX + "*"))
    workspace.git("fsck", "--connectivity-only")
    assert result.pushed and workspace.remote_head() == workspace.head()


def test_files_whose_objects_exist_are_not_written_again(workspace):
    from gitsieve.common.git.committer import PACKED_WRITE_MIN
    paths = [f"data/f{i:04d}.txt" for i in range(PACKED_WRITE_MIN)]
    for number, path in enumerate(paths):
        workspace.write(path, f"file {number}\n")
    committer = make(workspace)
    assert committer.write_objects(paths) == len(paths)  # ahead of the commit: one pack
    _, packs = _loose_and_packs(workspace)

    assert committer.commit(paths).commit == workspace.head()
    assert _loose_and_packs(workspace)[1] == packs


def test_a_private_index_left_by_a_killed_executor_is_removed(workspace):
    from gitsieve.common.git.committer import PACKED_INDEX_PREFIX
    git_dir = workspace.load().git_dir
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = git_dir / f"{PACKED_INDEX_PREFIX}{dead.pid}-1.index"
    stale.write_bytes(b"DIRC")
    (git_dir / f"{stale.name}.lock").write_bytes(b"")
    live = git_dir / f"{PACKED_INDEX_PREFIX}{os.getpid()}-1.index"
    live.write_bytes(b"DIRC")

    make(workspace)

    assert not stale.exists() and not (git_dir / f"{stale.name}.lock").exists()
    assert live.exists()  # another committer's, writing now


def test_packs_written_by_commits_are_tidied_by_gits_auto_gc(workspace):
    from gitsieve.common.git.committer import PACKED_WRITE_MIN
    workspace.git("config", "gc.autoPackLimit", "2")
    committer = make(workspace)
    for round_number in range(3):
        paths = [f"r{round_number}/f{i:04d}.txt" for i in range(PACKED_WRITE_MIN)]
        for path in paths:
            workspace.write(path, f"{path}\n")
        assert committer.commit(paths).commit == workspace.head()
    # gc --auto repacks once more than two packs exist (in the background, as git does)
    deadline = time.monotonic() + 30
    while _loose_and_packs(workspace)[1] > 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    loose, packs = _loose_and_packs(workspace)
    assert packs <= 2 and loose < PACKED_WRITE_MIN  # the files went into packs, then one
    workspace.git("fsck", "--connectivity-only")


def test_a_git_with_a_deadline_returns_as_soon_as_it_ends(workspace):
    """Every push has a deadline.  sh's own timeout looked every 0.1 s, and each call
    returned only after that look: every push was 0.1 s late."""
    from gitsieve.common.git.gateway import Git
    git_here = Git(workspace.root)
    spent = []
    for _ in range(5):
        started = time.monotonic()
        assert git_here.result("--version", timeout=60)[0] == 0
        spent.append(time.monotonic() - started)
    assert min(spent) < 0.06, spent
    assert git_here.result("-c", "alias.three=!exit 3", "three", timeout=60)[0] == 3


def test_a_git_past_its_deadline_is_killed_and_reported(workspace):
    import pytest
    from gitsieve.common.git.gateway import Git, GitError
    started = time.monotonic()
    # The sleep holds none of git's pipes, so git's output ends when git is killed (the
    # orphaned sleep ends by itself).
    hang = "alias.hang=!exec sleep 5 >/dev/null 2>&1 </dev/null"
    with pytest.raises(GitError, match="timed out after 0.5s"):
        Git(workspace.root).result("-c", hang, "hang", timeout=0.5)
    assert time.monotonic() - started < 4  # killed at the deadline, not waited for


# ----- submodules: .gitmodules and the gitlinks the person staged go together -------------
def _submodule_origin(tmp_path):
    origin = tmp_path / "lib-origin"
    git(tmp_path, "init", "-q", "-b", "main", str(origin))
    (origin / "lib.txt").write_text("lib\n")
    git(origin, "add", "-A")
    git(origin, "commit", "-q", "-m", "lib")
    return origin


def _add_submodule(workspace, origin, rel="sub") -> str:
    workspace.git("-c", "protocol.file.allow=always", "submodule", "add", "-q", str(origin),
                  rel)
    return git(origin, "rev-parse", "HEAD").strip()


def _remote_entries(workspace) -> dict[str, str]:
    """path -> "mode oid" on the remote's main."""
    out = git(workspace.remote, "ls-tree", "-r", "main")
    return {line.split("\t", 1)[1]: line.split("\t", 1)[0].replace(" commit ", " ")
            .replace(" blob ", " ") for line in out.splitlines()}


def test_a_submodule_added_is_pushed_with_its_gitlink_and_removed_with_it(workspace,
                                                                          tmp_path):
    """`git submodule add` stages .gitmodules and the gitlink: gitsieve pushed .gitmodules
    alone (the watcher reports it first; the gitlink only at a reconcile, and then it was
    held as a nested repository), so the remote named a submodule that did not exist."""
    origin = _submodule_origin(tmp_path)
    commit = _add_submodule(workspace, origin)
    committer = make(workspace)

    result = committer.commit([".gitmodules", "sub/lib.txt"])

    assert result.error == "" and result.held_paths == {}
    assert result.statuses == {".gitmodules": "A", "sub": "A"}
    remote = _remote_entries(workspace)
    assert remote["sub"] == f"160000 {commit}" and ".gitmodules" in remote
    assert unsynced(workspace) == ""  # the person's index agrees: nothing left staged
    # A file of the submodule is the submodule's (git status never lists it).
    workspace.write("sub/lib.txt", "edited in the submodule\n")
    later = committer.commit(["sub/lib.txt", "sub"])
    assert later.commit is None and later.held_paths == {}

    # `git rm sub` stages the gitlink's removal and the edit of .gitmodules: both go.
    workspace.git("rm", "-q", "-f", "sub")
    removed = committer.commit(["sub/lib.txt", ".gitmodules"])
    assert removed.statuses == {".gitmodules": "M", "sub": "D"}
    assert "sub" not in _remote_entries(workspace)
    assert workspace.show("origin/main:.gitmodules") == ""
    assert unsynced(workspace) == ""


def test_a_submodules_new_commit_is_held_until_staged_and_deinit_changes_nothing(
        workspace, tmp_path):
    """A commit made in a submodule is not the superproject's until the person stages it
    (the submodule's remote may not have it): held with its own reason, then committed as
    staged.  `git submodule deinit` empties the directory: nothing to commit, nothing held
    (before: held as "a nested git repository: ... add it as a submodule")."""
    origin = _submodule_origin(tmp_path)
    _add_submodule(workspace, origin)
    workspace.git("commit", "-q", "-m", "add sub")
    sub = workspace.path("sub")
    git(sub, "-c", "user.name=x", "-c", "user.email=y", "commit", "-q", "--allow-empty",
        "-m", "new in the submodule")
    bumped = git(sub, "rev-parse", "HEAD").strip()
    committer = make(workspace)

    held = committer.commit(["sub"])
    assert held.commit is None
    assert held.held_paths["sub"].hold == Hold.SUBMODULE_NOT_STAGED
    assert bumped[:12] in held.held_paths["sub"].text

    workspace.git("add", "sub")
    staged = committer.commit(["sub"])
    assert staged.statuses == {"sub": "M"} and staged.held_paths == {}
    assert _remote_entries(workspace)["sub"] == f"160000 {bumped}"

    workspace.git("submodule", "deinit", "-q", "-f", "sub")
    assert committer.commit(["sub", "sub/lib.txt"]).held_paths == {}
    assert _remote_entries(workspace)["sub"] == f"160000 {bumped}"
    assert unsynced(workspace) == ""


def test_a_held_gitmodules_holds_the_gitlinks_staged_with_it(workspace, tmp_path):
    """Never one without the other: .gitmodules partly staged by the person is held, and so
    is the gitlink it names, with a reason saying so."""
    origin = _submodule_origin(tmp_path)
    _add_submodule(workspace, origin)
    with open(workspace.path(".gitmodules"), "a") as gitmodules:
        gitmodules.write("\tbranch = main\n")  # an unstaged edit beside the staged ones
    before = workspace.head()

    result = make(workspace).commit([".gitmodules"])

    assert result.commit is None and workspace.head() == before
    assert result.held_paths[".gitmodules"].hold == Hold.STAGED_BY_YOU
    assert result.held_paths["sub"].hold == Hold.WITH_SUBMODULE
    assert ".gitmodules: staged by you" in result.held_paths["sub"].text


# ----- signing: commit.gpgSign is followed, and a failure holds, never commits unsigned ----
def ssh_signing(workspace, tmp_path, key: str = "key") -> str:
    """commit.gpgSign with an ssh key (no agent needed); returns the key's path."""
    import shutil

    import pytest
    if shutil.which("ssh-keygen") is None:
        pytest.skip("ssh-keygen is not installed")
    path = tmp_path / key
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "user@example.com",
                    "-f", str(path)], check=True)
    allowed = tmp_path / "allowed-signers"
    allowed.write_text(f"user@example.com {(tmp_path / (key + '.pub')).read_text()}")
    for key_name, value in (("gpg.format", "ssh"), ("user.signingkey", str(path)),
                            ("commit.gpgSign", "true"),
                            ("gpg.ssh.allowedSignersFile", str(allowed))):
        workspace.git("config", key_name, value)
    return str(path)


def test_commits_are_signed_when_the_persons_config_asks_for_it(workspace, tmp_path):
    """commit-tree, plumbing, never reads commit.gpgSign: every sync commit was unsigned."""
    ssh_signing(workspace, tmp_path)
    workspace.write("signed.txt", "mine\n")
    result = make(workspace).commit(["signed.txt"])
    assert result.commit == workspace.head() and result.pushed
    verified = subprocess.run(["git", "verify-commit", "HEAD"], cwd=workspace.root,
                              capture_output=True, text=True)
    assert verified.returncode == 0 and 'Good "git" signature' in verified.stderr


def test_a_signing_failure_holds_every_path_and_commits_nothing_unsigned(workspace, tmp_path):
    key = ssh_signing(workspace, tmp_path)
    workspace.git("config", "user.signingkey", str(tmp_path / "no-such-key"))
    workspace.write("a.txt", "a\n")
    workspace.write("b.txt", "b\n")
    before = workspace.head()
    committer = make(workspace)

    result = committer.commit(["a.txt", "b.txt"])

    assert result.commit is None and result.error == "" and workspace.head() == before
    assert {path: why.hold for path, why in result.held_paths.items()} == {
        "a.txt": Hold.SIGNING_FAILED, "b.txt": Hold.SIGNING_FAILED}
    assert "no-such-key" in result.held_paths["a.txt"].text
    assert workspace.path("a.txt").read_text() == "a\n"  # the person's changes are intact
    workspace.git("config", "user.signingkey", key)  # read again: the config file changed
    assert committer.commit(["a.txt", "b.txt"]).statuses == {"a.txt": "A", "b.txt": "A"}
    assert subprocess.run(["git", "verify-commit", "HEAD"], cwd=workspace.root,
                          capture_output=True).returncode == 0


# ----- paths longer than the system lets a process name --------------------------------------
def _deep_directory(root, length: int) -> str:
    """A directory below ``root`` whose relative path is ``length`` bytes (made through
    directory descriptors: no path that long is ever named)."""
    parts, used = [], 0
    while used < length:
        size = min(200, length - used - (1 if parts else 0))
        parts.append("d" * size)
        used += size + (1 if len(parts) > 1 else 0)
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for part in parts:
            os.mkdir(part, dir_fd=fd)
            deeper = os.open(part, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = deeper
        written = os.open("deep.txt", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
        os.write(written, b"deep\n")
        os.close(written)
    finally:
        os.close(fd)
    return "/".join(parts)


def test_a_path_too_long_to_name_from_root_is_held_as_such_and_the_rest_goes(workspace):
    """git, run in the work tree, lists a path whose relative name fits PATH_MAX but whose
    absolute one does not: it was held as "git refuses it: cannot be looked at: File name
    too long", though git refused nothing."""
    limit = os.pathconf(workspace.root, "PC_PATH_MAX")
    deep = _deep_directory(workspace.root, limit - 20) + "/deep.txt"
    assert len(deep) < limit < len(str(workspace.root / deep))
    workspace.write("ok.txt", "ok\n")

    result = make(workspace).commit([deep, "ok.txt"])

    assert result.statuses == {"ok.txt": "A"} and result.pushed
    assert result.held_paths[deep].hold == Hold.PATH_TOO_LONG
    assert f"over this system's limit of {limit}" in result.held_paths[deep].text


def test_a_directory_git_cannot_look_into_is_named_in_one_warning(workspace, caplog):
    """A path longer than PATH_MAX: git status leaves it out (a warning on its stderr), the
    watcher cannot watch it, and nothing ever said it was not synced."""
    import logging

    from gitsieve.common.git.gateway import Git
    deep = _deep_directory(workspace.root, os.pathconf(workspace.root, "PC_PATH_MAX") + 100)
    workspace.write("other.txt", "other\n")
    with caplog.at_level(logging.WARNING):
        for _ in range(2):  # said once, not at every reconcile nor by every command
            assert Git(workspace.root).dirty_paths() == ["other.txt"]
    warned = [record.getMessage() for record in caplog.records]
    assert len(warned) == 1 and "too long" in warned[0] and len(warned[0]) < 400
    assert warned[0].startswith(f"git cannot look into {deep[:100]}...")


def test_a_repository_the_person_stages_whole_is_committed_as_its_gitlink(workspace,
                                                                           tmp_path):
    """`git add vendor/clone` of a repository (no .gitmodules: git calls it embedded) stages
    a gitlink alone: the person's own staging, committed as such; the clone's files stay
    its own."""
    clone = workspace.path("vendor/clone")
    git(tmp_path, "clone", "-q", str(_submodule_origin(tmp_path)), str(clone))
    workspace.git("add", "vendor/clone")
    result = make(workspace).commit(["vendor/clone", "vendor/clone/lib.txt"])
    assert result.statuses == {"vendor/clone": "A"} and result.held_paths == {}
    assert _remote_entries(workspace)["vendor/clone"] == \
        f"160000 {git(clone, 'rev-parse', 'HEAD').strip()}"


def test_a_file_of_a_submodule_deinit_emptied_is_answered_not_ignored_without_an_error(
        workspace, tmp_path):
    """`git submodule deinit` deletes the submodule's files, and their deletions reach L1:
    with no .git left there, check-ignore was asked and refused the whole request ("is in
    submodule"), and L1 logged an ERROR and counted an error."""
    from gitsieve.common.git.gateway import Git
    from gitsieve.common.git.ignore import IgnoreChecker
    _add_submodule(workspace, _submodule_origin(tmp_path))
    workspace.git("commit", "-q", "-m", "add sub")
    workspace.git("submodule", "deinit", "-q", "-f", "sub")
    workspace.write("a.ignored", "x\n")
    checker = IgnoreChecker(Git(workspace.root), workspace.root / ".git")
    try:
        assert checker.ignored(["sub/lib.txt", "a.ignored", "b.txt"]) == {"a.ignored"}
    finally:
        checker.close()


def _same_as_commit_tree(workspace, committer: Committer, message: bytes) -> str:
    """Commit HEAD's tree on HEAD through the committer; assert git's ``commit-tree``,
    given the same moment, makes the very same object.  The commit's id."""
    head = workspace.head()
    tree = workspace.git("rev-parse", "HEAD^{tree}").strip()
    made = committer._commit_tree(tree, ["-p", head], message)
    body = workspace.git("cat-file", "commit", made)
    dates = {line.split(" ", 1)[0]: " ".join(line.rsplit(" ", 2)[-2:])
             for line in body.splitlines()[:4] if line.startswith(("author ", "committer "))}
    # the moment is the clock's, in git's own time zone
    now = committer.git.text("var", "GIT_COMMITTER_IDENT", env=committer._settings().env)
    seconds, zone = now.rsplit(" ", 2)[-2:]
    for moment in dates.values():
        assert moment.split()[1] == zone and abs(int(moment.split()[0]) - int(seconds)) < 5
    env = {**committer._settings().env, "GIT_AUTHOR_DATE": dates["author"],
           "GIT_COMMITTER_DATE": dates["committer"]}
    expected = committer.git.text("commit-tree", tree, "-p", head, "-F", "-",
                                  input=message, env=env)
    assert made == expected, (body, workspace.git("cat-file", "commit", expected))
    return made


def test_trees_are_written_loose_uncompressed_and_git_reads_them(workspace):
    """A commit on a big directory deflated its tree (mostly object ids, which do not
    compress: 5.3 ms of each commit on the bench's 100k-file tree); trees now go to disk
    stored, and gc packs them compressed (fails before: the loose tree is smaller than the
    tree)."""
    committer = make(workspace, 'remote = ""\n')
    for number in range(200):
        workspace.write(f"big/file-with-a-long-shared-name-{number:04d}.txt", f"{number}\n")
    assert committer.commit([f"big/file-with-a-long-shared-name-{number:04d}.txt"
                             for number in range(200)]).commit
    tree = subprocess.run(["git", "rev-parse", "HEAD:big"], cwd=workspace.root, check=True,
                          capture_output=True, text=True).stdout.strip()
    raw = subprocess.run(["git", "cat-file", "tree", tree], cwd=workspace.root, check=True,
                         capture_output=True).stdout
    loose = workspace.root / ".git" / "objects" / tree[:2] / tree[2:]
    assert loose.stat().st_size >= len(raw) > 8000  # stored, not deflated
    assert zlib.decompress(loose.read_bytes()) == b"tree %d\0" % len(raw) + raw
    fsck = subprocess.run(["git", "fsck", "--strict", "--no-dangling"], cwd=workspace.root,
                          capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stderr
    assert workspace.show("HEAD:big/file-with-a-long-shared-name-0199.txt") == "199\n"


def test_a_commit_object_written_here_is_the_one_commit_tree_makes(workspace, monkeypatch):
    """The commit object goes to a long-lived git instead of a commit-tree process: byte
    for byte what commit-tree makes, whatever identity git's rules give (configured,
    author.* and committer.*, names git cleans up, the environment, none at all), in a
    time zone east or west of UTC; commit-tree itself where it alone can (a commit
    encoding, a message that is not UTF-8, dates set in the environment)."""
    message = "sync: notes/ü.md\n\nGitsieve-Sync: true\n".encode()
    try:
        for zone in ("XST-5:30", "YST+3:30"):
            monkeypatch.setenv("TZ", zone)
            time.tzset()
            workspace.git("config", "user.name", "Ann Person")
            workspace.git("config", "user.email", "ann@example.com")
            committer = make(workspace)
            assert committer._settings().idents == (b"Ann Person <ann@example.com>",) * 2
            _same_as_commit_tree(workspace, committer, message)

        workspace.git("config", "author.name", " .Writer, Of Things;. ")
        workspace.git("config", "committer.email", "<machine@example.com>")
        monkeypatch.setenv("GIT_COMMITTER_NAME", "From The Environment")
        committer = make(workspace)
        author, committer_ident = committer._settings().idents
        assert author == b"Writer, Of Things <ann@example.com>"
        assert committer_ident == b"From The Environment <machine@example.com>"
        _same_as_commit_tree(workspace, committer, message)
        monkeypatch.delenv("GIT_COMMITTER_NAME")

        for key in ("user.name", "user.email", "author.name", "committer.email"):
            workspace.git("config", "--unset", key)
        committer = make(workspace)  # nothing configured: gitsieve's fallback identity
        assert committer._settings().idents is not None
        _same_as_commit_tree(workspace, committer, message)

        # Latin-1 bytes: commit-tree converts them; the object is commit-tree's own
        _same_as_commit_tree(workspace, committer, b"sync: caf\xe9.txt\n")

        workspace.git("config", "i18n.commitEncoding", "ISO-8859-1")
        committer = make(workspace)
        assert committer._settings().idents is None
        assert "encoding ISO-8859-1" in workspace.git(
            "cat-file", "commit", _same_as_commit_tree(workspace, committer, b"sync: x\n"))
        workspace.git("config", "--unset", "i18n.commitEncoding")

        monkeypatch.setenv("GIT_AUTHOR_DATE", "1700000000 +0000")
        assert make(workspace)._settings().idents is None
    finally:
        monkeypatch.delenv("TZ", raising=False)
        time.tzset()


def test_the_kept_blob_writer_follows_attributes_and_configuration_as_they_change(
        workspace):
    """The long-lived git writing a commit's files reads the clean filters' configuration
    and .gitattributes once; when they change (a .gitattributes above the file, not itself
    committed, new or rewritten; the repository's configuration) the file committed is
    still the one `git add` would store.  Failed before the writer looked at them: the
    filter added afterwards was never applied."""
    committer = make(workspace)
    workspace.git("config", "filter.upper.clean", "tr a-z A-Z")
    workspace.git("config", "filter.strip.clean", "tr -d x")

    def committed_as_git_adds(path: str, content: str) -> str:
        workspace.write(path, content)
        aged = time.time_ns() - 10**9  # as the debounce leaves it: no racy second look
        os.utime(workspace.path(path), ns=(aged, aged))
        assert committer.commit([path]).commit
        stored = workspace.git("rev-parse", f"HEAD:{path}").strip()
        assert stored == workspace.git("hash-object", path).strip()  # git's own answer
        return workspace.show(f"HEAD:{path}")

    assert committed_as_git_adds("sub/f.up", "plain x\n") == "plain x\n"
    starts = committer._blob_writer.starts
    assert committed_as_git_adds("sub/f.up", "still plain x\n") == "still plain x\n"
    assert committer._blob_writer.starts == starts  # nothing changed: the same git
    workspace.write(".gitattributes", "*.up filter=upper\n")  # at the top, not committed
    assert committed_as_git_adds("sub/f.up", "now upper x\n") == "NOW UPPER X\n"
    workspace.write("sub/.gitattributes", "*.up filter=strip\n")  # closer to the file
    assert committed_as_git_adds("sub/f.up", "now x-less\n") == "now -less\n"
    workspace.git("config", "filter.strip.clean", "tr -d l")  # the filter itself changed
    assert committed_as_git_adds("sub/f.up", "now x-less\n") == "now x-ess\n"
    assert committer._blob_writer.starts == starts + 3
    committer.close()


def test_a_name_changed_in_the_users_own_config_is_on_the_next_commit(workspace, tmp_path,
                                                                      monkeypatch):
    """The identity is read ahead and kept (a process a commit less), yet a person who
    changes user.name in ~/.gitconfig sees it on the next commit, as with git commit."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    for key in ("user.name", "user.email"):
        workspace.git("config", "--unset", key, check=False)
    (tmp_path / ".gitconfig").write_text("[user]\n\tname = First Name\n\temail = me@example.com\n")
    committer = make(workspace)
    for number, name in enumerate(("First Name", "Second Name")):
        if number:
            (tmp_path / ".gitconfig").write_text(
                f"[user]\n\tname = {name}\n\temail = me@example.com\n")
        workspace.write("a.txt", f"{number}\n")
        assert committer.commit(["a.txt"], push=False).commit
        assert workspace.git("log", "-1", "--format=%an <%ae>|%cn").strip() == \
            f"{name} <me@example.com>|{name}"
    committer.close()
