"""Whole files and whole renames on the remote, with ``gitsieve run`` and real writers.

- A file written in pieces (64 KiB every 0.25 s for 5 s, then closed) and a 60 MB file
  written by ``head -c 60M /dev/urandom`` reach the remote in exactly one commit each,
  the final version: no intermediate size is ever committed.  In exact (fanotify) and
  psutil attribution as root, and as an ordinary user.  (The size guard is raised here;
  ``test_guard`` holds such a file at the default limit.)
- A rename is one commit: into a directory created just before (its watch did not exist
  yet), a case-only rename, and a file <-> directory swap, each with a real ``mv``.
"""
from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import pytest

from conftest import (
    FAST_CONFIG,
    USER_PYTHON,
    Gitsieve,
    create_workspace,
    processes_mentioning,
    wait_for,
)

SYNC_TIMEOUT = 120.0
SLOW_WRITER = textwrap.dedent("""
    import os, sys, time
    with open(sys.argv[1], "wb") as out:
        for _ in range(20):
            out.write(os.urandom(64 * 1024))
            out.flush()
            time.sleep(0.25)
""")
SLOW_SIZE = 20 * 64 * 1024
BIG_SIZE = 60 * 1024 * 1024
# the 60 MB file is the point here, not the size guard (test_guard holds it at the default)
FAST = FAST_CONFIG + "[guard]\nmax_new_file_mb = 100\n"


def remote_git(remote, *args) -> str:
    result = subprocess.run(["git", "-c", "safe.directory=*", *args], cwd=remote,
                            capture_output=True, text=True)
    return result.stdout if result.returncode == 0 else ""


def committed_sizes(remote, rel: str) -> list[int]:
    """The size of ``rel`` in every commit of the remote's main that touched it."""
    commits = remote_git(remote, "rev-list", "main", "--", rel).split()
    return [int(remote_git(remote, "cat-file", "-s", f"{commit}:{rel}").strip() or -1)
            for commit in commits]


def assert_whole(remote, rel: str, size: int) -> None:
    wait_for(lambda: committed_sizes(remote, rel)[:1] == [size], SYNC_TIMEOUT, 0.5,
             f"{rel} ({size} bytes) on the remote")
    time.sleep(2)  # a late intermediate commit would show by now
    assert committed_sizes(remote, rel) == [size], "an intermediate version was committed"


@pytest.mark.parametrize("attribution", ["fanotify", "psutil"])
def test_files_written_in_pieces_are_committed_once_whole(tmp_path, attribution):
    ws = create_workspace(tmp_path)
    ws.config(FAST + f'[filter]\nattribution = "{attribution}"\n')
    ws.git("add", "-A")
    ws.git("commit", "-q", "-m", "config")
    ws.git("push", "-q", "origin", "main")
    gitsieve = Gitsieve(ws, tmp_path / "gitsieve.log")
    try:
        gitsieve.wait_running()
        slow = subprocess.Popen([sys.executable, "-c", SLOW_WRITER, str(ws.path("slow.bin"))])
        subprocess.run(f"head -c 60M /dev/urandom > {ws.path('big.bin')}", shell=True,
                       check=True)
        assert slow.wait(60) == 0
        assert_whole(ws.remote, "slow.bin", SLOW_SIZE)
        assert_whole(ws.remote, "big.bin", BIG_SIZE)
    finally:
        code, _ = gitsieve.stop()
        print(gitsieve.log()[-3000:])
    assert code == 0


def test_files_written_in_pieces_as_an_ordinary_user(user_workspace):
    ws, user = user_workspace, user_workspace.user
    ws.write(".gitsieve.toml", textwrap.dedent(FAST))
    ws.git("add", "-A")
    ws.git("commit", "-q", "-m", "config")
    ws.git("push", "-q", "origin", "main")
    log = open(ws.root.parent / "gitsieve.log", "wb")
    runner = subprocess.Popen(user.gitsieve("run", "--workspace", str(ws.root)), stdout=log,
                              stderr=subprocess.STDOUT, start_new_session=True)
    try:
        time.sleep(3)
        writer = user.popen(USER_PYTHON, "-c", SLOW_WRITER, str(ws.path("slow.bin")))
        big = user.popen("sh", "-c", f"head -c 60M /dev/urandom > {ws.path('big.bin')}")
        assert writer.wait(60) == 0 and big.wait(60) == 0
        assert_whole(ws.remote, "slow.bin", SLOW_SIZE)
        assert_whole(ws.remote, "big.bin", BIG_SIZE)
    finally:
        runner.terminate()
        runner.wait(15)
        log.close()
        print((ws.root.parent / "gitsieve.log").read_text(errors="replace")[-3000:])
    # runuser passes SIGTERM on and reports it as its own end; gitsieve stopped cleanly.
    assert runner.returncode in (0, -15)
    wait_for(lambda: not processes_mentioning(str(ws.root)), 10, message="every actor gone")


# ----- a rename is one commit ------------------------------------------------------------
@pytest.fixture(scope="module")
def renaming(tmp_path_factory):
    base = tmp_path_factory.mktemp("renames")
    ws = create_workspace(base)
    ws.config(FAST)
    ws.write("src/main.c", "int main(void) { return 0; }\n")
    ws.write("Notes.txt", "notes\n")
    ws.write("swap", "a file that becomes a directory\n")
    ws.git("add", "-A")
    ws.git("commit", "-q", "-m", "renames start")
    ws.git("push", "-q", "origin", "main")
    gitsieve = Gitsieve(ws, base / "gitsieve.log")
    try:
        gitsieve.wait_running()
        yield ws
    finally:
        code, _ = gitsieve.stop()
        print(gitsieve.log()[-3000:])
    assert code == 0


def assert_one_commit(ws, command: str, old: str, new: str, content: str) -> None:
    before = ws.remote_head()
    subprocess.run(command, shell=True, cwd=ws.root, check=True)
    wait_for(lambda: remote_git(ws.remote, "show", f"main:{new}") == content
             and remote_git(ws.remote, "cat-file", "-t", f"main:{old}").strip() != "blob",
             SYNC_TIMEOUT, 0.2, f"{old} -> {new} on the remote")
    for commit in remote_git(ws.remote, "rev-list", f"{before}..main").split():
        changed = remote_git(ws.remote, "show", "--name-status", "--no-renames",
                             "--format=", commit).splitlines()
        touched = {line.split("\t", 1)[1] for line in changed if "\t" in line}
        assert (old in touched) == (new in touched), \
            f"commit {commit[:10]} holds one side of the move only: {changed}"


def test_a_rename_into_a_new_directory_is_one_commit(renaming):
    assert_one_commit(renaming, "mkdir source && mv src/main.c source/main.c",
                      "src/main.c", "source/main.c", "int main(void) { return 0; }\n")


def test_a_case_only_rename_is_one_commit(renaming):
    assert_one_commit(renaming, "mv Notes.txt notes.txt", "Notes.txt", "notes.txt", "notes\n")


def test_a_file_becoming_a_directory_is_one_commit(renaming):
    assert_one_commit(renaming, "mv swap swap-old && mkdir swap && mv swap-old swap/content",
                      "swap", "swap/content", "a file that becomes a directory\n")
