"""common.fanotify: real kernel write, delete and rename events from real processes (root),
their attribution through the lineage (common.attribution.ExactAttributor), and the refusal
an unprivileged process gets (capabilities dropped with setpriv)."""
from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import subprocess
import sys
import time
import uuid

import pytest

from conftest import ROOT
from gitsieve.common.judge.attribution import fanotify
from gitsieve.common.judge.attribution.base import SYSTEM, USER
from gitsieve.common.judge.attribution.exact import ExactAttributor
from gitsieve.common.judge.attribution.fanotify import (
    FanotifyUnavailable,
    NameRecorder,
    WriteRecorder,
)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="fanotify needs root")

WRITE = "import sys; open(sys.argv[1], 'a').write('x')"


@pytest.fixture
def recorder(tmp_path):
    (tmp_path / ".git").mkdir()
    (tmp_path / "runtime").mkdir()
    made = WriteRecorder(tmp_path, excluded=(str(tmp_path / "runtime"),),
                         resolve=lambda pid: f"resolved {pid}")
    yield made
    made.close()


def child_writes(path) -> int:
    proc = subprocess.Popen([sys.executable, "-c", WRITE, str(path)])
    proc.wait()
    return proc.pid


def test_records_the_writer_pid_of_another_process(tmp_path, recorder):
    pid = child_writes(tmp_path / "a.txt")
    recorder.drain()
    [event] = [e for e in recorder.writes_to(tmp_path / "a.txt", 0, time.time() + 1)
               if e.pid == pid][:1]
    assert event.path == "a.txt"
    assert event.evidence == f"resolved {pid}"  # resolved while read, before pid reuse
    assert recorder.mark_kind in ("filesystem", "mount")


def test_git_dir_runtime_dir_and_outside_paths_are_not_kept(tmp_path, recorder):
    outside = tmp_path.parent / f"{tmp_path.name}-outside.txt"
    for path in (tmp_path / ".git" / "index", tmp_path / "runtime" / "x", outside):
        child_writes(path)
    inside = child_writes(tmp_path / "kept.txt")
    recorder.drain()
    kept = {e.path for history in recorder.writes.files.values() for e in history}
    assert kept == {"kept.txt"}
    assert recorder.writes_to(tmp_path / "kept.txt", 0, time.time() + 1)[0].pid == inside
    outside.unlink()


def test_a_renamed_file_keeps_its_writers(tmp_path, recorder):
    pid = child_writes(tmp_path / "out.partial")
    os.replace(tmp_path / "out.partial", tmp_path / "out.json")
    recorder.drain()
    assert [e.pid for e in recorder.writes_to(tmp_path / "out.json", 0, time.time() + 1)
            ][0] == pid


def test_time_window_and_pruning(tmp_path, recorder):
    child_writes(tmp_path / "w.txt")
    recorder.drain()
    now = time.time()
    assert recorder.writes_to(tmp_path / "w.txt", now - 10, now + 1)
    assert recorder.writes_to(tmp_path / "w.txt", now + 0.5, now + 1) == []
    assert recorder.writes_to(tmp_path / "missing.txt", 0, now + 1) == []
    recorder.prune(now + recorder.history + 1)
    assert recorder.writes.files == {}


def test_the_descriptor_becomes_readable_on_a_write(tmp_path, recorder):
    import select
    child_writes(tmp_path / "poll.txt")
    ready, _, _ = select.select([recorder.fileno()], [], [], 5)
    assert ready and recorder.drain() >= 1


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs setpriv")
def test_without_cap_sys_admin_fanotify_is_refused(tmp_path):
    code = ("import sys; sys.path.insert(0, sys.argv[1]);"
            "from gitsieve.common.judge.attribution.fanotify import FanotifyUnavailable, WriteRecorder, NameRecorder\n"
            "for kind in (WriteRecorder, NameRecorder):\n"
            " try:\n  kind(sys.argv[2])\n"
            " except FanotifyUnavailable as e: print('refused', e)")
    out = subprocess.run(["setpriv", "--bounding-set", "-sys_admin", "--inh-caps",
                          "-sys_admin", sys.executable, "-c", code, str(ROOT), str(tmp_path)],
                         capture_output=True, text=True, check=True).stdout
    lines = out.splitlines()
    assert len(lines) == 2 and all(line.startswith("refused") and "not permitted" in line
                                   for line in lines)


# ----- name operations (FID mode): deletions and renames ---------------------------------
@pytest.fixture
def names(tmp_path):
    (tmp_path / ".git").mkdir()
    (tmp_path / "runtime").mkdir()
    made = NameRecorder(tmp_path, excluded=(str(tmp_path / "runtime"),),
                        resolve=lambda pid: f"resolved {pid}")
    yield made
    made.close()


def run_child(*argv) -> int:
    proc = subprocess.Popen(argv)
    assert proc.wait() == 0
    return proc.pid


def test_names_record_the_pid_of_a_child_rm_and_mv(tmp_path, names):
    (tmp_path / "sub").mkdir()
    for rel in ("gone.txt", "sub/old.txt"):
        (tmp_path / rel).write_text("x\n")
    removed = run_child("rm", str(tmp_path / "gone.txt"))
    moved = run_child("mv", str(tmp_path / "sub" / "old.txt"), str(tmp_path / "new.txt"))
    names.drain()
    now = time.time() + 1
    [delete] = names.operations_on("gone.txt", fanotify.REMOVALS, 0, now)
    assert (delete.pid, delete.op, delete.evidence) == (removed, "delete", f"resolved {removed}")
    [away] = names.operations_on("sub/old.txt", fanotify.REMOVALS, 0, now)
    [into] = names.operations_on("new.txt", fanotify.ARRIVALS, 0, now)
    assert (away.pid, away.op, into.pid, into.op) == (moved, "moved-from", moved, "moved-to")
    assert names.operations_on("new.txt", fanotify.REMOVALS, 0, now) == []
    assert names.operations_on("gone.txt", fanotify.REMOVALS, now, now + 1) == []


def test_names_leave_out_git_dir_runtime_dir_directories_and_outside_paths(tmp_path, names):
    outside = tmp_path.parent / f"{tmp_path.name}-outside.txt"
    for path in (tmp_path / ".git" / "index", tmp_path / "runtime" / "x", outside,
                 tmp_path / "kept.txt"):
        path.write_text("x\n")
    (tmp_path / "dir").mkdir()
    for path in (tmp_path / ".git" / "index", tmp_path / "runtime" / "x", outside):
        run_child("rm", str(path))
    run_child("rmdir", str(tmp_path / "dir"))
    run_child("rm", str(tmp_path / "kept.txt"))
    names.drain()
    assert set(names.names) == {"kept.txt"}
    names.prune(time.time() + names.history + 1)
    assert names.names == {}


# ----- attribution of deletions and renames (lineage + rules) -----------------------------
# A long-lived autonomous process (as agent runtimes are) running each command line it is
# given as a short-lived child, answering with the child's pid.
AUTONOMOUS_PARENT = r"""
import json, subprocess, sys
print("ready", flush=True)
for line in sys.stdin:
    child = subprocess.Popen(json.loads(line))
    child.wait()
    print(child.pid, flush=True)
"""
# An editor-like process renaming/deleting itself, alive until told to go (its command
# line is read while it runs, as the L2 poll loop would).
USER_PROCESS = r"""
import os, sys
os.rename(sys.argv[1], sys.argv[2]) if sys.argv[2] else os.remove(sys.argv[1])
print("done", flush=True)
sys.stdin.read()
"""


@pytest.fixture
def exact(workspace):
    tag = f"gitsieve-fid-agent-{uuid.uuid4().hex[:10]}"
    workspace.config(f"""
        [filter]
        autonomous_processes = ["{tag}"]
        attribution = "fanotify"
        """)
    made = ExactAttributor(workspace.load())
    yield made, tag
    made.close()


@pytest.fixture
def agent_runs():
    """``agent_runs(tag, *argv)``: the pid of ``argv`` run as a child of a process whose
    command line carries ``tag``."""
    started: dict[str, subprocess.Popen] = {}

    def run(tag: str, *argv) -> int:
        if tag not in started:
            started[tag] = subprocess.Popen([sys.executable, "-c", AUTONOMOUS_PARENT, tag],
                                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                            text=True)
            assert started[tag].stdout.readline().strip() == "ready"
        parent = started[tag]
        parent.stdin.write(json.dumps(argv) + "\n")
        parent.stdin.flush()
        return int(parent.stdout.readline())

    yield run
    for parent in started.values():
        parent.stdin.close()
        parent.wait(5)
        parent.stdout.close()


def test_a_child_rm_and_mv_of_an_autonomous_process_are_system(workspace, exact, agent_runs):
    attributor, tag = exact
    assert attributor.names is not None
    workspace.write("ctx/owned.json", "{}\n")
    workspace.write("ctx/old.json", "{}\n")
    observed = time.time()
    rm_pid = agent_runs(tag, "rm", str(workspace.path("ctx/owned.json")))
    mv_pid = agent_runs(tag, "mv", str(workspace.path("ctx/old.json")),
                           str(workspace.path("ctx/new.json")))
    deleted = attributor.attribute_removal(workspace.path("ctx/owned.json"), observed)
    assert (deleted.writer, deleted.pid, deleted.technique) == (SYSTEM, rm_pid, "fanotify")
    assert tag in deleted.ancestor_cmdline and deleted.matched_by == "autonomous_processes"
    away = attributor.attribute_removal(workspace.path("ctx/old.json"), observed)
    into = attributor.attribute(workspace.path("ctx/new.json"), observed)
    assert (away.writer, away.pid, into.writer, into.pid) == (SYSTEM, mv_pid, SYSTEM, mv_pid)


def user_process(attributor, source, target="") -> int:
    proc = subprocess.Popen([sys.executable, "-c", USER_PROCESS, str(source), str(target)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "done"
    attributor.drain()
    proc.communicate("")
    return proc.pid


def test_a_rename_and_a_delete_by_a_non_matching_process_are_user(workspace, exact):
    attributor, _ = exact
    workspace.write("notes.md", "mine\n")
    workspace.write("draft.md", "mine\n")
    observed = time.time()
    renamer = user_process(attributor, workspace.path("notes.md"), workspace.path("kept.md"))
    remover = user_process(attributor, workspace.path("draft.md"))
    away = attributor.attribute_removal(workspace.path("notes.md"), observed)
    into = attributor.attribute(workspace.path("kept.md"), observed)
    deleted = attributor.attribute_removal(workspace.path("draft.md"), observed)
    assert (away.writer, away.pid, into.writer, into.pid) == (USER, renamer, USER, renamer)
    assert (deleted.writer, deleted.pid) == (USER, remover)
    # the verdicts say what the process did, for `actorctl explain`
    assert (away.action, into.action, deleted.action) == ("moved away", "moved into place",
                                                          "removed")
    # nothing removed it: no evidence, never SYSTEM
    assert attributor.attribute_removal(workspace.path("never.md"), observed) is None


def test_a_refused_fid_group_leaves_writes_attributed_with_one_log_line(
        workspace, monkeypatch, caplog):
    """A kernel or filesystem refusing FID mode: one warning, deletions unattributed."""
    def refuse(self):
        raise FanotifyUnavailable(errno.EOPNOTSUPP, "fanotify_init(FID): not supported")
    monkeypatch.setattr(NameRecorder, "_open", refuse)
    workspace.config("""
        [filter]
        autonomous_processes = ["gitsieve-fid-none"]
        attribution = "fanotify"
        """)
    with caplog.at_level(logging.WARNING, logger="common.attribution"):
        attributor = ExactAttributor(workspace.load())
    try:
        assert attributor.names is None
        assert [r for r in caplog.records if "FID mode unavailable" in r.getMessage()
                ] == [caplog.records[0]]
        assert len(attributor.fds()) == 2 and attributor.status()["fanotify_names"] is None
        workspace.write("x.txt", "x\n")
        observed = time.time()
        run_child("rm", str(workspace.path("x.txt")))
        assert attributor.attribute_removal(workspace.path("x.txt"), observed) is None
    finally:
        attributor.close()
