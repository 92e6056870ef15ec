"""The shipped supervisor.conf under a real supervisord, and per-path order with scaled
workers (a slower worker's older verdict never wins)."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest
import zmq

from conftest import ROOT, create_workspace, wait_for
from gitsieve.common.actor import control
from gitsieve.common.protocol import messages
from gitsieve.common.protocol.messages import Decision
from gitsieve.common.protocol.states import Action, ChangeKind, Content, L3Reason
from gitsieve.common.protocol.trail import ContentStep
from gitsieve.common.tools.runner import actor_ids

SUPERVISOR_CONF = ROOT / "supervisor.conf"


def supervisor_env(ws) -> dict:
    return {**os.environ, "GITSIEVE_WORKSPACE": str(ws.root), "GITSIEVE_CONFIG": ""}


def statuses(cfg) -> dict:
    found = {}
    for actor_id in control.known_actors(cfg):
        try:
            data = control.request(cfg, actor_id, "status", timeout=0.5).data
        except control.Unreachable:
            continue
        if data.get("state") == "running":
            found[actor_id] = data["pid"]
    return found


@pytest.fixture
def short_workspace():
    """A workspace at a short path: supervisord binds its control socket in the
    workspace's .git (plus ".PID" while binding), and AF_UNIX paths end at 107 bytes."""
    import tempfile
    base = Path(tempfile.mkdtemp(prefix="gs-sd-", dir="/tmp"))
    yield create_workspace(base)
    shutil.rmtree(base, ignore_errors=True)


def descendants(pid: int) -> set[int]:
    try:
        return {child.pid for child in psutil.Process(pid).children(recursive=True)}
    except psutil.NoSuchProcess:
        return set()


@pytest.mark.skipif(shutil.which("supervisord") is None, reason="supervisord not installed")
def test_the_shipped_conf_runs_as_many_workers_as_the_config_expects(workspace):
    """The other actors expect ``[workers]`` workers of each layer: supervisor.conf's
    ``numprocs`` must match the defaults, or health and status miss or invent a worker."""
    import re
    text = SUPERVISOR_CONF.read_text()
    counts = dict(re.findall(r"\[program:(process_layer|content_layer)\][^[]*?numprocs = (\d+)",
                             text))
    cfg = workspace.load()
    assert counts == {"process_layer": str(cfg.l2_workers), "content_layer": str(cfg.l3_workers)}


def scaled_conf(directory: Path, workers: int) -> Path:
    """The shipped supervisor.conf scaled as the README says: ``numprocs`` of L2 and L3."""
    text = SUPERVISOR_CONF.read_text()
    assert text.count("numprocs = 1\n") == 2  # one worker each as shipped
    conf = directory / "supervisor.conf"
    conf.write_text(text.replace("numprocs = 1\n", f"numprocs = {workers}\n"))
    return conf


def test_shipped_supervisor_conf_runs_scaled_workers_and_survives_a_killed_worker(
        short_workspace, tmp_path):
    ws = short_workspace
    ws.fast_config("[workers]\nl2 = 2\nl3 = 2\n")
    cfg = ws.load()
    expected = set(actor_ids(cfg))
    assert {"l2-01", "l2-02", "l3-01", "l3-02"} <= expected
    conf = scaled_conf(tmp_path, 2)
    env = supervisor_env(ws)
    supervisord = subprocess.Popen(["supervisord", "-c", str(conf)], cwd=ROOT,
                                   env=env, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
    seen_pids: set[int] = set()
    try:
        wait_for(lambda: expected <= set(statuses(cfg)), 40, 0.2, "every actor running")
        ws.write("first.txt", "one\n")
        wait_for(lambda: "first.txt" in ws.files_at("HEAD"), 30, 0.1, "the first edit")
        wait_for(lambda: ws.remote_head() == ws.head(), 30, 0.1, "the first push")

        # kill a layer worker outright; supervisord restarts it, nothing is lost
        pids = statuses(cfg)
        seen_pids |= set(pids.values()) | descendants(supervisord.pid)
        os.kill(pids["l2-01"], signal.SIGKILL)
        wait_for(lambda: statuses(cfg).get("l2-01") not in (None, pids["l2-01"]), 30, 0.2,
                 "the killed worker restarted")
        # an actor that exits 0 by itself (asked to stop over its control socket) is
        # restarted too: only supervisorctl decides that an actor stays down
        before = statuses(cfg)["l3-01"]
        assert control.request(cfg, "l3-01", "stop", timeout=5).ok
        wait_for(lambda: statuses(cfg).get("l3-01") not in (None, before), 30, 0.2,
                 "the worker that exited 0 restarted")
        seen_pids.add(before)
        ws.write("second.txt", "two\n")
        wait_for(lambda: "second.txt" in ws.files_at("HEAD"), 30, 0.1, "the second edit")
        wait_for(lambda: ws.remote_head() == ws.head(), 30, 0.1, "the second push")
        seen_pids |= set(statuses(cfg).values()) | descendants(supervisord.pid)
    finally:
        # supervisorctl shutdown is the documented clean stop; SIGTERM if it cannot talk
        stop = subprocess.run(["supervisorctl", "-c", str(conf), "shutdown"],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=30)
        if stop.returncode != 0:
            supervisord.send_signal(signal.SIGTERM)
        try:
            code = supervisord.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(os.getpgid(supervisord.pid), signal.SIGKILL)
            supervisord.wait()
            raise
    assert code == 0
    assert len(seen_pids) >= len(expected)
    assert [pid for pid in seen_pids if psutil.pid_exists(pid)
            and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE] == []
    assert not (ws.root / ".git/index.lock").exists()


def test_a_slower_workers_older_verdict_never_wins(workspace, actors):
    """Two scaled workers decide the same path; the older verdict arrives last."""
    workspace.config("[debounce]\nallow = 30\ndefault = 30\nrules = []\n")
    cfg = workspace.load()
    actors("debouncer", workspace.root)
    wait_for(lambda: "debouncer" in statuses(cfg), 20, 0.1, "the debouncer")
    context = zmq.Context.instance()
    push = context.socket(zmq.PUSH)
    push.linger = 0
    push.connect(cfg.endpoints.decisions)
    try:
        def send(path, seq, commit):
            verdict = Content.USER if commit else Content.SYSTEM
            push.send(messages.encode(Decision(
                path=path, kind=ChangeKind.WRITE, seq=seq, epoch=100.0, observed=time.time(),
                commit=commit, action=Action.ANALYZE,
                trail=(ContentStep(verdict, L3Reason.CONTENT_CHANGED, f"seq {seq}"),))))

        # newer "commit" first, the slow worker's older "skip" after it
        send("user.txt", 7, True)
        send("user.txt", 6, False)
        # newer "skip" first, an older "commit" after it
        send("agent.json", 9, False)
        send("agent.json", 8, True)

        def explained():
            data = control.request(cfg, "debouncer", "explain",
                                   {"paths": ["user.txt", "agent.json"]}).data["paths"]
            done = all(data[p] and data[p]["stale_dropped"] for p in data)
            return data if done else None
        data = wait_for(explained, 20, 0.1, "both late verdicts to arrive")
    finally:
        push.close(linger=0)
    assert data["user.txt"]["seq"] == 7 and data["user.txt"]["commit"] is True
    assert data["user.txt"]["pending"] is True
    assert data["agent.json"]["seq"] == 9 and data["agent.json"]["commit"] is False
    assert data["agent.json"]["pending"] is False
    status = control.request(cfg, "debouncer", "status").data
    assert status["stale"] == 2 and status["pending"] == 1
