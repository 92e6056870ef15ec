"""L2's write history (exact mode, root): bounded, and it never loses a writer silently.

- Per inode the newest write of each kind of writer is kept: a hundred agent rewrites after
  the user's write do not push the user's out (a fixed-length history did).
- A fanotify queue overflow marks the writers of the window lost: the change is UNKNOWN
  (content decides), never USER and never SYSTEM.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest

from gitsieve.common.judge.attribution.exact import WRITERS_LOST
from gitsieve.common.judge.process import ProcessJudge
from gitsieve.common.protocol.messages import Change
from gitsieve.common.protocol.states import ChangeKind, L2Reason, Writer

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="fanotify needs root")

WRITER = ("import sys, time\n"
          "for _ in range(int(sys.argv[2])):\n"
          "    open(sys.argv[1], 'a').write('x')\n")


def recorder_on(root, writers: dict):
    from gitsieve.common.judge.attribution.fanotify import WriteRecorder
    return WriteRecorder(root, resolve=lambda pid: SimpleNamespace(
        writer=writers.get(pid, Writer.UNKNOWN)))


def test_a_user_write_is_kept_among_a_hundred_agent_writes(tmp_path):
    target = tmp_path / "shared.txt"
    target.write_text("")
    writers: dict = {}
    recorder = recorder_on(tmp_path, writers)
    try:
        since = time.time()
        for kind, count in ((Writer.USER, 1), (Writer.SYSTEM, 100)):
            child = subprocess.Popen([sys.executable, "-c",
                                      "import sys; sys.stdin.read(1)\n" + WRITER,
                                      str(target), str(count)], stdin=subprocess.PIPE)
            writers[child.pid] = kind
            child.communicate(b"g")
            recorder.drain()
        kinds = [event.evidence.writer for event in recorder.writes_to(target, since,
                                                                       time.time())]
        assert Writer.USER in kinds and Writer.SYSTEM in kinds
        assert len(recorder.writes) == 1 and len(kinds) == 2  # bounded per inode
    finally:
        recorder.close()


def test_a_queue_overflow_marks_the_window_lost(tmp_path):
    folder = tmp_path / "many"
    folder.mkdir()
    recorder = recorder_on(tmp_path, {})
    try:
        since = time.time()
        subprocess.run([sys.executable, "-c", "import sys\nfor i in range(20000): "
                        "open(f'{sys.argv[1]}/f{i}', 'w').write('x')", str(folder)],
                       check=True)
        recorder.drain()  # the kernel's queue (16384 events) overflowed meanwhile
        assert recorder.overflows >= 1
        assert recorder.lost_since(since) and not recorder.lost_since(time.time())
    finally:
        recorder.close()


class LosingAttributor:
    mode = "fanotify"

    def attribute(self, *_args):
        return WRITERS_LOST

    def attribute_removal(self, *_args):
        return WRITERS_LOST


def test_lost_writers_make_a_change_unknown_for_writes_and_removals(workspace):
    judge = ProcessJudge(workspace.load(), attributor=LosingAttributor())
    for kind in (ChangeKind.WRITE, ChangeKind.DELETE):
        step = judge.judge(Change(path="a.txt", kind=kind, seq=1, epoch=1.0,
                                  observed=time.time()))
        assert step.verdict == Writer.UNKNOWN and step.reason == L2Reason.WRITERS_LOST
        assert not judge.drops(step)  # on to the content layer
