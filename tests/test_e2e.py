"""The whole pipeline, for real: ``gitsieve run`` on a workspace with a bare remote, a
simulated autonomous process churning beside it, and a person's edits of every kind.

One gitsieve and one churn process serve the whole module; each test waits (with a
generous limit, never a speed assertion) for its own edit to reach the remote.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import pytest

from conftest import (
    ROOT,
    Gitsieve,
    create_workspace,
    git,
    processes_mentioning,
    wait_for,
)
from gitsieve.common.actor import control

CHURN = ROOT / "scripts" / "churn.py"
SYNC_TIMEOUT = 20.0
PATTERNS = r"""
# seed-style rules
BLOCK:\.claude/autonomous/.*:System status updates
BLOCK:\.claude/memory/enhanced-context\.json:Auto-saved context
BLOCK:\.claude/intelligence/.*\.log:Intelligence logs
BLOCK:logs/.*\.log:System logs
ALLOW:scripts/.*\.sh:User shell scripts
ALLOW:docs/.*:User documentation
ALLOW:projects/.*:User project files
ANALYZE:\.claude/contexts/.*:Context files
"""
CHURN_PATHS = (".claude/autonomous/", ".claude/memory/", ".claude/intelligence/", "logs/",
               ".claude/contexts/session.json", ".claude/contexts/head-watch.json",
               ".claude/contexts/reactions.log")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    base = tmp_path_factory.mktemp("e2e")
    ws = create_workspace(base)
    ws.patterns(PATTERNS)
    ws.config("""
        [filter]
        autonomous_processes = ["claude-autonomous"]
        process_cache_ttl = 0.5
        [debounce]
        allow = 0.3
        default = 0.6
        rules = [ { pattern = ".*\\\\.sh", seconds = 0.5 } ]
        max_wait = 3
        [limits]
        max_commits_per_hour = 100000
        max_commits_per_day = 100000
        cooldown_seconds = 0
        [health]
        interval = 0.5
        [watcher]
        reconcile_interval = 5
    """)
    subprocess.run([sys.executable, str(CHURN), "--workspace", str(ws.root), "--prepare"],
                   check=True)
    ws.write("docs/keep.md", "keep\n")
    ws.write("docs/rename-me.md", "to be renamed\n")
    ws.write("docs/delete-me.md", "to be deleted\n")
    ws.write("notes/sed.txt", "alpha beta\n")
    ws.git("add", "-A")
    ws.git("commit", "-q", "-m", "setup")
    ws.git("push", "-q", "origin", "main")
    setup_commit = ws.head()
    gitsieve = Gitsieve(ws, base / "gitsieve.log")
    churn = subprocess.Popen([sys.executable, str(CHURN), "--workspace", str(ws.root),
                              "--name", "claude-autonomous"])
    try:
        gitsieve.wait_running()
        yield ws, gitsieve, setup_commit, base
    finally:
        churn.terminate()
        churn.wait(10)
        code, took = gitsieve.stop()
        print(gitsieve.log()[-5000:])
    assert code == 0, f"gitsieve exited {code}"
    assert took < 5.5, f"stopping took {took:.1f}s"
    assert not processes_mentioning(str(ws.root)), "an actor or git child outlived gitsieve"
    assert not (ws.root / ".git/index.lock").exists()


def remote_content(ws, rel: str) -> str | None:
    result = subprocess.run(["git", "show", f"main:{rel}"], cwd=ws.remote, capture_output=True)
    return result.stdout.decode() if result.returncode == 0 else None


def synced(ws, rel: str, content: str | None) -> None:
    """Wait until the remote's main holds ``content`` at ``rel`` (None: the path is gone)."""
    wait_for(lambda: remote_content(ws, rel) == content, SYNC_TIMEOUT, 0.1,
             f"{rel!r} to reach the remote with the expected content")


def commits_touching(ws, rel: str, since: str) -> list[str]:
    return ws.git("log", "--format=%H", f"{since}..HEAD", "--", rel).split()


def test_no_commit_while_only_the_autonomous_process_runs(env):
    ws, *_ = env
    # Not the setup commit: whichever tests of this module ran first on this worker have
    # committed (and waited for) their own edits.
    before = ws.head()
    time.sleep(4)  # several churn rounds and one reconcile round
    assert ws.head() == before


def test_modify(env):
    ws, *_ = env
    ws.write("README.md", "workspace, edited\n")
    synced(ws, "README.md", "workspace, edited\n")


def test_create_and_unmatched_path(env):
    ws, *_ = env
    ws.write("unmatched/new file.txt", "nobody has a rule for me\n")
    synced(ws, "unmatched/new file.txt", "nobody has a rule for me\n")


def test_mkdir_p_then_write_at_once(env):
    ws, *_ = env
    target = ws.root / "projects/deep/a/b/c/file.txt"
    os.makedirs(target.parent)
    target.write_text("written the instant its directory appeared\n")
    synced(ws, "projects/deep/a/b/c/file.txt", "written the instant its directory appeared\n")


def test_atomic_save_via_temp_file_and_rename(env):
    ws, _, setup_commit, _ = env
    temp = ws.root / "docs/.keep.md.tmp"
    temp.write_text("saved atomically\n")
    os.replace(temp, ws.root / "docs/keep.md")
    synced(ws, "docs/keep.md", "saved atomically\n")
    assert not commits_touching(ws, "docs/.keep.md.tmp", setup_commit)


def test_editor_junk_is_never_committed(env):
    ws, _, setup_commit, _ = env
    for junk in ("docs/.page.md.swp", "docs/.page.md.swx", "docs/page.md~", "docs/4913",
                 "docs/.#page.md", "docs/page.md.bak", "docs/page.md.orig"):
        ws.write(junk, "junk\n")
    (ws.root / "docs/4913").unlink()  # vim removes its write test at once
    ws.write("docs/page.md", "the real edit\n")
    synced(ws, "docs/page.md", "the real edit\n")
    time.sleep(1.0)
    committed = ws.committed_paths_since(setup_commit)
    junk = [p for p in committed if p.startswith("docs/") and p != "docs/page.md"
            and ("page.md" in p or p.endswith("4913"))]
    assert not junk, f"editor junk committed: {junk}"


def test_rename(env):
    ws, *_ = env
    os.rename(ws.root / "docs/rename-me.md", ws.root / "docs/renamed.md")
    synced(ws, "docs/renamed.md", "to be renamed\n")
    synced(ws, "docs/rename-me.md", None)


def test_delete(env):
    ws, *_ = env
    (ws.root / "docs/delete-me.md").unlink()
    synced(ws, "docs/delete-me.md", None)


def test_names_with_spaces_and_non_ascii(env):
    ws, *_ = env
    ws.write("docs/ça va — naïve ü.md", "non-ascii ✓\n")
    ws.write("docs/two  spaces .md", "spaces\n")
    synced(ws, "docs/ça va — naïve ü.md", "non-ascii ✓\n")
    synced(ws, "docs/two  spaces .md", "spaces\n")


def test_sed_in_place(env):
    ws, *_ = env
    subprocess.run(["sed", "-i", "s/beta/gamma/", str(ws.root / "notes/sed.txt")], check=True)
    synced(ws, "notes/sed.txt", "alpha gamma\n")


def test_cp_r_of_200_files(env):
    ws, _, _, base = env
    source = base / "cp-source"
    for number in range(200):
        (source / f"sub{number % 4}").mkdir(parents=True, exist_ok=True)
        (source / f"sub{number % 4}" / f"file{number}.txt").write_text(f"file {number}\n")
    # Whichever tests of this module ran on this worker before, projects/ may not exist.
    (ws.root / "projects").mkdir(exist_ok=True)
    subprocess.run(["cp", "-r", str(source), str(ws.root / "projects/copied")], check=True)
    expected = {f"projects/copied/sub{n % 4}/file{n}.txt" for n in range(200)}
    wait_for(lambda: expected <= set(git(ws.remote, "ls-tree", "-r", "--name-only", "main")
                                     .splitlines()), SYNC_TIMEOUT, 0.2, "all 200 copied files")


def test_directory_moved_in_from_outside_then_edited(env):
    ws, _, _, base = env
    outside = base / "outside-dir"
    outside.mkdir()
    for number in range(20):
        (outside / f"f{number}.txt").write_text(f"moved {number}\n")
    shutil.move(str(outside), str(ws.root / "projects/moved-in"))
    (ws.root / "projects/moved-in/f3.txt").write_text("moved and then edited\n")
    synced(ws, "projects/moved-in/f3.txt", "moved and then edited\n")
    for number in (0, 7, 19):
        synced(ws, f"projects/moved-in/f{number}.txt", f"moved {number}\n")


def test_ten_saves_in_a_third_of_a_second_make_one_commit(env):
    ws, *_ = env
    start = ws.head()
    for number in range(10):
        ws.write("docs/rapid.md", f"save {number}\n")
        time.sleep(0.03)
    synced(ws, "docs/rapid.md", "save 9\n")
    time.sleep(1.0)
    assert len(commits_touching(ws, "docs/rapid.md", start)) == 1


def test_gitignored_paths_are_never_synced(env):
    ws, _, setup_commit, _ = env
    ws.write("ignored/secret.txt", "ignored\n")
    ws.write("notes/also.ignored", "ignored\n")
    ws.write("docs/after-ignored.md", "a marker after the ignored writes\n")
    synced(ws, "docs/after-ignored.md", "a marker after the ignored writes\n")
    time.sleep(1.0)
    committed = ws.committed_paths_since(setup_commit)
    assert "ignored/secret.txt" not in committed and "notes/also.ignored" not in committed


def test_churn_never_committed_and_no_loop(env):
    """Last: every user commit above made the churn process react; none of it was
    committed, and once the user stops, the commits stop."""
    ws, _, setup_commit, _ = env
    ws.write("docs/last.md", "last user edit\n")
    synced(ws, "docs/last.md", "last user edit\n")
    time.sleep(1.0)
    settled = ws.head()
    time.sleep(4.0)  # churn keeps writing and reacting; no commit may follow
    assert ws.head() == settled
    committed = ws.committed_paths_since(setup_commit)
    leaked = [p for p in committed if p.startswith(CHURN_PATHS)]
    assert not leaked, f"autonomous churn was committed: {leaked}"
    # ...and not because it was idle: its files differ from HEAD, it reacted to commits,
    # and the content layer saw its ANALYZE-area rewrites and dropped them.
    assert (ws.root / ".claude/contexts/session.json").read_text() != ws.show(
        "HEAD:.claude/contexts/session.json")
    assert "saw HEAD" in (ws.root / ".claude/contexts/reactions.log").read_text()
    assert (ws.root / ".claude/autonomous/service-status.json").exists()
    cfg = ws.load()
    dropped_by_content = sum(
        control.request(cfg, f"l3-{n:02d}", "status").data.get("verdict_SYSTEM", 0)
        + control.request(cfg, f"l3-{n:02d}", "status").data.get("verdict_UNCHANGED", 0)
        for n in range(1, cfg.l3_workers + 1))
    dropped_by_process = sum(
        control.request(cfg, f"l2-{n:02d}", "status").data.get("verdict_SYSTEM", 0)
        for n in range(1, cfg.l2_workers + 1))
    assert dropped_by_content + dropped_by_process > 0
    assert remote_content(ws, "docs/last.md") == "last user edit\n"
