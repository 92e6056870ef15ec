"""Writes keyed by a file identity a freed inode cannot pass on (issue 8, section 1).

ext4 gives a freed inode number to the next file created nearby at once.  With writes kept
per ``(st_dev, st_ino)``, a person's deleted temp file handed its inode, with the person's
write attached, to an agent's next new file, and "any USER write makes it the user's"
committed the agent's file.  Real processes, the real kernel, on ext4 (tmpfs does not reuse
inode numbers this way, so elsewhere the tests skip).
"""
from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time

import pytest

from gitsieve.common.judge.attribution.base import SYSTEM, USER
from gitsieve.common.judge.attribution.exact import ExactAttributor
from gitsieve.common.judge.attribution.file_identity import (
    FileIdentifier,
    IdentityKind,
    Keying,
)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="fanotify needs root")

AGENT_MARK = "gitsieve-reuse-agent"
WORKLOAD_SECONDS = 3.0

# The person: creates, writes and deletes temp files in a loop (an editor's swap files).
PERSON = r"""
import json, os, sys, time
directory, until, report = sys.argv[1], float(sys.argv[2]), sys.argv[3]
inodes, n = [], 0
while time.time() < until:
    path = os.path.join(directory, f"draft-{n}.swp")
    with open(path, "w") as handle:
        handle.write(f"the person's draft {n}\n")
    inodes.append(os.stat(path).st_ino)
    os.unlink(path)
    n += 1
    time.sleep(0.001)
json.dump(inodes, open(report, "w"))
"""
# The agent (its command line carries AGENT_MARK): new files, and JSON replaced atomically
# (os.replace frees the old inode without any delete of its name).
AGENT = r"""
import json, os, sys, time
_, directory, until, report = sys.argv[1:5]
files, replaced, n = {}, [], 0
while time.time() < float(until):
    path = os.path.join(directory, f"agent-{n}.txt")
    with open(path, "w") as handle:
        handle.write(f"agent output {n}\n")
    files[path] = os.stat(path).st_ino
    tmp = os.path.join(directory, "state.json.tmp")
    with open(tmp, "w") as handle:
        json.dump({"step": n}, handle)
    replaced.append(os.stat(tmp).st_ino)
    os.replace(tmp, os.path.join(directory, "state.json"))
    n += 1
    time.sleep(0.001)
state = os.path.join(directory, "state.json")
files[state] = os.stat(state).st_ino
json.dump({"files": files, "replaced": replaced}, open(report, "w"))
"""


def filesystem_type(path) -> str:
    """The mounted filesystem type of ``path`` (``stat -f`` calls ext4 "ext2/ext3")."""
    real = os.path.realpath(path)
    best, kind = "", ""
    with open("/proc/self/mountinfo") as mounts:
        for line in mounts:
            fields = line.split()
            point, fstype = fields[4], fields[fields.index("-") + 1]
            if (real == point or real.startswith(point.rstrip("/") + "/")) \
                    and len(point) >= len(best):
                best, kind = point, fstype
    return kind


@pytest.fixture
def on_ext4(workspace, tmp_path):
    if filesystem_type(workspace.root) != "ext4":
        pytest.skip(f"{workspace.root} is on {filesystem_type(workspace.root)}, not ext4: "
                    "the test needs a filesystem that reuses inode numbers at once")
    workspace.config(f'[filter]\nautonomous_processes = ["{AGENT_MARK}"]\n'
                     'attribution = "fanotify"\n')
    scratch = workspace.root / "scratch"
    reports = tmp_path / "reports"
    scratch.mkdir()
    reports.mkdir()
    return workspace, scratch, reports


def run_workload(attributor, scratch, reports) -> tuple[set[int], dict, set[int]]:
    """Person and agent side by side in ``scratch`` while the attributor drains; returns
    (the person's inode numbers, the agent's files -> inode, inodes the agent replaced)."""
    until = time.time() + WORKLOAD_SECONDS
    person = subprocess.Popen([sys.executable, "-c", PERSON, str(scratch), str(until),
                               str(reports / "person.json")])
    agent = subprocess.Popen([sys.executable, "-c", AGENT, AGENT_MARK, str(scratch),
                              str(until), str(reports / "agent.json")])
    fds = [fd for fd, _ in attributor.fds()]
    try:
        while person.poll() is None or agent.poll() is None:
            select.select(fds, [], [], 0.1)
            attributor.drain()
    finally:
        for child in (person, agent):
            if child.poll() is None:
                child.kill()
            child.wait()
    attributor.drain()
    assert person.returncode == 0 and agent.returncode == 0
    made = json.loads((reports / "agent.json").read_text())
    return (set(json.loads((reports / "person.json").read_text())), made["files"],
            set(made["replaced"]))


def verdicts_of(attributor, files) -> dict[str, set]:
    """Each agent file's recorded writers (all its writes, whenever read)."""
    until = time.time() + 1
    return {path: {event.evidence.writer for event in
                   attributor.recorder.writes_to(path, 0.0, until)} for path in files}


def test_no_agent_file_inherits_a_deleted_temp_files_writes(on_ext4):
    workspace, scratch, reports = on_ext4
    attributor = ExactAttributor(workspace.load())
    try:
        person, agent_files, replaced = run_workload(attributor, scratch, reports)
        found = verdicts_of(attributor, agent_files)
    finally:
        attributor.close()
    reused = person & (set(agent_files.values()) | replaced)
    assert reused, "no inode of a deleted temp file went to an agent file: nothing tested"
    taken = {path: agent_files[path] for path, writers in found.items() if USER in writers}
    assert taken == {}, f"{len(taken)} agent files carry the person's writes"
    assert all(writers == {SYSTEM} for writers in found.values())


def test_inode_keying_hands_the_persons_write_to_the_agents_file(on_ext4):
    """The keying this replaces, on the same workload: agent files that got a freed inode
    of the person's temp files are attributed to the person, and only those."""
    workspace, scratch, reports = on_ext4
    attributor = ExactAttributor(workspace.load(), keying=Keying.INODE)
    try:
        person, agent_files, replaced = run_workload(attributor, scratch, reports)
        found = verdicts_of(attributor, agent_files)
    finally:
        attributor.close()
    wrong = {path: agent_files[path] for path, writers in found.items() if USER in writers}
    assert wrong, "inode keying did not misattribute: the workload no longer shows the bug"
    assert set(wrong.values()) <= person & (set(agent_files.values()) | replaced)


def test_successive_files_on_one_inode_number_get_distinct_identities(tmp_path):
    if filesystem_type(tmp_path) != "ext4":
        pytest.skip("needs ext4")
    by_handle, by_inode = FileIdentifier(), FileIdentifier(Keying.INODE)
    seen: dict[int, list] = {}
    for n in range(50):
        path = tmp_path / f"f{n}"
        path.write_text("x")
        seen.setdefault(path.stat().st_ino, []).append((by_handle.of_path(path),
                                                         by_inode.of_path(path)))
        path.unlink()
    reused = [pairs for pairs in seen.values() if len(pairs) > 1]
    assert reused, "ext4 gave every file a fresh inode number: nothing tested"
    for pairs in reused:
        handles = [handle for handle, _ in pairs]
        assert all(handle.kind is IdentityKind.HANDLE for handle in handles)
        assert len(set(handles)) == len(handles)
        assert len({inode for _, inode in pairs}) == 1  # what the old keying saw


def test_a_final_symlink_is_not_followed_and_fd_and_path_agree(tmp_path):
    target = tmp_path / "target"
    target.write_text("x")
    (tmp_path / "link").symlink_to(target)
    identify = FileIdentifier()
    assert identify.of_path(tmp_path / "link") != identify.of_path(target)
    fd = os.open(target, os.O_RDONLY)
    try:
        assert identify.of_fd(fd) == identify.of_path(target)
    finally:
        os.close(fd)
    assert identify.of_path(tmp_path / "missing") is None


def test_a_filesystem_without_handles_falls_back_to_inode_and_birth(caplog):
    identify = FileIdentifier()
    identity = identify.of_path("/proc/self/status")
    assert identity.kind is IdentityKind.BIRTH
    assert os.stat("/proc/self/status").st_dev in identify.without_handles
    assert "encodes no file handles" in caplog.text
