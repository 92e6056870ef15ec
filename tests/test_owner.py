"""Someone else's repository (issue 11): run as root on a tree an ordinary user owns, git
runs as that user and nothing gitsieve leaves behind belongs to root; what cannot work is
refused in one line naming the cause and the fix, never as "not a git repository"."""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from conftest import FAST_CONFIG, ROOT, USER_PYTHON, Gitsieve, create_workspace
from gitsieve.common.git import gateway

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (creates users)")


def foreign_files(*trees: Path, owner: int, group: int) -> list[str]:
    """Files and directories below ``trees`` not owned by ``owner`` and ``group`` (the live
    instance's sockets aside: they go with it)."""
    found = []
    for tree in trees:
        for directory, names, files in os.walk(tree):
            for name in names + files:
                full = os.path.join(directory, name)
                if name.endswith(".sock"):
                    continue
                info = os.lstat(full)
                if (info.st_uid, info.st_gid) != (owner, group):
                    found.append(full)
    return found


def test_root_on_a_users_repository_leaves_nothing_of_roots_and_their_git_still_works(
        user_workspace, tmp_path):
    ws = user_workspace
    user = ws.user
    ws.write(".gitsieve.toml", FAST_CONFIG)
    ws.git("add", "-A")
    ws.git("commit", "-q", "-m", "config")
    ws.git("push", "-q", "origin", "main")
    gitsieve = Gitsieve(ws, tmp_path / "run.log")  # as root
    try:
        gitsieve.wait_running()
        ws.write("notes/new dir/a.txt", "written by the owner\n")
        ws.write("README.md", "changed\n")
        flush = subprocess.run([sys.executable, "-m", "gitsieve.common.tools.ctl",
                                "--workspace", str(ws.root), "flush", "--timeout", "30"],
                               cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert flush.returncode == 0, flush.stdout + flush.stderr
        assert ws.remote_head() == ws.git("rev-parse", "HEAD").strip()
        assert "notes/new dir/a.txt" in ws.git("ls-tree", "-r", "--name-only", "HEAD")
        assert foreign_files(ws.root, ws.remote, owner=user.uid, group=user.gid) == []
    finally:
        code, _ = gitsieve.stop()
        assert code == 0, gitsieve.log()
    assert foreign_files(ws.root, ws.remote, owner=user.uid, group=user.gid) == []
    # the owner's own git goes on working: commit, push, gc
    ws.write("own.txt", "my own commit\n")
    ws.git("add", "own.txt")
    ws.git("commit", "-q", "-m", "mine")
    ws.git("push", "-q", "origin", "main")
    ws.git("gc", "-q")
    assert ws.remote_head() == ws.git("rev-parse", "HEAD").strip()


def test_a_subdirectory_root_made_still_runs_git_as_the_trees_owner(user_workspace):
    """The owner is read from the directory holding .git, not from the path named."""
    ws = user_workspace
    sub = ws.root / "made-by-root"
    sub.mkdir()  # root-owned, inside the user's tree
    root, git_dir = gateway.discover(sub)
    assert root == ws.root and git_dir == ws.root / ".git"


def test_someone_elses_repository_is_refused_with_cause_and_fix(ordinary_user):
    """Not root: git says 'dubious ownership'; gitsieve said 'not a git repository'."""
    base = Path(tempfile.mkdtemp(prefix="gitsieve-foreign-", dir="/tmp"))
    try:
        os.chmod(base, 0o755)
        ws = create_workspace(base)  # root's
        result = ordinary_user.run(USER_PYTHON, "-m", "gitsieve.common.tools.cli", "status",
                                   "--workspace", str(ws.root))
        message = result.stderr.strip()
        assert result.returncode == 2, result
        assert len(message.splitlines()) == 1, message
        assert "not a git repository" not in message
        assert "dubious ownership" in message and "root (uid 0)" in message
        assert f"safe.directory {ws.root}" in message and "run gitsieve as its owner" in message
    finally:
        subprocess.run(["rm", "-rf", str(base)], check=True)


@pytest.mark.parametrize("locked", [".", ".git"])
def test_a_work_tree_its_owner_cannot_read_is_one_clear_line(user_workspace, locked):
    """chmod 000 on one's own tree (or its .git): git cannot even start there."""
    ws = user_workspace
    target = (ws.root / locked).resolve()
    os.chmod(target, 0)
    try:
        result = ws.user.run(USER_PYTHON, "-m", "gitsieve.common.tools.cli", "run",
                             "--workspace", str(ws.root))
    finally:
        os.chmod(target, 0o755)
    message = result.stderr.strip()
    assert result.returncode == 2, result
    assert "Traceback" not in message and len(message.splitlines()) == 1, message
    assert "permission denied" in message and str(target) in message


def test_a_tree_whose_owner_has_no_account_is_refused(tmp_path):
    ws = create_workspace(tmp_path)
    subprocess.run(["chown", "-R", "54321:54321", str(ws.root)], check=True)
    with pytest.raises(gateway.RepositoryRefused) as refused:
        gateway.discover(ws.root)
    assert "uid 54321, which has no account" in str(refused.value)
    assert "chown" in str(refused.value)


def test_a_git_directory_owned_by_someone_else_than_the_tree_is_refused(ordinary_user):
    base = Path(tempfile.mkdtemp(prefix="gitsieve-mixed-", dir="/tmp"))
    try:
        os.chmod(base, 0o755)
        ws = create_workspace(base)
        os.chown(ws.root, ordinary_user.uid, ordinary_user.gid)  # the tree theirs, .git root's
        with pytest.raises(gateway.RepositoryRefused) as refused:
            gateway.discover(ws.root)
        text = str(refused.value)
        assert "root (uid 0)" in text and ordinary_user.name in text and "chown -R" in text
    finally:
        subprocess.run(["rm", "-rf", str(base)], check=True)
