"""`actorctl flush` tells the truth (issue 11), against a real `gitsieve run`: it returns 0
only when HEAD equals the upstream and no undecided dirty path remains, and lists every
held path, a nested repository, a wrong branch and a push that cannot go with its real
reason (a Hold value and its text).  Along the way: the person's own commits are pushed,
a pure mode change is committed, a partly staged path waits for its owner while the rest
syncs, and rewritten pushed history is never forced."""
from __future__ import annotations

import os
import subprocess

import pytest
from test_actorctl import actorctl, actorctl_json

from conftest import Gitsieve, create_workspace, git, wait_for
from gitsieve.common.protocol.states import Hold
from gitsieve.common.tools import ctl

FLUSH = ("flush", "--timeout", "25")


@pytest.fixture(scope="module")
def running(tmp_path_factory):
    base = tmp_path_factory.mktemp("flush")
    ws = create_workspace(base)
    ws.patterns("BLOCK:status/.*\\.json:agent status files\n")
    ws.fast_config()
    ws.git("push", "-q", "origin", "main")
    gitsieve = Gitsieve(ws, base / "run.log")
    try:
        gitsieve.wait_running()
        yield ws
    finally:
        code, _ = gitsieve.stop()
        assert code == 0, gitsieve.log()


def flush(ws) -> tuple[int, dict]:
    code, report = actorctl_json(ws, *FLUSH)
    assert report is not None, code
    return code, report


def held_by_path(report: dict) -> dict:
    return {item["path"]: item for item in report["held"]}


def test_a_synced_edit_and_a_decided_skip_flush_to_0(running):
    ws = running
    ws.write("notes/a.txt", "hello\n")
    ws.write("status/agent.json", '{"tick": 1}\n')
    code, report = flush(ws)
    assert code == ctl.EXIT_OK, report
    assert "notes/a.txt" in ws.files_at() and ws.remote_head() == ws.head()
    assert [item["path"] for item in report["not_synced_by_decision"]] == ["status/agent.json"]
    assert report["head"] == report["upstream"] == ws.head()


def test_the_persons_own_commit_is_pushed_before_flush_says_0(running):
    """Issue 11: after the user's own `git commit` nothing was pushed, and flush said 0
    while `git status -sb` showed [ahead 1]."""
    ws = running
    ws.write("mine.txt", "committed by me\n")
    ws.git("add", "mine.txt")
    ws.git("commit", "-q", "-m", "my own commit")
    mine = ws.head()
    # pushed without any edit of gitsieve's to carry it
    wait_for(lambda: ws.remote_head() == mine, timeout=20, message="the user's commit pushed")
    ws.write("mine2.txt", "again\n")
    ws.git("add", "mine2.txt")
    ws.git("commit", "-q", "-m", "my second commit")
    code, report = flush(ws)
    assert code == ctl.EXIT_OK, report
    assert ws.remote_head() == ws.head() and "ahead" not in ws.git("status", "-sb")


def test_a_pure_mode_change_is_committed(running):
    """Issue 11: `chmod +x` was never committed and flush said 0 while `git status` showed
    ` M`."""
    ws = running
    ws.write("run.sh", "echo hi\n")
    assert flush(ws)[0] == ctl.EXIT_OK
    os.chmod(ws.path("run.sh"), 0o755)
    code, report = flush(ws)
    assert code == ctl.EXIT_OK, report
    assert ws.git("ls-tree", "HEAD", "run.sh").split()[0] == "100755"
    assert ws.git("ls-tree", "origin/main", "run.sh").split()[0] == "100755"
    assert "run.sh" not in ws.git("status", "--porcelain=v1")


def test_a_partly_staged_path_is_held_for_its_owner_and_the_rest_syncs(running):
    """Issue 11: one of two hunks staged with `git add -p`."""
    ws = running
    lines = [f"line {number}\n" for number in range(1, 21)]
    ws.write("partial.txt", "".join(lines))
    assert flush(ws)[0] == ctl.EXIT_OK
    lines[0], lines[-1] = "first hunk\n", "second hunk\n"
    ws.write("partial.txt", "".join(lines))
    staged = subprocess.run(["git", "add", "-p", "--", "partial.txt"], cwd=ws.root,
                            input="y\nn\n", text=True, capture_output=True)
    assert staged.returncode == 0, staged.stderr
    ws.write("notes/b.txt", "synced meanwhile\n")
    code, report = flush(ws)
    assert code == ctl.EXIT_DAEMON, report
    held = held_by_path(report)
    assert set(held) == {"partial.txt"}
    assert held["partial.txt"]["hold"] == Hold.STAGED_BY_YOU
    assert "staged by you" in held["partial.txt"]["reason"]
    assert "notes/b.txt" in ws.files_at() and ws.remote_head() == ws.head()
    assert "first hunk" in ws.git("diff", "--cached")  # the person's staging is intact
    shown = actorctl(ws, "explain", "partial.txt").stdout
    assert "staged by you" in shown and "[staged-by-you]" in shown
    ws.git("commit", "-q", "-m", "my first hunk")
    code, report = flush(ws)
    assert code == ctl.EXIT_OK, report
    assert ws.show("HEAD:partial.txt").endswith("second hunk\n")


def test_a_nested_repository_is_listed_not_skipped_silently(running, tmp_path):
    """Issue 11: a nested clone was skipped silently while flush claimed success."""
    ws = running
    git(tmp_path, "clone", "-q", str(ws.remote), str(ws.path("vendor/clone")))
    code, report = flush(ws)
    assert code == ctl.EXIT_DAEMON, report
    held = held_by_path(report)
    assert held["vendor/clone/"]["hold"] == Hold.NESTED_REPOSITORY
    assert "nested git repository" in held["vendor/clone/"]["reason"]
    human = actorctl(ws, *FLUSH)
    assert "vendor/clone/" in human.stdout and "[nested-repository]" in human.stdout
    subprocess.run(["rm", "-rf", str(ws.path("vendor"))], check=True)
    assert flush(ws)[0] == ctl.EXIT_OK


def test_a_held_path_git_status_cannot_show_is_listed(running):
    """A FIFO is held (git refuses it) but git status never lists one: flush said every
    change was committed and pushed while status showed it held."""
    ws = running
    os.mkfifo(ws.path("pipe1"))
    try:
        code, report = flush(ws)
        assert code == ctl.EXIT_DAEMON, report
        assert held_by_path(report)["pipe1"]["hold"] == Hold.GIT_REFUSED
    finally:
        os.unlink(ws.path("pipe1"))
    wait_for(lambda: flush(ws)[0] == ctl.EXIT_OK, timeout=20, message="flush 0 once it is gone")


def test_paused_is_listed_then_resumed(running):
    ws = running
    assert actorctl(ws, "pause").returncode == 0
    ws.write("notes/c.txt", "while paused\n")
    code, report = flush(ws)
    assert code == ctl.EXIT_DAEMON
    assert held_by_path(report)["notes/c.txt"]["hold"] == Hold.PAUSED
    assert actorctl(ws, "resume").returncode == 0
    assert flush(ws)[0] == ctl.EXIT_OK


def test_a_wrong_branch_is_listed_with_its_reason(running):
    """Issue 11: on another branch the user's edit was reported as "L3 SYSTEM: only
    volatile tokens changed"."""
    ws = running
    # its own decided skip: the module's tests may run on two workers, each with its workspace
    ws.write("status/agent.json", '{"tick": 2}\n')
    assert flush(ws)[0] == ctl.EXIT_OK
    ws.git("checkout", "-q", "-b", "feature")
    ws.write("notes/d.txt", "on the feature branch\n")
    code, report = flush(ws)
    assert code == ctl.EXIT_DAEMON, report
    assert report["branch"]["hold"] == Hold.BRANCH
    assert "'feature', configured for 'main'" in report["branch"]["reason"]
    held = held_by_path(report)
    assert held["notes/d.txt"]["hold"] == Hold.BRANCH
    assert [item["path"] for item in report["not_synced_by_decision"]] == ["status/agent.json"]
    assert "notes/d.txt" not in ws.files_at()
    ws.git("checkout", "-q", "main")  # the edit comes along, uncommitted
    code, report = flush(ws)
    assert code == ctl.EXIT_OK, report
    assert "notes/d.txt" in ws.files_at() and ws.remote_head() == ws.head()


def test_rewritten_pushed_history_stops_pushing_and_is_listed(running):
    """Issue 11: an amend of a pushed commit: never forced, never replayed or merged back;
    pushing resumes when HEAD contains the upstream again."""
    ws = running
    pushed = ws.head()
    assert ws.remote_head() == pushed
    ws.git("commit", "-q", "--amend", "-m", "amended after the push")
    code, report = flush(ws)
    assert code == ctl.EXIT_DAEMON, report
    assert report["push"]["hold"] == Hold.HISTORY_REWRITTEN
    assert "history rewritten" in report["push"]["reason"]
    assert "force" in report["push"]["reason"]
    ws.write("notes/e.txt", "committed locally meanwhile\n")
    code, report = flush(ws)
    assert code == ctl.EXIT_DAEMON and report["push"]["hold"] == Hold.HISTORY_REWRITTEN
    assert "notes/e.txt" in ws.files_at()
    assert ws.remote_head() == pushed  # nothing forced
    assert ws.git("rev-list", "--count", f"{pushed}..HEAD").strip() == "2"  # nor replayed
    status = actorctl(ws, "status").stdout
    assert "history rewritten" in status and "[history-rewritten]" in status
    ws.git("push", "-q", "--force-with-lease", "origin", "main")  # the person publishes it
    code, report = flush(ws)
    assert code == ctl.EXIT_OK, report
    assert ws.remote_head() == ws.head()


def test_names_that_are_not_utf8_sync_added_modified_renamed_deleted(running):
    """Issue 14: deleting a committed file whose name is not UTF-8 crashed the executor."""
    ws = running
    raw = os.fsencode(str(ws.root)) + b"/caf\xe9.txt"
    moved = os.fsencode(str(ws.root)) + b"/n\xfcw/caf\xe9 2.txt"

    def on_remote() -> set[bytes]:
        out = subprocess.run(["git", "ls-tree", "-r", "-z", "--name-only", "main"],
                             cwd=ws.remote, capture_output=True, check=True).stdout
        return set(out.split(b"\0"))
    with open(raw, "wb") as handle:
        handle.write(b"one\n")
    assert flush(ws)[0] == ctl.EXIT_OK and b"caf\xe9.txt" in on_remote()
    with open(raw, "ab") as handle:
        handle.write(b"two\n")
    assert flush(ws)[0] == ctl.EXIT_OK
    os.makedirs(os.path.dirname(moved))
    os.rename(raw, moved)
    assert flush(ws)[0] == ctl.EXIT_OK
    assert b"caf\xe9.txt" not in on_remote() and b"n\xfcw/caf\xe9 2.txt" in on_remote()
    os.unlink(moved)
    code, report = flush(ws)
    assert code == ctl.EXIT_OK, report
    assert b"n\xfcw/caf\xe9 2.txt" not in on_remote()
    assert ws.remote_head() == ws.head()


def test_a_directory_replaced_by_a_symlink_never_blocks_later_commits(running):
    """Issue 14: `mv d d.real && ln -s d.real d && echo x >> d.real/f.txt`, then an
    unrelated edit: it was never pushed (check-ignore failed on d/f.txt, the whole batch
    retried forever)."""
    ws = running
    ws.write("d/f.txt", "f\n")
    assert flush(ws)[0] == ctl.EXIT_OK
    os.rename(ws.path("d"), ws.path("d.real"))
    os.symlink("d.real", ws.path("d"))
    with open(ws.path("d.real/f.txt"), "a") as handle:
        handle.write("x\n")
    ws.write("notes/unrelated.txt", "must sync\n")
    code, report = flush(ws)
    assert code == ctl.EXIT_OK, report
    tree = ws.git("ls-tree", "-r", "origin/main").splitlines()
    assert any(line.startswith("120000") and line.endswith("\td") for line in tree)
    names = {line.split("\t", 1)[1] for line in tree}
    assert {"d.real/f.txt", "notes/unrelated.txt"} <= names and "d/f.txt" not in names
