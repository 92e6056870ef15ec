"""A backward wall-clock step, then a watcher restart: later edits still sync.

Every gitsieve process runs with a ``sitecustomize`` shim on PYTHONPATH that adds an offset,
read from a file, to ``time.time()``; the test steps it back two hours and kills the
watcher with SIGKILL.  Changes are ordered by the watcher's persisted run counter, so the
restarted watcher's changes are newer than the old run's whatever the clock says.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

from conftest import ROOT, create_workspace, processes_mentioning, wait_for
from gitsieve.common.actor import control

SHIM = textwrap.dedent("""
    import os, time
    _real_time, _monotonic = time.time, time.monotonic
    _file = os.environ.get("GITSIEVE_TEST_CLOCK_OFFSET", "")
    _state = {"checked": -1.0, "offset": 0.0}

    def _shifted():
        now = _monotonic()
        if now - _state["checked"] > 0.2:
            _state["checked"] = now
            try:
                with open(_file) as handle:
                    _state["offset"] = float(handle.read() or 0)
            except (OSError, ValueError):
                _state["offset"] = 0.0
        return _real_time() + _state["offset"]

    if _file:
        time.time = _shifted
""")


def remote_content(ws, rel: str) -> str | None:
    result = subprocess.run(["git", "show", f"main:{rel}"], cwd=ws.remote, capture_output=True)
    return result.stdout.decode() if result.returncode == 0 else None


def pid_of(cfg, actor_id: str) -> int | None:
    try:
        return control.request(cfg, actor_id, "status", timeout=0.5).data.get("pid")
    except control.Unreachable:
        return None


def test_a_clock_stepped_back_then_a_watcher_killed_loses_no_edit(tmp_path):
    ws = create_workspace(tmp_path)
    ws.fast_config("[watcher]\nreconcile_interval = 0\n")
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(SHIM)
    offset = tmp_path / "clock-offset"
    offset.write_text("0")
    path = os.pathsep.join(filter(None, [str(shim), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path, "GITSIEVE_TEST_CLOCK_OFFSET": str(offset)}
    log = open(tmp_path / "gitsieve.log", "wb")
    runner = subprocess.Popen([sys.executable, "-m", "gitsieve.common.tools.cli", "run",
                               "--workspace", str(ws.root)], cwd=ROOT, env=env, stdout=log,
                              stderr=subprocess.STDOUT)
    cfg = ws.load()
    try:
        old_watcher = wait_for(lambda: pid_of(cfg, "watcher"), 30, message="watcher running")
        ws.write("notes.txt", "first\n")
        wait_for(lambda: remote_content(ws, "notes.txt") == "first\n", 30, 0.1,
                 "the first edit on the remote")
        offset.write_text(str(-2 * 3600))  # the wall clock steps back two hours
        wait_for(lambda: pid_of(cfg, "executor"), 5)
        os.kill(old_watcher, signal.SIGKILL)
        wait_for(lambda: (pid_of(cfg, "watcher") or old_watcher) != old_watcher, 30,
                 message="watcher restarted")
        ws.write("notes.txt", "second, after the clock stepped back\n")
        wait_for(lambda: remote_content(ws, "notes.txt") ==
                 "second, after the clock stepped back\n", 60, 0.1,
                 "the edit after the restart on the remote")
    finally:
        runner.terminate()
        runner.wait(15)
        log.close()
        print((tmp_path / "gitsieve.log").read_text(errors="replace")[-4000:])
    assert runner.returncode == 0
    assert not processes_mentioning(str(ws.root))


def test_a_decision_with_a_future_epoch_does_not_stop_later_edits(tmp_path):
    """A forged Decision ordered far beyond what the watcher issued is dropped (counted),
    so the path's real edits are not taken for stale ones."""
    import time

    import zmq

    from conftest import Gitsieve
    from gitsieve.common.protocol import messages
    from gitsieve.common.protocol.messages import Decision
    from gitsieve.common.protocol.states import Action, ChangeKind

    ws = create_workspace(tmp_path)
    ws.fast_config()
    gitsieve = Gitsieve(ws, tmp_path / "gitsieve.log")
    context = zmq.Context()
    push = context.socket(zmq.PUSH)
    push.linger = 0
    try:
        gitsieve.wait_running()
        cfg = ws.load()
        push.connect(cfg.endpoints.decisions)
        for epoch, seq in ((4e9, 1), (1.0, 10 ** 12)):
            push.send(messages.encode(Decision(
                path="notes.txt", kind=ChangeKind.WRITE, seq=seq, epoch=epoch,
                observed=time.time(), commit=False, action=Action.ANALYZE)))
        wait_for(lambda: control.request(cfg, "debouncer", "status").data["not_issued"] == 2,
                 10, message="both forged decisions dropped")
        ws.write("notes.txt", "a real edit after the forged decisions\n")
        wait_for(lambda: remote_content(ws, "notes.txt") ==
                 "a real edit after the forged decisions\n", 30, 0.1, "the edit on the remote")
    finally:
        push.close()
        context.term()
        code, _ = gitsieve.stop()
    assert code == 0
