"""Issue 14: same-uid frames and local users that crashed or wedged actors, and the messages a
person without access gets.  Each test failed on the code before its fix (said per test)."""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest
import zmq

from conftest import USER_PYTHON, create_workspace, wait_for
from gitsieve.actors.health import Health
from gitsieve.common import config as config_mod
from gitsieve.common.actor import control
from gitsieve.common.judge.health import MAX_ACTORS, MAX_STATS_BYTES
from gitsieve.common.protocol import messages
from gitsieve.common.protocol.messages import (
    BadMessage,
    Batch,
    ControlRequest,
    Decision,
    HealthStatus,
    Heartbeat,
)
from gitsieve.common.protocol.states import Action, ChangeKind


def running(cfg, actor_id: str) -> bool:
    try:
        return control.request(cfg, actor_id, "status", timeout=0.5).data["state"] == "running"
    except control.Unreachable:
        return False


# ----- health: forged heartbeats ---------------------------------------------------------
@pytest.fixture
def health(workspace):
    workspace.config("[health]\ninterval = 0.3\n[runtime]\nmetrics_interval = 0.1\n")
    actor = Health(workspace.load())
    config_mod.prepare_runtime_dir(actor.config)
    yield actor
    actor.close()


def test_heartbeat_with_a_bad_pid_is_refused_and_metrics_go_on(health):
    """Heartbeat(pid=-1) made psutil raise ValueError in the metrics writer."""
    for pid in (-1, 0, 2 ** 40):
        health.on_heartbeat(Heartbeat(actor="watcher", pid=pid, sent=1.0, state="running"))
    assert "watcher" not in health.actors and health.stats["beats_refused"] == 3
    health.on_heartbeat(Heartbeat(actor="watcher", pid=os.getpid(), sent=1.0, state="x"))
    health.maybe_write_metrics(time.monotonic() + 1)
    assert health.stats["metrics_written"] == 1 and health.stats["errors"] == 0


def test_heartbeat_poisoning_is_bounded(health):
    """2 x 7 MB of stats, or 4,200 fake actor names, made the published HealthStatus
    undecodable for its receivers: "health status is stale" stopped every commit."""
    huge = {"blob": "x" * (7 * 1024 * 1024)}
    health.on_heartbeat(Heartbeat(actor="watcher", pid=os.getpid(), sent=1.0,
                                  state="running", stats=huge))
    for number in range(4200):
        health.on_heartbeat(Heartbeat(actor=f"fake{number}", pid=os.getpid(), sent=1.0,
                                      state="running", stats=huge if number < 2 else {}))
    assert len(health.actors) == MAX_ACTORS
    assert "watcher" in health.actors  # known actors keep their places
    assert all(len(messages.encode(Heartbeat(actor="a", pid=1, sent=1.0, state="",
                                             stats=info["stats"]))) <= MAX_STATS_BYTES + 100
               for info in health.actor_table(with_stats=True).values())
    status = health.evaluate()
    frame = messages.encode(status)
    assert isinstance(messages.decode(frame), HealthStatus)  # its receivers can read it
    assert health.status()["beats_refused"]["already 256 actors known"] > 0


def test_heartbeat_names_that_are_no_actor_ids_are_refused(health):
    for name in ("", "x" * 200, "../../etc", "Watcher", "l2 01"):
        health.on_heartbeat(Heartbeat(actor=name, pid=os.getpid(), sent=1.0, state="r"))
    assert health.actors == {}


# ----- frames any actor may receive ---------------------------------------------------------
@pytest.fixture
def debouncer_process(workspace, actors):
    cfg = workspace.load()
    config_mod.prepare_runtime_dir(cfg)
    actors("debouncer", workspace.root)
    wait_for(lambda: running(cfg, "debouncer"), 20, message="debouncer running")
    return cfg


def test_multipart_request_to_a_control_socket_is_refused_and_the_actor_answers_on(
        debouncer_process):
    cfg = debouncer_process
    context = zmq.Context()
    try:
        for _ in range(20):  # a burst
            req = context.socket(zmq.REQ)
            req.linger = 0
            req.connect(cfg.endpoints.control("debouncer"))
            req.send_multipart([messages.encode(ControlRequest("status")), b"extra"])
            assert req.poll(5000), "no answer to a multipart request"
            reply = messages.decode(req.recv())
            assert not reply.ok and "2 frames" in reply.error
            req.close()
    finally:
        context.term()
    status = control.request(cfg, "debouncer", "status").data
    assert status["state"] == "running" and status["bad_frames"] >= 20


def test_path_component_over_255_bytes_is_a_bad_frame(debouncer_process):
    long_name = "d/" + "n" * 256
    decision = Decision(path=long_name, kind=ChangeKind.WRITE, seq=1, epoch=1.0,
                        observed=1.0, commit=True, action=Action.ALLOW)
    batch = Batch(batch_id=1, paths=(long_name,), observed=(1.0,), created=1.0)
    for message in (decision, batch):
        with pytest.raises(BadMessage, match="too long"):
            messages.decode(messages.encode(message))
    cfg = debouncer_process
    context = zmq.Context()
    push = context.socket(zmq.PUSH)
    push.linger = 0
    push.connect(cfg.endpoints.decisions)
    try:
        push.send(messages.encode(decision))
        wait_for(lambda: control.request(cfg, "debouncer", "status").data["bad_frames"] >= 1,
                 10, message="the bad frame counted")
    finally:
        push.close()
        context.term()
    assert running(cfg, "debouncer")


# ----- actorctl for someone without access --------------------------------------------------
@pytest.fixture
def reachable_base():
    """A directory under /tmp an ordinary user can reach (pytest's tmp_path is not)."""
    base = Path(tempfile.mkdtemp(prefix="gitsieve-access-", dir="/tmp"))
    os.chmod(base, 0o755)
    yield base
    shutil.rmtree(base, ignore_errors=True)


def test_actorctl_says_permission_denied_and_names_the_owner(reachable_base, ordinary_user):
    """It said "not a git repository" (or, for an unreadable path, a traceback)."""
    private = reachable_base / "private"
    private.mkdir(mode=0o700)
    hidden = create_workspace(private).root
    readable = reachable_base / "readable"
    for where, denied in ((hidden, private), (readable, readable)):
        if where == readable:  # readable, but someone else's (git: dubious ownership)
            os.rename(private, readable)
            os.chmod(readable, 0o755)
            where = readable / "ws"
        result = ordinary_user.run(USER_PYTHON, "-m", "gitsieve.common.tools.ctl",
                                   "--workspace", str(where), "status")
        assert result.returncode == 2, result.stderr
        assert "permission denied" in result.stderr and "owned by root" in result.stderr
        assert str(denied) in result.stderr and "Traceback" not in result.stderr


def test_actorctl_names_the_owner_of_a_runtime_directory_it_cannot_enter(user_workspace,
                                                                          ordinary_user):
    cfg = user_workspace.load()
    os.makedirs(cfg.runtime_dir, exist_ok=True)
    os.chown(cfg.runtime_dir, 0, 0)
    os.chmod(cfg.runtime_dir, 0o700)
    result = ordinary_user.run(USER_PYTHON, "-m", "gitsieve.common.tools.ctl",
                               "--workspace", str(user_workspace.root), "status")
    assert result.returncode == 1, result.stderr
    assert "permission denied" in result.stderr and "owned by root" in result.stderr
    assert str(cfg.runtime_dir) in result.stderr
