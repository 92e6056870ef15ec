"""head_token: where HEAD points, read from files; it changes whenever a commit moves HEAD,
in a plain repository and in a linked worktree (whose branch refs live in the common dir)."""
from __future__ import annotations

from conftest import create_workspace, git
from gitsieve.common.git.head import head_token


def test_the_token_follows_commits_in_the_main_and_a_linked_worktree(tmp_path):
    ws = create_workspace(tmp_path)
    linked = tmp_path / "linked"
    git(ws.root, "worktree", "add", "-q", "-b", "side", str(linked))
    linked_git_dir = git(linked, "rev-parse", "--absolute-git-dir").strip()
    main_before, linked_before = head_token(ws.root / ".git"), head_token(linked_git_dir)
    assert head_token(ws.root / ".git") == main_before  # stable while nothing moves
    git(linked, "commit", "-q", "--allow-empty", "-m", "on side")
    assert head_token(linked_git_dir) != linked_before
    assert head_token(ws.root / ".git") == main_before  # another branch moved
    git(ws.root, "commit", "-q", "--allow-empty", "-m", "on main")
    assert head_token(ws.root / ".git") != main_before
    git(ws.root, "pack-refs", "--all")  # refs packed: the token still follows
    packed = head_token(ws.root / ".git")
    git(ws.root, "commit", "-q", "--allow-empty", "-m", "after packing")
    assert head_token(ws.root / ".git") != packed
