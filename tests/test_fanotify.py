"""common.fanotify: real kernel write events from real processes (root), and the refusal
an unprivileged process gets (capabilities dropped with setpriv)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import pytest

from common.fanotify import WriteRecorder
from conftest import ROOT

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
    kept = {e.path for history in recorder.writes.values() for e in history}
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
    assert recorder.writes == {}


def test_the_descriptor_becomes_readable_on_a_write(tmp_path, recorder):
    import select
    child_writes(tmp_path / "poll.txt")
    ready, _, _ = select.select([recorder.fileno()], [], [], 5)
    assert ready and recorder.drain() >= 1


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs setpriv")
def test_without_cap_sys_admin_fanotify_is_refused(tmp_path):
    code = ("import sys; sys.path.insert(0, sys.argv[1]);"
            "from common.fanotify import FanotifyUnavailable, WriteRecorder\n"
            "try:\n WriteRecorder(sys.argv[2])\nexcept FanotifyUnavailable as e: print('refused', e)")
    out = subprocess.run(["setpriv", "--bounding-set", "-sys_admin", "--inh-caps",
                          "-sys_admin", sys.executable, "-c", code, str(ROOT), str(tmp_path)],
                         capture_output=True, text=True, check=True).stdout
    assert out.startswith("refused") and "not permitted" in out
