"""Git failure recovery with real git, real executor and health processes, and faults
injected by ``scripts/faulty-git`` (a git wrapper put first on PATH): a live process
holding index.lock, git failing or killed at chosen points, SIGTERM mid-commit, a remote
that moves, disappears and comes back, real merge / rebase conflicts, a full disk.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from test_executor import Harness

from conftest import ActorProcess, create_workspace, faulty_git, git, wait_for
from gitsieve.common.git.committer import Committer

CONFIG = """\
[health]
interval = 0.3
min_free_mb = {min_free}
fsck_interval = 0
[runtime]
heartbeat_interval = 0.2
[git]
retry_backoff = 0.3
push_backoff_max = 1
{git_extra}
[limits]
cooldown_seconds = 0
"""


def make_harness(ws, actors, min_free: float = 100, git_extra: str = "") -> Harness:
    h = Harness(ws, actors)
    # Actors read the config file when they start: this one replaces the harness's.
    ws.config(CONFIG.format(min_free=min_free, git_extra=git_extra))
    return h


@pytest.fixture
def faulty(tmp_path):
    """(env for a process whose git goes through faulty-git, the rules file)."""
    return faulty_git(tmp_path)


def injected(rules) -> list[str]:
    log = rules.with_name(rules.name + ".log")
    return log.read_text().splitlines() if log.exists() else []


@pytest.fixture
def harness(workspace, actors):
    made = []

    def make(git_extra=""):
        made.append(make_harness(workspace, actors, git_extra=git_extra))
        return made[-1]

    yield make
    for item in made:
        item.close()


def start_executor(h: Harness, env: dict | None = None) -> ActorProcess:
    proc = h.actors("executor", h.workspace.root, env=env)
    wait_for(lambda: h.status(), timeout=15, message="executor control")
    return proc


def no_half_state(ws, before_head: str) -> None:
    git_dir = ws.path(".git")
    assert not (git_dir / "index.lock").exists()
    assert not (git_dir / "HEAD.lock").exists()
    assert not (git_dir / "refs/heads/main.lock").exists()
    assert ws.head() == before_head


# ----- index.lock held by a live process ------------------------------------------------------
LOCK_HOLDER = textwrap.dedent("""
    import os, sys, time
    path = sys.argv[1]
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    inode = os.fstat(fd).st_ino
    print("locked", flush=True)
    time.sleep(float(sys.argv[2]))
    intact = os.path.exists(path) and os.stat(path).st_ino == inode
    os.unlink(path)
    sys.exit(0 if intact else 3)
""")


def test_index_lock_held_by_a_live_process_is_waited_for_never_deleted(harness, workspace):
    h = harness()
    h.start("health", "executor")
    workspace.write("waiting.txt", "w\n")
    before = workspace.head()
    holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER,
                               str(workspace.path(".git/index.lock")), "4"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        h.send("waiting.txt")
        wait_for(lambda: "back-off" in h.status().get("held_reason", ""), timeout=10,
                 message="commit backing off")
        # The loop is not blocked by the wait: control answers while the lock is held.
        for _ in range(5):
            assert h.status()["held"] == 1
            time.sleep(0.2)
        assert workspace.head() == before
        assert holder.wait(20) == 0, "the lock was deleted or replaced under its holder"
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
    h.wait_committed("waiting.txt")
    assert h.status()["backoffs"] >= 1
    assert workspace.committed_paths_since(before) == {"waiting.txt"}


# ----- git failing or killed at chosen points ----------------------------------------------
def test_update_ref_killed_after_doing_its_work_counts_as_committed(workspace, faulty,
                                                                     monkeypatch):
    env, rules = faulty
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    rules.write_text("^update-ref kill-after 1\n")
    workspace.config('[git]\nretry_backoff = 0.1\nremote = ""\n')  # no harness here
    workspace.write("a.txt", "a\n")
    before = workspace.head()
    result = Committer(workspace.load()).commit(["a.txt"])
    assert injected(rules) and injected(rules)[0].startswith("kill-after update-ref")
    assert result.error == "" and result.commit == workspace.head()
    assert workspace.git("rev-parse", "HEAD^").strip() == before
    assert workspace.git("status", "--porcelain=v1", "a.txt") == ""  # index refreshed


def test_git_failing_and_killed_mid_commit_leaves_no_half_state_then_commits(
        harness, workspace, faulty):
    env, rules = faulty
    rules.write_text(textwrap.dedent("""\
        hash-object.-w.-t.tree enospc 1
        hash-object.-w.-t.commit enospc 6
        ^update-ref kill-after 1
        ^push kill-before 1
    """))
    h = harness()
    h.start("health")
    workspace.write("staged-by-user.txt", "mine\n")
    workspace.git("add", "staged-by-user.txt")
    workspace.write("synced.txt", "s\n")
    before = workspace.head()
    start_executor(h, env)
    h.send("synced.txt")
    # The tree writer's ENOSPC is met by a git of its own; the commit's object cannot be
    # written until six ENOSPCs are used up (the long-lived writer's, its fresh start's,
    # the plain git's), so attempts fail, and each failure leaves nothing behind.
    wait_for(lambda: len(injected(rules)) >= 4, timeout=15, message="attempts failed")
    no_half_state(workspace, before)
    h.wait_committed("synced.txt", timeout=30)
    wait_for(lambda: workspace.remote_head() == workspace.head(), timeout=20,
             message="pushed after the killed push")
    kinds = [line.split()[0] for line in injected(rules)]
    assert kinds == ["enospc"] * 7 + ["kill-after", "kill-before"]
    assert workspace.commit_count() == 2  # exactly one sync commit
    assert workspace.committed_paths_since(before) == {"synced.txt"}
    status = workspace.git("status", "--porcelain=v1")
    assert "A  staged-by-user.txt" in status and "synced.txt" not in status
    assert not workspace.path(".git/index.lock").exists()
    assert not list(workspace.load().runtime_dir.glob(".object-*"))


def test_sigterm_during_a_commit_finishes_it_and_leaves_no_lock(harness, workspace,
                                                                faulty):
    env, rules = faulty
    rules.write_text("hash-object.-w.-t.commit sleep-before:2 1\n")
    h = harness()
    h.start("health")
    proc = start_executor(h, env)
    workspace.write("slow.txt", "slow\n")
    before = workspace.head()
    h.send("slow.txt")
    wait_for(lambda: injected(rules), timeout=15, message="the commit's object being written")
    proc.proc.send_signal(signal.SIGTERM)
    assert proc.proc.wait(15) == 0
    assert "slow.txt" in workspace.files_at()  # finished, not abandoned halfway
    assert workspace.git("rev-parse", "HEAD^").strip() == before
    assert not workspace.path(".git/index.lock").exists()
    assert workspace.git("status", "--porcelain=v1", "slow.txt") == ""


# ----- the remote -----------------------------------------------------------------------------
def test_remote_disappears_commits_continue_then_everything_is_pushed(harness, workspace):
    h = harness()
    h.start("health", "executor")
    remote_before = workspace.remote_head()
    hidden = workspace.remote.with_name("remote-away.git")
    workspace.remote.rename(hidden)
    try:
        workspace.write("offline-1.txt", "1\n")
        h.send("offline-1.txt")
        h.wait_committed("offline-1.txt")
        wait_for(lambda: h.status().get("last_push_failure"), timeout=10,
                 message="push failure in status")
        workspace.write("offline-2.txt", "2\n")
        h.send("offline-2.txt")
        h.wait_committed("offline-2.txt")  # commits continue while pushes back off
        status = h.status()
        assert status["push_pending"] is True and "push failed" in status["last_push_failure"]
    finally:
        hidden.rename(workspace.remote)
    assert workspace.remote_head() == remote_before
    wait_for(lambda: workspace.remote_head() == workspace.head(), timeout=20,
             message="both offline commits pushed")
    wait_for(lambda: h.status().get("push_pending") is False, timeout=10,
             message="push no longer pending")


def test_second_clone_pushed_first_both_histories_reach_the_remote(harness, workspace,
                                                                   tmp_path):
    other = tmp_path / "other"
    git(tmp_path, "clone", "-q", str(workspace.remote), str(other))
    (other / "theirs.txt").write_text("from another clone\n")
    git(other, "add", "-A")
    git(other, "commit", "-q", "-m", "theirs")
    git(other, "push", "-q", "origin", "main")
    theirs = git(other, "rev-parse", "HEAD").strip()
    h = harness()
    h.start("health", "executor")
    workspace.write("mine.txt", "mine\n")
    h.send("mine.txt")
    wait_for(lambda: "mine.txt" in set(git(workspace.remote, "ls-tree", "--name-only",
                                           "main").split()), timeout=20,
             message="mine.txt on the remote")
    assert workspace.remote_head() == workspace.head()
    assert git(workspace.remote, "merge-base", "--is-ancestor", theirs, "main") == ""
    assert h.status()["integrations"] == 1
    assert workspace.path("theirs.txt").read_text() == "from another clone\n"


def test_remote_edit_of_a_file_gitsieve_committed_merges_without_a_git_status(
        harness, workspace, tmp_path):
    """Someone else edits another line of a file gitsieve committed.  The index entries a
    commit writes carry no stat data, so `read-tree -m -u` took the file for locally
    modified ("Entry 'notes.md' not uptodate. Cannot merge.") and pushing stopped as if
    in conflict, until the person happened to run `git status` (fails before: the stop
    never lifted)."""
    lines = [f"line {n}" for n in range(1, 21)]
    workspace.write("notes.md", "\n".join(lines) + "\n")
    workspace.git("add", "notes.md")
    workspace.git("commit", "-q", "-m", "notes")
    workspace.git("push", "-q", "origin", "main")
    h = harness()
    workspace.config(CONFIG.format(min_free=100, git_extra="").replace(
        "push_backoff_max = 1", "push_backoff_max = 300"))
    h.start("health", "executor")
    workspace.write("notes.md", "\n".join(lines + ["mine 1"]) + "\n")
    h.send("notes.md")
    # Its content, not HEAD == the remote's: that held before the commit, and their push
    # then raced it, and the next write raced the integration.
    wait_for(lambda: "mine 1" in git(workspace.remote, "show", "main:notes.md"), timeout=20,
             message="the first edit on the remote")
    other = tmp_path / "other"
    git(tmp_path, "clone", "-q", str(workspace.remote), str(other))
    theirs = (other / "notes.md").read_text().replace("line 5\n", "line 5 THEIRS\n")
    (other / "notes.md").write_text(theirs)
    git(other, "-c", "user.name=O", "-c", "user.email=o@example.com", "commit", "-q", "-am",
        "theirs")
    git(other, "push", "-q", "origin", "main")
    workspace.write("notes.md", "\n".join(lines + ["mine 1", "mine 2"]) + "\n")
    h.send("notes.md")

    def both_on_the_remote() -> bool:
        shown = git(workspace.remote, "show", "main:notes.md")
        return "line 5 THEIRS" in shown and "mine 2" in shown
    wait_for(both_on_the_remote, timeout=20, message="their line and mine on the remote")
    # (the executor notes the push's success a moment after the remote has it)
    wait_for(lambda: h.status()["push_conflict"] == "", timeout=5, message="no conflict")
    assert workspace.path("notes.md").read_text() == \
        "\n".join(lines + ["mine 1", "mine 2"]).replace("line 5\n", "line 5 THEIRS\n") + "\n"
    assert workspace.git("status", "--porcelain", "--untracked-files=no") == ""


def test_conflict_with_remote_stops_pushing_reports_and_commits_continue(
        harness, workspace, tmp_path):
    workspace.write("shared.txt", "base\n")
    workspace.git("add", "shared.txt")
    workspace.git("commit", "-q", "-m", "shared")
    workspace.git("push", "-q", "origin", "main")
    other = tmp_path / "other"
    git(tmp_path, "clone", "-q", str(workspace.remote), str(other))
    (other / "shared.txt").write_text("theirs\n")
    git(other, "commit", "-q", "-am", "theirs")
    git(other, "push", "-q", "origin", "main")
    remote_commit = workspace.remote_head()
    h = harness()
    # a stop lasts the whole cap unless the refs move: a cap no test waits for
    workspace.config(CONFIG.format(min_free=100, git_extra="").replace(
        "push_backoff_max = 1", "push_backoff_max = 300"))
    h.start("health", "executor")
    workspace.write("shared.txt", "mine\n")
    h.send("shared.txt")
    wait_for(lambda: "shared.txt" in h.status().get("push_conflict", ""), timeout=20,
             message="conflict reported in status")
    assert workspace.remote_head() == remote_commit
    workspace.write("later.txt", "l\n")
    h.send("later.txt")
    h.wait_committed("later.txt")  # commits continue locally
    status = h.status()
    assert status["push_pending"] is True and status["push_conflict"]
    assert workspace.remote_head() == remote_commit
    assert workspace.path("shared.txt").read_text() == "mine\n"
    # The person merges the remote and resolves the conflict: pushing resumes at once, not
    # after push_backoff_max (300 s; the wait below is 20).
    def pulled_into_the_conflict() -> bool:
        # git's pull fails while gitsieve's git holds index.lock: tried again, as a person would
        workspace.git("pull", "-q", "--no-rebase", "--no-edit", "origin", "main", check=False)
        return workspace.path(".git/MERGE_HEAD").exists()

    wait_for(pulled_into_the_conflict, timeout=15, interval=0.2,
             message="git pull stopping at the conflict")
    workspace.write("shared.txt", "mine and theirs\n")
    workspace.git("commit", "-q", "-am", "merged theirs")
    wait_for(lambda: workspace.remote_head() == workspace.head(), timeout=20,
             message="the merge on the remote")
    # (the executor notes the push's success a moment after the remote has it)
    wait_for(lambda: h.status()["push_conflict"] == "", timeout=5, message="no conflict")
    status = h.status()
    # each try is a fetch and a merge: while the conflict lasted, one per move of the refs,
    # never a loop (the commit, later.txt's commit, the person's merge)
    assert status["push_retries"] <= 4, status["push_retries"]


# ----- git operations in progress: real merge conflict, rebase stopped halfway -------------
def diverge(workspace, path="c.txt"):
    workspace.write(path, "base\n")
    workspace.git("add", "-A")
    workspace.git("commit", "-q", "-m", "base")
    workspace.git("checkout", "-q", "-b", "side")
    workspace.write(path, "side\n")
    workspace.git("commit", "-q", "-am", "side")
    workspace.git("checkout", "-q", "main")
    workspace.write(path, "main\n")
    workspace.git("commit", "-q", "-am", "main")


def no_conflict_markers_committed(workspace) -> None:
    assert "<<<<<<<" not in workspace.git("log", "-p", "--all")


def test_real_merge_conflict_holds_until_the_user_concludes(harness, workspace):
    diverge(workspace)
    workspace.git("merge", "side", check=False)  # stops with a conflict
    assert workspace.path(".git/MERGE_HEAD").exists()
    assert "<<<<<<<" in workspace.path("c.txt").read_text()
    h = harness()
    h.start("health", "executor")
    before = workspace.head()
    workspace.write("during-merge.txt", "edited mid-merge\n")
    h.send("during-merge.txt", "c.txt")
    wait_for(lambda: "merge" in h.status().get("held_reason", ""), timeout=10,
             message="held because of the merge")
    time.sleep(1)  # several health rounds: still nothing committed
    assert workspace.head() == before and h.status()["held"] == 2
    workspace.write("c.txt", "resolved\n")
    workspace.git("add", "c.txt")
    workspace.git("commit", "-q", "--no-edit")
    merge_commit = workspace.head()
    h.wait_committed("during-merge.txt")
    assert workspace.git("rev-parse", "HEAD^").strip() == merge_commit
    assert workspace.committed_paths_since(merge_commit) == {"during-merge.txt"}
    no_conflict_markers_committed(workspace)


def test_rebase_stopped_halfway_holds_then_resumes_after_abort(harness, workspace):
    diverge(workspace)
    workspace.git("rebase", "side", check=False)  # stops halfway with a conflict
    assert workspace.path(".git/rebase-merge").is_dir()
    h = harness()
    h.start("health", "executor")
    workspace.write("during-rebase.txt", "edited mid-rebase\n")
    h.send("during-rebase.txt", "c.txt")
    wait_for(lambda: "rebase" in h.status().get("held_reason", ""), timeout=10,
             message="held because of the rebase")
    assert h.status()["commits"] == 0
    workspace.git("rebase", "--abort")
    main_before = workspace.head()
    h.wait_committed("during-rebase.txt")
    assert workspace.git("symbolic-ref", "HEAD").strip() == "refs/heads/main"
    assert workspace.committed_paths_since(main_before) == {"during-rebase.txt"}
    no_conflict_markers_committed(workspace)


# ----- a full small file system ---------------------------------------------------------------
@pytest.fixture
def small_fs(tmp_path):
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs",
                             str(mount_point)], capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {result.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def fill(mount_point, name="filler.bin") -> None:
    """Write until the file system is full (ENOSPC)."""
    # Unbuffered: a buffered writer keeps the part a short write left over and fails
    # again when it is closed, depending on how the free space falls.
    with open(mount_point / name, "wb", buffering=0) as handle:
        try:
            while True:
                handle.write(b"\0" * 65536)
        except OSError:
            return


def start_pair(h: Harness) -> list[ActorProcess]:
    procs = [h.actors(name, h.workspace.root) for name in ("health", "executor")]
    for name in ("health", "executor"):
        wait_for(lambda: h.status(name), timeout=15, message=f"{name} control")
    return procs


def test_full_disk_pauses_commits_and_they_resume(small_fs, actors):
    ws = create_workspace(small_fs)
    h = make_harness(ws, actors, min_free=1)
    try:
        start_pair(h)
        ws.write("user.txt", "x" * 20_000 + "\n")
        before = ws.head()
        fill(small_fs)
        h.send("user.txt")
        wait_for(lambda: "free disk" in h.status().get("held_reason", ""), timeout=10,
                 message="paused for disk")
        assert ws.head() == before
        os.unlink(small_fs / "filler.bin")
        h.wait_committed("user.txt")
        assert ws.committed_paths_since(before) == {"user.txt"}
    finally:
        h.close()


def test_enospc_mid_commit_leaves_no_half_state_and_is_retried(small_fs, actors):
    ws = create_workspace(small_fs)
    # Health does not guard (min_free_mb = 0): git itself meets ENOSPC mid-commit.
    h = make_harness(ws, actors, min_free=0)
    try:
        start_pair(h)
        ws.write("second.txt", os.urandom(300_000).hex() + "\n")  # incompressible
        before = ws.head()
        fill(small_fs)
        h.send("second.txt")
        wait_for(lambda: h.status().get("backoffs", 0) >= 1, timeout=15,
                 message="a failed commit")
        no_half_state(ws, before)
        assert "commit back-off" in h.status()["held_reason"]
        assert "space" in h.status()["last_commit_failure"].lower()  # git's ENOSPC words
        os.unlink(small_fs / "filler.bin")
        h.wait_committed("second.txt", timeout=30)
        assert git(ws.root, "fsck", "--connectivity-only", "--no-progress") == ""
    finally:
        h.close()


def test_a_git_child_that_ends_between_the_liveness_check_and_the_kill_is_closed(workspace,
                                                                                monkeypatch):
    """A long-lived git that fails at once (a cat-file that exits) may end, and be reaped,
    after close() saw it alive: the kill raised ProcessLookupError out of the commit path
    (seen once in CI; fails before).  The window is made certain by ending the child first."""
    from gitsieve.common.git.gateway import Git, GitChild
    child = Git(workspace.root).spawn("cat-file", "--batch")
    os.close(child.stdin)  # cat-file ends at the end of its input
    wait_for(lambda: not child.alive(), 10, message="cat-file ended and reaped")
    monkeypatch.setattr(GitChild, "alive", lambda self: True)  # as seen just before it ended
    child.stdin = os.open(os.devnull, os.O_WRONLY)  # close() closes both descriptors
    child.close()
